/* kernel_fp64_checks.h: every kernel of a device table checked element by element against a
 * double-precision reference computed here, in fp32 and in bf16, with each bound derived next to
 * its check. Header-only, shared by the CPU test (test_cpu_kernels_fp64.c) and the CUDA test.
 *
 * The rules. u = 2^-24 is fp32's unit roundoff and gamma(r) = r u / (1 - r u) bounds r fp32
 * roundings on the way to one output (Higham, Accuracy and Stability, ch. 3): an fp32 output must
 * lie within gamma(r) times the sum of the magnitudes of the terms it is made of. A bf16 kernel
 * works in fp32 on its (exactly widened) inputs and rounds each output once, so a bf16 output must
 * be the exact result rounded once to bf16 (nearest, ties to even) - or, where the exact result
 * lies within the fp32 bound of a midpoint between bf16 values, a value on the other side of it:
 * in all, between round(exact - bound) and round(exact + bound), rounding being monotonic.
 * The reference never calls a kernel: it is plain double arithmetic on the very input values. */
#ifndef DP_TESTS_KERNEL_FP64_CHECKS_H
#define DP_TESTS_KERNEL_FP64_CHECKS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/device.h"
#include "tests/tap.h"

static const dp_device_ops *kc_ops; /* the table under test */
static dp_device *kc_dev;
static const char *kc_name = ""; /* "cpu", "cuda": in every test's name */

#define KC_U32 0x1p-24 /* fp32 unit roundoff */
#define KC_U16 0x1p-8  /* bf16 unit roundoff */

static double kc_gamma(double r) { return r * KC_U32 / (1.0 - r * KC_U32); }

/* ----------------------------------------------------------------------------
 * device memory (a failing allocation or copy leaves nothing to check: bail out) */

static void kc_try(dp_status st, const char *what)
{
    if (st != DP_OK) {
        printf("Bail out! %s %s: %s\n", kc_name, what, dp_last_error());
        exit(1);
    }
}

static void *kc_alloc(size_t bytes)
{
    void *p = NULL;
    kc_try(kc_ops->alloc(kc_dev, bytes ? bytes : 1, &p), "alloc");
    return p;
}

static void *kc_up(const void *host, size_t bytes)
{
    void *d = kc_alloc(bytes);
    if (bytes) kc_try(kc_ops->copy(kc_dev, d, host, bytes, DP_COPY_HOST_TO_DEVICE, NULL), "copy to device");
    return d;
}

/* all bytes 0xff: a NaN in fp32 and in bf16, so that an output never written fails */
static void *kc_poison(size_t bytes)
{
    void *d = kc_alloc(bytes);
    kc_try(kc_ops->memset(kc_dev, d, 0xff, bytes ? bytes : 1, NULL), "memset");
    return d;
}

static void kc_down(void *host, const void *d, size_t bytes)
{
    if (bytes) kc_try(kc_ops->copy(kc_dev, host, d, bytes, DP_COPY_DEVICE_TO_HOST, NULL), "copy to host");
}

static void *kc_host(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) abort();
    return p;
}

/* ----------------------------------------------------------------------------
 * inputs and bf16, written apart from the drivers' own conversions */

static uint64_t kc_rng = 0x2545f4914f6cdd1dull;
static double kc_urand(void) /* in [-1, 1) */
{
    kc_rng ^= kc_rng << 13, kc_rng ^= kc_rng >> 7, kc_rng ^= kc_rng << 17;
    return (double)(kc_rng >> 40) / 8388608.0 - 1.0;
}

static float kc_widen(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* the nearest bf16 value to a double, ties to even (finite inputs; beyond bf16's range: inf) */
static double kc_bf16_round(double x)
{
    if (x == 0.0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e); /* |x| = f 2^e, f in [1/2, 1): 8 significant bits leave steps of 2^(e-8) */
    int q = e - 8 < -133 ? -133 : e - 8; /* bf16's subnormals step by 2^-133 */
    double y = ldexp(nearbyint(ldexp(x, -q)), q); /* nearbyint: to nearest, ties to even */
    return fabs(y) > 0x1.fcp127 ? copysign(INFINITY, x) : y;
}

/* the bits of a double that bf16 holds exactly */
static uint16_t kc_bf16_bits(double exact)
{
    float f = (float)exact;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

/* Stored values of n random inputs in [-scale, scale), every 16th a zero: the value a tensor of
 * dtype t holds (fp32 rounding, or bf16 rounding) */
static double *kc_values(dp_dtype t, size_t n, double scale)
{
    double *v = kc_host(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) {
        double x = i % 16 == 3 ? 0.0 : scale * kc_urand();
        v[i] = t == DP_DTYPE_BF16 ? kc_bf16_round(x) : (double)(float)x;
    }
    return v;
}

/* device copy of values already representable in dtype t */
static void *kc_upload(dp_dtype t, size_t n, const double *v)
{
    size_t es = dp_dtype_size(t);
    unsigned char *h = kc_host(es * n);
    for (size_t i = 0; i < n; i++) {
        if (t == DP_DTYPE_BF16) {
            uint16_t b = kc_bf16_bits(v[i]);
            memcpy(h + 2 * i, &b, 2);
        } else {
            float f = (float)v[i];
            memcpy(h + 4 * i, &f, 4);
        }
    }
    void *d = kc_up(h, es * n);
    free(h);
    return d;
}

/* ----------------------------------------------------------------------------
 * comparisons: the whole output, every element; the first failure is printed */

static double kc_worst;    /* largest |got - ref| / bound of the last check (0/0 counts 0) */
static size_t kc_neighbor; /* bf16 outputs that took the neighbour allowed near a midpoint */

static int kc_check_f32(const char *what, size_t n, const float *got, const double *ref, const double *bound)
{
    kc_worst = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= bound[i])) { /* NaN fails */
            tap_diag("%s %s[%zu]: got %.9g, exact %.17g, |err| %.3g > bound %.3g", kc_name, what, i, (double)got[i],
                     ref[i], err, bound[i]);
            return 0;
        }
        if (bound[i] > 0 && err / bound[i] > kc_worst) kc_worst = err / bound[i];
    }
    return 1;
}

static int kc_check_bf16(const char *what, size_t n, const uint16_t *got, const double *ref, const double *bound)
{
    kc_worst = 0, kc_neighbor = 0;
    for (size_t i = 0; i < n; i++) {
        /* the fp32 result y lies in [ref - bound, ref + bound] and rounding is monotonic */
        double g = kc_widen(got[i]), lo = kc_bf16_round(ref[i] - bound[i]), hi = kc_bf16_round(ref[i] + bound[i]);
        if (!(lo <= g && g <= hi)) { /* NaN fails */
            tap_diag("%s %s[%zu]: got %.9g (0x%04x), exact %.17g rounds to %.9g; with the fp32 bound %.3g it may be "
                     "%.9g to %.9g", kc_name, what, i, g, got[i], ref[i], kc_bf16_round(ref[i]), bound[i], lo, hi);
            return 0;
        }
        kc_neighbor += g != kc_bf16_round(ref[i]);
    }
    return 1;
}

/* a bf16 output that went through several bf16 roundings (scatter-add of repeated rows): an
 * absolute bound */
static int kc_check_bf16_abs(const char *what, size_t n, const uint16_t *got, const double *ref, const double *bound)
{
    float *g = kc_host(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) g[i] = kc_widen(got[i]);
    int ok = kc_check_f32(what, n, g, ref, bound);
    free(g);
    return ok;
}

/* downloads an output of dtype t and checks it */
static int kc_check_dev(const char *what, dp_dtype t, const void *d, size_t n, const double *ref, const double *bound)
{
    void *h = kc_host(dp_dtype_size(t) * n);
    kc_down(h, d, dp_dtype_size(t) * n);
    int ok = t == DP_DTYPE_BF16 ? kc_check_bf16(what, n, h, ref, bound) : kc_check_f32(what, n, h, ref, bound);
    free(h);
    return ok;
}

static int kc_check_dev_scalar(const char *what, const float *d, double ref, double bound)
{
    float got;
    kc_down(&got, d, sizeof got);
    return kc_check_f32(what, 1, &got, &ref, &bound);
}

static const char *kc_tname(dp_dtype t) { return dp_dtype_name(t); }

/* ----------------------------------------------------------------------------
 * GEMM. C = alpha op(A) op(B) + beta C. Each output's terms are the k products and beta C: each
 * product is rounded once, scaled by alpha once, then added in some order (the CPU's portable
 * GEMM sums blocks of k and adds each block into C; BLAS and cuBLAS choose their own orders, with
 * or without fused multiply-adds): along any order, a product meets at most 1 (product) + 1
 * (alpha) + k (additions, counting the add of beta C) roundings, and beta C 2 more at most, so
 * |err| <= gamma(k + 3) (|alpha| sum_p |a_ip b_pj| + |beta c_ij|), whatever the blocking.
 * The gaps between rows (ld > width) hold NaN and must be neither read nor written. */

static int kc_gemm_case(int ta, int tb, int m, int n, int k, float alpha, float beta, dp_dtype ab_t, dp_dtype c_t)
{
    int ra = ta ? k : m, ca = ta ? m : k, rb = tb ? n : k, cb = tb ? k : n;
    int lda = ca + 3, ldb = cb + 1, ldc = n + 2;
    size_t na = (size_t)ra * lda, nb = (size_t)rb * ldb, nc = (size_t)m * ldc;
    size_t es = dp_dtype_size(ab_t), ec = dp_dtype_size(c_t);
    /* stored values: logical entries random, gaps NaN (every byte 0xff) */
    double *a = kc_values(ab_t, na, 1.0), *b = kc_values(ab_t, nb, 1.0), *c0 = kc_values(c_t, nc, 1.0);
    void *da = kc_upload(ab_t, na, a), *db = kc_upload(ab_t, nb, b), *dc = kc_upload(c_t, nc, c0);
    for (int r = 0; r < ra; r++) kc_try(kc_ops->memset(kc_dev, (char *)da + ((size_t)r * lda + ca) * es, 0xff, (size_t)(lda - ca) * es, NULL), "memset");
    for (int r = 0; r < rb; r++) kc_try(kc_ops->memset(kc_dev, (char *)db + ((size_t)r * ldb + cb) * es, 0xff, (size_t)(ldb - cb) * es, NULL), "memset");
    if (beta == 0.0f) kc_try(kc_ops->memset(kc_dev, dc, 0xff, nc * ec, NULL), "memset"); /* NaN C: must be ignored */
    else
        for (int r = 0; r < m; r++) kc_try(kc_ops->memset(kc_dev, (char *)dc + ((size_t)r * ldc + n) * ec, 0xff, 2 * ec, NULL), "memset");

    double *ref = kc_host(sizeof(double) * ((size_t)m * n + 1)), *bound = kc_host(sizeof(double) * ((size_t)m * n + 1));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, mag = 0;
            for (int p = 0; p < k; p++) {
                double x = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                double y = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                s += x * y, mag += fabs(x * y); /* products of fp32 values are exact in double */
            }
            double cterm = beta == 0.0f ? 0.0 : (double)beta * c0[(size_t)i * ldc + j];
            ref[(size_t)i * n + j] = (double)alpha * s + cterm;
            bound[(size_t)i * n + j] = kc_gamma(k + 3) * (fabs((double)alpha) * mag + fabs(cterm));
        }
    dp_gemm_args g = {ta, tb, m, n, k, alpha, beta, da, lda, ab_t, db, ldb, ab_t, dc, ldc, c_t};
    dp_status st = kc_ops->gemm(kc_dev, NULL, &g);
    unsigned char *got = kc_host(nc * ec), *dense = kc_host((size_t)m * n * ec + 1);
    kc_down(got, dc, nc * ec);
    int gaps_ok = 1;
    for (int i = 0; i < m; i++) {
        memcpy(dense + (size_t)i * n * ec, got + (size_t)i * ldc * ec, (size_t)n * ec);
        for (size_t byte = (size_t)n * ec; byte < (size_t)ldc * ec; byte++) gaps_ok &= got[(size_t)i * ldc * ec + byte] == 0xff;
    }
    int ok = st == DP_OK && gaps_ok;
    if (!gaps_ok) tap_diag("%s gemm: a gap between rows of C was written", kc_name);
    if (ok)
        ok = c_t == DP_DTYPE_BF16 ? kc_check_bf16("gemm C", (size_t)m * n, (const uint16_t *)dense, ref, bound)
                                  : kc_check_f32("gemm C", (size_t)m * n, (const float *)dense, ref, bound);
    if (!ok) tap_diag("  (trans %d%d, %dx%dx%d, alpha %g beta %g)", ta, tb, m, n, k, (double)alpha, (double)beta);
    kc_ops->free(kc_dev, da), kc_ops->free(kc_dev, db), kc_ops->free(kc_dev, dc);
    free(a), free(b), free(c0), free(ref), free(bound), free(got), free(dense);
    return ok;
}

/* with_k0: also k = 0 (C = beta C), which the model never asks for: the CUDA test leaves it out
 * until it has been run on a GPU */
static void kc_gemm_all(const char *backend, int with_k0)
{
    static const int shapes[][3] = {{1, 1, 1}, {7, 33, 300}, {13, 17, 5}, {64, 48, 96}, {100, 70, 513}, {5, 6, 0}};
    static const float coef[][2] = {{0.5f, 0.0f}, {1.0f, 1.0f}, {1.5f, -0.75f}};
    static const dp_dtype types[][2] = {{DP_DTYPE_F32, DP_DTYPE_F32}, {DP_DTYPE_BF16, DP_DTYPE_F32}, {DP_DTYPE_BF16, DP_DTYPE_BF16}};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (size_t ci = 0; ci < 3; ci++) {
                int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2], ok = 1;
                if (k == 0 && !with_k0) continue;
                double worst = 0;
                for (int ta = 0; ta < 2; ta++)
                    for (int tb = 0; tb < 2; tb++) {
                        ok &= kc_gemm_case(ta, tb, m, n, k, coef[ci][0], coef[ci][1], types[ti][0], types[ti][1]);
                        worst = kc_worst > worst ? kc_worst : worst;
                    }
                tap_ok(ok, "%s%s gemm %s x %s -> %s %dx%dx%d alpha %g beta %g%s, every transpose, every element "
                           "within gamma(k+3)(|alpha| sum|a b| + |beta c|)%s (worst %.2f of the bound)",
                       kc_name, backend, kc_tname(types[ti][0]), kc_tname(types[ti][0]), kc_tname(types[ti][1]), m, n,
                       k, (double)coef[ci][0], (double)coef[ci][1], coef[ci][1] == 0.0f ? " over NaN" : "",
                       types[ti][1] == DP_DTYPE_BF16 ? ", rounded once to bf16" : "", worst);
            }
}

/* ----------------------------------------------------------------------------
 * element-wise kernels: n above the CPU driver's parallel threshold */

#define KC_N 40000

/* y = a + b and y *= alpha: one fp32 rounding of an exact result: gamma(1) |exact| */
static void kc_add_scale(dp_dtype t)
{
    size_t n = KC_N;
    double *a = kc_values(t, n, 4.0), *b = kc_values(t, n, 4.0);
    /* a quarter of the sums land exactly on a bf16 midpoint, a quarter just off one */
    for (size_t i = 0; i < n; i += 2) {
        if (a[i] == 0) continue;
        int e;
        frexp(a[i], &e);
        double half = ldexp(1.0, e - 9);
        b[i] = i % 4 == 0 ? half : kc_bf16_round(-half * (1.0 - 1.0 / 256));
        if (t == DP_DTYPE_F32) b[i] = (double)(float)b[i];
    }
    double *ref = kc_host(sizeof(double) * n), *bound = kc_host(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) ref[i] = a[i] + b[i], bound[i] = kc_gamma(1) * fabs(ref[i]);
    void *da = kc_upload(t, n, a), *db = kc_upload(t, n, b), *dy = kc_poison(n * dp_dtype_size(t));
    dp_status st = kc_ops->add(kc_dev, NULL, t, n, da, db, dy);
    tap_ok(st == DP_OK && kc_check_dev("add", t, dy, n, ref, bound),
           "%s add %s, n = %zu: y = a + b within gamma(1)|a + b|%s (%zu neighbours at midpoints)", kc_name,
           kc_tname(t), n, t == DP_DTYPE_BF16 ? ", rounded once" : "", t == DP_DTYPE_BF16 ? kc_neighbor : 0);
    float alpha = -0.3f;
    for (size_t i = 0; i < n; i++) ref[i] = (double)alpha * a[i], bound[i] = kc_gamma(1) * fabs(ref[i]);
    kc_ops->free(kc_dev, dy);
    dy = kc_upload(t, n, a);
    st = kc_ops->scale(kc_dev, NULL, t, n, alpha, dy);
    tap_ok(st == DP_OK && kc_check_dev("scale", t, dy, n, ref, bound),
           "%s scale %s: y *= -0.3 within gamma(1)|alpha y|%s", kc_name, kc_tname(t),
           t == DP_DTYPE_BF16 ? ", rounded once" : "");
    kc_ops->free(kc_dev, da), kc_ops->free(kc_dev, db), kc_ops->free(kc_dev, dy);
    free(a), free(b), free(ref), free(bound);
}

/* fill: the value exactly (fp32), or rounded once (bf16); cast: fp32 -> bf16 rounds once to
 * nearest even, bf16 -> fp32 is exact: zero bounds */
static void kc_fill_cast(dp_dtype t)
{
    size_t n = 1000;
    double *ref = kc_host(sizeof(double) * n), *zero = kc_host(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) zero[i] = 0;
    static const float values[] = {1.00390625f, -3.14159265f, 1e38f, 0x1p-130f};
    int ok = 1;
    for (int v = 0; v < 4; v++) {
        void *dy = kc_poison(n * dp_dtype_size(t));
        for (size_t i = 0; i < n; i++) ref[i] = values[v];
        ok &= kc_ops->fill(kc_dev, NULL, t, n, values[v], dy) == DP_OK && kc_check_dev("fill", t, dy, n, ref, zero);
        kc_ops->free(kc_dev, dy);
    }
    tap_ok(ok, "%s fill %s: 1 + 2^-8 (a bf16 tie), -pi, 1e38, 2^-130 (subnormal), each element %s", kc_name,
           kc_tname(t), t == DP_DTYPE_BF16 ? "the value rounded once to nearest even" : "exactly the value");
    if (t != DP_DTYPE_BF16) {
        free(ref), free(zero);
        return;
    }
    /* fp32 values on, above and below bf16 midpoints */
    double *x = kc_values(DP_DTYPE_F32, n, 3.0);
    for (size_t i = 0; i < n; i += 3) {
        double r = kc_bf16_round(x[i]);
        if (r == 0) continue;
        int e;
        frexp(r, &e);
        x[i] = (double)(float)(r + ldexp(1.0, e - 9) * (i % 2 ? 1.0 : 1.0 + 0x1p-15));
    }
    void *dx = kc_upload(DP_DTYPE_F32, n, x), *dh = kc_poison(2 * n), *df = kc_poison(4 * n);
    dp_status st = kc_ops->cast(kc_dev, NULL, n, DP_DTYPE_F32, dx, DP_DTYPE_BF16, dh);
    tap_ok(st == DP_OK && kc_check_dev("cast f32->bf16", DP_DTYPE_BF16, dh, n, x, zero),
           "%s cast fp32 -> bf16: every element the nearest bf16, ties to even (a third of them on or just past a tie)",
           kc_name);
    for (size_t i = 0; i < n; i++) ref[i] = kc_bf16_round(x[i]);
    st = kc_ops->cast(kc_dev, NULL, n, DP_DTYPE_BF16, dh, DP_DTYPE_F32, df);
    tap_ok(st == DP_OK && kc_check_dev("cast bf16->f32", DP_DTYPE_F32, df, n, ref, zero),
           "%s cast bf16 -> fp32: exact", kc_name);
    kc_ops->free(kc_dev, dx), kc_ops->free(kc_dev, dh), kc_ops->free(kc_dev, df);
    free(x), free(ref), free(zero);
}

/* GELU y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2; dx = dy (Phi(x) + x phi(x)).
 * Bound: |Phi~ - Phi| <= KC_PHI: the CPU's erf is Abramowitz & Stegun 7.1.26 (absolute error
 * 1.5e-7 on erf, so 0.75e-7 on Phi) evaluated in fp32 with an exp good to 2 ulp, which adds at
 * most 8 u more (measured: 4 u); CUDA's erff is within 2 ulp. phi carries a relative error of at
 * most (x^2 + 8) u (x^2 / 2 rounded twice before the exponential, the exponential, two products).
 * Then one rounding per product or sum: y within |x| KC_PHI + gamma(1) |y|; dx within
 * |dy| (KC_PHI + |x phi| (x^2 + 8) u + gamma(1) |Phi + x phi|) + gamma(1) |dx|. */
#define KC_PHI (0.75e-7 + 8 * KC_U32)

static void kc_gelu(dp_dtype t)
{
    size_t n = KC_N;
    double *x = kc_values(t, n, 6.0), *dy = kc_values(t, n, 1.0);
    for (size_t i = 5; i < n; i += 64) x[i] = kc_bf16_round(i % 128 == 5 ? -9.0 - 11.0 * fabs(kc_urand()) : 9.0 + 11.0 * fabs(kc_urand()));
    double *ref = kc_host(sizeof(double) * n), *bound = kc_host(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) {
        double phi_cdf = 0.5 * erfc(-x[i] / sqrt(2.0));
        ref[i] = x[i] * phi_cdf;
        bound[i] = fabs(x[i]) * KC_PHI + kc_gamma(1) * fabs(ref[i]);
    }
    void *dx = kc_upload(t, n, x), *ddy = kc_upload(t, n, dy), *dout = kc_poison(n * dp_dtype_size(t));
    dp_status st = kc_ops->gelu_forward(kc_dev, NULL, t, n, dx, dout);
    tap_ok(st == DP_OK && kc_check_dev("gelu", t, dout, n, ref, bound),
           "%s gelu_forward %s, x in [-20, 20]: every y within |x| (0.75e-7 + 8u) + gamma(1)|y| of x Phi(x)%s "
           "(worst %.2f)", kc_name, kc_tname(t), t == DP_DTYPE_BF16 ? ", rounded once" : "", kc_worst);
    for (size_t i = 0; i < n; i++) {
        double cdf = 0.5 * erfc(-x[i] / sqrt(2.0)), pdf = exp(-0.5 * x[i] * x[i]) / 2.5066282746310002; /* sqrt(2 pi) */
        double gsum = cdf + x[i] * pdf;
        ref[i] = dy[i] * gsum;
        bound[i] = fabs(dy[i]) * (KC_PHI + fabs(x[i] * pdf) * (x[i] * x[i] + 8) * KC_U32 + kc_gamma(1) * fabs(gsum)) +
                   kc_gamma(1) * fabs(ref[i]);
    }
    kc_ops->free(kc_dev, dout);
    dout = kc_poison(n * dp_dtype_size(t));
    st = kc_ops->gelu_backward(kc_dev, NULL, t, n, dx, ddy, dout);
    tap_ok(st == DP_OK && kc_check_dev("dgelu", t, dout, n, ref, bound),
           "%s gelu_backward %s: every dx within the bound of dy (Phi(x) + x phi(x))%s (worst %.2f)", kc_name,
           kc_tname(t), t == DP_DTYPE_BF16 ? ", rounded once" : "", kc_worst);
    kc_ops->free(kc_dev, dx), kc_ops->free(kc_dev, ddy), kc_ops->free(kc_dev, dout);
    free(x), free(dy), free(ref), free(bound);
}

/* ----------------------------------------------------------------------------
 * RMSNorm, rows x cols. rs = 1 / sqrt(mean(x^2) + eps) (sums in double, one fp32 rounding of
 * rs); y = x rs w: 3 roundings, gamma(3) |y| (+1 for the double sums: gamma(4)).
 * dx = rs dy w - x rs^3 mean(dy w x): the first term 3 roundings (rs's own, two products), the
 * second 8 (the mean's rounding, rs's three, three products, x times it), one subtraction:
 * gamma(4) |rs dy w| + gamma(9) |x coef| + gamma(1) |dx|, the rstd given to it the fp32 rounding
 * of the exact one. dw += sum_r dy x rs, rows terms of 3 roundings each summed in fp32 then added
 * to dw: gamma(rows + 5) (|dw| + sum_r |dy x rs|). */

static void kc_rmsnorm(dp_dtype t)
{
    int rows = 33, cols = 1000;
    size_t n = (size_t)rows * cols;
    float eps = 1e-5f;
    double *x = kc_values(t, n, 3.0), *dy = kc_values(t, n, 1.0);
    float *w = kc_host(sizeof(float) * cols), *rsf = kc_host(sizeof(float) * rows), *dw0 = kc_host(sizeof(float) * cols);
    for (int c = 0; c < cols; c++) w[c] = (float)(1.0 + 0.5 * kc_urand()), dw0[c] = (float)kc_urand();
    double *rs = kc_host(sizeof(double) * rows), *ref = kc_host(sizeof(double) * n), *bound = kc_host(sizeof(double) * n);
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int c = 0; c < cols; c++) ss += x[(size_t)r * cols + c] * x[(size_t)r * cols + c];
        rs[r] = 1.0 / sqrt(ss / cols + (double)eps);
        rsf[r] = (float)rs[r];
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            ref[i] = x[i] * rs[r] * w[c], bound[i] = kc_gamma(4) * fabs(ref[i]);
        }
    }
    void *dx = kc_upload(t, n, x), *ddy = kc_upload(t, n, dy), *dw = kc_up(w, sizeof(float) * cols);
    void *dout = kc_poison(n * dp_dtype_size(t));
    float *drs = kc_poison(sizeof(float) * rows);
    dp_status st = kc_ops->rmsnorm_forward(kc_dev, NULL, t, rows, cols, eps, dx, dw, dout, drs);
    int ok = st == DP_OK && kc_check_dev("rmsnorm y", t, dout, n, ref, bound);
    double rb[64];
    for (int r = 0; r < rows; r++) rb[r] = kc_gamma(2) * rs[r];
    ok = ok && kc_check_dev("rstd", DP_DTYPE_F32, drs, (size_t)rows, rs, rb);
    tap_ok(ok, "%s rmsnorm_forward %s %dx%d: every y within gamma(4)|x rs w|%s, every rstd within gamma(2)", kc_name,
           kc_tname(t), rows, cols, t == DP_DTYPE_BF16 ? " (rounded once)" : "");

    kc_ops->free(kc_dev, drs);
    drs = kc_up(rsf, sizeof(float) * rows);
    for (int r = 0; r < rows; r++) {
        double dot = 0;
        for (int c = 0; c < cols; c++) dot += dy[(size_t)r * cols + c] * w[c] * x[(size_t)r * cols + c];
        double coef = dot / cols * rs[r] * rs[r] * rs[r];
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            double t1 = rs[r] * dy[i] * w[c], t2 = x[i] * coef;
            ref[i] = t1 - t2;
            bound[i] = kc_gamma(4) * fabs(t1) + kc_gamma(9) * fabs(t2) + kc_gamma(1) * fabs(ref[i]);
        }
    }
    kc_ops->free(kc_dev, dout);
    dout = kc_poison(n * dp_dtype_size(t));
    st = kc_ops->rmsnorm_backward_input(kc_dev, NULL, t, rows, cols, dx, dw, drs, ddy, dout);
    tap_ok(st == DP_OK && kc_check_dev("rmsnorm dx", t, dout, n, ref, bound),
           "%s rmsnorm_backward_input %s: every dx within gamma(4)|rs dy w| + gamma(9)|x coef| + gamma(1)|dx|%s "
           "(worst %.2f)", kc_name, kc_tname(t), t == DP_DTYPE_BF16 ? ", rounded once" : "", kc_worst);

    double *wref = kc_host(sizeof(double) * cols), *wb = kc_host(sizeof(double) * cols);
    for (int c = 0; c < cols; c++) {
        double s = dw0[c], mag = fabs(dw0[c]);
        for (int r = 0; r < rows; r++) {
            double term = dy[(size_t)r * cols + c] * x[(size_t)r * cols + c] * rs[r];
            s += term, mag += fabs(term);
        }
        wref[c] = s, wb[c] = kc_gamma(rows + 5) * mag;
    }
    void *ddw = kc_up(dw0, sizeof(float) * cols);
    st = kc_ops->rmsnorm_backward_weight(kc_dev, NULL, t, rows, cols, dx, drs, ddy, ddw);
    tap_ok(st == DP_OK && kc_check_dev("rmsnorm dw", DP_DTYPE_F32, ddw, (size_t)cols, wref, wb),
           "%s rmsnorm_backward_weight %s: every dw (fp32, accumulated) within gamma(rows+5)(|dw| + sum|dy x rs|) "
           "(worst %.2f)", kc_name, kc_tname(t), kc_worst);
    kc_ops->free(kc_dev, dx), kc_ops->free(kc_dev, ddy), kc_ops->free(kc_dev, dw), kc_ops->free(kc_dev, dout);
    kc_ops->free(kc_dev, drs), kc_ops->free(kc_dev, ddw);
    free(x), free(dy), free(w), free(rsf), free(dw0), free(rs), free(ref), free(bound), free(wref), free(wb);
}

/* ----------------------------------------------------------------------------
 * losses and the sum of squares. Forwards sum in double and round once: gamma(2) |loss| (one
 * rounding, one for the double sums). mse_backward: k = 2 dloss / n (one rounding), p - t (one),
 * k (p - t) (one): gamma(3) |dp|. xent_backward: k = dloss / rows (one), softmax (one), k p
 * (one), minus k at the label (one): gamma(4) (|k p| + |k| at the label). */

static void kc_losses(dp_dtype t)
{
    size_t n = KC_N;
    double *p = kc_values(t, n, 4.0), *y = kc_values(t, n, 4.0);
    void *dp = kc_upload(t, n, p), *dt = kc_upload(t, n, y), *dd = kc_poison(n * dp_dtype_size(t));
    float *dl = kc_poison(sizeof(float));
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++) s += (p[i] - y[i]) * (p[i] - y[i]), ss += p[i] * p[i];
    dp_status st = kc_ops->mse_forward(kc_dev, NULL, t, n, dp, dt, dl);
    tap_ok(st == DP_OK && kc_check_dev_scalar("mse", dl, s / n, kc_gamma(2) * s / n),
           "%s mse_forward %s: mean (p - t)^2 within gamma(2)", kc_name, kc_tname(t));
    st = kc_ops->sum_squares(kc_dev, NULL, t, n, dp, dl);
    tap_ok(st == DP_OK && kc_check_dev_scalar("sum_squares", dl, ss, kc_gamma(2) * ss),
           "%s sum_squares %s: sum x^2 within gamma(2)", kc_name, kc_tname(t));
    double *ref = kc_host(sizeof(double) * n), *bound = kc_host(sizeof(double) * n);
    float dloss = 1.7f;
    for (size_t i = 0; i < n; i++) ref[i] = 2.0 * dloss * (p[i] - y[i]) / n, bound[i] = kc_gamma(3) * fabs(ref[i]);
    st = kc_ops->mse_backward(kc_dev, NULL, t, n, dp, dt, dloss, dd);
    tap_ok(st == DP_OK && kc_check_dev("dmse", t, dd, n, ref, bound),
           "%s mse_backward %s, n = %zu: every dp within gamma(3)|2 dloss (p - t) / n|%s (worst %.2f)", kc_name,
           kc_tname(t), n, t == DP_DTYPE_BF16 ? ", rounded once" : "", kc_worst);
    kc_ops->free(kc_dev, dp), kc_ops->free(kc_dev, dt), kc_ops->free(kc_dev, dd);
    free(p), free(y), free(ref), free(bound);

    int rows = 17, cols = 2500;
    size_t nz = (size_t)rows * cols;
    double *z = kc_values(t, nz, 8.0);
    for (size_t i = 11; i < nz; i += 16) z[i] = kc_bf16_round(40.0 * kc_urand());
    int32_t labels[17];
    for (int r = 0; r < rows; r++) labels[r] = (int32_t)((kc_urand() + 1) / 2 * cols);
    labels[0] = 0, labels[1] = cols - 1;
    double total = 0, mag = 0;
    ref = kc_host(sizeof(double) * nz), bound = kc_host(sizeof(double) * nz);
    double k = (double)0.75f / rows;
    for (int r = 0; r < rows; r++) {
        const double *zr = z + (size_t)r * cols;
        double mx = zr[0], se = 0;
        for (int c = 1; c < cols; c++) mx = zr[c] > mx ? zr[c] : mx;
        for (int c = 0; c < cols; c++) se += exp(zr[c] - mx);
        double lse = mx + log(se);
        total += lse - zr[labels[r]], mag += fabs(lse) + fabs(zr[labels[r]]);
        for (int c = 0; c < cols; c++) {
            double pc = exp(zr[c] - mx) / se;
            size_t i = (size_t)r * cols + c;
            ref[i] = k * (pc - (c == labels[r]));
            bound[i] = kc_gamma(4) * (fabs(k * pc) + (c == labels[r] ? fabs(k) : 0));
        }
    }
    void *dz = kc_upload(t, nz, z), *ddz = kc_poison(nz * dp_dtype_size(t));
    int32_t *dlab = kc_up(labels, sizeof labels);
    st = kc_ops->xent_forward(kc_dev, NULL, t, rows, cols, dz, dlab, dl);
    tap_ok(st == DP_OK && kc_check_dev_scalar("xent", dl, total / rows, kc_gamma(2) * fabs(total / rows) + 1e-12 * mag / rows),
           "%s xent_forward %s %dx%d: mean (logsumexp - z[label]) within gamma(2)", kc_name, kc_tname(t), rows, cols);
    st = kc_ops->xent_backward(kc_dev, NULL, t, rows, cols, dz, dlab, 0.75f, ddz);
    tap_ok(st == DP_OK && kc_check_dev("dxent", t, ddz, nz, ref, bound),
           "%s xent_backward %s: every dz within gamma(4)(|k p| + |k| at the label) of k (softmax - onehot)%s "
           "(worst %.2f)", kc_name, kc_tname(t), t == DP_DTYPE_BF16 ? ", rounded once" : "", kc_worst);
    kc_ops->free(kc_dev, dz), kc_ops->free(kc_dev, ddz), kc_ops->free(kc_dev, dlab), kc_ops->free(kc_dev, dl);
    free(z), free(ref), free(bound);
}

/* ----------------------------------------------------------------------------
 * rows. gather copies: exact. scatter_add_rows onto distinct rows: one rounding of dst + src
 * (gamma(1); bf16: rounded once). Onto repeated rows, c adds into one row: fp32 gamma(c) (|dst| +
 * sum |src|); bf16 rounds after every add (the device contract), so (c (u + u_bf16)) times it. */

static void kc_rows(dp_dtype t)
{
    int src_rows = 40, cols = 300, dst_rows = 25;
    size_t ns = (size_t)src_rows * cols, nd = (size_t)dst_rows * cols;
    double *src = kc_values(t, ns, 2.0), *dst = kc_values(t, nd, 2.0);
    int32_t gidx[25], perm[25], rep[40];
    for (int i = 0; i < dst_rows; i++) gidx[i] = (int32_t)((i * 13 + 7) % src_rows), perm[i] = (int32_t)((i * 7 + 3) % dst_rows);
    for (int i = 0; i < src_rows; i++) rep[i] = (int32_t)((i * i + 3 * i) % dst_rows);
    double *ref = kc_host(sizeof(double) * ns), *bound = kc_host(sizeof(double) * ns);
    for (int i = 0; i < dst_rows; i++)
        for (int c = 0; c < cols; c++) ref[(size_t)i * cols + c] = src[(size_t)gidx[i] * cols + c], bound[(size_t)i * cols + c] = 0;
    void *ds = kc_upload(t, ns, src), *dd = kc_poison(nd * dp_dtype_size(t));
    int32_t *dgi = kc_up(gidx, sizeof gidx), *dpe = kc_up(perm, sizeof perm), *dre = kc_up(rep, sizeof rep);
    dp_status st = kc_ops->gather_rows(kc_dev, NULL, t, dst_rows, cols, ds, dgi, dd);
    tap_ok(st == DP_OK && kc_check_dev("gather", t, dd, nd, ref, bound), "%s gather_rows %s: every element copied",
           kc_name, kc_tname(t));
    kc_ops->free(kc_dev, dd);

    dd = kc_upload(t, nd, dst);
    for (size_t i = 0; i < nd; i++) ref[i] = dst[i];
    for (int i = 0; i < dst_rows; i++)
        for (int c = 0; c < cols; c++) ref[(size_t)perm[i] * cols + c] += src[(size_t)i * cols + c];
    for (size_t i = 0; i < nd; i++) bound[i] = kc_gamma(1) * fabs(ref[i]);
    st = kc_ops->scatter_add_rows(kc_dev, NULL, t, dst_rows, cols, ds, dpe, dd);
    tap_ok(st == DP_OK && kc_check_dev("scatter distinct", t, dd, nd, ref, bound),
           "%s scatter_add_rows %s onto distinct rows: every element dst + src within gamma(1)%s", kc_name, kc_tname(t),
           t == DP_DTYPE_BF16 ? ", rounded once" : "");
    kc_ops->free(kc_dev, dd);

    dd = kc_upload(t, nd, dst);
    int cnt[25] = {0}, most = 0;
    double *mag = kc_host(sizeof(double) * nd);
    for (size_t i = 0; i < nd; i++) ref[i] = dst[i], mag[i] = fabs(dst[i]);
    for (int i = 0; i < src_rows; i++) {
        most = ++cnt[rep[i]] > most ? cnt[rep[i]] : most;
        for (int c = 0; c < cols; c++) {
            ref[(size_t)rep[i] * cols + c] += src[(size_t)i * cols + c];
            mag[(size_t)rep[i] * cols + c] += fabs(src[(size_t)i * cols + c]);
        }
    }
    for (int r = 0; r < dst_rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            bound[i] = (t == DP_DTYPE_BF16 ? cnt[r] * (KC_U32 + KC_U16) * 1.01 : kc_gamma(cnt[r])) * mag[i];
        }
    st = kc_ops->scatter_add_rows(kc_dev, NULL, t, src_rows, cols, ds, dre, dd);
    void *h = kc_host(nd * dp_dtype_size(t));
    kc_down(h, dd, nd * dp_dtype_size(t));
    int ok = st == DP_OK && (t == DP_DTYPE_BF16 ? kc_check_bf16_abs("scatter repeated", nd, h, ref, bound)
                                               : kc_check_f32("scatter repeated", nd, h, ref, bound));
    tap_ok(ok, "%s scatter_add_rows %s, up to %d rows onto one: every element within %s (|dst| + sum|src|)", kc_name,
           kc_tname(t), most, t == DP_DTYPE_BF16 ? "c (u + u_bf16)" : "gamma(c)");
    free(h);
    kc_ops->free(kc_dev, ds), kc_ops->free(kc_dev, dd), kc_ops->free(kc_dev, dgi), kc_ops->free(kc_dev, dpe);
    kc_ops->free(kc_dev, dre);
    free(src), free(dst), free(ref), free(bound), free(mag);
}

/* ----------------------------------------------------------------------------
 * optimizers (fp32 parameters and state), one step from a random state.
 * SGD: g = grad + wd p (2 roundings), buf = mu buf + g (2 more), p -= lr buf (2 more):
 * buf within gamma(4) (|mu buf| + |grad| + |wd p|), p within gamma(6) (|p| + lr (those)).
 * AdamW: the first-order error of every step of the update, term by term (see below). */

static void kc_sgd(int momentum)
{
    size_t n = KC_N;
    float lr = 0.1f, mu = momentum ? 0.9f : 0.0f, wd = 0.01f;
    double *p = kc_values(DP_DTYPE_F32, n, 1.0), *g = kc_values(DP_DTYPE_F32, n, 1.0), *b = kc_values(DP_DTYPE_F32, n, 1.0);
    double *rp = kc_host(sizeof(double) * n), *bp = kc_host(sizeof(double) * n);
    double *rb = kc_host(sizeof(double) * n), *bb = kc_host(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) {
        double gg = g[i] + (double)wd * p[i], mag = fabs(g[i]) + fabs((double)wd * p[i]);
        if (momentum) gg += (double)mu * b[i], mag += fabs((double)mu * b[i]);
        rb[i] = gg, bb[i] = kc_gamma(4) * mag;
        rp[i] = p[i] - (double)lr * gg, bp[i] = kc_gamma(6) * (fabs(p[i]) + (double)lr * mag);
    }
    float *dp = kc_upload(DP_DTYPE_F32, n, p), *dg = kc_upload(DP_DTYPE_F32, n, g);
    float *db = momentum ? kc_upload(DP_DTYPE_F32, n, b) : NULL;
    dp_sgd_args a = {lr, mu, wd};
    dp_status st = kc_ops->sgd_update(kc_dev, NULL, n, dp, dg, db, &a);
    int ok = st == DP_OK && kc_check_dev("sgd p", DP_DTYPE_F32, dp, n, rp, bp);
    if (momentum) ok = ok && kc_check_dev("sgd momentum", DP_DTYPE_F32, db, n, rb, bb);
    tap_ok(ok, "%s sgd_update%s: every parameter within gamma(6)(|p| + lr |step terms|)%s", kc_name,
           momentum ? " with momentum 0.9" : " without momentum", momentum ? ", every buffer within gamma(4)" : "");
    kc_ops->free(kc_dev, dp), kc_ops->free(kc_dev, dg);
    if (db) kc_ops->free(kc_dev, db);
    free(p), free(g), free(b), free(rp), free(bp), free(rb), free(bb);
}

/* AdamW: m' = b1 m + (1-b1) g (1 - b1 is exact, Sterbenz; two products and a sum: gamma(2) of
 * the terms); v' = b2 v + (1-b2) g g (gamma(3) v'); bc = 1 - powf(b, step) with powf within 2
 * ulp (4u relative) and one rounding: relative error 4u b^step / bc + u; decay = 1 - lr wd (two
 * roundings); then p decay, m'/bc1, v'/bc2, sqrt, + eps, the quotient, lr times it and the
 * difference, one rounding each. The bound adds the first-order error of each step, times 1.001. */
static void kc_adamw(int step)
{
    size_t n = KC_N;
    float lrf = 1e-2f, b1f = 0.9f, b2f = 0.999f, epsf = 1e-8f, wdf = 0.1f;
    double lr = lrf, b1 = b1f, b2 = b2f, eps = epsf, wd = wdf, u = KC_U32;
    double *p = kc_values(DP_DTYPE_F32, n, 1.0), *g = kc_values(DP_DTYPE_F32, n, 1.0);
    double *m = kc_values(DP_DTYPE_F32, n, 0.1), *v = kc_values(DP_DTYPE_F32, n, 0.01);
    for (size_t i = 0; i < n; i++) v[i] = fabs(v[i]);
    double *rp = kc_host(sizeof(double) * n), *bp = kc_host(sizeof(double) * n), *rm = kc_host(sizeof(double) * n);
    double *bm = kc_host(sizeof(double) * n), *rv = kc_host(sizeof(double) * n), *bv = kc_host(sizeof(double) * n);
    double p1 = pow(b1, step), p2 = pow(b2, step), bc1 = 1 - p1, bc2 = 1 - p2;
    double rel_bc1 = 4 * u * p1 / bc1 + u, rel_bc2 = 4 * u * p2 / bc2 + u;
    double decay = 1 - lr * wd, err_decay = u * lr * wd + u * decay;
    for (size_t i = 0; i < n; i++) {
        double mi = b1 * m[i] + (1 - b1) * g[i], err_m = kc_gamma(2) * (fabs(b1 * m[i]) + fabs((1 - b1) * g[i]));
        double vi = b2 * v[i] + (1 - b2) * g[i] * g[i], err_v = kc_gamma(3) * vi;
        double pd = p[i] * decay, err_pd = fabs(p[i]) * err_decay + u * fabs(pd);
        double A = mi / bc1, err_A = err_m / bc1 + fabs(A) * (rel_bc1 + u);
        double R = sqrt(vi / bc2), rel_R = (kc_gamma(3) + rel_bc2 + u) / 2 + u;
        double D = R + eps, err_D = R * rel_R + u * D;
        double Q = A / D, err_Q = err_A / D + fabs(Q) * (err_D / D + u);
        double U = lr * Q, err_U = lr * err_Q + u * fabs(U);
        rp[i] = pd - U, bp[i] = 1.001 * (err_pd + err_U + u * fabs(pd - U));
        rm[i] = mi, bm[i] = err_m, rv[i] = vi, bv[i] = err_v;
    }
    float *dp = kc_upload(DP_DTYPE_F32, n, p), *dg = kc_upload(DP_DTYPE_F32, n, g);
    float *dm = kc_upload(DP_DTYPE_F32, n, m), *dv = kc_upload(DP_DTYPE_F32, n, v);
    dp_adamw_args a = {lrf, b1f, b2f, epsf, wdf, step};
    dp_status st = kc_ops->adamw_update(kc_dev, NULL, n, dp, dg, dm, dv, &a);
    int ok = st == DP_OK && kc_check_dev("adamw p", DP_DTYPE_F32, dp, n, rp, bp);
    double worst = kc_worst;
    ok = ok && kc_check_dev("adamw m", DP_DTYPE_F32, dm, n, rm, bm) && kc_check_dev("adamw v", DP_DTYPE_F32, dv, n, rv, bv);
    tap_ok(ok, "%s adamw_update step %d from a random state: every parameter, m and v within its first-order bound "
               "(parameters: worst %.2f of it)", kc_name, step, worst);
    kc_ops->free(kc_dev, dp), kc_ops->free(kc_dev, dg), kc_ops->free(kc_dev, dm), kc_ops->free(kc_dev, dv);
    free(p), free(g), free(m), free(v), free(rp), free(bp), free(rm), free(bm), free(rv), free(bv);
}

/* ----------------------------------------------------------------------------
 * everything but GEMM (the caller runs kc_gemm_all once per GEMM backend it has) */

static void kc_run_kernels(void)
{
    static const dp_dtype types[] = {DP_DTYPE_F32, DP_DTYPE_BF16};
    for (int i = 0; i < 2; i++) {
        dp_dtype t = types[i];
        kc_add_scale(t);
        kc_fill_cast(t);
        kc_gelu(t);
        kc_rmsnorm(t);
        kc_losses(t);
        kc_rows(t);
    }
    kc_sgd(0);
    kc_sgd(1);
    kc_adamw(1);
    kc_adamw(5);
}

#endif
