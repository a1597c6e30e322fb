/* bootstrap_threads.c: the in-process bootstrap, where every rank is a thread of this
 * process: each collective is one meeting of all ranks around a shared buffer
 * (bootstrap_meeting.c). The default when a link's world config names no bootstrap; MPI and
 * TCP rendezvous plug in alike. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/bootstrap_meeting.h"
#include "engine/link.h"

typedef struct {
    int size;
    dp_meeting *meeting; /* the world's ranks are its members, each in the slot of its rank */
    pthread_mutex_t lock; /* the abort's reason, recorded with the meeting's end */
    int abort_won;        /* the meeting ended by abort() (not by a failure of its own) */
    dp_status reason;     /* then the status the aborting rank gave */
} threads_bootstrap;

dp_status dp_bootstrap_threads_create(int world_size, int timeout_ms, void **out)
{
    *out = NULL;
    if (world_size < 1) return dp_fail(DP_ERR_INVALID, "bootstrap: world size must be >= 1, got %d", world_size);
    threads_bootstrap *s = calloc(1, sizeof *s);
    if (!s) return dp_fail(DP_ERR_NOMEM, "bootstrap: out of memory");
    s->size = world_size;
    dp_status st = dp_meeting_create(world_size, timeout_ms, &s->meeting);
    if (st != DP_OK) {
        free(s);
        return st;
    }
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return DP_OK;
}

void dp_bootstrap_threads_destroy(void *ctx)
{
    threads_bootstrap *s = ctx;
    if (!s) return;
    dp_meeting_destroy(s->meeting);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static dp_status check_rank(const threads_bootstrap *s, int rank)
{
    if (rank < 0 || rank >= s->size)
        return dp_fail(DP_ERR_INVALID, "bootstrap: rank %d is outside the world of %d ranks", rank, s->size);
    return DP_OK;
}

static dp_status threads_allgather(void *ctx, int rank, const void *mine, void *all, size_t bytes)
{
    threads_bootstrap *s = ctx;
    DP_CHECK(check_rank(s, rank));
    dp_meeting_call c = {.what = "allgather", .rank = rank, .slot = rank, .mine = mine, .bytes = bytes,
                         .root_slot = -1, .out = all, .out_bytes = bytes * (size_t)s->size};
    return dp_meeting_join(s->meeting, &c);
}

static dp_status threads_broadcast(void *ctx, int rank, void *buf, size_t bytes, int root)
{
    threads_bootstrap *s = ctx;
    DP_CHECK(check_rank(s, rank));
    if (root < 0 || root >= s->size)
        return dp_fail(DP_ERR_INVALID, "bootstrap: broadcast root %d is outside the world of %d ranks", root, s->size);
    dp_meeting_call c = {.what = "broadcast", .rank = rank, .slot = rank, .mine = buf, .bytes = bytes,
                         .root_slot = root, .out = buf, .out_bytes = bytes};
    return dp_meeting_join(s->meeting, &c);
}

static dp_status threads_barrier(void *ctx, int rank)
{
    threads_bootstrap *s = ctx;
    DP_CHECK(check_rank(s, rank));
    dp_meeting_call c = {.what = "barrier", .rank = rank, .slot = rank, .root_slot = -1};
    return dp_meeting_join(s->meeting, &c);
}

static dp_status threads_abort(void *ctx, int rank, dp_status reason, const char *message)
{
    threads_bootstrap *s = ctx;
    char why[512];
    snprintf(why, sizeof why, "rank %d ended the job: %.460s", rank,
             message && *message ? message : dp_status_name(reason));
    pthread_mutex_lock(&s->lock);
    if (dp_meeting_abort(s->meeting, DP_ERR_COMM, why)) s->abort_won = 1, s->reason = reason;
    pthread_mutex_unlock(&s->lock);
    return DP_OK;
}

static int threads_aborted(void *ctx, dp_status *reason, char *message, size_t message_size)
{
    threads_bootstrap *s = ctx;
    dp_status st = DP_OK;
    pthread_mutex_lock(&s->lock);
    int ended = dp_meeting_ended(s->meeting, &st, message, message_size);
    if (ended && reason) *reason = s->abort_won ? s->reason : st;
    pthread_mutex_unlock(&s->lock);
    return ended;
}

const dp_bootstrap_ops dp_bootstrap_threads = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION,
    .struct_size = sizeof(dp_bootstrap_ops),
    .name = "threads",
    .allgather = threads_allgather,
    .broadcast = threads_broadcast,
    .barrier = threads_barrier,
    .abort = threads_abort,
    .aborted = threads_aborted,
};
