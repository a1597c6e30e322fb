/* driver_failopen.c: the cpu driver, except that rank 1 cannot open its device. The runtime
 * must end its set-up on every rank at once, naming rank 1 and why, instead of leaving the
 * other ranks waiting for it in the link's collective set-up (test_engine_setup loads it). */
#include "engine/driver.h"

static dp_device_ops ops;
static dp_link_ops link_ops;

static dp_status open_but_rank_1(const dp_device_config *cfg, dp_device **out)
{
    *out = NULL;
    if (cfg->rank == 1) return dp_fail(DP_ERR_DEVICE, "device of rank 1 is out of order (test driver)");
    return dp_cpu_driver.device->open(cfg, out);
}

/* at load time, before the registry reads the tables */
__attribute__((constructor)) static void fill_tables(void)
{
    ops = *dp_cpu_driver.device;
    ops.name = "failopen";
    ops.open = open_but_rank_1;
    link_ops = *dp_cpu_driver.link;
}

const dp_driver dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver),
    .name = "failopen",
    .description = "the cpu driver with rank 1's device out of order",
    .device = &ops,
    .link = &link_ops,
};
