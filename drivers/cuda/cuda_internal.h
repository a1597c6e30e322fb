/* cuda_internal.h: what the CUDA driver's files share: the device, stream and event structs,
 * the conversion of CUDA, cuBLAS and NCCL errors into dp_status, and the kernel entry points.
 * Compiled by nvcc, and by hipcc for the HIP driver (drivers/cuda/gpu_compat.h maps the CUDA
 * names); the engine sees nothing of it. */
#ifndef DP_CUDA_INTERNAL_H
#define DP_CUDA_INTERNAL_H

#include "drivers/cuda/gpu_compat.h"
#include "engine/device.h"
#include "engine/driver.h"
#include "engine/link.h"

/* Each stream owns a cuBLAS handle (so that two streams of one rank never share a cuBLAS
 * workspace) and a scratch buffer for reductions that must be summed in a fixed order. */
struct dp_stream {
    cudaStream_t s;
    cublasHandle_t blas;
    void *scratch; /* device memory */
    size_t scratch_bytes;
};

struct dp_event {
    cudaEvent_t e;
};

struct dp_device {
    int ordinal;
    int rank;
    uint32_t flags;
    int sm_count;
    dp_stream default_stream; /* used where a call passes a NULL stream */
    void *stage[2];           /* pinned staging for copies from pageable host memory */
    cudaEvent_t stage_done[2];
};

extern "C" {
#if !DP_GPU_DEVICE_PASS /* host-side tables (gpu_compat.h says why the device pass must not see these) */
extern const dp_device_runtime_ops dp_cuda_runtime_ops; /* cuda_device.cu */
extern const dp_device_kernel_ops dp_cuda_kernel_ops;   /* cuda_kernels.cu */
extern const dp_link_ops dp_cuda_link_ops;
#endif
/* Why this driver cannot run here (no device, no driver), or DP_OK. */
dp_status dp_cuda_available(void);
}

/* The device tables are constexpr, so that the compiler refuses one that leaves a member unset
 * (a member this driver cannot do points at its dp_unsupported_NAME stub instead). */
template <typename F> constexpr bool dp_cuda_member_set(F f) { return f != nullptr; }
#define DP_CUDA_ASSERT_SET_RUNTIME_(name, params) \
    static_assert(dp_cuda_member_set(dp_cuda_runtime_ops.name), "the cuda runtime table leaves " #name " unset");
#define DP_CUDA_ASSERT_SET_KERNEL_(name, params) \
    static_assert(dp_cuda_member_set(dp_cuda_kernel_ops.name), "the cuda kernel table leaves " #name " unset");

/* ----------------------------------------------------------------------------
 * errors: CUDA, cuBLAS and NCCL codes become dp_status with a message naming the call */

dp_status dp_cuda_fail(cudaError_t e, const char *what, const char *file, int line);
dp_status dp_cublas_fail(cublasStatus_t e, const char *what, const char *file, int line);

#define CUDA_TRY(call)                                                            \
    do {                                                                          \
        cudaError_t cuda_try_e_ = (call);                                         \
        if (cuda_try_e_ != cudaSuccess)                                           \
            return dp_cuda_fail(cuda_try_e_, #call, __FILE__, __LINE__);          \
    } while (0)

#define CUBLAS_TRY(call)                                                          \
    do {                                                                          \
        cublasStatus_t cublas_try_e_ = (call);                                    \
        if (cublas_try_e_ != CUBLAS_STATUS_SUCCESS)                               \
            return dp_cublas_fail(cublas_try_e_, #call, __FILE__, __LINE__);      \
    } while (0)

/* A kernel launch: checks the launch itself (bad configuration); faults surface later. */
#define LAUNCH_TRY(what)                                                          \
    do {                                                                          \
        cudaError_t launch_e_ = cudaGetLastError();                               \
        if (launch_e_ != cudaSuccess) return dp_cuda_fail(launch_e_, what, __FILE__, __LINE__); \
    } while (0)

/* The device's CUDA context becomes current on the calling thread (rank threads may run on
 * any host thread, and one thread may drive several devices in tests). */
dp_status dp_cuda_enter(dp_device *dev);

/* The stream to use for a call's NULL stream. */
static inline dp_stream *dp_cuda_stream(dp_device *dev, dp_stream *s) { return s ? s : &dev->default_stream; }

/* Grows a stream's scratch to at least `bytes` (waits for the stream before freeing the old). */
dp_status dp_cuda_scratch(dp_stream *s, size_t bytes, void **out);

dp_status dp_cuda_stream_init(dp_device *dev, dp_stream *s);
void dp_cuda_stream_fini(dp_stream *s);

/* Host to device through pinned staging filled by several threads, in cuda_staging.cu. */
dp_status dp_cuda_copy_from_host(dp_device *dev, dp_stream *st, void *dst, const void *src, size_t bytes);
void dp_cuda_staging_fini(dp_device *dev);

/* GEMM (cuBLAS), in cuda_device.cu. */
dp_status dp_cuda_gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g);

/* Kernels other than GEMM, in cuda_kernels.cu (kernel table members, in its order). */
dp_status dp_cuda_fill(dp_device *, dp_stream *, dp_dtype, size_t, float, void *);
dp_status dp_cuda_cast(dp_device *, dp_stream *, size_t, dp_dtype, const void *, dp_dtype, void *);
dp_status dp_cuda_add(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *, void *);
dp_status dp_cuda_scale(dp_device *, dp_stream *, dp_dtype, size_t, float, void *);
dp_status dp_cuda_gelu_forward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, void *);
dp_status dp_cuda_gelu_backward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *, void *);
dp_status dp_cuda_rmsnorm_forward(dp_device *, dp_stream *, dp_dtype, int, int, float, const void *, const float *,
                                  void *, float *);
dp_status dp_cuda_rmsnorm_backward_input(dp_device *, dp_stream *, dp_dtype, int, int, const void *, const float *,
                                         const float *, const void *, void *);
dp_status dp_cuda_rmsnorm_backward_weight(dp_device *, dp_stream *, dp_dtype, int, int, const void *, const float *,
                                          const void *, float *);
dp_status dp_cuda_mse_forward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *, float *);
dp_status dp_cuda_mse_backward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *, float, void *);
dp_status dp_cuda_xent_forward(dp_device *, dp_stream *, dp_dtype, int, int, const void *, const int32_t *, float *);
dp_status dp_cuda_xent_backward(dp_device *, dp_stream *, dp_dtype, int, int, const void *, const int32_t *, float,
                                void *);
dp_status dp_cuda_gather_rows(dp_device *, dp_stream *, dp_dtype, int, int, const void *, const int32_t *, void *);
dp_status dp_cuda_scatter_add_rows(dp_device *, dp_stream *, dp_dtype, int, int, const void *, const int32_t *,
                                   void *);
dp_status dp_cuda_sgd_update(dp_device *, dp_stream *, size_t, float *, const float *, float *, const dp_sgd_args *);
dp_status dp_cuda_adamw_update(dp_device *, dp_stream *, size_t, float *, const float *, float *, float *,
                               const dp_adamw_args *);
dp_status dp_cuda_sum_squares(dp_device *, dp_stream *, dp_dtype, size_t, const void *, float *);
/* Mixture-of-experts kernels, in cuda_moe.cu (kernel table members). */
dp_status dp_cuda_sigmoid_forward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, void *);
dp_status dp_cuda_moe_topk(dp_device *, dp_stream *, int, int, int, int, int, const float *, const float *, float,
                           int32_t *, float *);
dp_status dp_cuda_moe_topk_backward(dp_device *, dp_stream *, int, int, int, const float *, const int32_t *,
                                    const float *, float, float *);
dp_status dp_cuda_moe_permute(dp_device *, dp_stream *, int, int, int, const int32_t *, int32_t *, int32_t *,
                              int32_t *);
dp_status dp_cuda_moe_combine(dp_device *, dp_stream *, dp_dtype, int, int, int, const void *, const int32_t *,
                              const float *, int, void *);
dp_status dp_cuda_moe_combine_backward(dp_device *, dp_stream *, dp_dtype, int, int, int, const void *,
                                       const int32_t *, const float *, const void *, void *, float *);
dp_status dp_cuda_swiglu_forward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *, void *);
dp_status dp_cuda_swiglu_backward(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *,
                                  const void *, void *, void *);
dp_status dp_cuda_moe_bias_update(dp_device *, dp_stream *, int, const float *, float, float *);
dp_status dp_cuda_add_counts(dp_device *, dp_stream *, size_t, const int32_t *, float *);
/* y = max(a, b), element-wise: the link's MAX reduction on one device. */
dp_status dp_cuda_max(dp_device *, dp_stream *, dp_dtype, size_t, const void *, const void *, void *);

#endif
