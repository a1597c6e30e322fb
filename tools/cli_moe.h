/* cli_moe.h: the mixture-of-experts options that `dualpipe train` and `verify` share (--experts,
 * --topk, ...): one list of table entries, one parser, one final check, so that the two commands
 * take the same options with the same errors. */
#ifndef DP_TOOLS_CLI_MOE_H
#define DP_TOOLS_CLI_MOE_H

#include "engine/runtime.h"
#include "tools/cli_options.h"

/* The options, in --help order; a command reserves CLI_MOE_NUM ids from `base` and lists
 * CLI_MOE_OPTIONS(base) in its table. */
enum { CLI_MOE_EXPERTS, CLI_MOE_TOPK, CLI_MOE_GROUPS, CLI_MOE_TOPK_GROUPS, CLI_MOE_EXPERT_HIDDEN, CLI_MOE_SHARED,
       CLI_MOE_LAYERS, CLI_MOE_ROUTE_SCALE, CLI_MOE_BIAS_SPEED, CLI_MOE_EPLB_PLAN, CLI_MOE_NUM };

#define CLI_MOE_OPTIONS(base)                                                                                   \
    {(base) + CLI_MOE_EXPERTS, 0, "experts", "N", .help = "routed experts of each MoE layer (default 0: a dense model);\n" \
                                                          "MoE layers are y = x + MoE(RMSNorm(x)), DeepSeek-V3's"}, \
    {(base) + CLI_MOE_TOPK, 0, "topk", "K", .help = "experts per token (default 2)"},                              \
    {(base) + CLI_MOE_GROUPS, 0, "groups", "G", .help = "expert groups, each scored by its two best (default 1)"}, \
    {(base) + CLI_MOE_TOPK_GROUPS, 0, "topk-groups", "N", .help = "groups kept per token (default: all)"},         \
    {(base) + CLI_MOE_EXPERT_HIDDEN, 0, "expert-hidden", "F", .help = "an expert's inner width (default ffn / topk)"}, \
    {(base) + CLI_MOE_SHARED, 0, "shared-experts", "N", .help = "shared experts beside the routed ones (default 0)"}, \
    {(base) + CLI_MOE_LAYERS, 0, "moe-layers", "LIST", .help = "which layers are MoE: numbers and ranges over the\n"       \
                                                               "whole model, as 1,3-5 (default: all but layer 0)"}, \
    {(base) + CLI_MOE_ROUTE_SCALE, 0, "route-scale", "X", .help = "scale of the routing weights (default 1)"},    \
    {(base) + CLI_MOE_BIAS_SPEED, 0, "bias-update-speed", "X", .help = "gamma of the balancing bias: after each step\n" \
                                                                      "b_e += gamma sign(mean load - load_e)\n"      \
                                                                      "(default 0.001; 0: no balancing)"}, \
    {(base) + CLI_MOE_EPLB_PLAN, 0, "eplb-plan", "FILE", .help = "place the experts on physical slots as the eplb\n"     \
                                                                 "tool's plan FILE says, replicas included (num_gpus\n" \
                                                                 "= --ep, or any with --ep 1)"}

/* DeepSeek-V3's balancing speed unless given. */
void cli_moe_defaults(dp_moe_config *m);
/* Option `which` (CLI_MOE_*) named `name` with `value` into m; nonzero having said why not.
 * *given collects which options appeared (bit per option). */
int cli_moe_option(int which, const char *name, const char *value, dp_moe_config *m, unsigned *given);
/* After the command line: the options need --experts, and the model they make must be one
 * (the engine's check, run on a copy); --eplb-plan's file is read and checked against the run
 * (tools/moe_plan.c) and placed in c->model.moe, the arrays held until the process ends (a
 * command parses its line once). Nonzero having said why not. */
int cli_moe_check(dp_runtime_config *c, unsigned given);
/* A line saying where --eplb-plan put the experts (nothing without a plan), for a header. */
void cli_moe_print_placement(const dp_model_config *model, int ep);

#endif
