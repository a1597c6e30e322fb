/* cuda_link.cu: the CUDA driver's link. Ranks on distinct GPUs talk through NCCL (one
 * communicator per tag channel and one for collectives, per group, one host thread per rank);
 * ranks sharing one GPU talk through a copy link (device-to-device copies ordered by events).
 * Every wait polls with a deadline, so a missing peer ends in DP_ERR_TIMEOUT, never a hang. */
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "drivers/cuda/cuda_internal.h"

/* Tag channels served by their own communicator; DUALPIPE_NCCL_CHANNELS changes it. */
#define DEFAULT_CHANNELS 4
#define MAX_CHANNELS (1 << DP_TAG_CHANNEL_BITS)

enum { MODE_UNDECIDED = 0, MODE_NCCL = 1, MODE_COPY = 2 };

/* ----------------------------------------------------------------------------
 * time */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void deadline_ts(struct timespec *ts, double ms_from_now)
{
    clock_gettime(CLOCK_REALTIME, ts);
    long long ns = (long long)ts->tv_nsec + (long long)(ms_from_now * 1e6);
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

/* Polls back off from spinning to short sleeps, so fast completions stay fast. */
static void backoff(int *spins)
{
    if (++*spins > 200) usleep(50);
}

/* ----------------------------------------------------------------------------
 * structures */

typedef struct message {
    struct message *next;
    int src, tag;
    size_t bytes;
    const void *buf;
    cudaEvent_t ready;  /* the sender's data is complete */
    cudaEvent_t copied; /* the receiver's copy is complete */
    int matched;
    int refs; /* sender's request + receiver's request */
} message;

typedef struct group {
    int size;
    int refs;
    int *world_of;
    ncclUniqueId *ids; /* NCCL: channels + 1 ids, made once by the first member to need them */
    int ids_made;
    message **inbox_head, **inbox_tail; /* copy link: per member */
    dp_request **posted_head;           /* copy link: per member, receives in posting order */
} group;

/* A split in progress over one parent group: members post (color, key), the last one forms
 * the children; each member then picks its own. */
typedef struct split_round {
    struct split_round *next;
    group *parent;
    unsigned seq;
    int arrived, left;
    int *color, *key;
    group **child; /* [parent size]: the group each member joins (NULL: none) */
    int formed;
} split_round;

struct dp_link_world {
    int size;
    int timeout_ms;
    int channels;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int *ordinal; /* [size]: the device of each opened rank, -1 before */
    int opened;
    int mode;
    int aborted;
    dp_status abort_status;
    char abort_message[512];
    group *world_group;
    split_round *rounds;
};

typedef enum { REQ_SEND, REQ_RECV } req_kind;

struct dp_request {
    dp_request *next_deferred, *next_posted;
    req_kind kind;
    const void *sbuf;
    void *rbuf;
    size_t bytes;
    int peer, tag;
    dp_stream *s;
    cudaStream_t cs; /* s resolved (copy link: the receiver's copies run on it) */
    int issued;
    int done;         /* copy link: send matched / recv copy queued */
    message *msg;     /* copy link */
    cudaEvent_t done_event; /* NCCL: recorded on the communicator's stream after the operation */
};

struct dp_link {
    dp_link_world *w;
    group *g;
    int rank;
    dp_device *dev;
    int timeout_ms;
    int ready; /* NCCL communicators made (or copy mode decided) */
    int channels;
    ncclComm_t comm[MAX_CHANNELS + 1]; /* [channels] is for collectives */
    cudaStream_t cstream[MAX_CHANNELS + 1];
    int group_depth;
    dp_request *deferred_head, *deferred_tail;
    unsigned split_seq, coll_seq;
    void *tmp; /* collectives' device scratch */
    size_t tmp_bytes;
    cudaEvent_t *event_pool;
    int pool_len, pool_cap;
};

/* ----------------------------------------------------------------------------
 * errors */

static dp_status nccl_fail(dp_link *l, ncclResult_t r, const char *what)
{
    const char *detail = ncclGetLastError(NULL);
    return dp_fail(DP_ERR_COMM, "cuda link: rank %d: %s failed: %s%s%s", l->g->world_of[l->rank], what,
                   ncclGetErrorString(r), detail && *detail ? ": " : "", detail ? detail : "");
}

static dp_status aborted_status(dp_link *l)
{
    return dp_fail(DP_ERR_COMM, "%s", l->w->abort_message);
}

static void abort_comms(dp_link *l)
{
    for (int c = 0; c <= l->channels; c++)
        if (l->comm[c]) {
            ncclCommAbort(l->comm[c]);
            l->comm[c] = NULL;
        }
}

static void world_abort(dp_link_world *w, int world_rank, dp_status reason, const char *msg)
{
    pthread_mutex_lock(&w->lock);
    if (!w->aborted) {
        w->aborted = 1;
        w->abort_status = reason;
        snprintf(w->abort_message, sizeof w->abort_message, "rank %d ended the job: %s", world_rank,
                 msg && *msg ? msg : dp_status_name(reason));
    }
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Waits until a nonblocking communicator has finished its last call, with the link's deadline. */
static dp_status nccl_settle(dp_link *l, ncclComm_t comm, double deadline, const char *what)
{
    int spins = 0;
    for (;;) {
        ncclResult_t st;
        ncclResult_t r = ncclCommGetAsyncError(comm, &st);
        if (r != ncclSuccess) return nccl_fail(l, r, "ncclCommGetAsyncError");
        if (st == ncclSuccess) return DP_OK;
        if (st != ncclInProgress) return nccl_fail(l, st, what);
        if (l->w->aborted) return aborted_status(l);
        if (now_ms() > deadline)
            return dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: %s did not finish within %d ms (a peer rank missing?)",
                           l->g->world_of[l->rank], what, l->timeout_ms);
        backoff(&spins);
    }
}

/* An NCCL call on a nonblocking communicator: ncclInProgress means "settle before the next". */
static dp_status nccl_call(dp_link *l, ncclResult_t r, ncclComm_t comm, const char *what)
{
    if (r == ncclSuccess) return DP_OK;
    if (r == ncclInProgress) return nccl_settle(l, comm, now_ms() + l->timeout_ms, what);
    return nccl_fail(l, r, what);
}

/* ----------------------------------------------------------------------------
 * groups and the world */

static group *group_new(int size, int channels)
{
    group *g = (group *)calloc(1, sizeof *g);
    if (!g) return NULL;
    g->size = size;
    g->world_of = (int *)calloc((size_t)size, sizeof(int));
    g->ids = (ncclUniqueId *)calloc((size_t)channels + 1, sizeof(ncclUniqueId));
    g->inbox_head = (message **)calloc((size_t)size, sizeof(message *));
    g->inbox_tail = (message **)calloc((size_t)size, sizeof(message *));
    g->posted_head = (dp_request **)calloc((size_t)size, sizeof(dp_request *));
    if (!g->world_of || !g->ids || !g->inbox_head || !g->inbox_tail || !g->posted_head) {
        free(g->world_of), free(g->ids), free(g->inbox_head), free(g->inbox_tail), free(g->posted_head), free(g);
        return NULL;
    }
    g->refs = 1;
    return g;
}

static void message_release(message *m)
{
    if (--m->refs > 0) return;
    if (m->ready) cudaEventDestroy(m->ready);
    if (m->copied) cudaEventDestroy(m->copied);
    free(m);
}

static void group_release(group *g) /* world lock held */
{
    if (--g->refs > 0) return;
    for (int i = 0; i < g->size; i++)
        for (message *m = g->inbox_head[i]; m;) {
            message *n = m->next;
            m->refs = 1;
            message_release(m);
            m = n;
        }
    free(g->world_of), free(g->ids), free(g->inbox_head), free(g->inbox_tail), free(g->posted_head), free(g);
}

static dp_status cuda_world_create(const dp_link_world_config *cfg, dp_link_world **out)
{
    *out = NULL;
    if (cfg->world_size < 1)
        return dp_fail(DP_ERR_INVALID, "cuda link: world size must be >= 1, got %d", cfg->world_size);
    if (cfg->first_rank != 0 || (cfg->local_ranks != 0 && cfg->local_ranks != cfg->world_size))
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cuda link: all %d ranks must live in this process, one thread each (first rank %d, "
                       "local ranks %d given)",
                       cfg->world_size, cfg->first_rank, cfg->local_ranks);
    int channels = DEFAULT_CHANNELS;
    const char *env = getenv("DUALPIPE_NCCL_CHANNELS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 1 || v > MAX_CHANNELS)
            return dp_fail(DP_ERR_INVALID, "cuda link: DUALPIPE_NCCL_CHANNELS=%s must be a number from 1 to %d", env,
                           MAX_CHANNELS);
        channels = (int)v;
    }
    dp_link_world *w = (dp_link_world *)calloc(1, sizeof *w);
    if (!w) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    w->size = cfg->world_size;
    w->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    w->channels = channels;
    w->ordinal = (int *)malloc((size_t)w->size * sizeof(int));
    w->world_group = group_new(w->size, channels);
    if (!w->ordinal || !w->world_group) {
        free(w->ordinal);
        if (w->world_group) group_release(w->world_group);
        free(w);
        return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    }
    for (int i = 0; i < w->size; i++) w->ordinal[i] = -1, w->world_group->world_of[i] = i;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    *out = w;
    return DP_OK;
}

static dp_status cuda_world_destroy(dp_link_world *w)
{
    if (!w) return DP_OK;
    pthread_mutex_lock(&w->lock);
    group_release(w->world_group);
    for (split_round *r = w->rounds; r;) {
        split_round *n = r->next;
        free(r->color), free(r->key), free(r->child), free(r);
        r = n;
    }
    pthread_mutex_unlock(&w->lock);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->ordinal);
    free(w);
    return DP_OK;
}

static dp_status link_new(dp_link_world *w, group *g, int rank, dp_device *dev, dp_link **out)
{
    dp_link *l = (dp_link *)calloc(1, sizeof *l);
    if (!l) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    l->w = w;
    l->g = g;
    l->rank = rank;
    l->dev = dev;
    l->timeout_ms = w->timeout_ms;
    l->channels = w->channels;
    *out = l;
    return DP_OK;
}

static dp_status cuda_link_open(dp_link_world *w, int rank, dp_device *dev, dp_link **out)
{
    *out = NULL;
    if (rank < 0 || rank >= w->size)
        return dp_fail(DP_ERR_INVALID, "cuda link: rank %d is outside the world of %d ranks", rank, w->size);
    if (!dev) return dp_fail(DP_ERR_INVALID, "cuda link: rank %d: a CUDA device is needed to open the link", rank);
    pthread_mutex_lock(&w->lock);
    int again = w->ordinal[rank] >= 0;
    if (!again) {
        w->ordinal[rank] = dev->ordinal;
        w->opened++;
        w->world_group->refs++;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    if (again) return dp_fail(DP_ERR_INVALID, "cuda link: rank %d is already open", rank);
    return link_new(w, w->world_group, rank, dev, out);
}

/* Makes the communicators of a link: every member calls this for its group at about the
 * same time (at its first operation, or inside split). */
static dp_status make_comms(dp_link *l)
{
    dp_link_world *w = l->w;
    group *g = l->g;
    pthread_mutex_lock(&w->lock);
    if (!g->ids_made) {
        for (int c = 0; c <= l->channels; c++) {
            ncclResult_t r = ncclGetUniqueId(&g->ids[c]);
            if (r != ncclSuccess) {
                pthread_mutex_unlock(&w->lock);
                return nccl_fail(l, r, "ncclGetUniqueId");
            }
        }
        g->ids_made = 1;
    }
    pthread_mutex_unlock(&w->lock);
    DP_CHECK(dp_cuda_enter(l->dev));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclGroupStart();
    for (int c = 0; c <= l->channels && (r == ncclSuccess || r == ncclInProgress); c++)
        r = ncclCommInitRankConfig(&l->comm[c], g->size, g->ids[c], l->rank, &config);
    ncclResult_t e = ncclGroupEnd();
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(l, r, "ncclCommInitRankConfig");
    if (e != ncclSuccess && e != ncclInProgress) return nccl_fail(l, e, "ncclGroupEnd (communicator setup)");
    /* setup waits for every member to arrive: the world's timeout, not a shortened one */
    double deadline = now_ms() + (l->w->timeout_ms > l->timeout_ms ? l->w->timeout_ms : l->timeout_ms);
    for (int c = 0; c <= l->channels; c++) {
        dp_status st = nccl_settle(l, l->comm[c], deadline, "NCCL communicator setup");
        if (st != DP_OK) {
            abort_comms(l);
            return st;
        }
        CUDA_TRY(cudaStreamCreateWithFlags(&l->cstream[c], cudaStreamNonBlocking));
    }
    return DP_OK;
}

/* At a rank's first operation: wait until every rank has opened, choose NCCL (all on
 * distinct GPUs) or the copy link (all on one GPU), and make the communicators. */
static dp_status ensure_ready(dp_link *l)
{
    if (l->ready) return DP_OK;
    dp_link_world *w = l->w;
    pthread_mutex_lock(&w->lock);
    struct timespec ts;
    deadline_ts(&ts, l->timeout_ms);
    while (w->opened < w->size && !w->aborted)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0) break;
    int opened = w->opened, aborted = w->aborted;
    if (opened == w->size && !aborted && w->mode == MODE_UNDECIDED) {
        int same = 1, distinct = 1;
        for (int i = 0; i < w->size; i++)
            for (int j = 0; j < w->size; j++) {
                if (w->ordinal[i] != w->ordinal[j]) same = 0;
                if (i != j && w->ordinal[i] == w->ordinal[j]) distinct = 0;
            }
        w->mode = same ? MODE_COPY : distinct ? MODE_NCCL : -1;
        /* DUALPIPE_CUDA_LINK=nccl forces NCCL (e.g. a one-rank world, to exercise it on one GPU) */
        const char *force = getenv("DUALPIPE_CUDA_LINK");
        if (force && strcmp(force, "nccl") == 0 && distinct) w->mode = MODE_NCCL;
    }
    int mode = w->mode;
    pthread_mutex_unlock(&w->lock);
    if (aborted) return aborted_status(l);
    if (opened < w->size)
        return dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: only %d of %d ranks opened the link within %d ms", l->rank,
                       opened, w->size, l->timeout_ms);
    if (mode < 0)
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cuda link: some ranks share a GPU and others do not; put every rank on its own GPU (NCCL) "
                       "or all ranks on one GPU (copy link)");
    if (mode == MODE_NCCL) DP_CHECK(make_comms(l));
    l->ready = 1;
    return DP_OK;
}

static int link_mode(dp_link *l) { return l->w->mode; }

/* ----------------------------------------------------------------------------
 * events for NCCL requests: a small pool per link */

static dp_status event_get(dp_link *l, cudaEvent_t *out)
{
    if (l->pool_len > 0) {
        *out = l->event_pool[--l->pool_len];
        return DP_OK;
    }
    CUDA_TRY(cudaEventCreateWithFlags(out, cudaEventDisableTiming));
    return DP_OK;
}

static void event_put(dp_link *l, cudaEvent_t e)
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
 * point to point: NCCL */

static int channel_of(dp_link *l, int tag) { return tag < 0 ? l->channels : DP_TAG_CHANNEL(tag); }

/* Issues a batch of requests as one NCCL group. Each operation follows the work queued on its
 * stream (an event the communicator's stream waits for) and records its own completion. */
static dp_status nccl_issue(dp_link *l, dp_request **reqs, int n)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    for (int i = 0; i < n; i++) {
        dp_request *r = reqs[i];
        int c = channel_of(l, r->tag);
        if (c >= l->channels && r->tag >= 0)
            return dp_fail(DP_ERR_UNSUPPORTED,
                           "cuda link: tag channel %d has no communicator (DUALPIPE_NCCL_CHANNELS is %d; raise it "
                           "to %d or more)",
                           c, l->channels, c + 1);
        cudaEvent_t ready;
        DP_CHECK(event_get(l, &ready));
        CUDA_TRY(cudaEventRecord(ready, dp_cuda_stream(l->dev, r->s)->s));
        CUDA_TRY(cudaStreamWaitEvent(l->cstream[c], ready, 0));
        event_put(l, ready); /* re-recording later is fine: the wait captured this record */
    }
    ncclResult_t r0 = ncclGroupStart();
    if (r0 != ncclSuccess) return nccl_fail(l, r0, "ncclGroupStart");
    dp_status st = DP_OK;
    for (int i = 0; i < n && st == DP_OK; i++) {
        dp_request *r = reqs[i];
        int c = channel_of(l, r->tag);
        ncclResult_t res = r->kind == REQ_SEND
                               ? ncclSend(r->sbuf, r->bytes, ncclUint8, r->peer, l->comm[c], l->cstream[c])
                               : ncclRecv(r->rbuf, r->bytes, ncclUint8, r->peer, l->comm[c], l->cstream[c]);
        if (res != ncclSuccess && res != ncclInProgress) st = nccl_fail(l, res, r->kind == REQ_SEND ? "ncclSend" : "ncclRecv");
    }
    ncclResult_t e = ncclGroupEnd();
    if (st != DP_OK) return st;
    if (e == ncclInProgress) {
        double deadline = now_ms() + l->timeout_ms;
        for (int i = 0; i < n; i++) DP_CHECK(nccl_settle(l, l->comm[channel_of(l, reqs[i]->tag)], deadline, "ncclGroupEnd"));
    } else if (e != ncclSuccess)
        return nccl_fail(l, e, "ncclGroupEnd");
    for (int i = 0; i < n; i++) {
        dp_request *r = reqs[i];
        DP_CHECK(event_get(l, &r->done_event));
        CUDA_TRY(cudaEventRecord(r->done_event, l->cstream[channel_of(l, r->tag)]));
        r->issued = 1;
    }
    return DP_OK;
}

/* Polls a request's completion with the deadline; watches the communicator for failures and
 * the world for an abort. On timeout the job is aborted: the others' waits then fail too. */
static dp_status nccl_wait_event(dp_link *l, cudaEvent_t e, int peer, int tag, const char *what)
{
    double deadline = now_ms() + l->timeout_ms;
    int spins = 0;
    for (;;) {
        cudaError_t q = cudaEventQuery(e);
        if (q == cudaSuccess) return DP_OK;
        if (q != cudaErrorNotReady) return dp_cuda_fail(q, "cudaEventQuery (waiting for NCCL)", __FILE__, __LINE__);
        for (int c = 0; c <= l->channels; c++) {
            ncclResult_t st;
            if (l->comm[c] && ncclCommGetAsyncError(l->comm[c], &st) == ncclSuccess && st != ncclSuccess &&
                st != ncclInProgress) {
                dp_status f = nccl_fail(l, st, what);
                world_abort(l->w, l->g->world_of[l->rank], f, dp_last_error());
                abort_comms(l);
                return f;
            }
        }
        if (l->w->aborted) {
            abort_comms(l);
            return aborted_status(l);
        }
        if (now_ms() > deadline) {
            char msg[256];
            if (tag < 0)
                snprintf(msg, sizeof msg, "%s did not complete within %d ms", what, l->timeout_ms);
            else
                snprintf(msg, sizeof msg,
                         "%s with peer %d, tag %d (channel %d, sequence %d) did not complete within %d ms", what, peer,
                         tag, DP_TAG_CHANNEL(tag), DP_TAG_SEQ(tag), l->timeout_ms);
            world_abort(l->w, l->g->world_of[l->rank], DP_ERR_TIMEOUT, msg);
            abort_comms(l);
            return dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: %s", l->g->world_of[l->rank], msg);
        }
        backoff(&spins);
    }
}

/* ----------------------------------------------------------------------------
 * point to point: the copy link (all ranks on one GPU) */

static dp_status copy_match_locked(dp_link_world *w, group *g, int member);

static dp_status copy_issue(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    group *g = l->g;
    DP_CHECK(dp_cuda_enter(l->dev));
    r->issued = 1;
    if (r->kind == REQ_SEND) {
        message *m = (message *)calloc(1, sizeof *m);
        if (!m) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
        m->src = l->rank;
        m->tag = r->tag;
        m->bytes = r->bytes;
        m->buf = r->sbuf;
        m->refs = 2;
        cudaError_t e = cudaEventCreateWithFlags(&m->ready, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&m->copied, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventRecord(m->ready, dp_cuda_stream(l->dev, r->s)->s);
        if (e != cudaSuccess) {
            m->refs = 1;
            message_release(m);
            return dp_cuda_fail(e, "copy link send", __FILE__, __LINE__);
        }
        r->msg = m;
        pthread_mutex_lock(&w->lock);
        if (g->inbox_tail[r->peer]) g->inbox_tail[r->peer]->next = m;
        else g->inbox_head[r->peer] = m;
        g->inbox_tail[r->peer] = m;
        dp_status st = copy_match_locked(w, g, r->peer);
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        return st;
    }
    pthread_mutex_lock(&w->lock);
    dp_request **p = &g->posted_head[l->rank];
    while (*p) p = &(*p)->next_posted;
    *p = r;
    dp_status st = copy_match_locked(w, g, l->rank);
    pthread_mutex_unlock(&w->lock);
    return st;
}

/* Gives the messages waiting for `member` to its posted receives, earliest first, and queues
 * each copy on the receiver's stream behind the sender's data. Either side's thread may run
 * it (whichever posts second), so that no side waits for the other to come and match; a
 * match wakes the waiting threads, since a sender may be waiting for its message to be taken.
 * World lock held. */
static dp_status copy_match_locked(dp_link_world *w, group *g, int member)
{
    for (dp_request *r = g->posted_head[member]; r; r = r->next_posted) {
        if (r->done) continue;
        message *prev = NULL;
        for (message *m = g->inbox_head[member]; m; prev = m, m = m->next) {
            if (m->src != r->peer || m->tag != r->tag) continue;
            if (prev) prev->next = m->next;
            else g->inbox_head[member] = m->next;
            if (g->inbox_tail[member] == m) g->inbox_tail[member] = prev;
            m->next = NULL;
            r->msg = m;
            r->done = 1;
            m->matched = 1; /* a size mismatch also releases the sender; both sides report it */
            pthread_cond_broadcast(&w->cond);
            if (m->bytes == r->bytes) {
                cudaStream_t rs = r->cs;
                CUDA_TRY(cudaStreamWaitEvent(rs, m->ready, 0));
                if (m->bytes) CUDA_TRY(cudaMemcpyAsync(r->rbuf, m->buf, m->bytes, cudaMemcpyDeviceToDevice, rs));
                CUDA_TRY(cudaEventRecord(m->copied, rs));
            }
            break;
        }
    }
    return DP_OK;
}

static void unlink_posted_locked(dp_link *l, dp_request *r)
{
    for (dp_request **p = &l->g->posted_head[l->rank]; *p; p = &(*p)->next_posted)
        if (*p == r) {
            *p = r->next_posted;
            return;
        }
}

static void describe(char *buf, size_t n, int peer, int tag)
{
    if (tag < 0) snprintf(buf, n, "peer %d, tag %d (a collective)", peer, tag);
    else snprintf(buf, n, "peer %d, tag %d (channel %d, sequence %d)", peer, tag, DP_TAG_CHANNEL(tag), DP_TAG_SEQ(tag));
}

static dp_status copy_wait(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    DP_CHECK(dp_cuda_enter(l->dev));
    struct timespec ts;
    deadline_ts(&ts, l->timeout_ms);
    dp_status st = DP_OK;
    int timed_out = 0;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        if (r->kind == REQ_RECV) {
            st = copy_match_locked(w, l->g, l->rank);
            if (st != DP_OK || r->done) break;
        } else if (r->msg->matched)
            break;
        if (w->aborted) {
            st = aborted_status(l);
            break;
        }
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0) {
            if (r->kind == REQ_RECV) st = copy_match_locked(w, l->g, l->rank);
            if (st == DP_OK && (r->kind == REQ_RECV ? r->done : r->msg->matched)) break;
            char what[128];
            describe(what, sizeof what, r->peer, r->tag);
            st = dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: %s of %zu bytes, %s, did not complete within %d ms",
                         l->g->world_of[l->rank], r->kind == REQ_SEND ? "send" : "receive", r->bytes, what,
                         l->timeout_ms);
            timed_out = 1;
            break;
        }
    }
    if (r->kind == REQ_RECV) unlink_posted_locked(l, r);
    message *m = r->msg;
    int size_ok = !m || !(r->kind == REQ_RECV ? r->done : m->matched) || m->bytes == r->bytes;
    pthread_mutex_unlock(&w->lock);
    if (timed_out) { /* one rank giving up ends the job: the others' waits fail at once */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dp_last_error());
        world_abort(w, l->g->world_of[l->rank], DP_ERR_TIMEOUT, msg);
        dp_fail(DP_ERR_TIMEOUT, "%s", msg);
    }
    if (st == DP_OK && !size_ok) {
        char what[128];
        describe(what, sizeof what, r->peer, r->tag);
        st = dp_fail(DP_ERR_COMM, "cuda link: rank %d: message of %zu bytes where %zu were expected (%s)",
                     l->g->world_of[l->rank], m->bytes, r->bytes, what);
    }
    if (st == DP_OK && m && m->bytes) {
        /* complete on return, as on the NCCL and CPU links: the buffers may then be used from
         * any stream, not only the one the operation was posted on */
        cudaError_t e = cudaEventSynchronize(m->copied);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaEventSynchronize (copy link)", __FILE__, __LINE__);
    }
    if (m) {
        pthread_mutex_lock(&w->lock);
        message_release(m);
        pthread_mutex_unlock(&w->lock);
    }
    return st;
}

/* ----------------------------------------------------------------------------
 * point to point: the table's members */

static dp_status issue_now(dp_link *l, dp_request **reqs, int n)
{
    if (link_mode(l) == MODE_NCCL) return nccl_issue(l, reqs, n);
    for (int i = 0; i < n; i++) DP_CHECK(copy_issue(l, reqs[i]));
    return DP_OK;
}

static dp_status post(dp_link *l, req_kind kind, const void *sbuf, void *rbuf, size_t bytes, int peer, int tag,
                      dp_stream *s, dp_request **out)
{
    *out = NULL;
    if (peer < 0 || peer >= l->g->size)
        return dp_fail(DP_ERR_INVALID, "cuda link: rank %d: peer %d is outside the group of %d", l->rank, peer,
                       l->g->size);
    if (bytes && !(kind == REQ_SEND ? sbuf : rbuf))
        return dp_fail(DP_ERR_INVALID, "cuda link: NULL buffer for %zu bytes", bytes);
    DP_CHECK(ensure_ready(l));
    if (l->w->aborted) return aborted_status(l);
    dp_request *r = (dp_request *)calloc(1, sizeof *r);
    if (!r) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
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
            if (r->done_event) event_put(l, r->done_event);
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
    return post(l, REQ_SEND, buf, NULL, bytes, peer, tag, s, req);
}

static dp_status cuda_irecv(dp_link *l, void *buf, size_t bytes, int peer, int tag, dp_stream *s, dp_request **req)
{
    return post(l, REQ_RECV, NULL, buf, bytes, peer, tag, s, req);
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
    DP_CHECK(dp_cuda_enter(l->dev));
    if (link_mode(l) == MODE_NCCL) {
        cudaError_t q = cudaEventQuery(r->done_event);
        if (q == cudaErrorNotReady) return l->w->aborted ? aborted_status(l) : DP_OK;
        CUDA_TRY(q);
        *done = 1;
        return DP_OK;
    }
    pthread_mutex_lock(&l->w->lock);
    dp_status st = r->kind == REQ_RECV ? copy_match_locked(l->w, l->g, l->rank) : DP_OK;
    *done = r->kind == REQ_RECV ? r->done : r->msg->matched;
    int aborted = l->w->aborted;
    pthread_mutex_unlock(&l->w->lock);
    if (st != DP_OK) return st;
    if (aborted && !*done) return aborted_status(l);
    return DP_OK;
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
    dp_status st;
    if (link_mode(l) == MODE_NCCL) {
        DP_CHECK(dp_cuda_enter(l->dev));
        st = nccl_wait_event(l, r->done_event, r->peer, r->tag, r->kind == REQ_SEND ? "send" : "receive");
        if (st == DP_OK) {
            cudaError_t e = cudaStreamWaitEvent(dp_cuda_stream(l->dev, r->s)->s, r->done_event, 0);
            if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaStreamWaitEvent", __FILE__, __LINE__);
        }
        event_put(l, r->done_event);
    } else
        st = copy_wait(l, r);
    free(r);
    return st;
}

/* ----------------------------------------------------------------------------
 * collectives */

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

static dp_status p2p_wait_all(dp_link *l, dp_request **reqs, int n)
{
    dp_status first = DP_OK;
    for (int i = 0; i < n; i++)
        if (reqs[i]) {
            dp_status st = cuda_wait(l, reqs[i]);
            if (first == DP_OK) first = st;
        }
    return first;
}

/* On the copy link: rank 0 adds the members' buffers in rank order, then sends the result. */
static dp_status copy_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t,
                                 dp_reduce_op op, dp_stream *s)
{
    size_t bytes = count * dp_dtype_size(t);
    int tag = next_coll_tag(l), n = l->g->size;
    if (l->rank != 0) {
        dp_request *r[2] = {NULL, NULL};
        DP_CHECK(post(l, REQ_SEND, send, NULL, bytes, 0, tag, s, &r[0]));
        dp_status st = post(l, REQ_RECV, NULL, recv, bytes, 0, tag, s, &r[1]);
        dp_status w = p2p_wait_all(l, r, 2);
        return st != DP_OK ? st : w;
    }
    cudaStream_t cs = dp_cuda_stream(l->dev, s)->s;
    if (send != recv && bytes) CUDA_TRY(cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, cs));
    void *tmp = NULL;
    if (n > 1) DP_CHECK(tmp_get(l, bytes ? bytes : 16, &tmp));
    for (int p = 1; p < n; p++) {
        dp_request *r;
        DP_CHECK(post(l, REQ_RECV, NULL, tmp, bytes, p, tag, s, &r));
        DP_CHECK(cuda_wait(l, r));
        if (t == DP_DTYPE_I32)
            return dp_fail(DP_ERR_UNSUPPORTED, "cuda link: all_reduce of int32 is not supported on one GPU");
        DP_CHECK(op == DP_REDUCE_SUM ? dp_cuda_add(l->dev, s, t, count, recv, tmp, recv)
                                     : dp_cuda_max(l->dev, s, t, count, recv, tmp, recv));
    }
    dp_status first = DP_OK;
    for (int p = 1; p < n; p++) {
        dp_request *r;
        dp_status st = post(l, REQ_SEND, recv, NULL, bytes, p, tag, s, &r);
        if (st == DP_OK) st = cuda_wait(l, r);
        if (first == DP_OK) first = st;
    }
    return first;
}

static ncclDataType_t nccl_type(dp_dtype t)
{
    return t == DP_DTYPE_F32 ? ncclFloat32 : t == DP_DTYPE_BF16 ? ncclBfloat16 : ncclInt32;
}

/* Runs a collective on the collectives' communicator behind the caller's stream, then makes
 * the caller's stream wait for it; the host waits too, with the deadline. */
static dp_status nccl_collective_begin(dp_link *l, dp_stream *s)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    cudaEvent_t ready;
    DP_CHECK(event_get(l, &ready));
    CUDA_TRY(cudaEventRecord(ready, dp_cuda_stream(l->dev, s)->s));
    CUDA_TRY(cudaStreamWaitEvent(l->cstream[l->channels], ready, 0));
    event_put(l, ready);
    return DP_OK;
}

static dp_status nccl_collective_end(dp_link *l, dp_stream *s, const char *what)
{
    cudaEvent_t done;
    DP_CHECK(event_get(l, &done));
    CUDA_TRY(cudaEventRecord(done, l->cstream[l->channels]));
    dp_status st = nccl_wait_event(l, done, -1, -1, what);
    if (st == DP_OK) {
        cudaError_t e = cudaStreamWaitEvent(dp_cuda_stream(l->dev, s)->s, done, 0);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaStreamWaitEvent", __FILE__, __LINE__);
    }
    event_put(l, done);
    return st;
}

static dp_status cuda_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t,
                                 dp_reduce_op op, dp_stream *s)
{
    if (!dp_dtype_size(t)) return dp_fail(DP_ERR_INVALID, "cuda link: all_reduce of unknown dtype %d", (int)t);
    DP_CHECK(ensure_ready(l));
    if (link_mode(l) == MODE_COPY) return copy_all_reduce(l, send, recv, count, t, op, s);
    DP_CHECK(nccl_collective_begin(l, s));
    ncclComm_t c = l->comm[l->channels];
    DP_CHECK(nccl_call(l, ncclAllReduce(send, recv, count, nccl_type(t), op == DP_REDUCE_SUM ? ncclSum : ncclMax, c,
                                        l->cstream[l->channels]),
                       c, "ncclAllReduce"));
    return nccl_collective_end(l, s, "all_reduce");
}

static dp_status cuda_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                                   void *recv, const size_t *recv_counts, const size_t *recv_displs,
                                   size_t elem_bytes, dp_stream *s)
{
    DP_CHECK(ensure_ready(l));
    int n = l->g->size;
    if (link_mode(l) == MODE_NCCL) {
        DP_CHECK(nccl_collective_begin(l, s));
        ncclComm_t c = l->comm[l->channels];
        cudaStream_t cs = l->cstream[l->channels];
        ncclResult_t r = ncclGroupStart();
        for (int p = 0; p < n && (r == ncclSuccess || r == ncclInProgress); p++) {
            if (send_counts[p])
                r = ncclSend((const char *)send + send_displs[p] * elem_bytes, send_counts[p] * elem_bytes, ncclUint8,
                             p, c, cs);
            if ((r == ncclSuccess || r == ncclInProgress) && recv_counts[p])
                r = ncclRecv((char *)recv + recv_displs[p] * elem_bytes, recv_counts[p] * elem_bytes, ncclUint8, p,
                             c, cs);
        }
        ncclResult_t e = ncclGroupEnd();
        if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(l, r, "all_to_all_v");
        DP_CHECK(nccl_call(l, e, c, "ncclGroupEnd (all_to_all_v)"));
        return nccl_collective_end(l, s, "all_to_all_v");
    }
    int tag = next_coll_tag(l);
    dp_request **reqs = (dp_request **)calloc((size_t)2 * n, sizeof *reqs);
    if (!reqs) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    dp_status st = DP_OK;
    for (int p = 0; p < n && st == DP_OK; p++) {
        st = post(l, REQ_SEND, (const char *)send + send_displs[p] * elem_bytes, NULL, send_counts[p] * elem_bytes, p,
                  tag, s, &reqs[2 * p]);
        if (st == DP_OK)
            st = post(l, REQ_RECV, NULL, (char *)recv + recv_displs[p] * elem_bytes, recv_counts[p] * elem_bytes, p,
                      tag, s, &reqs[2 * p + 1]);
    }
    dp_status w = p2p_wait_all(l, reqs, 2 * n);
    free(reqs);
    return st != DP_OK ? st : w;
}

static dp_status cuda_barrier(dp_link *l)
{
    DP_CHECK(ensure_ready(l));
    if (link_mode(l) == MODE_NCCL) {
        void *tmp;
        DP_CHECK(dp_cuda_enter(l->dev));
        DP_CHECK(tmp_get(l, 16, &tmp));
        DP_CHECK(nccl_collective_begin(l, NULL));
        ncclComm_t c = l->comm[l->channels];
        DP_CHECK(nccl_call(l, ncclAllReduce(tmp, tmp, 1, ncclFloat32, ncclSum, c, l->cstream[l->channels]), c,
                           "ncclAllReduce (barrier)"));
        return nccl_collective_end(l, NULL, "barrier");
    }
    /* everyone reports to rank 0, which then releases everyone: zero-byte messages */
    int tag = next_coll_tag(l), n = l->g->size;
    if (l->rank != 0) {
        dp_request *r[2] = {NULL, NULL};
        DP_CHECK(post(l, REQ_SEND, NULL, NULL, 0, 0, tag, NULL, &r[0]));
        dp_status st = post(l, REQ_RECV, NULL, NULL, 0, 0, tag, NULL, &r[1]);
        dp_status w = p2p_wait_all(l, r, 2);
        return st != DP_OK ? st : w;
    }
    for (int p = 1; p < n; p++) {
        dp_request *r;
        DP_CHECK(post(l, REQ_RECV, NULL, NULL, 0, p, tag, NULL, &r));
        DP_CHECK(cuda_wait(l, r));
    }
    for (int p = 1; p < n; p++) {
        dp_request *r;
        DP_CHECK(post(l, REQ_SEND, NULL, NULL, 0, p, tag, NULL, &r));
        DP_CHECK(cuda_wait(l, r));
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * split: a rendezvous of the parent's members in this process, then new communicators */

static dp_status cuda_split(dp_link *parent, int color, int key, dp_link **out)
{
    *out = NULL;
    DP_CHECK(ensure_ready(parent));
    dp_link_world *w = parent->w;
    group *pg = parent->g;
    unsigned seq = parent->split_seq++;
    pthread_mutex_lock(&w->lock);
    split_round *round = NULL;
    for (split_round *r = w->rounds; r; r = r->next)
        if (r->parent == pg && r->seq == seq) round = r;
    if (!round) {
        round = (split_round *)calloc(1, sizeof *round);
        if (round) {
            round->color = (int *)calloc((size_t)pg->size, sizeof(int));
            round->key = (int *)calloc((size_t)pg->size, sizeof(int));
            round->child = (group **)calloc((size_t)pg->size, sizeof(group *));
        }
        if (!round || !round->color || !round->key || !round->child) {
            if (round) free(round->color), free(round->key), free(round->child), free(round);
            pthread_mutex_unlock(&w->lock);
            return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
        }
        round->parent = pg;
        round->seq = seq;
        round->left = pg->size;
        round->next = w->rounds;
        w->rounds = round;
        pg->refs++;
    }
    round->color[parent->rank] = color;
    round->key[parent->rank] = key;
    if (++round->arrived == pg->size) {
        /* the last to arrive forms every child group: members ordered by (key, parent rank) */
        for (int i = 0; i < pg->size; i++) {
            if (round->color[i] < 0 || round->child[i]) continue;
            int n = 0;
            for (int j = 0; j < pg->size; j++) n += round->color[j] == round->color[i];
            group *g = group_new(n, w->channels);
            if (!g) continue; /* members of this color will report it */
            g->refs = 0;
            int k = 0;
            for (int j = 0; j < pg->size; j++)
                if (round->color[j] == round->color[i]) g->world_of[k++] = j;
            for (int a = 1; a < n; a++) /* insertion sort by (key, parent rank) */
                for (int b = a; b > 0; b--) {
                    int x = g->world_of[b - 1], y = g->world_of[b];
                    if (round->key[x] < round->key[y] || (round->key[x] == round->key[y] && x < y)) break;
                    g->world_of[b - 1] = y, g->world_of[b] = x;
                }
            for (int j = 0; j < n; j++) {
                round->child[g->world_of[j]] = g;
                g->refs++;
            }
            for (int j = 0; j < n; j++) g->world_of[j] = pg->world_of[g->world_of[j]]; /* parent rank -> world */
        }
        round->formed = 1;
        pthread_cond_broadcast(&w->cond);
    }
    struct timespec ts;
    deadline_ts(&ts, parent->timeout_ms);
    while (!round->formed && !w->aborted)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0) break;
    int formed = round->formed;
    group *mine = formed ? round->child[parent->rank] : NULL;
    int my_rank = -1;
    if (mine)
        for (int j = 0; j < mine->size; j++)
            if (mine->world_of[j] == pg->world_of[parent->rank]) my_rank = j;
    if (--round->left == 0) { /* the last to leave frees the round */
        for (split_round **p = &w->rounds; *p; p = &(*p)->next)
            if (*p == round) {
                *p = round->next;
                break;
            }
        free(round->color), free(round->key), free(round->child), free(round);
        group_release(pg);
    }
    pthread_mutex_unlock(&w->lock);
    if (!formed)
        return w->aborted ? aborted_status(parent)
                          : dp_fail(DP_ERR_TIMEOUT, "cuda link: rank %d: split: not every member of the group arrived "
                                                    "within %d ms",
                                    pg->world_of[parent->rank], parent->timeout_ms);
    if (color < 0) return DP_OK;
    if (!mine) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory forming a group");
    dp_link *l;
    DP_CHECK(link_new(w, mine, my_rank, parent->dev, &l));
    if (link_mode(parent) == MODE_NCCL) {
        dp_status st = make_comms(l);
        if (st != DP_OK) {
            pthread_mutex_lock(&w->lock);
            group_release(mine);
            pthread_mutex_unlock(&w->lock);
            free(l);
            return st;
        }
    }
    l->ready = 1;
    *out = l;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the rest of the table */

static dp_status cuda_link_close(dp_link *l)
{
    if (!l) return DP_OK;
    dp_link_world *w = l->w;
    cudaSetDevice(l->dev->ordinal);
    for (int c = 0; c <= l->channels; c++) {
        if (l->comm[c]) {
            if (w->aborted) ncclCommAbort(l->comm[c]);
            else {
                ncclCommFinalize(l->comm[c]);
                nccl_settle(l, l->comm[c], now_ms() + l->timeout_ms, "ncclCommFinalize");
                ncclCommDestroy(l->comm[c]);
            }
        }
        if (l->cstream[c]) cudaStreamDestroy(l->cstream[c]);
    }
    for (int i = 0; i < l->pool_len; i++) cudaEventDestroy(l->event_pool[i]);
    free(l->event_pool);
    if (l->tmp) cudaFree(l->tmp);
    pthread_mutex_lock(&w->lock);
    for (dp_request *r = l->g->posted_head[l->rank]; r;) {
        dp_request *n = r->next_posted;
        if (r->msg) message_release(r->msg);
        free(r);
        r = n;
    }
    l->g->posted_head[l->rank] = NULL;
    for (dp_request *r = l->deferred_head; r;) {
        dp_request *n = r->next_deferred;
        free(r);
        r = n;
    }
    group_release(l->g);
    pthread_mutex_unlock(&w->lock);
    free(l);
    return DP_OK;
}

static dp_status cuda_link_info(dp_link *l, int *rank, int *size)
{
    if (rank) *rank = l->rank;
    if (size) *size = l->g->size;
    return DP_OK;
}

static dp_status cuda_abort(dp_link *l, dp_status reason, const char *message)
{
    world_abort(l->w, l->g->world_of[l->rank], reason, message);
    abort_comms(l);
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
    "cuda",
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
};
}
