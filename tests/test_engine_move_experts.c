/* test_engine_move_experts.c: dp_runtime_move_experts, the MoE experts moved to a new placement
 * between steps. A model with two MoE layers of 8 experts, placed by the identity plan, trained a
 * step, then moved (one layer's experts reversed, the other's shuffled, with --ep 2 and without,
 * fp32 and bf16, dualpipe and 1f1b): every logical parameter reads the same value, gradient and
 * AdamW moments, bit for bit, after the move as before it; the counts of experts and bytes moved
 * are the ones worked out by hand; the runtime shows the new placement while the caller's arrays
 * stay as they were; the next steps' losses and parameters equal those of a runtime that never
 * moved; bad placements and a model without one are refused, leaving the runtime usable. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/runtime.h"
#include "tests/tap.h"

enum { EXPERTS = 8, TOPK = 2, TOKENS = 5, CHUNKS = 4, HIDDEN = 8, F = 4 };

static const int32_t identity[2 * EXPERTS] = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7};
/* layer 0 reversed: every expert crosses to the other ep rank; layer 1: with ep 2, slots 2-5
 * take experts of the other rank, slots 0, 1, 6, 7 experts of their own rank's */
static const int32_t moved[2 * EXPERTS] = {7, 6, 5, 4, 3, 2, 1, 0, 1, 3, 5, 7, 0, 2, 4, 6};

static dp_runtime_config config(const char *schedule, int ep, dp_dtype dtype, const int32_t *plan)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = schedule, c.ranks = 2, c.ep = ep, c.chunks = CHUNKS;
    c.model.hidden = HIDDEN, c.model.ffn = 16, c.model.tokens = TOKENS, c.model.layers_per_stage = 2;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 5, c.model.dtype = dtype;
    c.model.moe = (dp_moe_config){.experts = EXPERTS, .topk = TOPK, .expert_hidden = F, .bias_update_speed = 0.0625f,
                                  .moe_layers_set = 1};
    c.model.moe.moe_layers[1] = c.model.moe.moe_layers[3] = 1;
    if (plan) {
        c.model.moe.plan_layers = 2, c.model.moe.plan_slots = EXPERTS, c.model.moe.plan_ranks = ep > 1 ? ep : 1;
        c.model.moe.plan_phy2log = plan;
    }
    c.optimizer.kind = DP_OPT_ADAMW, c.optimizer.lr = 1e-2f;
    c.threads_per_rank = 1;
    c.timeout_ms = 20000;
    return c;
}

static int step(dp_runtime *rt, int k, float *losses)
{
    int B = CHUNKS * (dp_runtime_replicas(rt));
    size_t n = (size_t)B * TOKENS * HIDDEN;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = 2.0f * dp_counter_uniform(3, (uint64_t)k, i), y[i] = dp_counter_uniform(4, (uint64_t)k, i);
    dp_status st = dp_runtime_train_step(rt, x, y, losses);
    if (st != DP_OK) tap_diag("step %d: %s", k, dp_last_error());
    free(x), free(y);
    return st != DP_OK;
}

/* Every parameter's four tensors, one after another, stage by stage, and their names. */
static float *snapshot(dp_runtime *rt, size_t *total, char (**names)[32])
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    size_t at = 0, cap = 0;
    int count = 0;
    for (int st = 0; st < s->num_stages; st++) count += dp_runtime_num_params(rt, st);
    float *all = NULL;
    *names = calloc((size_t)count + 1, sizeof **names);
    for (int st = 0, k = 0; st < s->num_stages; st++)
        for (int i = 0; i < dp_runtime_num_params(rt, st); i++, k++)
            for (int w = 0; w < 4; w++) {
                size_t n = 0;
                dp_runtime_read_tensor(rt, st, 0, i, (dp_tensor_kind)w, NULL, &n, (*names)[k]);
                if (at + n > cap) cap = 2 * (at + n), all = realloc(all, sizeof *all * cap);
                dp_runtime_read_tensor(rt, st, 0, i, (dp_tensor_kind)w, all + at, NULL, NULL);
                at += n;
            }
    *total = at;
    return all;
}

static void run(const char *schedule, int ep, dp_dtype dtype)
{
    char what[64];
    snprintf(what, sizeof what, "%s ep %d %s", schedule, ep, dtype == DP_DTYPE_BF16 ? "bf16" : "fp32");
    int32_t given[2 * EXPERTS];
    memcpy(given, identity, sizeof given);
    dp_runtime_config c = config(schedule, ep, dtype, given);
    dp_runtime *rt = NULL, *still = NULL;
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK && dp_runtime_create(&c, &still) == DP_OK, "%s: two runtimes "
                "placed by the identity plan%s", what, rt && still ? "" : dp_last_error())) {
        dp_runtime_destroy(rt), dp_runtime_destroy(still);
        return;
    }
    int B = CHUNKS * dp_runtime_replicas(rt);
    float la[64], lb[64];
    int failed = step(rt, 1, la) || step(still, 1, lb);
    size_t n0 = 0, n1 = 0;
    char(*names0)[32] = NULL, (*names1)[32] = NULL;
    float *before = snapshot(rt, &n0, &names0);
    dp_expert_move_stats ms;
    dp_status st = dp_runtime_move_experts(rt, moved, NULL, &ms);
    tap_ok(!failed && st == DP_OK, "%s: trained a step, then moved the experts%s%s", what, st ? ": " : "",
           st ? dp_last_error() : "");
    float *after = snapshot(rt, &n1, &names1);
    int count = 0;
    for (int s = 0; s < dp_runtime_schedule(rt)->num_stages; s++) count += dp_runtime_num_params(rt, s);
    tap_ok(n0 == n1 && n0 > 0 && memcmp(before, after, n0 * sizeof(float)) == 0 &&
           memcmp(names0, names1, sizeof *names0 * (size_t)count) == 0,
           "%s: every logical parameter's value, gradient, m and v read the same bits after the move (%zu floats)",
           what, n0);
    /* 16 slots change; 3 matrices of F x H, 4 tensors (value, grad, m, v), per copy of the stage */
    uint64_t slot = 3ull * F * HIDDEN * 4 * 4 * (uint64_t)dp_runtime_schedule(rt)->num_pipes;
    uint64_t sent = ep > 1 ? 12 * slot : 0, copied = ep > 1 ? 4 * slot : 16 * slot;
    tap_ok(ms.experts_moved == 16 && ms.bytes_sent == sent && ms.bytes_copied == copied,
           "%s: 16 experts moved, %llu bytes sent (want %llu), %llu copied within ranks (want %llu)", what,
           (unsigned long long)ms.bytes_sent, (unsigned long long)sent, (unsigned long long)ms.bytes_copied,
           (unsigned long long)copied);
    const dp_moe_config *m = &dp_runtime_model(rt)->moe;
    tap_ok(memcmp(m->plan_phy2log, moved, sizeof moved) == 0 && memcmp(given, identity, sizeof given) == 0,
           "%s: the runtime shows the new placement; the caller's arrays are as they were", what);
    int same = !failed;
    for (int k = 2; k <= 3 && same; k++) {
        same = !step(rt, k, la) && !step(still, k, lb) && memcmp(la, lb, sizeof(float) * (size_t)B) == 0;
        /* and a move back and forth between the steps */
        if (k == 2 && same) same = dp_runtime_move_experts(rt, identity, NULL, NULL) == DP_OK &&
                                   dp_runtime_move_experts(rt, moved, NULL, NULL) == DP_OK;
    }
    free(before), free(after), free(names0), free(names1);
    before = snapshot(rt, &n0, &names0);
    after = snapshot(still, &n1, &names1);
    tap_ok(same && n0 == n1 && memcmp(before, after, n0 * sizeof(float)) == 0, "%s: two more steps (and two more "
           "moves) give the losses and the state of the runtime that never moved, bit for bit", what);
    free(before), free(after), free(names0), free(names1);
    dp_runtime_destroy(rt), dp_runtime_destroy(still);
}

static void refusals(void)
{
    dp_runtime_config c = config("1f1b", 2, DP_DTYPE_F32, NULL);
    dp_runtime *rt = NULL;
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK, "a runtime without a placement")) return;
    dp_status st = dp_runtime_move_experts(rt, moved, NULL, NULL);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "without an expert placement"), "no placement to move "
           "from: refused (%s)", dp_last_error());
    dp_runtime_destroy(rt);
    c = config("1f1b", 2, DP_DTYPE_F32, identity);
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK, "a runtime with a placement")) return;
    int32_t bad[2 * EXPERTS], rank[2 * EXPERTS] = {0};
    memcpy(bad, identity, sizeof bad), bad[3] = 8;
    st = dp_runtime_move_experts(rt, bad, NULL, NULL);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "puts expert 8 in slot 3 of MoE layer 0"), "an expert out "
           "of range: refused (%s)", dp_last_error());
    memcpy(bad, identity, sizeof bad), bad[EXPERTS + 5] = 4;
    st = dp_runtime_move_experts(rt, bad, NULL, NULL);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "MoE layer 1 has no slot for expert 5"), "an expert left "
           "out: refused (%s)", dp_last_error());
    rank[2] = 1;
    st = dp_runtime_move_experts(rt, identity, rank, NULL);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "each replica rank once"), "a replica rank beyond the "
           "expert's slots: refused (%s)", dp_last_error());
    float l[64];
    tap_ok(step(rt, 1, l) == 0 && memcmp(dp_runtime_model(rt)->moe.plan_phy2log, identity, sizeof identity) == 0,
           "after the refusals the placement is as it was and a step runs");
    dp_runtime_destroy(rt);
}

int main(void)
{
    run("1f1b", 2, DP_DTYPE_F32);
    run("dualpipe", 2, DP_DTYPE_F32);
    run("1f1b", 1, DP_DTYPE_F32);
    run("1f1b", 2, DP_DTYPE_BF16);
    refusals();
    return tap_done();
}
