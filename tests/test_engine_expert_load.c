/* test_engine_expert_load.c: dp_runtime_read_expert_load, the per-step expert loads of each
 * MoE layer. A model whose layers 1 and 3 (of 4) are MoE, the second of them skewed (its bias
 * written so that expert 0 takes every token and the last none): on every schedule, with
 * data-parallel replicas and expert parallelism, each layer's counts sum to tokens x topk x the
 * global batch's micro-batches in every step (not accumulated over steps), the skew shows on
 * MoE layer 1 and only there (layer order), and bad layers and loads that are not exact whole
 * numbers (written into the gradient by hand) are refused. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/runtime.h"
#include "tests/tap.h"

enum { EXPERTS = 8, TOPK = 2, TOKENS = 5, CHUNKS = 4 };

static dp_runtime_config config(const char *schedule, int dp, int ep)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = schedule, c.ranks = 2, c.dp = dp, c.ep = ep, c.chunks = CHUNKS;
    c.model.hidden = 8, c.model.ffn = 16, c.model.tokens = TOKENS, c.model.layers_per_stage = 2;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 5;
    c.model.moe = (dp_moe_config){.experts = EXPERTS, .topk = TOPK, .groups = 2, .topk_groups = 2, .expert_hidden = 4,
                                  .bias_update_speed = 0.0625f, .moe_layers_set = 1};
    c.model.moe.moe_layers[1] = c.model.moe.moe_layers[3] = 1; /* stage 0 block 1, stage 1 block 1 */
    c.optimizer.kind = DP_OPT_ADAMW, c.optimizer.lr = 1e-2f;
    c.threads_per_rank = 1;
    c.timeout_ms = 20000;
    return c;
}

static int replicas_of(const dp_runtime_config *c) { return (c->dp > 1 ? c->dp : 1) * (c->ep > 1 ? c->ep : 1); }

/* The index of stage `stage`'s parameter called `name`, or -1. */
static int param_index(dp_runtime *rt, int stage, const char *name)
{
    for (int i = 0; i < dp_runtime_num_params(rt, stage); i++) {
        char n[32];
        if (dp_runtime_read_tensor(rt, stage, 0, i, DP_TENSOR_VALUE, NULL, NULL, n) == DP_OK && strcmp(n, name) == 0)
            return i;
    }
    return -1;
}

/* Model layer 3 (MoE layer 1) routes every token to expert 0 and none to the last. */
static void skew(dp_runtime *rt)
{
    float b[EXPERTS] = {0};
    b[0] = 10.0f, b[EXPERTS - 1] = -10.0f;
    int i = param_index(rt, 1, "block1.gate.bias");
    for (int copy = 0; copy < dp_runtime_schedule(rt)->num_pipes; copy++)
        dp_runtime_write_tensor(rt, 1, copy, i, DP_TENSOR_VALUE, b, EXPERTS);
}

static int64_t sum(const int64_t *c)
{
    int64_t s = 0;
    for (int e = 0; e < EXPERTS; e++) s += c[e];
    return s;
}

static void run(const char *schedule, int dp, int ep)
{
    dp_runtime_config c = config(schedule, dp, ep);
    dp_runtime *rt = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    if (!tap_ok(st == DP_OK, "%s dp %d ep %d: a runtime with MoE layers 1 and 3%s%s", schedule, dp, ep,
                st ? ": " : "", st ? dp_last_error() : ""))
        return;
    tap_is_int(dp_runtime_num_moe_layers(rt), 2, "%s dp %d ep %d: two MoE layers", schedule, dp, ep);
    int64_t c0[EXPERTS], c1[EXPERTS];
    st = dp_runtime_read_expert_load(rt, 0, c0);
    tap_ok(st == DP_OK && sum(c0) == 0, "%s dp %d ep %d: zeros before the first step", schedule, dp, ep);
    skew(rt);
    int B = replicas_of(&c) * c.chunks, sums_ok = 1, skew_ok = 1, unskewed_ok = 1;
    int64_t want = (int64_t)TOKENS * TOPK * B;
    size_t n = (size_t)B * TOKENS * c.model.hidden;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *l = malloc(sizeof(float) * (size_t)B);
    for (int step = 1; step <= 2 && st == DP_OK; step++) {
        for (size_t i = 0; i < n; i++)
            x[i] = 2.0f * dp_counter_uniform(3, (uint64_t)step, i), y[i] = dp_counter_uniform(4, (uint64_t)step, i);
        st = dp_runtime_train_step(rt, x, y, l);
        if (st == DP_OK) st = dp_runtime_read_expert_load(rt, 0, c0);
        if (st == DP_OK) st = dp_runtime_read_expert_load(rt, 1, c1);
        sums_ok = sums_ok && st == DP_OK && sum(c0) == want && sum(c1) == want;
        skew_ok = skew_ok && st == DP_OK && c1[0] == (int64_t)TOKENS * B && c1[EXPERTS - 1] == 0;
        /* the unskewed layer: no expert takes every token */
        for (int e = 0; e < EXPERTS; e++) unskewed_ok = unskewed_ok && c0[e] < (int64_t)TOKENS * B;
    }
    free(x), free(y), free(l);
    tap_ok(sums_ok, "%s dp %d ep %d: each step's loads of each layer sum to tokens x topk x %d micro-batches = %lld "
           "(%lld, %lld)%s%s", schedule, dp, ep, B, (long long)want, (long long)sum(c0), (long long)sum(c1),
           st ? ": " : "", st ? dp_last_error() : "");
    tap_ok(skew_ok && unskewed_ok, "%s dp %d ep %d: the skewed layer is MoE layer 1: expert 0 took every token (%lld of "
           "%d), expert %d none (%lld); MoE layer 0 is not skewed", schedule, dp, ep, (long long)c1[0], TOKENS * B,
           EXPERTS - 1, (long long)c1[EXPERTS - 1]);
    dp_runtime_destroy(rt);
}

/* What is refused: layers that are not there, no array, and loads that are not exact counts. */
static void refusals(void)
{
    dp_runtime_config c = config("1f1b", 1, 1);
    dp_runtime *rt = NULL;
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK, "a runtime for the refusals")) return;
    int64_t counts[EXPERTS];
    dp_status st = dp_runtime_read_expert_load(rt, 2, counts);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "no MoE layer 2: the model has 2"), "MoE layer 2 of 2 is "
           "refused: %s", dp_last_error());
    st = dp_runtime_read_expert_load(rt, -1, counts);
    tap_ok(st == DP_ERR_INVALID, "MoE layer -1 is refused");
    st = dp_runtime_read_expert_load(rt, 0, NULL);
    tap_ok(st == DP_ERR_INVALID, "no host array is refused");
    int i = param_index(rt, 0, "block1.gate.bias");
    static const float bad[][EXPERTS] = {{1, 2, 0.5f}, {16777218.0f}, {-1}};
    for (int k = 0; k < 3; k++) {
        dp_runtime_write_tensor(rt, 0, 0, i, DP_TENSOR_GRAD, bad[k], EXPERTS);
        st = dp_runtime_read_expert_load(rt, 0, counts);
        tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "not a whole number of tokens up to 2^24"),
               "a load of %.9g is refused: %s", (double)bad[k][k == 0 ? 2 : 0], dp_last_error());
    }
    static const float edge[EXPERTS] = {16777216.0f, 0, 3};
    dp_runtime_write_tensor(rt, 0, 0, i, DP_TENSOR_GRAD, edge, EXPERTS);
    st = dp_runtime_read_expert_load(rt, 0, counts);
    tap_ok(st == DP_OK && counts[0] == 16777216 && counts[2] == 3, "2^24 itself is read exactly");
    dp_runtime_destroy(rt);
}

int main(void)
{
    static const char *const schedules[] = {"dualpipe", "dualpipev", "1f1b", "zb1p", "interleaved-1f1b", "gpipe"};
    for (size_t i = 0; i < sizeof schedules / sizeof schedules[0]; i++) run(schedules[i], 1, 1);
    run("dualpipe", 2, 1);
    run("dualpipev", 1, 2);
    run("1f1b", 2, 4);
    refusals();
    return tap_done();
}
