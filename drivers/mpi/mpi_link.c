/* mpi_link.c: the `mpi` link: rank threads of several processes (one or more per process)
 * talk through MPI point to point; collectives are built from the same messages in group-rank
 * order, as the in-process link does, so a run is bit-equal whichever link carries it.
 *
 * Matching. MPI matches by (communicator, source process, tag), and several rank threads may
 * share a process, so each (sending thread, receiving thread) pair of local indices has its own
 * duplicate of MPI_COMM_WORLD: only one thread sends on it per process and only one receives,
 * and MPI's non-overtaking order keeps each pair's messages in posting order. The MPI tag then
 * carries the group and the channel: tag = group id << 5 | channel (16: the link's own
 * collectives). Within a channel messages match in posting order, as on NCCL (link.h): the
 * executor posts each channel's messages in the same order on both sides. A group's id is
 * agreed at split: one above the largest id any of its members has used, so two groups that
 * share a member never share an id.
 *
 * Failures. Every wait is a test loop with the link's deadline. An abort is recorded here,
 * told to every other process on a communicator of its own (each process keeps a receive
 * posted there, tested by the waits) and to the bootstrap.
 *
 * Progress. MPI moves a large message (past the shared-memory eager limit, a few KB) in
 * fragments, and a fragment moves only while its sender's or receiver's process is inside an MPI
 * call. A rank thread that posts a send and then computes would hold its message back until
 * its next wait. So while any request is in flight a progress thread per process enters MPI
 * every DUALPIPE_MPI_PROGRESS_US microseconds (default 20; 0 turns it off), as NCCL's and gloo's
 * own threads do; when nothing is in flight it sleeps on a condition variable. A process bound
 * to a single core (mpirun binds to cores at 2 processes or fewer) gets no progress thread by
 * default: there it could only take turns with the rank threads, which costs more than it saves. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/mpi_job.h"
#include "engine/link_common.h"

#define COLL_CHANNEL 16 /* the MPI tag's channel for the link's own collectives */
#define CHANNEL_BITS 5
#define ABORT_TEXT 512

typedef struct {
    int32_t rank;   /* the world rank that aborted */
    int32_t reason; /* dp_status */
    char text[ABORT_TEXT];
} abort_note;

struct dp_link_world {
    int size, local_ranks, first_rank, timeout_ms;
    int processes, process; /* in MPI_COMM_WORLD */
    MPI_Comm *pair_comm;    /* [local_ranks x local_ranks]: sender's local index x receiver's */
    MPI_Comm abort_comm;
    /* the posted receive for another process's abort, tested by whoever holds poll_lock */
    pthread_mutex_t poll_lock;
    MPI_Request abort_recv;
    abort_note incoming;
    MPI_Request *abort_sends; /* [processes], this process's abort told to the others */
    abort_note outgoing;
    dp_link_abort abort;
    dp_link_bootstrap bootstrap;
    int *opened;            /* [local_ranks] */
    int *next_id;           /* [local_ranks]: the next group id each local rank may take */
    /* the progress thread (progress_us > 0): runs while in_flight > 0 */
    int progress_us, progress_started, progress_stop;
    int in_flight; /* requests issued and not yet completed, freed or cancelled (atomic) */
    pthread_t progress;
    pthread_mutex_t progress_lock;
    pthread_cond_t progress_wake;
};

/* REQ_MULTI: a collective in flight (iall_to_all_v): its sends and receives as parts */
typedef enum { REQ_SEND, REQ_RECV, REQ_MULTI } req_kind;

struct dp_request {
    dp_request *next_deferred;
    req_kind kind;
    const void *send_buf;
    void *recv_buf;
    size_t bytes;
    int peer, tag; /* group rank, the caller's tag */
    int issued;
    int counted; /* counted in the world's in_flight */
    MPI_Request mpi;
    dp_status result; /* of a receive that a test found complete */
    dp_request **parts; /* REQ_MULTI: nparts slots, NULL where nothing was posted */
    int nparts;
};

struct dp_link {
    dp_link_world *w;
    int size, rank;    /* in the group */
    int *world_of;     /* [size] */
    int id;            /* the group's id, in MPI tags */
    int timeout_ms;
    int group_depth;
    dp_request *deferred_head, *deferred_tail;
    /* all_reduce's receive buffer, kept between calls: fresh large allocations cost a page
     * fault per page on every call, which dominates where faults are slow (VMs) */
    float *scratch;
    size_t scratch_bytes;
};

static int proc_of(const dp_link_world *w, int world_rank) { return world_rank / w->local_ranks; }
static int local_of(const dp_link_world *w, int world_rank) { return world_rank % w->local_ranks; }

static int mpi_tag(const dp_link *l, int tag)
{
    int channel = tag < 0 ? COLL_CHANNEL : DP_TAG_CHANNEL(tag);
    return (l->id << CHANNEL_BITS) | channel;
}

static dp_status mpi_fail(int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", rc);
    return dp_fail(DP_ERR_COMM, "mpi link: %s failed: %s", what, text);
}

#define MPI_TRY(call, what)                                                                                       \
    do {                                                                                                          \
        int rc_ = (call);                                                                                         \
        if (rc_ != MPI_SUCCESS) return mpi_fail(rc_, what);                                                       \
    } while (0)

/* ----------------------------------------------------------------------------
 * abort */

/* Takes another process's abort if one has arrived. Any thread may call it. */
static void poll_abort(dp_link_world *w)
{
    if (dp_link_abort_raised(&w->abort) || pthread_mutex_trylock(&w->poll_lock) != 0) return;
    int flag = 0;
    if (w->abort_recv != MPI_REQUEST_NULL && MPI_Test(&w->abort_recv, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS &&
        flag) {
        w->incoming.text[ABORT_TEXT - 1] = '\0';
        /* recorded without telling anyone again: the aborting process told everyone */
        dp_link_abort_raise(&w->abort, NULL, w->incoming.rank, (dp_status)w->incoming.reason, w->incoming.text);
    }
    pthread_mutex_unlock(&w->poll_lock);
}

static dp_status mpi_abort(dp_link *l, dp_status reason, const char *msg)
{
    dp_link_world *w = l->w;
    int rank = l->world_of[l->rank];
    if (!dp_link_abort_raise(&w->abort, &w->bootstrap, rank, reason, msg)) return DP_OK;
    pthread_mutex_lock(&w->poll_lock);
    w->outgoing.rank = rank;
    w->outgoing.reason = (int32_t)reason;
    snprintf(w->outgoing.text, sizeof w->outgoing.text, "%s", msg && *msg ? msg : dp_status_name(reason));
    for (int p = 0; p < w->processes; p++)
        if (p != w->process && w->abort_sends[p] == MPI_REQUEST_NULL)
            MPI_Isend(&w->outgoing, (int)sizeof w->outgoing, MPI_BYTE, p, 0, w->abort_comm, &w->abort_sends[p]);
    pthread_mutex_unlock(&w->poll_lock);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * progress */

static void *progress_main(void *arg)
{
    dp_link_world *w = arg;
    struct timespec pause = {0, (long)w->progress_us * 1000L};
    pthread_mutex_lock(&w->progress_lock);
    while (!w->progress_stop) {
        if (__atomic_load_n(&w->in_flight, __ATOMIC_ACQUIRE) == 0) {
            pthread_cond_wait(&w->progress_wake, &w->progress_lock);
            continue;
        }
        pthread_mutex_unlock(&w->progress_lock);
        /* any call enters MPI's progress engine; this one also learns of another process's abort */
        int flag = 0;
        MPI_Iprobe(MPI_ANY_SOURCE, 1, w->abort_comm, &flag, MPI_STATUS_IGNORE);
        poll_abort(w);
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&w->progress_lock);
    }
    pthread_mutex_unlock(&w->progress_lock);
    return NULL;
}

static void in_flight_add(dp_link_world *w, dp_request *r)
{
    r->counted = 1;
    if (__atomic_fetch_add(&w->in_flight, 1, __ATOMIC_ACQ_REL) == 0 && w->progress_started) {
        pthread_mutex_lock(&w->progress_lock);
        pthread_cond_signal(&w->progress_wake);
        pthread_mutex_unlock(&w->progress_lock);
    }
}

static void in_flight_done(dp_link_world *w, dp_request *r)
{
    if (!r->counted) return;
    r->counted = 0;
    __atomic_fetch_sub(&w->in_flight, 1, __ATOMIC_ACQ_REL);
}

/* DUALPIPE_MPI_PROGRESS_US: microseconds between the progress thread's calls into MPI. */
static dp_status progress_interval(int *us)
{
    const char *text = getenv("DUALPIPE_MPI_PROGRESS_US");
    *us = 20;
    if (!text || !*text) {
        cpu_set_t cpus;
        if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) < 2) *us = 0;
        return DP_OK;
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < 0 || v > 1000000)
        return dp_fail(DP_ERR_INVALID, "mpi link: DUALPIPE_MPI_PROGRESS_US=%s: give the microseconds between the "
                                       "progress thread's calls into MPI, 0 (no progress thread) to 1000000", text);
    *us = (int)v;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * world */

static dp_status world_free(dp_link_world *w, int collective)
{
    if (!w) return DP_OK;
    if (w->progress_started) {
        pthread_mutex_lock(&w->progress_lock);
        w->progress_stop = 1;
        pthread_cond_signal(&w->progress_wake);
        pthread_mutex_unlock(&w->progress_lock);
        pthread_join(w->progress, NULL);
    }
    pthread_mutex_destroy(&w->progress_lock);
    pthread_cond_destroy(&w->progress_wake);
    int clean = collective && !dp_link_abort_raised(&w->abort);
    if (w->abort_recv != MPI_REQUEST_NULL) {
        MPI_Cancel(&w->abort_recv);
        MPI_Request_free(&w->abort_recv);
    }
    for (int p = 0; w->abort_sends && p < w->processes; p++)
        if (w->abort_sends[p] != MPI_REQUEST_NULL) MPI_Request_free(&w->abort_sends[p]);
    /* after an abort a peer may be gone: freeing communicators could wait for it */
    if (clean) {
        for (int i = 0; w->pair_comm && i < w->local_ranks * w->local_ranks; i++)
            if (w->pair_comm[i] != MPI_COMM_NULL) MPI_Comm_free(&w->pair_comm[i]);
        if (w->abort_comm != MPI_COMM_NULL) MPI_Comm_free(&w->abort_comm);
    }
    dp_link_abort_fini(&w->abort);
    dp_link_bootstrap_close(&w->bootstrap);
    pthread_mutex_destroy(&w->poll_lock);
    free(w->pair_comm), free(w->abort_sends), free(w->opened), free(w->next_id);
    free(w);
    return DP_OK;
}

static dp_status dup_world(MPI_Comm *out)
{
    MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, out), "MPI_Comm_dup");
    MPI_TRY(MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    return DP_OK;
}

static dp_status mpi_world_create(const dp_link_world_config *cfg, dp_link_world **out)
{
    *out = NULL;
    int started = 0, finished = 0, level = 0;
    MPI_Initialized(&started);
    if (started) MPI_Finalized(&finished);
    if (!started || finished)
        return dp_fail(DP_ERR_INVALID, "mpi link: MPI is not running; start the job with an MPI launcher (mpirun, "
                                       "srun) and call dp_mpi_start first");
    MPI_Query_thread(&level);
    if (level < MPI_THREAD_MULTIPLE)
        return dp_fail(DP_ERR_UNSUPPORTED, "mpi link: MPI was started without MPI_THREAD_MULTIPLE (level %d); rank "
                                           "threads call MPI at once: start it with dp_mpi_start", level);
    int processes, process;
    MPI_Comm_size(MPI_COMM_WORLD, &processes);
    MPI_Comm_rank(MPI_COMM_WORLD, &process);
    int local = cfg->local_ranks > 0 ? cfg->local_ranks : cfg->world_size;
    if (cfg->world_size < 1 || local < 1 || local > DP_MPI_MAX_LOCAL_RANKS || cfg->world_size != processes * local ||
        cfg->first_rank != process * local)
        return dp_fail(DP_ERR_INVALID,
                       "mpi link: process %d of %d hosts ranks %d..%d of a world of %d; the mpi link needs every "
                       "process to host the same number of ranks (1 to %d), process p hosting ranks p x that "
                       "number onwards: make the world size a multiple of the processes",
                       process, processes, cfg->first_rank, cfg->first_rank + local - 1, cfg->world_size,
                       DP_MPI_MAX_LOCAL_RANKS);
    dp_link_world *w = calloc(1, sizeof *w);
    if (!w) return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory");
    w->size = cfg->world_size, w->local_ranks = local, w->first_rank = cfg->first_rank;
    w->processes = processes, w->process = process;
    w->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    w->abort_comm = MPI_COMM_NULL;
    w->abort_recv = MPI_REQUEST_NULL;
    pthread_mutex_init(&w->poll_lock, NULL);
    pthread_mutex_init(&w->progress_lock, NULL);
    pthread_cond_init(&w->progress_wake, NULL);
    dp_link_abort_init(&w->abort);
    w->pair_comm = malloc((size_t)local * (size_t)local * sizeof *w->pair_comm);
    w->abort_sends = malloc((size_t)processes * sizeof *w->abort_sends);
    w->opened = calloc((size_t)local, sizeof *w->opened);
    w->next_id = calloc((size_t)local, sizeof *w->next_id);
    if (!w->pair_comm || !w->abort_sends || !w->opened || !w->next_id) {
        world_free(w, 0);
        return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory");
    }
    for (int i = 0; i < local * local; i++) w->pair_comm[i] = MPI_COMM_NULL;
    for (int p = 0; p < processes; p++) w->abort_sends[p] = MPI_REQUEST_NULL;
    for (int i = 0; i < local; i++) w->next_id[i] = 1; /* 0 is the world group */
    dp_status st = progress_interval(&w->progress_us);
    if (st == DP_OK && DP_LINK_WORLD_CONFIG_HAS(cfg, bootstrap) && cfg->bootstrap)
        st = dp_link_bootstrap_open(&w->bootstrap, cfg, w->timeout_ms, "mpi");
    for (int i = 0; st == DP_OK && i < local * local; i++) st = dup_world(&w->pair_comm[i]);
    if (st == DP_OK) st = dup_world(&w->abort_comm);
    if (st == DP_OK) {
        int rc = MPI_Irecv(&w->incoming, (int)sizeof w->incoming, MPI_BYTE, MPI_ANY_SOURCE, 0, w->abort_comm,
                           &w->abort_recv);
        if (rc != MPI_SUCCESS) st = mpi_fail(rc, "MPI_Irecv");
    }
    if (st == DP_OK && w->progress_us > 0) {
        if (pthread_create(&w->progress, NULL, progress_main, w) != 0)
            st = dp_fail(DP_ERR_NOMEM, "mpi link: cannot start the progress thread (set DUALPIPE_MPI_PROGRESS_US=0 "
                                       "to run without one)");
        else w->progress_started = 1;
    }
    if (st != DP_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dp_last_error());
        world_free(w, 0);
        return dp_fail(st, "%s", msg);
    }
    *out = w;
    return DP_OK;
}

static dp_status mpi_world_destroy(dp_link_world *w) { return world_free(w, 1); }

static dp_status link_new(dp_link_world *w, int size, const int *world_of, int rank, int id, dp_link **out)
{
    dp_link *l = calloc(1, sizeof *l);
    int *members = malloc((size_t)size * sizeof *members);
    if (!l || !members) {
        free(l), free(members);
        return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory");
    }
    memcpy(members, world_of, (size_t)size * sizeof *members);
    l->w = w, l->size = size, l->rank = rank, l->world_of = members, l->id = id;
    l->timeout_ms = w->timeout_ms;
    *out = l;
    return DP_OK;
}

static dp_status mpi_open(dp_link_world *w, int rank, dp_device *dev, dp_link **out)
{
    (void)dev;
    *out = NULL;
    if (rank < w->first_rank || rank >= w->first_rank + w->local_ranks)
        return dp_fail(DP_ERR_INVALID, "mpi link: rank %d is not hosted by process %d (its ranks are %d..%d)", rank,
                       w->process, w->first_rank, w->first_rank + w->local_ranks - 1);
    int i = rank - w->first_rank;
    if (__atomic_exchange_n(&w->opened[i], 1, __ATOMIC_ACQ_REL))
        return dp_fail(DP_ERR_INVALID, "mpi link: rank %d is already open", rank);
    int *all = malloc((size_t)w->size * sizeof *all);
    if (!all) return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory");
    for (int r = 0; r < w->size; r++) all[r] = r;
    dp_status st = link_new(w, w->size, all, rank, 0, out);
    free(all);
    if (st != DP_OK) __atomic_store_n(&w->opened[i], 0, __ATOMIC_RELEASE);
    else
        dp_log(DP_LOG_INFO, "mpi link: rank %d of %d in process %d of %d (%d rank%s per process)", rank, w->size,
               w->process, w->processes, w->local_ranks, w->local_ranks == 1 ? "" : "s");
    return st;
}

static dp_status mpi_close(dp_link *l)
{
    if (!l) return DP_OK;
    for (dp_request *r = l->deferred_head; r;) {
        dp_request *n = r->next_deferred;
        free(r);
        r = n;
    }
    if (l->id == 0) __atomic_store_n(&l->w->opened[l->world_of[l->rank] - l->w->first_rank], 0, __ATOMIC_RELEASE);
    free(l->world_of);
    free(l->scratch);
    free(l);
    return DP_OK;
}

static dp_status mpi_info(dp_link *l, int *rank, int *size)
{
    if (rank) *rank = l->rank;
    if (size) *size = l->size;
    return DP_OK;
}

static dp_status mpi_set_timeout(dp_link *l, int timeout_ms)
{
    l->timeout_ms = timeout_ms > 0 ? timeout_ms : l->w->timeout_ms;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * point to point */

static MPI_Comm comm_for(const dp_link *l, int src_group_rank, int dst_group_rank)
{
    const dp_link_world *w = l->w;
    int s = local_of(w, l->world_of[src_group_rank]), d = local_of(w, l->world_of[dst_group_rank]);
    return w->pair_comm[s * w->local_ranks + d];
}

static dp_status issue(dp_link *l, dp_request *r)
{
    int peer_proc = proc_of(l->w, l->world_of[r->peer]);
    int rc;
    r->issued = 1;
    if (r->kind == REQ_SEND)
        rc = MPI_Isend(r->send_buf, (int)r->bytes, MPI_BYTE, peer_proc, mpi_tag(l, r->tag),
                       comm_for(l, l->rank, r->peer), &r->mpi);
    else
        rc = MPI_Irecv(r->recv_buf, (int)r->bytes, MPI_BYTE, peer_proc, mpi_tag(l, r->tag),
                       comm_for(l, r->peer, l->rank), &r->mpi);
    if (rc != MPI_SUCCESS) {
        r->mpi = MPI_REQUEST_NULL;
        return mpi_fail(rc, r->kind == REQ_SEND ? "MPI_Isend" : "MPI_Irecv");
    }
    in_flight_add(l->w, r);
    return DP_OK;
}

static dp_status post(dp_link *l, req_kind kind, const void *sbuf, void *rbuf, size_t bytes, int peer, int tag,
                      dp_request **out)
{
    *out = NULL;
    if (peer < 0 || peer >= l->size)
        return dp_fail(DP_ERR_INVALID, "mpi link: rank %d: peer %d is outside the group of %d",
                       l->world_of[l->rank], peer, l->size);
    if (bytes > INT_MAX)
        return dp_fail(DP_ERR_UNSUPPORTED, "mpi link: a message of %zu bytes; this link sends at most %d bytes at "
                                           "once (split it)", bytes, INT_MAX);
    if (bytes && !(kind == REQ_SEND ? sbuf : rbuf))
        return dp_fail(DP_ERR_INVALID, "mpi link: NULL buffer for %zu bytes", bytes);
    dp_request *r = calloc(1, sizeof *r);
    if (!r) return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory");
    r->kind = kind, r->send_buf = sbuf, r->recv_buf = rbuf, r->bytes = bytes, r->peer = peer, r->tag = tag;
    r->mpi = MPI_REQUEST_NULL;
    if (l->group_depth > 0) {
        if (l->deferred_tail) l->deferred_tail->next_deferred = r;
        else l->deferred_head = r;
        l->deferred_tail = r;
    } else {
        dp_status st = issue(l, r);
        if (st != DP_OK) {
            free(r);
            return st;
        }
    }
    *out = r;
    return DP_OK;
}

static dp_status mpi_isend(dp_link *l, const void *buf, size_t bytes, int peer, int tag, dp_stream *s,
                           dp_request **req)
{
    (void)s;
    return post(l, REQ_SEND, buf, NULL, bytes, peer, tag, req);
}

static dp_status mpi_irecv(dp_link *l, void *buf, size_t bytes, int peer, int tag, dp_stream *s, dp_request **req)
{
    (void)s;
    return post(l, REQ_RECV, NULL, buf, bytes, peer, tag, req);
}

static dp_status mpi_group_start(dp_link *l)
{
    l->group_depth++;
    return DP_OK;
}

static dp_status mpi_group_end(dp_link *l)
{
    if (l->group_depth <= 0) return dp_fail(DP_ERR_INVALID, "mpi link: group_end without group_start");
    if (--l->group_depth > 0) return DP_OK;
    dp_status st = DP_OK;
    for (dp_request *r = l->deferred_head; r; r = r->next_deferred)
        if (st == DP_OK) st = issue(l, r);
    l->deferred_head = l->deferred_tail = NULL;
    return st;
}

/* A completed receive's size against the one posted. */
static dp_status check_size(dp_link *l, dp_request *r, MPI_Status *status, int rc)
{
    if (r->kind != REQ_RECV) return DP_OK;
    int count = 0;
    if (rc == MPI_ERR_TRUNCATE || status->MPI_ERROR == MPI_ERR_TRUNCATE)
        return dp_fail(DP_ERR_COMM,
                       "mpi link: rank %d: the message from rank %d has more than the %zu bytes the receive "
                       "expects: the two sides disagree on the size",
                       l->world_of[l->rank], l->world_of[r->peer], r->bytes);
    MPI_Get_count(status, MPI_BYTE, &count);
    if ((size_t)count != r->bytes)
        return dp_link_fail_size("mpi", l->world_of[l->rank], l->world_of[r->peer], r->tag, (size_t)count, r->bytes);
    return DP_OK;
}

static void drop(dp_link_world *w, dp_request *r)
{
    in_flight_done(w, r);
    if (r->mpi != MPI_REQUEST_NULL) {
        MPI_Cancel(&r->mpi);
        MPI_Request_free(&r->mpi);
    }
}

static dp_status test_multi(dp_link *l, dp_request *r, int *done);

static dp_status mpi_test(dp_link *l, dp_request *r, int *done)
{
    *done = 0;
    if (r->kind == REQ_MULTI) return test_multi(l, r, done);
    if (!r->issued) return DP_OK;
    if (r->mpi == MPI_REQUEST_NULL) { /* completed by an earlier test */
        *done = 1;
        return DP_OK;
    }
    MPI_Status status;
    int rc = MPI_Test(&r->mpi, done, &status);
    if (rc != MPI_SUCCESS && rc != MPI_ERR_TRUNCATE) return mpi_fail(rc, "MPI_Test");
    if (*done) {
        in_flight_done(l->w, r);
        return r->result = check_size(l, r, &status, rc);
    }
    poll_abort(l->w);
    if (dp_link_abort_raised(&l->w->abort)) return dp_link_abort_fail(&l->w->abort);
    return DP_OK;
}

static dp_status wait_multi(dp_link *l, dp_request *r);

static dp_status mpi_wait(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    if (r->kind == REQ_MULTI) return wait_multi(l, r);
    if (!r->issued) {
        for (dp_request **p = &l->deferred_head; *p; p = &(*p)->next_deferred)
            if (*p == r) {
                *p = r->next_deferred;
                if (l->deferred_tail == r) {
                    l->deferred_tail = NULL;
                    for (dp_request *q = l->deferred_head; q; q = q->next_deferred) l->deferred_tail = q;
                }
                break;
            }
        free(r);
        return dp_fail(DP_ERR_INVALID, "mpi link: wait on a request inside an open group; call group_end first");
    }
    double deadline = dp_link_now_ms() + l->timeout_ms;
    dp_status st = DP_OK;
    int spins = 0;
    for (;;) {
        if (r->mpi == MPI_REQUEST_NULL) { /* a test found it complete */
            st = r->result;
            break;
        }
        int done = 0;
        MPI_Status status;
        int rc = MPI_Test(&r->mpi, &done, &status);
        if (rc != MPI_SUCCESS && rc != MPI_ERR_TRUNCATE) {
            st = mpi_fail(rc, "MPI_Test");
            break;
        }
        if (done) {
            st = check_size(l, r, &status, rc);
            break;
        }
        poll_abort(w);
        if (dp_link_abort_raised(&w->abort)) {
            st = dp_link_abort_fail(&w->abort);
            break;
        }
        if (dp_link_now_ms() > deadline) {
            st = dp_link_fail_timeout("mpi", l->world_of[l->rank], r->kind == REQ_SEND ? "send" : "receive", r->bytes,
                                      l->world_of[r->peer], r->tag, l->timeout_ms);
            break;
        }
        dp_link_backoff(&spins);
    }
    if (st != DP_OK) drop(w, r);
    in_flight_done(w, r);
    free(r);
    return st;
}

/* ----------------------------------------------------------------------------
 * collectives: every member sends to every other, then receives, on the collective channel */

static dp_status wait_all(dp_link *l, dp_request **q, int n)
{
    dp_status st = DP_OK;
    for (int i = 0; i < n; i++)
        if (q[i]) {
            dp_status s2 = st == DP_OK ? mpi_wait(l, q[i]) : (drop(l->w, q[i]), free(q[i]), DP_OK);
            if (st == DP_OK) st = s2;
        }
    return st;
}

/* Gives up posted parts without waiting for them (an earlier part failed). */
static void drop_all(dp_link *l, dp_request **q, int n)
{
    for (int i = 0; i < n; i++)
        if (q[i]) drop(l->w, q[i]), free(q[i]), q[i] = NULL;
}

/* Posts a receive from and a send to every other member, on the collective channel:
 * rbuf[j]/sbuf[j] give the buffers, sizes in bytes. q has 2 x size slots (receives, then
 * sends; NULL for this rank's own). Every member posts its collectives in the same order, and
 * MPI matches each pair's messages in posting order, so exchanges in flight at once (and
 * blocking ones between them) never cross. On failure nothing is left posted. */
static dp_status post_exchange(dp_link *l, void *const *rbuf, const size_t *rbytes, const void *const *sbuf,
                               const size_t *sbytes, dp_request **q)
{
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "mpi link: a collective inside a group");
    int n = l->size;
    dp_status st = DP_OK;
    for (int j = 0; j < n && st == DP_OK; j++)
        if (j != l->rank) st = post(l, REQ_RECV, NULL, rbuf[j], rbytes[j], j, -1, &q[j]);
    for (int j = 0; j < n && st == DP_OK; j++)
        if (j != l->rank) st = post(l, REQ_SEND, sbuf[j], NULL, sbytes[j], j, -1, &q[n + j]);
    if (st != DP_OK) drop_all(l, q, 2 * n);
    return st;
}

static dp_status exchange(dp_link *l, void *const *rbuf, const size_t *rbytes, const void *const *sbuf,
                          const size_t *sbytes)
{
    int n = l->size;
    dp_request **q = calloc(2 * (size_t)n, sizeof *q);
    if (!q) return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory");
    dp_status st = post_exchange(l, rbuf, rbytes, sbuf, sbytes, q);
    if (st == DP_OK) st = wait_all(l, q, 2 * n);
    free(q);
    return st;
}

/* A collective in flight is done once every part is; a part that completed with an error
 * fails the test (the wait then gives up the rest). */
static dp_status test_multi(dp_link *l, dp_request *r, int *done)
{
    *done = 1;
    for (int i = 0; i < r->nparts; i++) {
        dp_request *p = r->parts[i];
        if (!p) continue;
        int part_done = 0;
        if (p->mpi == MPI_REQUEST_NULL) part_done = 1;
        else DP_CHECK(mpi_test(l, p, &part_done));
        if (part_done && p->result != DP_OK) {
            *done = 0;
            return p->result;
        }
        if (!part_done) {
            *done = 0;
            return DP_OK; /* mpi_test polled for aborts */
        }
    }
    return DP_OK;
}

/* Each part in order, with the link's timeout; after a failure the rest are given up (cancelled
 * and freed), so that one failure costs one timeout, not one per peer. */
static dp_status wait_multi(dp_link *l, dp_request *r)
{
    dp_status st = wait_all(l, r->parts, r->nparts);
    free(r->parts);
    free(r);
    return st;
}

static dp_status mpi_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t, dp_reduce_op op,
                                dp_stream *s)
{
    (void)s;
    if (t != DP_DTYPE_F32) return dp_fail(DP_ERR_UNSUPPORTED, "mpi link: all_reduce supports only fp32 (dtype %d)", (int)t);
    int n = l->size;
    size_t bytes = count * sizeof(float);
    size_t need = (size_t)n * (bytes ? bytes : 1);
    if (need > l->scratch_bytes) {
        free(l->scratch);
        l->scratch_bytes = 0;
        if ((l->scratch = malloc(need))) l->scratch_bytes = need;
    }
    float *all = l->scratch;
    void **rbuf = malloc((size_t)n * sizeof *rbuf);
    const void **sbuf = malloc((size_t)n * sizeof *sbuf);
    size_t *sizes = malloc((size_t)n * sizeof *sizes);
    dp_status st = DP_OK;
    if (!all || !rbuf || !sbuf || !sizes) st = dp_fail(DP_ERR_NOMEM, "mpi link: out of memory in all_reduce");
    if (st == DP_OK) {
        for (int j = 0; j < n; j++) rbuf[j] = all + (size_t)j * count, sbuf[j] = send, sizes[j] = bytes;
        if (bytes) memcpy(all + (size_t)l->rank * count, send, bytes);
        st = exchange(l, rbuf, sizes, sbuf, sizes);
    }
    if (st == DP_OK) {
        /* members in group-rank order, element by element, as the in-process link: every member
         * and every link computes the same bits */
        float *y = recv;
        for (size_t i = 0; i < count; i++) {
            float acc = all[i];
            for (int j = 1; j < n; j++) {
                float x = all[(size_t)j * count + i];
                acc = op == DP_REDUCE_MAX ? (x > acc ? x : acc) : acc + x;
            }
            y[i] = acc;
        }
    }
    free(rbuf), free(sbuf), free(sizes);
    return st;
}

static dp_status mpi_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                                  void *recv, const size_t *recv_counts, const size_t *recv_displs, size_t elem_bytes,
                                  dp_stream *s)
{
    (void)s;
    int n = l->size, me = l->rank;
    if (send_counts[me] != recv_counts[me])
        return dp_fail(DP_ERR_INVALID, "all_to_all_v: rank %d sends itself %zu elements but expects %zu", me,
                       send_counts[me], recv_counts[me]);
    void **rbuf = malloc((size_t)n * sizeof *rbuf);
    const void **sbuf = malloc((size_t)n * sizeof *sbuf);
    size_t *rb = malloc(2 * (size_t)n * sizeof *rb);
    if (!rbuf || !sbuf || !rb) {
        free(rbuf), free(sbuf), free(rb);
        return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory in all_to_all_v");
    }
    size_t *sb = rb + n;
    for (int j = 0; j < n; j++) {
        rbuf[j] = (char *)recv + recv_displs[j] * elem_bytes, rb[j] = recv_counts[j] * elem_bytes;
        sbuf[j] = (const char *)send + send_displs[j] * elem_bytes, sb[j] = send_counts[j] * elem_bytes;
    }
    if (sb[me]) memmove(rbuf[me], sbuf[me], sb[me]);
    dp_status st = exchange(l, rbuf, rb, sbuf, sb);
    free(rbuf), free(sbuf), free(rb);
    return st;
}

/* all_to_all_v in flight: the receives and sends are posted (MPI reads the send buffer in
 * place, so the caller keeps it unchanged until the request completes) and the returned request's
 * test/wait complete them. The progress thread moves large messages meanwhile. */
static dp_status mpi_iall_to_all_v(dp_link *l, const void *send, const size_t *send_counts,
                                   const size_t *send_displs, void *recv, const size_t *recv_counts,
                                   const size_t *recv_displs, size_t elem_bytes, dp_stream *s, dp_request **req)
{
    (void)s;
    *req = NULL;
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "mpi link: iall_to_all_v inside a group");
    int n = l->size, me = l->rank;
    if (send_counts[me] != recv_counts[me])
        return dp_fail(DP_ERR_INVALID, "iall_to_all_v: rank %d sends itself %zu elements but expects %zu", me,
                       send_counts[me], recv_counts[me]);
    dp_request *m = calloc(1, sizeof *m);
    dp_request **parts = calloc(2 * (size_t)n, sizeof *parts);
    void **rbuf = malloc((size_t)n * sizeof *rbuf);
    const void **sbuf = malloc((size_t)n * sizeof *sbuf);
    size_t *rb = malloc(2 * (size_t)n * sizeof *rb);
    dp_status st = DP_OK;
    if (!m || !parts || !rbuf || !sbuf || !rb)
        st = dp_fail(DP_ERR_NOMEM, "mpi link: out of memory for an all-to-all of %d ranks", n);
    if (st == DP_OK) {
        size_t *sb = rb + n;
        for (int j = 0; j < n; j++) {
            rbuf[j] = (char *)recv + recv_displs[j] * elem_bytes, rb[j] = recv_counts[j] * elem_bytes;
            sbuf[j] = (const char *)send + send_displs[j] * elem_bytes, sb[j] = send_counts[j] * elem_bytes;
        }
        if (sb[me]) memmove(rbuf[me], sbuf[me], sb[me]);
        st = post_exchange(l, rbuf, rb, sbuf, sb, parts);
    }
    free(rbuf), free(sbuf), free(rb);
    if (st != DP_OK) {
        free(parts), free(m);
        return st;
    }
    m->kind = REQ_MULTI, m->issued = 1, m->parts = parts, m->nparts = 2 * n;
    m->mpi = MPI_REQUEST_NULL;
    *req = m;
    return DP_OK;
}

static dp_status mpi_barrier(dp_link *l)
{
    int n = l->size;
    void **rbuf = calloc((size_t)n, sizeof *rbuf);
    const void **sbuf = calloc((size_t)n, sizeof *sbuf);
    size_t *zero = calloc((size_t)n, sizeof *zero);
    dp_status st = rbuf && sbuf && zero ? exchange(l, rbuf, zero, sbuf, zero)
                                        : dp_fail(DP_ERR_NOMEM, "mpi link: out of memory in barrier");
    free(rbuf), free(sbuf), free(zero);
    return st;
}

/* Every member learns every (color, key, next id); a new group takes one above the largest
 * next id of its members. */
static dp_status mpi_split(dp_link *l, int color, int key, dp_link **out)
{
    *out = NULL;
    dp_link_world *w = l->w;
    int n = l->size, me_local = local_of(w, l->world_of[l->rank]);
    int *buf = calloc(8 * (size_t)n, sizeof(int));
    size_t *counts = calloc(2 * (size_t)n, sizeof(size_t));
    if (!buf || !counts) {
        free(buf), free(counts);
        return dp_fail(DP_ERR_NOMEM, "mpi link: out of memory in split");
    }
    int *mine = buf, *all = buf + 3 * n, *colors = buf + 6 * n, *keys = buf + 7 * n;
    size_t *displs = counts + n;
    for (int j = 0; j < n; j++) {
        mine[3 * j] = color, mine[3 * j + 1] = key, mine[3 * j + 2] = w->next_id[me_local];
        counts[j] = 3, displs[j] = 3 * (size_t)j;
    }
    dp_status st = mpi_all_to_all_v(l, mine, counts, displs, all, counts, displs, sizeof(int), NULL);
    free(counts);
    if (st != DP_OK) {
        free(buf);
        return st;
    }
    for (int j = 0; j < n; j++) colors[j] = all[3 * j], keys[j] = all[3 * j + 1];
    int *members = malloc((size_t)n * sizeof *members), *world_of = malloc((size_t)n * sizeof *world_of);
    if (!members || !world_of) st = dp_fail(DP_ERR_NOMEM, "mpi link: out of memory in split");
    int my_index = -1, size = 0;
    if (st == DP_OK) size = dp_link_split_members(n, colors, keys, l->rank, members, &my_index);
    if (st == DP_OK && size > 0) {
        int id = 0;
        for (int i = 0; i < size; i++) {
            id = all[3 * members[i] + 2] > id ? all[3 * members[i] + 2] : id;
            world_of[i] = l->world_of[members[i]];
        }
        if (id >= (INT_MAX >> CHANNEL_BITS))
            st = dp_fail(DP_ERR_UNSUPPORTED, "mpi link: too many groups made in this world (%d)", id);
        else {
            w->next_id[me_local] = id + 1;
            st = link_new(w, size, world_of, my_index, id, out);
            if (st == DP_OK) (*out)->timeout_ms = l->timeout_ms;
        }
    }
    free(members), free(world_of), free(buf);
    return st;
}

const dp_link_ops dp_mpi_link_ops = {
    .abi_version = DP_LINK_ABI_VERSION,
    .struct_size = sizeof(dp_link_ops),
    .name = "mpi",
    .world_create = mpi_world_create,
    .world_destroy = mpi_world_destroy,
    .open = mpi_open,
    .split = mpi_split,
    .close = mpi_close,
    .info = mpi_info,
    .group_start = mpi_group_start,
    .group_end = mpi_group_end,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .test = mpi_test,
    .wait = mpi_wait,
    .all_reduce = mpi_all_reduce,
    .all_to_all_v = mpi_all_to_all_v,
    .barrier = mpi_barrier,
    .abort = mpi_abort,
    .set_timeout = mpi_set_timeout,
    .iall_to_all_v = mpi_iall_to_all_v,
};
