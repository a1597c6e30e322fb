/* cuda_device.cu: the CUDA driver's devices, memory, streams, events and GEMM (cuBLAS),
 * and its runtime table. fp32 GEMMs are true fp32 (TF32 only when the
 * device was opened with DP_DEVICE_ALLOW_TF32); bf16 GEMMs accumulate in fp32. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drivers/cuda/cuda_internal.h"

/* ----------------------------------------------------------------------------
 * errors */

dp_status dp_cuda_fail(cudaError_t e, const char *what, const char *file, int line)
{
    dp_status st = e == cudaErrorMemoryAllocation ? DP_ERR_NOMEM : DP_ERR_DEVICE;
    cudaGetLastError(); /* clear a non-sticky error so that the next call does not see it */
    return dp_fail(st, "cuda driver: %s failed: %s (%s) at %s:%d", what, cudaGetErrorString(e), cudaGetErrorName(e),
                   file, line);
}

dp_status dp_cublas_fail(cublasStatus_t e, const char *what, const char *file, int line)
{
    dp_status st = e == CUBLAS_STATUS_ALLOC_FAILED           ? DP_ERR_NOMEM
                   : e == CUBLAS_STATUS_NOT_SUPPORTED        ? DP_ERR_UNSUPPORTED
                   : e == CUBLAS_STATUS_INVALID_VALUE        ? DP_ERR_INVALID
                                                             : DP_ERR_DEVICE;
    return dp_fail(st, "cuda driver: %s failed: %s (%s) at %s:%d", what, cublasGetStatusString(e),
                   cublasGetStatusName(e), file, line);
}

dp_status dp_cuda_available(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return dp_fail(DP_ERR_NOT_FOUND, "no " DP_GPU_PLATFORM " device: %s (%s); " DP_GPU_DEVICE_HINT,
                       cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (n == 0)
        return dp_fail(DP_ERR_NOT_FOUND,
                       "no " DP_GPU_PLATFORM " device: the " DP_GPU_PLATFORM " runtime sees none (" DP_GPU_VISIBLE_ENV "?)");
    return DP_OK;
}

dp_status dp_cuda_enter(dp_device *dev)
{
    CUDA_TRY(cudaSetDevice(dev->ordinal));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * streams (each with its own cuBLAS handle and scratch) */

dp_status dp_cuda_stream_init(dp_device *dev, dp_stream *s)
{
    memset(s, 0, sizeof *s);
    CUDA_TRY(cudaStreamCreateWithFlags(&s->s, cudaStreamNonBlocking));
    cublasStatus_t b = cublasCreate(&s->blas);
    if (b != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(s->s);
        return dp_cublas_fail(b, "cublasCreate", __FILE__, __LINE__);
    }
    CUBLAS_TRY(cublasSetStream(s->blas, s->s));
    /* TF32 only when asked; the compute type passed to each GEMM decides, this keeps the
     * handle's own default from ever choosing it */
    CUBLAS_TRY(cublasSetMathMode(s->blas, (dev->flags & DP_DEVICE_ALLOW_TF32) ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                             : CUBLAS_DEFAULT_MATH));
    return DP_OK;
}

void dp_cuda_stream_fini(dp_stream *s)
{
    if (s->s) cudaStreamSynchronize(s->s);
    if (s->blas) cublasDestroy(s->blas);
    if (s->scratch) cudaFree(s->scratch);
    if (s->s) cudaStreamDestroy(s->s);
    memset(s, 0, sizeof *s);
}

dp_status dp_cuda_scratch(dp_stream *s, size_t bytes, void **out)
{
    if (bytes > s->scratch_bytes) {
        size_t want = bytes < 4096 ? 4096 : bytes + bytes / 2;
        if (s->scratch) {
            CUDA_TRY(cudaStreamSynchronize(s->s));
            CUDA_TRY(cudaFree(s->scratch));
            s->scratch = NULL;
            s->scratch_bytes = 0;
        }
        CUDA_TRY(cudaMalloc(&s->scratch, want));
        s->scratch_bytes = want;
    }
    *out = s->scratch;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * devices */

static dp_status cuda_device_count(int *count)
{
    *count = 0;
    cudaError_t e = cudaGetDeviceCount(count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        *count = 0;
        return DP_OK;
    }
    CUDA_TRY(e);
    return DP_OK;
}

static dp_status cuda_open(const dp_device_config *cfg, dp_device **out)
{
    *out = NULL;
    int count = 0;
    DP_CHECK(dp_cuda_available());
    DP_CHECK(cuda_device_count(&count));
    /* placement is the runtime's (dp_runtime_config.spread_devices): open what is asked */
    int ordinal = cfg ? cfg->ordinal : 0;
    if (ordinal < 0 || ordinal >= count)
        return dp_fail(DP_ERR_INVALID, "cuda driver: device %d does not exist (this machine has %d CUDA device%s)",
                       ordinal, count, count == 1 ? "" : "s");
    dp_device *dev = (dp_device *)calloc(1, sizeof *dev);
    if (!dev) return dp_fail(DP_ERR_NOMEM, "cuda driver: out of host memory opening device %d", ordinal);
    dev->ordinal = ordinal;
    dev->rank = cfg ? cfg->rank : 0;
    dev->flags = cfg ? cfg->flags : 0;
    dp_status st = dp_cuda_enter(dev);
    if (st == DP_OK) {
        cudaError_t e = cudaDeviceGetAttribute(&dev->sm_count, cudaDevAttrMultiProcessorCount, ordinal);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaDeviceGetAttribute", __FILE__, __LINE__);
    }
    if (st == DP_OK) st = dp_cuda_stream_init(dev, &dev->default_stream);
    if (st != DP_OK) {
        free(dev);
        return st;
    }
    *out = dev;
    return DP_OK;
}

static dp_status cuda_close(dp_device *dev)
{
    if (!dev) return DP_OK;
    cudaSetDevice(dev->ordinal);
    dp_cuda_staging_fini(dev);
    dp_cuda_stream_fini(&dev->default_stream);
    free(dev);
    return DP_OK;
}

static dp_status cuda_info(dp_device *dev, dp_device_info *out)
{
    memset(out, 0, sizeof *out);
    cudaDeviceProp p;
    CUDA_TRY(cudaGetDeviceProperties(&p, dev->ordinal));
    /* cudaDeviceProp's name has room for 256 bytes, ours for 128: the bound on the name keeps the
     * device, architecture and SM count in (real names are under 40 characters). */
    snprintf(out->name, sizeof out->name, "%.60s (device %d, sm_%d%d, %d SMs)", p.name, dev->ordinal, p.major,
             p.minor, p.multiProcessorCount);
    out->total_memory = p.totalGlobalMem;
    out->supports_bf16 = 1;
    out->concurrent_streams = 1;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * memory */

static dp_status cuda_alloc(dp_device *dev, size_t bytes, void **ptr)
{
    *ptr = NULL;
    DP_CHECK(dp_cuda_enter(dev));
    cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 64);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return dp_fail(DP_ERR_NOMEM, "cuda driver: out of memory on device %d allocating %zu bytes (%zu of %zu free); "
                                     "use fewer tokens per micro-batch or a smaller model",
                       dev->ordinal, bytes, free_b, total_b);
    }
    CUDA_TRY(e);
    return DP_OK;
}

static dp_status cuda_free(dp_device *dev, void *ptr)
{
    if (!ptr) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaFree(ptr));
    return DP_OK;
}

/* Copies to the host finish before the call returns, as on the CPU driver, so the engine may
 * read host memory at once; copies from the host have taken the data when the call returns
 * (the host buffer may be reused); all are ordered on the stream. */
static dp_status cuda_copy(dp_device *dev, void *dst, const void *src, size_t bytes, dp_copy_kind kind,
                           dp_stream *s)
{
    if (bytes == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    dp_stream *st = dp_cuda_stream(dev, s);
    cudaMemcpyKind k = kind == DP_COPY_HOST_TO_DEVICE   ? cudaMemcpyHostToDevice
                       : kind == DP_COPY_DEVICE_TO_HOST ? cudaMemcpyDeviceToHost
                       : kind == DP_COPY_DEVICE_TO_DEVICE ? cudaMemcpyDeviceToDevice
                                                          : cudaMemcpyDefault;
    if (k == cudaMemcpyDefault) return dp_fail(DP_ERR_INVALID, "cuda driver: unknown copy kind %d", (int)kind);
    if (kind == DP_COPY_HOST_TO_DEVICE) return dp_cuda_copy_from_host(dev, st, dst, src, bytes);
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, k, st->s));
    if (kind == DP_COPY_DEVICE_TO_HOST) CUDA_TRY(cudaStreamSynchronize(st->s));
    return DP_OK;
}

static dp_status cuda_memset(dp_device *dev, void *dst, int byte, size_t bytes, dp_stream *s)
{
    if (bytes == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaMemsetAsync(dst, byte, bytes, dp_cuda_stream(dev, s)->s));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * streams and events */

static dp_status cuda_stream_create(dp_device *dev, dp_stream **out)
{
    *out = NULL;
    DP_CHECK(dp_cuda_enter(dev));
    dp_stream *s = (dp_stream *)calloc(1, sizeof *s);
    if (!s) return dp_fail(DP_ERR_NOMEM, "cuda driver: out of host memory creating a stream");
    dp_status st = dp_cuda_stream_init(dev, s);
    if (st != DP_OK) {
        free(s);
        return st;
    }
    *out = s;
    return DP_OK;
}

static dp_status cuda_stream_destroy(dp_device *dev, dp_stream *s)
{
    if (!s || s == &dev->default_stream) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    dp_cuda_stream_fini(s);
    free(s);
    return DP_OK;
}

static dp_status cuda_stream_synchronize(dp_device *dev, dp_stream *s)
{
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaStreamSynchronize(dp_cuda_stream(dev, s)->s));
    return DP_OK;
}

static dp_status cuda_event_create(dp_device *dev, dp_event **out)
{
    *out = NULL;
    DP_CHECK(dp_cuda_enter(dev));
    dp_event *e = (dp_event *)calloc(1, sizeof *e);
    if (!e) return dp_fail(DP_ERR_NOMEM, "cuda driver: out of host memory creating an event");
    cudaError_t ce = cudaEventCreate(&e->e);
    if (ce != cudaSuccess) {
        free(e);
        return dp_cuda_fail(ce, "cudaEventCreate", __FILE__, __LINE__);
    }
    *out = e;
    return DP_OK;
}

static dp_status cuda_event_destroy(dp_device *dev, dp_event *e)
{
    if (!e) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    cudaEventDestroy(e->e);
    free(e);
    return DP_OK;
}

static dp_status cuda_event_record(dp_device *dev, dp_event *e, dp_stream *s)
{
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaEventRecord(e->e, dp_cuda_stream(dev, s)->s));
    return DP_OK;
}

static dp_status cuda_stream_wait_event(dp_device *dev, dp_stream *s, dp_event *e)
{
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaStreamWaitEvent(dp_cuda_stream(dev, s)->s, e->e, 0));
    return DP_OK;
}

static dp_status cuda_event_query(dp_device *dev, dp_event *e, int *done)
{
    DP_CHECK(dp_cuda_enter(dev));
    cudaError_t ce = cudaEventQuery(e->e);
    if (ce == cudaErrorNotReady) {
        *done = 0;
        return DP_OK;
    }
    CUDA_TRY(ce);
    *done = 1;
    return DP_OK;
}

static dp_status cuda_event_synchronize(dp_device *dev, dp_event *e)
{
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaEventSynchronize(e->e));
    return DP_OK;
}

static dp_status cuda_event_elapsed(dp_device *dev, dp_event *start, dp_event *end, float *ms)
{
    DP_CHECK(dp_cuda_enter(dev));
    CUDA_TRY(cudaEventElapsedTime(ms, start->e, end->e));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * GEMM. The interface is row-major; cuBLAS is column-major. A row-major matrix read as
 * column-major is its transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T:
 * cuBLAS gets B first, then A, with the same transpose flags and the sizes n, m, k. */

static cudaDataType_t cuda_type(dp_dtype t)
{
    return t == DP_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

dp_status dp_cuda_gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g)
{
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return dp_fail(DP_ERR_INVALID, "gemm: negative size (m %d, n %d, k %d)", g->m, g->n, g->k);
    if (g->m == 0 || g->n == 0) return DP_OK;
    int a_cols = g->trans_a ? g->m : g->k, b_cols = g->trans_b ? g->k : g->n;
    if (g->lda < (a_cols > 1 ? a_cols : 1) || g->ldb < (b_cols > 1 ? b_cols : 1) || g->ldc < (g->n > 1 ? g->n : 1))
        return dp_fail(DP_ERR_INVALID, "gemm: row strides too small (lda %d for %d columns, ldb %d for %d, ldc %d for %d)",
                       g->lda, a_cols, g->ldb, b_cols, g->ldc, g->n);
    int ab_f32 = g->a_type == DP_DTYPE_F32 && g->b_type == DP_DTYPE_F32;
    int ab_bf16 = g->a_type == DP_DTYPE_BF16 && g->b_type == DP_DTYPE_BF16;
    int c_ok = g->c_type == DP_DTYPE_F32 || (ab_bf16 && g->c_type == DP_DTYPE_BF16);
    if (!(ab_f32 || ab_bf16) || !c_ok)
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cuda driver: gemm with A dtype %d, B dtype %d, C dtype %d is not supported "
                       "(use fp32 x fp32 -> fp32, or bf16 x bf16 -> bf16 or fp32)",
                       (int)g->a_type, (int)g->b_type, (int)g->c_type);
    DP_CHECK(dp_cuda_enter(dev));
    dp_stream *st = dp_cuda_stream(dev, s);
    cublasComputeType_t compute =
        ab_f32 && (dev->flags & DP_DEVICE_ALLOW_TF32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CUBLAS_TRY(cublasGemmEx(st->blas, g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                            g->n, g->m, g->k, &g->alpha, g->b, cuda_type(g->b_type), g->ldb, g->a,
                            cuda_type(g->a_type), g->lda, &g->beta, g->c, cuda_type(g->c_type), g->ldc, compute,
                            CUBLAS_GEMM_DEFAULT));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the runtime table (the kernel table is in cuda_kernels.cu, the driver in cuda_module.c) */

extern "C" {
constexpr dp_device_runtime_ops dp_cuda_runtime_ops = {
    .abi_version = DP_DEVICE_RUNTIME_ABI_VERSION,
    .struct_size = (uint32_t)sizeof(dp_device_runtime_ops),
    .name = DP_GPU_DRIVER_NAME,
    .device_count = cuda_device_count,
    .open = cuda_open,
    .close = cuda_close,
    .info = cuda_info,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .copy = cuda_copy,
    .memset = cuda_memset,
    .stream_create = cuda_stream_create,
    .stream_destroy = cuda_stream_destroy,
    .stream_synchronize = cuda_stream_synchronize,
    .event_create = cuda_event_create,
    .event_destroy = cuda_event_destroy,
    .event_record = cuda_event_record,
    .stream_wait_event = cuda_stream_wait_event,
    .event_query = cuda_event_query,
    .event_synchronize = cuda_event_synchronize,
    .event_elapsed = cuda_event_elapsed,
};
}
DP_DEVICE_RUNTIME_OPS(DP_CUDA_ASSERT_SET_RUNTIME_)
