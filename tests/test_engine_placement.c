/* test_engine_placement.c: MoE experts placed by an EPLB plan (dp_moe_config's plan_*), on one
 * stage of the CPU driver. The replica a row goes to: every row of expert-parallel rank s's
 * micro-batch that chose an expert goes to its replica s mod count, in the plan's replica order
 * (that slot's gradient is the plan-less layer's, bit for bit; the reduction gives it to every
 * replica); a replicated placement trains bit-equal to no plan over AdamW steps; replicas
 * identical after steps of AdamW; a plan that only moves experts gives the plan-less layer's
 * bits; bad plans refused. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/model.h"
#include "tests/tap.h"

enum { HIDDEN = 8, TOKENS = 6, FFN = 8, SLOTS = 3 };
/* one expert on three slots; slot p is replica rank[p]: replica 0 is slot 1, 1 slot 2, 2 slot 0 */
static const int32_t one_expert[SLOTS] = {0, 0, 0};
static const int32_t ranks[SLOTS] = {2, 0, 1};

static const dp_driver *drv;
static dp_device *dev;

static dp_model_config config(int experts, int topk, const int32_t *phy2log, const int32_t *replica, int slots)
{
    dp_model_config c;
    memset(&c, 0, sizeof c);
    c.hidden = HIDDEN, c.ffn = FFN, c.tokens = TOKENS, c.layers_per_stage = 1, c.block = DP_BLOCK_RESIDUAL;
    c.seed = 5;
    c.moe = (dp_moe_config){.experts = experts, .topk = topk, .expert_hidden = 4, .route_scale = 1.5f,
                            .bias_update_speed = 0.0f, .moe_layers_set = 1};
    c.moe.moe_layers[0] = 1;
    if (phy2log) c.moe.plan_layers = 1, c.moe.plan_slots = slots, c.moe.plan_ranks = 1;
    c.moe.plan_phy2log = phy2log, c.moe.plan_replica = replica;
    return c;
}

static dp_stage *stage(const dp_model_config *c)
{
    dp_stage_env env = {.ops = drv->device, .dev = dev};
    dp_stage *st = NULL;
    if (dp_stage_create(&env, c, 0, 2, &st) != DP_OK) tap_diag("stage: %s", dp_last_error());
    return st;
}

static void to_dev(void *d, const float *h, size_t n)
{
    drv->device->copy(dev, d, h, n * sizeof(float), DP_COPY_HOST_TO_DEVICE, NULL);
}

static float *tensor(dp_stage *st, int i, dp_tensor_kind which, size_t *n)
{
    dp_param_view v;
    dp_stage_param(st, i, &v);
    const float *src = which == DP_TENSOR_VALUE ? v.value : which == DP_TENSOR_GRAD ? v.grad
                       : which == DP_TENSOR_M   ? v.m
                                                : v.v;
    float *h = calloc(v.count + 1, sizeof(float));
    if (src) drv->device->copy(dev, h, src, v.count * sizeof(float), DP_COPY_DEVICE_TO_HOST, NULL);
    *n = v.count;
    return h;
}

/* One micro-batch forward and backward (gradients accumulated, not reduced); `keep` masks
 * the tokens (NULL: all): the others' input and output gradient are zero. */
static int pass(dp_stage *st, const int *keep)
{
    float x[TOKENS * HIDDEN], dy[TOKENS * HIDDEN];
    for (int t = 0; t < TOKENS; t++)
        for (int j = 0; j < HIDDEN; j++) {
            int on = !keep || keep[t];
            x[t * HIDDEN + j] = on ? 2.0f * dp_counter_uniform(3, 1, (uint64_t)(t * HIDDEN + j)) : 0.0f;
            dy[t * HIDDEN + j] = on ? dp_counter_uniform(3, 2, (uint64_t)(t * HIDDEN + j)) : 0.0f;
        }
    dp_slot *slot;
    if (dp_stage_slot_get(st, &slot) != DP_OK) return 1;
    to_dev(slot->x, x, TOKENS * HIDDEN);
    dp_status s = dp_stage_forward(st, NULL, slot, NULL);
    if (s == DP_OK) to_dev(slot->dy, dy, TOKENS * HIDDEN);
    if (s == DP_OK) s = dp_stage_backward_input(st, NULL, slot, 1);
    if (s == DP_OK) s = dp_stage_backward_weight(st, NULL, slot);
    dp_stage_slot_put(st, slot);
    if (s != DP_OK) tap_diag("pass: %s", dp_last_error());
    return s != DP_OK;
}

/* the first expert parameter (norm, gate, gate.bias before it) of slot p, matrix w */
static int expert_param(int p, int w) { return 3 + 3 * p + w; }

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        if (d < 0) d = -d;
        if (d > m) m = d;
    }
    return m;
}

/* Source s (the expert-parallel rank whose micro-batch runs, dp_stage_set_ep_source) sends all
 * its rows of an expert to replica s mod 3: that slot's gradient is the plan-less layer's, bit for
 * bit, and the others' are zero; after the reduction every slot holds it. */
static void replica_choice(void)
{
    dp_model_config cp = config(1, 1, one_expert, ranks, SLOTS), cn = config(1, 1, NULL, NULL, 0);
    dp_stage *plain = stage(&cn);
    int failed = !plain || pass(plain, NULL);
    tap_ok(!failed, "a plan-less stage with one expert runs a micro-batch");
    if (failed) {
        dp_stage_destroy(plain);
        return;
    }
    for (int src = 0; src < 4; src++) {
        dp_stage *planned = stage(&cp);
        if (!planned) {
            tap_ok(0, "a stage with one expert on three slots");
            continue;
        }
        dp_stage_set_ep_source(planned, src);
        int bad = pass(planned, NULL), chosen = -1;
        for (int p = 0; p < SLOTS; p++)
            if (ranks[p] == src % SLOTS) chosen = p;
        int differ = 0, nonzero = 0, after = 0;
        for (int w = 0; w < 3 && !bad; w++) {
            size_t n, m;
            float *want = tensor(plain, expert_param(0, w), DP_TENSOR_GRAD, &n);
            for (int p = 0; p < SLOTS; p++) {
                float *got = tensor(planned, expert_param(p, w), DP_TENSOR_GRAD, &m);
                if (p == chosen) differ += n != m || memcmp(got, want, n * sizeof(float)) != 0;
                else nonzero += max_diff(got, (float[64]){0}, m < 64 ? m : 64) != 0;
                free(got);
            }
            free(want);
        }
        bad |= dp_stage_reduce_expert_grads(planned, NULL) != DP_OK;
        for (int w = 0; w < 3 && !bad; w++) {
            size_t n, m;
            float *want = tensor(plain, expert_param(0, w), DP_TENSOR_GRAD, &n);
            for (int p = 0; p < SLOTS; p++) {
                float *got = tensor(planned, expert_param(p, w), DP_TENSOR_GRAD, &m);
                after += n != m || memcmp(got, want, n * sizeof(float)) != 0;
                free(got);
            }
            free(want);
        }
        tap_ok(!bad && differ == 0 && nonzero == 0 && after == 0,
               "source %d: its rows all on replica %d (slot %d), whose gradient is the plan-less layer's (%d "
               "matrices differ, %d other slots nonzero); after the reduction every slot's (%d differ)", src,
               src % SLOTS, chosen, differ, nonzero, after);
        dp_stage_destroy(planned);
    }
    dp_stage_destroy(plain);
}

/* A replicated placement trains as no plan: after AdamW steps whose micro-batches come from
 * several sources, every slot's value, gradient and moments are its expert's in the plan-less
 * layer, bit for bit. */
static void replicated_as_plain(void)
{
    static const int32_t phy2log[7] = {3, 1, 0, 1, 2, 3, 3};
    dp_model_config cp = config(4, 2, phy2log, NULL, 7), cn = config(4, 2, NULL, NULL, 0);
    dp_stage *a = stage(&cp), *b = stage(&cn);
    dp_optimizer_config o = {.kind = DP_OPT_ADAMW, .lr = 1e-2f};
    dp_optimizer_config_defaults(&o);
    int failed = !a || !b;
    for (int step = 1; step <= 3 && !failed; step++) {
        dp_stage *both[2] = {a, b};
        for (int k = 0; k < 2; k++) {
            failed |= dp_stage_zero_grad(both[k], NULL) != DP_OK;
            dp_stage_set_ep_source(both[k], step);
            failed |= pass(both[k], NULL);
            failed |= dp_stage_reduce_expert_grads(both[k], NULL) != DP_OK;
            failed |= dp_stage_optimizer_step(both[k], NULL, &o, step) != DP_OK;
        }
    }
    int differ = 0;
    for (int p = 0; p < 7 && !failed; p++)
        for (int w = 0; w < 3; w++)
            for (int k = 0; k < 4; k++) {
                size_t n, m;
                float *x = tensor(a, expert_param(p, w), (dp_tensor_kind)k, &n);
                float *y = tensor(b, expert_param(phy2log[p], w), (dp_tensor_kind)k, &m);
                differ += n != m || memcmp(x, y, n * sizeof(float)) != 0;
                free(x), free(y);
            }
    tap_ok(!failed && differ == 0, "experts 1 and 3 replicated, three AdamW steps from sources 1, 2, 3: every slot's "
           "value, gradient, m and v bit-equal to no plan (%d tensors differ)", differ);
    dp_stage_destroy(a);
    dp_stage_destroy(b);
}

/* Steps of AdamW keep the replicas identical: value, gradient and both moments. */
static void replicas_stay_identical(void)
{
    /* four experts, top 2; experts 1 and 3 replicated, slots mixed */
    static const int32_t phy2log[7] = {3, 1, 0, 1, 2, 3, 3};
    dp_model_config c = config(4, 2, phy2log, NULL, 7);
    dp_stage *st = stage(&c);
    dp_optimizer_config o = {.kind = DP_OPT_ADAMW, .lr = 1e-2f};
    dp_optimizer_config_defaults(&o);
    int failed = !st;
    for (int step = 1; step <= 3 && !failed; step++) {
        failed |= dp_stage_zero_grad(st, NULL) != DP_OK;
        failed |= pass(st, NULL);
        failed |= dp_stage_reduce_expert_grads(st, NULL) != DP_OK;
        failed |= dp_stage_optimizer_step(st, NULL, &o, step) != DP_OK;
    }
    tap_ok(!failed, "three AdamW steps with replicated experts");
    int differ = 0, moved = 0;
    for (int p = 0; p < 7 && !failed; p++)
        for (int q = p + 1; q < 7; q++) {
            if (phy2log[p] != phy2log[q]) continue;
            for (int w = 0; w < 3; w++)
                for (int k = 0; k < 4; k++) {
                    size_t n;
                    float *a = tensor(st, expert_param(p, w), (dp_tensor_kind)k, &n);
                    float *b = tensor(st, expert_param(q, w), (dp_tensor_kind)k, &n);
                    differ += memcmp(a, b, n * sizeof(float)) != 0;
                    if (k == DP_TENSOR_GRAD) moved += max_diff(a, (float[64]){0}, n < 64 ? n : 64) > 0;
                    free(a), free(b);
                }
        }
    tap_ok(!failed && differ == 0 && moved > 0, "the replicas of experts 1 and 3 are identical after the steps (%d "
           "tensors differ; %d replica gradients nonzero)", differ, moved);
    char name[64];
    dp_param_view v;
    dp_stage_param(st, expert_param(4, 0), &v);
    snprintf(name, sizeof name, "%s", v.name);
    tap_is_str(name, "block0.experts.2.w1", "slot 4 is named after the logical expert it holds");
    tap_is_int(dp_stage_num_whole_params(st), 3 + 3 * 4, "the whole list has each logical expert once");
    tap_is_int(dp_stage_find_param(st, 3 + 3 * 3, 0), expert_param(0, 0), "expert 3's w1 is first on slot 0");
    tap_is_int(dp_stage_find_param(st, 3 + 3 * 3, expert_param(0, 0) + 1), expert_param(5, 0), "then on slot 5");
    dp_stage_destroy(st);
}

/* A plan that moves experts (one slot each) gives the plan-less layer's bits. */
static void moves_only(void)
{
    static const int32_t moved[4] = {2, 0, 3, 1};
    dp_model_config cp = config(4, 2, moved, NULL, 4), cn = config(4, 2, NULL, NULL, 0);
    dp_stage *a = stage(&cp), *b = stage(&cn);
    int failed = !a || !b || pass(a, NULL) || pass(b, NULL);
    failed = failed || dp_stage_reduce_expert_grads(a, NULL) != DP_OK;
    int differ = 0;
    for (int p = 0; p < 4 && !failed; p++)
        for (int w = 0; w < 3; w++)
            for (int k = 0; k < 2; k++) {
                size_t n, m;
                float *x = tensor(a, expert_param(p, w), (dp_tensor_kind)k, &n);
                float *y = tensor(b, expert_param(moved[p], w), (dp_tensor_kind)k, &m);
                differ += n != m || memcmp(x, y, n * sizeof(float)) != 0;
                free(x), free(y);
            }
    tap_ok(!failed && differ == 0, "experts moved by a plan: values and gradients bit-equal to no plan (%d differ)",
           differ);
    dp_stage_destroy(a);
    dp_stage_destroy(b);
}

static void refused(const char *want, dp_model_config c)
{
    dp_stage_env env = {.ops = drv->device, .dev = dev};
    dp_stage *st = NULL;
    dp_status s = dp_stage_create(&env, &c, 0, 2, &st);
    tap_ok(s == DP_ERR_INVALID && strstr(dp_last_error(), want), "refused: %s (%s)", want,
           s == DP_OK ? "created" : dp_last_error());
    dp_stage_destroy(st);
}

static void bad_plans(void)
{
    static const int32_t missing[4] = {0, 1, 1, 0}, outside[4] = {0, 1, 2, 4}, fine[4] = {0, 1, 2, 3};
    static const int32_t two_rows[8] = {0, 1, 2, 3, 3, 2, 1, 0}, five[5] = {0, 0, 1, 2, 3}, twice[5] = {0};
    refused("places no replica of expert 2", config(4, 2, missing, NULL, 4));
    refused("experts are 0 to 3", config(4, 2, outside, NULL, 4));
    dp_model_config c = config(4, 2, fine, NULL, 4);
    c.moe.plan_ranks = 3;
    refused("a multiple of its ranks", c);
    c = config(4, 2, two_rows, NULL, 4);
    c.moe.plan_layers = 2;
    refused("places 2 MoE layer(s), but the model has 1", c);
    c = config(4, 2, five, twice, 5);
    refused("each replica rank once", c);
}

int main(void)
{
    if (dp_driver_load("cpu", &drv) != DP_OK) {
        printf("Bail out! %s\n", dp_last_error());
        return 1;
    }
    dp_device_config dc = {.threads = 1};
    if (drv->device->open(&dc, &dev) != DP_OK) {
        printf("Bail out! %s\n", dp_last_error());
        return 1;
    }
    replica_choice();
    replicated_as_plain();
    replicas_stay_identical();
    moves_only();
    bad_plans();
    drv->device->close(dev);
    return tap_done();
}
