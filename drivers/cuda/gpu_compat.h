/* gpu_compat.h: lets one source be the CUDA driver under nvcc and the HIP driver under hipcc.
 * The driver's files are written in CUDA's spelling; under nvcc this header only includes the
 * CUDA, cuBLAS and NCCL headers. Under hipcc (DP_GPU_HIP) it maps each CUDA name the files
 * use onto HIP's, cuBLAS onto drivers/hip/hip_blas.h (hipBLAS, linked or loaded at run time),
 * NCCL onto RCCL (same names), and supplies bf16 and the few CUDA types HIP lacks. A CUDA name
 * newly used in drivers/cuda needs its line here (the HIP build fails until it has one). */
#ifndef DP_GPU_COMPAT_H
#define DP_GPU_COMPAT_H

#ifndef DP_GPU_HIP
/* ============================================================================
 * CUDA: the headers themselves, nothing renamed */
#include <cublas_v2.h>
#include <cuda.h> /* the driver API's types, for the stream memory operations */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#define DP_GPU_PLATFORM "CUDA" /* in messages: "no CUDA device" */
#define DP_GPU_DRIVER_NAME "cuda"
#define DP_GPU_DEVICE_HINT "is the NVIDIA driver installed and a GPU visible?"
#define DP_GPU_VISIBLE_ENV "CUDA_VISIBLE_DEVICES"
#define DP_GPU_DEVICE_PASS 0

#else
/* ============================================================================
 * HIP (AMD GPUs through ROCm) */
#include <hip/hip_runtime.h>
#include <stdint.h>
#include <string.h>

#include "drivers/hip/hip_blas.h"
#include "drivers/hip/hip_rccl.h"

#define DP_GPU_PLATFORM "HIP"
#define DP_GPU_DRIVER_NAME "hip"
#define DP_GPU_DEVICE_HINT "is the amdgpu driver loaded (/dev/kfd) and a GPU visible?"
#define DP_GPU_VISIBLE_ENV "HIP_VISIBLE_DEVICES or ROCR_VISIBLE_DEVICES"

/* clang compiles a HIP file twice, for the host and for the GPU, and emits on the GPU side
 * every const variable with external linkage: a table of host function pointers declared
 * `extern` would then reference host functions from GPU code and fail to link. The device pass
 * sees the tables with internal linkage instead (never used there, so never emitted). */
#ifdef __HIP_DEVICE_COMPILE__
#define DP_GPU_DEVICE_PASS 1
#else
#define DP_GPU_DEVICE_PASS 0
#endif

/* ----------------------------------------------------------------------------
 * runtime: types, constants and calls */
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaErrorNotReady hipErrorNotReady
#define cudaErrorMemoryAllocation hipErrorOutOfMemory
#define cudaErrorNoDevice hipErrorNoDevice
#define cudaErrorInsufficientDriver hipErrorInsufficientDriver
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaGetErrorName hipGetErrorName

#define cudaGetDeviceCount hipGetDeviceCount
#define cudaSetDevice hipSetDevice
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaDeviceGetAttribute hipDeviceGetAttribute
#define cudaDevAttrMultiProcessorCount hipDeviceAttributeMultiprocessorCount
#define cudaDeviceGetStreamPriorityRange hipDeviceGetStreamPriorityRange
#define cudaMemGetInfo hipMemGetInfo

#define cudaStream_t hipStream_t
#define cudaStreamNonBlocking hipStreamNonBlocking
#define cudaStreamCreateWithFlags hipStreamCreateWithFlags
#define cudaStreamCreateWithPriority hipStreamCreateWithPriority
#define cudaStreamDestroy hipStreamDestroy
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamQuery hipStreamQuery
#define cudaStreamWaitEvent hipStreamWaitEvent

#define cudaEvent_t hipEvent_t
#define cudaEventCreate hipEventCreate
#define cudaEventCreateWithFlags hipEventCreateWithFlags
#define cudaEventDisableTiming hipEventDisableTiming
#define cudaEventInterprocess hipEventInterprocess
#define cudaEventDestroy hipEventDestroy
#define cudaEventRecord hipEventRecord
#define cudaEventQuery hipEventQuery
#define cudaEventSynchronize hipEventSynchronize
#define cudaEventElapsedTime hipEventElapsedTime

#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaHostAlloc hipHostMalloc
#define cudaHostAllocPortable hipHostMallocPortable
#define cudaFreeHost hipHostFree
#define cudaMemset hipMemset
#define cudaMemsetAsync hipMemsetAsync
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemcpyKind hipMemcpyKind
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaMemcpyDefault hipMemcpyDefault

#define cudaIpcMemHandle_t hipIpcMemHandle_t
#define cudaIpcEventHandle_t hipIpcEventHandle_t
#define cudaIpcGetMemHandle hipIpcGetMemHandle
#define cudaIpcOpenMemHandle hipIpcOpenMemHandle
#define cudaIpcCloseMemHandle hipIpcCloseMemHandle
#define cudaIpcGetEventHandle hipIpcGetEventHandle
#define cudaIpcOpenEventHandle hipIpcOpenEventHandle
#define cudaIpcMemLazyEnablePeerAccess hipIpcMemLazyEnablePeerAccess

/* Device properties with the GPU's UUID, which hipDeviceProp_t lacks before ROCm 6. */
struct dp_hip_device_prop : hipDeviceProp_t {
    hipUUID uuid;
};
#define cudaDeviceProp dp_hip_device_prop
static inline hipError_t dp_hip_get_device_properties(dp_hip_device_prop *p, int ordinal)
{
    hipError_t e = hipGetDeviceProperties(p, ordinal);
    hipDevice_t d;
    if (e == hipSuccess) e = hipDeviceGet(&d, ordinal);
    if (e == hipSuccess) e = hipDeviceGetUuid(&p->uuid, d);
    return e;
}
#define cudaGetDeviceProperties dp_hip_get_device_properties

/* Pointer attributes: CUDA's member `type` is HIP's `memoryType` before ROCm 6. */
struct dp_hip_pointer_attributes {
    int type;
};
#define cudaPointerAttributes dp_hip_pointer_attributes
#define cudaMemoryTypeHost hipMemoryTypeHost
static inline hipError_t dp_hip_pointer_get_attributes(dp_hip_pointer_attributes *a, const void *p)
{
    hipPointerAttribute_t h;
    memset(&h, 0, sizeof h);
    hipError_t e = hipPointerGetAttributes(&h, p);
    a->type = e == hipSuccess ? (int)h.memoryType : -1;
    return e;
}
#define cudaPointerGetAttributes dp_hip_pointer_get_attributes

/* ----------------------------------------------------------------------------
 * the stream memory operations the IPC transport reaches through CUDA's driver entry points:
 * HIP has them in its runtime, with a mask */
typedef int CUresult;
typedef hipStream_t CUstream;
typedef uintptr_t CUdeviceptr;
typedef uint32_t cuuint32_t;
#ifndef CUDA_SUCCESS /* some HIP versions define it already */
#define CUDA_SUCCESS 0
#endif
#define CU_STREAM_WRITE_VALUE_DEFAULT 0u
#define CU_STREAM_WAIT_VALUE_GEQ ((unsigned)hipStreamWaitValueGte)
static inline CUresult dp_hip_stream_wait_value32(CUstream s, CUdeviceptr at, cuuint32_t v, unsigned flags)
{
    return (CUresult)hipStreamWaitValue32(s, (void *)at, v, flags, 0xffffffffu);
}
static inline CUresult dp_hip_stream_write_value32(CUstream s, CUdeviceptr at, cuuint32_t v, unsigned flags)
{
    return (CUresult)hipStreamWriteValue32(s, (void *)at, v, flags);
}
typedef enum { cudaDriverEntryPointSuccess, cudaDriverEntryPointSymbolNotFound } cudaDriverEntryPointQueryResult;
#define cudaEnableDefault 0
static inline hipError_t cudaGetDriverEntryPoint(const char *name, void **fn, int flags,
                                                 cudaDriverEntryPointQueryResult *found)
{
    (void)flags;
    *fn = strcmp(name, "cuStreamWaitValue32") == 0    ? (void *)dp_hip_stream_wait_value32
          : strcmp(name, "cuStreamWriteValue32") == 0 ? (void *)dp_hip_stream_write_value32
                                                      : NULL;
    *found = *fn ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return hipSuccess;
}

/* ----------------------------------------------------------------------------
 * device code: warp shuffles with an explicit width of 32 (an AMD wavefront may be 64 lanes;
 * the kernels' reductions are written for groups of 32 lanes, so each half-wavefront reduces
 * as one CUDA warp would, in the same order), and bf16 */
#define __shfl_xor_sync(mask, v, lane_mask) __shfl_xor((v), (lane_mask), 32)

/* bf16 as CUDA's __nv_bfloat16 behaves for what the kernels do: storage, round-to-nearest-even
 * from fp32 (NaN stays a quiet NaN), exact widening to fp32. */
struct __nv_bfloat16 {
    unsigned short x;
};
__device__ __forceinline__ float __bfloat162float(__nv_bfloat16 h)
{
    return __uint_as_float((unsigned)h.x << 16);
}
__device__ __forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f)
{
    unsigned u = __float_as_uint(f);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h.x = (unsigned short)((u >> 16) | 0x40u);
    else h.x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}

#endif /* DP_GPU_HIP */
#endif
