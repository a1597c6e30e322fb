/* cuda_link_nccl.cu: the NCCL transport, between ranks on different GPUs. Each tag channel
 * has its own nonblocking communicator and stream (FIFO within a channel, channels free of
 * each other), plus one for collectives. Where every member of a group has its own GPU the
 * communicators span the group; where some share a GPU (NCCL takes one rank per GPU) each
 * pair across GPUs gets its own. The world's unique ids travel through the bootstrap;
 * sub-groups are split from their parent's communicators (NCCL 2.18+) or, before that, made
 * from fresh ids handed over by the parent link. Every wait polls with the link's deadline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drivers/cuda/cuda_link.h"

static int me(dp_link *l) { return l->world_of[l->rank]; }

/* ----------------------------------------------------------------------------
 * errors and settling of nonblocking calls */

dp_status dp_cuda_nccl_fail(dp_link *l, ncclResult_t r, const char *what)
{
    const char *detail = ncclGetLastError(NULL);
    return dp_fail(DP_ERR_COMM, "cuda link: rank %d: %s failed: %s%s%s", me(l), what, ncclGetErrorString(r),
                   detail && *detail ? ": " : "", detail ? detail : "");
}

/* Waits until a nonblocking communicator has finished its last call, with a deadline. An
 * abort, here or in another process, ends the wait at once; closing the link then aborts the
 * communicators. */
static dp_status settle(dp_link *l, ncclComm_t comm, double deadline, const char *what)
{
    int spins = 0;
    double ask = 0; /* when to ask the bootstrap next */
    for (;;) {
        ncclResult_t st;
        ncclResult_t r = ncclCommGetAsyncError(comm, &st);
        if (r != ncclSuccess) return dp_cuda_nccl_fail(l, r, "ncclCommGetAsyncError");
        if (st == ncclSuccess) return DP_OK;
        if (st != ncclInProgress) return dp_cuda_nccl_fail(l, st, what);
        if (dp_cuda_link_ended(l->w, &ask)) return dp_cuda_link_aborted(l);
        if (dp_link_now_ms() > deadline)
            return dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: %s did not finish within %d ms (a peer rank missing?)",
                           me(l), what, l->timeout_ms);
        dp_link_backoff(&spins);
    }
}

static dp_status call(dp_link *l, ncclResult_t r, ncclComm_t comm, const char *what)
{
    if (r == ncclSuccess) return DP_OK;
    if (r == ncclInProgress) return settle(l, comm, dp_link_now_ms() + l->timeout_ms, what);
    return dp_cuda_nccl_fail(l, r, what);
}

/* Set-up waits for every member to arrive: the world's timeout, not a shortened one. */
static double setup_deadline(dp_link *l)
{
    return dp_link_now_ms() + (l->w->timeout_ms > l->timeout_ms ? l->w->timeout_ms : l->timeout_ms);
}

/* ----------------------------------------------------------------------------
 * communicators */

int dp_cuda_nccl_use_split(void)
{
    const char *env = getenv("DUALPIPE_NCCL_SPLIT");
    return DP_CUDA_HAVE_COMM_SPLIT && !(env && strcmp(env, "0") == 0);
}

int dp_cuda_nccl_channel(dp_link *l, int tag) { return tag < 0 ? l->channels : DP_TAG_CHANNEL(tag); }

static ncclComm_t *pair_slot(dp_link *l, int peer, int c) { return &l->pair_comm[peer * (l->channels + 1) + c]; }
static cudaStream_t *pair_stream(dp_link *l, int peer, int c) { return &l->pair_stream[peer * (l->channels + 1) + c]; }

/* The communicator, stream and NCCL rank that reach group rank `peer` on `tag`'s channel. */
static void route(dp_link *l, int peer, int tag, ncclComm_t *comm, cudaStream_t *stream, int *nccl_peer)
{
    int c = dp_cuda_nccl_channel(l, tag);
    if (l->layout == DP_CUDA_NCCL_GROUP) {
        *comm = l->comm[c], *stream = l->cstream[c], *nccl_peer = peer;
        return;
    }
    /* a pair's NCCL ranks follow the group's: the lower group rank is 0 */
    *comm = *pair_slot(l, peer, c), *stream = *pair_stream(l, peer, c), *nccl_peer = peer < l->rank ? 0 : 1;
}

static void for_each_comm(dp_link *l, void (*fn)(dp_link *, ncclComm_t *, cudaStream_t *))
{
    for (int c = 0; c <= l->channels; c++) fn(l, &l->comm[c], &l->cstream[c]);
    if (l->pair_comm)
        for (int p = 0; p < l->size; p++)
            for (int c = 0; c <= l->channels; c++) fn(l, pair_slot(l, p, c), pair_stream(l, p, c));
}

static void abort_one(dp_link *l, ncclComm_t *comm, cudaStream_t *s)
{
    (void)l, (void)s;
    if (*comm) ncclCommAbort(*comm);
    *comm = NULL;
}

void dp_cuda_nccl_abort_comms(dp_link *l) { for_each_comm(l, abort_one); }

static void close_one(dp_link *l, ncclComm_t *comm, cudaStream_t *s)
{
    if (*comm) {
        if (dp_link_abort_raised(&l->w->abort)) ncclCommAbort(*comm);
        else {
            ncclCommFinalize(*comm);
            dp_status st = settle(l, *comm, dp_link_now_ms() + l->timeout_ms, "ncclCommFinalize");
            /* an abort heard meanwhile: the peers may never finalize */
            if (st != DP_OK && dp_link_abort_raised(&l->w->abort)) ncclCommAbort(*comm);
            else ncclCommDestroy(*comm);
        }
        *comm = NULL;
    }
    if (*s) cudaStreamDestroy(*s);
    *s = NULL;
}

void dp_cuda_nccl_close(dp_link *l)
{
    for_each_comm(l, close_one);
    free(l->pair_comm), free(l->pair_stream);
    l->pair_comm = NULL, l->pair_stream = NULL;
}

static dp_status pairs_alloc(dp_link *l)
{
    size_t n = (size_t)l->size * (size_t)(l->channels + 1);
    l->pair_comm = (ncclComm_t *)calloc(n, sizeof(ncclComm_t));
    l->pair_stream = (cudaStream_t *)calloc(n, sizeof(cudaStream_t));
    if (!l->pair_comm || !l->pair_stream) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    return DP_OK;
}

/* Joins the channels + 1 communicators of ids[] as `rank` of `nranks`, one group of calls,
 * then waits for every member. */
static dp_status init_comms(dp_link *l, ncclComm_t *comms, cudaStream_t *streams, int stride, const ncclUniqueId *ids,
                            int nranks, int rank)
{
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclGroupStart();
    for (int c = 0; c <= l->channels && (r == ncclSuccess || r == ncclInProgress); c++)
        r = ncclCommInitRankConfig(&comms[c * stride], nranks, ids[c], rank, &config);
    ncclResult_t e = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) return dp_cuda_nccl_fail(l, r, "ncclCommInitRankConfig");
    if (e != ncclSuccess && e != ncclInProgress) return dp_cuda_nccl_fail(l, e, "ncclGroupEnd (communicator setup)");
    double deadline = setup_deadline(l);
    for (int c = 0; c <= l->channels; c++) {
        DP_CHECK(settle(l, comms[c * stride], deadline, "NCCL communicator setup"));
        CUDA_TRY(cudaStreamCreateWithFlags(&streams[c * stride], cudaStreamNonBlocking));
    }
    return DP_OK;
}

static dp_status make_ids(dp_link *l, ncclUniqueId *ids, int n)
{
    for (int i = 0; i < n; i++) {
        ncclResult_t r = ncclGetUniqueId(&ids[i]);
        if (r != ncclSuccess) return dp_cuda_nccl_fail(l, r, "ncclGetUniqueId");
    }
    return DP_OK;
}

static int is_nccl_peer(dp_link *l, int p) { return l->transport[p] == &dp_cuda_nccl_transport; }

/* The pairs across GPUs, in one order every rank computes alike: (lower rank, higher rank). */
static int pair_index(dp_link *l, int a, int b, int *count)
{
    int k = 0, found = -1;
    for (int i = 0; i < l->size; i++)
        for (int j = i + 1; j < l->size; j++) {
            int across = !dp_cuda_same_gpu(&l->place[i], &l->place[j]);
            if (!across) continue;
            if (i == (a < b ? a : b) && j == (a < b ? b : a)) found = k;
            k++;
        }
    if (count) *count = k;
    return found;
}

dp_status dp_cuda_nccl_world(dp_link *l)
{
    if (l->layout == DP_CUDA_NCCL_NONE) return DP_OK;
    dp_link_bootstrap *b = &l->w->bootstrap;
    int per = l->channels + 1;
    int pairs = 0;
    if (l->layout == DP_CUDA_NCCL_PAIRS) pair_index(l, 0, 0, &pairs);
    int n = l->layout == DP_CUDA_NCCL_GROUP ? per : pairs * per;
    ncclUniqueId *ids = (ncclUniqueId *)calloc((size_t)n, sizeof(ncclUniqueId));
    if (!ids) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    /* world rank 0 makes every id; a failure there still joins the broadcast (zeros), and the
     * others then fail at set-up rather than wait for a broadcast that never comes */
    dp_status st = l->rank == 0 ? make_ids(l, ids, n) : DP_OK;
    dp_status bs = b->ops->broadcast(b->ctx, me(l), ids, (size_t)n * sizeof(ncclUniqueId), 0);
    if (st == DP_OK) st = bs;
    if (st == DP_OK) {
        DP_CHECK(dp_cuda_enter(l->dev));
        if (l->layout == DP_CUDA_NCCL_GROUP) st = init_comms(l, l->comm, l->cstream, 1, ids, l->size, l->rank);
        else {
            st = pairs_alloc(l);
            /* in the pairs' global order, so that no two ranks wait for each other in a cycle */
            for (int p = 0; p < l->size && st == DP_OK; p++)
                if (is_nccl_peer(l, p))
                    st = init_comms(l, pair_slot(l, p, 0), pair_stream(l, p, 0), 1,
                                    ids + (size_t)pair_index(l, l->rank, p, NULL) * per, 2, l->rank < p ? 0 : 1);
        }
    }
    free(ids);
    if (st != DP_OK) dp_cuda_nccl_abort_comms(l);
    return st;
}

/* Splits one communicator: color < 0 joins none. */
static dp_status split_one(dp_link *l, ncclComm_t parent, int color, int key, ncclComm_t *out, cudaStream_t *stream)
{
#if DP_CUDA_HAVE_COMM_SPLIT
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    *out = NULL;
    ncclResult_t r = ncclCommSplit(parent, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, out, &config);
    if (r != ncclSuccess && r != ncclInProgress) return dp_cuda_nccl_fail(l, r, "ncclCommSplit");
    double deadline = setup_deadline(l);
    DP_CHECK(settle(l, parent, deadline, "ncclCommSplit"));
    if (*out) {
        DP_CHECK(settle(l, *out, deadline, "ncclCommSplit (the new communicator)"));
        CUDA_TRY(cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking));
    }
    return DP_OK;
#else
    (void)parent, (void)color, (void)key, (void)out, (void)stream;
    return dp_fail(DP_ERR_INTERNAL, "cuda link: rank %d: ncclCommSplit is not in this NCCL", me(l));
#endif
}

/* Communicators for every child of the parent, each from fresh ids: one member of each
 * child makes them, every parent member hands them over through the parent link. */
static dp_status fresh_group_comms(dp_link *parent, dp_link *child, const int *color, const int *needs)
{
    int n = parent->size, per = parent->channels + 1;
    size_t bytes = (size_t)per * sizeof(ncclUniqueId);
    unsigned char *mine = (unsigned char *)calloc(1, bytes);
    unsigned char *all = (unsigned char *)calloc((size_t)n, bytes);
    dp_status st = mine && all ? DP_OK : dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    /* the maker of a child's ids: its member of lowest parent rank */
    int maker = -1;
    for (int j = 0; j < n && st == DP_OK; j++)
        if (color[parent->rank] >= 0 && color[j] == color[parent->rank]) {
            maker = j;
            break;
        }
    if (st == DP_OK && maker == parent->rank && needs[parent->rank]) st = make_ids(parent, (ncclUniqueId *)mine, per);
    dp_status x = st == DP_OK ? dp_cuda_link_allgather_host(parent, mine, all, bytes) : st;
    if (st == DP_OK) st = x;
    if (st == DP_OK && child && needs[parent->rank]) st = dp_cuda_enter(child->dev);
    if (st == DP_OK && child && needs[parent->rank])
        st = init_comms(child, child->comm, child->cstream, 1, (const ncclUniqueId *)(all + (size_t)maker * bytes),
                        child->size, child->rank);
    free(mine), free(all);
    return st;
}

dp_status dp_cuda_nccl_split(dp_link *parent, dp_link *child, const int *color, const int *key)
{
    int n = parent->size;
    /* the layout of each parent rank's child, as every rank sees it: a child is made alike by
     * all its members, and every parent member takes part in each collective step below */
    int *layout = (int *)calloc((size_t)n, sizeof(int));
    if (!layout) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    int *members = (int *)calloc((size_t)n, sizeof(int));
    if (!members) {
        free(layout);
        return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    }
    for (int j = 0; j < n; j++) {
        int size = dp_link_split_members(n, color, key, j, members, NULL);
        layout[j] = dp_cuda_choose_layout(parent->place, members, size, parent->force_nccl);
    }
    free(members);
    if (child && (int)child->layout != layout[parent->rank]) {
        free(layout);
        return dp_fail(DP_ERR_INTERNAL, "cuda link: rank %d: split: the child's layout disagrees", me(parent));
    }
    int split = dp_cuda_nccl_use_split();
    int *fresh = (int *)calloc((size_t)n, sizeof(int));
    if (!fresh) {
        free(layout);
        return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    }
    int any_fresh = 0, any_pairs = 0;
    for (int j = 0; j < n; j++) {
        fresh[j] = layout[j] == DP_CUDA_NCCL_GROUP && !(split && parent->layout == DP_CUDA_NCCL_GROUP);
        any_fresh |= fresh[j];
        any_pairs |= layout[j] == DP_CUDA_NCCL_PAIRS;
    }
    dp_status st = DP_OK;
    if (any_pairs && !split)
        st = dp_fail(DP_ERR_UNSUPPORTED,
                     "cuda link: rank %d: a sub-group whose ranks partly share GPUs needs ncclCommSplit (NCCL 2.18 "
                     "or later%s)",
                     me(parent), DP_CUDA_HAVE_COMM_SPLIT ? ", and DUALPIPE_NCCL_SPLIT unset" : "");
    if (st == DP_OK) st = dp_cuda_enter(parent->dev);
    /* split from the parent's group communicators: every parent rank calls, in channel order */
    if (st == DP_OK && split && parent->layout == DP_CUDA_NCCL_GROUP) {
        int mine = layout[parent->rank] == DP_CUDA_NCCL_GROUP ? color[parent->rank] : -1;
        for (int c = 0; c <= parent->channels && st == DP_OK; c++) {
            ncclComm_t dummy = NULL;
            cudaStream_t dummy_s = NULL;
            st = split_one(parent, parent->comm[c], mine, key[parent->rank], child && mine >= 0 ? &child->comm[c] : &dummy,
                           child && mine >= 0 ? &child->cstream[c] : &dummy_s);
        }
    }
    /* split from the parent's pair communicators, pair by pair in the parent's global order:
     * a pair stays where both of its ranks join one child with pairs */
    if (st == DP_OK && split && parent->layout == DP_CUDA_NCCL_PAIRS && any_pairs) {
        int in_pairs = child && child->layout == DP_CUDA_NCCL_PAIRS;
        if (in_pairs) st = pairs_alloc(child);
        for (int p = 0; p < n && st == DP_OK; p++) {
            if (!is_nccl_peer(parent, p)) continue;
            int keep = in_pairs && color[p] == color[parent->rank];
            int cp = -1; /* p's rank in the child */
            for (int j = 0; keep && j < child->size; j++)
                if (child->world_of[j] == parent->world_of[p]) cp = j;
            for (int c = 0; c <= parent->channels && st == DP_OK; c++) {
                ncclComm_t dummy = NULL;
                cudaStream_t dummy_s = NULL;
                st = split_one(parent, *pair_slot(parent, p, c), keep ? 0 : -1, keep ? child->rank : 0,
                               keep ? pair_slot(child, cp, c) : &dummy, keep ? pair_stream(child, cp, c) : &dummy_s);
            }
        }
    }
    /* fresh communicators, ids handed over through the parent link */
    if (st == DP_OK && any_fresh) st = fresh_group_comms(parent, child, color, fresh);
    free(layout), free(fresh);
    return st;
}

/* ----------------------------------------------------------------------------
 * point to point */

/* Issues a batch of requests as one NCCL group. Each operation follows the work queued on its
 * stream (an event the communicator's stream waits for) and records its own completion. */
static dp_status nccl_issue(dp_link *l, dp_request **reqs, int n)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    for (int i = 0; i < n; i++) {
        dp_request *r = reqs[i];
        int c = dp_cuda_nccl_channel(l, r->tag);
        if (c >= l->channels && r->tag >= 0)
            return dp_fail(DP_ERR_UNSUPPORTED,
                           "cuda link: tag channel %d has no communicator (DUALPIPE_NCCL_CHANNELS is %d; raise it "
                           "to %d or more)",
                           c, l->channels, c + 1);
        ncclComm_t comm;
        cudaStream_t cs;
        int np;
        route(l, r->peer, r->tag, &comm, &cs, &np);
        if (!comm) return dp_fail(DP_ERR_INTERNAL, "cuda link: rank %d: no NCCL communicator to peer %d", me(l), r->peer);
        cudaEvent_t ready;
        DP_CHECK(dp_cuda_event_get(l, &ready));
        CUDA_TRY(cudaEventRecord(ready, r->cs));
        CUDA_TRY(cudaStreamWaitEvent(cs, ready, 0));
        dp_cuda_event_put(l, ready); /* re-recording later is fine: the wait captured this record */
    }
    ncclResult_t r0 = ncclGroupStart();
    if (r0 != ncclSuccess) return dp_cuda_nccl_fail(l, r0, "ncclGroupStart");
    dp_status st = DP_OK;
    for (int i = 0; i < n && st == DP_OK; i++) {
        dp_request *r = reqs[i];
        ncclComm_t comm;
        cudaStream_t cs;
        int np;
        route(l, r->peer, r->tag, &comm, &cs, &np);
        ncclResult_t res = r->kind == DP_CUDA_SEND ? ncclSend(r->sbuf, r->bytes, ncclUint8, np, comm, cs)
                                                   : ncclRecv(r->rbuf, r->bytes, ncclUint8, np, comm, cs);
        if (res != ncclSuccess && res != ncclInProgress)
            st = dp_cuda_nccl_fail(l, res, r->kind == DP_CUDA_SEND ? "ncclSend" : "ncclRecv");
    }
    ncclResult_t e = ncclGroupEnd();
    if (st != DP_OK) return st;
    if (e == ncclInProgress) {
        double deadline = dp_link_now_ms() + l->timeout_ms;
        for (int i = 0; i < n; i++) {
            ncclComm_t comm;
            cudaStream_t cs;
            int np;
            route(l, reqs[i]->peer, reqs[i]->tag, &comm, &cs, &np);
            DP_CHECK(settle(l, comm, deadline, "ncclGroupEnd"));
        }
    } else if (e != ncclSuccess)
        return dp_cuda_nccl_fail(l, e, "ncclGroupEnd");
    for (int i = 0; i < n; i++) {
        dp_request *r = reqs[i];
        ncclComm_t comm;
        cudaStream_t cs;
        int np;
        route(l, r->peer, r->tag, &comm, &cs, &np);
        DP_CHECK(dp_cuda_event_get(l, &r->done_event));
        CUDA_TRY(cudaEventRecord(r->done_event, cs));
        r->issued = 1;
    }
    return DP_OK;
}

static int comm_failed(dp_link *l, ncclResult_t *why)
{
    ncclResult_t st;
    for (int c = 0; c <= l->channels; c++)
        if (l->comm[c] && ncclCommGetAsyncError(l->comm[c], &st) == ncclSuccess && st != ncclSuccess &&
            st != ncclInProgress)
            return *why = st, 1;
    if (l->pair_comm)
        for (int i = 0; i < l->size * (l->channels + 1); i++)
            if (l->pair_comm[i] && ncclCommGetAsyncError(l->pair_comm[i], &st) == ncclSuccess && st != ncclSuccess &&
                st != ncclInProgress)
                return *why = st, 1;
    return 0;
}

/* Polls an event with the deadline; watches the communicators for failures and the world for
 * an abort, also one in another process that only the bootstrap has heard of. On timeout the
 * job is aborted: the others' waits then fail too (a NCCL operation cannot be taken back, so
 * the communicators are done for). */
static dp_status wait_event(dp_link *l, cudaEvent_t e, int peer, int tag, size_t bytes, const char *what)
{
    double deadline = dp_link_now_ms() + l->timeout_ms;
    double ask = 0; /* when to ask the bootstrap next */
    int spins = 0;
    for (;;) {
        cudaError_t q = cudaEventQuery(e);
        if (q == cudaSuccess) return DP_OK;
        if (q != cudaErrorNotReady) return dp_cuda_fail(q, "cudaEventQuery (waiting for NCCL)", __FILE__, __LINE__);
        ncclResult_t why;
        if (comm_failed(l, &why)) {
            dp_status f = dp_cuda_nccl_fail(l, why, what);
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", dp_last_error());
            dp_cuda_link_abort_world(l->w, me(l), f, msg);
            dp_cuda_nccl_abort_comms(l);
            return dp_fail(f, "%s", msg);
        }
        if (dp_cuda_link_ended(l->w, &ask)) {
            dp_cuda_nccl_abort_comms(l);
            return dp_cuda_link_aborted(l);
        }
        if (dp_link_now_ms() > deadline) {
            dp_status f = peer < 0 ? dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: %s did not complete within %d ms",
                                             me(l), what, l->timeout_ms)
                                   : dp_link_fail_timeout("cuda", me(l), what, bytes, l->world_of[peer], tag,
                                                          l->timeout_ms);
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", dp_last_error());
            dp_cuda_link_abort_world(l->w, me(l), DP_ERR_TIMEOUT, msg);
            dp_cuda_nccl_abort_comms(l);
            return dp_fail(f, "%s", msg);
        }
        dp_link_backoff(&spins);
    }
}

static dp_status nccl_test(dp_link *l, dp_request *r, int *done)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    cudaError_t q = cudaEventQuery(r->done_event);
    if (q == cudaErrorNotReady) return dp_link_abort_raised(&l->w->abort) ? dp_cuda_link_aborted(l) : DP_OK;
    CUDA_TRY(q);
    *done = 1;
    return DP_OK;
}

static dp_status nccl_wait(dp_link *l, dp_request *r)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    dp_status st = wait_event(l, r->done_event, r->peer, r->tag, r->bytes, r->kind == DP_CUDA_SEND ? "send" : "receive");
    if (st == DP_OK) {
        cudaError_t e = cudaStreamWaitEvent(r->cs, r->done_event, 0);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaStreamWaitEvent", __FILE__, __LINE__);
    }
    dp_cuda_event_put(l, r->done_event);
    r->done_event = NULL;
    return st;
}

static void nccl_drop(dp_link *l, dp_request *r)
{
    dp_cuda_event_put(l, r->done_event);
    r->done_event = NULL;
}

const dp_cuda_transport dp_cuda_nccl_transport = {
    "nccl", nccl_issue, nccl_test, nccl_wait, nccl_drop,
};

/* ----------------------------------------------------------------------------
 * collectives on a group's own communicator, behind the caller's stream; the host waits
 * too, with the deadline */

static ncclDataType_t nccl_type(dp_dtype t)
{
    return t == DP_DTYPE_F32 ? ncclFloat32 : t == DP_DTYPE_BF16 ? ncclBfloat16 : ncclInt32;
}

static dp_status begin(dp_link *l, dp_stream *s)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    cudaEvent_t ready;
    DP_CHECK(dp_cuda_event_get(l, &ready));
    CUDA_TRY(cudaEventRecord(ready, dp_cuda_stream(l->dev, s)->s));
    CUDA_TRY(cudaStreamWaitEvent(l->cstream[l->channels], ready, 0));
    dp_cuda_event_put(l, ready);
    return DP_OK;
}

static dp_status end(dp_link *l, dp_stream *s, const char *what)
{
    cudaEvent_t done;
    DP_CHECK(dp_cuda_event_get(l, &done));
    CUDA_TRY(cudaEventRecord(done, l->cstream[l->channels]));
    dp_status st = wait_event(l, done, -1, -1, 0, what);
    if (st == DP_OK) {
        cudaError_t e = cudaStreamWaitEvent(dp_cuda_stream(l->dev, s)->s, done, 0);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaStreamWaitEvent", __FILE__, __LINE__);
    }
    dp_cuda_event_put(l, done);
    return st;
}

dp_status dp_cuda_nccl_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t,
                                  dp_reduce_op op, dp_stream *s)
{
    DP_CHECK(begin(l, s));
    ncclComm_t c = l->comm[l->channels];
    DP_CHECK(call(l, ncclAllReduce(send, recv, count, nccl_type(t), op == DP_REDUCE_SUM ? ncclSum : ncclMax, c,
                                   l->cstream[l->channels]),
                  c, "ncclAllReduce"));
    return end(l, s, "all_reduce");
}

dp_status dp_cuda_nccl_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts,
                                    const size_t *send_displs, void *recv, const size_t *recv_counts,
                                    const size_t *recv_displs, size_t elem_bytes, dp_stream *s)
{
    DP_CHECK(begin(l, s));
    ncclComm_t c = l->comm[l->channels];
    cudaStream_t cs = l->cstream[l->channels];
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < l->size && (r == ncclSuccess || r == ncclInProgress); p++) {
        if (send_counts[p])
            r = ncclSend((const char *)send + send_displs[p] * elem_bytes, send_counts[p] * elem_bytes, ncclUint8, p,
                         c, cs);
        if ((r == ncclSuccess || r == ncclInProgress) && recv_counts[p])
            r = ncclRecv((char *)recv + recv_displs[p] * elem_bytes, recv_counts[p] * elem_bytes, ncclUint8, p, c,
                         cs);
    }
    ncclResult_t e = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) return dp_cuda_nccl_fail(l, r, "all_to_all_v");
    DP_CHECK(call(l, e, c, "ncclGroupEnd (all_to_all_v)"));
    return end(l, s, "all_to_all_v");
}

dp_status dp_cuda_nccl_barrier(dp_link *l)
{
    void *tmp;
    DP_CHECK(dp_cuda_enter(l->dev));
    if (l->tmp_bytes < 16) {
        if (l->tmp) {
            CUDA_TRY(cudaDeviceSynchronize());
            CUDA_TRY(cudaFree(l->tmp));
        }
        l->tmp = NULL, l->tmp_bytes = 0;
        CUDA_TRY(cudaMalloc(&l->tmp, 16));
        l->tmp_bytes = 16;
    }
    tmp = l->tmp;
    DP_CHECK(begin(l, NULL));
    ncclComm_t c = l->comm[l->channels];
    DP_CHECK(call(l, ncclAllReduce(tmp, tmp, 1, ncclFloat32, ncclSum, c, l->cstream[l->channels]), c,
                  "ncclAllReduce (barrier)"));
    return end(l, NULL, "barrier");
}
