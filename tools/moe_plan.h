/* moe_plan.h: `--eplb-plan FILE` of `dualpipe train` and `verify`: the eplb tool's plan JSON read
 * and checked against the model (every rule named with the file), then handed to the engine as
 * plain arrays in dp_moe_config (plan_phy2log, plan_replica). */
#ifndef DP_TOOLS_MOE_PLAN_H
#define DP_TOOLS_MOE_PLAN_H

#include <stdint.h>

#include "engine/runtime.h"

/* Reads path and fills c->model.moe's plan fields with arrays that *storage owns (free them with
 * free() after the run). c's schedule, --pp, --chunks and --ep and its MoE options must be set.
 * 0, or nonzero having said (cli_error) which file broke which rule. */
int moe_plan_load(const char *path, dp_runtime_config *c, int32_t **storage);
/* The identity placement (slot p of each MoE layer holds expert p, as without a plan), for
 * rebalancing a run that starts without --eplb-plan: fills c->model.moe's plan fields as
 * moe_plan_load does. 0, or nonzero having said why (no MoE layer; --ep not dividing --experts). */
int moe_plan_identity(dp_runtime_config *c, int32_t **storage);

#endif
