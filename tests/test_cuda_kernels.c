/* test_cuda_kernels.c: every CUDA device op against the CPU driver (the definition of correct)
 * on the same random inputs, then every kernel, every element, against double-precision
 * references with derived bounds (tests/kernel_fp64_checks.h, the CPU's fp64 test run on the GPU).
 * Outputs are poisoned with NaN bytes before each kernel so that an element the GPU never wrote
 * fails. Skips when no GPU is present or the module is not built. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "tests/cuda_test_util.h"
#include "tests/kernel_fp64_checks.h"
#include "tests/kernel_fp64_moe_checks.h"
#include "tests/tap.h"

static const dp_device_ops *G, *C; /* GPU and CPU tables */
static dp_device *gdev, *cdev;

/* ----------------------------------------------------------------------------
 * host <-> device helpers (abort the test program on a failing call: tests may exit) */

static void check(dp_status st, const char *what)
{
    if (st != DP_OK) {
        printf("Bail out! %s: %s\n", what, dp_last_error());
        exit(1);
    }
}

static void *up(const void *host, size_t bytes)
{
    void *d;
    check(G->alloc(gdev, bytes, &d), "alloc");
    check(G->copy(gdev, d, host, bytes, DP_COPY_HOST_TO_DEVICE, NULL), "copy to device");
    return d;
}

static void *poisoned(size_t bytes)
{
    void *d;
    check(G->alloc(gdev, bytes, &d), "alloc");
    check(G->memset(gdev, d, 0xff, bytes, NULL), "memset"); /* 0xffffffff is a NaN, 0xffff a bf16 NaN */
    return d;
}

static void down(void *host, const void *dev_ptr, size_t bytes)
{
    check(G->copy(gdev, host, dev_ptr, bytes, DP_COPY_DEVICE_TO_HOST, NULL), "copy to host");
}

/* ----------------------------------------------------------------------------
 * comparisons: |got - want| <= atol + rtol |want|, NaN never passes */

static int compare(const float *got, const float *want, size_t n, double atol, double rtol, const char *what)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tap_close(got[i], want[i], atol, rtol)) {
            tap_diag("%s[%zu]: gpu %.9g cpu %.9g (atol %g rtol %g)", what, i, got[i], want[i], atol, rtol);
            return 0;
        }
        double d = fabs((double)got[i] - want[i]);
        if (d > worst) worst = d;
    }
    tap_diag("%s: largest |gpu - cpu| %.3g over %zu values", what, worst, n);
    return 1;
}

/* ----------------------------------------------------------------------------
 * GEMM: fp32 near float rounding; bf16 inputs compared with the CPU's fp32 product of the
 * same (rounded) inputs */

static void test_gemm(void)
{
    static const int shapes[][3] = {{1, 1, 1}, {37, 53, 71}, {128, 96, 256}, {5, 300, 17}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int acc = 0; acc < 2; acc++) {
                    int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
                    int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
                    size_t na = (size_t)(ta ? k : m) * lda, nb = (size_t)(tb ? n : k) * ldb, nc = (size_t)m * ldc;
                    float *a = randv(na), *b = randv(nb), *c = randv(nc), *got = malloc(nc * 4);
                    float alpha = acc ? 1.0f : 0.5f, beta = acc ? 1.0f : 0.0f;
                    void *da = up(a, na * 4), *db = up(b, nb * 4), *dc = acc ? up(c, nc * 4) : poisoned(nc * 4);
                    dp_gemm_args g = {ta, tb, m, n, k, alpha, beta, da, lda, DP_DTYPE_F32, db, ldb, DP_DTYPE_F32,
                                      dc, ldc, DP_DTYPE_F32};
                    dp_status st = G->gemm(gdev, NULL, &g);
                    down(got, dc, nc * 4);
                    dp_gemm_args h = {ta, tb, m, n, k, alpha, beta, a, lda, DP_DTYPE_F32, b, ldb, DP_DTYPE_F32,
                                      c, ldc, DP_DTYPE_F32};
                    check(C->gemm(cdev, NULL, &h), "cpu gemm");
                    /* compare the m x n part only (the padding of ldc is not C) */
                    int ok = st == DP_OK;
                    for (int i = 0; i < m && ok; i++)
                        /* inputs in [-1, 1): two fp32 sums of k products differ by at most about
                         * k * 2^-24 * sum |a b| <= k^2 * 6e-8; measured differences are far smaller */
                        ok = compare(got + (size_t)i * ldc, c + (size_t)i * ldc, (size_t)n, 1e-6 * k, 1e-5,
                                     i == 0 ? "gemm row 0" : "gemm row");
                    tap_ok(ok, "gemm fp32 %dx%dx%d ta=%d tb=%d %s", m, n, k, ta, tb,
                           acc ? "accumulating (beta 1)" : "beta 0 over NaN");
                    G->free(gdev, da), G->free(gdev, db), G->free(gdev, dc);
                    free(a), free(b), free(c), free(got);
                }
    /* bf16 x bf16 -> fp32 and -> bf16, fp32 accumulation */
    for (int out16 = 0; out16 < 2; out16++) {
        int m = 64, n = 48, k = 320;
        float *a = randv((size_t)m * k), *b = randv((size_t)k * n), *want = malloc((size_t)m * n * 4);
        float *got = malloc((size_t)m * n * 4);
        round_bf16(a, (size_t)m * k), round_bf16(b, (size_t)k * n);
        uint16_t *a16 = to_bf16(a, (size_t)m * k), *b16 = to_bf16(b, (size_t)k * n);
        void *da = up(a16, (size_t)m * k * 2), *db = up(b16, (size_t)k * n * 2);
        void *dc = poisoned((size_t)m * n * (out16 ? 2 : 4));
        dp_gemm_args g = {0, 0, m, n, k, 1.0f, 0.0f, da, k, DP_DTYPE_BF16, db, n, DP_DTYPE_BF16,
                          dc, n, out16 ? DP_DTYPE_BF16 : DP_DTYPE_F32};
        dp_status st = G->gemm(gdev, NULL, &g);
        if (out16) {
            uint16_t *c16 = malloc((size_t)m * n * 2);
            down(c16, dc, (size_t)m * n * 2);
            from_bf16(c16, got, (size_t)m * n);
            free(c16);
        } else
            down(got, dc, (size_t)m * n * 4);
        dp_gemm_args h = {0, 0, m, n, k, 1.0f, 0.0f, a, k, DP_DTYPE_F32, b, n, DP_DTYPE_F32, want, n, DP_DTYPE_F32};
        check(C->gemm(cdev, NULL, &h), "cpu gemm");
        /* products of bf16 values are exact in fp32, so only summation order differs (fp32 out);
         * a bf16 output adds one rounding, 2^-8 relative */
        tap_ok(st == DP_OK && compare(got, want, (size_t)m * n, out16 ? 1e-2 : 1e-4, out16 ? 4e-3 : 1e-5,
                                      out16 ? "gemm bf16->bf16" : "gemm bf16->fp32"),
               "gemm bf16 x bf16 -> %s, fp32 accumulation", out16 ? "bf16" : "fp32");
        G->free(gdev, da), G->free(gdev, db), G->free(gdev, dc);
        free(a), free(b), free(a16), free(b16), free(want), free(got);
    }
    dp_gemm_args bad = {0, 0, 4, 4, 4, 1.0f, 0.0f, NULL, 4, DP_DTYPE_F32, NULL, 4, DP_DTYPE_BF16, NULL, 4, DP_DTYPE_F32};
    dp_status st = G->gemm(gdev, NULL, &bad);
    tap_ok(st == DP_ERR_UNSUPPORTED && strstr(dp_last_error(), "not supported"),
           "gemm with mixed fp32/bf16 inputs is refused plainly (%s)", dp_last_error());
}

/* TF32 when the device is opened with DP_DEVICE_ALLOW_TF32: each product's inputs keep 10
 * mantissa bits (rounded: 2^-11 relative; truncated: 2^-10), so an element may differ from the
 * fp32 product by up to 2^-9 of sum |a b|; and it really is TF32: the difference is far
 * larger than true fp32's */
static void test_gemm_tf32(void)
{
    int m = 128, n = 96, k = 1024;
    dp_device_config cfg = {.ordinal = 0, .flags = DP_DEVICE_ALLOW_TF32};
    dp_device *tdev = NULL;
    check(G->open(&cfg, &tdev), "open cuda device 0 allowing TF32");
    float *a = randv((size_t)m * k), *b = randv((size_t)k * n), *want = malloc((size_t)m * n * 4);
    float *bound = malloc((size_t)m * n * 4), *tf = malloc((size_t)m * n * 4), *f32 = malloc((size_t)m * n * 4);
    float *aa = malloc((size_t)m * k * 4), *ab = malloc((size_t)k * n * 4);
    for (size_t i = 0; i < (size_t)m * k; i++) aa[i] = fabsf(a[i]);
    for (size_t i = 0; i < (size_t)k * n; i++) ab[i] = fabsf(b[i]);
    void *da = up(a, (size_t)m * k * 4), *db = up(b, (size_t)k * n * 4), *dc = poisoned((size_t)m * n * 4);
    dp_gemm_args g = {0, 0, m, n, k, 1.0f, 0.0f, da, k, DP_DTYPE_F32, db, n, DP_DTYPE_F32, dc, n, DP_DTYPE_F32};
    /* The two devices' default streams are not ordered with each other: the poisoning memset
     * (gdev's stream) must be done before tdev's GEMM starts, and the GEMM before gdev's copy
     * reads its output; otherwise the copy may see the NaN poison, or the poison may land on
     * top of the product. */
    check(G->stream_synchronize(gdev, NULL), "wait for the inputs and the poison");
    dp_status st = G->gemm(tdev, NULL, &g);
    check(G->stream_synchronize(tdev, NULL), "wait for the TF32 GEMM");
    down(tf, dc, (size_t)m * n * 4);
    dp_status st2 = G->gemm(gdev, NULL, &g);
    down(f32, dc, (size_t)m * n * 4);
    dp_gemm_args h = {0, 0, m, n, k, 1.0f, 0.0f, a, k, DP_DTYPE_F32, b, n, DP_DTYPE_F32, want, n, DP_DTYPE_F32};
    check(C->gemm(cdev, NULL, &h), "cpu gemm");
    dp_gemm_args hb = {0, 0, m, n, k, 1.0f, 0.0f, aa, k, DP_DTYPE_F32, ab, n, DP_DTYPE_F32, bound, n, DP_DTYPE_F32};
    check(C->gemm(cdev, NULL, &hb), "cpu gemm of |a| |b|");
    double worst_tf = 0, worst_f32 = 0;
    int within = st == DP_OK && st2 == DP_OK;
    for (size_t i = 0; i < (size_t)m * n; i++) {
        double d = fabs((double)tf[i] - want[i]), d32 = fabs((double)f32[i] - want[i]);
        if (!(d <= 1.0 / 512 * bound[i] + 1e-6)) within = 0;
        if (d > worst_tf) worst_tf = d;
        if (d32 > worst_f32) worst_f32 = d32;
    }
    tap_ok(within, "gemm fp32 %dx%dx%d with TF32 allowed: within 2^-9 of sum |a b| of the fp32 product "
                   "(largest difference %.3g; status %d, %d)", m, n, k, worst_tf, (int)st, (int)st2);
    tap_ok(within && worst_tf > 10 * worst_f32, "and it is TF32: %.3g off against %.3g for true fp32", worst_tf,
           worst_f32);
    G->free(gdev, da), G->free(gdev, db), G->free(gdev, dc);
    G->close(tdev);
    free(a), free(b), free(want), free(bound), free(tf), free(f32), free(aa), free(ab);
}

/* ----------------------------------------------------------------------------
 * element-wise, in fp32 (same expressions, no fused multiply-add: equal bits where no
 * transcendental function is involved) and in bf16 */

typedef enum { EW_ADD, EW_SCALE, EW_GELU, EW_GELU_BACK, EW_MSE_BACK } ew_kind;

static dp_status run_ew(const dp_device_ops *o, dp_device *d, ew_kind k, dp_dtype t, size_t n, const void *x,
                        const void *y, void *out)
{
    switch (k) {
    case EW_ADD: return o->add(d, NULL, t, n, x, y, out);
    case EW_SCALE:
        if (o == G) DP_CHECK(G->copy(d, out, x, n * dp_dtype_size(t), DP_COPY_DEVICE_TO_DEVICE, NULL));
        else memcpy(out, x, n * dp_dtype_size(t));
        return o->scale(d, NULL, t, n, -0.75f, out);
    case EW_GELU: return o->gelu_forward(d, NULL, t, n, x, out);
    case EW_GELU_BACK: return o->gelu_backward(d, NULL, t, n, x, y, out);
    case EW_MSE_BACK: return o->mse_backward(d, NULL, t, n, x, y, 1.5f, out);
    }
    return DP_ERR_INTERNAL;
}

static void test_elementwise(void)
{
    static const char *names[] = {"add", "scale", "gelu_forward", "gelu_backward", "mse_backward"};
    /* erff and expf differ by an ulp or two between the CUDA and C libraries; for x << 0,
     * 1 + erf(x / sqrt 2) cancels, so an ulp of erf becomes about |x| 2^-24 absolute in GELU */
    static const double rtol32[] = {0, 0, 2e-6, 2e-6, 0}, atol32[] = {0, 0, 1e-6, 1e-6, 0};
    size_t sizes[] = {1, 7, 4096 + 5, 100003};
    for (int k = 0; k <= EW_MSE_BACK; k++)
        for (size_t si = 0; si < 4; si++) {
            size_t n = sizes[si];
            float *x = randv(n), *y = randv(n), *want = malloc(n * 4), *got = malloc(n * 4);
            for (size_t i = 0; i < n; i++) x[i] *= 4.0f; /* GELU's interesting range */
            /* fp32, at an offset of one element too, so that the unaligned path runs */
            for (int off = 0; off < 2; off++) {
                if (off && n < 2) continue;
                size_t m = n - off;
                float *dx = up(x, n * 4), *dy = up(y, n * 4), *dout = poisoned(n * 4);
                dp_status st = run_ew(G, gdev, (ew_kind)k, DP_DTYPE_F32, m, dx + off, dy + off, dout + off);
                down(got, dout + off, m * 4);
                check(run_ew(C, cdev, (ew_kind)k, DP_DTYPE_F32, m, x + off, y + off, want), "cpu kernel");
                tap_ok(st == DP_OK && compare(got, want, m, atol32[k], rtol32[k], names[k]), "%s fp32, n = %zu%s",
                       names[k], m, off ? " (unaligned)" : "");
                G->free(gdev, dx), G->free(gdev, dy), G->free(gdev, dout);
            }
            /* bf16: the CPU computes in fp32 on the rounded inputs; the GPU rounds its result once */
            round_bf16(x, n), round_bf16(y, n);
            uint16_t *x16 = to_bf16(x, n), *y16 = to_bf16(y, n), *o16 = malloc(n * 2);
            void *dx = up(x16, n * 2), *dy = up(y16, n * 2), *dout = poisoned(n * 2);
            dp_status st = run_ew(G, gdev, (ew_kind)k, DP_DTYPE_BF16, n, dx, dy, dout);
            down(o16, dout, n * 2);
            from_bf16(o16, got, n);
            check(run_ew(C, cdev, (ew_kind)k, DP_DTYPE_F32, n, x, y, want), "cpu kernel");
            tap_ok(st == DP_OK && compare(got, want, n, 1e-6, 1.0 / 128, names[k]), "%s bf16, n = %zu", names[k], n);
            G->free(gdev, dx), G->free(gdev, dy), G->free(gdev, dout);
            free(x16), free(y16), free(o16), free(x), free(y), free(want), free(got);
        }
}

static void test_fill_cast(void)
{
    size_t n = 1000;
    float *got = malloc(n * 4);
    void *d = poisoned(n * 4);
    dp_status st = G->fill(gdev, NULL, DP_DTYPE_F32, n, 2.5f, d);
    down(got, d, n * 4);
    int ok = st == DP_OK;
    for (size_t i = 0; i < n; i++) ok = ok && got[i] == 2.5f;
    tap_ok(ok, "fill fp32");
    int32_t *gi = malloc(n * 4);
    check(G->memset(gdev, d, 0xff, n * 4, NULL), "memset");
    st = G->fill(gdev, NULL, DP_DTYPE_I32, n, 7.0f, d);
    down(gi, d, n * 4);
    ok = st == DP_OK;
    for (size_t i = 0; i < n; i++) ok = ok && gi[i] == 7;
    tap_ok(ok, "fill int32");
    /* fp32 -> bf16 is round-to-nearest-even, exactly the CPU's; bf16 -> fp32 is exact */
    float *x = randv(n);
    x[0] = 1.00390625f;      /* halfway between two bf16 values: rounds to even */
    x[1] = 1.01171875f;      /* the other halfway case */
    uint16_t *want16 = malloc(n * 2), *got16 = malloc(n * 2);
    check(C->cast(cdev, NULL, n, DP_DTYPE_F32, x, DP_DTYPE_BF16, want16), "cpu cast");
    void *dx = up(x, n * 4), *d16 = poisoned(n * 2);
    st = G->cast(gdev, NULL, n, DP_DTYPE_F32, dx, DP_DTYPE_BF16, d16);
    down(got16, d16, n * 2);
    tap_ok(st == DP_OK && memcmp(got16, want16, n * 2) == 0, "cast fp32 -> bf16 rounds to nearest even, as the CPU");
    check(G->memset(gdev, d, 0xff, n * 4, NULL), "memset");
    st = G->cast(gdev, NULL, n, DP_DTYPE_BF16, d16, DP_DTYPE_F32, d);
    down(got, d, n * 4);
    float *back = malloc(n * 4);
    from_bf16(want16, back, n);
    tap_ok(st == DP_OK && memcmp(got, back, n * 4) == 0, "cast bf16 -> fp32 is exact");
    G->free(gdev, d), G->free(gdev, dx), G->free(gdev, d16);
    free(got), free(gi), free(x), free(want16), free(got16), free(back);
}

/* ----------------------------------------------------------------------------
 * RMSNorm, losses and reductions: sums in double on both sides, in different orders */

static void test_rmsnorm(void)
{
    int shapes[][2] = {{1, 1}, {3, 1000}, {64, 4096}, {257, 96}};
    for (int si = 0; si < 4; si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        size_t n = (size_t)rows * cols;
        float *x = randv(n), *w = randv((size_t)cols), *dy = randv(n);
        float *y_c = malloc(n * 4), *r_c = malloc((size_t)rows * 4), *dx_c = malloc(n * 4);
        float *dw_c = randv((size_t)cols), *got = malloc(n * 4), *gr = malloc((size_t)rows * 4);
        float *dw0 = malloc((size_t)cols * 4), *gdw = malloc((size_t)cols * 4);
        memcpy(dw0, dw_c, (size_t)cols * 4);
        check(C->rmsnorm_forward(cdev, NULL, DP_DTYPE_F32, rows, cols, 1e-6f, x, w, y_c, r_c), "cpu rmsnorm");
        check(C->rmsnorm_backward_input(cdev, NULL, DP_DTYPE_F32, rows, cols, x, w, r_c, dy, dx_c), "cpu rms bwd");
        check(C->rmsnorm_backward_weight(cdev, NULL, DP_DTYPE_F32, rows, cols, x, r_c, dy, dw_c), "cpu rms bwd w");
        void *dx = up(x, n * 4), *dw = up(w, (size_t)cols * 4), *ddy = up(dy, n * 4);
        void *dyo = poisoned(n * 4), *dr = poisoned((size_t)rows * 4), *ddx = poisoned(n * 4);
        void *ddw = up(dw0, (size_t)cols * 4);
        dp_status st = G->rmsnorm_forward(gdev, NULL, DP_DTYPE_F32, rows, cols, 1e-6f, dx, dw, dyo, dr);
        down(got, dyo, n * 4), down(gr, dr, (size_t)rows * 4);
        /* the same double sum in another order rounds to the same float nearly always */
        tap_ok(st == DP_OK && compare(gr, r_c, (size_t)rows, 0, 1e-6, "rstd") &&
                   compare(got, y_c, n, 1e-6, 1e-6, "rmsnorm y"),
               "rmsnorm_forward %dx%d", rows, cols);
        /* the GPU uses the CPU's rstd here, so that only this kernel is compared */
        check(G->copy(gdev, dr, r_c, (size_t)rows * 4, DP_COPY_HOST_TO_DEVICE, NULL), "copy");
        st = G->rmsnorm_backward_input(gdev, NULL, DP_DTYPE_F32, rows, cols, dx, dw, dr, ddy, ddx);
        down(got, ddx, n * 4);
        /* dx = rstd dy w - x coef: a difference, so an absolute tolerance at the terms' scale */
        tap_ok(st == DP_OK && compare(got, dx_c, n, 2e-5, 1e-5, "rmsnorm dx"), "rmsnorm_backward_input %dx%d", rows,
               cols);
        st = G->rmsnorm_backward_weight(gdev, NULL, DP_DTYPE_F32, rows, cols, dx, dr, ddy, ddw);
        down(gdw, ddw, (size_t)cols * 4);
        /* rows add in order in fp32 on both sides: the same expression, the same bits */
        tap_ok(st == DP_OK && compare(gdw, dw_c, (size_t)cols, 0, 0, "rmsnorm dw"),
               "rmsnorm_backward_weight %dx%d accumulates rows in order (bit-equal)", rows, cols);
        G->free(gdev, dx), G->free(gdev, dw), G->free(gdev, ddy), G->free(gdev, dyo), G->free(gdev, dr);
        G->free(gdev, ddx), G->free(gdev, ddw);
        free(x), free(w), free(dy), free(y_c), free(r_c), free(dx_c), free(dw_c), free(got), free(gr), free(dw0);
        free(gdw);
    }
}

static void test_losses(void)
{
    size_t sizes[] = {1, 1000, 1 << 20};
    for (int si = 0; si < 3; si++) {
        size_t n = sizes[si];
        float *p = randv(n), *t = randv(n), want, got;
        void *dp_ = up(p, n * 4), *dt = up(t, n * 4), *dl = poisoned(4);
        dp_status st = G->mse_forward(gdev, NULL, DP_DTYPE_F32, n, dp_, dt, dl);
        down(&got, dl, 4);
        check(C->mse_forward(cdev, NULL, DP_DTYPE_F32, n, p, t, &want), "cpu mse");
        tap_ok(st == DP_OK && compare(&got, &want, 1, 0, 1e-6, "mse"), "mse_forward n = %zu", n);
        check(G->memset(gdev, dl, 0xff, 4, NULL), "memset");
        st = G->sum_squares(gdev, NULL, DP_DTYPE_F32, n, dp_, dl);
        down(&got, dl, 4);
        check(C->sum_squares(cdev, NULL, DP_DTYPE_F32, n, p, &want), "cpu sum_squares");
        tap_ok(st == DP_OK && compare(&got, &want, 1, 0, 1e-6, "sum_squares"), "sum_squares n = %zu", n);
        G->free(gdev, dp_), G->free(gdev, dt), G->free(gdev, dl);
        free(p), free(t);
    }
    int shapes[][2] = {{1, 2}, {17, 1000}, {256, 32000}};
    for (int si = 0; si < 3; si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        size_t n = (size_t)rows * cols;
        float *z = randv(n), want, got, *dz = malloc(n * 4), *gdz = malloc(n * 4);
        for (size_t i = 0; i < n; i++) z[i] *= 8.0f;
        int32_t *lab = malloc((size_t)rows * 4);
        for (int r = 0; r < rows; r++) lab[r] = (int32_t)((r * 7919u) % (unsigned)cols);
        void *dzz = up(z, n * 4), *dlab = up(lab, (size_t)rows * 4), *dl = poisoned(4), *ddz = poisoned(n * 4);
        dp_status st = G->xent_forward(gdev, NULL, DP_DTYPE_F32, rows, cols, dzz, dlab, dl);
        down(&got, dl, 4);
        check(C->xent_forward(cdev, NULL, DP_DTYPE_F32, rows, cols, z, lab, &want), "cpu xent");
        tap_ok(st == DP_OK && compare(&got, &want, 1, 0, 1e-6, "xent"), "xent_forward %dx%d", rows, cols);
        st = G->xent_backward(gdev, NULL, DP_DTYPE_F32, rows, cols, dzz, dlab, 0.5f, ddz);
        down(gdz, ddz, n * 4);
        check(C->xent_backward(cdev, NULL, DP_DTYPE_F32, rows, cols, z, lab, 0.5f, dz), "cpu xent bwd");
        tap_ok(st == DP_OK && compare(gdz, dz, n, 1e-9, 1e-6, "xent dlogits"), "xent_backward %dx%d", rows, cols);
        G->free(gdev, dzz), G->free(gdev, dlab), G->free(gdev, dl), G->free(gdev, ddz);
        free(z), free(dz), free(gdz), free(lab);
    }
}

/* ----------------------------------------------------------------------------
 * rows and optimizers: plain data movement and the CPU's expressions, so equal bits */

static void test_rows(void)
{
    int rows = 300, cols = 129, src_rows = 50;
    float *src = randv((size_t)src_rows * cols), *want = malloc((size_t)rows * cols * 4);
    float *got = malloc((size_t)rows * cols * 4);
    int32_t *idx = malloc((size_t)rows * 4);
    for (int i = 0; i < rows; i++) idx[i] = (int32_t)((i * 37u + 11u) % (unsigned)src_rows);
    void *ds = up(src, (size_t)src_rows * cols * 4), *di = up(idx, (size_t)rows * 4);
    void *dd = poisoned((size_t)rows * cols * 4);
    dp_status st = G->gather_rows(gdev, NULL, DP_DTYPE_F32, rows, cols, ds, di, dd);
    down(got, dd, (size_t)rows * cols * 4);
    check(C->gather_rows(cdev, NULL, DP_DTYPE_F32, rows, cols, src, idx, want), "cpu gather");
    tap_ok(st == DP_OK && memcmp(got, want, (size_t)rows * cols * 4) == 0, "gather_rows (300 rows from 50)");
    /* scatter: many rows onto the same 50 destinations, added in increasing source row */
    float *acc = randv((size_t)src_rows * cols), *gacc = malloc((size_t)src_rows * cols * 4);
    void *da = up(acc, (size_t)src_rows * cols * 4);
    st = G->scatter_add_rows(gdev, NULL, DP_DTYPE_F32, rows, cols, dd, di, da);
    down(gacc, da, (size_t)src_rows * cols * 4);
    check(C->scatter_add_rows(cdev, NULL, DP_DTYPE_F32, rows, cols, want, idx, acc), "cpu scatter");
    tap_ok(st == DP_OK && compare(gacc, acc, (size_t)src_rows * cols, 0, 0, "scatter"),
           "scatter_add_rows adds duplicates in source order (bit-equal)");
    G->free(gdev, ds), G->free(gdev, di), G->free(gdev, dd), G->free(gdev, da);
    free(src), free(want), free(got), free(idx), free(acc), free(gacc);
}

static void test_optimizers(void)
{
    size_t n = 10007;
    float *p = randv(n), *g = randv(n), *m = randv(n), *v = randv(n);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    void *dp_ = up(p, n * 4), *dg = up(g, n * 4), *dm = up(m, n * 4), *dv = up(v, n * 4);
    float *gp = malloc(n * 4), *gm = malloc(n * 4), *gv = malloc(n * 4);
    dp_status st = DP_OK;
    for (int step = 1; step <= 3 && st == DP_OK; step++) {
        dp_adamw_args a = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step};
        st = G->adamw_update(gdev, NULL, n, dp_, dg, dm, dv, &a);
        check(C->adamw_update(cdev, NULL, n, p, g, m, v, &a), "cpu adamw");
    }
    down(gp, dp_, n * 4), down(gm, dm, n * 4), down(gv, dv, n * 4);
    tap_ok(st == DP_OK && compare(gp, p, n, 0, 0, "adamw param") && compare(gm, m, n, 0, 0, "adamw m") &&
               compare(gv, v, n, 0, 0, "adamw v"),
           "adamw_update, 3 steps: parameters and moments bit-equal to the CPU");
    dp_sgd_args s = {0.01f, 0.9f, 0.01f};
    st = G->sgd_update(gdev, NULL, n, dp_, dg, dm, &s);
    check(C->sgd_update(cdev, NULL, n, p, g, m, &s), "cpu sgd");
    down(gp, dp_, n * 4), down(gm, dm, n * 4);
    tap_ok(st == DP_OK && compare(gp, p, n, 0, 0, "sgd param") && compare(gm, m, n, 0, 0, "sgd momentum"),
           "sgd_update with momentum bit-equal to the CPU");
    G->free(gdev, dp_), G->free(gdev, dg), G->free(gdev, dm), G->free(gdev, dv);
    free(p), free(g), free(m), free(v), free(gp), free(gm), free(gv);
}

/* ----------------------------------------------------------------------------
 * streams and events: work on stream B that waits for an event recorded on stream A sees A's
 * result; the GEMM is large enough that a missing wait would read stale data */

static void test_streams(void)
{
    dp_stream *a, *b;
    dp_event *e0, *e1;
    check(G->stream_create(gdev, &a), "stream");
    check(G->stream_create(gdev, &b), "stream");
    check(G->event_create(gdev, &e0), "event");
    check(G->event_create(gdev, &e1), "event");
    int n = 2048;
    size_t nn = (size_t)n * n;
    float *x = randv(nn), *want = malloc(nn * 4), *got = malloc(nn * 4);
    void *dx = up(x, nn * 4), *dy = poisoned(nn * 4), *dz = poisoned(nn * 4);
    check(G->event_record(gdev, e0, a), "record");
    dp_gemm_args g = {0, 0, n, n, n, 1.0f, 0.0f, dx, n, DP_DTYPE_F32, dx, n, DP_DTYPE_F32, dy, n, DP_DTYPE_F32};
    check(G->gemm(gdev, a, &g), "gemm");
    check(G->event_record(gdev, e1, a), "record");
    check(G->stream_wait_event(gdev, b, e1), "wait");
    check(G->scale(gdev, b, DP_DTYPE_F32, nn, 1.0f, dy), "scale"); /* touches y on b */
    check(G->add(gdev, b, DP_DTYPE_F32, nn, dy, dy, dz), "add");
    check(G->stream_synchronize(gdev, b), "sync");
    int done = 0;
    check(G->event_query(gdev, e1, &done), "query");
    float ms = -1;
    dp_status st = G->event_elapsed(gdev, e0, e1, &ms);
    down(got, dz, nn * 4);
    dp_gemm_args h = {0, 0, n, n, n, 1.0f, 0.0f, x, n, DP_DTYPE_F32, x, n, DP_DTYPE_F32, want, n, DP_DTYPE_F32};
    check(C->gemm(cdev, NULL, &h), "cpu gemm");
    for (size_t i = 0; i < nn; i++) want[i] = want[i] + want[i];
    tap_ok(done == 1, "the event is complete after the waiting stream synchronised");
    tap_ok(st == DP_OK && ms > 0, "event_elapsed measures the GEMM between two events (%.3f ms)", ms);
    tap_ok(compare(got, want, nn, 1e-6 * n * 2, 1e-5, "two-stream result"),
           "stream B waited for stream A's GEMM through an event");
    G->free(gdev, dx), G->free(gdev, dy), G->free(gdev, dz);
    G->event_destroy(gdev, e0), G->event_destroy(gdev, e1);
    G->stream_destroy(gdev, a), G->stream_destroy(gdev, b);
    free(x), free(want), free(got);
}

/* Large copies from pageable memory go through the driver's pinned staging in 32 MB turns:
 * an odd size over three turns must arrive whole, and the host buffer may change at once. */
static void test_large_copy(void)
{
    size_t n = ((size_t)70 << 20) / 4 + 3;
    float *h = randv(n), *keep = malloc(n * 4), *back = malloc(n * 4);
    memcpy(keep, h, n * 4);
    void *d = poisoned(n * 4);
    dp_status st = G->copy(gdev, d, h, n * 4, DP_COPY_HOST_TO_DEVICE, NULL);
    memset(h, 0, n * 4); /* the copy has taken the data when it returns */
    down(back, d, n * 4);
    tap_ok(st == DP_OK && memcmp(back, keep, n * 4) == 0, "a 70 MB copy from pageable memory arrives whole");
    G->free(gdev, d);
    free(h), free(keep), free(back);
}

static void test_errors(void)
{
    dp_device_config cfg = {.ordinal = 999};
    dp_device *d = NULL;
    dp_status st = G->open(&cfg, &d);
    tap_ok(st == DP_ERR_INVALID && d == NULL && strstr(dp_last_error(), "device 999"),
           "opening a device that does not exist fails plainly (%s)", dp_last_error());
    void *p = NULL;
    st = G->alloc(gdev, (size_t)1 << 50, &p);
    tap_ok(st == DP_ERR_NOMEM && p == NULL && strstr(dp_last_error(), "out of memory"),
           "an allocation larger than the GPU fails with DP_ERR_NOMEM (%s)", dp_last_error());
    dp_device_info info;
    st = G->info(gdev, &info);
    tap_ok(st == DP_OK && info.supports_bf16 && info.concurrent_streams && info.total_memory > 0,
           "device info: %s", info.name);
}

/* ----------------------------------------------------------------------------
 * mixture of experts: routing, layout, combine and the bias update bit-equal to the CPU (the
 * same expressions in the same order, no fused multiply-add); sigmoid and SwiGLU, which go
 * through expf, within a few float roundings */

static int same_bytes(const void *a, const void *b, size_t n, const char *what)
{
    if (memcmp(a, b, n) == 0) return 1;
    const unsigned char *x = a, *y = b;
    size_t i = 0;
    while (x[i] == y[i]) i++;
    tap_diag("%s: first differing byte %zu of %zu", what, i, n);
    return 0;
}

static void test_moe(void)
{
    enum { T = 517, E = 64, NG = 8, TG = 3, K = 6, H = 200 };
    float rs = 2.5f;
    /* scores on a grid of 1/64, so that ties between experts and between groups are common */
    float *sc = malloc(sizeof(float) * T * E), *bias = malloc(sizeof(float) * E);
    for (size_t i = 0; i < (size_t)T * E; i++) sc[i] = (float)(int)((urand() + 1.0f) * 32.0f) / 64.0f;
    for (int e = 0; e < E; e++) bias[e] = (float)(int)(urand() * 4.0f) / 64.0f;
    int32_t *ex = malloc(sizeof(int32_t) * T * K), *gex = malloc(sizeof(int32_t) * T * K);
    float *w = malloc(sizeof(float) * T * K), *gw = malloc(sizeof(float) * T * K);
    void *dsc = up(sc, sizeof(float) * T * E), *dbias = up(bias, sizeof(float) * E);
    void *dex = poisoned(sizeof(int32_t) * T * K), *dw = poisoned(sizeof(float) * T * K);
    dp_status st = G->moe_topk(gdev, NULL, T, E, NG, TG, K, dsc, dbias, rs, dex, dw);
    check(C->moe_topk(cdev, NULL, T, E, NG, TG, K, sc, bias, rs, ex, w), "cpu moe_topk");
    down(gex, dex, sizeof(int32_t) * T * K), down(gw, dw, sizeof(float) * T * K);
    tap_ok(st == DP_OK && same_bytes(gex, ex, sizeof(int32_t) * T * K, "experts") &&
               same_bytes(gw, w, sizeof(float) * T * K, "weights"),
           "moe_topk: 517 tokens, 64 experts in 8 groups, 3 kept, top 6, many ties: the CPU's experts and weights");

    /* the gate's backward from random weight gradients */
    float *dwt = randv((size_t)T * K), *dl = malloc(sizeof(float) * T * E), *gdl = malloc(sizeof(float) * T * E);
    void *ddwt = up(dwt, sizeof(float) * T * K), *ddl = poisoned(sizeof(float) * T * E);
    st = G->moe_topk_backward(gdev, NULL, T, E, K, dsc, dex, ddwt, rs, ddl);
    check(C->moe_topk_backward(cdev, NULL, T, E, K, sc, ex, dwt, rs, dl), "cpu moe_topk_backward");
    down(gdl, ddl, sizeof(float) * T * E);
    tap_ok(st == DP_OK && same_bytes(gdl, dl, sizeof(float) * T * E, "dlogits"),
           "moe_topk_backward: the CPU's bits, zero where not selected");

    /* the dispatch layout */
    int32_t *rsl = malloc(sizeof(int32_t) * T * K), *srw = malloc(sizeof(int32_t) * T * K), *cnt = malloc(sizeof(int32_t) * E);
    int32_t *grsl = malloc(sizeof(int32_t) * T * K), *gsrw = malloc(sizeof(int32_t) * T * K), *gcnt = malloc(sizeof(int32_t) * E);
    void *drsl = poisoned(sizeof(int32_t) * T * K), *dsrw = poisoned(sizeof(int32_t) * T * K), *dcnt = poisoned(sizeof(int32_t) * E);
    st = G->moe_permute(gdev, NULL, T, K, E, dex, drsl, dsrw, dcnt);
    check(C->moe_permute(cdev, NULL, T, K, E, ex, rsl, srw, cnt), "cpu moe_permute");
    down(grsl, drsl, sizeof(int32_t) * T * K), down(gsrw, dsrw, sizeof(int32_t) * T * K), down(gcnt, dcnt, sizeof(int32_t) * E);
    tap_ok(st == DP_OK && same_bytes(grsl, rsl, sizeof(int32_t) * T * K, "row_token") &&
               same_bytes(gsrw, srw, sizeof(int32_t) * T * K, "slot_row") && same_bytes(gcnt, cnt, sizeof(int32_t) * E, "counts"),
           "moe_permute: the CPU's stable layout and counts");

    /* combine and its backward, fp32 and bf16 */
    for (int b = 0; b < 2; b++) {
        dp_dtype t = b ? DP_DTYPE_BF16 : DP_DTYPE_F32;
        size_t es = b ? 2 : 4, nrows = (size_t)T * K * H, ny = (size_t)T * H;
        float *rows32 = randv(nrows), *y32 = randv(ny), *dy32 = randv(ny);
        void *rows = malloc(nrows * es), *y = malloc(ny * es), *dy = malloc(ny * es), *gy = malloc(ny * es);
        void *drw = malloc(nrows * es), *gdrw = malloc(nrows * es);
        float *dwc = malloc(sizeof(float) * T * K), *gdwc = malloc(sizeof(float) * T * K);
        for (size_t i = 0; i < nrows; i++)
            b ? (void)(((uint16_t *)rows)[i] = f32_to_bf16_rne(rows32[i])) : (void)(((float *)rows)[i] = rows32[i]);
        for (size_t i = 0; i < ny; i++) {
            if (b) ((uint16_t *)y)[i] = f32_to_bf16_rne(y32[i]), ((uint16_t *)dy)[i] = f32_to_bf16_rne(dy32[i]);
            else ((float *)y)[i] = y32[i], ((float *)dy)[i] = dy32[i];
        }
        void *drows = up(rows, nrows * es), *dyv = up(y, ny * es), *ddy = up(dy, ny * es);
        st = G->moe_combine(gdev, NULL, t, T, K, H, drows, dsrw, dw, 1, dyv);
        check(C->moe_combine(cdev, NULL, t, T, K, H, rows, srw, w, 1, y), "cpu moe_combine");
        down(gy, dyv, ny * es);
        tap_ok(st == DP_OK && same_bytes(gy, y, ny * es, "combined"),
               "moe_combine %s (weighted, accumulating): the CPU's bits", dp_dtype_name(t));
        void *ddrw = poisoned(nrows * es), *ddwc = poisoned(sizeof(float) * T * K);
        st = G->moe_combine_backward(gdev, NULL, t, T, K, H, drows, dsrw, dw, ddy, ddrw, ddwc);
        check(C->moe_combine_backward(cdev, NULL, t, T, K, H, rows, srw, w, dy, drw, dwc), "cpu moe_combine_backward");
        down(gdrw, ddrw, nrows * es), down(gdwc, ddwc, sizeof(float) * T * K);
        tap_ok(st == DP_OK && same_bytes(gdrw, drw, nrows * es, "drows") &&
                   same_bytes(gdwc, dwc, sizeof(float) * T * K, "dweight"),
               "moe_combine_backward %s: the CPU's row gradients and weight gradients", dp_dtype_name(t));
        G->free(gdev, drows), G->free(gdev, dyv), G->free(gdev, ddy), G->free(gdev, ddrw), G->free(gdev, ddwc);
        free(rows32), free(y32), free(dy32), free(rows), free(y), free(dy), free(gy), free(drw), free(gdrw);
        free(dwc), free(gdwc);
    }

    /* sigmoid and SwiGLU (fp32): expf differs by an ulp or two between the two libraries */
    size_t n = 100003;
    float *a = randv(n), *bb = randv(n), *g = randv(n);
    for (size_t i = 0; i < n; i++) a[i] *= 8.0f;
    float *want = malloc(n * 4), *got = malloc(n * 4), *want2 = malloc(n * 4), *got2 = malloc(n * 4);
    void *da = up(a, n * 4), *db = up(bb, n * 4), *dg = up(g, n * 4), *dy = poisoned(n * 4), *dy2 = poisoned(n * 4);
    st = G->sigmoid_forward(gdev, NULL, DP_DTYPE_F32, n, da, dy);
    check(C->sigmoid_forward(cdev, NULL, DP_DTYPE_F32, n, a, want), "cpu sigmoid");
    down(got, dy, n * 4);
    tap_ok(st == DP_OK && compare(got, want, n, 1e-7, 1e-6, "sigmoid"), "sigmoid_forward within 1e-6 of the CPU");
    st = G->swiglu_forward(gdev, NULL, DP_DTYPE_F32, n, da, db, dy);
    check(C->swiglu_forward(cdev, NULL, DP_DTYPE_F32, n, a, bb, want), "cpu swiglu");
    down(got, dy, n * 4);
    tap_ok(st == DP_OK && compare(got, want, n, 1e-6, 1e-6, "swiglu"), "swiglu_forward within 1e-6 of the CPU");
    st = G->swiglu_backward(gdev, NULL, DP_DTYPE_F32, n, da, db, dg, dy, dy2);
    check(C->swiglu_backward(cdev, NULL, DP_DTYPE_F32, n, a, bb, g, want, want2), "cpu swiglu backward");
    down(got, dy, n * 4), down(got2, dy2, n * 4);
    /* da = dy b s (1 + a (1 - s)): the bracket cancels near a = -1.28, so an absolute bound */
    tap_ok(st == DP_OK && compare(got, want, n, 2e-6, 1e-6, "swiglu da") && compare(got2, want2, n, 1e-6, 1e-6, "swiglu db"),
           "swiglu_backward within 2e-6 of the CPU");

    /* the balancing bias and the load counts */
    float *load = malloc(sizeof(float) * E), *bias2 = malloc(sizeof(float) * E), *gbias = malloc(sizeof(float) * E);
    for (int e = 0; e < E; e++) load[e] = (float)(e % 5 == 0 ? 0 : 3 * e % 17), bias2[e] = bias[e];
    void *dload = up(load, sizeof(float) * E), *db2 = up(bias2, sizeof(float) * E);
    st = G->add_counts(gdev, NULL, E, dcnt, dload);
    if (st == DP_OK) st = G->moe_bias_update(gdev, NULL, E, dload, 1e-3f, db2);
    check(C->add_counts(cdev, NULL, E, cnt, load), "cpu add_counts");
    check(C->moe_bias_update(cdev, NULL, E, load, 1e-3f, bias2), "cpu moe_bias_update");
    down(gbias, db2, sizeof(float) * E);
    tap_ok(st == DP_OK && same_bytes(gbias, bias2, sizeof(float) * E, "bias"),
           "add_counts and moe_bias_update: the CPU's bias, bit for bit");

    /* more experts than a block's shared memory holds: refused by name, not launched */
    st = G->moe_topk(gdev, NULL, 1, 20000, 1, 1, 1, dsc, NULL, 1.0f, dex, dw);
    tap_ok(st == DP_ERR_UNSUPPORTED && strstr(dp_last_error(), "moe_topk handles at most"),
           "moe_topk with 20000 experts refused (%s)", dp_last_error());

    G->free(gdev, dsc), G->free(gdev, dbias), G->free(gdev, dex), G->free(gdev, dw), G->free(gdev, ddwt);
    G->free(gdev, ddl), G->free(gdev, drsl), G->free(gdev, dsrw), G->free(gdev, dcnt), G->free(gdev, da);
    G->free(gdev, db), G->free(gdev, dg), G->free(gdev, dy), G->free(gdev, dy2), G->free(gdev, dload), G->free(gdev, db2);
    free(sc), free(bias), free(ex), free(gex), free(w), free(gw), free(dwt), free(dl), free(gdl);
    free(rsl), free(srw), free(cnt), free(grsl), free(gsrw), free(gcnt);
    free(a), free(bb), free(g), free(want), free(got), free(want2), free(got2), free(load), free(bias2), free(gbias);
}

int main(void)
{
    const dp_driver *drv = cuda_test_load_driver();
    G = drv->device;
    const dp_driver *cpu = NULL;
    check(dp_driver_load("cpu", &cpu), "load the cpu driver");
    C = cpu->device;
    dp_device_config cfg = {.ordinal = 0};
    check(G->open(&cfg, &gdev), "open cuda device 0");
    check(C->open(&cfg, &cdev), "open cpu device");
    test_gemm();
    test_gemm_tf32();
    test_elementwise();
    test_fill_cast();
    test_rmsnorm();
    test_losses();
    test_rows();
    test_optimizers();
    test_moe();
    test_streams();
    test_large_copy();
    test_errors();
    kc_ops = G, kc_dev = gdev, kc_name = "cuda";
    kc_gemm_all("", 0);
    kc_run_kernels();
    kc_run_moe_kernels();
    G->close(gdev);
    C->close(cdev);
    return tap_done();
}
