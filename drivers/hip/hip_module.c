/* hip_module.c: the one symbol the HIP driver module exports (DP_DRIVER_SYMBOL). Its tables are
 * the CUDA driver's, compiled by hipcc from drivers/cuda through drivers/cuda/gpu_compat.h; what
 * is HIP's own is the check that says why it cannot run here. Plain C, like cuda_module.c. */
#include <unistd.h>

#include "engine/driver.h"

extern const dp_device_runtime_ops dp_cuda_runtime_ops; /* drivers/cuda/cuda_device.cu */
extern const dp_device_kernel_ops dp_cuda_kernel_ops;   /* drivers/cuda/cuda_kernels.cu */
extern const dp_link_ops dp_cuda_link_ops;              /* drivers/cuda/cuda_link.cu */
dp_status dp_cuda_available(void);

/* Without the kernel driver's device node the HIP runtime has nothing to find: say so before
 * asking it (and without waking the runtime at all). */
static dp_status dp_hip_available(void)
{
    if (access("/dev/kfd", F_OK) != 0)
        return dp_fail(DP_ERR_NOT_FOUND,
                       "no HIP device: /dev/kfd does not exist (the amdgpu kernel driver is not loaded, or this "
                       "machine has no AMD GPU); use --driver cpu here, or run on a machine with an AMD GPU and ROCm");
    return dp_cuda_available();
}

__attribute__((visibility("default"))) const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "hip",
    .description = "AMD GPUs (ROCm): hipBLAS GEMMs and the CUDA driver's kernels built by hipcc; RCCL between GPUs, "
                   "copies between ranks on one GPU",
    .runtime = &dp_cuda_runtime_ops,
    .kernels = &dp_cuda_kernel_ops,
    .link = &dp_cuda_link_ops,
    .available = dp_hip_available,
};
