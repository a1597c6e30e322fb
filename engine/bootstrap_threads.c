/* bootstrap_threads.c: the in-process bootstrap, where every rank is a thread of this
 * process: each collective is one meeting of all ranks around a shared buffer. The default
 * when a link's world config names no bootstrap; MPI and TCP rendezvous plug in alike. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/link.h"
#include "engine/link_common.h"

typedef struct {
    int size;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned long round; /* meetings completed */
    int arrived;         /* ranks in the current meeting */
    int leaving;         /* ranks still reading the last meeting's buffer */
    size_t bytes;        /* the current meeting's size per rank */
    unsigned char *buf;
    size_t capacity;
    int aborted;
    char message[512];
} threads_bootstrap;

dp_status dp_bootstrap_threads_create(int world_size, int timeout_ms, void **out)
{
    *out = NULL;
    if (world_size < 1) return dp_fail(DP_ERR_INVALID, "bootstrap: world size must be >= 1, got %d", world_size);
    threads_bootstrap *s = calloc(1, sizeof *s);
    if (!s) return dp_fail(DP_ERR_NOMEM, "bootstrap: out of memory");
    s->size = world_size;
    s->timeout_ms = timeout_ms > 0 ? timeout_ms : 60000;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    *out = s;
    return DP_OK;
}

void dp_bootstrap_threads_destroy(void *ctx)
{
    threads_bootstrap *s = ctx;
    if (!s) return;
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s->buf);
    free(s);
}

/* One meeting: with root < 0 every rank writes its slot and reads all of them (allgather);
 * otherwise the root writes and every rank reads (broadcast). A meeting that does not fill
 * within the timeout ends the bootstrap for everyone: its buffer is no longer consistent. */
static dp_status meet(threads_bootstrap *s, int rank, const void *mine, size_t bytes, int root, void *out,
                      const char *what)
{
    if (rank < 0 || rank >= s->size)
        return dp_fail(DP_ERR_INVALID, "bootstrap: rank %d is outside the world of %d ranks", rank, s->size);
    struct timespec deadline;
    dp_link_deadline_ts(&deadline, s->timeout_ms);
    dp_status st = DP_OK;
    pthread_mutex_lock(&s->lock);
    while (s->leaving > 0 && !s->aborted) /* the last meeting is still being read */
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT) break;
    if (!s->aborted && s->leaving > 0) {
        snprintf(s->message, sizeof s->message, "bootstrap %s: rank %d: the previous meeting did not end within %d ms",
                 what, rank, s->timeout_ms);
        s->aborted = 1;
    }
    if (s->aborted) goto aborted;
    size_t need = root < 0 ? bytes * (size_t)s->size : bytes;
    if (s->arrived == 0) {
        if (need > s->capacity) {
            unsigned char *b = realloc(s->buf, need);
            if (!b) {
                pthread_mutex_unlock(&s->lock);
                return dp_fail(DP_ERR_NOMEM, "bootstrap: out of memory for %zu bytes", need);
            }
            s->buf = b, s->capacity = need;
        }
        s->bytes = bytes;
    } else if (s->bytes != bytes) {
        snprintf(s->message, sizeof s->message,
                 "bootstrap %s: rank %d gives %zu bytes where the others give %zu: the ranks disagree on the call "
                 "order", what, rank, bytes, s->bytes);
        s->aborted = 1;
        pthread_cond_broadcast(&s->cond);
        goto aborted;
    }
    if (bytes && root < 0) memcpy(s->buf + (size_t)rank * bytes, mine, bytes);
    else if (bytes && rank == root) memcpy(s->buf, mine, bytes);
    unsigned long round = s->round;
    if (++s->arrived == s->size) {
        s->round++;
        s->arrived = 0;
        s->leaving = s->size;
        pthread_cond_broadcast(&s->cond);
    }
    while (s->round == round && !s->aborted)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT) break;
    if (s->round == round) {
        if (!s->aborted) {
            snprintf(s->message, sizeof s->message,
                     "bootstrap %s: rank %d: only %d of %d ranks arrived within %d ms", what, rank, s->arrived,
                     s->size, s->timeout_ms);
            s->aborted = 1;
            pthread_cond_broadcast(&s->cond);
        }
        goto aborted;
    }
    if (need && out) memcpy(out, s->buf, need);
    if (--s->leaving == 0) pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return DP_OK;
aborted:
    st = dp_fail(DP_ERR_COMM, "%s", s->message);
    pthread_mutex_unlock(&s->lock);
    return st;
}

static dp_status threads_allgather(void *ctx, int rank, const void *mine, void *all, size_t bytes)
{
    return meet(ctx, rank, mine, bytes, -1, all, "allgather");
}

static dp_status threads_broadcast(void *ctx, int rank, void *buf, size_t bytes, int root)
{
    threads_bootstrap *s = ctx;
    if (root < 0 || root >= s->size)
        return dp_fail(DP_ERR_INVALID, "bootstrap: broadcast root %d is outside the world of %d ranks", root, s->size);
    return meet(s, rank, buf, bytes, root, buf, "broadcast");
}

static dp_status threads_barrier(void *ctx, int rank) { return meet(ctx, rank, NULL, 0, -1, NULL, "barrier"); }

static dp_status threads_abort(void *ctx, int rank, dp_status reason, const char *message)
{
    threads_bootstrap *s = ctx;
    pthread_mutex_lock(&s->lock);
    if (!s->aborted) {
        snprintf(s->message, sizeof s->message, "rank %d ended the job: %.460s", rank,
                 message && *message ? message : dp_status_name(reason));
        s->aborted = 1;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return DP_OK;
}

const dp_bootstrap_ops dp_bootstrap_threads = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION,
    .struct_size = sizeof(dp_bootstrap_ops),
    .name = "threads",
    .allgather = threads_allgather,
    .broadcast = threads_broadcast,
    .barrier = threads_barrier,
    .abort = threads_abort,
};
