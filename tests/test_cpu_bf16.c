/* test_cpu_bf16.c: the CPU driver's bf16 kernels against its own fp32 kernels. Every bf16
 * result must equal, bit for bit, the fp32 kernel run on the widened inputs with each bf16
 * output rounded once to nearest even (by this test's own rounding); plus hand-checked roundings. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "drivers/cpu/cpu_internal.h"
#include "engine/driver.h"
#include "tests/tap.h"

static const dp_device_ops *ops;
static dp_device *dev;

/* ----------------------------------------------------------------------------
 * bf16 on the test's side, written apart from the driver's */

static float widen(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest, ties to even, on the halves of the word: the lower half decides. */
static uint16_t round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t hi = (uint16_t)(u >> 16);
    uint32_t lo = u & 0xffffu;
    if (isnan(f)) return (uint16_t)(hi | 0x0040); /* NaN stays NaN, made quiet */
    if (lo > 0x8000u || (lo == 0x8000u && (hi & 1u))) hi++; /* a carry moves into the exponent: still right */
    return hi;
}

static int is_nan_bf16(uint16_t h) { return (h & 0x7fffu) > 0x7f80u; }

static float *widen_all(const uint16_t *h, size_t n)
{
    float *f = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) f[i] = widen(h[i]);
    return f;
}

static uint16_t *round_all(const float *f, size_t n)
{
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = round_bf16(f[i]);
    return h;
}

/* fp32 values that bf16 cannot hold: the rounding was really exercised */
static size_t inexact(const float *f, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += !isnan(f[i]) && widen(round_bf16(f[i])) != f[i];
    return k;
}

/* fp32 values exactly halfway between two bf16 values */
static size_t ties(const float *f, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &f[i], sizeof u);
        k += !isnan(f[i]) && (u & 0xffffu) == 0x8000u;
    }
    return k;
}

static int same16(const uint16_t *got, const uint16_t *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            tap_diag("%s[%zu]: got 0x%04x (%.9g), want 0x%04x (%.9g)", what, i, got[i], widen(got[i]), want[i],
                     widen(want[i]));
            return 0;
        }
    return 1;
}

static int same32(const float *got, const float *want, size_t n, const char *what)
{
    if (memcmp(got, want, sizeof(float) * n) == 0) return 1;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            tap_diag("%s[%zu]: got %.9g, want %.9g", what, i, got[i], want[i]);
            break;
        }
    return 0;
}

/* ----------------------------------------------------------------------------
 * inputs: seeded, mostly in [-scale, scale), with zeros of both signs, large and tiny values */

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t next_u64(void)
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return rng_state;
}
static float urand(void) { return (float)((next_u64() >> 40) / 8388608.0 - 1.0); } /* [-1, 1) */

static uint16_t *gen(size_t n, float scale)
{
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (i % 16) {
        case 3: v = 0.0f; break;
        case 7: v = -0.0f; break;
        case 11: v = ldexpf(urand(), 12 + (int)(next_u64() % 8)); break; /* large */
        case 13: v = ldexpf(urand(), -20 - (int)(next_u64() % 8)); break; /* tiny */
        default: v = scale * urand();
        }
        h[i] = round_bf16(v);
    }
    return h;
}

/* b[i] such that a[i] + b[i] lands on, just above or just below a bf16 tie (half an ulp of a) */
static uint16_t *gen_near_ties(const uint16_t *a, size_t n)
{
    uint16_t *b = gen(n, 1.0f);
    for (size_t i = 0; i < n; i++) {
        float av = widen(a[i]);
        if (av == 0.0f || !isfinite(av) || fabsf(av) < 1e-30f) continue;
        int e;
        frexpf(av, &e);
        float half_ulp = ldexpf(1.0f, e - 9); /* bf16 keeps 8 significant bits */
        switch (i % 4) {
        case 0: b[i] = round_bf16(half_ulp); break;
        case 1: b[i] = round_bf16(half_ulp * (1.0f + 1.0f / 128)); break;
        case 2: b[i] = round_bf16(-half_ulp * (1.0f - 1.0f / 256)); break;
        default: break;
        }
    }
    return b;
}

#define N_ELEM 40000 /* above the kernels' parallel threshold */

/* ----------------------------------------------------------------------------
 * hand-checked roundings */

static void test_by_hand(void)
{
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1). 1 + 3*2^-8 is halfway between
     * 1 + 2^-7 (odd) and 1 + 2^-6: up. 1 + 2^-8 + 2^-12 is past halfway: up. */
    const uint16_t one = 0x3f80, max = 0x7f7f, nan = 0x7fc0;
    uint16_t a[8] = {one, one, one, 0xbf80, nan, max, one, 0xff80};
    uint16_t b[8] = {round_bf16(0x1p-8f), round_bf16(0x3p-8f), round_bf16(0x1p-8f + 0x1p-12f), round_bf16(-0x1p-8f),
                     one, max, 0xbf80, one};
    uint16_t want[8] = {0x3f80, 0x3f82, 0x3f81, 0xbf80, 0, 0x7f80, 0x0000, 0xff80};
    uint16_t y[8];
    tap_ok(round_bf16(1.00390625f) == 0x3f80 && round_bf16(1.01171875f) == 0x3f82 &&
               round_bf16(1.0f + 0x1p-8f + 0x1p-12f) == 0x3f81 && widen(b[0]) == 0x1p-8f && widen(b[1]) == 0x3p-8f,
           "the test's own rounding: 1 + 2^-8 -> 1, 1 + 3*2^-8 -> 1 + 2^-6, 1 + 2^-8 + 2^-12 -> 1 + 2^-7");
    tap_is_int(ops->add(dev, NULL, DP_DTYPE_BF16, 8, a, b, y), DP_OK, "bf16 add runs");
    int ok = 1;
    for (int i = 0; i < 8; i++)
        if (i == 4 ? !is_nan_bf16(y[i]) : y[i] != want[i]) {
            tap_diag("add by hand [%d]: got 0x%04x want 0x%04x", i, y[i], want[i]);
            ok = 0;
        }
    tap_ok(ok, "bf16 add: ties to even (1 + 2^-8 -> 1, 1 + 3*2^-8 -> 1 + 2^-6), past a tie up, "
               "negative ties, NaN stays NaN, max + max -> inf, 1 - 1 -> +0, -inf + 1 -> -inf");

    uint16_t f[3];
    ops->fill(dev, NULL, DP_DTYPE_BF16, 1, 1.00390625f, f);
    ops->fill(dev, NULL, DP_DTYPE_BF16, 1, 1.01171875f, f + 1);
    ops->fill(dev, NULL, DP_DTYPE_BF16, 1, -0.0f, f + 2);
    tap_ok(f[0] == 0x3f80 && f[1] == 0x3f82 && f[2] == 0x8000, "bf16 fill rounds its value once (0x%04x 0x%04x 0x%04x)",
           f[0], f[1], f[2]);

    uint16_t sc[2] = {0x3f81, 0x3f81}; /* (1 + 2^-7)^2 = 1 + 2^-6 + 2^-14: down to 1 + 2^-6 */
    ops->scale(dev, NULL, DP_DTYPE_BF16, 2, widen(0x3f81), sc);
    tap_ok(sc[0] == 0x3f82 && sc[1] == 0x3f82, "bf16 scale: (1 + 2^-7)^2 rounds to 1 + 2^-6");

    /* two rows adding 2^-8 each into 1: each add rounds (1, then 1 again), as on the GPU; one
     * rounding of the fp32 sum would give 1 + 2^-7 */
    uint16_t dst[1] = {one}, src[2] = {b[0], b[0]};
    int32_t idx[2] = {0, 0};
    ops->scatter_add_rows(dev, NULL, DP_DTYPE_BF16, 2, 1, src, idx, dst);
    tap_ok(dst[0] == 0x3f80, "bf16 scatter_add_rows rounds after each source row (got 0x%04x)", dst[0]);
}

/* ----------------------------------------------------------------------------
 * element-wise kernels and reductions */

static void test_elementwise(void)
{
    size_t n = N_ELEM;
    uint16_t *a = gen(n, 4.0f), *b = gen_near_ties(a, n), *y = malloc(2 * n), *w;
    a[5] = 0x7fc0, a[9] = 0x7f80, b[17] = 0xff80; /* NaN and infinities go through too */
    float *af = widen_all(a, n), *bf = widen_all(b, n), *yf = malloc(4 * n);

    /* add */
    ops->add(dev, NULL, DP_DTYPE_F32, n, af, bf, yf);
    w = round_all(yf, n);
    tap_ok(ops->add(dev, NULL, DP_DTYPE_BF16, n, a, b, y) == DP_OK && same16(y, w, n, "add"),
           "add bf16 = round(fp32 add on widened inputs), n = %zu (%zu outputs rounded, %zu exact ties)", n,
           inexact(yf, n), ties(yf, n));
    tap_ok(inexact(yf, n) > n / 4 && ties(yf, n) > n / 8, "add: the inputs reach rounding and ties");
    uint16_t *alias = malloc(2 * n);
    memcpy(alias, a, 2 * n);
    ops->add(dev, NULL, DP_DTYPE_BF16, n, alias, b, alias);
    tap_ok(same16(alias, w, n, "add y = a"), "add bf16 with y aliasing a");
    memcpy(alias, b, 2 * n);
    ops->add(dev, NULL, DP_DTYPE_BF16, n, a, alias, alias);
    tap_ok(same16(alias, w, n, "add y = b"), "add bf16 with y aliasing b");
    free(w);

    /* scale */
    float alpha = 0.3f;
    memcpy(yf, af, 4 * n);
    ops->scale(dev, NULL, DP_DTYPE_F32, n, alpha, yf);
    w = round_all(yf, n);
    memcpy(y, a, 2 * n);
    tap_ok(ops->scale(dev, NULL, DP_DTYPE_BF16, n, alpha, y) == DP_OK && same16(y, w, n, "scale") &&
               inexact(yf, n) > n / 4,
           "scale bf16 = round(fp32 scale), alpha %g", (double)alpha);
    free(w);

    /* fill */
    for (int i = 0; i < 4; i++) {
        float v = i == 0 ? 1.00390625f : i == 1 ? -3.14159265f : i == 2 ? 1e38f : 0x1p-130f;
        ops->fill(dev, NULL, DP_DTYPE_F32, n, v, yf);
        w = round_all(yf, n);
        tap_ok(ops->fill(dev, NULL, DP_DTYPE_BF16, n, v, y) == DP_OK && same16(y, w, n, "fill"),
               "fill bf16 = round(fp32 fill) for %g", (double)v);
        free(w);
    }

    /* GELU forward and backward (dx aliasing dy, as the model calls it) */
    ops->gelu_forward(dev, NULL, DP_DTYPE_F32, n, af, yf);
    w = round_all(yf, n);
    tap_ok(ops->gelu_forward(dev, NULL, DP_DTYPE_BF16, n, a, y) == DP_OK && same16(y, w, n, "gelu") &&
               inexact(yf, n) > n / 2,
           "gelu_forward bf16 = round(fp32 gelu_forward)");
    free(w);
    ops->gelu_backward(dev, NULL, DP_DTYPE_F32, n, af, bf, yf);
    w = round_all(yf, n);
    tap_ok(ops->gelu_backward(dev, NULL, DP_DTYPE_BF16, n, a, b, y) == DP_OK && same16(y, w, n, "dgelu") &&
               inexact(yf, n) > n / 2,
           "gelu_backward bf16 = round(fp32 gelu_backward)");
    memcpy(alias, b, 2 * n);
    ops->gelu_backward(dev, NULL, DP_DTYPE_BF16, n, a, alias, alias);
    tap_ok(same16(alias, w, n, "dgelu dx = dy"), "gelu_backward bf16 with dx aliasing dy");
    free(w);

    /* MSE and the sum of squares: fp32 results, equal bits */
    uint16_t *t = gen(n, 4.0f);
    float *tf = widen_all(t, n), l32, l16;
    ops->mse_forward(dev, NULL, DP_DTYPE_F32, n - 10, af + 10, tf + 10, &l32); /* past the NaN and inf */
    dp_status st = ops->mse_forward(dev, NULL, DP_DTYPE_BF16, n - 10, a + 10, t + 10, &l16);
    tap_ok(st == DP_OK && same32(&l16, &l32, 1, "mse") && isfinite(l16),
           "mse_forward bf16 = fp32 mse_forward on widened inputs, bit for bit (%.9g)", (double)l16);
    float dloss = 1.7f;
    ops->mse_backward(dev, NULL, DP_DTYPE_F32, n, af, tf, dloss, yf);
    w = round_all(yf, n);
    tap_ok(ops->mse_backward(dev, NULL, DP_DTYPE_BF16, n, a, t, dloss, y) == DP_OK && same16(y, w, n, "dmse") &&
               inexact(yf, n) > n / 4,
           "mse_backward bf16 = round(fp32 mse_backward)");
    free(w);
    ops->sum_squares(dev, NULL, DP_DTYPE_F32, n - 10, af + 10, &l32);
    st = ops->sum_squares(dev, NULL, DP_DTYPE_BF16, n - 10, a + 10, &l16);
    tap_ok(st == DP_OK && same32(&l16, &l32, 1, "sumsq") && isfinite(l16),
           "sum_squares bf16 = fp32 sum_squares on widened inputs, bit for bit (%.9g)", (double)l16);

    free(a), free(b), free(y), free(alias), free(t), free(af), free(bf), free(yf), free(tf);
}

/* ----------------------------------------------------------------------------
 * RMSNorm */

static void test_rmsnorm(void)
{
    int rows = 33, cols = 1000; /* rows x cols above the parallel threshold */
    size_t n = (size_t)rows * cols;
    float eps = 1e-5f;
    uint16_t *x = gen(n, 3.0f), *dy = gen(n, 1.0f), *y = malloc(2 * n), *w16;
    float *xf = widen_all(x, n), *dyf = widen_all(dy, n), *yf = malloc(4 * n);
    float *wt = malloc(4 * cols), *r32 = malloc(4 * rows), *r16 = malloc(4 * rows);
    float *dw32 = malloc(4 * cols), *dw16 = malloc(4 * cols);
    for (int c = 0; c < cols; c++) wt[c] = 1.0f + 0.5f * urand(), dw32[c] = dw16[c] = urand();

    ops->rmsnorm_forward(dev, NULL, DP_DTYPE_F32, rows, cols, eps, xf, wt, yf, r32);
    w16 = round_all(yf, n);
    tap_ok(ops->rmsnorm_forward(dev, NULL, DP_DTYPE_BF16, rows, cols, eps, x, wt, y, r16) == DP_OK &&
               same16(y, w16, n, "rmsnorm y") && same32(r16, r32, (size_t)rows, "rstd") && inexact(yf, n) > n / 2,
           "rmsnorm_forward bf16: y = round(fp32 y), rstd (fp32) bit for bit");
    free(w16);

    ops->rmsnorm_backward_input(dev, NULL, DP_DTYPE_F32, rows, cols, xf, wt, r32, dyf, yf);
    w16 = round_all(yf, n);
    tap_ok(ops->rmsnorm_backward_input(dev, NULL, DP_DTYPE_BF16, rows, cols, x, wt, r32, dy, y) == DP_OK &&
               same16(y, w16, n, "rmsnorm dx") && inexact(yf, n) > n / 2,
           "rmsnorm_backward_input bf16 = round(fp32 rmsnorm_backward_input)");
    free(w16);

    ops->rmsnorm_backward_weight(dev, NULL, DP_DTYPE_F32, rows, cols, xf, r32, dyf, dw32);
    tap_ok(ops->rmsnorm_backward_weight(dev, NULL, DP_DTYPE_BF16, rows, cols, x, r32, dy, dw16) == DP_OK &&
               same32(dw16, dw32, (size_t)cols, "dw"),
           "rmsnorm_backward_weight bf16 accumulates into fp32 dw as fp32 does on widened inputs, bit for bit");

    free(x), free(dy), free(y), free(xf), free(dyf), free(yf), free(wt), free(r32), free(r16), free(dw32), free(dw16);
}

/* ----------------------------------------------------------------------------
 * cross-entropy */

static void test_xent(void)
{
    int rows = 17, cols = 2500;
    size_t n = (size_t)rows * cols;
    uint16_t *z = gen(n, 8.0f), *d = malloc(2 * n), *w16;
    for (size_t i = 0; i < n; i++)
        if (i % 16 == 11) z[i] = round_bf16(40.0f * urand()); /* large logits, not so large that all else vanishes */
    float *zf = widen_all(z, n), *df = malloc(4 * n), l32, l16;
    int32_t *labels = malloc(sizeof(int32_t) * rows);
    for (int r = 0; r < rows; r++) labels[r] = (int32_t)(next_u64() % (uint64_t)cols);

    ops->xent_forward(dev, NULL, DP_DTYPE_F32, rows, cols, zf, labels, &l32);
    dp_status st = ops->xent_forward(dev, NULL, DP_DTYPE_BF16, rows, cols, z, labels, &l16);
    tap_ok(st == DP_OK && same32(&l16, &l32, 1, "xent") && isfinite(l16),
           "xent_forward bf16 = fp32 xent_forward on widened logits, bit for bit (%.9g)", (double)l16);
    float dloss = 0.75f;
    ops->xent_backward(dev, NULL, DP_DTYPE_F32, rows, cols, zf, labels, dloss, df);
    w16 = round_all(df, n);
    tap_ok(ops->xent_backward(dev, NULL, DP_DTYPE_BF16, rows, cols, z, labels, dloss, d) == DP_OK &&
               same16(d, w16, n, "dxent") && inexact(df, n) > n / 4,
           "xent_backward bf16 = round(fp32 xent_backward), the label's entry rounded once");
    free(w16);
    free(z), free(d), free(zf), free(df), free(labels);
}

/* ----------------------------------------------------------------------------
 * rows */

static void test_rows(void)
{
    int rows = 40, cols = 300, dst_rows = 25;
    uint16_t *src = gen((size_t)rows * cols, 2.0f), *dst = gen((size_t)dst_rows * cols, 2.0f);
    src[7] = 0x7f81; /* a signalling NaN's bits: gather copies bits, it does not convert */
    int32_t *idx = malloc(sizeof(int32_t) * rows);
    for (int i = 0; i < rows; i++) idx[i] = (int32_t)(next_u64() % (uint64_t)dst_rows);

    /* gather: rows of src by index, bit for bit */
    uint16_t *g = malloc(2 * (size_t)rows * cols);
    int32_t *gidx = malloc(sizeof(int32_t) * dst_rows);
    for (int i = 0; i < dst_rows; i++) gidx[i] = (int32_t)(next_u64() % (uint64_t)rows);
    gidx[0] = 0;
    int ok = ops->gather_rows(dev, NULL, DP_DTYPE_BF16, dst_rows, cols, src, gidx, g) == DP_OK;
    for (int i = 0; i < dst_rows && ok; i++)
        ok = memcmp(g + (size_t)i * cols, src + (size_t)gidx[i] * cols, 2 * (size_t)cols) == 0;
    tap_ok(ok && g[7] == 0x7f81, "gather_rows bf16 copies rows bit for bit");

    /* scatter-add with every destination distinct: round(fp32 scatter_add on widened rows) */
    int32_t perm[25];
    for (int i = 0; i < dst_rows; i++) perm[i] = (int32_t)((i * 7 + 3) % dst_rows);
    float *dstf = widen_all(dst, (size_t)dst_rows * cols), *srcf = widen_all(src, (size_t)rows * cols);
    ops->scatter_add_rows(dev, NULL, DP_DTYPE_F32, dst_rows, cols, srcf + cols, perm, dstf);
    uint16_t *w = round_all(dstf, (size_t)dst_rows * cols), *d1 = malloc(2 * (size_t)dst_rows * cols);
    memcpy(d1, dst, 2 * (size_t)dst_rows * cols);
    tap_ok(ops->scatter_add_rows(dev, NULL, DP_DTYPE_BF16, dst_rows, cols, src + cols, perm, d1) == DP_OK &&
               same16(d1, w, (size_t)dst_rows * cols, "scatter distinct") &&
               inexact(dstf, (size_t)dst_rows * cols) > (size_t)dst_rows * cols / 4,
           "scatter_add_rows bf16, distinct rows = round(fp32 scatter_add_rows)");
    free(w);

    /* with repeated destinations: the fp32 kernel one source row at a time, rounded after each */
    free(dstf);
    dstf = widen_all(dst, (size_t)dst_rows * cols);
    for (int i = 0; i < rows; i++) {
        ops->scatter_add_rows(dev, NULL, DP_DTYPE_F32, 1, cols, srcf + (size_t)i * cols, idx + i, dstf);
        float *row = dstf + (size_t)idx[i] * cols;
        for (int c = 0; c < cols; c++) row[c] = widen(round_bf16(row[c]));
    }
    w = round_all(dstf, (size_t)dst_rows * cols);
    memcpy(d1, dst, 2 * (size_t)dst_rows * cols);
    tap_ok(ops->scatter_add_rows(dev, NULL, DP_DTYPE_BF16, rows, cols, src, idx, d1) == DP_OK &&
               same16(d1, w, (size_t)dst_rows * cols, "scatter repeated"),
           "scatter_add_rows bf16, repeated rows: each source row is one rounded fp32 add, in order");
    free(w);
    free(src), free(dst), free(idx), free(g), free(gidx), free(dstf), free(srcf), free(d1);
}

/* ----------------------------------------------------------------------------
 * GEMM: every transpose, strided operands (the gaps hold NaN bits and must not be read),
 * beta 0 over NaN, beta 1 accumulating, a general alpha and beta; C in fp32 and in bf16 */

static int gemm_case(int ta, int tb, int m, int n, int k, float alpha, float beta, int c_bf16)
{
    int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
    size_t na = (size_t)(ta ? k : m) * lda, nb = (size_t)(tb ? n : k) * ldb, nc = (size_t)m * ldc;
    uint16_t *a = gen(na, 1.0f), *b = gen(nb, 1.0f), *c16 = gen(nc, 1.0f);
    for (int r = 0; r < (ta ? k : m); r++)
        for (int j = ta ? m : k; j < lda; j++) a[(size_t)r * lda + j] = 0xffff;
    for (int r = 0; r < (tb ? n : k); r++)
        for (int j = tb ? k : n; j < ldb; j++) b[(size_t)r * ldb + j] = 0xffff;
    if (beta == 0.0f && nc) c16[0] = 0x7fc0; /* beta = 0 must ignore it */
    float *af = widen_all(a, na), *bf = widen_all(b, nb), *cf = widen_all(c16, nc);
    float *c32 = malloc(4 * (nc ? nc : 1));
    for (size_t i = 0; i < nc; i++) c32[i] = urand(); /* an fp32 C holds any fp32 value */
    if (!c_bf16 && beta == 0.0f && nc) c32[0] = NAN;

    /* the want: the fp32 GEMM on the widened operands (C fp32: the same starting C) */
    float *want = malloc(4 * (nc ? nc : 1));
    memcpy(want, c_bf16 ? cf : c32, 4 * nc);
    dp_gemm_args g = {ta, tb, m, n, k, alpha, beta, af, lda, DP_DTYPE_F32, bf, ldb, DP_DTYPE_F32, want, ldc,
                      DP_DTYPE_F32};
    int ok = ops->gemm(dev, NULL, &g) == DP_OK;

    g.a = a, g.a_type = DP_DTYPE_BF16, g.b = b, g.b_type = DP_DTYPE_BF16;
    g.c = c_bf16 ? (void *)c16 : (void *)c32, g.c_type = c_bf16 ? DP_DTYPE_BF16 : DP_DTYPE_F32;
    uint16_t *c16_before = malloc(2 * (nc ? nc : 1));
    memcpy(c16_before, c16, 2 * nc);
    ok = ok && ops->gemm(dev, NULL, &g) == DP_OK;
    for (int i = 0; i < m && ok; i++)
        for (int j = 0; j < ldc && ok; j++) {
            size_t o = (size_t)i * ldc + j;
            if (c_bf16) {
                uint16_t w = j < n ? round_bf16(want[o]) : c16_before[o]; /* the gaps untouched */
                ok = c16[o] == w && !(beta == 0.0f && j < n && is_nan_bf16(c16[o]));
                if (!ok)
                    tap_diag("C[%d][%d]: got 0x%04x want 0x%04x (trans %d%d)", i, j, c16[o], w, ta, tb);
            } else {
                ok = memcmp(&c32[o], &want[o], 4) == 0 && !(beta == 0.0f && j < n && isnan(c32[o]));
                if (!ok) tap_diag("C[%d][%d]: got %.9g want %.9g (trans %d%d)", i, j, c32[o], want[o], ta, tb);
            }
        }
    free(a), free(b), free(c16), free(af), free(bf), free(cf), free(c32), free(want), free(c16_before);
    return ok;
}

static void test_gemm(void)
{
    static const int shapes[][3] = {{1, 1, 1}, {7, 33, 300}, {13, 17, 5}, {64, 48, 96}, {100, 70, 513}, {5, 6, 0}};
    static const float coef[][2] = {{0.5f, 0.0f}, {1.0f, 1.0f}, {1.5f, -0.75f}};
    int backends = dp_cpu_have_blas() ? 2 : 1;
    for (int be = 0; be < backends; be++) {
        dev->use_blas = be == 1;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int c_bf16 = 0; c_bf16 < 2; c_bf16++)
                for (size_t ci = 0; ci < sizeof coef / sizeof coef[0]; ci++) {
                    int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2], ok = 1;
                    for (int ta = 0; ta < 2; ta++)
                        for (int tb = 0; tb < 2; tb++)
                            ok &= gemm_case(ta, tb, m, n, k, coef[ci][0], coef[ci][1], c_bf16);
                    tap_ok(ok, "gemm %s bf16 x bf16 -> %s %dx%dx%d, alpha %g beta %g%s, every transpose: "
                               "the fp32 GEMM on widened operands%s",
                           be ? "cblas" : "portable", c_bf16 ? "bf16" : "fp32", m, n, k, (double)coef[ci][0],
                           (double)coef[ci][1], coef[ci][1] == 0.0f ? " over NaN" : "",
                           c_bf16 ? ", rounded once" : ", bit for bit");
                }
    }
    dev->use_blas = dp_cpu_have_blas();

    /* the products of bf16 values are exact in fp32: a bf16 GEMM with k = 1 is one rounding of a*b */
    uint16_t a1 = round_bf16(1.0f + 0x1p-7f), b1 = round_bf16(1.0f + 0x1p-7f), c1 = 0;
    float c1f = 0.0f;
    dp_gemm_args g = {0, 0, 1, 1, 1, 1.0f, 0.0f, &a1, 1, DP_DTYPE_BF16, &b1, 1, DP_DTYPE_BF16, &c1f, 1, DP_DTYPE_F32};
    ops->gemm(dev, NULL, &g);
    g.c = &c1, g.c_type = DP_DTYPE_BF16;
    ops->gemm(dev, NULL, &g);
    tap_ok(c1f == 1.0f + 0x1p-6f + 0x1p-14f && c1 == 0x3f82,
           "gemm bf16: (1 + 2^-7)^2 is exact in an fp32 C (%.9g) and rounds to 1 + 2^-6 in a bf16 C (0x%04x)",
           (double)c1f, c1);
}

/* ----------------------------------------------------------------------------
 * thread count, refusals and the info flag */

static void test_threads(void)
{
    dp_device *one;
    dp_device_config cfg = {.threads = 1};
    if (ops->open(&cfg, &one) != DP_OK) {
        tap_ok(0, "open a 1-thread device: %s", dp_last_error());
        return;
    }
    int m = 150, n = 120, k = 200;
    uint16_t *a = gen((size_t)m * k, 1.0f), *b = gen((size_t)k * n, 1.0f);
    uint16_t *c1 = malloc(2 * (size_t)m * n), *c2 = malloc(2 * (size_t)m * n);
    dp_gemm_args g = {0, 1, m, n, k, 1.0f, 0.0f, a, k, DP_DTYPE_BF16, b, k, DP_DTYPE_BF16, c1, n, DP_DTYPE_BF16};
    one->use_blas = dev->use_blas = 0;
    int ok = ops->gemm(one, NULL, &g) == DP_OK;
    g.c = c2;
    ok = ok && ops->gemm(dev, NULL, &g) == DP_OK && memcmp(c1, c2, 2 * (size_t)m * n) == 0;
    dev->use_blas = dp_cpu_have_blas();
    size_t ne = N_ELEM;
    uint16_t *x = gen(ne, 4.0f), *y1 = malloc(2 * ne), *y2 = malloc(2 * ne);
    ok = ok && ops->gelu_forward(one, NULL, DP_DTYPE_BF16, ne, x, y1) == DP_OK &&
         ops->gelu_forward(dev, NULL, DP_DTYPE_BF16, ne, x, y2) == DP_OK && memcmp(y1, y2, 2 * ne) == 0;
    tap_ok(ok, "bf16 portable gemm and gelu: 1 and 2 threads give the same bits");
    ops->close(one);
    free(a), free(b), free(c1), free(c2), free(x), free(y1), free(y2);
}

static void test_refusals(void)
{
    float f[4] = {0};
    uint16_t h[4] = {0};
    dp_gemm_args g = {0, 0, 2, 2, 2, 1.0f, 0.0f, h, 2, DP_DTYPE_BF16, f, 2, DP_DTYPE_F32, f, 2, DP_DTYPE_F32};
    dp_status st = ops->gemm(dev, NULL, &g);
    tap_ok(st == DP_ERR_UNSUPPORTED && strstr(dp_last_error(), "gemm") && strstr(dp_last_error(), "bf16"),
           "gemm bf16 x fp32 is refused: %s", dp_last_error());
    g.a = f, g.a_type = DP_DTYPE_F32, g.b = h, g.b_type = DP_DTYPE_BF16;
    st = ops->gemm(dev, NULL, &g);
    tap_is_int(st, DP_ERR_UNSUPPORTED, "gemm fp32 x bf16 is refused: %s", dp_last_error());
    g.b = f, g.b_type = DP_DTYPE_F32, g.c = h, g.c_type = DP_DTYPE_BF16;
    st = ops->gemm(dev, NULL, &g);
    tap_is_int(st, DP_ERR_UNSUPPORTED, "gemm fp32 x fp32 -> bf16 is refused: %s", dp_last_error());
    int32_t i32[4] = {1, 2, 3, 4};
    st = ops->add(dev, NULL, DP_DTYPE_I32, 4, i32, i32, i32);
    tap_ok(st == DP_ERR_UNSUPPORTED && strstr(dp_last_error(), "add") && strstr(dp_last_error(), "int32") &&
               i32[0] == 1,
           "add on i32 is refused, naming the op and dtype: %s", dp_last_error());
    st = ops->gelu_forward(dev, NULL, (dp_dtype)7, 4, h, h);
    tap_is_int(st, DP_ERR_UNSUPPORTED, "gelu_forward on an unknown dtype is refused: %s", dp_last_error());
    int32_t neg = -1;
    st = ops->scatter_add_rows(dev, NULL, DP_DTYPE_BF16, 1, 4, h, &neg, h);
    tap_is_int(st, DP_ERR_INVALID, "scatter_add_rows bf16 refuses a negative index: %s", dp_last_error());
    dp_device_info info;
    tap_ok(ops->info(dev, &info) == DP_OK && info.supports_bf16 == 1, "info says the cpu supports bf16");
}

int main(void)
{
    const dp_driver *d;
    if (dp_driver_load("cpu", &d) != DP_OK) return 1;
    ops = d->device;
    dp_device_config cfg = {.threads = 2};
    if (ops->open(&cfg, &dev) != DP_OK) return 1;
    test_by_hand();
    test_elementwise();
    test_rmsnorm();
    test_xent();
    test_rows();
    test_gemm();
    test_threads();
    test_refusals();
    ops->close(dev);
    return tap_done();
}
