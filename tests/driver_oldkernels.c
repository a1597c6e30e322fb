/* driver_oldkernels.c: the cpu driver as if built against an older engine/device.h whose kernel
 * table ended before the row kernels (gather_rows and after). The registry must load it and the
 * engine must see those members as unsupported. The members past struct_size are set, to
 * functions that say they were called, so a registry reading past the size is caught
 * (test_engine_registry loads it). */
#include <stddef.h>

#include "drivers/cpu/cpu_internal.h"
#include "engine/driver.h"

static dp_device_kernel_ops kernels;

#pragma GCC diagnostic ignored "-Wunused-parameter"
#define DEFINE_PAST_SIZE(name, params)                                                                  \
    static dp_status past_size_##name params                                                            \
    {                                                                                                   \
        return dp_fail(DP_ERR_INTERNAL, "'%s' lies past the kernel table's size, yet was called", #name); \
    }
DP_DEVICE_KERNEL_OPS(DEFINE_PAST_SIZE)

__attribute__((constructor)) static void fill_tables(void)
{
    kernels = dp_cpu_kernel_ops;
    kernels.struct_size = (uint32_t)offsetof(dp_device_kernel_ops, gather_rows);
#define SET_PAST_SIZE(name, params) \
    if (!DP_HAS(&kernels, name)) kernels.name = past_size_##name;
    DP_DEVICE_KERNEL_OPS(SET_PAST_SIZE)
}

const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "oldkernels",
    .description = "the cpu driver without the kernels from gather_rows on",
    .runtime = &dp_cpu_runtime_ops,
    .kernels = &kernels,
    .link = &dp_cpu_link_ops,
};
