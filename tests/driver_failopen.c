/* driver_failopen.c: the cpu driver, except that rank 1 cannot open its device. The runtime
 * must end its set-up on every rank at once, naming rank 1 and why, instead of leaving the
 * other ranks waiting for it in the link's collective set-up (test_engine_setup loads it). */
#include "engine/driver.h"

static dp_device_runtime_ops runtime;
static dp_device_kernel_ops kernels;
static dp_link_ops link_ops;

static dp_status open_but_rank_1(const dp_device_config *cfg, dp_device **out)
{
    *out = NULL;
    if (cfg->rank == 1) return dp_fail(DP_ERR_DEVICE, "device of rank 1 is out of order (test driver)");
    return dp_cpu_driver.runtime->open(cfg, out);
}

/* at load time, before the registry reads the tables */
__attribute__((constructor)) static void fill_tables(void)
{
    runtime = *dp_cpu_driver.runtime;
    runtime.name = "failopen";
    runtime.open = open_but_rank_1;
    kernels = *dp_cpu_driver.kernels;
    link_ops = *dp_cpu_driver.link;
}

const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "failopen",
    .description = "the cpu driver with rank 1's device out of order",
    .runtime = &runtime,
    .kernels = &kernels,
    .link = &link_ops,
};
