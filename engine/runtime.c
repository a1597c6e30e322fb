/* runtime.c: the in-process host of a job (see runtime.h): one thread per rank, started with
 * the runtime and kept until it is destroyed, runs that rank's set-up, steps and tear-down
 * (rank.c); the first rank to fail aborts the link so that the others stop waiting, and its
 * message is the one reported. Results come from the root rank, which gathered them through
 * the link. A host for ranks in several processes would replace the threads' meeting points
 * (the pool, the set-up gate) with the link world's bootstrap, and nothing in rank.c. */
#define _POSIX_C_SOURCE 200809L
#include "engine/runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/mpi_job.h"
#include "engine/driver.h"
#include "engine/param_io.h"
#include "engine/rank.h"

struct dp_runtime {
    dp_runtime_config cfg;
    const dp_driver *drv;
    dp_driver with_link; /* the driver with another link (cfg.link), when asked */
    dp_schedule *sched;
    dp_link_world *world;
    int replicas, world_size; /* data-parallel replicas (>= 1); world ranks: replicas x pipeline ranks */
    /* the ranks this process hosts, world ranks first_rank .. first_rank + local_ranks - 1
     * (in one process: all of them) */
    int first_rank, local_ranks;
    dp_rank **ranks; /* [local_ranks] */
    int step;
    int loaded; /* the devices hold a batch's inputs and targets (dp_runtime_load_batch) */
    double step_t0; /* when the last step started (monotonic ms); action times count from here */
    dp_action_time **times; /* per world rank, gathered at the root (record_times) */
    /* the job's arguments, for the rank threads */
    dp_rank_step args;
    struct {
        int replica, stage, copy, index;
        dp_tensor_kind which;
        float *out;
        const float *in;
        size_t count;
    } tensor;
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
    /* the EPLB placement, the runtime's own copy (cfg.model.moe points at it) */
    int32_t *plan;
    struct {
        const int32_t *plan;
        int has_replica;
    } move;
};

/* A job, run by the thread of world rank r. */
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

static dp_rank **local(dp_runtime *rt, int r) { return &rt->ranks[r - rt->first_rank]; }

/* A rank of this process: every rank knows the parameters' directory. */
static const dp_rank *any_local(const dp_runtime *rt) { return rt->ranks[0]; }

int dp_runtime_is_root(const dp_runtime *rt) { return rt->first_rank == DP_ROOT_RANK; }

static void record_failure(dp_runtime *rt, int r, dp_status st)
{
    pthread_mutex_lock(&rt->lock);
    int first = rt->first_status == DP_OK;
    if (first) {
        rt->first_status = st;
        snprintf(rt->first_message, sizeof rt->first_message, "rank %d: %s", r, dp_last_error());
    }
    pthread_mutex_unlock(&rt->lock);
    if (first) dp_rank_abort(*local(rt, r), st, rt->first_message);
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
    for (int i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p->threads), free(p->workers), free(p);
    rt->pool = NULL;
}

/* Starts the threads of the local ranks; they wait for work. */
static dp_status pool_start(dp_runtime *rt)
{
    int n = rt->local_ranks;
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
    for (int i = 0; i < n; i++) {
        int r = rt->first_rank + i;
        p->workers[i] = (rank_worker){p, r};
        if (pthread_create(&p->threads[i], NULL, rank_thread, &p->workers[i]) != 0) {
            pool_stop(rt);
            return dp_fail(DP_ERR_INTERNAL, "could not start the thread of rank %d (of %d); the system may be out "
                                            "of threads or memory", r, rt->world_size);
        }
        p->started++;
    }
    return DP_OK;
}

/* Runs fn on every local rank, each on its own thread; returns the first failure. */
static dp_status run_ranks(dp_runtime *rt, rank_fn fn)
{
    struct rank_pool *p = rt->pool;
    pthread_mutex_lock(&rt->lock);
    rt->first_status = DP_OK;
    rt->first_message[0] = 0;
    p->job = fn;
    p->pending = rt->local_ranks;
    p->generation++;
    pthread_cond_broadcast(&p->work);
    while (p->pending > 0) pthread_cond_wait(&p->done, &rt->lock);
    dp_status st = rt->first_status;
    pthread_mutex_unlock(&rt->lock);
    if (st != DP_OK) return dp_fail(st, "%s", rt->first_message);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * set-up and tear-down */

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
    if (++rt->gate_arrived == rt->local_ranks) pthread_cond_broadcast(&rt->gate_cond);
    while (rt->gate_arrived < rt->local_ranks) pthread_cond_wait(&rt->gate_cond, &rt->lock);
    int failed = rt->gate_failed_rank;
    dp_status why_status = rt->gate_status;
    char why[512];
    snprintf(why, sizeof why, "%s", rt->gate_message);
    pthread_mutex_unlock(&rt->lock);
    if (st == DP_OK && failed >= 0) st = dp_fail(why_status, "set-up stopped because rank %d failed: %s", failed, why);
    if (!rt->cfg.bootstrap) return st;
    /* the ranks of the other processes: every rank says whether it failed */
    int world = rt->world_size;
    int32_t mine = st != DP_OK, *all = calloc((size_t)world, sizeof *all);
    if (!all) return st != DP_OK ? st : dp_fail(DP_ERR_NOMEM, "out of memory in set-up");
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", st != DP_OK ? dp_last_error() : "");
    dp_status bs = rt->cfg.bootstrap->allgather(rt->cfg.bootstrap_ctx, r, &mine, all, sizeof mine);
    int other = -1;
    for (int i = 0; bs == DP_OK && i < world && other < 0; i++)
        if (all[i] && (i < rt->first_rank || i >= rt->first_rank + rt->local_ranks)) other = i;
    free(all);
    if (st != DP_OK) return dp_fail(st, "%s", keep);
    if (bs != DP_OK) return bs;
    if (other >= 0)
        return dp_fail(DP_ERR_COMM, "set-up stopped because rank %d (in another process) failed; that process "
                                    "reports why", other);
    return DP_OK;
}

static dp_status job_setup(dp_runtime *rt, int r)
{
    dp_rank_config rc = {.cfg = &rt->cfg, .drv = rt->drv, .sched = rt->sched, .rank = r};
    DP_CHECK(setup_gate(rt, r, dp_rank_create(&rc, local(rt, r))));
    return dp_rank_connect(*local(rt, r), rt->world);
}

static dp_status job_teardown(dp_runtime *rt, int r)
{
    dp_rank_destroy(*local(rt, r));
    *local(rt, r) = NULL;
    return DP_OK;
}

/* Where the root gathers every rank's recorded times. */
static dp_status alloc_times(dp_runtime *rt)
{
    const dp_schedule *s = rt->sched;
    rt->times = calloc((size_t)rt->world_size, sizeof *rt->times);
    for (int r = 0; rt->times && r < rt->world_size; r++)
        if (!(rt->times[r] = calloc((size_t)s->num_actions[r % s->num_ranks] + 1, sizeof **rt->times))) break;
    for (int r = 0; rt->times && r < rt->world_size; r++)
        if (!rt->times[r]) return dp_fail(DP_ERR_NOMEM, "out of memory for timings");
    return rt->times ? DP_OK : dp_fail(DP_ERR_NOMEM, "out of memory for timings");
}

dp_status dp_runtime_create(const dp_runtime_config *cfg_in, dp_runtime **out)
{
    *out = NULL;
    dp_runtime_config cfg = *cfg_in;
    if (!cfg.driver) cfg.driver = "cpu";
    if (!cfg.schedule) cfg.schedule = "dualpipe";
    DP_CHECK(dp_model_config_check(&cfg.model));
    if (cfg.optimizer.kind != DP_OPT_NONE) dp_optimizer_config_defaults(&cfg.optimizer);
    if (cfg.dp < 0)
        return dp_fail(DP_ERR_INVALID, "data-parallel replicas must be >= 1 (0 or 1: none), got %d", cfg.dp);
    if (cfg.dp == 0) cfg.dp = 1;
    if (cfg.ep < 0 || cfg.ep > DP_RUNTIME_MAX_RANKS)
        return dp_fail(DP_ERR_INVALID, "expert-parallel ranks (--ep) must be 1 to %d (0 or 1: none), got %d",
                       DP_RUNTIME_MAX_RANKS, cfg.ep);
    if (cfg.ep == 0) cfg.ep = 1;
    if (cfg.ep > 1 && cfg.model.moe.experts == 0)
        return dp_fail(DP_ERR_INVALID, "--ep %d spreads MoE layers' experts, but the model has none (set --experts)",
                       cfg.ep);
    if (cfg.ep > 1 && cfg.model.moe.experts % cfg.ep)
        return dp_fail(DP_ERR_INVALID, "%d experts do not spread evenly over %d expert-parallel ranks (--ep must divide "
                       "--experts)", cfg.model.moe.experts, cfg.ep);
    /* the world: dp x ep replicas of a pipeline of `ranks` (groups.h lays them out) */
    long long world = (long long)cfg.dp * cfg.ep * (cfg.ranks > 0 ? cfg.ranks : 1);
    if (world > DP_RUNTIME_MAX_WORLD)
        return dp_fail(DP_ERR_INVALID, "%d replicas x %d expert-parallel x %d pipeline ranks make %lld ranks; a job has at most %d",
                       cfg.dp, cfg.ep, cfg.ranks, world, DP_RUNTIME_MAX_WORLD);
    int W = (int)world;
    if (cfg.local_ranks <= 0) cfg.first_rank = 0, cfg.local_ranks = W;
    if (cfg.first_rank < 0 || cfg.local_ranks > W || cfg.first_rank > W - cfg.local_ranks)
        return dp_fail(DP_ERR_INVALID, "this process would host ranks %d..%d of a job of %d ranks", cfg.first_rank,
                       cfg.first_rank + cfg.local_ranks - 1, W);
    if (cfg.local_ranks > DP_RUNTIME_MAX_RANKS) {
        if (cfg.local_ranks == W)
            return dp_fail(DP_ERR_INVALID, "%d replicas x %d pipeline ranks make %d ranks; one process runs at most %d "
                                           "(fewer replicas or pipeline ranks, or more processes)",
                           cfg.dp, cfg.ranks, W, DP_RUNTIME_MAX_RANKS);
        return dp_fail(DP_ERR_INVALID, "this process would host %d of the job's %d ranks; one process runs at most %d "
                                       "(more processes)", cfg.local_ranks, W, DP_RUNTIME_MAX_RANKS);
    }
    if (cfg.local_ranks < W && !cfg.bootstrap)
        return dp_fail(DP_ERR_INVALID, "ranks %d..%d of %d live in this process: the others need a bootstrap to "
                                       "meet them (dp_bootstrap_mpi, a TCP rendezvous)",
                       cfg.first_rank, cfg.first_rank + cfg.local_ranks - 1, W);
    if (cfg.threads_per_rank <= 0) {
        /* the ranks of this process share its cores */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg.threads_per_rank = cores > cfg.local_ranks ? (int)(cores / cfg.local_ranks) : 1;
    }
    if (cfg.timeout_ms <= 0) cfg.timeout_ms = 60000;

    const dp_driver *drv;
    DP_CHECK(dp_driver_load(cfg.driver, &drv));
    const dp_link_ops *link = drv->link;
    if (cfg.link && strcmp(cfg.link, drv->link->name) != 0) {
        if (strcmp(cfg.link, "mpi") != 0)
            return dp_fail(DP_ERR_NOT_FOUND, "no link \"%s\": the links are the driver's own (%s) and mpi", cfg.link,
                           drv->link->name);
        if (!dp_mpi_built())
            return dp_fail(DP_ERR_UNSUPPORTED, "the mpi link was asked for, but this build has no MPI: install an MPI "
                                               "(Debian: libopenmpi-dev openmpi-bin) and run ./configure again");
        if (strcmp(drv->link->name, "cpu") != 0) /* drivers of host memory share the cpu link */
            return dp_fail(DP_ERR_UNSUPPORTED, "the mpi link carries host memory, so it runs with the cpu driver "
                                               "only; the %s driver crosses processes with its own link", drv->name);
        link = &dp_mpi_link_ops;
    }
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
    if (cfg.model.moe.plan_phy2log) {
        size_t cells = (size_t)cfg.model.moe.plan_layers * (size_t)cfg.model.moe.plan_slots;
        rt->plan = malloc(sizeof *rt->plan * 2 * (cells ? cells : 1));
        if (!rt->plan) {
            dp_schedule_free(sched);
            free(rt);
            return dp_fail(DP_ERR_NOMEM, "out of memory creating a runtime");
        }
        memcpy(rt->plan, cfg.model.moe.plan_phy2log, sizeof *rt->plan * cells);
        if (cfg.model.moe.plan_replica) memcpy(rt->plan + cells, cfg.model.moe.plan_replica, sizeof *rt->plan * cells);
        rt->cfg.model.moe.plan_phy2log = rt->plan;
        rt->cfg.model.moe.plan_replica = cfg.model.moe.plan_replica ? rt->plan + cells : NULL;
    }
    if (link != drv->link) {
        rt->with_link = *drv;
        rt->with_link.link = link;
        rt->drv = &rt->with_link;
    }
    rt->sched = sched;
    rt->replicas = cfg.dp * cfg.ep;
    rt->world_size = W;
    rt->first_rank = cfg.first_rank, rt->local_ranks = cfg.local_ranks;
    pthread_mutex_init(&rt->lock, NULL);
    pthread_cond_init(&rt->gate_cond, NULL);
    rt->gate_failed_rank = -1;
    rt->ranks = calloc((size_t)rt->local_ranks, sizeof *rt->ranks);
    st = rt->ranks ? DP_OK : dp_fail(DP_ERR_NOMEM, "out of memory creating a runtime");
    if (st == DP_OK && cfg.record_times) st = alloc_times(rt);
    if (st != DP_OK) {
        dp_runtime_destroy(rt);
        return st;
    }
    dp_link_world_config wc = {.world_size = rt->world_size, .first_rank = rt->first_rank,
                               .local_ranks = rt->local_ranks, .timeout_ms = cfg.timeout_ms,
                               .struct_size = sizeof wc, .bootstrap = cfg.bootstrap,
                               .bootstrap_ctx = cfg.bootstrap_ctx};
    st = pool_start(rt);
    if (st == DP_OK) st = rt->drv->link->world_create(&wc, &rt->world);
    if (st == DP_OK) st = run_ranks(rt, job_setup);
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
        if (rt->world && rt->pool) run_ranks(rt, job_teardown);
        else
            for (int i = 0; i < rt->local_ranks; i++) dp_rank_destroy(rt->ranks[i]), rt->ranks[i] = NULL;
    }
    pool_stop(rt);
    if (rt->world) rt->drv->link->world_destroy(rt->world);
    free(rt->ranks);
    for (int r = 0; rt->times && r < rt->world_size; r++) free(rt->times[r]);
    free(rt->times);
    dp_schedule_free(rt->sched);
    free(rt->plan);
    pthread_mutex_destroy(&rt->lock);
    pthread_cond_destroy(&rt->gate_cond);
    free(rt);
}

const dp_schedule *dp_runtime_schedule(const dp_runtime *rt) { return rt->sched; }
const dp_model_config *dp_runtime_model(const dp_runtime *rt) { return &rt->cfg.model; }

double dp_runtime_step_start(const dp_runtime *rt) { return rt->step_t0; }

const dp_action_time *dp_runtime_times(const dp_runtime *rt, int rank)
{
    return rt->times && rank >= 0 && rank < rt->world_size ? rt->times[rank] : NULL;
}

/* ----------------------------------------------------------------------------
 * steps */

static dp_status job_load(dp_runtime *rt, int r) { return dp_rank_load(*local(rt, r), rt->args.inputs, rt->args.targets); }
static dp_status job_train(dp_runtime *rt, int r) { return dp_rank_train(*local(rt, r), &rt->args); }
static dp_status job_infer(dp_runtime *rt, int r) { return dp_rank_infer(*local(rt, r), &rt->args); }

/* The step's arguments, the same for every rank. */
static void set_args(dp_runtime *rt, const float *inputs, const void *targets, float *losses, float *outputs)
{
    rt->args = (dp_rank_step){.inputs = inputs, .targets = targets, .step = rt->step, .t0 = rt->step_t0,
                              .losses = losses, .outputs = outputs, .times = rt->times};
}

static dp_status train(dp_runtime *rt, const float *inputs, const void *targets, float *losses)
{
    rt->step++;
    rt->step_t0 = dp_now_ms();
    rt->loaded = 0;
    set_args(rt, inputs, targets, losses, NULL);
    dp_status st = run_ranks(rt, job_train);
    set_args(rt, NULL, NULL, NULL, NULL);
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
    rt->loaded = 0;
    set_args(rt, inputs, targets, NULL, NULL);
    dp_status st = run_ranks(rt, job_load);
    set_args(rt, NULL, NULL, NULL, NULL);
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
    rt->step_t0 = dp_now_ms();
    rt->loaded = 0; /* the inputs are replaced; the targets no longer match them */
    set_args(rt, inputs, NULL, NULL, outputs);
    dp_status st = run_ranks(rt, job_infer);
    set_args(rt, NULL, NULL, NULL, NULL);
    return st;
}

/* ----------------------------------------------------------------------------
 * training state: the root knows every parameter's name and size; tensors travel to it
 * from the rank holding them, and a write is done by that rank */

int dp_runtime_num_params(const dp_runtime *rt, int stage) { return dp_rank_num_params(any_local(rt), stage); }

/* Checks (stage, copy, index, which) and gives the parameter's size and name. */
static dp_status locate(const dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which, size_t *count,
                        char name[32])
{
    const dp_schedule *s = rt->sched;
    if (stage < 0 || stage >= s->num_stages || copy < 0 || copy >= s->num_pipes)
        return dp_fail(DP_ERR_INVALID, "no stage %d copy %d (stages %d, copies %d)", stage, copy, s->num_stages,
                       s->num_pipes);
    if (which < DP_TENSOR_VALUE || which > DP_TENSOR_V)
        return dp_fail(DP_ERR_INVALID, "no tensor kind %d (DP_TENSOR_VALUE, _GRAD, _M or _V)", (int)which);
    return dp_rank_param_info(any_local(rt), stage, index, count, name);
}

static dp_status job_gather_tensor(dp_runtime *rt, int r)
{
    return dp_rank_gather_replica_tensor(*local(rt, r), rt->tensor.replica, rt->tensor.stage, rt->tensor.copy, rt->tensor.index,
                                 rt->tensor.which, rt->tensor.out);
}

static dp_status job_write_tensor(dp_runtime *rt, int r)
{
    return dp_rank_write_tensor(*local(rt, r), rt->tensor.stage, rt->tensor.copy, rt->tensor.index, rt->tensor.which,
                                rt->tensor.in, rt->tensor.count);
}

dp_status dp_runtime_read_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which, float *host,
                                 size_t *count, char name[32])
{
    size_t n;
    DP_CHECK(locate(rt, stage, copy, index, which, &n, name));
    if (count) *count = n;
    if (!host) return DP_OK;
    return dp_runtime_read_replica_tensor(rt, 0, stage, copy, index, which, host);
}

dp_status dp_runtime_read_replica_tensor(dp_runtime *rt, int replica, int stage, int copy, int index,
                                         dp_tensor_kind which, float *host)
{
    DP_CHECK(locate(rt, stage, copy, index, which, NULL, NULL));
    if (replica < 0 || replica >= rt->replicas)
        return dp_fail(DP_ERR_INVALID, "no replica %d (the job has %d)", replica, rt->replicas);
    if (!host) return dp_fail(DP_ERR_INVALID, "reading stage %d parameter %d: no host array", stage, index);
    rt->tensor.replica = replica;
    rt->tensor.stage = stage, rt->tensor.copy = copy, rt->tensor.index = index, rt->tensor.which = which;
    rt->tensor.out = host;
    dp_status st = run_ranks(rt, job_gather_tensor);
    rt->tensor.out = NULL;
    return st;
}

dp_status dp_runtime_write_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which,
                                  const float *host, size_t count)
{
    size_t n;
    char name[32];
    DP_CHECK(locate(rt, stage, copy, index, which, &n, name));
    if (!host) return dp_fail(DP_ERR_INVALID, "writing stage %d parameter %d: no host data", stage, index);
    if (count != n)
        return dp_fail(DP_ERR_INVALID, "stage %d parameter %s holds %zu floats; %zu were given for its %s", stage,
                       name, n, count, dp_tensor_kind_name(which));
    rt->tensor.stage = stage, rt->tensor.copy = copy, rt->tensor.index = index, rt->tensor.which = which;
    rt->tensor.in = host, rt->tensor.count = count;
    dp_status st = run_ranks(rt, job_write_tensor);
    rt->tensor.in = NULL;
    return st;
}

dp_status dp_runtime_read_param(dp_runtime *rt, int stage, int copy, int index, int grad, float *host, size_t *count,
                                char name[32])
{
    return dp_runtime_read_tensor(rt, stage, copy, index, grad ? DP_TENSOR_GRAD : DP_TENSOR_VALUE, host, count, name);
}

int dp_runtime_hosts_rank(const dp_runtime *rt, int world_rank)
{
    return world_rank >= rt->first_rank && world_rank < rt->first_rank + rt->local_ranks;
}

static dp_status job_read_own_tensor(dp_runtime *rt, int r)
{
    if (r != rt->sched->stage_rank[rt->tensor.copy][rt->tensor.stage]) return DP_OK;
    return dp_rank_read_own_tensor(*local(rt, r), rt->tensor.stage, rt->tensor.copy, rt->tensor.index, rt->tensor.which,
                                   rt->tensor.out);
}

dp_status dp_runtime_read_local_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which,
                                       float *host)
{
    DP_CHECK(locate(rt, stage, copy, index, which, NULL, NULL));
    int owner = rt->sched->stage_rank[copy][stage];
    if (!dp_runtime_hosts_rank(rt, owner))
        return dp_fail(DP_ERR_INVALID, "stage %d copy %d lives on rank %d, which this process does not host (ranks %d..%d)",
                       stage, copy, owner, rt->first_rank, rt->first_rank + rt->local_ranks - 1);
    if (!host) return dp_fail(DP_ERR_INVALID, "reading stage %d parameter %d: no host array", stage, index);
    rt->tensor.stage = stage, rt->tensor.copy = copy, rt->tensor.index = index, rt->tensor.which = which;
    rt->tensor.out = host;
    dp_status st = run_ranks(rt, job_read_own_tensor);
    rt->tensor.out = NULL;
    return st;
}

static dp_status job_barrier(dp_runtime *rt, int r) { return rt->cfg.bootstrap->barrier(rt->cfg.bootstrap_ctx, r); }

dp_status dp_runtime_barrier(dp_runtime *rt)
{
    if (!rt->cfg.bootstrap) return DP_OK; /* every rank is a thread of this process */
    return run_ranks(rt, job_barrier);
}

int dp_runtime_replicas(const dp_runtime *rt) { return rt->replicas; }

int dp_runtime_step(const dp_runtime *rt) { return rt->step; }

dp_status dp_runtime_set_step(dp_runtime *rt, int step)
{
    if (step < 0) return dp_fail(DP_ERR_INVALID, "the optimizer step count must be >= 0, got %d", step);
    rt->step = step;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * mixture-of-experts loads: an MoE layer's balancing bias (the buffer "gate.bias", block_moe.c)
 * takes for its "gradient" the tokens each expert received, so that the step's gradient sync
 * sums them over every copy of the stage; they stay there until the next step zeroes the
 * gradients. Reading them is reading that gradient. */

/* The model layer that is MoE layer `moe_layer`, or -1. */
static int moe_model_layer(const dp_runtime *rt, int moe_layer)
{
    int layers = rt->sched->num_stages * rt->cfg.model.layers_per_stage;
    for (int l = 0, n = 0; l < layers; l++)
        if (dp_model_layer_kind(&rt->cfg.model, l) == DP_BLOCK_MOE && n++ == moe_layer) return l;
    return -1;
}

int dp_runtime_num_moe_layers(const dp_runtime *rt)
{
    int n = 0;
    while (moe_model_layer(rt, n) >= 0) n++;
    return n;
}

dp_status dp_runtime_read_expert_load(dp_runtime *rt, int moe_layer, int64_t *counts)
{
    int layer = moe_layer >= 0 ? moe_model_layer(rt, moe_layer) : -1;
    if (layer < 0)
        return dp_fail(DP_ERR_INVALID, "no MoE layer %d: the model has %d (0 to n - 1, in layer order)", moe_layer,
                       dp_runtime_num_moe_layers(rt));
    if (!counts) return dp_fail(DP_ERR_INVALID, "reading the loads of MoE layer %d: no host array", moe_layer);
    int lps = rt->cfg.model.layers_per_stage, stage = layer / lps, E = rt->cfg.model.moe.experts;
    char want[32], name[32];
    snprintf(want, sizeof want, "block%d.gate.bias", layer % lps);
    int index = -1;
    for (int i = 0; i < dp_runtime_num_params(rt, stage) && index < 0; i++) {
        size_t n = 0;
        DP_CHECK(dp_rank_param_info(any_local(rt), stage, i, &n, name));
        if (strcmp(name, want) == 0 && n == (size_t)E) index = i;
    }
    if (index < 0)
        return dp_fail(DP_ERR_INVALID, "MoE layer %d (layer %d, stage %d) has no %s of %d experts", moe_layer, layer,
                       stage, want, E);
    float *loads = malloc(sizeof *loads * (size_t)E);
    if (!loads) return dp_fail(DP_ERR_NOMEM, "out of memory for the loads of %d experts", E);
    dp_status st = dp_runtime_read_tensor(rt, stage, 0, index, DP_TENSOR_GRAD, loads, NULL, NULL);
    /* only the process hosting rank 0 receives them; the others' are not read */
    for (int e = 0; e < E && st == DP_OK; e++) {
        float v = dp_runtime_is_root(rt) ? loads[e] : 0.0f;
        if (!(v >= 0.0f && v <= 16777216.0f) || v != (float)(int64_t)v)
            st = dp_fail(DP_ERR_INVALID, "MoE layer %d: expert %d's load in step %d is %.9g, not a whole number of "
                         "tokens up to 2^24 (fp32 counts are exact only that far)", moe_layer, e, rt->step, (double)v);
        else counts[e] = (int64_t)v;
    }
    free(loads);
    return st;
}

/* ----------------------------------------------------------------------------
 * expert placement while training */

/* A placement for the model's slots: every expert of each layer at least once, and replica
 * ranks 0 .. count - 1 of each expert once each. */
static dp_status check_placement(const dp_moe_config *m, const int32_t *phy2log, const int32_t *replica)
{
    int E = m->experts, P = m->plan_slots;
    int *count = calloc((size_t)E, sizeof *count), *seen = calloc((size_t)E * (size_t)P, sizeof *seen);
    dp_status st = count && seen ? DP_OK : dp_fail(DP_ERR_NOMEM, "out of memory checking a placement");
    for (int l = 0; st == DP_OK && l < m->plan_layers; l++) {
        const int32_t *row = phy2log + (size_t)l * P, *rank = replica ? replica + (size_t)l * P : NULL;
        memset(count, 0, sizeof *count * (size_t)E);
        memset(seen, 0, sizeof *seen * (size_t)E * (size_t)P);
        for (int p = 0; st == DP_OK && p < P; p++)
            if (row[p] < 0 || row[p] >= E)
                st = dp_fail(DP_ERR_INVALID, "the new placement puts expert %d in slot %d of MoE layer %d; the "
                             "experts are 0 to %d", (int)row[p], p, l, E - 1);
            else count[row[p]]++;
        for (int e = 0; st == DP_OK && e < E; e++)
            if (!count[e])
                st = dp_fail(DP_ERR_INVALID, "the new placement of MoE layer %d has no slot for expert %d: every "
                             "expert needs one", l, e);
        for (int p = 0; st == DP_OK && rank && p < P; p++) {
            int e = row[p], r = rank[p];
            if (r < 0 || r >= count[e] || seen[(size_t)e * P + r]++)
                st = dp_fail(DP_ERR_INVALID, "the new placement of MoE layer %d makes slot %d replica %d of expert "
                             "%d, which has %d slot(s) and each replica rank once", l, p, r, e, count[e]);
        }
    }
    free(count), free(seen);
    return st;
}

static dp_status job_move_experts(dp_runtime *rt, int r)
{
    return dp_rank_move_experts(*local(rt, r), rt->move.plan, rt->move.has_replica);
}

dp_status dp_runtime_move_experts(dp_runtime *rt, const int32_t *phy2log, const int32_t *replica,
                                  dp_expert_move_stats *stats)
{
    dp_moe_config *m = &rt->cfg.model.moe;
    if (stats) memset(stats, 0, sizeof *stats);
    if (!m->plan_phy2log)
        return dp_fail(DP_ERR_INVALID, "moving experts: the model was made without an expert placement; give it one "
                       "(dp_moe_config's plan; phy2log[l][p] = p places them as none does)");
    size_t cells = (size_t)m->plan_layers * (size_t)m->plan_slots;
    int root = dp_runtime_is_root(rt);
    if (root && !phy2log) return dp_fail(DP_ERR_INVALID, "moving experts: no placement given");
    int32_t *next = NULL;
    if (root) {
        DP_CHECK(check_placement(m, phy2log, replica));
        if (!(next = malloc(sizeof *next * 2 * (cells ? cells : 1))))
            return dp_fail(DP_ERR_NOMEM, "out of memory for a placement of %zu slots", cells);
        memcpy(next, phy2log, sizeof *next * cells);
        if (replica) memcpy(next + cells, replica, sizeof *next * cells);
    }
    rt->move.plan = next, rt->move.has_replica = replica != NULL;
    dp_status st = run_ranks(rt, job_move_experts);
    rt->move.plan = NULL;
    free(next);
    if (st != DP_OK)
        return dp_fail(st, "moving experts to a new placement after step %d: %s; no expert moved (each slot keeps the "
                       "placement it had)", rt->step, dp_last_error());
    /* what moved, as every process counts it, from the placement the ranks now hold */
    const dp_moe_config *now = &dp_rank_model(any_local(rt))->moe;
    int P = m->plan_slots, ep = rt->cfg.ep > 1 ? rt->cfg.ep : 1, S = P / ep;
    uint64_t copies = (uint64_t)rt->cfg.dp * (uint64_t)rt->sched->num_pipes;
    const dp_optimizer_config *o = &rt->cfg.optimizer;
    int tensors = 2 + (o->kind == DP_OPT_ADAMW ? 2 : o->kind == DP_OPT_SGD && o->momentum != 0.0f ? 1 : 0);
    uint64_t slot_bytes = 3ull * (uint64_t)m->expert_hidden * (uint64_t)rt->cfg.model.hidden * sizeof(float) *
                          (uint64_t)tensors;
    for (size_t c = 0; c < cells; c++) {
        const int32_t *old = rt->plan + c / (size_t)P * (size_t)P;
        int p = (int)(c % (size_t)P);
        if (old[p] == now->plan_phy2log[c]) continue;
        int q = dp_rank_move_source(old, P, S, p, now->plan_phy2log[c]);
        if (stats) {
            stats->experts_moved++;
            if (q / S == p / S) stats->bytes_copied += slot_bytes * copies;
            else stats->bytes_sent += slot_bytes * copies;
        }
    }
    memcpy(rt->plan, now->plan_phy2log, sizeof *rt->plan * cells);
    if (now->plan_replica) memcpy(rt->plan + cells, now->plan_replica, sizeof *rt->plan * cells);
    m->plan_replica = now->plan_replica ? rt->plan + cells : NULL;
    return DP_OK;
}
