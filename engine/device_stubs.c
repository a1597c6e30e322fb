/* device_stubs.c: what stands in for the device operations a driver lacks. One stub per member
 * of the device tables, each answering DP_ERR_UNSUPPORTED with the member's name, and the
 * resolver that builds the engine's complete view of a driver from its two tables. */
#include "config.h"

#include "engine/device.h"

/* ----------------------------------------------------------------------------
 * the stubs: generated from the member lists, so a new member has its stub at once */

static dp_status unsupported(const char *member)
{
    return dp_fail(DP_ERR_UNSUPPORTED,
                   "the driver does not support the device operation '%s' (it lacks it, or was built against "
                   "an older dualpipe); the cpu driver supports every operation",
                   member);
}

/* A stub ignores its arguments by definition: its parameter list is the member's, names and all. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define DEFINE_STUB(name, params) \
    dp_status dp_unsupported_##name params { return unsupported(#name); }
DP_DEVICE_RUNTIME_OPS(DEFINE_STUB)
DP_DEVICE_KERNEL_OPS(DEFINE_STUB)
#undef DEFINE_STUB
#pragma GCC diagnostic pop

/* ----------------------------------------------------------------------------
 * the engine's view of a driver: a member the driver's table reaches and sets, else the stub */

void dp_device_ops_resolve(const dp_device_runtime_ops *rt, const dp_device_kernel_ops *k, dp_device_ops *out)
{
    out->name = rt->name;
#define TAKE_RUNTIME(member, params) \
    out->member = DP_HAS(rt, member) && rt->member ? rt->member : dp_unsupported_##member;
#define TAKE_KERNEL(member, params) \
    out->member = DP_HAS(k, member) && k->member ? k->member : dp_unsupported_##member;
    DP_DEVICE_RUNTIME_OPS(TAKE_RUNTIME)
    DP_DEVICE_KERNEL_OPS(TAKE_KERNEL)
#undef TAKE_RUNTIME
#undef TAKE_KERNEL
}
