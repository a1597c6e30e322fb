/* runtime.c: the in-process job (see runtime.h): one thread per pipeline rank, started with
 * the runtime and kept until it is destroyed, runs set-up, every step and tear-down; the
 * first rank to fail aborts the link so that the others stop waiting, and its message is the
 * one reported. */
#define _POSIX_C_SOURCE 200809L
#include "engine/runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "engine/host_copy.h"
#include "engine/param_io.h"

typedef struct {
    dp_device *dev;
    dp_stream *streams[2];
    dp_link *link;      /* the pipeline group */
    dp_link *pair_link; /* the two ranks holding the same stages (two pipes), or NULL */
    dp_stage *stages[DP_MAX_LOCAL_STAGES];
    dp_executor *ex;
    void *input[DP_MAX_LOCAL_STAGES], *output[DP_MAX_LOCAL_STAGES]; /* in the model's dtype */
    float *loss[DP_MAX_LOCAL_STAGES];
    dp_cast_staging staging; /* for host fp32 <-> device bf16 */
    float *grad_scratch; /* both local stages' gradients side by side, for one all_reduce */
    void *target[DP_MAX_LOCAL_STAGES];
    dp_action_time *times;
} rank_state;

struct dp_runtime {
    dp_runtime_config cfg;
    const dp_driver *drv;
    dp_schedule *sched;
    dp_link_world *world;
    rank_state *ranks;
    int step;
    int loaded; /* the devices hold a batch's inputs and targets (dp_runtime_load_batch) */
    double step_t0; /* when the last step started (monotonic ms); action times count from here */
    /* the step's arguments, for the rank threads */
    const float *inputs;
    const void *targets;
    float *losses, *outputs;
    /* the first failure */
    pthread_mutex_t lock;
    dp_status first_status;
    char first_message[1024];
    /* set-up's meeting point before the link (see setup_gate) */
    pthread_cond_t gate_cond;
    int gate_arrived, gate_failed_rank;
    dp_status gate_status; /* the failed rank's */
    char gate_message[512];
    /* the rank threads: each waits for a new generation of work, runs job for its rank, and
     * the last to finish wakes the caller. Threads are kept between steps: starting and joining
     * them in every step cost 0.17 ms a step with 4 ranks on the cpu driver. */
    struct rank_pool *pool;
};

typedef dp_status (*rank_fn)(dp_runtime *rt, int r);

typedef struct {
    struct rank_pool *pool;
    int rank;
} rank_worker;

struct rank_pool {
    dp_runtime *rt;
    pthread_t *threads;
    rank_worker *workers;
    int started;       /* threads running */
    pthread_cond_t work, done;
    unsigned long generation; /* bumped for each job */
    rank_fn job;
    int pending; /* ranks still running the job */
    int quit;
};

static void record_failure(dp_runtime *rt, int r, dp_status st)
{
    pthread_mutex_lock(&rt->lock);
    int first = rt->first_status == DP_OK;
    if (first) {
        rt->first_status = st;
        snprintf(rt->first_message, sizeof rt->first_message, "rank %d: %s", r, dp_last_error());
    }
    pthread_mutex_unlock(&rt->lock);
    if (first && rt->ranks[r].link)
        rt->drv->link->abort(rt->ranks[r].link, st, rt->first_message);
}

static void *rank_thread(void *arg)
{
    rank_worker *w = arg;
    struct rank_pool *p = w->pool;
    dp_runtime *rt = p->rt;
    unsigned long seen = 0;
    pthread_mutex_lock(&rt->lock);
    for (;;) {
        while (p->generation == seen && !p->quit) pthread_cond_wait(&p->work, &rt->lock);
        if (p->quit) break;
        seen = p->generation;
        rank_fn fn = p->job;
        pthread_mutex_unlock(&rt->lock);
        dp_status st = fn(rt, w->rank);
        if (st != DP_OK) record_failure(rt, w->rank, st);
        pthread_mutex_lock(&rt->lock);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&rt->lock);
    return NULL;
}

static void pool_stop(dp_runtime *rt)
{
    struct rank_pool *p = rt->pool;
    if (!p) return;
    pthread_mutex_lock(&rt->lock);
    p->quit = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&rt->lock);
    for (int r = 0; r < p->started; r++) pthread_join(p->threads[r], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p->threads), free(p->workers), free(p);
    rt->pool = NULL;
}

/* Starts the rank threads; they wait for work. */
static dp_status pool_start(dp_runtime *rt)
{
    int n = rt->cfg.ranks;
    struct rank_pool *p = calloc(1, sizeof *p);
    if (p) {
        p->threads = calloc((size_t)n, sizeof *p->threads);
        p->workers = calloc((size_t)n, sizeof *p->workers);
    }
    if (!p || !p->threads || !p->workers) {
        if (p) free(p->threads), free(p->workers);
        free(p);
        return dp_fail(DP_ERR_NOMEM, "out of memory starting rank threads");
    }
    p->rt = rt;
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    rt->pool = p;
    for (int r = 0; r < n; r++) {
        p->workers[r] = (rank_worker){p, r};
        if (pthread_create(&p->threads[r], NULL, rank_thread, &p->workers[r]) != 0) {
            pool_stop(rt);
            return dp_fail(DP_ERR_INTERNAL, "could not start the thread of rank %d (of %d); the system may be out "
                                            "of threads or memory", r, n);
        }
        p->started++;
    }
    return DP_OK;
}

/* Runs fn on every rank, each on its own thread; returns the first failure. */
static dp_status run_ranks(dp_runtime *rt, rank_fn fn)
{
    struct rank_pool *p = rt->pool;
    pthread_mutex_lock(&rt->lock);
    rt->first_status = DP_OK;
    rt->first_message[0] = 0;
    p->job = fn;
    p->pending = rt->cfg.ranks;
    p->generation++;
    pthread_cond_broadcast(&p->work);
    while (p->pending > 0) pthread_cond_wait(&p->done, &rt->lock);
    dp_status st = rt->first_status;
    pthread_mutex_unlock(&rt->lock);
    if (st != DP_OK) return dp_fail(st, "%s", rt->first_message);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * set-up and tear-down, per rank */

static dp_status alloc_floats(dp_runtime *rt, rank_state *rs, size_t n, float **out)
{
    void *p;
    DP_CHECK(rt->drv->device->alloc(rs->dev, n * sizeof(float), &p));
    *out = p;
    return DP_OK;
}

/* What a rank sets up on its own: its device, streams and stages. */
static dp_status rank_setup_local(dp_runtime *rt, int r)
{
    const dp_device_ops *D = rt->drv->device;
    const dp_schedule *s = rt->sched;
    rank_state *rs = &rt->ranks[r];
    int ordinal = 0, count = 0;
    if (rt->cfg.spread_devices) {
        DP_CHECK(D->device_count(&count));
        if (count > 0) ordinal = r % count;
    }
    dp_device_config dc = {
        .ordinal = ordinal, .threads = rt->cfg.threads_per_rank, .rank = r, .flags = rt->cfg.device_flags};
    DP_CHECK(D->open(&dc, &rs->dev));
    for (int i = 0; i < 2; i++) DP_CHECK(D->stream_create(rs->dev, &rs->streams[i]));
    dp_stage_env env = {.ops = D, .dev = rs->dev, .streams = {rs->streams[0], rs->streams[1]}};
    for (int d = 0; d < s->num_local_stages; d++)
        DP_CHECK(dp_stage_create(&env, &rt->cfg.model, s->slot_stage[d][r], s->num_stages, &rs->stages[d]));
    return DP_OK;
}

/* Every rank meets here between its own set-up and the link's, which is collective (NCCL's
 * communicators, the pair's split): a rank that could not open its device or allocate its
 * stages would otherwise leave the others waiting for it there until their timeout. Returns
 * st, or, when another rank failed, an error naming that rank and its reason. */
static dp_status setup_gate(dp_runtime *rt, int r, dp_status st)
{
    pthread_mutex_lock(&rt->lock);
    if (st != DP_OK && rt->gate_failed_rank < 0) {
        rt->gate_failed_rank = r, rt->gate_status = st;
        snprintf(rt->gate_message, sizeof rt->gate_message, "%s", dp_last_error());
    }
    if (++rt->gate_arrived == rt->cfg.ranks) pthread_cond_broadcast(&rt->gate_cond);
    while (rt->gate_arrived < rt->cfg.ranks) pthread_cond_wait(&rt->gate_cond, &rt->lock);
    int failed = rt->gate_failed_rank;
    dp_status why_status = rt->gate_status;
    char why[512];
    snprintf(why, sizeof why, "%s", rt->gate_message);
    pthread_mutex_unlock(&rt->lock);
    if (st != DP_OK || failed < 0) return st;
    return dp_fail(why_status, "set-up stopped because rank %d failed: %s", failed, why);
}

static dp_status rank_setup(dp_runtime *rt, int r)
{
    const dp_device_ops *D = rt->drv->device;
    const dp_link_ops *L = rt->drv->link;
    const dp_schedule *s = rt->sched;
    rank_state *rs = &rt->ranks[r];
    DP_CHECK(setup_gate(rt, r, rank_setup_local(rt, r)));
    DP_CHECK(L->open(rt->world, r, rs->dev, &rs->link));
    DP_CHECK(L->set_timeout(rs->link, rt->cfg.timeout_ms));
    if (s->num_pipes == 2) {
        /* the rank holding this rank's first stage in the other pipe */
        int pipe = s->slot_pipe[0][r], stage = s->slot_stage[0][r];
        int partner = s->stage_rank[1 - pipe][stage];
        DP_CHECK(L->split(rs->link, r < partner ? r : partner, r, &rs->pair_link));
    }
    size_t act_bytes = dp_model_act_bytes(&rt->cfg.model), cpp = (size_t)s->chunks_per_pipe;
    for (int d = 0; d < s->num_local_stages; d++) {
        int pipe = s->slot_pipe[d][r];
        if (dp_schedule_is_first_stage(s, r, d)) DP_CHECK(D->alloc(rs->dev, cpp * act_bytes, &rs->input[pipe]));
        if (dp_schedule_is_last_stage(s, r, d)) {
            DP_CHECK(D->alloc(rs->dev, cpp * dp_model_target_bytes(&rt->cfg.model), &rs->target[pipe]));
            DP_CHECK(alloc_floats(rt, rs, cpp, &rs->loss[pipe]));
            DP_CHECK(D->alloc(rs->dev, cpp * act_bytes, &rs->output[pipe]));
        }
    }
    if (rt->cfg.record_times) {
        rs->times = calloc((size_t)s->num_actions[r] + 1, sizeof *rs->times);
        if (!rs->times) return dp_fail(DP_ERR_NOMEM, "out of memory for timings");
    }
    dp_executor_config ec = {.sched = s, .rank = r, .dops = D, .dev = rs->dev, .lops = L, .link = rs->link,
                             .sync_each_action = rt->cfg.record_times, .serial_pairs = rt->cfg.serial_pairs};
    ec.streams[0] = rs->streams[0], ec.streams[1] = rs->streams[1];
    for (int d = 0; d < s->num_local_stages; d++) ec.stages[d] = rs->stages[d];
    return dp_executor_create(&ec, &rs->ex);
}

static void rank_teardown(dp_runtime *rt, int r)
{
    const dp_device_ops *D = rt->drv->device;
    const dp_link_ops *L = rt->drv->link;
    rank_state *rs = &rt->ranks[r];
    dp_executor_destroy(rs->ex);
    for (int d = 0; d < DP_MAX_LOCAL_STAGES; d++) {
        dp_stage_destroy(rs->stages[d]);
        if (rs->dev) {
            D->free(rs->dev, rs->input[d]);
            D->free(rs->dev, rs->target[d]);
            D->free(rs->dev, rs->loss[d]);
            D->free(rs->dev, rs->output[d]);
        }
    }
    if (rs->dev) D->free(rs->dev, rs->grad_scratch);
    if (rs->dev) dp_cast_staging_free(D, rs->dev, &rs->staging);
    if (rs->pair_link) L->close(rs->pair_link);
    if (rs->link) L->close(rs->link);
    for (int i = 0; i < 2; i++)
        if (rs->streams[i]) D->stream_destroy(rs->dev, rs->streams[i]);
    if (rs->dev) D->close(rs->dev);
    free(rs->times);
    memset(rs, 0, sizeof *rs);
}

static dp_status rank_teardown_fn(dp_runtime *rt, int r)
{
    rank_teardown(rt, r);
    return DP_OK;
}

dp_status dp_runtime_create(const dp_runtime_config *cfg_in, dp_runtime **out)
{
    *out = NULL;
    dp_runtime_config cfg = *cfg_in;
    if (!cfg.driver) cfg.driver = "cpu";
    if (!cfg.schedule) cfg.schedule = "dualpipe";
    DP_CHECK(dp_model_config_check(&cfg.model));
    if (cfg.optimizer.kind != DP_OPT_NONE) dp_optimizer_config_defaults(&cfg.optimizer);
    if (cfg.threads_per_rank <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg.threads_per_rank = cores > cfg.ranks && cfg.ranks > 0 ? (int)(cores / cfg.ranks) : 1;
    }
    if (cfg.timeout_ms <= 0) cfg.timeout_ms = 60000;

    const dp_driver *drv;
    DP_CHECK(dp_driver_load(cfg.driver, &drv));
    dp_schedule_params sp = {.ranks = cfg.ranks, .chunks = cfg.chunks};
    dp_schedule *sched;
    DP_CHECK(dp_schedule_generate(cfg.schedule, &sp, &sched));
    dp_status st = dp_schedule_validate(sched, NULL);
    if (st != DP_OK) {
        dp_schedule_free(sched);
        return st;
    }
    dp_runtime *rt = calloc(1, sizeof *rt);
    if (!rt) {
        dp_schedule_free(sched);
        return dp_fail(DP_ERR_NOMEM, "out of memory creating a runtime");
    }
    rt->cfg = cfg;
    rt->drv = drv;
    rt->sched = sched;
    pthread_mutex_init(&rt->lock, NULL);
    pthread_cond_init(&rt->gate_cond, NULL);
    rt->gate_failed_rank = -1;
    rt->ranks = calloc((size_t)cfg.ranks, sizeof *rt->ranks);
    if (!rt->ranks) {
        dp_runtime_destroy(rt);
        return dp_fail(DP_ERR_NOMEM, "out of memory creating a runtime");
    }
    dp_link_world_config wc = {.world_size = cfg.ranks, .first_rank = 0, .local_ranks = cfg.ranks,
                               .timeout_ms = cfg.timeout_ms};
    st = pool_start(rt);
    if (st == DP_OK) st = drv->link->world_create(&wc, &rt->world);
    if (st == DP_OK) st = run_ranks(rt, rank_setup);
    if (st != DP_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dp_last_error());
        dp_runtime_destroy(rt);
        return dp_fail(st, "%s", msg);
    }
    *out = rt;
    return DP_OK;
}

void dp_runtime_destroy(dp_runtime *rt)
{
    if (!rt) return;
    if (rt->ranks) {
        if (rt->world && rt->pool) run_ranks(rt, rank_teardown_fn);
        else
            for (int r = 0; r < rt->cfg.ranks; r++) rank_teardown(rt, r);
    }
    pool_stop(rt);
    if (rt->world) rt->drv->link->world_destroy(rt->world);
    free(rt->ranks);
    dp_schedule_free(rt->sched);
    pthread_mutex_destroy(&rt->lock);
    pthread_cond_destroy(&rt->gate_cond);
    free(rt);
}

const dp_schedule *dp_runtime_schedule(const dp_runtime *rt) { return rt->sched; }
const dp_model_config *dp_runtime_model(const dp_runtime *rt) { return &rt->cfg.model; }

double dp_runtime_step_start(const dp_runtime *rt) { return rt->step_t0; }

const dp_action_time *dp_runtime_times(const dp_runtime *rt, int rank)
{
    return rank >= 0 && rank < rt->cfg.ranks ? rt->ranks[rank].times : NULL;
}

/* ----------------------------------------------------------------------------
 * steps */

/* The step's inputs (and targets) from the host into this rank's device, in the model's
 * dtype; MSE targets are fp32 on the host like the inputs, labels int32 everywhere. */
static dp_status load_inputs(dp_runtime *rt, int r, int with_targets)
{
    const dp_device_ops *D = rt->drv->device;
    const dp_schedule *s = rt->sched;
    const dp_model_config *m = &rt->cfg.model;
    rank_state *rs = &rt->ranks[r];
    size_t act = dp_model_act_elems(m), cpp = (size_t)s->chunks_per_pipe;
    for (int d = 0; d < s->num_local_stages; d++) {
        int pipe = s->slot_pipe[d][r];
        if (dp_schedule_is_first_stage(s, r, d))
            DP_CHECK(dp_upload_f32(D, rs->dev, rs->streams[0], &rs->staging, rs->input[pipe], m->dtype,
                                   rt->inputs + (size_t)pipe * cpp * act, cpp * act));
        if (!with_targets || !dp_schedule_is_last_stage(s, r, d)) continue;
        if (m->loss == DP_LOSS_MSE) {
            DP_CHECK(dp_upload_f32(D, rs->dev, rs->streams[0], &rs->staging, rs->target[pipe], m->dtype,
                                   (const float *)rt->targets + (size_t)pipe * cpp * act, cpp * act));
        } else {
            size_t tb = dp_model_host_target_bytes(m);
            DP_CHECK(D->copy(rs->dev, rs->target[pipe], (const char *)rt->targets + (size_t)pipe * cpp * tb, cpp * tb,
                             DP_COPY_HOST_TO_DEVICE, rs->streams[0]));
        }
    }
    return D->stream_synchronize(rs->dev, rs->streams[0]);
}

static dp_status rank_load(dp_runtime *rt, int r) { return load_inputs(rt, r, 1); }

static dp_step_io step_io(dp_runtime *rt, int r)
{
    rank_state *rs = &rt->ranks[r];
    dp_step_io io;
    memset(&io, 0, sizeof io);
    for (int p = 0; p < DP_MAX_LOCAL_STAGES; p++) {
        io.input[p] = rs->input[p];
        io.target[p] = rs->target[p];
        io.loss[p] = rs->loss[p];
        io.output[p] = rs->output[p];
    }
    io.times = rs->times;
    io.t0 = rt->step_t0;
    return io;
}

/* The copies of each stage add their gradients; both orders of a sum of two give the same
 * bits, so every copy ends equal to the single-rank reference's pipe-by-pipe sum. */
static dp_status sync_gradients(dp_runtime *rt, int r)
{
    rank_state *rs = &rt->ranks[r];
    if (!rs->pair_link) return DP_OK;
    const dp_schedule *s = rt->sched;
    int order[DP_MAX_LOCAL_STAGES] = {0, 1};
    if (s->num_local_stages == 2 && s->slot_stage[1][r] < s->slot_stage[0][r]) order[0] = 1, order[1] = 0;
    /* One all_reduce for both stages, in stage order on both ranks of the pair: when ranks
     * outnumber cores every message costs a wake-up, which costs more than the copies. */
    const dp_device_ops *D = rt->drv->device;
    size_t n[DP_MAX_LOCAL_STAGES] = {0, 0}, total = 0;
    float *g[DP_MAX_LOCAL_STAGES] = {NULL, NULL};
    for (int i = 0; i < s->num_local_stages; i++) g[i] = dp_stage_grads(rs->stages[order[i]], &n[i]), total += n[i];
    if (s->num_local_stages == 1)
        return rt->drv->link->all_reduce(rs->pair_link, g[0], g[0], n[0], DP_DTYPE_F32, DP_REDUCE_SUM, rs->streams[0]);
    if (!rs->grad_scratch) {
        void *p;
        DP_CHECK(D->alloc(rs->dev, total * sizeof(float), &p));
        rs->grad_scratch = p;
    }
    DP_CHECK(D->copy(rs->dev, rs->grad_scratch, g[0], n[0] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, rs->streams[0]));
    DP_CHECK(D->copy(rs->dev, rs->grad_scratch + n[0], g[1], n[1] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE,
                     rs->streams[0]));
    DP_CHECK(rt->drv->link->all_reduce(rs->pair_link, rs->grad_scratch, rs->grad_scratch, total, DP_DTYPE_F32,
                                       DP_REDUCE_SUM, rs->streams[0]));
    DP_CHECK(D->copy(rs->dev, g[0], rs->grad_scratch, n[0] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, rs->streams[0]));
    DP_CHECK(D->copy(rs->dev, g[1], rs->grad_scratch + n[0], n[1] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE,
                     rs->streams[0]));
    return DP_OK;
}

static dp_status rank_train(dp_runtime *rt, int r)
{
    const dp_device_ops *D = rt->drv->device;
    const dp_schedule *s = rt->sched;
    rank_state *rs = &rt->ranks[r];
    if (rt->inputs) DP_CHECK(load_inputs(rt, r, 1));
    for (int d = 0; d < s->num_local_stages; d++) DP_CHECK(dp_stage_zero_grad(rs->stages[d], rs->streams[0]));
    dp_step_io io = step_io(rt, r);
    DP_CHECK(dp_executor_train(rs->ex, &io));
    for (int i = 0; i < 2; i++) DP_CHECK(D->stream_synchronize(rs->dev, rs->streams[i]));
    DP_CHECK(sync_gradients(rt, r));
    for (int d = 0; d < s->num_local_stages; d++)
        DP_CHECK(dp_stage_optimizer_step(rs->stages[d], rs->streams[0], &rt->cfg.optimizer, rt->step));
    size_t cpp = (size_t)s->chunks_per_pipe;
    for (int d = 0; d < s->num_local_stages; d++) {
        int pipe = s->slot_pipe[d][r];
        if (dp_schedule_is_last_stage(s, r, d))
            DP_CHECK(D->copy(rs->dev, rt->losses + (size_t)pipe * cpp, rs->loss[pipe], cpp * sizeof(float),
                             DP_COPY_DEVICE_TO_HOST, rs->streams[0]));
    }
    return D->stream_synchronize(rs->dev, rs->streams[0]);
}

static dp_status rank_infer(dp_runtime *rt, int r)
{
    const dp_device_ops *D = rt->drv->device;
    const dp_schedule *s = rt->sched;
    rank_state *rs = &rt->ranks[r];
    DP_CHECK(load_inputs(rt, r, 0));
    dp_step_io io = step_io(rt, r);
    DP_CHECK(dp_executor_infer(rs->ex, &io));
    size_t act = dp_model_act_elems(&rt->cfg.model), cpp = (size_t)s->chunks_per_pipe;
    for (int d = 0; d < s->num_local_stages; d++) {
        int pipe = s->slot_pipe[d][r];
        if (dp_schedule_is_last_stage(s, r, d))
            DP_CHECK(dp_download_f32(D, rs->dev, rs->streams[0], &rs->staging, rt->outputs + (size_t)pipe * cpp * act,
                                     rt->cfg.model.dtype, rs->output[pipe], cpp * act));
    }
    return D->stream_synchronize(rs->dev, rs->streams[0]);
}

static dp_status train(dp_runtime *rt, const float *inputs, const void *targets, float *losses)
{
    rt->inputs = inputs, rt->targets = targets, rt->losses = losses;
    rt->step++;
    rt->step_t0 = dp_now_ms();
    rt->loaded = 0;
    dp_status st = run_ranks(rt, rank_train);
    rt->inputs = NULL, rt->targets = NULL;
    if (st == DP_OK) rt->loaded = 1;
    if (st != DP_OK) return dp_fail(st, "training step %d: %s", rt->step, dp_last_error());
    return DP_OK;
}

dp_status dp_runtime_train_step(dp_runtime *rt, const float *inputs, const void *targets, float *losses)
{
    if (!inputs || !targets || !losses) return dp_fail(DP_ERR_INVALID, "train step: inputs, targets and losses are needed");
    return train(rt, inputs, targets, losses);
}

dp_status dp_runtime_load_batch(dp_runtime *rt, const float *inputs, const void *targets)
{
    if (!inputs || !targets) return dp_fail(DP_ERR_INVALID, "loading a batch: inputs and targets are needed");
    rt->inputs = inputs, rt->targets = targets;
    rt->loaded = 0;
    dp_status st = run_ranks(rt, rank_load);
    rt->inputs = NULL, rt->targets = NULL;
    if (st == DP_OK) rt->loaded = 1;
    return st;
}

dp_status dp_runtime_train_loaded(dp_runtime *rt, float *losses)
{
    if (!losses) return dp_fail(DP_ERR_INVALID, "train step: losses are needed");
    if (!rt->loaded)
        return dp_fail(DP_ERR_INVALID, "train step: no batch on the devices; load one with dp_runtime_load_batch "
                                       "(or pass inputs to dp_runtime_train_step)");
    return train(rt, NULL, NULL, losses);
}

dp_status dp_runtime_infer(dp_runtime *rt, const float *inputs, float *outputs)
{
    if (!inputs || !outputs) return dp_fail(DP_ERR_INVALID, "inference: inputs and outputs are needed");
    rt->inputs = inputs, rt->outputs = outputs;
    rt->step_t0 = dp_now_ms();
    rt->loaded = 0; /* the inputs are replaced; the targets no longer match them */
    dp_status st = run_ranks(rt, rank_infer);
    rt->inputs = NULL, rt->outputs = NULL;
    return st;
}

/* ----------------------------------------------------------------------------
 * parameters */

int dp_runtime_num_params(const dp_runtime *rt, int stage)
{
    const dp_schedule *s = rt->sched;
    if (stage < 0 || stage >= s->num_stages) return 0;
    int r = s->stage_rank[0][stage], d = s->stage_local[0][stage];
    return dp_stage_num_params(rt->ranks[r].stages[d]);
}

/* The rank and local stage holding (stage, copy), checked. */
static dp_status locate(const dp_runtime *rt, int stage, int copy, int index, int *r, int *d)
{
    const dp_schedule *s = rt->sched;
    if (stage < 0 || stage >= s->num_stages || copy < 0 || copy >= s->num_pipes)
        return dp_fail(DP_ERR_INVALID, "no stage %d copy %d (stages %d, copies %d)", stage, copy, s->num_stages,
                       s->num_pipes);
    *r = s->stage_rank[copy][stage], *d = s->stage_local[copy][stage];
    int n = dp_stage_num_params(rt->ranks[*r].stages[*d]);
    if (index < 0 || index >= n) return dp_fail(DP_ERR_INVALID, "stage %d has no parameter %d (it has %d)", stage, index, n);
    return DP_OK;
}

dp_status dp_runtime_read_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which, float *host,
                                 size_t *count, char name[32])
{
    int r, d;
    DP_CHECK(locate(rt, stage, copy, index, &r, &d));
    rank_state *rs = &rt->ranks[r];
    return dp_param_read(rt->drv->device, rs->dev, rs->stages[d], index, which, host, count, name);
}

dp_status dp_runtime_write_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which,
                                  const float *host, size_t count)
{
    int r, d;
    DP_CHECK(locate(rt, stage, copy, index, &r, &d));
    if (!host) return dp_fail(DP_ERR_INVALID, "writing stage %d parameter %d: no host data", stage, index);
    rank_state *rs = &rt->ranks[r];
    return dp_param_write(rt->drv->device, rs->dev, rs->stages[d], index, which, host, count);
}

dp_status dp_runtime_read_param(dp_runtime *rt, int stage, int copy, int index, int grad, float *host, size_t *count,
                                char name[32])
{
    return dp_runtime_read_tensor(rt, stage, copy, index, grad ? DP_TENSOR_GRAD : DP_TENSOR_VALUE, host, count, name);
}

int dp_runtime_step(const dp_runtime *rt) { return rt->step; }

dp_status dp_runtime_set_step(dp_runtime *rt, int step)
{
    if (step < 0) return dp_fail(DP_ERR_INVALID, "the optimizer step count must be >= 0, got %d", step);
    rt->step = step;
    return DP_OK;
}
