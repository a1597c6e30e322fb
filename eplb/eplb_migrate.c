/* eplb_migrate.c: turning the running placement into a new plan with few weight copies. */
#include "eplb/eplb_internal.h"

eplb_status eplb_plan_migrate(const eplb_plan *current, eplb_plan *next, int num_nodes,
                              long *moved, long *traffic)
{
    (void)current; (void)next; (void)num_nodes; (void)moved; (void)traffic;
    return eplb_fail(EPLB_ERR_INTERNAL, "not yet");
}
