/* rank.c: one rank's work (see rank.h). Everything here acts on this rank's device, stages
 * and links; what the host must see is sent to the root through the world group. The rank
 * plays its pipeline rank's part of the schedule on its replica's share of the batch. */
#define _POSIX_C_SOURCE 200809L
#include "engine/rank.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/groups.h"
#include "engine/host_copy.h"
#include "engine/param_io.h"

/* One parameter as the root's directory lists it, and as it travels there. */
typedef struct {
    uint64_t count;
    char name[32];
    int32_t whole_index; /* its place as one rank holding every expert lists it: its index here */
    int32_t sharded;     /* 1: an expert's, held by ep rank owner_ep only */
    int32_t owner_ep;
    int32_t local_index; /* its index on the ranks holding it */
} param_record;

struct dp_rank {
    dp_runtime_config cfg;
    const dp_driver *drv;
    const dp_schedule *sched;
    int rank;          /* world rank */
    dp_layout layout;  /* where world ranks sit (groups.h) */
    int prank, replica; /* this rank's pipeline rank (its part of the schedule) and replica */
    dp_device *dev;
    dp_stream *streams[2];
    dp_groups groups;
    dp_stage *stages[DP_MAX_LOCAL_STAGES];
    dp_executor *ex;
    void *input[DP_MAX_LOCAL_STAGES], *output[DP_MAX_LOCAL_STAGES]; /* by pipe, in the model's dtype */
    float *loss[DP_MAX_LOCAL_STAGES];
    void *target[DP_MAX_LOCAL_STAGES];
    dp_cast_staging staging; /* for host fp32 <-> device bf16 */
    float *grad_scratch;     /* both local stages' gradients side by side, for one all_reduce */
    void *scratch;           /* device bytes for results in flight to or from the root */
    size_t scratch_bytes;
    dp_action_time *times;
    /* root: every stage's parameters, from the rank holding its copy 0 */
    int *num_params;
    param_record **params;
};

/* ----------------------------------------------------------------------------
 * results to the root
 *
 * Results travel on the world group's activation channel of pipe 0, after every message of
 * the step, with sequence numbers above any micro-batch's: neither tag matching (threads)
 * nor order matching per channel (NCCL) can confuse them with the step's messages. */

enum { RESULT_DATA = 1 << 24, RESULT_COUNT };
#define RESULT_TAG(what) DP_TAG(DP_CHANNEL_ACTIVATION(0), (what))

static dp_status scratch(dp_rank *rk, size_t bytes, void **out)
{
    if (bytes > rk->scratch_bytes) {
        rk->drv->device->free(rk->dev, rk->scratch);
        rk->scratch = NULL, rk->scratch_bytes = 0;
        DP_CHECK(rk->drv->device->alloc(rk->dev, bytes, &rk->scratch));
        rk->scratch_bytes = bytes;
    }
    *out = rk->scratch;
    return DP_OK;
}

static dp_status send_to(dp_rank *rk, const void *dev_buf, size_t bytes, int peer, int what)
{
    const dp_link_ops *L = rk->drv->link;
    dp_request *req;
    DP_CHECK(L->isend(rk->groups.world, dev_buf, bytes, peer, RESULT_TAG(what), rk->streams[0], &req));
    return L->wait(rk->groups.world, req);
}

static dp_status recv_from(dp_rank *rk, void *dev_buf, size_t bytes, int peer, int what)
{
    const dp_link_ops *L = rk->drv->link;
    dp_request *req;
    DP_CHECK(L->irecv(rk->groups.world, dev_buf, bytes, peer, RESULT_TAG(what), rk->streams[0], &req));
    return L->wait(rk->groups.world, req);
}

/* Device bytes of rank `owner` to the root: the owner sends src (NULL: zeros); on the root
 * *at points at them in device memory (src itself when the root owns them). */
static dp_status gather_device(dp_rank *rk, int owner, const void *src, size_t bytes, const void **at)
{
    const dp_device_ops *D = rk->drv->device;
    void *buf;
    if (rk->rank == owner && (!src || owner != DP_ROOT_RANK) && bytes) {
        if (!src) {
            DP_CHECK(scratch(rk, bytes, &buf));
            DP_CHECK(D->memset(rk->dev, buf, 0, bytes, rk->streams[0]));
            src = buf;
        }
        if (owner != DP_ROOT_RANK) return send_to(rk, src, bytes, DP_ROOT_RANK, RESULT_DATA);
    }
    if (rk->rank != DP_ROOT_RANK) return DP_OK;
    if (owner == DP_ROOT_RANK || !bytes) {
        *at = src;
        return DP_OK;
    }
    DP_CHECK(scratch(rk, bytes, &buf));
    DP_CHECK(recv_from(rk, buf, bytes, owner, RESULT_DATA));
    *at = buf;
    return DP_OK;
}

/* The same, from device memory of the owner into host memory of the root. */
static dp_status gather_to_host(dp_rank *rk, int owner, const void *src, size_t bytes, void *host)
{
    const void *at = NULL;
    DP_CHECK(gather_device(rk, owner, src, bytes, &at));
    if (rk->rank != DP_ROOT_RANK || !bytes) return DP_OK;
    DP_CHECK(rk->drv->device->copy(rk->dev, host, at, bytes, DP_COPY_DEVICE_TO_HOST, rk->streams[0]));
    return rk->drv->device->stream_synchronize(rk->dev, rk->streams[0]);
}

/* Host bytes of a rank to host memory of the root, through device memory (links carry
 * device memory). */
static dp_status host_to_root(dp_rank *rk, int owner, const void *src, void *dst, size_t bytes, int what)
{
    const dp_device_ops *D = rk->drv->device;
    if (owner == DP_ROOT_RANK) {
        if (rk->rank == DP_ROOT_RANK && dst != src && bytes) memcpy(dst, src, bytes);
        return DP_OK;
    }
    if (!bytes || (rk->rank != owner && rk->rank != DP_ROOT_RANK)) return DP_OK;
    void *buf;
    DP_CHECK(scratch(rk, bytes, &buf));
    if (rk->rank == owner) {
        DP_CHECK(D->copy(rk->dev, buf, src, bytes, DP_COPY_HOST_TO_DEVICE, rk->streams[0]));
        return send_to(rk, buf, bytes, DP_ROOT_RANK, what);
    }
    DP_CHECK(recv_from(rk, buf, bytes, owner, what));
    DP_CHECK(D->copy(rk->dev, dst, buf, bytes, DP_COPY_DEVICE_TO_HOST, rk->streams[0]));
    return D->stream_synchronize(rk->dev, rk->streams[0]);
}

/* Host bytes of rank `owner` to host memory of every rank of the world, through device memory. */
static dp_status host_to_all(dp_rank *rk, int owner, void *host, size_t bytes, int what)
{
    const dp_device_ops *D = rk->drv->device;
    int n = dp_layout_world_size(&rk->layout);
    if (!bytes || n == 1) return DP_OK;
    void *buf;
    DP_CHECK(scratch(rk, bytes, &buf));
    if (rk->rank == owner) {
        DP_CHECK(D->copy(rk->dev, buf, host, bytes, DP_COPY_HOST_TO_DEVICE, rk->streams[0]));
        for (int r = 0; r < n; r++)
            if (r != owner) DP_CHECK(send_to(rk, buf, bytes, r, what));
        return DP_OK;
    }
    DP_CHECK(recv_from(rk, buf, bytes, owner, what));
    DP_CHECK(D->copy(rk->dev, host, buf, bytes, DP_COPY_DEVICE_TO_HOST, rk->streams[0]));
    return D->stream_synchronize(rk->dev, rk->streams[0]);
}

/* The world rank holding `copy` of `stage` in `replica`. */
static int holder(const dp_rank *rk, int replica, int copy, int stage)
{
    return dp_layout_world_rank(&rk->layout, replica, rk->sched->stage_rank[copy][stage]);
}

/* Every rank learns, stage by stage, the parameters from the ranks holding the stage's copy 0 in
 * replica 0 (the replicas hold the same parameters), listed as one rank holding every expert
 * lists them: with expert parallelism each ep rank tells its experts', and the others come from
 * ep rank 0. In a job of several processes each of them answers questions about the state alike. */
static dp_status gather_directory(dp_rank *rk)
{
    const dp_schedule *s = rk->sched;
    int S = s->num_stages, ep = dp_layout_ep(&rk->layout);
    rk->num_params = calloc((size_t)S, sizeof *rk->num_params);
    rk->params = calloc((size_t)S, sizeof *rk->params);
    if (!rk->num_params || !rk->params) return dp_fail(DP_ERR_NOMEM, "out of memory for the parameter list");
    for (int stage = 0; stage < S; stage++) {
        param_record *dir = NULL;
        int64_t whole = 0;
        for (int k = 0; k < ep; k++) {
            int owner = holder(rk, k, 0, stage); /* replica k: data-parallel replica 0, ep rank k */
            int64_t n[2] = {0, 0};
            param_record *recs = NULL;
            if (rk->rank == owner) {
                dp_stage *st = rk->stages[s->stage_local[0][stage]];
                n[0] = dp_stage_num_params(st), n[1] = dp_stage_num_whole_params(st);
                recs = calloc((size_t)n[0] + 1, sizeof *recs);
                if (!recs) return dp_fail(DP_ERR_NOMEM, "out of memory for the parameter list");
                for (int i = 0; i < n[0]; i++) {
                    dp_param_view v;
                    dp_stage_param(st, i, &v);
                    recs[i].count = v.count;
                    memcpy(recs[i].name, v.name, sizeof recs[i].name);
                    recs[i].whole_index = v.whole_index, recs[i].sharded = v.sharded;
                    recs[i].owner_ep = v.sharded ? k : 0, recs[i].local_index = i;
                }
            }
            dp_status e = host_to_all(rk, owner, n, sizeof n, RESULT_COUNT);
            if (e == DP_OK && !recs && !(recs = calloc((size_t)n[0] + 1, sizeof *recs)))
                e = dp_fail(DP_ERR_NOMEM, "out of memory for the parameter list");
            if (e == DP_OK) e = host_to_all(rk, owner, recs, (size_t)n[0] * sizeof *recs, RESULT_DATA);
            if (e == DP_OK && k == 0) {
                whole = n[1];
                if (!(dir = calloc((size_t)whole + 1, sizeof *dir)))
                    e = dp_fail(DP_ERR_NOMEM, "out of memory for the parameter list");
            }
            for (int i = 0; e == DP_OK && i < n[0]; i++) {
                if (recs[i].whole_index < 0 || recs[i].whole_index >= whole)
                    e = dp_fail(DP_ERR_INTERNAL, "stage %d parameter %s is number %d of %lld", stage, recs[i].name,
                                (int)recs[i].whole_index, (long long)whole);
                else if (k == 0 || recs[i].sharded) dir[recs[i].whole_index] = recs[i];
            }
            free(recs);
            if (e != DP_OK) {
                free(dir);
                return e;
            }
        }
        rk->num_params[stage] = (int)whole, rk->params[stage] = dir;
    }
    return DP_OK;
}

int dp_rank_num_params(const dp_rank *rk, int stage)
{
    if (!rk->num_params || stage < 0 || stage >= rk->sched->num_stages) return 0;
    return rk->num_params[stage];
}

dp_status dp_rank_param_info(const dp_rank *rk, int stage, int index, size_t *count, char name[32])
{
    int n = dp_rank_num_params(rk, stage);
    if (index < 0 || index >= n) return dp_fail(DP_ERR_INVALID, "stage %d has no parameter %d (it has %d)", stage, index, n);
    const param_record *p = &rk->params[stage][index];
    if (count) *count = (size_t)p->count;
    if (name) snprintf(name, 32, "%s", p->name);
    return DP_OK;
}

dp_status dp_rank_gather_tensor(dp_rank *rk, int stage, int copy, int index, dp_tensor_kind which, float *host)
{
    return dp_rank_gather_replica_tensor(rk, 0, stage, copy, index, which, host);
}

/* Where parameter `index` of `stage` (as the directory lists it) lives in `replica`: the replica
 * holding it (an expert's: the ep rank holding it in the same data-parallel replica), and its
 * index there. */
static dp_status place_of(const dp_rank *rk, int replica, int stage, int index, int *at_replica, int *local)
{
    DP_CHECK(dp_rank_param_info(rk, stage, index, NULL, NULL));
    const param_record *p = &rk->params[stage][index];
    int ep = dp_layout_ep(&rk->layout);
    *at_replica = p->sharded ? replica / ep * ep + p->owner_ep : replica;
    *local = p->local_index;
    return DP_OK;
}

dp_status dp_rank_gather_replica_tensor(dp_rank *rk, int replica, int stage, int copy, int index, dp_tensor_kind which,
                                        float *host)
{
    const dp_schedule *s = rk->sched;
    int at_replica, local;
    DP_CHECK(place_of(rk, replica, stage, index, &at_replica, &local));
    int owner = holder(rk, at_replica, copy, stage);
    size_t count = 0;
    if (rk->rank == owner) {
        dp_stage *st = rk->stages[s->stage_local[copy][stage]];
        index = local;
        if (owner == DP_ROOT_RANK)
            return dp_param_read(rk->drv->device, rk->dev, st, index, which, host, NULL, NULL);
        if (index < 0 || index >= dp_stage_num_params(st))
            return dp_fail(DP_ERR_INVALID, "stage %d has no parameter %d", stage, index);
        dp_param_view v;
        dp_stage_param(st, index, &v);
        return gather_to_host(rk, owner, dp_param_tensor(&v, which), v.count * sizeof(float), NULL);
    }
    if (rk->rank != DP_ROOT_RANK) return DP_OK;
    DP_CHECK(dp_rank_param_info(rk, stage, index, &count, NULL));
    return gather_to_host(rk, owner, NULL, count * sizeof(float), host);
}

dp_status dp_rank_read_own_tensor(dp_rank *rk, int stage, int copy, int index, dp_tensor_kind which, float *host)
{
    const dp_schedule *s = rk->sched;
    if (rk->rank != holder(rk, 0, copy, stage))
        return dp_fail(DP_ERR_INVALID, "rank %d does not hold stage %d copy %d of replica 0", rk->rank, stage, copy);
    dp_stage *st = rk->stages[s->stage_local[copy][stage]];
    int local = dp_stage_find_param(st, index, 0);
    if (local < 0) return dp_fail(DP_ERR_INVALID, "rank %d holds no parameter %d of stage %d", rk->rank, index, stage);
    return dp_param_read(rk->drv->device, rk->dev, st, local, which, host, NULL, NULL);
}

dp_status dp_rank_write_tensor(dp_rank *rk, int stage, int copy, int index, dp_tensor_kind which, const float *host,
                               size_t count)
{
    const dp_schedule *s = rk->sched;
    /* every replica's copy, so that the replicas stay identical (an expert's: wherever it lives,
     * on each of its slots) */
    if (rk->prank != s->stage_rank[copy][stage]) return DP_OK;
    DP_CHECK(dp_rank_param_info(rk, stage, index, NULL, NULL));
    dp_stage *st = rk->stages[s->stage_local[copy][stage]];
    for (int i = dp_stage_find_param(st, index, 0); i >= 0; i = dp_stage_find_param(st, index, i + 1))
        DP_CHECK(dp_param_write(rk->drv->device, rk->dev, st, i, which, host, count));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * set-up and tear-down */

dp_status dp_rank_create(const dp_rank_config *c, dp_rank **out)
{
    *out = NULL;
    dp_rank *rk = calloc(1, sizeof *rk);
    if (!rk) return dp_fail(DP_ERR_NOMEM, "out of memory creating rank %d", c->rank);
    rk->cfg = *c->cfg;
    rk->drv = c->drv;
    rk->sched = c->sched;
    rk->rank = c->rank;
    int ep = rk->cfg.ep > 1 ? rk->cfg.ep : 1;
    rk->layout = (dp_layout){.replicas = (rk->cfg.dp > 1 ? rk->cfg.dp : 1) * ep, .pipeline_ranks = c->sched->num_ranks,
                             .ep = ep};
    rk->prank = dp_layout_pipeline_rank(&rk->layout, c->rank);
    rk->replica = dp_layout_replica(&rk->layout, c->rank);
    *out = rk;
    const dp_device_ops *D = rk->drv->device;
    const dp_schedule *s = rk->sched;
    int r = rk->rank, pr = rk->prank, ordinal = 0, count = 0;
    if (rk->cfg.pin_device) ordinal = rk->cfg.device;
    else if (rk->cfg.spread_devices) {
        DP_CHECK(D->device_count(&count));
        if (count > 0) ordinal = r % count;
    }
    dp_device_config dc = {
        .ordinal = ordinal, .threads = rk->cfg.threads_per_rank, .rank = r, .flags = rk->cfg.device_flags};
    DP_CHECK(D->open(&dc, &rk->dev));
    for (int i = 0; i < 2; i++) DP_CHECK(D->stream_create(rk->dev, &rk->streams[i]));
    dp_stage_env env = {.ops = D, .dev = rk->dev, .streams = {rk->streams[0], rk->streams[1]},
                        .ep_size = rk->layout.ep, .ep_rank = rk->replica % rk->layout.ep,
                        .routing_tape = rk->cfg.routing_tape, .routing_mode = rk->cfg.routing_mode, .rank = r};
    for (int d = 0; d < s->num_local_stages; d++)
        DP_CHECK(dp_stage_create(&env, &rk->cfg.model, s->slot_stage[d][pr], s->num_stages, &rk->stages[d]));
    return DP_OK;
}

dp_status dp_rank_connect(dp_rank *rk, dp_link_world *w)
{
    const dp_device_ops *D = rk->drv->device;
    const dp_schedule *s = rk->sched;
    int r = rk->prank;
    DP_CHECK(dp_groups_open(rk->drv->link, w, rk->rank, rk->dev, rk->cfg.timeout_ms, s, &rk->layout, &rk->groups));
    for (int d = 0; d < s->num_local_stages && rk->groups.expert[0]; d++)
        dp_stage_set_ep_links(rk->stages[d], rk->drv->link, rk->groups.expert);
    size_t act_bytes = dp_model_act_bytes(&rk->cfg.model), cpp = (size_t)s->chunks_per_pipe;
    for (int d = 0; d < s->num_local_stages; d++) {
        int pipe = s->slot_pipe[d][r];
        if (dp_schedule_is_first_stage(s, r, d)) DP_CHECK(D->alloc(rk->dev, cpp * act_bytes, &rk->input[pipe]));
        if (dp_schedule_is_last_stage(s, r, d)) {
            void *p;
            DP_CHECK(D->alloc(rk->dev, cpp * dp_model_target_bytes(&rk->cfg.model), &rk->target[pipe]));
            DP_CHECK(D->alloc(rk->dev, cpp * sizeof(float), &p));
            rk->loss[pipe] = p;
            DP_CHECK(D->alloc(rk->dev, cpp * act_bytes, &rk->output[pipe]));
        }
    }
    if (rk->cfg.record_times) {
        rk->times = calloc((size_t)s->num_actions[r] + 1, sizeof *rk->times);
        if (!rk->times) return dp_fail(DP_ERR_NOMEM, "out of memory for timings");
    }
    dp_executor_config ec = {.sched = s, .rank = r, .dops = D, .dev = rk->dev, .lops = rk->drv->link,
                             .link = rk->groups.pipeline, .sync_each_action = rk->cfg.record_times,
                             .serial_pairs = rk->cfg.serial_pairs,
                             .no_overlap = rk->cfg.no_overlap};
    ec.streams[0] = rk->streams[0], ec.streams[1] = rk->streams[1];
    for (int d = 0; d < s->num_local_stages; d++) ec.stages[d] = rk->stages[d];
    DP_CHECK(dp_executor_create(&ec, &rk->ex));
    return gather_directory(rk);
}

void dp_rank_destroy(dp_rank *rk)
{
    if (!rk) return;
    const dp_device_ops *D = rk->drv->device;
    dp_executor_destroy(rk->ex);
    for (int d = 0; d < DP_MAX_LOCAL_STAGES; d++) {
        dp_stage_destroy(rk->stages[d]);
        if (rk->dev) {
            D->free(rk->dev, rk->input[d]);
            D->free(rk->dev, rk->target[d]);
            D->free(rk->dev, rk->loss[d]);
            D->free(rk->dev, rk->output[d]);
        }
    }
    if (rk->dev) {
        D->free(rk->dev, rk->grad_scratch);
        D->free(rk->dev, rk->scratch);
        dp_cast_staging_free(D, rk->dev, &rk->staging);
    }
    dp_groups_close(rk->drv->link, &rk->groups);
    for (int i = 0; i < 2; i++)
        if (rk->streams[i]) D->stream_destroy(rk->dev, rk->streams[i]);
    if (rk->dev) D->close(rk->dev);
    for (int st = 0; rk->params && st < rk->sched->num_stages; st++) free(rk->params[st]);
    free(rk->params), free(rk->num_params);
    free(rk->times);
    free(rk);
}

void dp_rank_abort(dp_rank *rk, dp_status why, const char *message)
{
    if (rk && rk->groups.world) rk->drv->link->abort(rk->groups.world, why, message);
}

/* ----------------------------------------------------------------------------
 * steps */

/* The micro-batches of one replica: the step's host arrays hold replica 0's, then replica 1's,
 * and so on (each replica gets its own micro-batches of the global batch). */
static size_t replica_chunks(const dp_rank *rk) { return (size_t)rk->sched->num_pipes * rk->sched->chunks_per_pipe; }

/* The step's inputs (and targets) from the host into this rank's device, in the model's
 * dtype; MSE targets are fp32 on the host like the inputs, labels int32 everywhere. */
static dp_status load_inputs(dp_rank *rk, const float *inputs, const void *targets)
{
    const dp_device_ops *D = rk->drv->device;
    const dp_schedule *s = rk->sched;
    const dp_model_config *m = &rk->cfg.model;
    int r = rk->prank;
    size_t act = dp_model_act_elems(m), cpp = (size_t)s->chunks_per_pipe, tb = dp_model_host_target_bytes(m);
    size_t first = (size_t)rk->replica * replica_chunks(rk); /* this replica's first micro-batch */
    for (int d = 0; d < s->num_local_stages; d++) {
        int pipe = s->slot_pipe[d][r];
        size_t mb = first + (size_t)pipe * cpp;
        if (dp_schedule_is_first_stage(s, r, d))
            DP_CHECK(dp_upload_f32(D, rk->dev, rk->streams[0], &rk->staging, rk->input[pipe], m->dtype,
                                   inputs + mb * act, cpp * act));
        if (!targets || !dp_schedule_is_last_stage(s, r, d)) continue;
        if (m->loss == DP_LOSS_MSE) {
            DP_CHECK(dp_upload_f32(D, rk->dev, rk->streams[0], &rk->staging, rk->target[pipe], m->dtype,
                                   (const float *)targets + mb * act, cpp * act));
        } else {
            DP_CHECK(D->copy(rk->dev, rk->target[pipe], (const char *)targets + mb * tb, cpp * tb,
                             DP_COPY_HOST_TO_DEVICE, rk->streams[0]));
        }
    }
    return D->stream_synchronize(rk->dev, rk->streams[0]);
}

dp_status dp_rank_load(dp_rank *rk, const float *inputs, const void *targets)
{
    return load_inputs(rk, inputs, targets);
}

static dp_step_io step_io(dp_rank *rk, double t0)
{
    dp_step_io io;
    memset(&io, 0, sizeof io);
    for (int p = 0; p < DP_MAX_LOCAL_STAGES; p++) {
        io.input[p] = rk->input[p];
        io.target[p] = rk->target[p];
        io.loss[p] = rk->loss[p];
        io.output[p] = rk->output[p];
    }
    io.times = rk->times;
    io.t0 = t0;
    return io;
}

/* The gradients of each stage summed over its every copy: first within the replica (the
 * pair: both orders of a sum of two give the same bits), then across the replicas, which the
 * link sums in group-rank order, that is replica order: ((G0 + G1) + G2) + ... with Gd replica
 * d's pair-summed gradient. The single-rank reference (reference.c) sums in this grouping, so
 * every copy of every replica ends bit-equal to it. The sum is not divided by the replicas:
 * a step's gradient is the sum of its micro-batches' gradients, whoever ran them. */
static dp_status sync_gradients(dp_rank *rk)
{
    const dp_schedule *s = rk->sched;
    /* Expert parallelism first: the replicated parameters' gradients summed over the ep ranks
     * (the experts' regions are zero there until the fold), then each expert's gradient folded
     * from its sources' in source order: so that per copy of a stage, the ep replicas are summed
     * in ep order before the pair and the data-parallel replicas, as the reference sums them. */
    for (int i = 0; i < s->num_local_stages; i++) {
        size_t n;
        float *g = dp_stage_grads(rk->stages[i], &n);
        if (rk->groups.expert[0])
            DP_CHECK(rk->drv->link->all_reduce(rk->groups.expert[0], g, g, n, DP_DTYPE_F32, DP_REDUCE_SUM,
                                               rk->streams[0]));
        /* and, with an EPLB plan's replicas, at any --ep, their sum */
        DP_CHECK(dp_stage_reduce_expert_grads(rk->stages[i], rk->streams[0]));
    }
    dp_link *groups[2] = {rk->groups.pair, rk->groups.data}; /* in this order on every rank */
    if (!groups[0] && !groups[1]) return DP_OK;
    int r = rk->prank;
    int order[DP_MAX_LOCAL_STAGES] = {0, 1};
    if (s->num_local_stages == 2 && s->slot_stage[1][r] < s->slot_stage[0][r]) order[0] = 1, order[1] = 0;
    /* One all_reduce per group for both stages, in stage order on every member (the pair's
     * ranks and the replicas' hold the same two stages): when ranks outnumber cores every
     * message costs a wake-up, which costs more than the copies. */
    const dp_device_ops *D = rk->drv->device;
    const dp_link_ops *L = rk->drv->link;
    size_t n[DP_MAX_LOCAL_STAGES] = {0, 0}, total = 0;
    float *g[DP_MAX_LOCAL_STAGES] = {NULL, NULL};
    for (int i = 0; i < s->num_local_stages; i++) g[i] = dp_stage_grads(rk->stages[order[i]], &n[i]), total += n[i];
    float *all = g[0];
    if (s->num_local_stages == 2) {
        if (!rk->grad_scratch) {
            void *p;
            DP_CHECK(D->alloc(rk->dev, total * sizeof(float), &p));
            rk->grad_scratch = p;
        }
        all = rk->grad_scratch;
        DP_CHECK(D->copy(rk->dev, all, g[0], n[0] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, rk->streams[0]));
        DP_CHECK(D->copy(rk->dev, all + n[0], g[1], n[1] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, rk->streams[0]));
    }
    for (int i = 0; i < 2; i++)
        if (groups[i]) DP_CHECK(L->all_reduce(groups[i], all, all, total, DP_DTYPE_F32, DP_REDUCE_SUM, rk->streams[0]));
    if (s->num_local_stages == 2) {
        DP_CHECK(D->copy(rk->dev, g[0], all, n[0] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, rk->streams[0]));
        DP_CHECK(D->copy(rk->dev, g[1], all + n[0], n[1] * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, rk->streams[0]));
    }
    return DP_OK;
}

/* Every world rank's recorded times to the root, rank by rank. */
static dp_status gather_times(dp_rank *rk, dp_action_time **times)
{
    if (!rk->times) return DP_OK;
    const dp_schedule *s = rk->sched;
    for (int r = 0; r < dp_layout_world_size(&rk->layout); r++) {
        if (rk->rank != r && rk->rank != DP_ROOT_RANK) continue;
        int actions = s->num_actions[dp_layout_pipeline_rank(&rk->layout, r)];
        size_t bytes = ((size_t)actions + 1) * sizeof(dp_action_time);
        DP_CHECK(host_to_root(rk, r, rk->times, rk->rank == DP_ROOT_RANK ? times[r] : NULL, bytes, RESULT_DATA));
    }
    return DP_OK;
}

/* A loss that is not finite stops the run where it is known, on the rank holding the pipe's last
 * stage, before the optimizer applies what it gave: training has diverged. */
static dp_status check_losses(dp_rank *rk)
{
    const dp_schedule *s = rk->sched;
    size_t cpp = (size_t)s->chunks_per_pipe;
    float *host = NULL;
    dp_status st = DP_OK;
    for (int d = 0; d < s->num_local_stages && st == DP_OK; d++) {
        if (!dp_schedule_is_last_stage(s, rk->prank, d)) continue;
        int pipe = s->slot_pipe[d][rk->prank];
        if (!host && !(host = malloc(cpp * sizeof *host))) return dp_fail(DP_ERR_NOMEM, "out of memory for the losses");
        st = rk->drv->device->copy(rk->dev, host, rk->loss[pipe], cpp * sizeof *host, DP_COPY_DEVICE_TO_HOST,
                                   rk->streams[0]);
        if (st == DP_OK) st = rk->drv->device->stream_synchronize(rk->dev, rk->streams[0]);
        for (size_t k = 0; k < cpp && st == DP_OK; k++)
            if (!isfinite(host[k]))
                st = dp_fail(DP_ERR_NONFINITE,
                             "the loss of micro-batch %zu is %s: training diverged (a learning rate too large?); "
                             "stopped before the optimizer step", (size_t)rk->replica * replica_chunks(rk) +
                             (size_t)pipe * cpp + k, isnan(host[k]) ? "NaN" : host[k] > 0 ? "inf" : "-inf");
    }
    free(host);
    return st;
}

dp_status dp_rank_train(dp_rank *rk, const dp_rank_step *a)
{
    const dp_device_ops *D = rk->drv->device;
    const dp_schedule *s = rk->sched;
    if (a->inputs) DP_CHECK(load_inputs(rk, a->inputs, a->targets));
    for (int d = 0; d < s->num_local_stages; d++) DP_CHECK(dp_stage_zero_grad(rk->stages[d], rk->streams[0]));
    dp_step_io io = step_io(rk, a->t0);
    DP_CHECK(dp_executor_train(rk->ex, &io));
    for (int i = 0; i < 2; i++) DP_CHECK(D->stream_synchronize(rk->dev, rk->streams[i]));
    DP_CHECK(check_losses(rk));
    DP_CHECK(sync_gradients(rk));
    for (int d = 0; d < s->num_local_stages; d++)
        DP_CHECK(dp_stage_optimizer_step(rk->stages[d], rk->streams[0], &rk->cfg.optimizer, a->step));
    /* each replica's pipes' losses, from the rank holding the pipe's last stage */
    size_t cpp = (size_t)s->chunks_per_pipe;
    for (int rep = 0; rep < rk->layout.replicas; rep++)
        for (int pipe = 0; pipe < s->num_pipes; pipe++) {
            size_t mb = (size_t)rep * replica_chunks(rk) + (size_t)pipe * cpp;
            int owner = holder(rk, rep, pipe, s->num_stages - 1);
            DP_CHECK(gather_to_host(rk, owner, rk->rank == owner ? rk->loss[pipe] : NULL, cpp * sizeof(float),
                                    rk->rank == DP_ROOT_RANK ? a->losses + mb : NULL));
        }
    DP_CHECK(D->stream_synchronize(rk->dev, rk->streams[0]));
    return gather_times(rk, a->times);
}

dp_status dp_rank_infer(dp_rank *rk, const dp_rank_step *a)
{
    const dp_device_ops *D = rk->drv->device;
    const dp_schedule *s = rk->sched;
    DP_CHECK(load_inputs(rk, a->inputs, NULL));
    dp_step_io io = step_io(rk, a->t0);
    DP_CHECK(dp_executor_infer(rk->ex, &io));
    const dp_model_config *m = &rk->cfg.model;
    size_t act = dp_model_act_elems(m), cpp = (size_t)s->chunks_per_pipe;
    for (int rep = 0; rep < rk->layout.replicas; rep++)
        for (int pipe = 0; pipe < s->num_pipes; pipe++) {
            size_t mb = (size_t)rep * replica_chunks(rk) + (size_t)pipe * cpp;
            int owner = holder(rk, rep, pipe, s->num_stages - 1);
            const void *at = NULL;
            DP_CHECK(gather_device(rk, owner, rk->rank == owner ? rk->output[pipe] : NULL,
                                   cpp * dp_model_act_bytes(m), &at));
            if (rk->rank == DP_ROOT_RANK)
                DP_CHECK(dp_download_f32(D, rk->dev, rk->streams[0], &rk->staging, a->outputs + mb * act, m->dtype,
                                         at, cpp * act));
        }
    DP_CHECK(D->stream_synchronize(rk->dev, rk->streams[0]));
    return gather_times(rk, a->times);
}

/* ----------------------------------------------------------------------------
 * moving experts to a new placement (dp_runtime_move_experts) */

const dp_model_config *dp_rank_model(const dp_rank *rk) { return &rk->cfg.model; }

int dp_rank_move_source(const int32_t *old, int slots, int local_slots, int p, int32_t expert)
{
    int rank = p / local_slots, any = -1;
    for (int q = 0; q < slots; q++)
        if (old[q] == expert) {
            if (q / local_slots == rank) return q;
            if (any < 0) any = q;
        }
    return any;
}

/* The MoE row of model layer `layer`: the MoE layers before it. */
static int moe_row(const dp_model_config *m, int layer)
{
    int row = 0;
    for (int i = 0; i < layer; i++) row += dp_model_layer_kind(m, i) == DP_BLOCK_MOE;
    return row;
}

/* One slot to fill in a move, as every rank of the expert-parallel group lists them. */
typedef struct {
    dp_stage *st;
    int first_param, per; /* the stage's parameters of the layer's local slot 0, and per slot */
    int src, dst;         /* ep ranks */
    int src_local, dst_local;
} move_item;

/* The tensors a slot carries: its value and gradient, and the optimizer's state where the
 * optimizer keeps some (allocated first, so that every holder has it). */
static int move_tensors(const dp_rank *rk, dp_tensor_kind *which)
{
    const dp_optimizer_config *o = &rk->cfg.optimizer;
    int n = 0, need_v = o->kind == DP_OPT_ADAMW, need_m = need_v || (o->kind == DP_OPT_SGD && o->momentum != 0.0f);
    which[n++] = DP_TENSOR_VALUE, which[n++] = DP_TENSOR_GRAD;
    if (need_m) which[n++] = DP_TENSOR_M;
    if (need_v) which[n++] = DP_TENSOR_V;
    return n;
}

/* Floats of one slot's tensors. */
static size_t slot_floats(const move_item *it, int tensors)
{
    size_t n = 0;
    for (int j = 0; j < it->per; j++) {
        dp_param_view v;
        dp_stage_param(it->st, it->first_param + j, &v);
        n += v.count * (size_t)tensors;
    }
    return n;
}

/* Copies one slot's tensors between the stage and buf (to_buf: out of the stage). */
static dp_status slot_copy(dp_rank *rk, const move_item *it, int local, const dp_tensor_kind *which, int tensors,
                           float *buf, int to_buf)
{
    const dp_device_ops *D = rk->drv->device;
    for (int j = 0; j < it->per; j++) {
        int i = it->first_param + local * it->per + j;
        for (int t = 0; t < tensors; t++) {
            if (which[t] == DP_TENSOR_M || which[t] == DP_TENSOR_V)
                DP_CHECK(dp_stage_param_state(it->st, i, which[t], rk->streams[0]));
            dp_param_view v;
            dp_stage_param(it->st, i, &v);
            float *x = dp_param_tensor(&v, which[t]);
            size_t bytes = v.count * sizeof(float);
            DP_CHECK(D->copy(rk->dev, to_buf ? (void *)buf : (void *)x, to_buf ? (const void *)x : (const void *)buf,
                             bytes, DP_COPY_DEVICE_TO_DEVICE, rk->streams[0]));
            buf += v.count;
        }
    }
    return DP_OK;
}

static dp_status move_collect(dp_rank *rk, const int32_t *plan, move_item **items, int *count)
{
    const dp_schedule *s = rk->sched;
    const dp_model_config *m = &rk->cfg.model;
    int P = m->moe.plan_slots, ep = rk->layout.ep;
    int cap = 0, n = 0;
    move_item *all = NULL;
    for (int d = 0; d < s->num_local_stages; d++) {
        dp_stage *st = rk->stages[d];
        const dp_model_config *sc = dp_stage_config(st);
        for (int b = 0; b < sc->layers_per_stage; b++) {
            int fp, per, S = dp_stage_expert_slots(st, b, &fp, &per);
            if (S <= 0) continue;
            if (S * ep != P)
                return dp_fail(DP_ERR_INTERNAL, "stage %d layer %d holds %d of %d slots over %d ranks",
                               dp_stage_index(st), b, S, P, ep);
            int row = moe_row(sc, dp_stage_index(st) * sc->layers_per_stage + b);
            const int32_t *old = sc->moe.plan_phy2log + (size_t)row * P, *want = plan + (size_t)row * P;
            for (int p = 0; p < P; p++) {
                if (old[p] == want[p]) continue;
                int q = dp_rank_move_source(old, P, S, p, want[p]);
                if (q < 0)
                    return dp_fail(DP_ERR_INTERNAL, "MoE layer %d: no slot holds expert %d now", row, (int)want[p]);
                if (n == cap) {
                    cap = cap ? 2 * cap : 64;
                    move_item *grown = realloc(all, sizeof *all * (size_t)cap);
                    if (!grown) {
                        free(all);
                        return dp_fail(DP_ERR_NOMEM, "out of memory listing the experts to move");
                    }
                    all = grown;
                }
                all[n++] = (move_item){st, fp, per, q / S, p / S, q % S, p % S};
            }
        }
    }
    *items = all, *count = n;
    return DP_OK;
}

dp_status dp_rank_move_experts(dp_rank *rk, const int32_t *root_plan, int root_has_replica)
{
    const dp_device_ops *D = rk->drv->device;
    const dp_link_ops *L = rk->drv->link;
    const dp_schedule *s = rk->sched;
    const dp_model_config *m = &rk->cfg.model;
    size_t cells = (size_t)m->moe.plan_layers * (size_t)m->moe.plan_slots;
    /* the root's placement to every rank (a job of several processes: only the root's caller
     * planned it) */
    int32_t has_replica = rk->rank == DP_ROOT_RANK ? root_has_replica : 0;
    int32_t *plan = malloc(sizeof *plan * 2 * (cells ? cells : 1));
    if (!plan) return dp_fail(DP_ERR_NOMEM, "out of memory for a placement of %zu slots", cells);
    if (rk->rank == DP_ROOT_RANK) memcpy(plan, root_plan, sizeof *plan * cells * (root_has_replica ? 2 : 1));
    dp_status st = host_to_all(rk, DP_ROOT_RANK, &has_replica, sizeof has_replica, RESULT_COUNT);
    if (st == DP_OK) st = host_to_all(rk, DP_ROOT_RANK, plan, sizeof *plan * cells * (has_replica ? 2 : 1), RESULT_DATA);
    move_item *items = NULL;
    int n = 0;
    if (st == DP_OK) st = move_collect(rk, plan, &items, &n);
    dp_tensor_kind which[4];
    int tensors = move_tensors(rk, which), ep = rk->layout.ep, me = rk->replica % ep;
    /* floats to each peer and from each, and within this rank */
    size_t *v = calloc(4 * (size_t)ep, sizeof *v), local = 0;
    if (st == DP_OK && !v) st = dp_fail(DP_ERR_NOMEM, "out of memory for a move over %d ranks", ep);
    size_t *to = v, *to_at = v + ep, *from = v + 2 * ep, *from_at = v + 3 * ep;
    for (int k = 0; st == DP_OK && k < n; k++) {
        size_t f = slot_floats(&items[k], tensors);
        if (items[k].src == me && items[k].dst == me) local += f;
        else if (items[k].src == me) to[items[k].dst] += f;
        else if (items[k].dst == me) from[items[k].src] += f;
    }
    size_t sends = 0, recvs = 0;
    for (int j = 0; st == DP_OK && j < ep; j++) to_at[j] = sends, from_at[j] = recvs, sends += to[j], recvs += from[j];
    void *send = NULL, *recv = NULL, *keep = NULL;
    if (st == DP_OK && sends) st = D->alloc(rk->dev, sends * sizeof(float), &send);
    if (st == DP_OK && recvs) st = D->alloc(rk->dev, recvs * sizeof(float), &recv);
    if (st == DP_OK && local) st = D->alloc(rk->dev, local * sizeof(float), &keep);
    /* staged: what leaves, by peer in (stage, layer, slot) order, and what stays, in that order */
    size_t at_local = 0;
    size_t *at = calloc((size_t)ep, sizeof *at);
    if (st == DP_OK && !at) st = dp_fail(DP_ERR_NOMEM, "out of memory for a move over %d ranks", ep);
    for (int k = 0; st == DP_OK && k < n; k++) {
        const move_item *it = &items[k];
        if (it->src != me) continue;
        size_t f = slot_floats(it, tensors);
        float *buf = it->dst == me ? (float *)keep + at_local : (float *)send + to_at[it->dst] + at[it->dst];
        st = slot_copy(rk, it, it->src_local, which, tensors, buf, 1);
        if (it->dst == me) at_local += f;
        else at[it->dst] += f;
    }
    if (st == DP_OK && ep > 1)
        st = L->all_to_all_v(rk->groups.expert[0], send, to, to_at, recv, from, from_at, sizeof(float), rk->streams[0]);
    if (st == DP_OK) st = D->stream_synchronize(rk->dev, rk->streams[0]);
    /* every rank has what it receives before any slot is written: else nobody writes, and the
     * old placement stays whole */
    if (st == DP_OK && dp_layout_world_size(&rk->layout) > 1) {
        float *flag = NULL;
        st = scratch(rk, sizeof *flag, (void **)&flag);
        if (st == DP_OK) st = D->memset(rk->dev, flag, 0, sizeof *flag, rk->streams[0]);
        if (st == DP_OK)
            st = L->all_reduce(rk->groups.world, flag, flag, 1, DP_DTYPE_F32, DP_REDUCE_MAX, rk->streams[0]);
        if (st == DP_OK) st = D->stream_synchronize(rk->dev, rk->streams[0]);
    }
    /* the commit */
    if (at) memset(at, 0, sizeof *at * (size_t)ep);
    at_local = 0;
    for (int k = 0; st == DP_OK && k < n; k++) {
        const move_item *it = &items[k];
        if (it->dst != me) continue;
        size_t f = slot_floats(it, tensors);
        float *buf = it->src == me ? (float *)keep + at_local : (float *)recv + from_at[it->src] + at[it->src];
        st = slot_copy(rk, it, it->dst_local, which, tensors, buf, 0);
        if (it->src == me) at_local += f;
        else at[it->src] += f;
    }
    for (int d = 0; st == DP_OK && d < s->num_local_stages; d++)
        st = dp_stage_set_placement(rk->stages[d], plan, has_replica ? plan + cells : NULL, rk->streams[0]);
    if (st == DP_OK) st = D->stream_synchronize(rk->dev, rk->streams[0]);
    if (st == DP_OK) {
        /* the model this rank describes, and the parameters' directory, follow */
        for (int k = 0; k < s->num_stages && rk->params; k++) free(rk->params[k]);
        free(rk->params), free(rk->num_params);
        rk->params = NULL, rk->num_params = NULL;
        rk->cfg.model.moe = dp_stage_config(rk->stages[0])->moe;
        st = gather_directory(rk);
    }
    if (send) D->free(rk->dev, send);
    if (recv) D->free(rk->dev, recv);
    if (keep) D->free(rk->dev, keep);
    free(at), free(v), free(items), free(plan);
    return st;
}
