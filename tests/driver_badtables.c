/* driver_badtables.c: the cpu driver with writable tables, which test_engine_registry breaks
 * one way at a time (a table's ABI, its size, a required member) to see each refusal's
 * message, then mends to see it load. */
#include "drivers/cpu/cpu_internal.h"
#include "engine/driver.h"

static dp_device_runtime_ops runtime;
static dp_device_kernel_ops kernels;

__attribute__((constructor)) static void fill_tables(void)
{
    runtime = dp_cpu_runtime_ops;
    runtime.name = "badtables";
    kernels = dp_cpu_kernel_ops;
}

/* not const: the test edits it and the tables through it */
dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "badtables",
    .description = "the cpu driver, its tables broken by the test",
    .runtime = &runtime,
    .kernels = &kernels,
    .link = &dp_cpu_link_ops,
};
