/* test_engine_state.c: the training state API (dp_runtime_read_tensor / write_tensor,
 * step / set_step, and the reference's twins). Written tensors read back bit-equal; a
 * runtime that receives every tensor of another (other schedule, other rank count, same
 * model) then trains exactly as that one does, in fp32 and bf16, under AdamW and SGD with
 * momentum; and handing over less than the whole state is seen to differ, so the check can fail. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/reference.h"
#include "engine/runtime.h"
#include "tests/tap.h"

static dp_runtime_config base_config(const char *schedule, int ranks, dp_dtype dtype, dp_optimizer_kind opt)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = schedule, c.ranks = ranks, c.chunks = 4;
    c.model.hidden = 8, c.model.ffn = 24, c.model.tokens = 3, c.model.layers_per_stage = 2;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 42, c.model.dtype = dtype;
    c.optimizer.kind = opt, c.optimizer.lr = 1e-2f, c.optimizer.weight_decay = 0.01f;
    if (opt == DP_OPT_SGD) c.optimizer.momentum = 0.9f;
    c.threads_per_rank = 1;
    c.timeout_ms = 20000;
    return c;
}

static float *batch(const dp_runtime_config *c, uint64_t stream)
{
    size_t n = (size_t)c->chunks * c->model.tokens * c->model.hidden;
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = dp_counter_uniform(77, stream, i);
    return v;
}

/* A distinct value for every (stage, copy, index, kind, element). */
static float pattern(int stage, int copy, int index, int kind, size_t i)
{
    return dp_counter_uniform(5, (uint64_t)(((stage * 2 + copy) * 64 + index) * 4 + kind), i);
}

/* ----------------------------------------------------------------------------
 * written tensors read back */

static void check_round_trip(void)
{
    dp_runtime_config c = base_config("dualpipe", 2, DP_DTYPE_F32, DP_OPT_ADAMW);
    dp_runtime *rt = NULL;
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK, "round trip: runtime starts")) {
        tap_diag("%s", dp_last_error());
        return;
    }
    const dp_schedule *s = dp_runtime_schedule(rt);
    /* before the first step the optimizer has no state: it reads as zeros, from every rank */
    size_t n = 0;
    float buf[24 * 8];
    int zeros = 1, read = 0;
    for (int stage = 0; stage < s->num_stages; stage++)
        for (int copy = 0; copy < s->num_pipes; copy++)
            for (int k = DP_TENSOR_M; k <= DP_TENSOR_V; k++) {
                for (size_t i = 0; i < 24 * 8; i++) buf[i] = 1.0f;
                zeros &= dp_runtime_read_tensor(rt, stage, copy, 0, k, buf, &n, NULL) == DP_OK && n == 24 * 8;
                for (size_t i = 0; zeros && i < n; i++) zeros = buf[i] == 0.0f;
                read++;
            }
    tap_ok(zeros && read == 8, "optimizer state not yet allocated reads as zeros (%d tensors)", read);

    int ok = 1, checked = 0;
    for (int pass = 0; pass < 2; pass++) /* write everything, then read everything */
        for (int stage = 0; stage < s->num_stages; stage++)
            for (int copy = 0; copy < s->num_pipes; copy++)
                for (int i = 0; i < dp_runtime_num_params(rt, stage); i++)
                    for (int k = DP_TENSOR_VALUE; k <= DP_TENSOR_V; k++) {
                        char name[32];
                        if (dp_runtime_read_tensor(rt, stage, copy, i, k, NULL, &n, name) != DP_OK) ok = 0;
                        float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
                        for (size_t e = 0; e < n; e++) want[e] = pattern(stage, copy, i, k, e);
                        if (pass == 0) {
                            ok &= dp_runtime_write_tensor(rt, stage, copy, i, k, want, n) == DP_OK;
                        } else {
                            ok &= dp_runtime_read_tensor(rt, stage, copy, i, k, got, NULL, NULL) == DP_OK;
                            ok &= memcmp(got, want, sizeof(float) * n) == 0;
                            checked++;
                        }
                        free(want), free(got);
                    }
    tap_ok(ok && checked == 2 * 2 * 6 * 4, "%d tensors (value, grad, m, v of every copy) read back bit-equal", checked);

    float one = 0;
    tap_is_int(dp_runtime_write_tensor(rt, 0, 0, 0, DP_TENSOR_VALUE, &one, 1), DP_ERR_INVALID,
               "a write of the wrong size is refused");
    tap_is_int(dp_runtime_read_tensor(rt, 0, 2, 0, DP_TENSOR_VALUE, NULL, &n, NULL), DP_ERR_INVALID,
               "a copy the schedule does not have is refused");
    tap_is_int(dp_runtime_read_tensor(rt, 0, 0, 0, (dp_tensor_kind)4, NULL, &n, NULL), DP_ERR_INVALID,
               "an unknown tensor kind is refused");
    tap_is_int(dp_runtime_set_step(rt, -1), DP_ERR_INVALID, "a negative step count is refused");
    dp_runtime_destroy(rt);
}

/* ----------------------------------------------------------------------------
 * handing a whole state over */

enum { HAND_ALL, HAND_VALUES_ONLY, HAND_NO_STEP };

/* Copies the training state of `from` into `to`: every tensor of every copy of every stage
 * (values only, or everything but the step count, for the controls). */
static int hand_over(dp_runtime *from, dp_runtime *to, int what)
{
    const dp_schedule *a = dp_runtime_schedule(from), *b = dp_runtime_schedule(to);
    int ok = a->num_stages == b->num_stages;
    for (int stage = 0; ok && stage < a->num_stages; stage++)
        for (int copy = 0; copy < b->num_pipes; copy++)
            for (int i = 0; i < dp_runtime_num_params(from, stage); i++)
                for (int k = DP_TENSOR_VALUE; k <= DP_TENSOR_V; k++) {
                    if (what == HAND_VALUES_ONLY && k != DP_TENSOR_VALUE) continue;
                    size_t n;
                    ok &= dp_runtime_read_tensor(from, stage, copy % a->num_pipes, i, k, NULL, &n, NULL) == DP_OK;
                    float *v = malloc(sizeof(float) * n);
                    ok &= dp_runtime_read_tensor(from, stage, copy % a->num_pipes, i, k, v, NULL, NULL) == DP_OK;
                    ok &= dp_runtime_write_tensor(to, stage, copy, i, k, v, n) == DP_OK;
                    free(v);
                }
    if (what != HAND_NO_STEP) ok &= dp_runtime_set_step(to, dp_runtime_step(from)) == DP_OK;
    return ok;
}

/* Every value, m and v of copy 0 equal in both. */
static int states_equal(dp_runtime *a, dp_runtime *b)
{
    const dp_schedule *s = dp_runtime_schedule(a);
    int same = 1;
    for (int stage = 0; stage < s->num_stages; stage++)
        for (int i = 0; i < dp_runtime_num_params(a, stage); i++)
            for (int k = DP_TENSOR_VALUE; k <= DP_TENSOR_V; k++) {
                if (k == DP_TENSOR_GRAD) continue;
                size_t n;
                dp_runtime_read_tensor(a, stage, 0, i, k, NULL, &n, NULL);
                float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
                same &= dp_runtime_read_tensor(a, stage, 0, i, k, x, NULL, NULL) == DP_OK &&
                        dp_runtime_read_tensor(b, stage, 0, i, k, y, NULL, NULL) == DP_OK &&
                        memcmp(x, y, sizeof(float) * n) == 0;
                free(x), free(y);
            }
    return same;
}

/* A (zb1p on 4 ranks) trains two steps; B (dualpipev on 2 ranks: the same 4 stages) trains
 * one on other data, then takes A's state; one more step on each must give the same bits. */
static void check_hand_over(dp_dtype dtype, dp_optimizer_kind opt, int what)
{
    const char *label = what == HAND_ALL ? "whole state" : what == HAND_VALUES_ONLY ? "values only" : "no step count";
    char desc[96];
    snprintf(desc, sizeof desc, "%s %s, %s", dtype == DP_DTYPE_BF16 ? "bf16" : "fp32",
             opt == DP_OPT_ADAMW ? "AdamW" : "SGD momentum", label);
    dp_runtime_config ca = base_config("zb1p", 4, dtype, opt), cb = base_config("dualpipev", 2, dtype, opt);
    dp_runtime *a = NULL, *b = NULL;
    dp_status st = dp_runtime_create(&ca, &a);
    if (st == DP_OK) st = dp_runtime_create(&cb, &b);
    float *x1 = batch(&ca, 1), *t1 = batch(&ca, 2), *x2 = batch(&ca, 3), *t2 = batch(&ca, 4);
    float la[4], lb[4];
    for (int i = 0; st == DP_OK && i < 2; i++) st = dp_runtime_train_step(a, x1, t1, la);
    if (st == DP_OK) st = dp_runtime_train_step(b, x2, t2, lb);
    int handed = st == DP_OK && hand_over(a, b, what);
    if (st == DP_OK) st = dp_runtime_train_step(a, x2, t2, la);
    if (st == DP_OK) st = dp_runtime_train_step(b, x2, t2, lb);
    if (st != DP_OK) tap_diag("%s", dp_last_error());
    int same_loss = st == DP_OK && memcmp(la, lb, sizeof la) == 0;
    int same_state = st == DP_OK && states_equal(a, b);
    if (what == HAND_ALL)
        tap_ok(handed && same_loss && same_state,
               "%s: after the hand-over, one step gives bit-equal losses, values, m and v", desc);
    else
        tap_ok(handed && st == DP_OK && !same_state, "%s: the states part (the check can fail)", desc);
    dp_runtime_destroy(a), dp_runtime_destroy(b);
    free(x1), free(t1), free(x2), free(t2);
}

/* The reference takes a DualPipe runtime's state (both copies) and then steps as it does. */
static void check_reference_takes_state(void)
{
    dp_runtime_config c = base_config("dualpipe", 4, DP_DTYPE_BF16, DP_OPT_ADAMW);
    c.chunks = 8;
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    if (st == DP_OK) st = dp_reference_create(&c, &ref);
    float *x1 = batch(&c, 1), *t1 = batch(&c, 2), *x2 = batch(&c, 3), *t2 = batch(&c, 4);
    float l1[8], l2[8];
    for (int i = 0; st == DP_OK && i < 2; i++) st = dp_runtime_train_step(rt, x1, t1, l1);
    if (st != DP_OK) tap_diag("%s", dp_last_error());
    const dp_schedule *s = st == DP_OK ? dp_runtime_schedule(rt) : NULL;
    int ok = st == DP_OK;
    for (int stage = 0; ok && stage < s->num_stages; stage++)
        for (int copy = 0; copy < s->num_pipes; copy++)
            for (int i = 0; i < dp_runtime_num_params(rt, stage); i++)
                for (int k = DP_TENSOR_VALUE; k <= DP_TENSOR_V; k++) {
                    size_t n;
                    char name[32], rname[32];
                    ok &= dp_runtime_read_tensor(rt, stage, copy, i, k, NULL, &n, name) == DP_OK;
                    float *v = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
                    ok &= dp_runtime_read_tensor(rt, stage, copy, i, k, v, NULL, NULL) == DP_OK;
                    ok &= dp_reference_write_tensor(ref, stage, copy, i, k, v, n) == DP_OK;
                    ok &= dp_reference_read_tensor(ref, stage, copy, i, k, back, NULL, rname) == DP_OK;
                    ok &= memcmp(v, back, sizeof(float) * n) == 0 && strcmp(name, rname) == 0;
                    free(v), free(back);
                }
    ok = ok && dp_reference_set_step(ref, dp_runtime_step(rt)) == DP_OK && dp_reference_step(ref) == 2;
    if (ok) st = dp_runtime_train_step(rt, x2, t2, l1);
    if (ok && st == DP_OK) st = dp_reference_train_step(ref, x2, t2, l2);
    if (st != DP_OK) tap_diag("%s", dp_last_error());
    int same = ok && st == DP_OK && memcmp(l1, l2, sizeof l1) == 0;
    for (int stage = 0; same && stage < s->num_stages; stage++)
        for (int i = 0; i < dp_runtime_num_params(rt, stage); i++) {
            size_t n;
            dp_runtime_read_tensor(rt, stage, 1, i, DP_TENSOR_VALUE, NULL, &n, NULL);
            float *p = malloc(sizeof(float) * n), *q = malloc(sizeof(float) * n);
            same &= dp_runtime_read_tensor(rt, stage, 1, i, DP_TENSOR_VALUE, p, NULL, NULL) == DP_OK &&
                    dp_reference_read_tensor(ref, stage, 1, i, DP_TENSOR_VALUE, q, NULL, NULL) == DP_OK &&
                    memcmp(p, q, sizeof(float) * n) == 0;
            free(p), free(q);
        }
    tap_ok(same, "the reference, given a bf16 DualPipe run's state, steps to the same losses and values");
    dp_runtime_destroy(rt);
    dp_reference_destroy(ref);
    free(x1), free(t1), free(x2), free(t2);
}

int main(void)
{
    tap_plan(15);
    check_round_trip();
    for (int d = 0; d < 2; d++)
        for (int o = 0; o < 2; o++)
            check_hand_over(d ? DP_DTYPE_BF16 : DP_DTYPE_F32, o ? DP_OPT_SGD : DP_OPT_ADAMW, HAND_ALL);
    check_hand_over(DP_DTYPE_F32, DP_OPT_ADAMW, HAND_VALUES_ONLY);
    check_hand_over(DP_DTYPE_F32, DP_OPT_ADAMW, HAND_NO_STEP);
    check_hand_over(DP_DTYPE_F32, DP_OPT_SGD, HAND_VALUES_ONLY);
    check_reference_takes_state();
    return tap_done();
}
