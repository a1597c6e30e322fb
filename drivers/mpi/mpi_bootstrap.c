/* mpi_bootstrap.c: the MPI bootstrap: how the ranks of a job spread over MPI processes first
 * meet (the NCCL id, every rank's device, set-up failures). The rank threads of a process meet
 * first; the last to arrive makes one non-blocking MPI collective for the whole process, tested
 * against the deadline, and every thread takes its result. An abort is sent to every other
 * process on a communicator of its own, where each process keeps a receive posted. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    MPI_Request abort_recv, *abort_sends;
    abort_note incoming, outgoing;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned long round; /* meetings completed */
    int arrived, leaving;
    size_t bytes;
    unsigned char *block, *result; /* [local x bytes], [processes x local x bytes] */
    size_t capacity;
    dp_status status; /* the last meeting's */
    char failure[512];
    int aborted; /* under lock */
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
    for (int p = 0; p < b->processes; p++) b->abort_sends[p] = MPI_REQUEST_NULL;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &b->comm) != MPI_SUCCESS ||
        MPI_Comm_dup(MPI_COMM_WORLD, &b->abort_comm) != MPI_SUCCESS) {
        free(b->abort_sends), free(b);
        return dp_fail(DP_ERR_COMM, "mpi bootstrap: MPI_Comm_dup failed");
    }
    MPI_Comm_set_errhandler(b->comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(b->abort_comm, MPI_ERRORS_RETURN);
    MPI_Irecv(&b->incoming, (int)sizeof b->incoming, MPI_BYTE, MPI_ANY_SOURCE, 0, b->abort_comm, &b->abort_recv);
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, NULL);
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
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->cond);
    free(b->block), free(b->result), free(b->abort_sends), free(b);
}

/* Lock held. Another process's abort, if one has come. */
static void poll_abort_locked(mpi_bootstrap *b)
{
    int flag = 0;
    if (b->aborted || b->abort_recv == MPI_REQUEST_NULL) return;
    if (MPI_Test(&b->abort_recv, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) {
        b->incoming.text[NOTE_TEXT - 1] = '\0';
        snprintf(b->message, sizeof b->message, "rank %d ended the job: %s", (int)b->incoming.rank, b->incoming.text);
        b->aborted = 1;
        pthread_cond_broadcast(&b->cond);
    }
}

/* The process's one MPI collective of a meeting, made by the last thread to arrive, tested
 * against the deadline (lock not held). */
static dp_status process_collective(mpi_bootstrap *b, int kind, int root_process, double deadline)
{
    MPI_Request req;
    int count = (int)(b->bytes * (size_t)b->local), rc;
    if (kind == MEET_ALLGATHER)
        rc = MPI_Iallgather(b->block, count, MPI_BYTE, b->result, count, MPI_BYTE, b->comm, &req);
    else if (kind == MEET_BROADCAST)
        rc = MPI_Ibcast(b->result, (int)b->bytes, MPI_BYTE, root_process, b->comm, &req);
    else
        rc = MPI_Ibarrier(b->comm, &req);
    if (rc != MPI_SUCCESS) return dp_fail(DP_ERR_COMM, "mpi bootstrap: starting a collective failed (MPI error %d)", rc);
    int spins = 0;
    for (;;) {
        int done = 0;
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return dp_fail(DP_ERR_COMM, "mpi bootstrap: a collective failed");
        if (done) return DP_OK;
        pthread_mutex_lock(&b->lock);
        poll_abort_locked(b);
        int aborted = b->aborted;
        pthread_mutex_unlock(&b->lock);
        if (aborted || dp_link_now_ms() > deadline) {
            /* the collective cannot be cancelled; the job is ending, the request is left */
            MPI_Request_free(&req);
            if (aborted) return DP_ERR_COMM;
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
    if (bytes > (size_t)1 << 28) return dp_fail(DP_ERR_INVALID, "mpi bootstrap: %zu bytes is too much to exchange", bytes);
    int me = rank - first;
    double deadline = dp_link_now_ms() + b->timeout_ms;
    struct timespec ts; /* the waiters allow the process's collective its whole deadline */
    dp_link_deadline_ts(&ts, b->timeout_ms + 2000.0);
    pthread_mutex_lock(&b->lock);
    while (b->leaving > 0 && !b->aborted)
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT) break;
    if (b->aborted || b->leaving > 0) goto failed;
    if (b->arrived == 0) {
        size_t need = bytes * (size_t)b->local * (size_t)b->processes + 1;
        if (need > b->capacity) {
            unsigned char *blk = realloc(b->block, need), *res = blk ? realloc(b->result, need) : NULL;
            if (blk) b->block = blk;
            if (res) b->result = res;
            if (!blk || !res) {
                pthread_mutex_unlock(&b->lock);
                return dp_fail(DP_ERR_NOMEM, "mpi bootstrap: out of memory for %zu bytes", need);
            }
            b->capacity = need;
        }
        b->bytes = bytes;
    } else if (b->bytes != bytes) {
        pthread_mutex_unlock(&b->lock);
        return dp_fail(DP_ERR_INVALID, "mpi bootstrap %s: rank %d brings %zu bytes where the others bring %zu", what,
                       rank, bytes, b->bytes);
    }
    if (kind == MEET_ALLGATHER && bytes) memcpy(b->block + (size_t)me * bytes, mine, bytes);
    if (kind == MEET_BROADCAST && rank == root && bytes) memcpy(b->result, mine, bytes);
    unsigned long round = b->round;
    if (++b->arrived == b->local) {
        pthread_mutex_unlock(&b->lock);
        dp_status st = process_collective(b, kind, root / b->local, deadline);
        pthread_mutex_lock(&b->lock);
        b->status = st;
        if (st != DP_OK) snprintf(b->failure, sizeof b->failure, "%s", dp_last_error());
        b->arrived = 0;
        b->leaving = b->local;
        b->round++;
        pthread_cond_broadcast(&b->cond);
    } else {
        while (b->round == round && !b->aborted)
            if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT) {
                poll_abort_locked(b);
                if (b->round != round || b->aborted) break;
                snprintf(b->message, sizeof b->message,
                         "mpi bootstrap %s: rank %d: the other ranks of process %d did not arrive within %d ms", what,
                         rank, b->process, b->timeout_ms);
                b->aborted = 1;
                pthread_cond_broadcast(&b->cond);
                break;
            }
        if (b->round == round) goto failed;
    }
    dp_status st = b->status;
    if (st == DP_OK && out && bytes) {
        if (kind == MEET_ALLGATHER) memcpy(out, b->result, bytes * (size_t)b->local * (size_t)b->processes);
        else if (kind == MEET_BROADCAST) memcpy(out, b->result, bytes);
    }
    char failure[512];
    snprintf(failure, sizeof failure, "%s", b->failure);
    if (--b->leaving == 0) pthread_cond_broadcast(&b->cond);
    int aborted = b->aborted;
    char message[600];
    snprintf(message, sizeof message, "%s", b->message);
    pthread_mutex_unlock(&b->lock);
    if (aborted && st != DP_OK) return dp_fail(DP_ERR_COMM, "%s", message);
    if (st != DP_OK) return dp_fail(st, "%s", failure);
    return DP_OK;
failed:;
    char msg[600];
    snprintf(msg, sizeof msg, "%s", b->aborted ? b->message : "mpi bootstrap: the previous meeting did not end");
    pthread_mutex_unlock(&b->lock);
    return dp_fail(DP_ERR_COMM, "%s", msg);
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
    pthread_mutex_lock(&b->lock);
    if (!b->aborted) {
        b->aborted = 1;
        snprintf(b->message, sizeof b->message, "rank %d ended the job: %s", rank,
                 message && *message ? message : dp_status_name(reason));
        b->outgoing.rank = rank, b->outgoing.reason = (int32_t)reason;
        snprintf(b->outgoing.text, sizeof b->outgoing.text, "%s", message && *message ? message : dp_status_name(reason));
        for (int p = 0; p < b->processes; p++)
            if (p != b->process)
                MPI_Isend(&b->outgoing, (int)sizeof b->outgoing, MPI_BYTE, p, 0, b->abort_comm, &b->abort_sends[p]);
        pthread_cond_broadcast(&b->cond);
    }
    pthread_mutex_unlock(&b->lock);
    return DP_OK;
}

const dp_bootstrap_ops dp_bootstrap_mpi = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION,
    .struct_size = sizeof(dp_bootstrap_ops),
    .name = "mpi",
    .allgather = mpi_allgather,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .abort = mpi_bootstrap_abort,
};
