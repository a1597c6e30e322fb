/* mpi_bootstrap.c: the MPI bootstrap: how the ranks of a job spread over MPI processes first
 * meet (the NCCL id, every rank's device, set-up failures). The rank threads of a process meet
 * first (engine/bootstrap_meeting.h); the last to arrive makes one non-blocking MPI collective
 * for the whole process, tested against the deadline, and every thread takes its result. An
 * abort is sent to every other process on a communicator of its own, where each process keeps
 * a receive posted. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bootstrap_meeting.h"
#include "engine/mpi_job.h"
#include "engine/link_common.h"

#define NOTE_TEXT 480

typedef struct {
    int32_t rank, reason;
    char text[NOTE_TEXT];
} abort_note;

typedef struct {
    int local, processes, process, timeout_ms;
    MPI_Comm comm, abort_comm;
    dp_meeting *meeting; /* the process's rank threads, rank first + i in slot i */
    pthread_mutex_t lock; /* the abort: what follows */
    MPI_Request abort_recv, *abort_sends;
    abort_note incoming, outgoing;
    int aborted;
    dp_status reason; /* the status the aborting rank gave */
    char message[600];
} mpi_bootstrap;

enum { MEET_ALLGATHER, MEET_BROADCAST, MEET_BARRIER };

dp_status dp_bootstrap_mpi_create(int local_ranks, int timeout_ms, void **out)
{
    *out = NULL;
    int running = 0, level = 0;
    MPI_Initialized(&running);
    if (!running) return dp_fail(DP_ERR_INVALID, "mpi bootstrap: MPI is not running (call dp_mpi_start first)");
    MPI_Query_thread(&level);
    if (level < MPI_THREAD_MULTIPLE && local_ranks > 1)
        return dp_fail(DP_ERR_UNSUPPORTED, "mpi bootstrap: %d rank threads per process need MPI_THREAD_MULTIPLE",
                       local_ranks);
    if (local_ranks < 1 || local_ranks > DP_MPI_MAX_LOCAL_RANKS)
        return dp_fail(DP_ERR_INVALID, "mpi bootstrap: %d rank threads per process; 1 to %d are supported",
                       local_ranks, DP_MPI_MAX_LOCAL_RANKS);
    mpi_bootstrap *b = calloc(1, sizeof *b);
    if (!b) return dp_fail(DP_ERR_NOMEM, "mpi bootstrap: out of memory");
    b->local = local_ranks;
    b->timeout_ms = timeout_ms > 0 ? timeout_ms : 60000;
    MPI_Comm_size(MPI_COMM_WORLD, &b->processes);
    MPI_Comm_rank(MPI_COMM_WORLD, &b->process);
    b->abort_sends = malloc((size_t)b->processes * sizeof *b->abort_sends);
    if (!b->abort_sends) {
        free(b);
        return dp_fail(DP_ERR_NOMEM, "mpi bootstrap: out of memory");
    }
    dp_status st = dp_meeting_create(local_ranks, b->timeout_ms, &b->meeting);
    if (st != DP_OK) {
        free(b->abort_sends), free(b);
        return st;
    }
    for (int p = 0; p < b->processes; p++) b->abort_sends[p] = MPI_REQUEST_NULL;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &b->comm) != MPI_SUCCESS ||
        MPI_Comm_dup(MPI_COMM_WORLD, &b->abort_comm) != MPI_SUCCESS) {
        dp_meeting_destroy(b->meeting);
        free(b->abort_sends), free(b);
        return dp_fail(DP_ERR_COMM, "mpi bootstrap: MPI_Comm_dup failed");
    }
    MPI_Comm_set_errhandler(b->comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(b->abort_comm, MPI_ERRORS_RETURN);
    MPI_Irecv(&b->incoming, (int)sizeof b->incoming, MPI_BYTE, MPI_ANY_SOURCE, 0, b->abort_comm, &b->abort_recv);
    pthread_mutex_init(&b->lock, NULL);
    *out = b;
    return DP_OK;
}

void dp_bootstrap_mpi_destroy(void *ctx)
{
    mpi_bootstrap *b = ctx;
    if (!b) return;
    if (b->abort_recv != MPI_REQUEST_NULL) {
        MPI_Cancel(&b->abort_recv);
        MPI_Request_free(&b->abort_recv);
    }
    for (int p = 0; p < b->processes; p++)
        if (b->abort_sends[p] != MPI_REQUEST_NULL) MPI_Request_free(&b->abort_sends[p]);
    if (!b->aborted) {
        MPI_Comm_free(&b->comm);
        MPI_Comm_free(&b->abort_comm);
    }
    dp_meeting_destroy(b->meeting);
    pthread_mutex_destroy(&b->lock);
    free(b->abort_sends), free(b);
}

/* Another process's abort, if one has come: recorded, and the meeting ended with it. 1 when
 * the job has ended by an abort (from here or elsewhere). */
static int poll_abort(mpi_bootstrap *b)
{
    int flag = 0, heard = 0;
    pthread_mutex_lock(&b->lock);
    if (!b->aborted && b->abort_recv != MPI_REQUEST_NULL &&
        MPI_Test(&b->abort_recv, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) {
        b->incoming.text[NOTE_TEXT - 1] = '\0';
        snprintf(b->message, sizeof b->message, "rank %d ended the job: %s", (int)b->incoming.rank, b->incoming.text);
        b->reason = (dp_status)b->incoming.reason;
        b->aborted = heard = 1;
    }
    int aborted = b->aborted;
    char message[sizeof b->message];
    if (heard) snprintf(message, sizeof message, "%s", b->message);
    pthread_mutex_unlock(&b->lock);
    if (heard) dp_meeting_abort(b->meeting, DP_ERR_COMM, message);
    return aborted;
}

static dp_status abort_fail(mpi_bootstrap *b)
{
    pthread_mutex_lock(&b->lock);
    dp_status st = dp_fail(DP_ERR_COMM, "%s", b->message);
    pthread_mutex_unlock(&b->lock);
    return st;
}

/* ----------------------------------------------------------------------------
 * collectives: the step the last rank thread of a process runs */

typedef struct {
    mpi_bootstrap *b;
    int kind, root;
    size_t bytes;
} mpi_call;

/* The process's one MPI collective of a meeting, tested against the deadline: the members'
 * blocks (in, local x bytes) gathered from every process into out (processes x local x
 * bytes), or the root's bytes broadcast into out, or a barrier. */
static dp_status mpi_step(void *arg, const void *in, size_t in_bytes, void *out, size_t out_bytes)
{
    const mpi_call *c = arg;
    mpi_bootstrap *b = c->b;
    if (poll_abort(b)) return abort_fail(b);
    double deadline = dp_link_now_ms() + b->timeout_ms;
    MPI_Request req;
    int rc;
    if (c->kind == MEET_ALLGATHER)
        rc = MPI_Iallgather(in, (int)in_bytes, MPI_BYTE, out, (int)in_bytes, MPI_BYTE, b->comm, &req);
    else if (c->kind == MEET_BROADCAST) {
        if (in_bytes) memcpy(out, in, in_bytes); /* the root lives here */
        rc = MPI_Ibcast(out, (int)out_bytes, MPI_BYTE, c->root / b->local, b->comm, &req);
    } else
        rc = MPI_Ibarrier(b->comm, &req);
    if (rc != MPI_SUCCESS) return dp_fail(DP_ERR_COMM, "mpi bootstrap: starting a collective failed (MPI error %d)", rc);
    int spins = 0;
    for (;;) {
        int done = 0;
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return dp_fail(DP_ERR_COMM, "mpi bootstrap: a collective failed");
        if (done) return DP_OK;
        int aborted = poll_abort(b);
        if (aborted || dp_link_now_ms() > deadline) {
            /* the collective cannot be cancelled; the job is ending, the request is left */
            MPI_Request_free(&req);
            if (aborted) return abort_fail(b);
            return dp_fail(DP_ERR_TIMEOUT,
                           "mpi bootstrap: process %d: the other processes did not join within %d ms (one has "
                           "failed, hangs, or runs a different command)",
                           b->process, b->timeout_ms);
        }
        dp_link_backoff(&spins);
    }
}

static dp_status meet(mpi_bootstrap *b, int rank, int kind, const void *mine, void *out, size_t bytes, int root,
                      const char *what)
{
    int first = b->process * b->local;
    if (rank < first || rank >= first + b->local)
        return dp_fail(DP_ERR_INVALID, "mpi bootstrap: rank %d is not hosted by process %d (ranks %d..%d)", rank,
                       b->process, first, first + b->local - 1);
    if (bytes > (size_t)1 << 28 || bytes * (size_t)b->local > INT_MAX)
        return dp_fail(DP_ERR_INVALID, "mpi bootstrap: %zu bytes from each of %d rank threads is too much to exchange",
                       bytes, b->local);
    if (poll_abort(b)) return abort_fail(b);
    int root_slot = kind == MEET_BROADCAST ? (root >= first && root < first + b->local ? root - first : -2) : -1;
    size_t out_bytes = kind == MEET_ALLGATHER ? bytes * (size_t)b->local * (size_t)b->processes
                       : kind == MEET_BROADCAST ? bytes
                                                : 0;
    mpi_call call = {.b = b, .kind = kind, .root = root, .bytes = bytes};
    dp_meeting_call m = {.what = what, .rank = rank, .slot = rank - first, .mine = mine, .bytes = bytes,
                         .root_slot = root_slot, .out = out, .out_bytes = out_bytes, .step = mpi_step,
                         .step_arg = &call};
    return dp_meeting_join(b->meeting, &m);
}

static dp_status mpi_allgather(void *ctx, int rank, const void *mine, void *all, size_t bytes)
{
    return meet(ctx, rank, MEET_ALLGATHER, mine, all, bytes, 0, "allgather");
}

static dp_status mpi_broadcast(void *ctx, int rank, void *buf, size_t bytes, int root)
{
    mpi_bootstrap *b = ctx;
    if (root < 0 || root >= b->local * b->processes)
        return dp_fail(DP_ERR_INVALID, "mpi bootstrap: broadcast root %d is outside the world of %d ranks", root,
                       b->local * b->processes);
    return meet(ctx, rank, MEET_BROADCAST, buf, buf, bytes, root, "broadcast");
}

static dp_status mpi_barrier(void *ctx, int rank) { return meet(ctx, rank, MEET_BARRIER, NULL, NULL, 0, 0, "barrier"); }

static dp_status mpi_bootstrap_abort(void *ctx, int rank, dp_status reason, const char *message)
{
    mpi_bootstrap *b = ctx;
    const char *text = message && *message ? message : dp_status_name(reason);
    char ended[sizeof b->message];
    pthread_mutex_lock(&b->lock);
    int first = !b->aborted;
    if (first) {
        b->aborted = 1;
        b->reason = reason;
        snprintf(b->message, sizeof b->message, "rank %d ended the job: %s", rank, text);
        b->outgoing.rank = rank, b->outgoing.reason = (int32_t)reason;
        snprintf(b->outgoing.text, sizeof b->outgoing.text, "%s", text);
        for (int p = 0; p < b->processes; p++)
            if (p != b->process)
                MPI_Isend(&b->outgoing, (int)sizeof b->outgoing, MPI_BYTE, p, 0, b->abort_comm, &b->abort_sends[p]);
        snprintf(ended, sizeof ended, "%s", b->message);
    }
    pthread_mutex_unlock(&b->lock);
    if (first) dp_meeting_abort(b->meeting, DP_ERR_COMM, ended);
    return DP_OK;
}

/* An abort (tested for on the abort communicator, without waiting), or a failure that ended
 * the meeting of this process's threads (a missed deadline). */
static int mpi_aborted(void *ctx, dp_status *reason, char *message, size_t message_size)
{
    mpi_bootstrap *b = ctx;
    if (!poll_abort(b)) return dp_meeting_ended(b->meeting, reason, message, message_size);
    pthread_mutex_lock(&b->lock);
    if (reason) *reason = b->reason;
    if (message && message_size) snprintf(message, message_size, "%s", b->message);
    pthread_mutex_unlock(&b->lock);
    return 1;
}

const dp_bootstrap_ops dp_bootstrap_mpi = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION,
    .struct_size = sizeof(dp_bootstrap_ops),
    .name = "mpi",
    .allgather = mpi_allgather,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .abort = mpi_bootstrap_abort,
    .aborted = mpi_aborted,
};
