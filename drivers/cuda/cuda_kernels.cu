/* cuda_kernels.cu: the CUDA driver's kernels other than GEMM, each the GPU twin of the CPU
 * driver's loop: element-wise pairs (16-byte vector loads), RMSNorm, losses, row gather and
 * scatter, optimizers (the mixture-of-experts kernels are in cuda_moe.cu). Built with
 * --fmad=false and with every reduction in a fixed order and in double where the CPU sums in
 * double, so results track the CPU reference to a rounding. The kernel table is at the end. */
#include <math.h>
#include <stdint.h>

#include "drivers/cuda/cuda_internal.h"

#define THREADS 256
#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* ----------------------------------------------------------------------------
 * loads and stores: arithmetic is fp32 whatever the storage type */

__device__ __forceinline__ float ld(float x) { return x; }
__device__ __forceinline__ float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T st(float v);
template <> __device__ __forceinline__ float st<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T quiet_nan() { return st<T>(__int_as_float(0x7fc00000)); }

/* N elements moved as one 16-byte access when the pointers allow it. */
template <typename T, int N> struct alignas(sizeof(T) * N) pack {
    T v[N];
};

static int grid_for(dp_device *dev, size_t work)
{
    size_t blocks = (work + THREADS - 1) / THREADS;
    size_t cap = (size_t)(dev->sm_count > 0 ? dev->sm_count : 80) * 16;
    if (blocks > cap) blocks = cap;
    return blocks ? (int)blocks : 1;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* ----------------------------------------------------------------------------
 * element-wise maps: y = op(a) or y = op(a, b), y may alias a or b */

template <typename T, int N, typename Op>
__global__ void k_map1(size_t n, const T *a, T *y, Op op)
{
    size_t nvec = n / N, stride = (size_t)blockDim.x * gridDim.x, tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t v = tid; v < nvec; v += stride) {
        pack<T, N> pa = ((const pack<T, N> *)a)[v], py;
#pragma unroll
        for (int j = 0; j < N; j++) py.v[j] = st<T>(op(ld(pa.v[j])));
        ((pack<T, N> *)y)[v] = py;
    }
    for (size_t i = nvec * N + tid; i < n; i += stride) y[i] = st<T>(op(ld(a[i])));
}

template <typename T, int N, typename Op>
__global__ void k_map2(size_t n, const T *a, const T *b, T *y, Op op)
{
    size_t nvec = n / N, stride = (size_t)blockDim.x * gridDim.x, tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t v = tid; v < nvec; v += stride) {
        pack<T, N> pa = ((const pack<T, N> *)a)[v], pb = ((const pack<T, N> *)b)[v], py;
#pragma unroll
        for (int j = 0; j < N; j++) py.v[j] = st<T>(op(ld(pa.v[j]), ld(pb.v[j])));
        ((pack<T, N> *)y)[v] = py;
    }
    for (size_t i = nvec * N + tid; i < n; i += stride) y[i] = st<T>(op(ld(a[i]), ld(b[i])));
}

template <typename T, typename Op>
static dp_status map1_t(dp_device *dev, dp_stream *s, size_t n, const void *a, void *y, Op op)
{
    const int N = 16 / sizeof(T);
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (aligned16(a) && aligned16(y))
        k_map1<T, N, Op><<<grid_for(dev, n / N + 1), THREADS, 0, cs>>>(n, (const T *)a, (T *)y, op);
    else
        k_map1<T, 1, Op><<<grid_for(dev, n), THREADS, 0, cs>>>(n, (const T *)a, (T *)y, op);
    LAUNCH_TRY("element-wise kernel");
    return DP_OK;
}

template <typename T, typename Op>
static dp_status map2_t(dp_device *dev, dp_stream *s, size_t n, const void *a, const void *b, void *y, Op op)
{
    const int N = 16 / sizeof(T);
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (aligned16(a) && aligned16(b) && aligned16(y))
        k_map2<T, N, Op><<<grid_for(dev, n / N + 1), THREADS, 0, cs>>>(n, (const T *)a, (const T *)b, (T *)y, op);
    else
        k_map2<T, 1, Op><<<grid_for(dev, n), THREADS, 0, cs>>>(n, (const T *)a, (const T *)b, (T *)y, op);
    LAUNCH_TRY("element-wise kernel");
    return DP_OK;
}

static dp_status float_type(dp_dtype t, const char *what)
{
    if (t == DP_DTYPE_F32 || t == DP_DTYPE_BF16) return DP_OK;
    return dp_fail(DP_ERR_UNSUPPORTED, "cuda driver: %s supports fp32 and bf16 tensors (dtype %d given)", what, (int)t);
}

#define MAP1(dev, s, t, n, a, y, op)                                                               \
    ((t) == DP_DTYPE_F32 ? map1_t<float>(dev, s, n, a, y, op) : map1_t<__nv_bfloat16>(dev, s, n, a, y, op))
#define MAP2(dev, s, t, n, a, b, y, op)                                                            \
    ((t) == DP_DTYPE_F32 ? map2_t<float>(dev, s, n, a, b, y, op) : map2_t<__nv_bfloat16>(dev, s, n, a, b, y, op))

struct op_add {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return a != a || a > b ? a : b; }
};
struct op_scale {
    float alpha;
    __device__ float operator()(float y) const { return y * alpha; }
};
struct op_fill {
    float value;
    __device__ float operator()(float) const { return value; }
};
struct op_gelu {
    __device__ float operator()(float x) const { return 0.5f * x * (1.0f + erff(x * INV_SQRT2)); }
};
struct op_gelu_back {
    __device__ float operator()(float v, float dy) const
    {
        float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
        return dy * (cdf + v * pdf);
    }
};
struct op_mse_back {
    float k;
    __device__ float operator()(float p, float t) const { return k * (p - t); }
};
struct op_copy {
    __device__ float operator()(float x) const { return x; }
};

__global__ void k_fill_i32(size_t n, int32_t v, int32_t *y)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) y[i] = v;
}

dp_status dp_cuda_fill(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float value, void *y)
{
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    if (t == DP_DTYPE_I32) {
        k_fill_i32<<<grid_for(dev, n), THREADS, 0, dp_cuda_stream(dev, s)->s>>>(n, (int32_t)value, (int32_t *)y);
        LAUNCH_TRY("fill kernel");
        return DP_OK;
    }
    DP_CHECK(float_type(t, "fill"));
    op_fill op = {value};
    return MAP1(dev, s, t, n, y, y, op);
}

template <typename S, typename D>
__global__ void k_cast(size_t n, const S *x, D *y)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x)
        y[i] = st<D>(ld(x[i]));
}

dp_status dp_cuda_cast(dp_device *dev, dp_stream *s, size_t n, dp_dtype src_t, const void *src, dp_dtype dst_t,
                       void *dst)
{
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (src_t == dst_t && dp_dtype_size(src_t)) {
        CUDA_TRY(cudaMemcpyAsync(dst, src, n * dp_dtype_size(src_t), cudaMemcpyDeviceToDevice, cs));
        return DP_OK;
    }
    if (src_t == DP_DTYPE_F32 && dst_t == DP_DTYPE_BF16)
        k_cast<float, __nv_bfloat16><<<grid_for(dev, n), THREADS, 0, cs>>>(n, (const float *)src, (__nv_bfloat16 *)dst);
    else if (src_t == DP_DTYPE_BF16 && dst_t == DP_DTYPE_F32)
        k_cast<__nv_bfloat16, float><<<grid_for(dev, n), THREADS, 0, cs>>>(n, (const __nv_bfloat16 *)src, (float *)dst);
    else
        return dp_fail(DP_ERR_UNSUPPORTED, "cuda driver: cast from dtype %d to %d is not supported", (int)src_t,
                       (int)dst_t);
    LAUNCH_TRY("cast kernel");
    return DP_OK;
}

dp_status dp_cuda_add(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b, void *y)
{
    if (n == 0) return DP_OK;
    DP_CHECK(float_type(t, "add"));
    DP_CHECK(dp_cuda_enter(dev));
    return MAP2(dev, s, t, n, a, b, y, op_add());
}

dp_status dp_cuda_max(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b, void *y)
{
    if (n == 0) return DP_OK;
    DP_CHECK(float_type(t, "max"));
    DP_CHECK(dp_cuda_enter(dev));
    return MAP2(dev, s, t, n, a, b, y, op_max());
}

dp_status dp_cuda_scale(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float alpha, void *y)
{
    if (n == 0) return DP_OK;
    DP_CHECK(float_type(t, "scale"));
    DP_CHECK(dp_cuda_enter(dev));
    op_scale op = {alpha};
    return MAP1(dev, s, t, n, y, y, op);
}

dp_status dp_cuda_gelu_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y)
{
    if (n == 0) return DP_OK;
    DP_CHECK(float_type(t, "gelu_forward"));
    DP_CHECK(dp_cuda_enter(dev));
    return MAP1(dev, s, t, n, x, y, op_gelu());
}

dp_status dp_cuda_gelu_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, const void *dy,
                                void *dx)
{
    if (n == 0) return DP_OK;
    DP_CHECK(float_type(t, "gelu_backward"));
    DP_CHECK(dp_cuda_enter(dev));
    return MAP2(dev, s, t, n, x, dy, dx, op_gelu_back());
}

/* ----------------------------------------------------------------------------
 * block reductions (fixed shape, so the order of every sum is fixed) */

template <typename V, typename F>
__device__ V block_reduce(V v, F f, V identity)
{
    __shared__ V shared[32];
    for (int o = 16; o > 0; o >>= 1) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads(); /* shared may still be read by a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? shared[lane] : identity;
        for (int o = 16; o > 0; o >>= 1) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    return shared[0];
}

struct f_sum {
    __device__ double operator()(double a, double b) const { return a + b; }
};
struct f_maxf {
    __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};

/* Sum of squares (of x, or of x - y) in double: blocks write partials, one block adds them.
 * Each thread reads N elements at a time (16 bytes where the pointers allow); the grid depends
 * only on n and the device, so the order of every sum, and the result, is fixed. At most
 * RED_BLOCKS blocks, 8 per multiprocessor: enough loads in flight to reach memory bandwidth
 * (256 blocks of scalar loads ran at a tenth of it on an H100). */
#define RED_BLOCKS 2048

template <typename T, int N>
__global__ void k_sq_partial(size_t n, const T *x, const T *y, double *partial)
{
    double acc = 0.0;
    size_t nvec = n / N, stride = (size_t)blockDim.x * gridDim.x, tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t v = tid; v < nvec; v += stride) {
        pack<T, N> px = ((const pack<T, N> *)x)[v], py;
        if (y) py = ((const pack<T, N> *)y)[v];
#pragma unroll
        for (int j = 0; j < N; j++) {
            double d = y ? (double)ld(px.v[j]) - (double)ld(py.v[j]) : (double)ld(px.v[j]);
            acc += d * d;
        }
    }
    for (size_t i = nvec * N + tid; i < n; i += stride) {
        double d = y ? (double)ld(x[i]) - (double)ld(y[i]) : (double)ld(x[i]);
        acc += d * d;
    }
    acc = block_reduce(acc, f_sum(), 0.0);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void k_sum_partials(int parts, const double *partial, double divide_by, float *out)
{
    double acc = 0.0;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
    acc = block_reduce(acc, f_sum(), 0.0);
    if (threadIdx.x == 0) *out = (float)(acc / divide_by);
}

template <typename T>
static dp_status sum_sq_t(dp_device *dev, dp_stream *s, size_t n, const void *x, const void *y, double divide_by,
                          float *out)
{
    dp_stream *st = dp_cuda_stream(dev, s);
    void *scratch;
    DP_CHECK(dp_cuda_scratch(st, RED_BLOCKS * sizeof(double), &scratch));
    const int N = 16 / sizeof(T);
    int vec = aligned16(x) && (!y || aligned16(y));
    size_t want = ((vec ? n / N : n) + THREADS - 1) / THREADS;
    size_t cap = (size_t)(dev->sm_count > 0 ? dev->sm_count : 80) * 8;
    if (cap > RED_BLOCKS) cap = RED_BLOCKS;
    int blocks = want < cap ? (int)(want ? want : 1) : (int)cap;
    if (vec) k_sq_partial<T, N><<<blocks, THREADS, 0, st->s>>>(n, (const T *)x, (const T *)y, (double *)scratch);
    else k_sq_partial<T, 1><<<blocks, THREADS, 0, st->s>>>(n, (const T *)x, (const T *)y, (double *)scratch);
    k_sum_partials<<<1, THREADS, 0, st->s>>>(blocks, (const double *)scratch, divide_by, out);
    LAUNCH_TRY("reduction kernel");
    return DP_OK;
}

dp_status dp_cuda_sum_squares(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, float *out)
{
    DP_CHECK(float_type(t, "sum_squares"));
    DP_CHECK(dp_cuda_enter(dev));
    return t == DP_DTYPE_F32 ? sum_sq_t<float>(dev, s, n, x, NULL, 1.0, out)
                             : sum_sq_t<__nv_bfloat16>(dev, s, n, x, NULL, 1.0, out);
}

/* ----------------------------------------------------------------------------
 * losses */

dp_status dp_cuda_mse_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                              const void *target, float *loss)
{
    DP_CHECK(float_type(t, "mse_forward"));
    if (n == 0) return dp_fail(DP_ERR_INVALID, "mse_forward: no elements");
    DP_CHECK(dp_cuda_enter(dev));
    return t == DP_DTYPE_F32 ? sum_sq_t<float>(dev, s, n, pred, target, (double)n, loss)
                             : sum_sq_t<__nv_bfloat16>(dev, s, n, pred, target, (double)n, loss);
}

dp_status dp_cuda_mse_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                               const void *target, float dloss, void *dpred)
{
    DP_CHECK(float_type(t, "mse_backward"));
    if (n == 0) return dp_fail(DP_ERR_INVALID, "mse_backward: no elements");
    DP_CHECK(dp_cuda_enter(dev));
    op_mse_back op = {2.0f * dloss / (float)n};
    return MAP2(dev, s, t, n, pred, target, dpred, op);
}

/* One block per row: the row's max, then sum of exp in double. A label outside [0, cols)
 * cannot be refused from the host (labels live on the device): the row's loss becomes NaN. */
template <typename T>
__device__ void row_max_sumexp(const T *zr, int cols, float *mx_out, double *se_out)
{
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, ld(zr[c]));
    mx = block_reduce(mx, f_maxf(), -INFINITY);
    double se = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) se += exp((double)ld(zr[c]) - (double)mx);
    se = block_reduce(se, f_sum(), 0.0);
    *mx_out = mx;
    *se_out = se;
}

template <typename T>
__global__ void k_xent_rows(int cols, const T *z, const int32_t *labels, double *row_loss)
{
    const T *zr = z + (size_t)blockIdx.x * cols;
    float mx;
    double se;
    row_max_sumexp(zr, cols, &mx, &se);
    if (threadIdx.x == 0) {
        int label = labels[blockIdx.x];
        row_loss[blockIdx.x] = label < 0 || label >= cols ? (double)NAN : log(se) + mx - (double)ld(zr[label]);
    }
}

__global__ void k_mean_rows(int rows, const double *row_loss, float *loss)
{
    double acc = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) acc += row_loss[i];
    acc = block_reduce(acc, f_sum(), 0.0);
    if (threadIdx.x == 0) *loss = (float)(acc / rows);
}

dp_status dp_cuda_xent_forward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                               const int32_t *labels, float *loss)
{
    DP_CHECK(float_type(t, "xent_forward"));
    if (rows <= 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "xent_forward: empty input (%d x %d)", rows, cols);
    DP_CHECK(dp_cuda_enter(dev));
    dp_stream *st = dp_cuda_stream(dev, s);
    void *scratch;
    DP_CHECK(dp_cuda_scratch(st, (size_t)rows * sizeof(double), &scratch));
    if (t == DP_DTYPE_F32)
        k_xent_rows<float><<<rows, THREADS, 0, st->s>>>(cols, (const float *)logits, labels, (double *)scratch);
    else
        k_xent_rows<__nv_bfloat16>
            <<<rows, THREADS, 0, st->s>>>(cols, (const __nv_bfloat16 *)logits, labels, (double *)scratch);
    k_mean_rows<<<1, 1024, 0, st->s>>>(rows, (const double *)scratch, loss);
    LAUNCH_TRY("cross-entropy kernel");
    return DP_OK;
}

template <typename T>
__global__ void k_xent_back(int cols, const T *z, const int32_t *labels, float k, T *d)
{
    const T *zr = z + (size_t)blockIdx.x * cols;
    T *dr = d + (size_t)blockIdx.x * cols;
    float mx;
    double se;
    row_max_sumexp(zr, cols, &mx, &se);
    int label = labels[blockIdx.x];
    int bad = label < 0 || label >= cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = k * (float)(exp((double)ld(zr[c]) - (double)mx) / se);
        if (c == label) v -= k;
        dr[c] = bad ? quiet_nan<T>() : st<T>(v);
    }
}

dp_status dp_cuda_xent_backward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                                const int32_t *labels, float dloss, void *dlogits)
{
    DP_CHECK(float_type(t, "xent_backward"));
    if (rows <= 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "xent_backward: empty input (%d x %d)", rows, cols);
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    float k = dloss / (float)rows;
    if (t == DP_DTYPE_F32)
        k_xent_back<float><<<rows, THREADS, 0, cs>>>(cols, (const float *)logits, labels, k, (float *)dlogits);
    else
        k_xent_back<__nv_bfloat16><<<rows, THREADS, 0, cs>>>(cols, (const __nv_bfloat16 *)logits, labels, k,
                                                             (__nv_bfloat16 *)dlogits);
    LAUNCH_TRY("cross-entropy backward kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * RMSNorm: one block per row; sums in double as on the CPU */

template <typename T>
__global__ void k_rms_fwd(int cols, float eps, const T *x, const float *w, T *y, float *rstd)
{
    const T *xr = x + (size_t)blockIdx.x * cols;
    T *yr = y + (size_t)blockIdx.x * cols;
    double ss = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        double v = ld(xr[c]);
        ss += v * v;
    }
    ss = block_reduce(ss, f_sum(), 0.0);
    float rs = (float)(1.0 / sqrt(ss / cols + eps));
    if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = st<T>(ld(xr[c]) * rs * w[c]);
}

template <typename T>
__global__ void k_rms_bwd_in(int cols, const T *x, const float *w, const float *rstd, const T *dy, T *dx)
{
    size_t off = (size_t)blockIdx.x * cols;
    double dot = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dot += (double)ld(dy[off + c]) * w[c] * ld(x[off + c]);
    dot = block_reduce(dot, f_sum(), 0.0);
    float rs = rstd[blockIdx.x];
    float coef = (float)(dot / cols) * rs * rs * rs;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        dx[off + c] = st<T>(rs * ld(dy[off + c]) * w[c] - ld(x[off + c]) * coef);
}

/* One thread per column adds the rows in order: the CPU's order exactly. */
template <typename T>
__global__ void k_rms_bwd_w(int rows, int cols, const T *x, const float *rstd, const T *dy, float *dw)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += ld(dy[(size_t)r * cols + c]) * ld(x[(size_t)r * cols + c]) * rstd[r];
    dw[c] += acc;
}

static dp_status rms_sizes(int rows, int cols, const char *what)
{
    if (rows < 0 || cols <= 0) return dp_fail(DP_ERR_INVALID, "%s: bad shape %d x %d", what, rows, cols);
    return DP_OK;
}

dp_status dp_cuda_rmsnorm_forward(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, float eps,
                                  const void *x, const float *w, void *y, float *rstd)
{
    DP_CHECK(float_type(t, "rmsnorm_forward"));
    DP_CHECK(rms_sizes(rows, cols, "rmsnorm_forward"));
    if (rows == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_rms_fwd<float><<<rows, THREADS, 0, cs>>>(cols, eps, (const float *)x, w, (float *)y, rstd);
    else
        k_rms_fwd<__nv_bfloat16>
            <<<rows, THREADS, 0, cs>>>(cols, eps, (const __nv_bfloat16 *)x, w, (__nv_bfloat16 *)y, rstd);
    LAUNCH_TRY("rmsnorm kernel");
    return DP_OK;
}

dp_status dp_cuda_rmsnorm_backward_input(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                         const void *x, const float *w, const float *rstd, const void *dy, void *dx)
{
    DP_CHECK(float_type(t, "rmsnorm_backward_input"));
    DP_CHECK(rms_sizes(rows, cols, "rmsnorm_backward_input"));
    if (rows == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_rms_bwd_in<float>
            <<<rows, THREADS, 0, cs>>>(cols, (const float *)x, w, rstd, (const float *)dy, (float *)dx);
    else
        k_rms_bwd_in<__nv_bfloat16><<<rows, THREADS, 0, cs>>>(cols, (const __nv_bfloat16 *)x, w, rstd,
                                                              (const __nv_bfloat16 *)dy, (__nv_bfloat16 *)dx);
    LAUNCH_TRY("rmsnorm backward kernel");
    return DP_OK;
}

dp_status dp_cuda_rmsnorm_backward_weight(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                          const void *x, const float *rstd, const void *dy, float *dw)
{
    DP_CHECK(float_type(t, "rmsnorm_backward_weight"));
    DP_CHECK(rms_sizes(rows, cols, "rmsnorm_backward_weight"));
    if (rows == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    int blocks = (cols + THREADS - 1) / THREADS;
    if (t == DP_DTYPE_F32)
        k_rms_bwd_w<float><<<blocks, THREADS, 0, cs>>>(rows, cols, (const float *)x, rstd, (const float *)dy, dw);
    else
        k_rms_bwd_w<__nv_bfloat16><<<blocks, THREADS, 0, cs>>>(rows, cols, (const __nv_bfloat16 *)x, rstd,
                                                               (const __nv_bfloat16 *)dy, dw);
    LAUNCH_TRY("rmsnorm weight-gradient kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * rows. Indices live on the device, so a negative one cannot be refused from the host:
 * gather writes NaN into that row, scatter skips it. */

template <typename T>
__global__ void k_gather(int cols, const T *src, const int32_t *index, T *dst)
{
    int idx = index[blockIdx.x];
    T *d = dst + (size_t)blockIdx.x * cols;
    const T *sr = src + (size_t)(idx < 0 ? 0 : idx) * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = idx < 0 ? quiet_nan<T>() : sr[c];
}

__global__ void k_gather_i32(int cols, const int32_t *src, const int32_t *index, int32_t *dst)
{
    int idx = index[blockIdx.x];
    int32_t *d = dst + (size_t)blockIdx.x * cols;
    const int32_t *sr = src + (size_t)(idx < 0 ? 0 : idx) * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = idx < 0 ? -1 : sr[c];
}

dp_status dp_cuda_gather_rows(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                              const int32_t *index, void *dst)
{
    if (rows < 0 || cols < 0) return dp_fail(DP_ERR_INVALID, "gather_rows: bad shape %d x %d", rows, cols);
    if (!dp_dtype_size(t)) return dp_fail(DP_ERR_INVALID, "gather_rows: unknown dtype %d", (int)t);
    if (rows == 0 || cols == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_gather<float><<<rows, THREADS, 0, cs>>>(cols, (const float *)src, index, (float *)dst);
    else if (t == DP_DTYPE_BF16)
        k_gather<__nv_bfloat16><<<rows, THREADS, 0, cs>>>(cols, (const __nv_bfloat16 *)src, index, (__nv_bfloat16 *)dst);
    else
        k_gather_i32<<<rows, THREADS, 0, cs>>>(cols, (const int32_t *)src, index, (int32_t *)dst);
    LAUNCH_TRY("gather kernel");
    return DP_OK;
}

/* One thread per column walks the source rows in order, so that several rows landing on
 * one destination add in increasing i, as the interface promises. */
template <typename T>
__global__ void k_scatter_add(int rows, int cols, const T *src, const int32_t *index, T *dst)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    for (int i = 0; i < rows; i++) {
        int idx = index[i];
        if (idx < 0) continue;
        size_t o = (size_t)idx * cols + c;
        dst[o] = st<T>(ld(dst[o]) + ld(src[(size_t)i * cols + c]));
    }
}

dp_status dp_cuda_scatter_add_rows(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                                   const int32_t *index, void *dst)
{
    DP_CHECK(float_type(t, "scatter_add_rows"));
    if (rows < 0 || cols < 0) return dp_fail(DP_ERR_INVALID, "scatter_add_rows: bad shape %d x %d", rows, cols);
    if (rows == 0 || cols == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    int blocks = (cols + THREADS - 1) / THREADS;
    if (t == DP_DTYPE_F32)
        k_scatter_add<float><<<blocks, THREADS, 0, cs>>>(rows, cols, (const float *)src, index, (float *)dst);
    else
        k_scatter_add<__nv_bfloat16>
            <<<blocks, THREADS, 0, cs>>>(rows, cols, (const __nv_bfloat16 *)src, index, (__nv_bfloat16 *)dst);
    LAUNCH_TRY("scatter kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * optimizers: the CPU's expressions term for term (no fused multiply-add), so equal bits */

__global__ void k_sgd(size_t n, float *param, const float *grad, float *mom, float lr, float mu, float wd)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        float g = grad[i] + wd * param[i];
        if (mu != 0.0f) {
            mom[i] = mu * mom[i] + g;
            g = mom[i];
        }
        param[i] -= lr * g;
    }
}

dp_status dp_cuda_sgd_update(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad,
                             float *momentum_buf, const dp_sgd_args *a)
{
    if (a->momentum != 0.0f && !momentum_buf)
        return dp_fail(DP_ERR_INVALID, "sgd_update: momentum %g needs a momentum buffer", (double)a->momentum);
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    k_sgd<<<grid_for(dev, n), THREADS, 0, dp_cuda_stream(dev, s)->s>>>(n, param, grad, momentum_buf, a->lr,
                                                                         a->momentum, a->weight_decay);
    LAUNCH_TRY("sgd kernel");
    return DP_OK;
}

__global__ void k_adamw(size_t n, float *param, const float *grad, float *m, float *v, float lr, float b1, float b2,
                        float eps, float decay, float bc1, float bc2)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x) {
        float g = grad[i];
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        float p = param[i] * decay;
        param[i] = p - lr * (m[i] / bc1) / (sqrtf(v[i] / bc2) + eps);
    }
}

dp_status dp_cuda_adamw_update(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *m,
                               float *v, const dp_adamw_args *a)
{
    if (a->step < 1) return dp_fail(DP_ERR_INVALID, "adamw_update: step must start at 1, got %d", a->step);
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    /* the bias corrections and the decay factor on the host, as the CPU driver computes them */
    float bc1 = 1.0f - powf(a->beta1, (float)a->step);
    float bc2 = 1.0f - powf(a->beta2, (float)a->step);
    float decay = 1.0f - a->lr * a->weight_decay;
    k_adamw<<<grid_for(dev, n), THREADS, 0, dp_cuda_stream(dev, s)->s>>>(n, param, grad, m, v, a->lr, a->beta1,
                                                                           a->beta2, a->eps, decay, bc1, bc2);
    LAUNCH_TRY("adamw kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the kernel table (GEMM is in cuda_device.cu, the runtime table too) */

extern "C" {
constexpr dp_device_kernel_ops dp_cuda_kernel_ops = {
    .abi_version = DP_DEVICE_KERNEL_ABI_VERSION,
    .struct_size = (uint32_t)sizeof(dp_device_kernel_ops),
    .gemm = dp_cuda_gemm,
    .fill = dp_cuda_fill,
    .cast = dp_cuda_cast,
    .add = dp_cuda_add,
    .scale = dp_cuda_scale,
    .gelu_forward = dp_cuda_gelu_forward,
    .gelu_backward = dp_cuda_gelu_backward,
    .rmsnorm_forward = dp_cuda_rmsnorm_forward,
    .rmsnorm_backward_input = dp_cuda_rmsnorm_backward_input,
    .rmsnorm_backward_weight = dp_cuda_rmsnorm_backward_weight,
    .mse_forward = dp_cuda_mse_forward,
    .mse_backward = dp_cuda_mse_backward,
    .xent_forward = dp_cuda_xent_forward,
    .xent_backward = dp_cuda_xent_backward,
    .gather_rows = dp_cuda_gather_rows,
    .scatter_add_rows = dp_cuda_scatter_add_rows,
    .sgd_update = dp_cuda_sgd_update,
    .adamw_update = dp_cuda_adamw_update,
    .sum_squares = dp_cuda_sum_squares,
    .sigmoid_forward = dp_cuda_sigmoid_forward,
    .moe_topk = dp_cuda_moe_topk,
    .moe_topk_backward = dp_cuda_moe_topk_backward,
    .moe_permute = dp_cuda_moe_permute,
    .moe_combine = dp_cuda_moe_combine,
    .moe_combine_backward = dp_cuda_moe_combine_backward,
    .swiglu_forward = dp_cuda_swiglu_forward,
    .swiglu_backward = dp_cuda_swiglu_backward,
    .moe_bias_update = dp_cuda_moe_bias_update,
    .add_counts = dp_cuda_add_counts,
};
}
DP_DEVICE_KERNEL_OPS(DP_CUDA_ASSERT_SET_KERNEL_)
