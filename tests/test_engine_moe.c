/* test_engine_moe.c: mixture-of-experts layers in the pipelined runtime. With skewed routing (the
 * balancing bias written so that one expert takes every token and another none) and with the
 * gate's own varied routing, every loss and every tensor of every copy (values, gradients, the
 * optimizer's state, the bias and the loads it gathered) is bit-equal to the single-rank
 * reference after each step, for every schedule, with data-parallel replicas and with the
 * experts spread over 2, 4 and 8 expert-parallel ranks (--ep: dispatch and combine over the
 * link); the loads count every (token, k) slot of the global batch, and the bias moves by gamma
 * against them. A test that can fail: summing the experts' per-source gradients wrongly breaks it. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/reference.h"
#include "engine/runtime.h"
#include "tests/tap.h"

enum { EXPERTS = 8, TOPK = 2, TOKENS = 5, CHUNKS = 4 };
#define GAMMA 0.0625f

static dp_runtime_config config(const char *schedule, int dp, int ep)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = schedule, c.ranks = 2, c.dp = dp, c.ep = ep, c.chunks = CHUNKS;
    c.model.hidden = 8, c.model.ffn = 16, c.model.tokens = TOKENS, c.model.layers_per_stage = 2;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 11;
    c.model.moe = (dp_moe_config){.experts = EXPERTS, .topk = TOPK, .groups = 4, .topk_groups = 3, .expert_hidden = 6,
                                  .shared_experts = 1, .route_scale = 2.5f, .bias_update_speed = GAMMA};
    c.optimizer.kind = DP_OPT_ADAMW, c.optimizer.lr = 1e-2f;
    c.threads_per_rank = 1;
    c.timeout_ms = 20000;
    return c;
}

static int replicas_of(const dp_runtime_config *c) { return (c->dp > 1 ? c->dp : 1) * (c->ep > 1 ? c->ep : 1); }

static float *batch(const dp_runtime_config *c, uint64_t stream)
{
    size_t n = (size_t)replicas_of(c) * c->chunks * c->model.tokens * c->model.hidden;
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = 2.0f * dp_counter_uniform(17, stream, i);
    return v;
}

/* Every tensor of every parameter of every copy against the reference's; counts those that differ. */
static int differences(dp_runtime *rt, dp_reference *ref, int *compared)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    int bad = 0;
    *compared = 0;
    for (int stage = 0; stage < s->num_stages; stage++)
        for (int i = 0; i < dp_runtime_num_params(rt, stage); i++)
            for (int copy = 0; copy < s->num_pipes; copy++)
                for (int w = 0; w < 4; w++) {
                    size_t n = 0;
                    char name[32];
                    dp_runtime_read_tensor(rt, stage, copy, i, (dp_tensor_kind)w, NULL, &n, name);
                    float *a = malloc(sizeof(float) * (n + 1)), *b = malloc(sizeof(float) * (n + 1));
                    dp_status e1 = dp_runtime_read_tensor(rt, stage, copy, i, (dp_tensor_kind)w, a, NULL, NULL);
                    dp_status e2 = dp_reference_read_tensor(ref, stage, copy, i, (dp_tensor_kind)w, b, NULL, NULL);
                    if (e1 != DP_OK || e2 != DP_OK || memcmp(a, b, n * sizeof(float)) != 0) {
                        if (!bad) tap_diag("stage %d copy %d %s (tensor %d) differs", stage, copy, name, w);
                        bad++;
                    }
                    ++*compared;
                    free(a), free(b);
                }
    return bad;
}

/* The biases of every MoE layer written on both sides: expert 0 ahead of all (it takes every
 * token), the last far behind (it takes none). */
static void skew(dp_runtime *rt, dp_reference *ref)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    float b[EXPERTS] = {0};
    b[0] = 10.0f, b[EXPERTS - 1] = -10.0f;
    for (int stage = 0; stage < s->num_stages; stage++)
        for (int i = 0; i < dp_runtime_num_params(rt, stage); i++) {
            char name[32];
            size_t n;
            dp_runtime_read_tensor(rt, stage, 0, i, DP_TENSOR_VALUE, NULL, &n, name);
            if (!strstr(name, "gate.bias")) continue;
            for (int copy = 0; copy < s->num_pipes; copy++) {
                dp_runtime_write_tensor(rt, stage, copy, i, DP_TENSOR_VALUE, b, EXPERTS);
                dp_reference_write_tensor(ref, stage, copy, i, DP_TENSOR_VALUE, b, EXPERTS);
            }
        }
}

/* The loads (the bias's gradient) of the last step and the bias's move against them, on the
 * first MoE layer of stage 0; *loads gets them. */
static int check_balance(dp_runtime *rt, const float *bias_before, float *loads, float *bias_after)
{
    for (int i = 0; i < dp_runtime_num_params(rt, 0); i++) {
        char name[32];
        size_t n;
        dp_runtime_read_tensor(rt, 0, 0, i, DP_TENSOR_VALUE, NULL, &n, name);
        if (!strstr(name, "gate.bias")) continue;
        dp_runtime_read_tensor(rt, 0, 0, i, DP_TENSOR_GRAD, loads, NULL, NULL);
        dp_runtime_read_tensor(rt, 0, 0, i, DP_TENSOR_VALUE, bias_after, NULL, NULL);
        float sum = 0;
        for (int e = 0; e < EXPERTS; e++) sum += loads[e];
        float mean = sum / EXPERTS;
        int ok = 1;
        for (int e = 0; e < EXPERTS; e++) {
            float want = bias_before[e] + (mean > loads[e] ? GAMMA : mean < loads[e] ? -GAMMA : 0.0f);
            ok = ok && bias_after[e] == want;
        }
        return ok;
    }
    return 0;
}

static void run(const char *schedule, int dp, int ep, int skewed)
{
    dp_runtime_config c = config(schedule, dp, ep);
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    if (st == DP_OK) st = dp_reference_create(&c, &ref);
    if (!tap_ok(st == DP_OK, "%s dp %d ep %d: runtime and reference with MoE layers%s%s", schedule, dp, ep, st ? ": " : "",
                st ? dp_last_error() : "")) {
        dp_reference_destroy(ref), dp_runtime_destroy(rt);
        return;
    }
    if (skewed) skew(rt, ref);
    int B = replicas_of(&c) * c.chunks, same = 1, bad = 0, compared = 0, balanced = 1;
    float before[EXPERTS] = {0}, loads[EXPERTS], after[EXPERTS];
    if (skewed) before[0] = 10.0f, before[EXPERTS - 1] = -10.0f;
    for (int step = 1; step <= 2 && st == DP_OK; step++) {
        float *x = batch(&c, (uint64_t)step), *y = batch(&c, 100 + (uint64_t)step);
        float *l1 = calloc((size_t)B, sizeof(float)), *l2 = calloc((size_t)B, sizeof(float));
        st = dp_runtime_train_step(rt, x, y, l1);
        if (st == DP_OK) st = dp_reference_train_step(ref, x, y, l2);
        same = same && st == DP_OK && memcmp(l1, l2, sizeof(float) * (size_t)B) == 0;
        bad += differences(rt, ref, &compared);
        balanced = balanced && check_balance(rt, before, loads, after);
        memcpy(before, after, sizeof before);
        free(x), free(y), free(l1), free(l2);
    }
    const char *how = skewed ? "skewed routing" : "the gate's routing";
    tap_ok(st == DP_OK && same && bad == 0, "%s dp %d ep %d, %s: losses and all %d tensors bit-equal to the reference%s%s",
           schedule, dp, ep, how, compared, st ? ": " : "", st ? dp_last_error() : "");
    float sum = 0;
    for (int e = 0; e < EXPERTS; e++) sum += loads[e];
    tap_ok(sum == (float)(TOKENS * TOPK * B), "%s dp %d ep %d, %s: the loads count every (token, k) slot of the global "
           "batch (%g of %d)", schedule, dp, ep, how, (double)sum, TOKENS * TOPK * B);
    if (skewed)
        tap_ok(loads[0] == (float)(TOKENS * B) && loads[EXPERTS - 1] == 0,
               "%s dp %d ep %d: skewed, expert 0 takes every token (%g) and expert %d none (%g)", schedule, dp, ep,
               (double)loads[0], EXPERTS - 1, (double)loads[EXPERTS - 1]);
    tap_ok(balanced, "%s dp %d ep %d, %s: each step moves the bias by gamma against its load", schedule, dp, ep, how);
    dp_reference_destroy(ref);
    dp_runtime_destroy(rt);
}

int main(void)
{
    static const char *const schedules[] = {"dualpipe", "dualpipev", "1f1b", "zb1p", "interleaved-1f1b", "gpipe"};
    for (size_t i = 0; i < sizeof schedules / sizeof schedules[0]; i++) {
        run(schedules[i], 1, 1, 1);
        run(schedules[i], 1, 1, 0);
        /* expert parallelism: the experts spread over 2 and 4 ranks, bit-equal all the same */
        run(schedules[i], 1, 2, 1);
        run(schedules[i], 1, 4, 0);
    }
    run("dualpipe", 2, 1, 1);
    run("dualpipev", 2, 1, 0);
    run("dualpipe", 2, 2, 0);
    run("1f1b", 1, 8, 1);
    return tap_done();
}
