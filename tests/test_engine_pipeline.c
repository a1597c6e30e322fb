/* test_engine_pipeline.c: the proof that pipelining changes nothing. For every schedule,
 * several pipeline sizes, two micro-batch counts and both block kinds, a training step on
 * rank threads gives per-micro-batch losses, gradients and (after 10 AdamW steps) parameters
 * bit-for-bit equal to the single-rank sequential reference, and inference outputs too.
 * Gradients are bit-exact, not merely close: every copy of a stage folds its micro-batches in
 * micro-batch order (the schedules run each stage's weight gradients in that order), the two
 * copies of a DualPipe stage add with one commutative sum, and every kernel is deterministic.
 * The same holds in bf16 (mixed precision), which is run too; and a batch loaded once and
 * trained on from the devices gives the same bits as the same batch passed to every step. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/reference.h"
#include "engine/runtime.h"
#include "tests/tap.h"
#include "tools/compare.h"

typedef struct {
    const char *schedule;
    int ranks;
    int chunks;
} shape;

static float *make_inputs(const dp_runtime_config *c, uint64_t stream)
{
    size_t n = (size_t)c->chunks * c->model.tokens * c->model.hidden;
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = dp_counter_uniform(1234, stream, i);
    return v;
}

static void *make_targets(const dp_runtime_config *c)
{
    if (c->model.loss == DP_LOSS_MSE) return make_inputs(c, 99);
    int32_t *l = malloc(sizeof(int32_t) * (size_t)c->chunks * c->model.tokens);
    for (int i = 0; i < c->chunks * c->model.tokens; i++) l[i] = (int32_t)((i * 7 + 3) % c->model.hidden);
    return l;
}

/* Every parameter (grad = 0) or gradient (grad = 1) of every copy equals the reference's bits. */
static int params_equal(dp_runtime *rt, dp_reference *ref, int grad, double *worst)
{
    compare_stats s = {0};
    int ok = compare_with_reference(rt, ref, grad, 0, 0, &s) == DP_OK && s.unequal == 0 && s.n > 0;
    *worst = s.max_abs;
    return ok;
}

static void train_both_and_compare(dp_runtime_config *cfg, const char *what, int adam_steps);

static void check_shape(const shape *sh, dp_block_kind block, int layers, dp_loss_kind loss, int adam_steps,
                        dp_dtype dtype)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = sh->schedule;
    c.ranks = sh->ranks;
    c.chunks = sh->chunks;
    c.model.hidden = 8;
    c.model.ffn = 24;
    c.model.tokens = 3;
    c.model.layers_per_stage = layers;
    c.model.block = block;
    c.model.loss = loss;
    c.model.seed = 42;
    c.model.dtype = dtype;
    char what[128];
    snprintf(what, sizeof what, "%s pp %d chunks %d %s x%d %s%s", sh->schedule, sh->ranks, sh->chunks,
             block == DP_BLOCK_MLP ? "mlp" : "residual", layers, loss == DP_LOSS_MSE ? "mse" : "xent",
             dtype == DP_DTYPE_BF16 ? " bf16" : "");
    train_both_and_compare(&c, what, adam_steps);
}

/* Trains c with the runtime and the reference and checks losses, gradients, parameters after
 * adam_steps steps and inference outputs for equal bits. */
static void train_both_and_compare(dp_runtime_config *cfg, const char *what, int adam_steps)
{
    dp_runtime_config c = *cfg;
    c.optimizer.kind = DP_OPT_ADAMW;
    c.optimizer.lr = 1e-2f;
    c.optimizer.weight_decay = 0.01f;
    c.threads_per_rank = 1;
    c.timeout_ms = 20000;
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    if (st == DP_OK) st = dp_reference_create(&c, &ref);
    if (!tap_ok(st == DP_OK, "%s: runtime and reference start", what)) {
        tap_diag("%s", dp_last_error());
        dp_runtime_destroy(rt);
        dp_reference_destroy(ref);
        return;
    }
    float *x = make_inputs(&c, 7);
    void *t = make_targets(&c);
    float *l1 = calloc((size_t)c.chunks, sizeof(float)), *l2 = calloc((size_t)c.chunks, sizeof(float));
    dp_status a = dp_runtime_train_step(rt, x, t, l1);
    dp_status b = dp_reference_train_step(ref, x, t, l2);
    if (a != DP_OK || b != DP_OK) tap_diag("%s", dp_last_error());
    int nonzero = 1;
    for (int k = 0; k < c.chunks; k++) nonzero &= l2[k] > 0;
    tap_ok(a == DP_OK && b == DP_OK && nonzero && memcmp(l1, l2, sizeof(float) * (size_t)c.chunks) == 0,
           "%s: per-micro-batch losses bit-equal to the reference", what);
    double worst;
    tap_ok(params_equal(rt, ref, 1, &worst), "%s: every gradient bit-equal (tolerance 0)", what);
    if (worst > 0) tap_diag("largest gradient difference %g", worst);

    /* steps 2..adam_steps, then parameters */
    int ok = 1;
    for (int step = 2; step <= adam_steps && ok; step++) {
        ok = dp_runtime_train_step(rt, x, t, l1) == DP_OK && dp_reference_train_step(ref, x, t, l2) == DP_OK &&
             memcmp(l1, l2, sizeof(float) * (size_t)c.chunks) == 0;
    }
    if (adam_steps > 1) {
        tap_ok(ok && params_equal(rt, ref, 0, &worst), "%s: parameters bit-equal after %d AdamW steps", what,
               adam_steps);
        if (worst > 0) tap_diag("largest parameter difference %g", worst);
    }

    size_t n = (size_t)c.chunks * c.model.tokens * c.model.hidden;
    float *o1 = malloc(sizeof(float) * n), *o2 = malloc(sizeof(float) * n);
    a = dp_runtime_infer(rt, x, o1);
    b = dp_reference_infer(ref, x, o2);
    tap_ok(a == DP_OK && b == DP_OK && memcmp(o1, o2, sizeof(float) * n) == 0,
           "%s: inference outputs bit-equal", what);
    free(x), free(t), free(l1), free(l2), free(o1), free(o2);
    dp_runtime_destroy(rt);
    dp_reference_destroy(ref);
}

/* A model that mixes kinds layer by layer, within a stage too (as DeepSeek-V3 mixes dense and
 * MoE layers): each layer gets the kind listed for it (its parameter count shows it) and the
 * pipelined run still equals the reference; a list of the wrong length is refused. */
static void check_mixed_layers(void)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = "dualpipev", c.ranks = 2, c.chunks = 6;
    c.model.hidden = 8, c.model.ffn = 24, c.model.tokens = 3, c.model.seed = 11;
    c.model.layers_per_stage = 3;
    c.model.block = DP_BLOCK_RESIDUAL; /* overridden by the list */
    static const dp_block_kind kinds[] = {DP_BLOCK_MLP,      DP_BLOCK_RESIDUAL, DP_BLOCK_RESIDUAL, DP_BLOCK_RESIDUAL,
                                          DP_BLOCK_MLP,      DP_BLOCK_RESIDUAL, DP_BLOCK_MLP,      DP_BLOCK_MLP,
                                          DP_BLOCK_MLP,      DP_BLOCK_RESIDUAL, DP_BLOCK_MLP,      DP_BLOCK_RESIDUAL};
    c.model.num_layer_kinds = 12; /* 4 stages x 3 layers */
    memcpy(c.model.layer_kind, kinds, sizeof kinds);
    dp_runtime *rt = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    int want[4] = {2 + 3 + 3, 3 + 2 + 3, 2 + 2 + 2, 3 + 2 + 3}, got[4] = {0};
    for (int s = 0; s < 4 && st == DP_OK; s++) got[s] = dp_runtime_num_params(rt, s);
    tap_ok(st == DP_OK && memcmp(got, want, sizeof want) == 0,
           "each layer has the kind listed for it: parameters per stage %d %d %d %d (want 8 8 6 8)", got[0], got[1],
           got[2], got[3]);
    dp_runtime_destroy(rt);
    train_both_and_compare(&c, "dualpipev pp 2 chunks 6, mlp and residual layers mixed in each stage", 4);
    c.model.num_layer_kinds = 9;
    st = dp_runtime_create(&c, &rt);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "num_layer_kinds") && strstr(dp_last_error(), "12"),
           "kinds listed for 9 of 12 layers are refused: %s", dp_last_error());
    if (st == DP_OK) dp_runtime_destroy(rt);
    c.model.num_layer_kinds = 12;
    c.model.layer_kind[5] = (dp_block_kind)7;
    st = dp_runtime_create(&c, &rt);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "layer 5"), "an unknown kind is refused, naming its layer: %s",
           dp_last_error());
    if (st == DP_OK) dp_runtime_destroy(rt);
}

/* bf16 really changes the arithmetic: the same model and data give other losses than in
 * fp32, close to them (a few bf16 roundings per layer), and the parameters it reports stay
 * fp32 master values. */
static void check_bf16_is_bf16(void)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = "dualpipe", c.ranks = 2, c.chunks = 4;
    c.model.hidden = 16, c.model.tokens = 4, c.model.seed = 3, c.model.block = DP_BLOCK_RESIDUAL;
    c.optimizer.kind = DP_OPT_ADAMW, c.optimizer.lr = 1e-2f;
    c.threads_per_rank = 1;
    float *x = make_inputs(&c, 7), *t = make_targets(&c);
    float l32[4], l16[4];
    dp_runtime *a = NULL, *b = NULL;
    dp_status s1 = dp_runtime_create(&c, &a);
    c.model.dtype = DP_DTYPE_BF16;
    dp_status s2 = dp_runtime_create(&c, &b);
    if (s1 == DP_OK) s1 = dp_runtime_train_step(a, x, t, l32);
    if (s2 == DP_OK) s2 = dp_runtime_train_step(b, x, t, l16);
    if (s1 != DP_OK || s2 != DP_OK) tap_diag("%s", dp_last_error());
    int differ = 0, close = 1;
    for (int k = 0; k < 4 && s1 == DP_OK && s2 == DP_OK; k++) {
        differ |= l32[k] != l16[k];
        /* |bf16 - fp32| <= 2^-5 |fp32|: a handful of 2^-9 roundings through two small layers */
        close &= (l16[k] > l32[k] ? l16[k] - l32[k] : l32[k] - l16[k]) <= 0.03125f * l32[k];
    }
    tap_ok(s1 == DP_OK && s2 == DP_OK && differ && close,
           "bf16 losses differ from fp32 and stay within 2^-5 of them (%g vs %g)", (double)l16[0], (double)l32[0]);
    /* the master weights move by AdamW steps of lr from values that bf16 cannot all hold */
    size_t n = 0;
    float w[16 * 64];
    int off_grid = 0;
    if (s2 == DP_OK && dp_runtime_read_param(b, 0, 0, 0, 0, w, &n, NULL) == DP_OK)
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &w[i], 4);
            off_grid += (u & 0xffffu) != 0;
        }
    tap_ok(n == 16 * 64 && off_grid > (int)n / 2, "bf16 keeps fp32 master weights (%d of %zu not on the bf16 grid)",
           off_grid, n);
    dp_runtime_destroy(a), dp_runtime_destroy(b);
    free(x), free(t);
}

/* A batch loaded once and trained on from the devices equals passing it to every step. */
static void check_loaded_batch(void)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = "dualpipev", c.ranks = 2, c.chunks = 6;
    c.model.hidden = 8, c.model.ffn = 24, c.model.tokens = 3, c.model.seed = 5;
    c.optimizer.kind = DP_OPT_ADAMW, c.optimizer.lr = 1e-2f;
    c.threads_per_rank = 1;
    float *x = make_inputs(&c, 11), *t = make_targets(&c);
    float la[6], lb[6];
    dp_runtime *a = NULL, *b = NULL;
    int same = dp_runtime_create(&c, &a) == DP_OK && dp_runtime_create(&c, &b) == DP_OK;
    dp_status refused = same ? dp_runtime_train_loaded(b, lb) : DP_OK;
    tap_is_int(refused, DP_ERR_INVALID, "training on a batch before loading one is refused: %s", dp_last_error());
    if (same) same = dp_runtime_load_batch(b, x, t) == DP_OK;
    for (int step = 0; step < 3 && same; step++)
        same = dp_runtime_train_step(a, x, t, la) == DP_OK && dp_runtime_train_loaded(b, lb) == DP_OK &&
               memcmp(la, lb, sizeof la) == 0;
    tap_ok(same, "three steps on a loaded batch give the losses of three steps passing it (bit-equal)");
    dp_runtime_destroy(a), dp_runtime_destroy(b);
    free(x), free(t);
}

/* ----------------------------------------------------------------------------
 * errors */

static void check_errors(void)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.ranks = 3;
    c.chunks = 6;
    c.model.hidden = 4;
    c.model.tokens = 2;
    c.schedule = "dualpipe";
    dp_runtime *rt = NULL;
    dp_status st = dp_runtime_create(&c, &rt);
    tap_is_int(st, DP_ERR_INVALID, "dualpipe with an odd number of ranks is refused");
    tap_ok(strstr(dp_last_error(), "even") != NULL, "saying it needs an even number: %s", dp_last_error());
    c.ranks = 2;
    c.driver = "nosuch";
    st = dp_runtime_create(&c, &rt);
    tap_is_int(st, DP_ERR_NOT_FOUND, "a driver that cannot be found is an error");
    tap_ok(strstr(dp_last_error(), "nosuch") != NULL, "naming it");
    c.driver = NULL;
    c.schedule = "nosuch";
    st = dp_runtime_create(&c, &rt);
    tap_is_int(st, DP_ERR_NOT_FOUND, "an unknown schedule is an error: %s", dp_last_error());
    c.schedule = "1f1b";
    c.model.hidden = 0;
    st = dp_runtime_create(&c, &rt);
    tap_is_int(st, DP_ERR_INVALID, "a bad model is refused: %s", dp_last_error());
}

/* A schedule whose rank 0 forgot its actions: rank 1's first forward waits for a message
 * that never comes, and the step fails with a timeout naming the ranks and the action. */
typedef struct {
    dp_executor *ex;
    dp_status st;
    char msg[1024];
} broken_rank;

static void *broken_main(void *arg)
{
    broken_rank *b = arg;
    float *in = calloc(64, sizeof(float)), *loss = calloc(4, sizeof(float));
    float *tgt = calloc(64, sizeof(float));
    dp_step_io io;
    memset(&io, 0, sizeof io);
    io.input[0] = in, io.target[0] = tgt, io.loss[0] = loss;
    b->st = dp_executor_train(b->ex, &io);
    snprintf(b->msg, sizeof b->msg, "%s", dp_last_error());
    free(in), free(loss), free(tgt);
    return NULL;
}

static void check_timeout(void)
{
    const dp_driver *drv;
    dp_driver_load("cpu", &drv);
    dp_schedule_params sp = {.ranks = 2, .chunks = 2};
    dp_schedule *s;
    dp_schedule_generate("gpipe", &sp, &s);
    s->num_actions[0] = 0; /* rank 0 never sends its activations */
    dp_link_world *w;
    dp_link_world_config wc = {.world_size = 2, .timeout_ms = 200};
    drv->link->world_create(&wc, &w);
    dp_model_config m = {.hidden = 4, .tokens = 2};
    dp_device *dev[2];
    dp_link *l[2];
    dp_stage *stg[2];
    broken_rank br[2];
    pthread_t t[2];
    for (int r = 0; r < 2; r++) {
        dp_device_config dc = {.threads = 1, .rank = r};
        drv->device->open(&dc, &dev[r]);
        drv->link->open(w, r, dev[r], &l[r]);
        dp_stage_env env = {.ops = drv->device, .dev = dev[r]};
        dp_stage_create(&env, &m, r, 2, &stg[r]);
        dp_executor_config ec = {.sched = s, .rank = r, .dops = drv->device, .dev = dev[r], .lops = drv->link,
                                 .link = l[r]};
        ec.stages[0] = stg[r];
        memset(&br[r], 0, sizeof br[r]);
        dp_executor_create(&ec, &br[r].ex);
    }
    for (int r = 0; r < 2; r++) pthread_create(&t[r], NULL, broken_main, &br[r]);
    for (int r = 0; r < 2; r++) pthread_join(t[r], NULL);
    tap_is_int(br[1].st, DP_ERR_TIMEOUT, "a missing send times out instead of hanging");
    tap_ok(strstr(br[1].msg, "rank 1") && strstr(br[1].msg, "from rank 0") && strstr(br[1].msg, "F of local stage 0") &&
               strstr(br[1].msg, "micro-batch 0"),
           "the message names the rank, the peer and the action");
    tap_diag("%s", br[1].msg);
    for (int r = 0; r < 2; r++) {
        dp_executor_destroy(br[r].ex);
        dp_stage_destroy(stg[r]);
        drv->link->close(l[r]);
        drv->device->close(dev[r]);
    }
    drv->link->world_destroy(w);
    dp_schedule_free(s);
}

/* --serial-pairs: an overlapped pair's halves both run on the first stream. The CPU driver's
 * streams all run on the calling thread, so this counts, through a copy of its device table
 * whose GEMM notes its stream, the GEMMs the executor puts on its second stream. */
static const dp_device_ops *real_ops;
static dp_stream *second_stream;
static int gemms_on_second, gemms_total;

static dp_status counting_gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g)
{
    gemms_total++;
    gemms_on_second += s == second_stream;
    return real_ops->gemm(dev, s, g);
}

static void count_pair_streams(int serial, int *on_second, int *total)
{
    const dp_driver *drv;
    dp_driver_load("cpu", &drv);
    real_ops = drv->device;
    dp_device_ops ops = *drv->device;
    ops.gemm = counting_gemm;
    dp_schedule_params sp = {.ranks = 1, .chunks = 6};
    dp_schedule *s;
    dp_schedule_generate("dualpipev", &sp, &s);
    dp_link_world *w;
    dp_link_world_config wc = {.world_size = 1, .timeout_ms = 5000};
    drv->link->world_create(&wc, &w);
    dp_model_config m = {.hidden = 8, .tokens = 4, .layers_per_stage = 1, .seed = 1};
    dp_device *dev;
    dp_link *l;
    dp_device_config dc = {.threads = 1};
    ops.open(&dc, &dev);
    drv->link->open(w, 0, dev, &l);
    dp_executor_config ec = {.sched = s, .rank = 0, .dops = &ops, .dev = dev, .lops = drv->link, .link = l,
                             .serial_pairs = serial};
    for (int i = 0; i < 2; i++) ops.stream_create(dev, &ec.streams[i]);
    second_stream = ec.streams[1];
    dp_step_io io;
    memset(&io, 0, sizeof io);
    void *bufs[4 * DP_MAX_LOCAL_STAGES] = {0};
    int nb = 0;
    size_t cpp = (size_t)s->chunks_per_pipe;
    for (int d = 0; d < s->num_local_stages; d++) {
        dp_stage_env env = {.ops = &ops, .dev = dev, .streams = {ec.streams[0], ec.streams[1]}};
        dp_stage_create(&env, &m, s->slot_stage[d][0], s->num_stages, &ec.stages[d]);
        int pipe = s->slot_pipe[d][0];
        if (dp_schedule_is_first_stage(s, 0, d)) {
            float *x = calloc(cpp * dp_model_act_bytes(&m), 1);
            for (size_t i = 0; i < cpp * dp_model_act_bytes(&m) / sizeof(float); i++)
                x[i] = dp_counter_uniform(5, 0, i);
            io.input[pipe] = bufs[nb++] = x;
        }
        if (dp_schedule_is_last_stage(s, 0, d)) {
            io.target[pipe] = bufs[nb++] = calloc(cpp * dp_model_target_bytes(&m), 1);
            io.loss[pipe] = bufs[nb++] = calloc(cpp, sizeof(float));
            io.output[pipe] = bufs[nb++] = calloc(cpp * dp_model_act_bytes(&m), 1);
        }
    }
    dp_executor *ex = NULL;
    gemms_on_second = gemms_total = 0;
    dp_status st = dp_executor_create(&ec, &ex);
    if (st == DP_OK) st = dp_executor_train(ex, &io);
    if (st != DP_OK) tap_diag("serial pairs %d: %s", serial, dp_last_error());
    *on_second = gemms_on_second, *total = st == DP_OK ? gemms_total : -1;
    dp_executor_destroy(ex);
    for (int d = 0; d < s->num_local_stages; d++) dp_stage_destroy(ec.stages[d]);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    for (int i = 0; i < 2; i++) ops.stream_destroy(dev, ec.streams[i]);
    drv->link->close(l);
    ops.close(dev);
    drv->link->world_destroy(w);
    dp_schedule_free(s);
}

static void check_serial_pairs(void)
{
    int two_second, two_total, one_second, one_total;
    count_pair_streams(0, &two_second, &two_total);
    count_pair_streams(1, &one_second, &one_total);
    tap_ok(two_total > 0 && two_second > 0,
           "DualPipeV's overlapped pairs put GEMMs on the second stream (%d of %d)", two_second, two_total);
    tap_ok(one_total == two_total && one_second == 0,
           "with serial_pairs the same %d GEMMs all run on the first stream (%d on the second)", one_total,
           one_second);
}

int main(void)
{
    static const shape shapes[] = {
        {"gpipe", 2, 2},     {"gpipe", 4, 6},     {"gpipe", 8, 8},     {"gpipe", 2, 5},
        {"1f1b", 2, 4},      {"1f1b", 4, 4},      {"1f1b", 8, 10},     {"1f1b", 4, 9},
        {"zb1p", 2, 4},      {"zb1p", 4, 8},      {"zb1p", 8, 8},      {"zb1p", 4, 5},
        {"dualpipe", 2, 4},  {"dualpipe", 2, 10}, {"dualpipe", 4, 8},  {"dualpipe", 4, 12},
        {"dualpipe", 8, 16}, {"dualpipe", 8, 20}, {"dualpipev", 1, 2}, {"dualpipev", 1, 5},
        {"dualpipev", 2, 4}, {"dualpipev", 2, 7}, {"dualpipev", 4, 8}, {"dualpipev", 4, 10},
        {"interleaved-1f1b", 2, 4}, {"interleaved-1f1b", 4, 8},
    };
    int n = (int)(sizeof shapes / sizeof shapes[0]);
    for (int i = 0; i < n; i++) {
        check_shape(&shapes[i], DP_BLOCK_MLP, 1, DP_LOSS_MSE, i % 2 == 0 ? 10 : 1, DP_DTYPE_F32);
        check_shape(&shapes[i], DP_BLOCK_RESIDUAL, 2, DP_LOSS_MSE, i % 2 == 1 ? 10 : 1, DP_DTYPE_F32);
    }
    shape x = {"dualpipe", 4, 8};
    check_shape(&x, DP_BLOCK_RESIDUAL, 1, DP_LOSS_XENT, 3, DP_DTYPE_F32);
    shape v = {"dualpipev", 2, 6};
    check_shape(&v, DP_BLOCK_MLP, 1, DP_LOSS_XENT, 3, DP_DTYPE_F32);
    /* mixed precision: every schedule once, both blocks and both losses among them */
    static const shape bf[] = {{"gpipe", 4, 6}, {"1f1b", 4, 9}, {"zb1p", 4, 8}, {"dualpipe", 4, 8},
                               {"dualpipe", 8, 16}, {"dualpipev", 2, 7}, {"interleaved-1f1b", 2, 4}};
    for (int i = 0; i < (int)(sizeof bf / sizeof bf[0]); i++)
        check_shape(&bf[i], i % 2 ? DP_BLOCK_MLP : DP_BLOCK_RESIDUAL, 1 + i % 2, i == 3 ? DP_LOSS_XENT : DP_LOSS_MSE,
                    5, DP_DTYPE_BF16);
    check_mixed_layers();
    check_bf16_is_bf16();
    check_loaded_batch();
    check_errors();
    check_timeout();
    check_serial_pairs();
    return tap_done();
}
