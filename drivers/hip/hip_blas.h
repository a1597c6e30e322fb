/* hip_blas.h: the GEMM the shared driver sources call as cuBLAS, on hipBLAS. hip_blas.cu calls
 * hipBLAS directly where configure found it, or loads libhipblas.so at run time and says which
 * library is missing when it cannot; either way the sources see these names only. HIP builds
 * only (drivers/cuda/gpu_compat.h includes it). */
#ifndef DP_HIP_BLAS_H
#define DP_HIP_BLAS_H

#include <hip/hip_runtime.h>

typedef struct dp_hipblas *dp_hipblas_handle;

/* hipblasStatus_t's values, and one of our own for "the library could not be loaded". */
typedef enum {
    DP_HIPBLAS_STATUS_SUCCESS = 0,
    DP_HIPBLAS_STATUS_NOT_INITIALIZED = 1,
    DP_HIPBLAS_STATUS_ALLOC_FAILED = 2,
    DP_HIPBLAS_STATUS_INVALID_VALUE = 3,
    DP_HIPBLAS_STATUS_NOT_SUPPORTED = 7,
    DP_HIPBLAS_STATUS_LIBRARY_MISSING = 1000,
} dp_hipblas_status;

typedef enum { DP_HIPBLAS_OP_N, DP_HIPBLAS_OP_T } dp_hipblas_op;
typedef enum { DP_HIPBLAS_COMPUTE_32F, DP_HIPBLAS_COMPUTE_32F_FAST_TF32 } dp_hipblas_compute;
typedef enum { DP_HIPBLAS_DEFAULT_MATH, DP_HIPBLAS_TF32_MATH } dp_hipblas_math;
typedef enum { DP_HIPBLAS_R_32F, DP_HIPBLAS_R_16BF } dp_hipblas_type;

/* C linkage: tests/test_hip_loaders.c calls them from C. */
extern "C" {
dp_hipblas_status dp_hipblas_create(dp_hipblas_handle *h);
dp_hipblas_status dp_hipblas_destroy(dp_hipblas_handle h);
dp_hipblas_status dp_hipblas_set_stream(dp_hipblas_handle h, hipStream_t s);
/* TF32 is an NVIDIA format: fp32 GEMMs stay fp32 on AMD whatever is asked. */
dp_hipblas_status dp_hipblas_set_math_mode(dp_hipblas_handle h, dp_hipblas_math m);
/* Column-major C = alpha op(A) op(B) + beta C, fp32 accumulation (cublasGemmEx's arguments). */
dp_hipblas_status dp_hipblas_gemm_ex(dp_hipblas_handle h, dp_hipblas_op op_a, dp_hipblas_op op_b, int m, int n, int k,
                                     const float *alpha, const void *a, dp_hipblas_type a_type, int lda, const void *b,
                                     dp_hipblas_type b_type, int ldb, const float *beta, void *c,
                                     dp_hipblas_type c_type, int ldc, dp_hipblas_compute compute, int algo);
/* What went wrong, the missing library named when it is that. */
const char *dp_hipblas_status_string(dp_hipblas_status s);
const char *dp_hipblas_status_name(dp_hipblas_status s);
}

/* cuBLAS's names in the shared sources */
#define cublasHandle_t dp_hipblas_handle
#define cublasStatus_t dp_hipblas_status
#define CUBLAS_STATUS_SUCCESS DP_HIPBLAS_STATUS_SUCCESS
#define CUBLAS_STATUS_ALLOC_FAILED DP_HIPBLAS_STATUS_ALLOC_FAILED
#define CUBLAS_STATUS_INVALID_VALUE DP_HIPBLAS_STATUS_INVALID_VALUE
#define CUBLAS_STATUS_NOT_SUPPORTED DP_HIPBLAS_STATUS_NOT_SUPPORTED
#define cublasCreate dp_hipblas_create
#define cublasDestroy dp_hipblas_destroy
#define cublasSetStream dp_hipblas_set_stream
#define cublasSetMathMode dp_hipblas_set_math_mode
#define CUBLAS_DEFAULT_MATH DP_HIPBLAS_DEFAULT_MATH
#define CUBLAS_TF32_TENSOR_OP_MATH DP_HIPBLAS_TF32_MATH
#define cublasGetStatusString dp_hipblas_status_string
#define cublasGetStatusName dp_hipblas_status_name
#define cublasComputeType_t dp_hipblas_compute
#define CUBLAS_COMPUTE_32F DP_HIPBLAS_COMPUTE_32F
#define CUBLAS_COMPUTE_32F_FAST_TF32 DP_HIPBLAS_COMPUTE_32F_FAST_TF32
#define cublasGemmEx dp_hipblas_gemm_ex
#define CUBLAS_OP_N DP_HIPBLAS_OP_N
#define CUBLAS_OP_T DP_HIPBLAS_OP_T
#define CUBLAS_GEMM_DEFAULT 0
#define cudaDataType_t dp_hipblas_type
#define CUDA_R_32F DP_HIPBLAS_R_32F
#define CUDA_R_16BF DP_HIPBLAS_R_16BF

#endif
