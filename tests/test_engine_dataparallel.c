/* test_engine_dataparallel.c: data parallelism (dp_runtime_config.dp). After every step each
 * replica's every tensor (value, gradient, the optimizer's m and v) is bit-identical to
 * replica 0's and to the single-rank reference fed the same global batch, for every kind of
 * schedule; the global batch is split replica by replica and its gradient is the sum over all
 * of its micro-batches (as one pipeline fed the whole batch would make it, not a mean over the
 * replicas); writes reach every replica; inference covers every replica's micro-batches;
 * impossible layouts are refused. The groups' splits and all-reduces go through the link, so
 * the same run over the mpi link (its ranks threads of this process) is bit-equal too. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/mpi_skip.h"
#include "engine/reference.h"
#include "engine/runtime.h"
#include "tests/tap.h"

static const char *link_name; /* NULL: the driver's own; "mpi" */

static dp_runtime_config config(const char *schedule, int ranks, int dp, int chunks, dp_optimizer_kind opt)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = schedule, c.ranks = ranks, c.dp = dp, c.chunks = chunks;
    c.model.hidden = 8, c.model.ffn = 24, c.model.tokens = 3, c.model.layers_per_stage = 1;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 9;
    c.optimizer.kind = opt, c.optimizer.lr = 1e-2f;
    if (opt == DP_OPT_SGD) c.optimizer.momentum = 0.9f;
    c.threads_per_rank = 1;
    c.timeout_ms = 20000;
    c.record_times = 1;
    c.link = link_name;
    return c;
}

static int replicas_of(const dp_runtime_config *c) { return c->dp > 1 ? c->dp : 1; }

/* The global batch of a step: every replica's micro-batches. */
static float *batch(const dp_runtime_config *c, uint64_t stream)
{
    size_t n = (size_t)replicas_of(c) * c->chunks * c->model.tokens * c->model.hidden;
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = dp_counter_uniform(31, stream, i) - 0.5f;
    return v;
}

static const char *const kind_names[] = {"value", "gradient", "m", "v"}; /* as dp_tensor_kind */

static int bits_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* Every tensor kind of every parameter of every copy, in every replica, against the
 * reference's: counts the tensors that differ (and says which first). */
static int state_differences(dp_runtime *rt, dp_reference *ref, int *compared)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    int bad = 0;
    *compared = 0;
    for (int stage = 0; stage < s->num_stages; stage++)
        for (int i = 0; i < dp_runtime_num_params(rt, stage); i++)
            for (int copy = 0; copy < s->num_pipes; copy++)
                for (int k = DP_TENSOR_VALUE; k <= DP_TENSOR_V; k++) {
                    size_t n = 0;
                    char name[32];
                    dp_runtime_read_tensor(rt, stage, copy, i, k, NULL, &n, name);
                    float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
                    if (dp_reference_read_tensor(ref, stage, copy, i, k, want, NULL, NULL) != DP_OK) bad++;
                    for (int rep = 0; rep < dp_runtime_replicas(rt); rep++) {
                        int same = dp_runtime_read_replica_tensor(rt, rep, stage, copy, i, k, got) == DP_OK &&
                                   bits_equal(got, want, n);
                        if (!same && !bad++)
                            tap_diag("first difference: replica %d stage %d %s (copy %d) %s", rep, stage, name, copy,
                                     kind_names[k]);
                        ++*compared;
                    }
                    free(want), free(got);
                }
    return bad;
}

/* ----------------------------------------------------------------------------
 * training equals the reference, every replica */

static void check_training(const char *schedule, int ranks, int dp, int chunks, dp_optimizer_kind opt)
{
    dp_runtime_config c = config(schedule, ranks, dp, chunks, opt);
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK && dp_reference_create(&c, &ref) == DP_OK,
                "%s dp %d x pp %d%s: runtime and reference start", schedule, dp, ranks,
                link_name ? ", mpi link" : "")) {
        tap_diag("%s", dp_last_error());
        dp_runtime_destroy(rt);
        return;
    }
    const dp_schedule *s = dp_runtime_schedule(rt);
    int world = dp * s->num_ranks;
    tap_ok(dp_runtime_replicas(rt) == dp && dp_runtime_times(rt, world - 1) && !dp_runtime_times(rt, world),
           "%s: %d replicas, %d world ranks, each with its times", schedule, dp, world);
    size_t mbs = (size_t)dp * chunks;
    float *losses = malloc(sizeof(float) * mbs), *ref_losses = malloc(sizeof(float) * mbs);
    int losses_equal = 1, state_bad = 0, compared = 0, ran = 1;
    for (int step = 1; step <= 3 && ran; step++) {
        float *x = batch(&c, (uint64_t)step), *y = batch(&c, 100 + (uint64_t)step);
        for (size_t k = 0; k < mbs; k++) losses[k] = ref_losses[k] = -1.0f;
        ran = dp_runtime_train_step(rt, x, y, losses) == DP_OK && dp_reference_train_step(ref, x, y, ref_losses) == DP_OK;
        if (!ran) tap_diag("step %d: %s", step, dp_last_error());
        losses_equal &= ran && bits_equal(losses, ref_losses, mbs);
        for (size_t k = 0; k < mbs; k++) losses_equal &= losses[k] > 0;
        if (ran) state_bad += state_differences(rt, ref, &compared);
        free(x), free(y);
    }
    tap_ok(ran && losses_equal, "%s dp %d: all %zu micro-batches' losses reach the root, bit-equal to the reference's",
           schedule, dp, mbs);
    tap_ok(ran && state_bad == 0 && compared > 0,
           "%s dp %d x pp %d, %s: every replica's values, gradients and moments bit-equal to the reference's after "
           "each of 3 steps (%d tensors a step, %d differ)",
           schedule, dp, ranks, opt == DP_OPT_SGD ? "sgd" : "adamw", compared, state_bad);
    free(losses), free(ref_losses);
    dp_reference_destroy(ref);
    dp_runtime_destroy(rt);
}

/* ----------------------------------------------------------------------------
 * the global batch: split by replica, gradients summed over all of it */

static void check_global_batch(void)
{
    /* dp 2 x 4 micro-batches against one pipeline of the same 8: the same losses (each
     * micro-batch's forward is the same arithmetic) and the same gradient up to the grouping of
     * its sum, so a mean over the replicas (half the sum) or micro-batches fed to the wrong
     * replica would show */
    dp_runtime_config c2 = config("1f1b", 2, 2, 4, DP_OPT_NONE), c1 = config("1f1b", 2, 1, 8, DP_OPT_NONE);
    dp_runtime *dp2 = NULL, *dp1 = NULL;
    if (!tap_ok(dp_runtime_create(&c2, &dp2) == DP_OK && dp_runtime_create(&c1, &dp1) == DP_OK,
                "global batch: dp 2 x 4 and dp 1 x 8 runtimes start")) {
        tap_diag("%s", dp_last_error());
        dp_runtime_destroy(dp2);
        return;
    }
    float *x = batch(&c1, 7), *y = batch(&c1, 8), l2[8], l1[8];
    int ran = dp_runtime_train_step(dp2, x, y, l2) == DP_OK && dp_runtime_train_step(dp1, x, y, l1) == DP_OK;
    tap_ok(ran && bits_equal(l2, l1, 8), "global batch: replica d runs micro-batches 4d .. 4d + 3 (losses as one pipeline's)");
    double worst = 0;
    const dp_schedule *s = dp_runtime_schedule(dp1);
    for (int stage = 0; ran && stage < s->num_stages; stage++)
        for (int i = 0; i < dp_runtime_num_params(dp1, stage); i++) {
            size_t n = 0;
            dp_runtime_read_tensor(dp1, stage, 0, i, DP_TENSOR_GRAD, NULL, &n, NULL);
            float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
            dp_runtime_read_tensor(dp2, stage, 0, i, DP_TENSOR_GRAD, a, NULL, NULL);
            dp_runtime_read_tensor(dp1, stage, 0, i, DP_TENSOR_GRAD, b, NULL, NULL);
            for (size_t e = 0; e < n; e++) {
                double d = fabs((double)a[e] - b[e]) / (1e-6 + fabs((double)b[e]));
                if (!(d <= worst)) worst = d; /* NaN too */
            }
            free(a), free(b);
        }
    tap_ok(ran && worst < 1e-4, "global batch: the gradient is the sum over both replicas' micro-batches, as one "
                                "pipeline's over all 8 (largest relative difference %.3g, the sum's grouping)", worst);
    free(x), free(y);
    dp_runtime_destroy(dp2);
    dp_runtime_destroy(dp1);
}

/* ----------------------------------------------------------------------------
 * the state API: writes go to every replica; inference */

static void check_writes_and_inference(void)
{
    dp_runtime_config c = config("dualpipe", 2, 3, 4, DP_OPT_ADAMW);
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    if (!tap_ok(dp_runtime_create(&c, &rt) == DP_OK && dp_reference_create(&c, &ref) == DP_OK,
                "writes: dualpipe dp 3 starts")) {
        tap_diag("%s", dp_last_error());
        dp_runtime_destroy(rt);
        return;
    }
    size_t n = 0;
    dp_runtime_read_tensor(rt, 1, 1, 0, DP_TENSOR_VALUE, NULL, &n, NULL);
    float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    for (size_t e = 0; e < n; e++) want[e] = dp_counter_uniform(3, 4, e);
    int ok = dp_runtime_write_tensor(rt, 1, 1, 0, DP_TENSOR_VALUE, want, n) == DP_OK &&
             dp_reference_write_tensor(ref, 1, 1, 0, DP_TENSOR_VALUE, want, n) == DP_OK;
    for (int rep = 0; rep < 3; rep++)
        ok &= dp_runtime_read_replica_tensor(rt, rep, 1, 1, 0, DP_TENSOR_VALUE, got) == DP_OK && bits_equal(got, want, n);
    tap_ok(ok, "a written tensor reads back from each of the 3 replicas");
    dp_status st = dp_runtime_read_replica_tensor(rt, 3, 0, 0, 0, DP_TENSOR_VALUE, got);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "no replica 3"), "replica 3 of 3 is refused (%s)",
           dp_last_error());

    size_t act = (size_t)c.model.tokens * c.model.hidden, mbs = 3 * (size_t)c.chunks;
    float *x = batch(&c, 55), *out = malloc(sizeof(float) * mbs * act), *ref_out = malloc(sizeof(float) * mbs * act);
    for (size_t e = 0; e < mbs * act; e++) out[e] = ref_out[e] = -7.0f;
    int ran = dp_runtime_infer(rt, x, out) == DP_OK && dp_reference_infer(ref, x, ref_out) == DP_OK;
    int filled = 1;
    for (size_t e = 0; e < mbs * act; e++) filled &= out[e] != -7.0f;
    tap_ok(ran && filled && bits_equal(out, ref_out, mbs * act),
           "inference: every replica's outputs reach the root, bit-equal to the reference's (with the written tensor)");
    free(x), free(out), free(ref_out), free(want), free(got);
    dp_reference_destroy(ref);
    dp_runtime_destroy(rt);
}

/* ----------------------------------------------------------------------------
 * refused layouts */

static void check_refusals(void)
{
    dp_runtime_config c = config("1f1b", 2, -1, 4, DP_OPT_ADAMW);
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    tap_ok(st == DP_ERR_INVALID && !rt && strstr(dp_last_error(), "got -1"), "dp -1 is refused (%s)", dp_last_error());
    st = dp_reference_create(&c, &ref);
    tap_ok(st == DP_ERR_INVALID && !ref, "and by the reference (%s)", dp_last_error());
    c.dp = 513;
    st = dp_runtime_create(&c, &rt);
    tap_ok(st == DP_ERR_INVALID && !rt && strstr(dp_last_error(), "1026 ranks"),
           "dp 513 x pp 2, more ranks than one process runs, is refused (%s)", dp_last_error());
    c.dp = 0;
    st = dp_runtime_create(&c, &rt);
    tap_ok(st == DP_OK && dp_runtime_replicas(rt) == 1, "dp 0 means one replica");
    dp_runtime_destroy(rt);
}

int main(void)
{
    check_training("dualpipe", 2, 2, 4, DP_OPT_ADAMW);
    check_training("dualpipe", 4, 2, 8, DP_OPT_SGD);
    check_training("dualpipev", 2, 3, 4, DP_OPT_ADAMW);
    check_training("1f1b", 2, 2, 4, DP_OPT_ADAMW);
    check_training("zb1p", 2, 3, 4, DP_OPT_SGD);
    check_training("interleaved-1f1b", 2, 2, 4, DP_OPT_ADAMW);
    check_training("gpipe", 1, 4, 2, DP_OPT_ADAMW);
    check_global_batch();
    check_writes_and_inference();
    check_refusals();
    int process, processes, local_rank;
    if (mpi_test_skip()) {
        tap_ok(1, "data parallelism over the mpi link # SKIP %s", mpi_test_skip());
    } else if (dp_mpi_start(NULL, NULL, &process, &processes, &local_rank) != DP_OK) {
        tap_ok(1, "data parallelism over the mpi link # SKIP MPI did not start: %s", dp_last_error());
    } else {
        link_name = "mpi";
        check_training("dualpipe", 2, 2, 4, DP_OPT_ADAMW);
        check_training("dualpipev", 2, 3, 4, DP_OPT_ADAMW);
        dp_mpi_finish(0);
    }
    return tap_done();
}
