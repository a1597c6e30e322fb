/* cpu_kernels.c: the CPU driver's kernels other than GEMM: element-wise pairs, RMSNorm,
 * losses, row gather/scatter and optimizers, in fp32. Every reduction has a fixed order
 * (fixed-size blocks summed in order), so results never depend on the thread count. */
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
    DP_CPU_F32_ONLY(t, "fill");
    float *yf = y;
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) yf[i] = value;
    return DP_OK;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
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
        for (size_t i = 0; i < n; i++) y[i] = f32_to_bf16(x[i]);
        return DP_OK;
    }
    if (src_t == DP_DTYPE_BF16 && dst_t == DP_DTYPE_F32) {
        const uint16_t *x = src;
        float *y = dst;
        for (size_t i = 0; i < n; i++) y[i] = bf16_to_f32(x[i]);
        return DP_OK;
    }
    return dp_fail(DP_ERR_UNSUPPORTED, "cpu driver: cast from dtype %d to %d is not supported", (int)src_t,
                   (int)dst_t);
}

static dp_status cpu_add(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b, void *y)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "add");
    const float *af = a, *bf = b;
    float *yf = y;
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) yf[i] = af[i] + bf[i];
    return DP_OK;
}

static dp_status cpu_scale(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float alpha, void *y)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "scale");
    float *yf = y;
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) yf[i] *= alpha;
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

static dp_status cpu_gelu_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "gelu_forward");
    size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    PAR_FOR(dev, n)
    for (size_t b = 0; b < nb; b++)
        gelu_forward_range(b * ELEM_BLOCK, b * ELEM_BLOCK + ELEM_BLOCK < n ? b * ELEM_BLOCK + ELEM_BLOCK : n, x, y);
    return DP_OK;
}

/* dx may alias dy */
static dp_status cpu_gelu_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x,
                                   const void *dy, void *dx)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "gelu_backward");
    size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    PAR_FOR(dev, n)
    for (size_t b = 0; b < nb; b++)
        gelu_backward_range(b * ELEM_BLOCK, b * ELEM_BLOCK + ELEM_BLOCK < n ? b * ELEM_BLOCK + ELEM_BLOCK : n, x, dy, dx);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * RMSNorm */

static dp_status cpu_rmsnorm_forward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, float eps,
                                     const void *x, const float *w, void *y, float *rstd)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "rmsnorm_forward");
    const float *xf = x;
    float *yf = y;
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
    return DP_OK;
}

/* y = x * rstd * w, so dx = rstd * (dy w) - x * rstd^3 * mean(dy w x). */
static dp_status cpu_rmsnorm_backward_input(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                            const void *x, const float *w, const float *rstd, const void *dy,
                                            void *dx)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "rmsnorm_backward_input");
    const float *xf = x, *dyf = dy;
    float *dxf = dx;
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
    return DP_OK;
}

static dp_status cpu_rmsnorm_backward_weight(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                             const void *x, const float *rstd, const void *dy, float *dw)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "rmsnorm_backward_weight");
    const float *xf = x, *dyf = dy;
    size_t work = (size_t)rows * (size_t)cols;
    /* threads own columns; rows add in order */
    PAR_FOR(dev, work)
    for (int c = 0; c < cols; c++) {
        float acc = 0.0f;
        for (int r = 0; r < rows; r++) acc += dyf[(size_t)r * cols + c] * xf[(size_t)r * cols + c] * rstd[r];
        dw[c] += acc;
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * losses */

static dp_status cpu_mse_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                                 const void *target, float *loss)
{
    (void)dev, (void)s;
    DP_CPU_F32_ONLY(t, "mse_forward");
    if (n == 0) return dp_fail(DP_ERR_INVALID, "mse_forward: no elements");
    const float *p = pred, *y = target;
    double sum;
    BLOCKED_SUM(sum, n, ((double)p[i] - y[i]) * ((double)p[i] - y[i]));
    *loss = (float)(sum / (double)n);
    return DP_OK;
}

static dp_status cpu_mse_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                                  const void *target, float dloss, void *dpred)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "mse_backward");
    if (n == 0) return dp_fail(DP_ERR_INVALID, "mse_backward: no elements");
    const float *p = pred, *y = target;
    float *d = dpred;
    float k = 2.0f * dloss / (float)n;
    PAR_FOR(dev, n)
    for (size_t i = 0; i < n; i++) d[i] = k * (p[i] - y[i]);
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

static dp_status cpu_xent_forward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                                  const int32_t *labels, float *loss)
{
    (void)dev, (void)s;
    DP_CPU_F32_ONLY(t, "xent_forward");
    if (rows <= 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "xent_forward: empty input (%d x %d)", rows, cols);
    DP_CHECK(check_labels(rows, cols, labels));
    const float *z = logits;
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * cols;
        float mx = zr[0];
        for (int c = 1; c < cols; c++) mx = zr[c] > mx ? zr[c] : mx;
        double se = 0.0;
        for (int c = 0; c < cols; c++) se += exp((double)zr[c] - mx);
        total += log(se) + mx - zr[labels[r]];
    }
    *loss = (float)(total / rows);
    return DP_OK;
}

static dp_status cpu_xent_backward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                                   const int32_t *labels, float dloss, void *dlogits)
{
    (void)s;
    DP_CPU_F32_ONLY(t, "xent_backward");
    if (rows <= 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "xent_backward: empty input (%d x %d)", rows, cols);
    DP_CHECK(check_labels(rows, cols, labels));
    const float *z = logits;
    float *d = dlogits;
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
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * rows */

static dp_status cpu_gather_rows(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                                 const int32_t *index, void *dst)
{
    (void)dev, (void)s;
    size_t es = dp_dtype_size(t);
    if (!es) return dp_fail(DP_ERR_INVALID, "gather_rows: unknown dtype %d", (int)t);
    for (int i = 0; i < rows; i++) {
        if (index[i] < 0) return dp_fail(DP_ERR_INVALID, "gather_rows: negative index %d at row %d", index[i], i);
        memcpy((char *)dst + (size_t)i * cols * es, (const char *)src + (size_t)index[i] * cols * es, cols * es);
    }
    return DP_OK;
}

static dp_status cpu_scatter_add_rows(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                                      const int32_t *index, void *dst)
{
    (void)dev, (void)s;
    DP_CPU_F32_ONLY(t, "scatter_add_rows");
    const float *sf = src;
    float *df = dst;
    for (int i = 0; i < rows; i++) {
        if (index[i] < 0) return dp_fail(DP_ERR_INVALID, "scatter_add_rows: negative index %d at row %d", index[i], i);
        float *d = df + (size_t)index[i] * cols;
        const float *x = sf + (size_t)i * cols;
        for (int c = 0; c < cols; c++) d[c] += x[c];
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

static dp_status cpu_sum_squares(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, float *out)
{
    (void)dev, (void)s;
    DP_CPU_F32_ONLY(t, "sum_squares");
    const float *xf = x;
    double sum;
    BLOCKED_SUM(sum, n, (double)xf[i] * xf[i]);
    *out = (float)sum;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the device table: memory, streams and events come from cpu_device.c */

const dp_device_ops dp_cpu_device_ops = {
    .abi_version = DP_DEVICE_ABI_VERSION,
    .struct_size = sizeof(dp_device_ops),
    .name = "cpu",
    .device_count = dp_cpu_device_count,
    .open = dp_cpu_open,
    .close = dp_cpu_close,
    .info = dp_cpu_info,
    .alloc = dp_cpu_alloc,
    .free = dp_cpu_free,
    .copy = dp_cpu_copy,
    .memset = dp_cpu_memset,
    .stream_create = dp_cpu_stream_create,
    .stream_destroy = dp_cpu_stream_destroy,
    .stream_synchronize = dp_cpu_stream_synchronize,
    .event_create = dp_cpu_event_create,
    .event_destroy = dp_cpu_event_destroy,
    .event_record = dp_cpu_event_record,
    .stream_wait_event = dp_cpu_stream_wait_event,
    .event_query = dp_cpu_event_query,
    .event_synchronize = dp_cpu_event_synchronize,
    .event_elapsed = dp_cpu_event_elapsed,
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
};
