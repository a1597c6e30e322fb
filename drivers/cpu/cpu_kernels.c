/* cpu_kernels.c: the CPU driver's kernels other than GEMM: element-wise pairs, RMSNorm,
 * losses, row gather/scatter and optimizers, in fp32. Every reduction has a fixed order
 * (fixed-size blocks summed in order), so results never depend on the thread count. A bf16
 * tensor runs the same fp32 code on an exact fp32 copy and is rounded once on output. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>

#include <math.h>
#include <string.h>

#include "drivers/cpu/cpu_internal.h"

/* Loops this long or longer are worth a parallel region. */
#define PAR_MIN 32768
/* Reductions sum blocks of this many elements, then the blocks in order. */
#define RED_BLOCK 4096

#ifdef _OPENMP
#define DP_PRAGMA(x) _Pragma(#x)
#define PAR_FOR(dev, n) DP_PRAGMA(omp parallel for schedule(static) num_threads((dev)->threads) if ((dev)->threads > 1 && (n) >= PAR_MIN))
#else
#define PAR_FOR(dev, n) (void)(n);
#endif

/* Sum of f(i) for i in [0, n): blocks of RED_BLOCK in order, in double. */
#define BLOCKED_SUM(result, n, expr_of_i)                                  \
    do {                                                                   \
        double total_ = 0.0;                                               \
        for (size_t b0_ = 0; b0_ < (n); b0_ += RED_BLOCK) {                \
            size_t b1_ = b0_ + RED_BLOCK < (n) ? b0_ + RED_BLOCK : (n);    \
            double part_ = 0.0;                                            \
            for (size_t i = b0_; i < b1_; i++) part_ += (double)(expr_of_i); \
            total_ += part_;                                               \
        }                                                                  \
        (result) = total_;                                                 \
    } while (0)

/* ----------------------------------------------------------------------------
 * element-wise */

static dp_status cpu_fill(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float value, void *y)
{
    (void)s;
    if (t == DP_DTYPE_I32) {
        int32_t *yi = y;
        for (size_t i = 0; i < n; i++) yi[i] = (int32_t)value;
        return DP_OK;
    }
    DP_CPU_FLOAT_ONLY(t, "fill");
    if (t == DP_DTYPE_BF16) { /* the fp32 fill's value, rounded once */
        uint16_t v = dp_cpu_f32_to_bf16(value), *yh = y;
        PAR_FOR(dev, n)
        for (size_t i = 0; i < n; i++) yh[i] = v;
        return DP_OK;
    }
    float *yf = y;
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) yf[i] = value;
    return DP_OK;
}

static dp_status cpu_cast(dp_device *dev, dp_stream *s, size_t n, dp_dtype src_t, const void *src, dp_dtype dst_t,
                          void *dst)
{
    (void)dev, (void)s;
    if (src_t == dst_t) {
        memmove(dst, src, n * dp_dtype_size(src_t));
        return DP_OK;
    }
    if (src_t == DP_DTYPE_F32 && dst_t == DP_DTYPE_BF16) {
        const float *x = src;
        uint16_t *y = dst;
        for (size_t i = 0; i < n; i++) y[i] = dp_cpu_f32_to_bf16(x[i]);
        return DP_OK;
    }
    if (src_t == DP_DTYPE_BF16 && dst_t == DP_DTYPE_F32) {
        const uint16_t *x = src;
        float *y = dst;
        for (size_t i = 0; i < n; i++) y[i] = dp_cpu_bf16_to_f32(x[i]);
        return DP_OK;
    }
    return dp_fail(DP_ERR_UNSUPPORTED, "cpu driver: cast from dtype %d to %d is not supported", (int)src_t,
                   (int)dst_t);
}

static void add_f32(dp_device *dev, size_t n, const float *a, const float *b, float *y)
{
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

typedef void (*binary_f32)(dp_device *dev, size_t n, const float *a, const float *b, float *y);

/* y = f(a, b) element by element in dtype t; y may alias a or b (in bf16 both are widened
 * before y is written) */
static dp_status binary(dp_device *dev, dp_dtype t, size_t n, const void *a, const void *b, void *y, binary_f32 f,
                        const char *what)
{
    DP_CPU_FLOAT_ONLY(t, what);
    if (t == DP_DTYPE_F32) {
        f(dev, n, a, b, y);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 3, what, &ws));
    dp_cpu_widen_bf16(a, ws, n);
    dp_cpu_widen_bf16(b, ws + n, n);
    f(dev, n, ws, ws + n, ws + 2 * n);
    dp_cpu_round_bf16(ws + 2 * n, y, n);
    return DP_OK;
}

static dp_status cpu_add(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b, void *y)
{
    (void)s;
    return binary(dev, t, n, a, b, y, add_f32, "add");
}

static void scale_f32(dp_device *dev, size_t n, float alpha, float *y)
{
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) y[i] *= alpha;
}

static dp_status cpu_scale(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float alpha, void *y)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "scale");
    if (t == DP_DTYPE_F32) {
        scale_f32(dev, n, alpha, y);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 1, "scale", &ws));
    dp_cpu_widen_bf16(y, ws, n);
    scale_f32(dev, n, alpha, ws);
    dp_cpu_round_bf16(ws, y, n);
    return DP_OK;
}

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

#if defined(__GNUC__)
#define DP_INLINE __attribute__((always_inline))
#else
#define DP_INLINE
#endif

/* exp(-w) for w >= 0, vectorisable (libm's expf and erff are calls the compiler cannot
 * vectorise, and GELU is the stage's largest cost after the GEMMs): w is clamped to 87 on its
 * bits (an integer select, where a float select would keep a branch), then Cody-Waite
 * reduction and a degree-6 polynomial, about 2 ulp. */
DP_INLINE static inline float exp_neg(float w)
{
    union {
        float f;
        int32_t i;
    } u = {.f = w};
    u.i = u.i > 0x42ae0000 ? 0x42ae0000 : u.i; /* 87.0f */
    float x = -u.f;
    int n = (int)(x * 1.44269504088896341f - 0.5f); /* round to nearest: x <= 0 */
    float r = x - (float)n * 0.693145751953125f - (float)n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f +
                                                                                          r * 0.0013888889f)))));
    union {
        int32_t i;
        float f;
    } scale = {.i = (n + 127) * (1 << 23)};
    return p * scale.f;
}

/* Phi(x) = (1 + erf(x / sqrt 2)) / 2 into cdf and phi(x) = exp(-x^2/2) / sqrt(2 pi) into pdf,
 * with erf from Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7). A macro, so that
 * the loops around it vectorise. */
#define NORMAL_CDF_PDF(xv, cdf, pdf)                                                                   \
    do {                                                                                               \
        float z_ = fabsf(xv) * INV_SQRT2;                                                              \
        float t_ = 1.0f / (1.0f + 0.3275911f * z_);                                                    \
        float poly_ = t_ * (0.254829592f +                                                             \
                            t_ * (-0.284496736f + t_ * (1.421413741f + t_ * (-1.453152027f + t_ * 1.061405429f)))); \
        float e_ = exp_neg(z_ * z_);                                                                   \
        float erf_ = copysignf(1.0f - poly_ * e_, xv);                                                 \
        (cdf) = 0.5f * (1.0f + erf_);                                                                  \
        (pdf) = INV_SQRT_2PI * e_;                                                                     \
    } while (0)

/* The build's -O2 vectorises loops of a known trip count that is a multiple of the vector
 * width: blocks of VEC elements, then a tail one by one (the same IEEE operations, so the
 * same bits either way, and no FMA: C11 keeps multiplications and additions apart). */
#define VEC 16

/* sqrtf without errno and float selects without traps, so that AdamW's loop vectorises */
#if defined(__GNUC__) && !defined(__clang__)
#define DP_VECTORIZE __attribute__((optimize("vect-cost-model=dynamic", "no-trapping-math", "no-math-errno")))
#else
#define DP_VECTORIZE
#endif

#define GELU_FORWARD_AT(xs, ys, j)                 \
    do {                                           \
        float cdf_, pdf_;                          \
        NORMAL_CDF_PDF((xs)[j], cdf_, pdf_);       \
        (void)pdf_;                                \
        (ys)[j] = (xs)[j] * cdf_;                  \
    } while (0)

DP_CLONES
static void gelu_forward_range(size_t i0, size_t i1, const float *restrict x, float *restrict y)
{
    size_t i = i0;
    for (; i + VEC <= i1; i += VEC) {
        const float *xp = x + i;
        float *yp = y + i;
        for (int j = 0; j < VEC; j++) GELU_FORWARD_AT(xp, yp, j);
    }
    for (; i < i1; i++) GELU_FORWARD_AT(x, y, i);
}

/* dx may alias dy: each element reads its dy before writing its dx */
DP_CLONES
static void gelu_backward_range(size_t i0, size_t i1, const float *restrict x, const float *dy, float *dx)
{
    size_t i = i0;
    for (; i + VEC <= i1; i += VEC) {
        const float *xp = x + i, *dyp = dy + i;
        float out[VEC];
        for (int j = 0; j < VEC; j++) {
            float cdf, pdf;
            NORMAL_CDF_PDF(xp[j], cdf, pdf);
            out[j] = dyp[j] * (cdf + xp[j] * pdf);
        }
        memcpy(dx + i, out, sizeof out);
    }
    for (; i < i1; i++) {
        float cdf, pdf;
        NORMAL_CDF_PDF(x[i], cdf, pdf);
        dx[i] = dy[i] * (cdf + x[i] * pdf);
    }
}

/* Splits [0, n) into blocks so that threads share the work; every element's value is
 * computed the same way whatever the split. */
#define ELEM_BLOCK 16384

static void gelu_forward_f32(dp_device *dev, size_t n, const float *x, float *y)
{
    size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    PAR_FOR(dev, n)
    for (size_t b = 0; b < nb; b++)
        gelu_forward_range(b * ELEM_BLOCK, b * ELEM_BLOCK + ELEM_BLOCK < n ? b * ELEM_BLOCK + ELEM_BLOCK : n, x, y);
}

static dp_status cpu_gelu_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "gelu_forward");
    if (t == DP_DTYPE_F32) {
        gelu_forward_f32(dev, n, x, y);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 2, "gelu_forward", &ws));
    dp_cpu_widen_bf16(x, ws, n);
    gelu_forward_f32(dev, n, ws, ws + n);
    dp_cpu_round_bf16(ws + n, y, n);
    return DP_OK;
}

static void gelu_backward_f32(dp_device *dev, size_t n, const float *x, const float *dy, float *dx)
{
    size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    PAR_FOR(dev, n)
    for (size_t b = 0; b < nb; b++)
        gelu_backward_range(b * ELEM_BLOCK, b * ELEM_BLOCK + ELEM_BLOCK < n ? b * ELEM_BLOCK + ELEM_BLOCK : n, x, dy, dx);
}

/* dx may alias dy */
static dp_status cpu_gelu_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x,
                                   const void *dy, void *dx)
{
    (void)s;
    return binary(dev, t, n, x, dy, dx, gelu_backward_f32, "gelu_backward");
}

/* ----------------------------------------------------------------------------
 * RMSNorm */

/* rows x cols elements; a negative shape is refused */
static dp_status shape_elems(int rows, int cols, const char *what, size_t *n)
{
    *n = 0;
    if (rows < 0 || cols < 0)
        return dp_fail(DP_ERR_INVALID, "%s: bad shape %d x %d (rows and columns cannot be negative)", what, rows, cols);
    *n = (size_t)rows * (size_t)cols;
    return DP_OK;
}

static void rmsnorm_forward_f32(dp_device *dev, int rows, int cols, float eps, const float *xf, const float *w,
                                float *yf, float *rstd)
{
    size_t work = (size_t)rows * (size_t)cols;
    PAR_FOR(dev, work)
    for (int r = 0; r < rows; r++) {
        const float *xr = xf + (size_t)r * cols;
        double ss = 0.0;
        for (int c = 0; c < cols; c++) ss += (double)xr[c] * xr[c];
        float rs = (float)(1.0 / sqrt(ss / cols + eps));
        rstd[r] = rs;
        float *yr = yf + (size_t)r * cols;
        for (int c = 0; c < cols; c++) yr[c] = xr[c] * rs * w[c];
    }
}

static dp_status cpu_rmsnorm_forward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, float eps,
                                     const void *x, const float *w, void *y, float *rstd)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "rmsnorm_forward");
    size_t n;
    DP_CHECK(shape_elems(rows, cols, "rmsnorm_forward", &n));
    if (t == DP_DTYPE_F32) {
        rmsnorm_forward_f32(dev, rows, cols, eps, x, w, y, rstd);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 2, "rmsnorm_forward", &ws));
    dp_cpu_widen_bf16(x, ws, n);
    rmsnorm_forward_f32(dev, rows, cols, eps, ws, w, ws + n, rstd);
    dp_cpu_round_bf16(ws + n, y, n);
    return DP_OK;
}

/* y = x * rstd * w, so dx = rstd * (dy w) - x * rstd^3 * mean(dy w x). */
static void rmsnorm_backward_input_f32(dp_device *dev, int rows, int cols, const float *xf, const float *w,
                                       const float *rstd, const float *dyf, float *dxf)
{
    size_t work = (size_t)rows * (size_t)cols;
    PAR_FOR(dev, work)
    for (int r = 0; r < rows; r++) {
        const float *xr = xf + (size_t)r * cols, *dyr = dyf + (size_t)r * cols;
        float *dxr = dxf + (size_t)r * cols;
        double dot = 0.0;
        for (int c = 0; c < cols; c++) dot += (double)dyr[c] * w[c] * xr[c];
        float rs = rstd[r];
        float coef = (float)(dot / cols) * rs * rs * rs;
        for (int c = 0; c < cols; c++) dxr[c] = rs * dyr[c] * w[c] - xr[c] * coef;
    }
}

static dp_status cpu_rmsnorm_backward_input(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                            const void *x, const float *w, const float *rstd, const void *dy,
                                            void *dx)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "rmsnorm_backward_input");
    size_t n;
    DP_CHECK(shape_elems(rows, cols, "rmsnorm_backward_input", &n));
    if (t == DP_DTYPE_F32) {
        rmsnorm_backward_input_f32(dev, rows, cols, x, w, rstd, dy, dx);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 3, "rmsnorm_backward_input", &ws));
    dp_cpu_widen_bf16(x, ws, n);
    dp_cpu_widen_bf16(dy, ws + n, n);
    rmsnorm_backward_input_f32(dev, rows, cols, ws, w, rstd, ws + n, ws + 2 * n);
    dp_cpu_round_bf16(ws + 2 * n, dx, n);
    return DP_OK;
}

static void rmsnorm_backward_weight_f32(dp_device *dev, int rows, int cols, const float *xf, const float *rstd,
                                        const float *dyf, float *dw)
{
    size_t work = (size_t)rows * (size_t)cols;
    /* threads own columns; rows add in order */
    PAR_FOR(dev, work)
    for (int c = 0; c < cols; c++) {
        float acc = 0.0f;
        for (int r = 0; r < rows; r++) acc += dyf[(size_t)r * cols + c] * xf[(size_t)r * cols + c] * rstd[r];
        dw[c] += acc;
    }
}

static dp_status cpu_rmsnorm_backward_weight(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                             const void *x, const float *rstd, const void *dy, float *dw)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "rmsnorm_backward_weight");
    size_t n;
    DP_CHECK(shape_elems(rows, cols, "rmsnorm_backward_weight", &n));
    if (t == DP_DTYPE_F32) {
        rmsnorm_backward_weight_f32(dev, rows, cols, x, rstd, dy, dw);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 2, "rmsnorm_backward_weight", &ws));
    dp_cpu_widen_bf16(x, ws, n);
    dp_cpu_widen_bf16(dy, ws + n, n);
    rmsnorm_backward_weight_f32(dev, rows, cols, ws, rstd, ws + n, dw);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * losses */

static float mse_forward_f32(size_t n, const float *p, const float *y)
{
    double sum;
    BLOCKED_SUM(sum, n, ((double)p[i] - y[i]) * ((double)p[i] - y[i]));
    return (float)(sum / (double)n);
}

static dp_status cpu_mse_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                                 const void *target, float *loss)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "mse_forward");
    if (n == 0) return dp_fail(DP_ERR_INVALID, "mse_forward: no elements");
    if (t == DP_DTYPE_F32) {
        *loss = mse_forward_f32(n, pred, target);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 2, "mse_forward", &ws));
    dp_cpu_widen_bf16(pred, ws, n);
    dp_cpu_widen_bf16(target, ws + n, n);
    *loss = mse_forward_f32(n, ws, ws + n);
    return DP_OK;
}

static void mse_backward_f32(dp_device *dev, size_t n, const float *p, const float *y, float dloss, float *d)
{
    float k = 2.0f * dloss / (float)n;
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) d[i] = k * (p[i] - y[i]);
}

static dp_status cpu_mse_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                                  const void *target, float dloss, void *dpred)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "mse_backward");
    if (n == 0) return dp_fail(DP_ERR_INVALID, "mse_backward: no elements");
    if (t == DP_DTYPE_F32) {
        mse_backward_f32(dev, n, pred, target, dloss, dpred);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 3, "mse_backward", &ws));
    dp_cpu_widen_bf16(pred, ws, n);
    dp_cpu_widen_bf16(target, ws + n, n);
    mse_backward_f32(dev, n, ws, ws + n, dloss, ws + 2 * n);
    dp_cpu_round_bf16(ws + 2 * n, dpred, n);
    return DP_OK;
}

static dp_status check_labels(int rows, int cols, const int32_t *labels)
{
    for (int r = 0; r < rows; r++)
        if (labels[r] < 0 || labels[r] >= cols)
            return dp_fail(DP_ERR_INVALID, "cross-entropy: label %d of row %d is outside [0, %d)", (int)labels[r], r,
                           cols);
    return DP_OK;
}

static float xent_forward_f32(int rows, int cols, const float *z, const int32_t *labels)
{
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * cols;
        float mx = zr[0];
        for (int c = 1; c < cols; c++) mx = zr[c] > mx ? zr[c] : mx;
        double se = 0.0;
        for (int c = 0; c < cols; c++) se += exp((double)zr[c] - mx);
        total += log(se) + mx - zr[labels[r]];
    }
    return (float)(total / rows);
}

static dp_status cpu_xent_forward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                                  const int32_t *labels, float *loss)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "xent_forward");
    if (rows <= 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "xent_forward: empty input (%d x %d)", rows, cols);
    DP_CHECK(check_labels(rows, cols, labels));
    if (t == DP_DTYPE_F32) {
        *loss = xent_forward_f32(rows, cols, logits, labels);
        return DP_OK;
    }
    size_t n = (size_t)rows * (size_t)cols;
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 1, "xent_forward", &ws));
    dp_cpu_widen_bf16(logits, ws, n);
    *loss = xent_forward_f32(rows, cols, ws, labels);
    return DP_OK;
}

static void xent_backward_f32(dp_device *dev, int rows, int cols, const float *z, const int32_t *labels, float dloss,
                              float *d)
{
    float k = dloss / (float)rows;
    size_t work = (size_t)rows * (size_t)cols;
    PAR_FOR(dev, work)
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * cols;
        float *dr = d + (size_t)r * cols;
        float mx = zr[0];
        for (int c = 1; c < cols; c++) mx = zr[c] > mx ? zr[c] : mx;
        double se = 0.0;
        for (int c = 0; c < cols; c++) se += exp((double)zr[c] - mx);
        for (int c = 0; c < cols; c++) dr[c] = k * (float)(exp((double)zr[c] - mx) / se);
        dr[labels[r]] -= k;
    }
}

static dp_status cpu_xent_backward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                                   const int32_t *labels, float dloss, void *dlogits)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "xent_backward");
    if (rows <= 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "xent_backward: empty input (%d x %d)", rows, cols);
    DP_CHECK(check_labels(rows, cols, labels));
    if (t == DP_DTYPE_F32) {
        xent_backward_f32(dev, rows, cols, logits, labels, dloss, dlogits);
        return DP_OK;
    }
    size_t n = (size_t)rows * (size_t)cols;
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 2, "xent_backward", &ws));
    dp_cpu_widen_bf16(logits, ws, n);
    xent_backward_f32(dev, rows, cols, ws, labels, dloss, ws + n);
    dp_cpu_round_bf16(ws + n, dlogits, n); /* the label's entry too: k p - k in fp32, then one rounding */
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * rows */

static dp_status check_index(int rows, const int32_t *index, const char *what)
{
    for (int i = 0; i < rows; i++)
        if (index[i] < 0) return dp_fail(DP_ERR_INVALID, "%s: negative index %d at row %d", what, index[i], i);
    return DP_OK;
}

/* a copy of stored bits, whatever the dtype (bf16 rows are copied, never rounded) */
static dp_status cpu_gather_rows(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                                 const int32_t *index, void *dst)
{
    (void)dev, (void)s;
    size_t es = dp_dtype_size(t), n;
    if (!es) return dp_fail(DP_ERR_INVALID, "gather_rows: unknown dtype %d", (int)t);
    DP_CHECK(shape_elems(rows, cols, "gather_rows", &n));
    DP_CHECK(check_index(rows, index, "gather_rows"));
    for (int i = 0; i < rows; i++)
        memcpy((char *)dst + (size_t)i * cols * es, (const char *)src + (size_t)index[i] * cols * es, cols * es);
    return DP_OK;
}

/* Each source row is one fp32 add into its destination row; in bf16 each add widens the
 * destination, adds in fp32 and rounds, as the CUDA driver does: rows landing on one
 * destination are rounded once per row, in increasing i. */
static dp_status cpu_scatter_add_rows(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                                      const int32_t *index, void *dst)
{
    (void)dev, (void)s;
    DP_CPU_FLOAT_ONLY(t, "scatter_add_rows");
    size_t n;
    DP_CHECK(shape_elems(rows, cols, "scatter_add_rows", &n));
    DP_CHECK(check_index(rows, index, "scatter_add_rows"));
    if (t == DP_DTYPE_F32) {
        const float *sf = src;
        float *df = dst;
        for (int i = 0; i < rows; i++) {
            float *d = df + (size_t)index[i] * cols;
            const float *x = sf + (size_t)i * cols;
            for (int c = 0; c < cols; c++) d[c] += x[c];
        }
        return DP_OK;
    }
    const uint16_t *sh = src;
    uint16_t *dh = dst;
    for (int i = 0; i < rows; i++) {
        uint16_t *d = dh + (size_t)index[i] * cols;
        const uint16_t *x = sh + (size_t)i * cols;
        for (int c = 0; c < cols; c++) d[c] = dp_cpu_f32_to_bf16(dp_cpu_bf16_to_f32(d[c]) + dp_cpu_bf16_to_f32(x[c]));
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * optimizers */

static dp_status cpu_sgd_update(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad,
                                float *momentum_buf, const dp_sgd_args *a)
{
    (void)s;
    if (a->momentum != 0.0f && !momentum_buf)
        return dp_fail(DP_ERR_INVALID, "sgd_update: momentum %g needs a momentum buffer", (double)a->momentum);
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] + a->weight_decay * param[i];
        if (a->momentum != 0.0f) {
            momentum_buf[i] = a->momentum * momentum_buf[i] + g;
            g = momentum_buf[i];
        }
        param[i] -= a->lr * g;
    }
    return DP_OK;
}

DP_VECTORIZE
static void adamw_range(size_t i0, size_t i1, float *restrict param, const float *restrict grad, float *restrict m,
                        float *restrict v, float lr, float b1, float b2, float eps, float decay, float bc1, float bc2)
{
    for (size_t i = i0; i < i1; i++) {
        float g = grad[i];
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi, v[i] = vi;
        float p = param[i] * decay;
        param[i] = p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

static dp_status cpu_adamw_update(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *m,
                                  float *v, const dp_adamw_args *a)
{
    (void)s;
    if (a->step < 1) return dp_fail(DP_ERR_INVALID, "adamw_update: step must start at 1, got %d", a->step);
    float bc1 = 1.0f - powf(a->beta1, (float)a->step);
    float bc2 = 1.0f - powf(a->beta2, (float)a->step);
    float decay = 1.0f - a->lr * a->weight_decay;
    size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    PAR_FOR(dev, n)
    for (size_t b = 0; b < nb; b++)
        adamw_range(b * ELEM_BLOCK, b * ELEM_BLOCK + ELEM_BLOCK < n ? b * ELEM_BLOCK + ELEM_BLOCK : n, param, grad, m, v,
                    a->lr, a->beta1, a->beta2, a->eps, decay, bc1, bc2);
    return DP_OK;
}

static float sum_squares_f32(size_t n, const float *xf)
{
    double sum;
    BLOCKED_SUM(sum, n, (double)xf[i] * xf[i]);
    return (float)sum;
}

static dp_status cpu_sum_squares(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, float *out)
{
    (void)s;
    DP_CPU_FLOAT_ONLY(t, "sum_squares");
    if (t == DP_DTYPE_F32) {
        *out = sum_squares_f32(n, x);
        return DP_OK;
    }
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, n, 1, "sum_squares", &ws));
    dp_cpu_widen_bf16(x, ws, n);
    *out = sum_squares_f32(n, ws);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the kernel table (the runtime table is in cpu_device.c) */

const dp_device_kernel_ops dp_cpu_kernel_ops = {
    .abi_version = DP_DEVICE_KERNEL_ABI_VERSION,
    .struct_size = sizeof(dp_device_kernel_ops),
    .gemm = dp_cpu_gemm,
    .fill = cpu_fill,
    .cast = cpu_cast,
    .add = cpu_add,
    .scale = cpu_scale,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward_input = cpu_rmsnorm_backward_input,
    .rmsnorm_backward_weight = cpu_rmsnorm_backward_weight,
    .mse_forward = cpu_mse_forward,
    .mse_backward = cpu_mse_backward,
    .xent_forward = cpu_xent_forward,
    .xent_backward = cpu_xent_backward,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .sgd_update = cpu_sgd_update,
    .adamw_update = cpu_adamw_update,
    .sum_squares = cpu_sum_squares,
    .sigmoid_forward = dp_cpu_sigmoid_forward,
    .moe_topk = dp_cpu_moe_topk,
    .moe_topk_backward = dp_cpu_moe_topk_backward,
    .moe_permute = dp_cpu_moe_permute,
    .moe_combine = dp_cpu_moe_combine,
    .moe_combine_backward = dp_cpu_moe_combine_backward,
    .swiglu_forward = dp_cpu_swiglu_forward,
    .swiglu_backward = dp_cpu_swiglu_backward,
    .moe_bias_update = dp_cpu_moe_bias_update,
    .add_counts = dp_cpu_add_counts,
};
