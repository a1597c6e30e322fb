/* cuda_moe.cu: the CUDA driver's mixture-of-experts kernels, each the GPU twin of the CPU
 * driver's loop in drivers/cpu/cpu_moe.c: the same expressions in the same order (built with
 * --fmad=false), so the router selects the same experts and the permutation, combine and bias
 * update give the CPU's bits; sigmoid and SwiGLU use CUDA's expf and track the CPU to a rounding.
 * Expert and row indices live on the device and cannot be checked from the host: a kernel skips
 * a slot whose index is out of range (combine writes NaN for it), and the tests compare every
 * element against the CPU driver. */
#include <math.h>
#include <stdint.h>

#include "drivers/cuda/cuda_internal.h"

#define THREADS 256
#define MAX_SHARED_BYTES (48 * 1024) /* without opting in to more */

__device__ __forceinline__ float ldv(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ldv(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void stv(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void stv(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

static dp_status float_type(dp_dtype t, const char *what)
{
    if (t == DP_DTYPE_F32 || t == DP_DTYPE_BF16) return DP_OK;
    return dp_fail(DP_ERR_UNSUPPORTED, "cuda driver: %s supports fp32 and bf16 tensors (dtype %d given)", what, (int)t);
}

static int blocks_for(dp_device *dev, size_t work)
{
    size_t blocks = (work + THREADS - 1) / THREADS;
    size_t cap = (size_t)(dev->sm_count > 0 ? dev->sm_count : 80) * 16;
    if (blocks > cap) blocks = cap;
    return blocks ? (int)blocks : 1;
}

#define GRID_STRIDE(i, n)                                                                                        \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)blockDim.x * gridDim.x)

/* ----------------------------------------------------------------------------
 * sigmoid and SwiGLU */

template <typename T> __global__ void k_sigmoid(size_t n, const T *x, T *y)
{
    GRID_STRIDE(i, n) stv(y, i, sigmoidf_(ldv(x, i)));
}

template <typename T> __global__ void k_swiglu(size_t n, const T *a, const T *b, T *y)
{
    GRID_STRIDE(i, n)
    {
        float av = ldv(a, i);
        stv(y, i, av * sigmoidf_(av) * ldv(b, i));
    }
}

/* reads a, b and dy before writing, so that da and db may alias dy */
template <typename T> __global__ void k_swiglu_back(size_t n, const T *a, const T *b, const T *dy, T *da, T *db)
{
    GRID_STRIDE(i, n)
    {
        float av = ldv(a, i), bv = ldv(b, i), g = ldv(dy, i);
        float sg = sigmoidf_(av);
        stv(da, i, g * bv * sg * (1.0f + av * (1.0f - sg)));
        stv(db, i, g * av * sg);
    }
}

dp_status dp_cuda_sigmoid_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y)
{
    DP_CHECK(float_type(t, "sigmoid_forward"));
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32) k_sigmoid<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, (const float *)x, (float *)y);
    else k_sigmoid<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, (const __nv_bfloat16 *)x, (__nv_bfloat16 *)y);
    LAUNCH_TRY("sigmoid kernel");
    return DP_OK;
}

dp_status dp_cuda_swiglu_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,
                                 void *y)
{
    DP_CHECK(float_type(t, "swiglu_forward"));
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_swiglu<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, (const float *)a, (const float *)b, (float *)y);
    else
        k_swiglu<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, (const __nv_bfloat16 *)a, (const __nv_bfloat16 *)b,
                                                         (__nv_bfloat16 *)y);
    LAUNCH_TRY("swiglu kernel");
    return DP_OK;
}

dp_status dp_cuda_swiglu_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,
                                  const void *dy, void *da, void *db)
{
    DP_CHECK(float_type(t, "swiglu_backward"));
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_swiglu_back<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, (const float *)a, (const float *)b,
                                                              (const float *)dy, (float *)da, (float *)db);
    else
        k_swiglu_back<<<blocks_for(dev, n), THREADS, 0, cs>>>(
            n, (const __nv_bfloat16 *)a, (const __nv_bfloat16 *)b, (const __nv_bfloat16 *)dy, (__nv_bfloat16 *)da,
            (__nv_bfloat16 *)db);
    LAUNCH_TRY("swiglu backward kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the gate: one block per token, its biased scores and flags in shared memory */

/* whether (a, ia) ranks before (b, ib): higher value, then lower index */
__device__ __forceinline__ int ranks_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

/* the index of the best of n values not yet taken (NaN ranks last), or -1 when all are */
__device__ int best_untaken(const float *v, const unsigned char *taken, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (best < 0 || isnan(v[best]) || (!isnan(v[i]) && ranks_before(v[i], i, v[best], best))) best = i;
    }
    return best;
}

__global__ void k_topk(int experts, int groups, int topk_groups, int topk, const float *scores, const float *bias,
                       float route_scale, int32_t *expert, float *weight)
{
    extern __shared__ float shared[];
    float *biased = shared, *gscore = shared + experts;
    unsigned char *taken = (unsigned char *)(gscore + groups), *gtaken = taken + experts;
    int t = blockIdx.x, gsize = experts / groups;
    const float *sc = scores + (size_t)t * experts;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) biased[e] = bias ? sc[e] + bias[e] : sc[e];
    __syncthreads();
    /* each group's score, a thread per group: its best biased score plus its second best */
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        const float *v = biased + (size_t)g * gsize;
        unsigned char *tk = taken + (size_t)g * gsize;
        for (int i = 0; i < gsize; i++) tk[i] = 0;
        int b0 = best_untaken(v, tk, gsize);
        gscore[g] = v[b0];
        if (gsize > 1) {
            tk[b0] = 1;
            gscore[g] = v[b0] + v[best_untaken(v, tk, gsize)];
        }
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    /* the kept groups: the others' experts are taken before the selection starts */
    for (int g = 0; g < groups; g++) gtaken[g] = 0;
    for (int e = 0; e < experts; e++) taken[e] = 1;
    for (int j = 0; j < topk_groups; j++) {
        int g = best_untaken(gscore, gtaken, groups);
        gtaken[g] = 1;
        for (int i = 0; i < gsize; i++) taken[(size_t)g * gsize + i] = 0;
    }
    float sum = 0.0f;
    int32_t *ex = expert + (size_t)t * topk;
    float *w = weight + (size_t)t * topk;
    for (int k = 0; k < topk; k++) {
        int e = best_untaken(biased, taken, experts);
        taken[e] = 1;
        ex[k] = e;
        sum += sc[e];
    }
    for (int k = 0; k < topk; k++) w[k] = sc[ex[k]] / sum * route_scale;
}

dp_status dp_cuda_moe_topk(dp_device *dev, dp_stream *s, int tokens, int experts, int groups, int topk_groups,
                           int topk, const float *scores, const float *bias, float route_scale, int32_t *expert,
                           float *weight)
{
    if (tokens < 0 || experts < 1 || groups < 1 || experts % groups || topk_groups < 1 || topk_groups > groups ||
        topk < 1 || topk > topk_groups * (experts / groups))
        return dp_fail(DP_ERR_INVALID,
                       "moe_topk: bad routing shape (tokens %d, experts %d in %d groups, %d groups kept, top %d): "
                       "experts must divide into the groups and the kept groups must hold at least top-k experts",
                       tokens, experts, groups, topk_groups, topk);
    size_t shared = (size_t)(experts + groups) * (sizeof(float) + 1);
    if (shared > MAX_SHARED_BYTES)
        return dp_fail(DP_ERR_UNSUPPORTED, "cuda driver: moe_topk handles at most %d experts (%d given)",
                       (int)(MAX_SHARED_BYTES / (sizeof(float) + 1)) - groups, experts);
    if (tokens == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    int threads = groups < 128 ? 128 : groups > 1024 ? 1024 : groups;
    k_topk<<<tokens, threads, shared, dp_cuda_stream(dev, s)->s>>>(experts, groups, topk_groups, topk, scores, bias,
                                                                    route_scale, expert, weight);
    LAUNCH_TRY("moe top-k kernel");
    return DP_OK;
}

/* one block per token: the row zeroed by all threads, the selected entries by thread 0 */
__global__ void k_topk_back(int experts, int topk, const float *scores, const int32_t *expert, const float *dweight,
                            float route_scale, float *dlogits)
{
    int t = blockIdx.x;
    float *dl = dlogits + (size_t)t * experts;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) dl[e] = 0.0f;
    __syncthreads();
    if (threadIdx.x != 0) return;
    const float *sc = scores + (size_t)t * experts;
    const int32_t *ex = expert + (size_t)t * topk;
    const float *dw = dweight + (size_t)t * topk;
    for (int k = 0; k < topk; k++)
        if (ex[k] < 0 || ex[k] >= experts) return; /* a bad index: the row stays zero */
    float sum = 0.0f, dot = 0.0f;
    for (int k = 0; k < topk; k++) sum += sc[ex[k]], dot += dw[k] * sc[ex[k]];
    for (int k = 0; k < topk; k++) {
        float sj = sc[ex[k]];
        float ds = route_scale * (dw[k] - dot / sum) / sum;
        dl[ex[k]] = ds * sj * (1.0f - sj);
    }
}

dp_status dp_cuda_moe_topk_backward(dp_device *dev, dp_stream *s, int tokens, int experts, int topk,
                                    const float *scores, const int32_t *expert, const float *dweight,
                                    float route_scale, float *dlogits)
{
    if (tokens < 0 || experts < 1 || topk < 1 || topk > experts)
        return dp_fail(DP_ERR_INVALID, "moe_topk_backward: bad shape (tokens %d, experts %d, top %d)", tokens, experts,
                       topk);
    if (tokens == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    k_topk_back<<<tokens, 128, 0, dp_cuda_stream(dev, s)->s>>>(experts, topk, scores, expert, dweight, route_scale,
                                                              dlogits);
    LAUNCH_TRY("moe top-k backward kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * dispatch layout: a stable counting sort in one block; each thread owns experts and walks
 * the slots in order (every thread reads the same slot at once, a broadcast), so rows within
 * an expert keep slot order as on the CPU. Slots naming no expert are left out. */

__global__ void k_permute(int n, int topk, int experts, const int32_t *expert, int32_t *row_token,
                          int32_t *slot_row, int32_t *counts)
{
    extern __shared__ int32_t at[];
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        int32_t c = 0;
        for (int i = 0; i < n; i++) c += expert[i] == e;
        counts[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t acc = 0;
        for (int e = 0; e < experts; e++) at[e] = acc, acc += counts[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        int32_t r = at[e];
        for (int i = 0; i < n; i++)
            if (expert[i] == e) {
                row_token[r] = i / topk;
                slot_row[i] = r++;
            }
    }
}

dp_status dp_cuda_moe_permute(dp_device *dev, dp_stream *s, int tokens, int topk, int experts, const int32_t *expert,
                              int32_t *row_token, int32_t *slot_row, int32_t *counts)
{
    if (tokens < 0 || topk < 1 || experts < 1 || (size_t)tokens * (size_t)topk > INT32_MAX)
        return dp_fail(DP_ERR_INVALID, "moe_permute: bad shape (tokens %d, top %d, experts %d)", tokens, topk, experts);
    size_t shared = sizeof(int32_t) * (size_t)experts;
    if (shared > MAX_SHARED_BYTES)
        return dp_fail(DP_ERR_UNSUPPORTED, "cuda driver: moe_permute handles at most %d experts (%d given)",
                       (int)(MAX_SHARED_BYTES / sizeof(int32_t)), experts);
    DP_CHECK(dp_cuda_enter(dev));
    int threads = experts < 1024 ? (experts + 31) / 32 * 32 : 1024;
    k_permute<<<1, threads, shared, dp_cuda_stream(dev, s)->s>>>(tokens * topk, topk, experts, expert, row_token,
                                                                 slot_row, counts);
    LAUNCH_TRY("moe permute kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * combine: a thread per output element adds its token's rows in k order */

template <typename T>
__global__ void k_combine(size_t n, int topk, int cols, const T *rows, const int32_t *slot_row, const float *weight,
                          int accumulate, T *y)
{
    GRID_STRIDE(yi, n)
    {
        size_t tk = yi / (size_t)cols, c = yi % (size_t)cols;
        float acc = accumulate ? ldv(y, yi) : 0.0f;
        for (int k = 0; k < topk; k++) {
            size_t i = tk * topk + k;
            int32_t r = slot_row[i];
            float v = r < 0 ? __int_as_float(0x7fc00000) : ldv(rows, (size_t)r * cols + c);
            acc += weight ? weight[i] * v : v;
        }
        stv(y, yi, acc);
    }
}

dp_status dp_cuda_moe_combine(dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols,
                              const void *rows, const int32_t *slot_row, const float *weight, int accumulate, void *y)
{
    DP_CHECK(float_type(t, "moe_combine"));
    if (tokens < 0 || topk < 1 || cols < 0)
        return dp_fail(DP_ERR_INVALID, "moe_combine: bad shape (tokens %d, top %d, columns %d)", tokens, topk, cols);
    size_t n = (size_t)tokens * (size_t)cols;
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_combine<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, topk, cols, (const float *)rows, slot_row, weight,
                                                          accumulate, (float *)y);
    else
        k_combine<<<blocks_for(dev, n), THREADS, 0, cs>>>(n, topk, cols, (const __nv_bfloat16 *)rows, slot_row, weight,
                                                          accumulate, (__nv_bfloat16 *)y);
    LAUNCH_TRY("moe combine kernel");
    return DP_OK;
}

/* a block per (token, k) slot: its threads write the row's gradient; thread 0 adds the dot
 * product in double, column by column, as the CPU does */
template <typename T>
__global__ void k_combine_back(int topk, int cols, const T *rows, const int32_t *slot_row, const float *weight,
                               const T *dy, T *drows, float *dweight)
{
    size_t i = blockIdx.x, d = (i / topk) * (size_t)cols;
    int32_t row = slot_row[i];
    if (row < 0) return;
    size_t r = (size_t)row * cols;
    float w = weight ? weight[i] : 1.0f;
    if (dweight && threadIdx.x == 0) {
        double dot = 0.0;
        for (int c = 0; c < cols; c++) dot += (double)ldv(dy, d + c) * ldv(rows, r + c);
        dweight[i] = (float)dot;
    }
    /* after the dot product: drows may be rows itself */
    __syncthreads();
    for (int c = threadIdx.x; c < cols; c += blockDim.x) stv(drows, r + c, w * ldv(dy, d + c));
}

dp_status dp_cuda_moe_combine_backward(dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols,
                                       const void *rows, const int32_t *slot_row, const float *weight, const void *dy,
                                       void *drows, float *dweight)
{
    DP_CHECK(float_type(t, "moe_combine_backward"));
    if (tokens < 0 || topk < 1 || cols < 0)
        return dp_fail(DP_ERR_INVALID, "moe_combine_backward: bad shape (tokens %d, top %d, columns %d)", tokens, topk,
                       cols);
    size_t slots = (size_t)tokens * (size_t)topk;
    if (slots == 0) return DP_OK;
    if (slots > INT32_MAX) return dp_fail(DP_ERR_UNSUPPORTED, "moe_combine_backward: %zu slots", slots);
    DP_CHECK(dp_cuda_enter(dev));
    cudaStream_t cs = dp_cuda_stream(dev, s)->s;
    if (t == DP_DTYPE_F32)
        k_combine_back<<<(unsigned)slots, 128, 0, cs>>>(topk, cols, (const float *)rows, slot_row, weight,
                                                        (const float *)dy, (float *)drows, dweight);
    else
        k_combine_back<<<(unsigned)slots, 128, 0, cs>>>(topk, cols, (const __nv_bfloat16 *)rows, slot_row, weight,
                                                        (const __nv_bfloat16 *)dy, (__nv_bfloat16 *)drows, dweight);
    LAUNCH_TRY("moe combine backward kernel");
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * balancing */

__global__ void k_bias_update(int experts, const float *load, float gamma, float *bias)
{
    __shared__ float mean;
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int e = 0; e < experts; e++) sum += load[e];
        mean = sum / (float)experts;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < experts; e += blockDim.x)
        bias[e] += mean > load[e] ? gamma : mean < load[e] ? -gamma : 0.0f;
}

dp_status dp_cuda_moe_bias_update(dp_device *dev, dp_stream *s, int experts, const float *load, float gamma,
                                  float *bias)
{
    if (experts < 1) return dp_fail(DP_ERR_INVALID, "moe_bias_update: %d experts", experts);
    DP_CHECK(dp_cuda_enter(dev));
    k_bias_update<<<1, 256, 0, dp_cuda_stream(dev, s)->s>>>(experts, load, gamma, bias);
    LAUNCH_TRY("moe bias update kernel");
    return DP_OK;
}

__global__ void k_add_counts(size_t n, const int32_t *x, float *y)
{
    GRID_STRIDE(i, n) y[i] += (float)x[i];
}

dp_status dp_cuda_add_counts(dp_device *dev, dp_stream *s, size_t n, const int32_t *x, float *y)
{
    if (n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    k_add_counts<<<blocks_for(dev, n), THREADS, 0, dp_cuda_stream(dev, s)->s>>>(n, x, y);
    LAUNCH_TRY("add counts kernel");
    return DP_OK;
}
