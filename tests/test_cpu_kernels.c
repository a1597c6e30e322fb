/* test_cpu_kernels.c: the CPU driver's kernels against plain double-precision references:
 * GEMM (every transpose, accumulate, beta = 0 over NaN, CBLAS and the portable GEMM, thread
 * invariance), GELU, RMSNorm, MSE, cross-entropy, rows, casts, SGD and AdamW. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "drivers/cpu/cpu_internal.h"
#include "engine/driver.h"
#include "tests/tap.h"

static const dp_device_ops *ops;
static dp_device *dev;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float urand(void) /* in [-1, 1) */
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / 8388608.0 - 1.0);
}
static float *randv(size_t n)
{
    float *v = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) v[i] = urand();
    return v;
}

/* Largest |got - want| - (atol + rtol |want|) over n; positive means a failure; NaN fails. */
static int all_close(const float *got, const double *want, size_t n, double atol, double rtol, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!tap_close(got[i], want[i], atol, rtol)) {
            tap_diag("%s[%zu]: got %.9g want %.9g (atol %g rtol %g)", what, i, got[i], want[i], atol, rtol);
            return 0;
        }
    return 1;
}

/* ----------------------------------------------------------------------------
 * GEMM */

static void gemm_ref(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                     int ldb, float beta, const float *c0, int ldc, double *out)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)(ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) *
                     (tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
            out[(size_t)i * n + j] = alpha * s + (beta == 0.0f ? 0.0 : beta * (double)c0[(size_t)i * ldc + j]);
        }
}

static void test_gemm(void)
{
    static const int shapes[][3] = {{1, 1, 1}, {7, 33, 300}, {100, 70, 513}, {13, 17, 5}, {97, 130, 64}};
    int backends = dp_cpu_have_blas() ? 2 : 1;
    for (int be = 0; be < backends; be++) {
        dev->use_blas = be == 1;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++)
                    for (int acc = 0; acc < 2; acc++) {
                        int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
                        int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
                        float *a = randv((size_t)(ta ? k : m) * lda), *b = randv((size_t)(tb ? n : k) * ldb);
                        float *c = randv((size_t)m * ldc);
                        float *c0 = malloc(sizeof(float) * (size_t)m * ldc);
                        if (!acc) c[0] = NAN; /* beta = 0 must ignore it */
                        memcpy(c0, c, sizeof(float) * (size_t)m * ldc);
                        double *want = malloc(sizeof(double) * (size_t)m * n);
                        float alpha = acc ? 1.0f : 0.5f, beta = acc ? 1.0f : 0.0f;
                        gemm_ref(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c0, ldc, want);
                        dp_gemm_args g = {ta, tb, m, n, k, alpha, beta, a, lda, DP_DTYPE_F32, b, ldb, DP_DTYPE_F32,
                                          c, ldc, DP_DTYPE_F32};
                        dp_status st = ops->gemm(dev, NULL, &g);
                        /* inputs in [-1, 1): fp32 accumulation error stays below 2e-6 per term of k */
                        int ok = st == DP_OK;
                        for (int i = 0; i < m && ok; i++)
                            ok = all_close(c + (size_t)i * ldc, want + (size_t)i * n, (size_t)n, 2e-6 * k, 1e-5,
                                           "C");
                        tap_ok(ok, "gemm %s %dx%dx%d trans %d%d %s (|d| <= 2e-6 k + 1e-5 |ref|)",
                               be ? "cblas" : "portable", m, n, k, ta, tb, acc ? "accumulate" : "beta 0 over NaN");
                        free(a), free(b), free(c), free(c0), free(want);
                    }
    }
    /* the portable GEMM gives the same bits on 1 and 3 threads */
    int m = 200, n = 150, k = 300;
    float *a = randv((size_t)m * k), *b = randv((size_t)k * n);
    float *c1 = calloc((size_t)m * n, sizeof(float)), *c3 = calloc((size_t)m * n, sizeof(float));
    dp_cpu_gemm_portable(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c1, n, 1);
    dp_cpu_gemm_portable(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c3, n, 3);
    tap_ok(memcmp(c1, c3, sizeof(float) * (size_t)m * n) == 0, "portable gemm: 1 and 3 threads give the same bits");
    free(a), free(b), free(c1), free(c3);
    dev->use_blas = dp_cpu_have_blas();

    dp_gemm_args bad = {0, 0, 2, 2, 2, 1, 0, NULL, 1, DP_DTYPE_F32, NULL, 2, DP_DTYPE_F32, NULL, 2, DP_DTYPE_F32};
    tap_is_int(ops->gemm(dev, NULL, &bad), DP_ERR_INVALID, "gemm refuses lda smaller than a row: %s", dp_last_error());
    bad.lda = 2, bad.a_type = DP_DTYPE_BF16;
    tap_is_int(ops->gemm(dev, NULL, &bad), DP_ERR_UNSUPPORTED, "gemm refuses bf16 A with fp32 B: %s", dp_last_error());
}

/* ----------------------------------------------------------------------------
 * element-wise and normalisation */

static double gelu_d(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

static void test_gelu(void)
{
    size_t n = 40000; /* above the parallel threshold */
    float *x = randv(n), *y = malloc(sizeof(float) * n), *dy = randv(n), *dx = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] *= 6.0f;
    double *want = malloc(sizeof(double) * n);
    tap_is_int(ops->gelu_forward(dev, NULL, DP_DTYPE_F32, n, x, y), DP_OK, "gelu_forward runs");
    for (size_t i = 0; i < n; i++) want[i] = gelu_d(x[i]);
    tap_ok(all_close(y, want, n, 1e-6, 1e-5, "gelu"), "gelu_forward = x/2 (1 + erf(x/sqrt 2)) (atol 1e-6, rtol 1e-5)");
    ops->gelu_backward(dev, NULL, DP_DTYPE_F32, n, x, dy, dx);
    for (size_t i = 0; i < n; i++) {
        double h = 1e-4, d = (gelu_d(x[i] + h) - gelu_d(x[i] - h)) / (2 * h);
        want[i] = dy[i] * d;
    }
    tap_ok(all_close(dx, want, n, 1e-5, 1e-4, "dgelu"),
           "gelu_backward matches a central difference of the forward (atol 1e-5, rtol 1e-4)");
    free(x), free(y), free(dy), free(dx), free(want);
}

static void test_add_scale_fill_cast(void)
{
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -2, 1e-8f, 0, 7}, y[5];
    ops->add(dev, NULL, DP_DTYPE_F32, 5, a, b, y);
    tap_ok(y[0] == 1.5f && y[1] == 0 && y[2] == 3.0f && y[4] == 12, "add: y = a + b");
    ops->scale(dev, NULL, DP_DTYPE_F32, 5, 0.5f, y);
    tap_ok(y[0] == 0.75f && y[4] == 6, "scale: y *= alpha");
    ops->fill(dev, NULL, DP_DTYPE_F32, 5, -3.0f, y);
    tap_ok(y[0] == -3 && y[4] == -3, "fill");
    float f[4] = {1.0f, 1.00390625f, 1.01171875f, -2.5f};
    uint16_t h[4];
    float back[4];
    ops->cast(dev, NULL, 4, DP_DTYPE_F32, f, DP_DTYPE_BF16, h);
    ops->cast(dev, NULL, 4, DP_DTYPE_BF16, h, DP_DTYPE_F32, back);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1); 1 + 3*2^-8 goes up to 1 + 2^-6 */
    tap_ok(h[0] == 0x3f80 && h[1] == 0x3f80 && h[2] == 0x3f82 && back[3] == -2.5f && back[2] == 1.015625f,
           "cast fp32 -> bf16 rounds to nearest even, and back");
    tap_is_int(ops->add(dev, NULL, DP_DTYPE_I32, 5, a, b, y), DP_ERR_UNSUPPORTED, "i32 add says unsupported: %s",
               dp_last_error());
}

static void test_rmsnorm(void)
{
    int rows = 9, cols = 37;
    size_t n = (size_t)rows * cols;
    float eps = 1e-5f;
    float *x = randv(n), *w = randv((size_t)cols), *y = malloc(sizeof(float) * n), *rstd = malloc(sizeof(float) * rows);
    float *dy = randv(n), *dx = malloc(sizeof(float) * n), *dw = calloc((size_t)cols, sizeof(float));
    double *want = malloc(sizeof(double) * n), *wdw = calloc((size_t)cols, sizeof(double));
    ops->rmsnorm_forward(dev, NULL, DP_DTYPE_F32, rows, cols, eps, x, w, y, rstd);
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int c = 0; c < cols; c++) ss += (double)x[r * cols + c] * x[r * cols + c];
        double rs = 1 / sqrt(ss / cols + eps);
        for (int c = 0; c < cols; c++) want[r * cols + c] = x[r * cols + c] * rs * w[c];
    }
    tap_ok(all_close(y, want, n, 1e-6, 1e-5, "rmsnorm"), "rmsnorm_forward (atol 1e-6, rtol 1e-5)");

    /* gradient of L = sum(dy * y(x)) by central differences in double */
    ops->rmsnorm_backward_input(dev, NULL, DP_DTYPE_F32, rows, cols, x, w, rstd, dy, dx);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double lp = 0, lm = 0, h = 1e-5;
            for (int sgn = -1; sgn <= 1; sgn += 2) {
                double ss = 0, xc[64];
                for (int j = 0; j < cols; j++) xc[j] = x[r * cols + j] + (j == c ? sgn * h : 0);
                for (int j = 0; j < cols; j++) ss += xc[j] * xc[j];
                double rs = 1 / sqrt(ss / cols + eps), l = 0;
                for (int j = 0; j < cols; j++) l += dy[r * cols + j] * xc[j] * rs * w[j];
                if (sgn < 0) lm = l;
                else lp = l;
            }
            want[r * cols + c] = (lp - lm) / (2 * h);
        }
    tap_ok(all_close(dx, want, n, 1e-4, 1e-3, "drmsnorm"),
           "rmsnorm_backward_input matches central differences (atol 1e-4, rtol 1e-3)");
    dw[0] = 1.0f; /* accumulates */
    ops->rmsnorm_backward_weight(dev, NULL, DP_DTYPE_F32, rows, cols, x, rstd, dy, dw);
    wdw[0] = 1.0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) wdw[c] += (double)dy[r * cols + c] * x[r * cols + c] * rstd[r];
    tap_ok(all_close(dw, wdw, (size_t)cols, 1e-5, 1e-5, "dw"), "rmsnorm_backward_weight accumulates sum dy x rstd");
    free(x), free(w), free(y), free(rstd), free(dy), free(dx), free(dw), free(want), free(wdw);
}

/* ----------------------------------------------------------------------------
 * losses */

static void test_losses(void)
{
    size_t n = 10000;
    float *p = randv(n), *t = randv(n), loss, *d = malloc(sizeof(float) * n);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)p[i] - t[i]) * ((double)p[i] - t[i]);
    ops->mse_forward(dev, NULL, DP_DTYPE_F32, n, p, t, &loss);
    tap_near(loss, s / n, 0, 1e-6, "mse_forward = mean (p - t)^2 (rtol 1e-6)");
    ops->mse_backward(dev, NULL, DP_DTYPE_F32, n, p, t, 3.0f, d);
    double *dwant = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) dwant[i] = 3.0 * 2 * ((double)p[i] - t[i]) / n;
    /* three fp32 roundings (2 dloss / n, p - t, the product): 3 * 2^-24 < 2e-7 relative */
    tap_ok(all_close(d, dwant, n, 0, 2e-7, "dmse"), "mse_backward = dloss 2 (p - t) / n, every element (rtol 2e-7)");
    free(dwant);

    int rows = 6, cols = 11;
    float *z = randv((size_t)rows * cols), *dz = malloc(sizeof(float) * rows * cols);
    int32_t labels[6] = {0, 3, 10, 5, 5, 1};
    for (int i = 0; i < rows * cols; i++) z[i] *= 4;
    double tot = 0;
    for (int r = 0; r < rows; r++) {
        double se = 0;
        for (int c = 0; c < cols; c++) se += exp((double)z[r * cols + c]);
        tot += log(se) - z[r * cols + labels[r]];
    }
    ops->xent_forward(dev, NULL, DP_DTYPE_F32, rows, cols, z, labels, &loss);
    tap_near(loss, tot / rows, 0, 1e-6, "xent_forward = mean(logsumexp - z[label]) (rtol 1e-6)");
    ops->xent_backward(dev, NULL, DP_DTYPE_F32, rows, cols, z, labels, 1.0f, dz);
    double *want = malloc(sizeof(double) * rows * cols);
    for (int r = 0; r < rows; r++) {
        double se = 0;
        for (int c = 0; c < cols; c++) se += exp((double)z[r * cols + c]);
        for (int c = 0; c < cols; c++) want[r * cols + c] = (exp((double)z[r * cols + c]) / se - (c == labels[r])) / rows;
    }
    tap_ok(all_close(dz, want, (size_t)rows * cols, 1e-7, 1e-5, "dxent"),
           "xent_backward = (softmax - onehot) / rows (atol 1e-7, rtol 1e-5)");
    labels[2] = 11;
    tap_is_int(ops->xent_forward(dev, NULL, DP_DTYPE_F32, rows, cols, z, labels, &loss), DP_ERR_INVALID,
               "a label outside the classes is refused: %s", dp_last_error());
    free(p), free(t), free(d), free(z), free(dz), free(want);
}

/* ----------------------------------------------------------------------------
 * rows, optimizers, reductions */

static void test_rows(void)
{
    float src[4][3] = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}, {10, 11, 12}}, dst[3][3];
    int32_t idx[3] = {2, 0, 2};
    ops->gather_rows(dev, NULL, DP_DTYPE_F32, 3, 3, src, idx, dst);
    tap_ok(dst[0][0] == 7 && dst[1][2] == 3 && dst[2][1] == 8, "gather_rows: dst[i] = src[index[i]]");
    float acc[4][3] = {{0}};
    ops->scatter_add_rows(dev, NULL, DP_DTYPE_F32, 3, 3, dst, idx, acc);
    tap_ok(acc[2][0] == 14 && acc[0][2] == 3 && acc[1][0] == 0 && acc[3][1] == 0, "scatter_add_rows adds rows");
}

static void test_optimizers(void)
{
    size_t n = 50000;
    float *p = randv(n), *g = randv(n), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    double *pd = malloc(sizeof(double) * n), *md = calloc(n, sizeof(double)), *vd = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    dp_adamw_args a = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 0};
    for (int step = 1; step <= 3; step++) {
        a.step = step;
        ops->adamw_update(dev, NULL, n, p, g, m, v, &a);
        for (size_t i = 0; i < n; i++) {
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.999 * vd[i] + 0.001 * (double)g[i] * g[i];
            pd[i] *= 1 - 1e-2 * 0.1;
            pd[i] -= 1e-2 * (md[i] / (1 - pow(0.9, step))) / (sqrt(vd[i] / (1 - pow(0.999, step))) + 1e-8);
        }
    }
    tap_ok(all_close(p, pd, n, 1e-6, 1e-5, "adamw"), "adamw_update, 3 steps, vs double (atol 1e-6, rtol 1e-5)");
    a.step = 0;
    tap_is_int(ops->adamw_update(dev, NULL, n, p, g, m, v, &a), DP_ERR_INVALID, "adamw refuses step 0");

    float q[2] = {1, -2}, gq[2] = {0.5f, 0.25f}, buf[2] = {0, 0};
    dp_sgd_args s = {0.1f, 0.9f, 0.0f};
    ops->sgd_update(dev, NULL, 2, q, gq, buf, &s);
    ops->sgd_update(dev, NULL, 2, q, gq, buf, &s);
    /* buf: 0.5 then 0.95; q: 1 - 0.05 - 0.095 */
    tap_near(q[0], 1 - 0.05 - 0.095, 1e-7, 0, "sgd with momentum, 2 steps");
    s.momentum = 0.5f;
    tap_is_int(ops->sgd_update(dev, NULL, 2, q, gq, NULL, &s), DP_ERR_INVALID, "sgd momentum without a buffer is refused");

    float ss;
    double want = 0;
    for (size_t i = 0; i < n; i++) want += (double)g[i] * g[i];
    ops->sum_squares(dev, NULL, DP_DTYPE_F32, n, g, &ss);
    tap_near(ss, want, 0, 1e-6, "sum_squares (rtol 1e-6)");
    free(p), free(g), free(m), free(v), free(pd), free(md), free(vd);
}

static void test_memory(void)
{
    void *p = NULL;
    tap_is_int(ops->alloc(dev, 1000, &p), DP_OK, "alloc");
    tap_ok(((uintptr_t)p & 63) == 0, "alloc is 64-byte aligned");
    ops->memset(dev, p, 0x5a, 1000, NULL);
    char host[1000];
    ops->copy(dev, host, p, 1000, DP_COPY_DEVICE_TO_HOST, NULL);
    tap_ok(host[0] == 0x5a && host[999] == 0x5a, "memset and copy");
    ops->free(dev, p);
    dp_stream *s;
    dp_event *e0, *e1;
    ops->stream_create(dev, &s);
    ops->event_create(dev, &e0);
    ops->event_create(dev, &e1);
    ops->event_record(dev, e0, s);
    ops->event_record(dev, e1, s);
    int done = 0;
    float ms = -1;
    ops->event_query(dev, e1, &done);
    tap_ok(done && ops->event_elapsed(dev, e0, e1, &ms) == DP_OK && ms >= 0, "events complete and time");
    ops->event_destroy(dev, e0), ops->event_destroy(dev, e1), ops->stream_destroy(dev, s);
}

int main(void)
{
    const dp_driver *d;
    if (dp_driver_load("cpu", &d) != DP_OK) return 1;
    ops = d->device;
    dp_device_config cfg = {.threads = 2};
    if (ops->open(&cfg, &dev) != DP_OK) return 1;
    test_gemm();
    test_gelu();
    test_add_scale_fill_cast();
    test_rmsnorm();
    test_losses();
    test_rows();
    test_optimizers();
    test_memory();
    ops->close(dev);
    return tap_done();
}
