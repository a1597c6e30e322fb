/* cuda_module.c: the one symbol the CUDA driver module exports (DP_DRIVER_SYMBOL): its name,
 * its device and link tables and the check that says why it cannot run on this machine.
 * Plain C, so the module links as C and the engine's loader finds a C symbol. */
#include "engine/driver.h"

extern const dp_device_runtime_ops dp_cuda_runtime_ops; /* cuda_device.cu */
extern const dp_device_kernel_ops dp_cuda_kernel_ops;   /* cuda_kernels.cu */
extern const dp_link_ops dp_cuda_link_ops;              /* cuda_link.cu */
dp_status dp_cuda_available(void);

__attribute__((visibility("default"))) const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "cuda",
    .description = "NVIDIA GPUs: cuBLAS GEMMs and own kernels; NCCL between GPUs, copies between ranks on one GPU",
    .runtime = &dp_cuda_runtime_ops,
    .kernels = &dp_cuda_kernel_ops,
    .link = &dp_cuda_link_ops,
    .available = dp_cuda_available,
};
