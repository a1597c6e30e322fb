/* cuda_link.cu: the CUDA driver's link table. It learns where every rank runs (through the
 * world's bootstrap), chooses a transport per pair of ranks, as NCCL's transport table does
 * (copy between ranks on one GPU of this process, CUDA IPC between processes on one GPU, NCCL
 * across GPUs: cuda_link_copy.cu, cuda_link_ipc.cu, cuda_link_nccl.cu), and builds the
 * collectives and split on top. One host thread per rank. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "drivers/cuda/cuda_link.h"

static int me(dp_link *l) { return l->world_of[l->rank]; }

/* The transports, in the order a batch of requests is issued to them. */
#define DP_CUDA_TRANSPORTS 3
static const dp_cuda_transport *const transports[DP_CUDA_TRANSPORTS] = {
    &dp_cuda_copy_transport, &dp_cuda_ipc_transport, &dp_cuda_nccl_transport};

/* ----------------------------------------------------------------------------
 * abort and events */

void dp_cuda_link_abort_world(dp_link_world *w, int rank, dp_status reason, const char *why)
{
    if (dp_link_abort_raise(&w->abort, &w->bootstrap, rank, reason, why)) dp_cuda_ipc_abort(w, rank, reason, why);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

dp_status dp_cuda_link_aborted(dp_link *l) { return dp_link_abort_fail(&l->w->abort); }

int dp_cuda_link_ended(dp_link_world *w, double *next_ms)
{
    if (dp_link_abort_raised(&w->abort)) return 1;
    if (!dp_link_abort_heard(&w->abort, &w->bootstrap, next_ms)) return 0;
    pthread_mutex_lock(&w->lock); /* the copy transport's waiters sleep on it */
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    return 1;
}

dp_status dp_cuda_event_get(dp_link *l, cudaEvent_t *out)
{
    if (l->pool_len > 0) {
        *out = l->event_pool[--l->pool_len];
        return DP_OK;
    }
    CUDA_TRY(cudaEventCreateWithFlags(out, cudaEventDisableTiming));
    return DP_OK;
}

void dp_cuda_event_put(dp_link *l, cudaEvent_t e)
{
    if (!e) return;
    if (l->pool_len == l->pool_cap) {
        int cap = l->pool_cap ? l->pool_cap * 2 : 16;
        cudaEvent_t *p = (cudaEvent_t *)realloc(l->event_pool, (size_t)cap * sizeof *p);
        if (!p) {
            cudaEventDestroy(e);
            return;
        }
        l->event_pool = p;
        l->pool_cap = cap;
    }
    l->event_pool[l->pool_len++] = e;
}

/* ----------------------------------------------------------------------------
 * the world */

static uint64_t hash_bytes(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static dp_status cuda_world_create(const dp_link_world_config *cfg, dp_link_world **out)
{
    *out = NULL;
    if (cfg->world_size < 1)
        return dp_fail(DP_ERR_INVALID, "cuda link: world size must be >= 1, got %d", cfg->world_size);
    int local = cfg->local_ranks ? cfg->local_ranks : cfg->world_size;
    if (cfg->first_rank < 0 || local < 1 || cfg->first_rank + local > cfg->world_size)
        return dp_fail(DP_ERR_INVALID, "cuda link: ranks %d to %d are not inside the world of %d", cfg->first_rank,
                       cfg->first_rank + local - 1, cfg->world_size);
    int channels = DP_CUDA_DEFAULT_CHANNELS;
    const char *env = getenv("DUALPIPE_NCCL_CHANNELS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 1 || v > DP_CUDA_MAX_CHANNELS)
            return dp_fail(DP_ERR_INVALID, "cuda link: DUALPIPE_NCCL_CHANNELS=%s must be a number from 1 to %d", env,
                           DP_CUDA_MAX_CHANNELS);
        channels = (int)v;
    }
    dp_link_world *w = (dp_link_world *)calloc(1, sizeof *w);
    if (!w) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    w->size = cfg->world_size;
    w->first_rank = cfg->first_rank;
    w->local_ranks = local;
    w->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    w->channels = channels;
    dp_status st = dp_link_bootstrap_open(&w->bootstrap, cfg, w->timeout_ms, "cuda");
    if (st != DP_OK) {
        free(w);
        return st;
    }
    w->opened = (int *)calloc((size_t)w->size, sizeof(int));
    w->mailbox = (dp_cuda_mailbox *)calloc((size_t)w->size, sizeof(dp_cuda_mailbox));
    if (!w->opened || !w->mailbox) {
        free(w->opened), free(w->mailbox);
        dp_link_bootstrap_close(&w->bootstrap);
        free(w);
        return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    }
    /* this world's id among the job's processes: ranks of two worlds never share mailboxes */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    w->process = hash_bytes("dualpipe") ^ ((uint64_t)getpid() << 20) ^ (uint64_t)(uintptr_t)w ^
                 ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec;
    dp_link_abort_init(&w->abort);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    st = dp_cuda_ipc_world_init(w);
    if (st != DP_OK) {
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        dp_link_abort_fini(&w->abort);
        dp_link_bootstrap_close(&w->bootstrap);
        free(w->opened), free(w->mailbox);
        free(w);
        return st;
    }
    *out = w;
    return DP_OK;
}

static dp_status cuda_world_destroy(dp_link_world *w)
{
    if (!w) return DP_OK;
    dp_cuda_ipc_world_fini(w);
    dp_cuda_copy_world_fini(w);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    dp_link_abort_fini(&w->abort);
    dp_link_bootstrap_close(&w->bootstrap);
    free(w->opened), free(w->mailbox);
    free(w);
    return DP_OK;
}

static void link_free(dp_link *l)
{
    if (!l) return;
    free(l->world_of), free(l->place), free(l->transport);
    free(l);
}

static dp_link *link_new(dp_link_world *w, int size, int rank, dp_device *dev)
{
    dp_link *l = (dp_link *)calloc(1, sizeof *l);
    if (!l) return NULL;
    l->w = w;
    l->rank = rank;
    l->size = size;
    l->dev = dev;
    l->timeout_ms = w->timeout_ms;
    l->channels = w->channels;
    l->world_of = (int *)calloc((size_t)size, sizeof(int));
    l->place = (dp_cuda_place *)calloc((size_t)size, sizeof(dp_cuda_place));
    l->transport = (const dp_cuda_transport **)calloc((size_t)size, sizeof *l->transport);
    if (!l->world_of || !l->place || !l->transport) {
        link_free(l);
        return NULL;
    }
    const char *force = getenv("DUALPIPE_CUDA_LINK");
    l->force_nccl = force && strcmp(force, "nccl") == 0;
    return l;
}

static dp_status cuda_link_open(dp_link_world *w, int rank, dp_device *dev, dp_link **out)
{
    *out = NULL;
    if (rank < w->first_rank || rank >= w->first_rank + w->local_ranks)
        return dp_fail(DP_ERR_INVALID, "cuda link: rank %d is not one of this process's ranks (%d to %d)", rank,
                       w->first_rank, w->first_rank + w->local_ranks - 1);
    if (!dev) return dp_fail(DP_ERR_INVALID, "cuda link: rank %d: a CUDA device is needed to open the link", rank);
    pthread_mutex_lock(&w->lock);
    int again = w->opened[rank];
    w->opened[rank] = 1;
    pthread_mutex_unlock(&w->lock);
    if (again) return dp_fail(DP_ERR_INVALID, "cuda link: rank %d is already open", rank);
    dp_link *l = link_new(w, w->size, rank, dev);
    if (!l) {
        pthread_mutex_lock(&w->lock);
        w->opened[rank] = 0;
        pthread_mutex_unlock(&w->lock);
        return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    }
    for (int i = 0; i < w->size; i++) l->world_of[i] = i;
    *out = l;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * transports per pair of ranks */

int dp_cuda_same_gpu(const dp_cuda_place *a, const dp_cuda_place *b)
{
    return a->host == b->host && memcmp(a->gpu, b->gpu, sizeof a->gpu) == 0;
}

dp_cuda_nccl_layout dp_cuda_choose_layout(const dp_cuda_place *place, const int *members, int size, int force_nccl)
{
    int distinct = 1, across = 0;
    for (int a = 0; a < size; a++)
        for (int b = a + 1; b < size; b++) {
            int same = dp_cuda_same_gpu(&place[members[a]], &place[members[b]]);
            distinct &= !same, across |= !same;
        }
    if (size == 0) return DP_CUDA_NCCL_NONE;
    /* DUALPIPE_CUDA_LINK=nccl: NCCL even for a one-rank group (to exercise it on one GPU) */
    if (distinct && (size > 1 || force_nccl)) return DP_CUDA_NCCL_GROUP;
    return across ? DP_CUDA_NCCL_PAIRS : DP_CUDA_NCCL_NONE;
}

static const char *layout_name(dp_cuda_nccl_layout x)
{
    return x == DP_CUDA_NCCL_GROUP ? "NCCL communicators over the group"
           : x == DP_CUDA_NCCL_PAIRS ? "an NCCL communicator per pair across GPUs"
                                     : "no NCCL";
}

/* Peers on this rank's GPU in this process (world) get the copy transport, those on its GPU
 * in another process CUDA IPC, the others NCCL. */
static dp_status choose_transports(dp_link *l)
{
    int *all = (int *)calloc((size_t)l->size, sizeof(int));
    if (!all) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    for (int i = 0; i < l->size; i++) all[i] = i;
    l->layout = dp_cuda_choose_layout(l->place, all, l->size, l->force_nccl);
    free(all);
    const dp_cuda_place *mine = &l->place[l->rank];
    for (int p = 0; p < l->size; p++) {
        const dp_cuda_place *peer = &l->place[p];
        if (!dp_cuda_same_gpu(mine, peer)) l->transport[p] = &dp_cuda_nccl_transport;
        else if (dp_cuda_ipc_pair(mine, peer)) l->transport[p] = &dp_cuda_ipc_transport;
        else if (l->layout == DP_CUDA_NCCL_GROUP) l->transport[p] = &dp_cuda_nccl_transport; /* itself, forced */
        else l->transport[p] = &dp_cuda_copy_transport;
    }
    return DP_OK;
}

/* One line per rank and group at info level (DUALPIPE_DEBUG): which transport reaches which
 * peer, and how many NCCL channels. */
static void log_transports(dp_link *l)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "cuda link: rank %d (GPU %d) in a group of %d:", me(l), l->place[l->rank].ordinal,
                     l->size);
    for (int k = 0; k < DP_CUDA_TRANSPORTS; k++) {
        int first = 1;
        for (int p = 0; p < l->size && n > 0 && (size_t)n < sizeof line; p++) {
            if (l->transport[p] != transports[k]) continue;
            if (first) n += snprintf(line + n, sizeof line - (size_t)n, " %s to %d", transports[k]->name, l->world_of[p]);
            else n += snprintf(line + n, sizeof line - (size_t)n, ",%d", l->world_of[p]);
            first = 0;
        }
        if (!first && n > 0 && (size_t)n < sizeof line) n += snprintf(line + n, sizeof line - (size_t)n, ";");
    }
    if (n > 0 && (size_t)n < sizeof line) {
        if (l->layout == DP_CUDA_NCCL_NONE) snprintf(line + n, sizeof line - (size_t)n, " %s", layout_name(l->layout));
        else
            snprintf(line + n, sizeof line - (size_t)n, " %s, %d channels + 1 for collectives", layout_name(l->layout),
                     l->channels);
    }
    dp_log(DP_LOG_INFO, "%s", line);
}

static dp_status describe_self(dp_link *l, dp_cuda_place *out)
{
    memset(out, 0, sizeof *out);
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, l->dev->ordinal));
    memcpy(out->gpu, &prop.uuid, sizeof out->gpu);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    out->host = hash_bytes(host);
    out->process = l->w->process;
    out->ordinal = l->dev->ordinal;
    out->pid = (int)getpid();
    return DP_OK;
}

/* At the world link's first operation: every rank says where it runs (a bootstrap allgather),
 * then each chooses its transports and makes the world's NCCL communicators. */
static dp_status ensure_ready(dp_link *l)
{
    if (l->ready > 0) return DP_OK;
    if (l->ready < 0)
        return dp_fail(DP_ERR_COMM, "cuda link: rank %d: the link's set-up failed before; it cannot be used", me(l));
    l->ready = -1;
    if (dp_link_abort_raised(&l->w->abort)) return dp_cuda_link_aborted(l);
    DP_CHECK(dp_cuda_enter(l->dev));
    dp_cuda_place mine;
    DP_CHECK(describe_self(l, &mine));
    dp_link_bootstrap *b = &l->w->bootstrap;
    DP_CHECK(b->ops->allgather(b->ctx, me(l), &mine, l->place, sizeof mine));
    DP_CHECK(choose_transports(l));
    DP_CHECK(dp_cuda_nccl_world(l));
    DP_CHECK(dp_cuda_ipc_setup(l));
    log_transports(l);
    l->ready = 1;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * point to point: each request goes to its peer's transport */

static dp_status issue_now(dp_link *l, dp_request **reqs, int n)
{
    /* one batch per transport, in posting order within each (an NCCL batch is one group) */
    dp_request **batch = (dp_request **)malloc((size_t)(n ? n : 1) * sizeof *batch);
    if (!batch) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    dp_status st = DP_OK;
    for (int k = 0; k < DP_CUDA_TRANSPORTS && st == DP_OK; k++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (reqs[i]->tp == transports[k]) batch[m++] = reqs[i];
        if (m) st = transports[k]->issue(l, batch, m);
    }
    free(batch);
    return st;
}

static dp_status post(dp_link *l, dp_cuda_req_kind kind, const void *sbuf, void *rbuf, size_t bytes, int peer, int tag,
                      dp_stream *s, dp_request **out)
{
    *out = NULL;
    if (peer < 0 || peer >= l->size)
        return dp_fail(DP_ERR_INVALID, "cuda link: rank %d: peer %d is outside the group of %d", me(l), peer, l->size);
    if (bytes && !(kind == DP_CUDA_SEND ? sbuf : rbuf))
        return dp_fail(DP_ERR_INVALID, "cuda link: NULL buffer for %zu bytes", bytes);
    DP_CHECK(ensure_ready(l));
    if (dp_link_abort_raised(&l->w->abort)) return dp_cuda_link_aborted(l);
    dp_request *r = (dp_request *)calloc(1, sizeof *r);
    if (!r) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    r->l = l;
    r->tp = l->transport[peer];
    r->kind = kind;
    r->sbuf = sbuf;
    r->rbuf = rbuf;
    r->bytes = bytes;
    r->peer = peer;
    r->tag = tag;
    r->s = s;
    r->cs = dp_cuda_stream(l->dev, s)->s;
    if (l->group_depth > 0) {
        if (l->deferred_tail) l->deferred_tail->next_deferred = r;
        else l->deferred_head = r;
        l->deferred_tail = r;
    } else {
        dp_status st = issue_now(l, &r, 1);
        if (st != DP_OK) {
            if (r->issued) r->tp->drop(l, r);
            free(r);
            return st;
        }
    }
    *out = r;
    return DP_OK;
}

static dp_status cuda_isend(dp_link *l, const void *buf, size_t bytes, int peer, int tag, dp_stream *s,
                            dp_request **req)
{
    return post(l, DP_CUDA_SEND, buf, NULL, bytes, peer, tag, s, req);
}

static dp_status cuda_irecv(dp_link *l, void *buf, size_t bytes, int peer, int tag, dp_stream *s, dp_request **req)
{
    return post(l, DP_CUDA_RECV, NULL, buf, bytes, peer, tag, s, req);
}

static dp_status cuda_group_start(dp_link *l)
{
    l->group_depth++;
    return DP_OK;
}

static dp_status cuda_group_end(dp_link *l)
{
    if (l->group_depth <= 0) return dp_fail(DP_ERR_INVALID, "cuda link: group_end without group_start");
    if (--l->group_depth > 0) return DP_OK;
    int n = 0;
    for (dp_request *r = l->deferred_head; r; r = r->next_deferred) n++;
    if (n == 0) return DP_OK;
    dp_request **reqs = (dp_request **)malloc((size_t)n * sizeof *reqs);
    if (!reqs) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    n = 0;
    for (dp_request *r = l->deferred_head; r; r = r->next_deferred) reqs[n++] = r;
    l->deferred_head = l->deferred_tail = NULL;
    dp_status st = issue_now(l, reqs, n);
    free(reqs);
    return st;
}

static dp_status cuda_test(dp_link *l, dp_request *r, int *done)
{
    *done = 0;
    if (!r->issued) return DP_OK;
    return r->tp->test(l, r, done);
}

static dp_status cuda_wait(dp_link *l, dp_request *r)
{
    if (!r) return dp_fail(DP_ERR_INVALID, "cuda link: wait on a NULL request");
    if (!r->issued) {
        for (dp_request **p = &l->deferred_head; *p; p = &(*p)->next_deferred)
            if (*p == r) {
                *p = r->next_deferred;
                l->deferred_tail = NULL;
                for (dp_request *q = l->deferred_head; q; q = q->next_deferred) l->deferred_tail = q;
                break;
            }
        free(r);
        return dp_fail(DP_ERR_INVALID, "cuda link: wait on a request inside an open group; call group_end first");
    }
    dp_status st = r->tp->wait(l, r);
    free(r);
    return st;
}

/* ----------------------------------------------------------------------------
 * collectives from point to point, where the group has no communicator of its own (some or
 * all of its ranks share a GPU) */

static int next_coll_tag(dp_link *l) { return -(int)(1 + (l->coll_seq++ % 0x3fffffffu)); }

static dp_status tmp_get(dp_link *l, size_t bytes, void **out)
{
    if (bytes > l->tmp_bytes) {
        if (l->tmp) {
            CUDA_TRY(cudaDeviceSynchronize());
            CUDA_TRY(cudaFree(l->tmp));
            l->tmp = NULL;
            l->tmp_bytes = 0;
        }
        CUDA_TRY(cudaMalloc(&l->tmp, bytes));
        l->tmp_bytes = bytes;
    }
    *out = l->tmp;
    return DP_OK;
}

static dp_status wait_all(dp_link *l, dp_request **reqs, int n)
{
    dp_status first = DP_OK;
    for (int i = 0; i < n; i++)
        if (reqs[i]) {
            dp_status st = cuda_wait(l, reqs[i]);
            if (first == DP_OK) first = st;
        }
    return first;
}

/* A send to and a receive from rank 0, as one group (so that an NCCL pair runs both at once). */
static dp_status with_root(dp_link *l, const void *send, void *recv, size_t bytes, int tag, dp_stream *s)
{
    dp_request *r[2] = {NULL, NULL};
    DP_CHECK(cuda_group_start(l));
    dp_status st = post(l, DP_CUDA_SEND, send, NULL, bytes, 0, tag, s, &r[0]);
    if (st == DP_OK) st = post(l, DP_CUDA_RECV, NULL, recv, bytes, 0, tag, s, &r[1]);
    dp_status e = cuda_group_end(l);
    if (st == DP_OK) st = e;
    dp_status w = wait_all(l, r, 2);
    return st != DP_OK ? st : w;
}

/* Rank 0 adds the members' buffers in rank order (the same bits everywhere), then sends the
 * result back. */
static dp_status p2p_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t, dp_reduce_op op,
                                dp_stream *s)
{
    size_t bytes = count * dp_dtype_size(t);
    int tag = next_coll_tag(l), n = l->size;
    if (t == DP_DTYPE_I32 && n > 1) /* refused by every member alike, before any message */
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cuda link: all_reduce of int32 needs NCCL collectives (a group with one GPU per rank)");
    if (l->rank != 0) return with_root(l, send, recv, bytes, tag, s);
    DP_CHECK(dp_cuda_enter(l->dev));
    cudaStream_t cs = dp_cuda_stream(l->dev, s)->s;
    if (send != recv && bytes) CUDA_TRY(cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, cs));
    void *tmp = NULL;
    if (n > 1) DP_CHECK(tmp_get(l, bytes ? bytes : 16, &tmp));
    for (int p = 1; p < n; p++) {
        dp_request *r;
        DP_CHECK(post(l, DP_CUDA_RECV, NULL, tmp, bytes, p, tag, s, &r));
        DP_CHECK(cuda_wait(l, r));
        DP_CHECK(op == DP_REDUCE_SUM ? dp_cuda_add(l->dev, s, t, count, recv, tmp, recv)
                                     : dp_cuda_max(l->dev, s, t, count, recv, tmp, recv));
    }
    dp_status first = DP_OK;
    for (int p = 1; p < n; p++) {
        dp_request *r;
        dp_status st = post(l, DP_CUDA_SEND, recv, NULL, bytes, p, tag, s, &r);
        if (st == DP_OK) st = cuda_wait(l, r);
        if (first == DP_OK) first = st;
    }
    return first;
}

static dp_status p2p_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                                  void *recv, const size_t *recv_counts, const size_t *recv_displs, size_t elem_bytes,
                                  dp_stream *s)
{
    int tag = next_coll_tag(l), n = l->size;
    dp_request **reqs = (dp_request **)calloc((size_t)2 * n, sizeof *reqs);
    if (!reqs) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    /* one group: an NCCL pair sends and receives at once; empty parts are skipped on both
     * sides alike, since the counts match */
    dp_status st = cuda_group_start(l);
    for (int p = 0; p < n && st == DP_OK; p++) {
        if (send_counts[p])
            st = post(l, DP_CUDA_SEND, (const char *)send + send_displs[p] * elem_bytes, NULL,
                      send_counts[p] * elem_bytes, p, tag, s, &reqs[2 * p]);
        if (st == DP_OK && recv_counts[p])
            st = post(l, DP_CUDA_RECV, NULL, (char *)recv + recv_displs[p] * elem_bytes, recv_counts[p] * elem_bytes,
                      p, tag, s, &reqs[2 * p + 1]);
    }
    dp_status e = cuda_group_end(l);
    if (st == DP_OK) st = e;
    dp_status w = wait_all(l, reqs, 2 * n);
    free(reqs);
    return st != DP_OK ? st : w;
}

/* Everyone reports to rank 0, which then releases everyone. The messages carry a few bytes
 * rather than none: NCCL may skip an empty send without waiting for its receiver. */
static dp_status p2p_barrier(dp_link *l)
{
    int tag = next_coll_tag(l), n = l->size;
    void *tmp;
    DP_CHECK(dp_cuda_enter(l->dev));
    DP_CHECK(tmp_get(l, 16, &tmp));
    char *out = (char *)tmp, *in = (char *)tmp + 8;
    if (l->rank != 0) return with_root(l, out, in, 4, tag, NULL);
    for (int p = 1; p < n; p++) {
        dp_request *r;
        DP_CHECK(post(l, DP_CUDA_RECV, NULL, in, 4, p, tag, NULL, &r));
        DP_CHECK(cuda_wait(l, r));
    }
    for (int p = 1; p < n; p++) {
        dp_request *r;
        DP_CHECK(post(l, DP_CUDA_SEND, out, NULL, 4, p, tag, NULL, &r));
        DP_CHECK(cuda_wait(l, r));
    }
    return DP_OK;
}

static dp_status cuda_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t,
                                 dp_reduce_op op, dp_stream *s)
{
    if (!dp_dtype_size(t)) return dp_fail(DP_ERR_INVALID, "cuda link: all_reduce of unknown dtype %d", (int)t);
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cuda link: all_reduce inside a group");
    DP_CHECK(ensure_ready(l));
    if (l->layout == DP_CUDA_NCCL_GROUP) return dp_cuda_nccl_all_reduce(l, send, recv, count, t, op, s);
    return p2p_all_reduce(l, send, recv, count, t, op, s);
}

static dp_status cuda_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                                   void *recv, const size_t *recv_counts, const size_t *recv_displs,
                                   size_t elem_bytes, dp_stream *s)
{
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cuda link: all_to_all_v inside a group");
    DP_CHECK(ensure_ready(l));
    if (l->layout == DP_CUDA_NCCL_GROUP)
        return dp_cuda_nccl_all_to_all_v(l, send, send_counts, send_displs, recv, recv_counts, recv_displs, elem_bytes,
                                         s);
    return p2p_all_to_all_v(l, send, send_counts, send_displs, recv, recv_counts, recv_displs, elem_bytes, s);
}

static dp_status cuda_barrier(dp_link *l)
{
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cuda link: barrier inside a group");
    DP_CHECK(ensure_ready(l));
    if (l->layout == DP_CUDA_NCCL_GROUP) return dp_cuda_nccl_barrier(l);
    return p2p_barrier(l);
}

dp_status dp_cuda_link_allgather_host(dp_link *l, const void *mine, void *all, size_t bytes)
{
    int n = l->size;
    size_t *counts = (size_t *)calloc((size_t)3 * n, sizeof(size_t));
    void *dbuf = NULL;
    if (!counts) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    size_t *zero = counts + n, *displs = counts + 2 * n;
    for (int j = 0; j < n; j++) counts[j] = bytes, zero[j] = 0, displs[j] = (size_t)(j + 1) * bytes;
    dp_status st = dp_cuda_enter(l->dev);
    cudaStream_t cs = dp_cuda_stream(l->dev, NULL)->s;
    if (st == DP_OK) {
        cudaError_t e = cudaMalloc(&dbuf, (size_t)(n + 1) * bytes);
        if (e == cudaSuccess) e = cudaMemcpyAsync(dbuf, mine, bytes, cudaMemcpyHostToDevice, cs);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "allgather over the link: staging", __FILE__, __LINE__);
    }
    if (st == DP_OK) st = cuda_all_to_all_v(l, dbuf, counts, zero, dbuf, counts, displs, 1, NULL);
    if (st == DP_OK) {
        cudaError_t e = cudaMemcpyAsync(all, (char *)dbuf + bytes, (size_t)n * bytes, cudaMemcpyDeviceToHost, cs);
        if (e == cudaSuccess) e = cudaStreamSynchronize(cs);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "allgather over the link: copy back", __FILE__, __LINE__);
    }
    if (dbuf) cudaFree(dbuf);
    free(counts);
    return st;
}

/* ----------------------------------------------------------------------------
 * split: (color, key) gathered over the parent link, members ordered by the shared helper,
 * transports chosen per pair as for the world, communicators split from the parent's */

static dp_status cuda_split(dp_link *parent, int color, int key, dp_link **out)
{
    *out = NULL;
    if (parent->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cuda link: split inside a group");
    DP_CHECK(ensure_ready(parent));
    int n = parent->size;
    unsigned seq = parent->split_seq++;
    int *buf = (int *)calloc((size_t)5 * n, sizeof(int));
    if (!buf) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    int *pairs = buf, *colors = buf + 2 * n, *keys = buf + 3 * n, *members = buf + 4 * n;
    int mine[2] = {color, key};
    dp_status st = dp_cuda_link_allgather_host(parent, mine, pairs, sizeof mine);
    if (st != DP_OK) {
        free(buf);
        return st;
    }
    for (int j = 0; j < n; j++) colors[j] = pairs[2 * j], keys[j] = pairs[2 * j + 1];
    int my_index = -1;
    int size = dp_link_split_members(n, colors, keys, parent->rank, members, &my_index);
    dp_link *child = NULL;
    if (size > 0) {
        child = link_new(parent->w, size, my_index, parent->dev);
        if (!child) st = dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
        else {
            for (int i = 0; i < size; i++) {
                child->world_of[i] = parent->world_of[members[i]];
                child->place[i] = parent->place[members[i]];
            }
            child->context = dp_link_child_context(parent->context, seq, color);
            child->force_nccl = parent->force_nccl;
            child->timeout_ms = parent->timeout_ms;
            st = choose_transports(child);
        }
    }
    /* every member of the parent takes part, whatever happened above, so that none waits */
    dp_status x = dp_cuda_nccl_split(parent, st == DP_OK ? child : NULL, colors, keys);
    if (st == DP_OK) st = x;
    free(buf);
    if (st != DP_OK) {
        if (child) {
            dp_cuda_nccl_close(child);
            link_free(child);
        }
        return st;
    }
    if (!child) return DP_OK;
    child->ready = 1;
    log_transports(child);
    *out = child;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the rest of the table */

static dp_status cuda_link_close(dp_link *l)
{
    if (!l) return DP_OK;
    dp_link_world *w = l->w;
    cudaSetDevice(l->dev->ordinal);
    dp_cuda_ipc_close(l); /* first: it hands its requests' events back to the pool */
    dp_cuda_nccl_close(l);
    for (int i = 0; i < l->pool_len; i++) cudaEventDestroy(l->event_pool[i]);
    free(l->event_pool);
    if (l->tmp) cudaFree(l->tmp);
    dp_cuda_copy_close(l);
    for (dp_request *r = l->deferred_head; r;) {
        dp_request *n = r->next_deferred;
        free(r);
        r = n;
    }
    if (l->context == 0) {
        pthread_mutex_lock(&w->lock);
        w->opened[me(l)] = 0;
        pthread_mutex_unlock(&w->lock);
    }
    link_free(l);
    return DP_OK;
}

static dp_status cuda_link_info(dp_link *l, int *rank, int *size)
{
    if (rank) *rank = l->rank;
    if (size) *size = l->size;
    return DP_OK;
}

static dp_status cuda_abort(dp_link *l, dp_status reason, const char *message)
{
    dp_cuda_link_abort_world(l->w, me(l), reason, message);
    dp_cuda_nccl_abort_comms(l);
    return DP_OK;
}

static dp_status cuda_set_timeout(dp_link *l, int timeout_ms)
{
    l->timeout_ms = timeout_ms > 0 ? timeout_ms : l->w->timeout_ms;
    return DP_OK;
}

extern "C" {
const dp_link_ops dp_cuda_link_ops = {
    DP_LINK_ABI_VERSION,
    (uint32_t)sizeof(dp_link_ops),
    DP_GPU_DRIVER_NAME,
    cuda_world_create,
    cuda_world_destroy,
    cuda_link_open,
    cuda_split,
    cuda_link_close,
    cuda_link_info,
    cuda_group_start,
    cuda_group_end,
    cuda_isend,
    cuda_irecv,
    cuda_test,
    cuda_wait,
    cuda_all_reduce,
    cuda_all_to_all_v,
    cuda_barrier,
    cuda_abort,
    cuda_set_timeout,
    /* iall_to_all_v: none; all_to_all_v already returns once NCCL's exchange is queued on the
     * pass's stream, and an overlapped pair's halves run on two streams with a communicator each,
     * so one half's exchange runs on the GPU under the other's kernels */
    NULL,
};
}
