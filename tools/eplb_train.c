/* eplb_train.c: rebalancing the experts while training (see eplb_train.h). */
#include "tools/eplb_train.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/expert_load.h"

int eplb_train_init(eplb_train *et, dp_runtime *rt, int every, int window, int ep)
{
    const dp_moe_config *m = &dp_runtime_model(rt)->moe;
    *et = (eplb_train){.every = every, .window = window};
    et->layers = dp_runtime_num_moe_layers(rt), et->experts = m->experts;
    et->slots = m->plan_slots, et->gpus = ep > 1 ? ep : 1;
    if (et->layers < 1 || !m->plan_phy2log) {
        cli_error("--eplb-every: the model has no MoE layer to balance (by default every layer but the first is "
                  "one: give more layers, or name them with --moe-layers)");
        return CLI_EXIT_USAGE;
    }
    et->ring = calloc((size_t)window * (size_t)et->layers * (size_t)et->experts, sizeof *et->ring);
    if (!et->ring) {
        cli_error("out of memory for the loads of %d steps x %d layers x %d experts", window, et->layers, et->experts);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

void eplb_train_free(eplb_train *et)
{
    free(et->ring);
    et->ring = NULL;
}

int eplb_train_add_step(eplb_train *et, dp_runtime *rt)
{
    size_t row = (size_t)et->layers * (size_t)et->experts;
    int64_t *at = et->ring + (size_t)(et->recorded % et->window) * row;
    if (expert_load_read_step(rt, et->layers, et->experts, at, "--eplb-every")) return CLI_EXIT_FAIL;
    et->recorded++;
    return 0;
}

/* The root's plan from the window's loads: phy2log and replica ranks into next (2 x layers x
 * slots), and the balancedness of the loads under the placement running and under the plan. */
static int plan(const eplb_train *et, dp_runtime *rt, int32_t *next, double *before, double *after, int *steps)
{
    const dp_moe_config *m = &dp_runtime_model(rt)->moe;
    int L = et->layers, E = et->experts, P = et->slots;
    size_t row = (size_t)L * (size_t)E, cells = (size_t)L * (size_t)P;
    *steps = et->recorded < et->window ? et->recorded : et->window;
    double *w = calloc(row, sizeof *w);
    int *cur = malloc(sizeof *cur * (cells ? cells : 1));
    if (!w || !cur) {
        free(w), free(cur);
        cli_error("out of memory planning %d layers x %d experts", L, E);
        return CLI_EXIT_FAIL;
    }
    for (int k = 0; k < *steps; k++)
        for (size_t i = 0; i < row; i++) w[i] += (double)et->ring[(size_t)k * row + i];
    for (size_t i = 0; i < cells; i++) cur[i] = m->plan_phy2log[i];
    eplb_plan now = {0}, fresh = {0};
    eplb_config cfg = eplb_config_default(P, et->gpus);
    long moved = 0;
    eplb_status s = eplb_plan_from_phy2log(cur, L, E, P, et->gpus, &now);
    if (s == 0) s = eplb_plan_balancedness(w, &now, &cfg, before, NULL, NULL);
    if (s == 0) s = eplb_rebalance_from(w, L, E, &cfg, &now, 0.0, &fresh, &moved, NULL, NULL);
    if (s == 0) s = eplb_plan_balancedness(w, &fresh, &cfg, after, NULL, NULL);
    if (s == 0) {
        for (size_t i = 0; i < cells; i++) next[i] = fresh.phy2log[i];
        /* replica k of expert e is slot log2phy[l][e][k] */
        for (int l = 0; l < L; l++)
            for (int e = 0; e < E; e++)
                for (int k = 0; k < fresh.logcnt[l * E + e]; k++)
                    next[cells + (size_t)l * P + fresh.log2phy[((size_t)l * E + e) * fresh.max_count + k]] = k;
    }
    eplb_plan_free(&now), eplb_plan_free(&fresh);
    free(w), free(cur);
    if (s != 0) {
        cli_error("--eplb-every: planning the experts' placement: %s", eplb_last_error());
        return CLI_EXIT_FAIL;
    }
    return 0;
}

int eplb_train_after_step(eplb_train *et, dp_runtime *rt, int step, int quiet)
{
    if (step % et->every) return 0;
    int root = dp_runtime_is_root(rt), steps = 0, rc = 0;
    size_t cells = (size_t)et->layers * (size_t)et->slots;
    int32_t *next = root ? malloc(sizeof *next * 2 * (cells ? cells : 1)) : NULL;
    double before = 1, after = 1;
    if (root && !next) {
        cli_error("out of memory for a placement of %zu slots", cells);
        return CLI_EXIT_FAIL;
    }
    /* the root alone has the counts; a failure there must still meet the others' move, so it
     * moves nowhere (the same placement) and then reports */
    if (root && (rc = plan(et, rt, next, &before, &after, &steps)) != 0) {
        const dp_moe_config *m = &dp_runtime_model(rt)->moe;
        memcpy(next, m->plan_phy2log, sizeof *next * cells);
        for (size_t i = 0; i < cells; i++) next[cells + i] = m->plan_replica ? m->plan_replica[i] : 0;
    }
    dp_expert_move_stats ms;
    const int32_t *replica = root && (rc == 0 || dp_runtime_model(rt)->moe.plan_replica) ? next + cells : NULL;
    dp_status st = dp_runtime_move_experts(rt, next, replica, &ms);
    free(next);
    if (st != DP_OK) {
        cli_error("--eplb-every: %s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    if (rc) return rc;
    et->rebalances++;
    if (!quiet && root)
        printf("eplb after step %d: balancedness %.4f -> %.4f (loads of the last %d step%s, %d expert-parallel "
               "rank%s), %d expert%s moved, %" PRIu64 " bytes sent between ranks, %" PRIu64 " copied within\n",
               step, before, after, steps, steps == 1 ? "" : "s", et->gpus, et->gpus == 1 ? "" : "s",
               ms.experts_moved, ms.experts_moved == 1 ? "" : "s", ms.bytes_sent, ms.bytes_copied);
    return 0;
}
