/* cli_moe.c: the mixture-of-experts options of `dualpipe train` and `verify` (see cli_moe.h). */
#include "tools/cli_moe.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/moe_plan.h"

/* --eplb-plan's file, and the plan read from it (held for the process: the engine reads it
 * through dp_moe_config for as long as the run lasts) */
static const char *plan_path;
static int32_t *plan_arrays;

void cli_moe_defaults(dp_moe_config *m) { m->bias_update_speed = 0.001f; }

/* "1,3-5" into the layers' flags: each number in 0 .. DP_MAX_LAYERS - 1, ranges increasing. */
static int parse_layers(const char *name, const char *text, dp_moe_config *m)
{
    memset(m->moe_layers, 0, sizeof m->moe_layers);
    const char *at = text ? text : "";
    if (!*at) goto bad;
    while (*at) {
        char *end;
        errno = 0;
        long a = strtol(at, &end, 10), b = a;
        if (end == at || errno || a < 0 || a >= DP_MAX_LAYERS) goto bad;
        at = end;
        if (*at == '-') {
            b = strtol(++at, &end, 10);
            if (end == at || errno || b < a || b >= DP_MAX_LAYERS) goto bad;
            at = end;
        }
        for (long i = a; i <= b; i++) m->moe_layers[i] = 1;
        if (*at == ',' && at[1]) at++;
        else if (*at) goto bad;
    }
    m->moe_layers_set = 1;
    return 0;
bad:
    cli_error("%s expects layer numbers and increasing ranges of them, 0 to %d, as 1,3-5; got '%s'", name,
              DP_MAX_LAYERS - 1, text ? text : "");
    return 1;
}

static int parse_float(const char *name, const char *text, int zero_ok, float *out)
{
    double d;
    if (cli_parse_double(name, text, &d)) return 1;
    if (!(d > 0 || (zero_ok && d == 0)) || !isfinite((float)d) || (d > 0 && (float)d == 0.0f)) {
        cli_error("%s must be a number %s that a float holds, got %s", name, zero_ok ? ">= 0" : "> 0", text);
        return 1;
    }
    *out = (float)d;
    return 0;
}

int cli_moe_option(int which, const char *name, const char *value, dp_moe_config *m, unsigned *given)
{
    *given |= 1u << which;
    switch (which) {
    case CLI_MOE_EXPERTS: return cli_parse_int(name, value, 0, DP_MAX_EXPERTS, &m->experts);
    case CLI_MOE_TOPK: return cli_parse_int(name, value, 1, DP_MAX_EXPERTS, &m->topk);
    case CLI_MOE_GROUPS: return cli_parse_int(name, value, 1, DP_MAX_EXPERTS, &m->groups);
    case CLI_MOE_TOPK_GROUPS: return cli_parse_int(name, value, 1, DP_MAX_EXPERTS, &m->topk_groups);
    case CLI_MOE_EXPERT_HIDDEN: return cli_parse_int(name, value, 1, 1 << 16, &m->expert_hidden);
    case CLI_MOE_SHARED: return cli_parse_int(name, value, 0, 64, &m->shared_experts);
    case CLI_MOE_LAYERS: return parse_layers(name, value, m);
    case CLI_MOE_ROUTE_SCALE: return parse_float(name, value, 0, &m->route_scale);
    case CLI_MOE_BIAS_SPEED: return parse_float(name, value, 1, &m->bias_update_speed);
    case CLI_MOE_EPLB_PLAN: plan_path = value; return 0;
    }
    return 0;
}

int cli_moe_check(dp_runtime_config *c, unsigned given)
{
    static const char *const names[CLI_MOE_NUM] = {"--experts", "--topk", "--groups", "--topk-groups",
                                                    "--expert-hidden", "--shared-experts", "--moe-layers",
                                                    "--route-scale", "--bias-update-speed", "--eplb-plan"};
    const dp_model_config *model = &c->model;
    if (model->moe.experts == 0)
        for (int i = 1; i < CLI_MOE_NUM; i++)
            if (given & (1u << i)) {
                cli_error("%s shapes MoE layers, which need --experts N (N > 0); without it the model is dense",
                          names[i]);
                return 1;
            }
    if (model->moe.experts == 0) return 0;
    dp_model_config copy = *model;
    if (dp_model_config_check(&copy) != DP_OK) {
        cli_error("%s", dp_last_error());
        return 1;
    }
    if (!(given & (1u << CLI_MOE_EPLB_PLAN))) return 0;
    free(plan_arrays);
    plan_arrays = NULL;
    /* the plan's expert ids are checked against the experts the defaults leave */
    dp_runtime_config checked = *c;
    checked.model = copy;
    if (moe_plan_load(plan_path, &checked, &plan_arrays)) return 1;
    c->model.moe.plan_layers = checked.model.moe.plan_layers, c->model.moe.plan_slots = checked.model.moe.plan_slots;
    c->model.moe.plan_ranks = checked.model.moe.plan_ranks;
    c->model.moe.plan_phy2log = checked.model.moe.plan_phy2log;
    c->model.moe.plan_replica = checked.model.moe.plan_replica;
    return 0;
}

void cli_moe_print_placement(const dp_model_config *model, int ep)
{
    const dp_moe_config *m = &model->moe;
    if (!m->plan_phy2log) return;
    int P = m->plan_slots, most = 1;
    char per_layer[128] = "";
    int *count = calloc((size_t)m->experts, sizeof *count);
    if (!count) return;
    for (int l = 0; l < m->plan_layers; l++) {
        int replicated = 0;
        memset(count, 0, sizeof *count * (size_t)m->experts);
        for (int p = 0; p < P; p++) count[m->plan_phy2log[(size_t)l * P + p]]++;
        for (int e = 0; e < m->experts; e++) {
            replicated += count[e] > 1;
            if (count[e] > most) most = count[e];
        }
        size_t at = strlen(per_layer);
        if (at < sizeof per_layer - 16) snprintf(per_layer + at, sizeof per_layer - at, "%s%d", l ? "," : "", replicated);
        else if (at < sizeof per_layer - 4) snprintf(per_layer + at, sizeof per_layer - at, "...");
    }
    free(count);
    ep = ep > 1 ? ep : 1;
    char from[4096];
    snprintf(from, sizeof from, "--eplb-plan %s", plan_path ? plan_path : "(given)");
    if (!plan_path) snprintf(from, sizeof from, "one slot per expert, in order (no --eplb-plan)");
    printf("placement: %s: %d physical slots per MoE layer, %d per ep rank; experts replicated per "
           "layer %s, up to %d slots each\n", from, P, P / ep, per_layer, most);
}
