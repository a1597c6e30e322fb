/* test_bootstrap.c: the bootstraps whose ranks can all live in this process, the in-process one
 * (threads) and MPI's (its rank threads in one process; under mpirun, in every process): their
 * collectives, and an abort seen through every later call and through the aborted() query,
 * which answers 0 before it, at once and also while a collective is under way, and the abort's
 * rank, reason and message after it. (The TCP bootstrap's own test forks processes.) */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/link.h"
#include "engine/mpi_job.h"
#include "tests/mpi_skip.h"
#include "tests/tap.h"

#define MAX_RANKS 8
#define FAIL_TEXT 1200

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

/* ----------------------------------------------------------------------------
 * one rank thread: collectives, then rank 0 aborts while the others wait in a barrier */

typedef struct {
    const dp_bootstrap_ops *B;
    void *ctx;
    int rank, world, first, local; /* this process hosts ranks first .. first + local - 1 */
    int timeout_ms;
    char fail[FAIL_TEXT]; /* the first failed check, empty when all held */
} rank_env;

#define CHECK(e, cond, ...)                                                                \
    do {                                                                                   \
        if (!(cond) && !(e)->fail[0]) snprintf((e)->fail, sizeof (e)->fail, __VA_ARGS__); \
    } while (0)

static const char *const WANT = "rank 0 ended the job: its device failed";

static void *rank_main(void *arg)
{
    rank_env *e = arg;
    const dp_bootstrap_ops *B = e->B;
    int W = e->world, r = e->rank;

    /* the collectives work, and nothing has ended */
    unsigned char mine[5], all[5 * MAX_RANKS];
    for (int i = 0; i < 5; i++) mine[i] = (unsigned char)(r * 17 + i);
    dp_status st = B->allgather(e->ctx, r, mine, all, sizeof mine);
    CHECK(e, st == DP_OK, "allgather: %s", dp_last_error());
    int same = 1;
    for (int q = 0; q < W; q++)
        for (int i = 0; i < 5; i++) same &= all[q * 5 + i] == (unsigned char)(q * 17 + i);
    CHECK(e, same, "allgather: the result differs from every rank's bytes in rank order");
    unsigned char buf[3] = {0, 0, 0};
    if (r == W - 1) buf[0] = 7, buf[1] = 8, buf[2] = 9;
    st = B->broadcast(e->ctx, r, buf, sizeof buf, W - 1);
    CHECK(e, st == DP_OK && buf[0] == 7 && buf[1] == 8 && buf[2] == 9, "broadcast from rank %d: %s", W - 1,
          st == DP_OK ? "wrong bytes" : dp_last_error());
    dp_status reason = DP_OK;
    char msg[256] = "untouched";
    CHECK(e, B->aborted(e->ctx, &reason, msg, sizeof msg) == 0, "aborted() before any abort says %s", msg);
    CHECK(e, B->aborted(e->ctx, NULL, NULL, 0) == 0, "aborted() without reason or message");
    CHECK(e, B->barrier(e->ctx, r) == DP_OK, "barrier: %s", dp_last_error());

    if (r == 0) {
        sleep_ms(100); /* the others are in their barrier, which cannot end without this rank */
        double t0 = now_ms();
        int a = B->aborted(e->ctx, &reason, msg, sizeof msg);
        double took = now_ms() - t0;
        CHECK(e, a == 0, "aborted() while the others wait in a barrier: %d (%s)", a, msg);
        CHECK(e, took < 1000, "aborted() took %.0f ms while a barrier was under way: it must not wait for it", took);
        CHECK(e, B->abort(e->ctx, r, DP_ERR_DEVICE, "its device failed") == DP_OK, "abort");
    } else {
        double t0 = now_ms();
        st = B->barrier(e->ctx, r);
        double waited = now_ms() - t0;
        CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), WANT), "the pending barrier after rank 0's abort: %s (%s)",
              dp_status_name(st), dp_last_error());
        CHECK(e, waited < e->timeout_ms / 2, "the abort took %.0f ms to end the barrier (deadline %d ms)", waited,
              e->timeout_ms);
    }
    /* after it: the query says who and why, and every call fails at once with it */
    reason = DP_OK;
    int a = B->aborted(e->ctx, &reason, msg, sizeof msg);
    CHECK(e, a != 0 && reason == DP_ERR_DEVICE && strstr(msg, WANT), "aborted() after the abort: %d, %s, \"%s\"", a,
          dp_status_name(reason), msg);
    char tiny[8];
    a = B->aborted(e->ctx, NULL, tiny, sizeof tiny);
    CHECK(e, a != 0 && strlen(tiny) == sizeof tiny - 1 && strncmp(tiny, WANT, sizeof tiny - 1) == 0,
          "aborted() into an 8-byte message: cut to 7 characters and terminated (\"%.8s\")", tiny);
    for (int call = 0; call < 3; call++) {
        double t0 = now_ms();
        st = call == 0 ? B->allgather(e->ctx, r, mine, all, sizeof mine)
             : call == 1 ? B->broadcast(e->ctx, r, buf, sizeof buf, 0)
                         : B->barrier(e->ctx, r);
        double took = now_ms() - t0;
        CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), WANT) && took < 1000,
              "call %d after the abort: %s after %.0f ms (%s)", call, dp_status_name(st), took, dp_last_error());
    }
    return NULL;
}

/* Runs this process's ranks; 1 when every check held (failures as TAP comments). */
static int run_ranks(const char *name, const dp_bootstrap_ops *B, void *ctx, int world, int first, int local,
                     int timeout_ms)
{
    rank_env env[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    for (int i = 0; i < local; i++) {
        env[i] = (rank_env){.B = B, .ctx = ctx, .rank = first + i, .world = world, .first = first, .local = local,
                            .timeout_ms = timeout_ms};
        pthread_create(&th[i], NULL, rank_main, &env[i]);
    }
    int good = 1;
    for (int i = 0; i < local; i++) {
        pthread_join(th[i], NULL);
        if (env[i].fail[0]) {
            tap_diag("%s, rank %d: %s", name, env[i].rank, env[i].fail);
            good = 0;
        }
    }
    return good;
}

static int has_aborted_member(const dp_bootstrap_ops *B)
{
    return DP_HAS(B, aborted) && B->aborted != NULL;
}

int main(void)
{
    const int timeout_ms = 10000;

    /* the in-process bootstrap */
    tap_ok(has_aborted_member(&dp_bootstrap_threads), "threads: the table has aborted()");
    void *ctx = NULL;
    if (dp_bootstrap_threads_create(3, timeout_ms, &ctx) != DP_OK) {
        tap_diag("threads: create: %s", dp_last_error());
        tap_ok(0, "threads: 3 rank threads");
    } else {
        tap_ok(run_ranks("threads", &dp_bootstrap_threads, ctx, 3, 0, 3, timeout_ms),
               "threads, 3 ranks: collectives; aborted() 0 before the abort, at once while a barrier is under way; "
               "then rank, reason and message, and every call fails at once with them");
        dp_bootstrap_threads_destroy(ctx);
    }

    /* MPI's, its ranks threads of this process (and of the others under mpirun) */
    int process = 0, processes = 1, local_rank = 0;
    if (mpi_test_skip()) {
        tap_ok(1, "mpi # SKIP %s", mpi_test_skip());
    } else if (dp_mpi_start(NULL, NULL, &process, &processes, &local_rank) != DP_OK) {
        tap_ok(1, "mpi # SKIP MPI did not start: %s", dp_last_error());
    } else {
        tap_ok(has_aborted_member(&dp_bootstrap_mpi), "mpi: the table has aborted()");
        const int local = 2;
        if (dp_bootstrap_mpi_create(local, timeout_ms, &ctx) != DP_OK) {
            tap_diag("mpi: create: %s", dp_last_error());
            tap_ok(0, "mpi: %d rank threads per process", local);
        } else {
            char name[64];
            snprintf(name, sizeof name, "mpi, process %d of %d", process, processes);
            tap_ok(run_ranks(name, &dp_bootstrap_mpi, ctx, local * processes, process * local, local, timeout_ms),
                   "mpi, %d process%s of %d rank threads: the same, rank 0's abort reaching every process", processes,
                   processes == 1 ? "" : "es", local);
            dp_bootstrap_mpi_destroy(ctx);
        }
        dp_mpi_finish(0);
    }
    return tap_done();
}
