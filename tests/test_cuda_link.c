/* test_cuda_link.c: the CUDA link with one thread per rank: four ranks sharing GPU 0 (the
 * copy link), then one rank per GPU through NCCL when there are two GPUs or more. Sends and
 * receives (grouped, FIFO per tag, independent channels), all_reduce, all_to_all_v, barrier,
 * split, a missing send that must end in an error naming the peer rather than a hang, and a
 * send whose receive is posted late, which must complete when it is (not at its deadline). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/driver.h"
#include "tests/cuda_test_util.h"
#include "tests/tap.h"

#define MAX_RANKS 8
#define N 4099 /* floats per message: not a multiple of anything */

static const dp_device_ops *G;
static const dp_link_ops *L;

typedef struct {
    dp_link_world *w;
    int rank, size, ordinal;
    int timeout_case;
    /* results, checked on the main thread (TAP output stays in one thread) */
    int ring_ok, fifo_ok, channels_ok, sum_ok, max_ok, a2a_ok, barrier_ok, split_ok;
    dp_status timeout_status;
    double late_wait_ms; /* the late-receive case: how long rank 0's send waited */
    int late_ok;
    char message[512];
    char fail[512];
} rank_ctx;

#define TRY(call)                                                                       \
    do {                                                                                \
        dp_status try_s_ = (call);                                                      \
        if (try_s_ != DP_OK) {                                                          \
            snprintf(c->fail, sizeof c->fail, "%s: %s", #call, dp_last_error());        \
            goto out;                                                                   \
        }                                                                               \
    } while (0)

static int all_equal(const float *x, size_t n, float (*want)(size_t, void *), void *arg)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] != want(i, arg)) return 0;
    return 1;
}

static float ring_value(size_t i, void *arg) { return (float)(*(int *)arg * 10000 + (int)(i % 1000)); }

static void *rank_main(void *arg)
{
    rank_ctx *c = arg;
    dp_device *dev = NULL;
    dp_link *l = NULL, *sub = NULL;
    float *h = malloc(sizeof(float) * N * MAX_RANKS), *h2 = malloc(sizeof(float) * N * MAX_RANKS);
    void *sbuf = NULL, *rbuf = NULL, *rbuf2 = NULL;
    dp_device_config cfg = {.ordinal = c->ordinal, .rank = c->rank};
    TRY(G->open(&cfg, &dev));
    TRY(L->open(c->w, c->rank, dev, &l));
    size_t bytes = sizeof(float) * N * MAX_RANKS;
    TRY(G->alloc(dev, bytes, &sbuf));
    TRY(G->alloc(dev, bytes, &rbuf));
    TRY(G->alloc(dev, bytes, &rbuf2));
    int next = (c->rank + 1) % c->size, prev = (c->rank + c->size - 1) % c->size;

    if (c->timeout_case == 2) { /* rank 1 posts its receive 300 ms after rank 0's send */
        dp_request *r = NULL;
        float v[16] = {0};
        if (c->rank == 0) {
            for (int i = 0; i < 16; i++) v[i] = (float)(i + 1);
            TRY(G->copy(dev, sbuf, v, sizeof v, DP_COPY_HOST_TO_DEVICE, NULL));
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            TRY(L->isend(l, sbuf, sizeof v, 1, DP_TAG(0, 7), NULL, &r));
            TRY(L->wait(l, r));
            clock_gettime(CLOCK_MONOTONIC, &t1);
            c->late_wait_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6;
            c->late_ok = 1;
        } else {
            struct timespec late = {0, 300 * 1000 * 1000};
            nanosleep(&late, NULL);
            TRY(L->irecv(l, rbuf, sizeof v, 0, DP_TAG(0, 7), NULL, &r));
            TRY(L->wait(l, r));
            TRY(G->copy(dev, v, rbuf, sizeof v, DP_COPY_DEVICE_TO_HOST, NULL));
            c->late_ok = 1;
            for (int i = 0; i < 16; i++) c->late_ok &= v[i] == (float)(i + 1);
        }
        goto out;
    }
    if (c->timeout_case) {
        dp_request *r = NULL;
        if (c->rank == 0) {
            TRY(L->set_timeout(l, 300));
            TRY(L->irecv(l, rbuf, 16, 1, DP_TAG(2, 41), NULL, &r));
            c->timeout_status = L->wait(l, r);
        } else
            c->timeout_status = L->barrier(l); /* rank 0 never joins it */
        snprintf(c->message, sizeof c->message, "%s", dp_last_error());
        goto out;
    }

    /* ring, as one group: send to next, receive from previous */
    for (size_t i = 0; i < N; i++) h[i] = ring_value(i, &c->rank);
    TRY(G->copy(dev, sbuf, h, sizeof(float) * N, DP_COPY_HOST_TO_DEVICE, NULL));
    TRY(G->memset(dev, rbuf, 0xff, bytes, NULL));
    dp_request *rs = NULL, *rr = NULL;
    TRY(L->group_start(l));
    TRY(L->irecv(l, rbuf, sizeof(float) * N, prev, DP_TAG(0, 1), NULL, &rr));
    TRY(L->isend(l, sbuf, sizeof(float) * N, next, DP_TAG(0, 1), NULL, &rs));
    TRY(L->group_end(l));
    TRY(L->wait(l, rr));
    TRY(L->wait(l, rs));
    TRY(G->copy(dev, h, rbuf, sizeof(float) * N, DP_COPY_DEVICE_TO_HOST, NULL));
    c->ring_ok = all_equal(h, N, ring_value, &prev);

    /* two messages with one tag arrive in posting order */
    if (c->size >= 2) {
        float one = 1.0f + c->rank, two = 2.0f + c->rank;
        TRY(G->copy(dev, sbuf, &one, 4, DP_COPY_HOST_TO_DEVICE, NULL));
        TRY(G->copy(dev, (char *)sbuf + 64, &two, 4, DP_COPY_HOST_TO_DEVICE, NULL));
        dp_request *q[4];
        TRY(L->group_start(l));
        TRY(L->isend(l, sbuf, 4, next, DP_TAG(1, 5), NULL, &q[0]));
        TRY(L->isend(l, (char *)sbuf + 64, 4, next, DP_TAG(1, 5), NULL, &q[1]));
        TRY(L->irecv(l, rbuf, 4, prev, DP_TAG(1, 5), NULL, &q[2]));
        TRY(L->irecv(l, (char *)rbuf + 64, 4, prev, DP_TAG(1, 5), NULL, &q[3]));
        TRY(L->group_end(l));
        for (int i = 0; i < 4; i++) TRY(L->wait(l, q[i]));
        float a, b;
        TRY(G->copy(dev, &a, rbuf, 4, DP_COPY_DEVICE_TO_HOST, NULL));
        TRY(G->copy(dev, &b, (char *)rbuf + 64, 4, DP_COPY_DEVICE_TO_HOST, NULL));
        c->fifo_ok = a == 1.0f + prev && b == 2.0f + prev;

        /* channels are independent: the receiver takes channel 3 before channel 2, the sender
         * sends channel 2 first, each outside any group */
        dp_request *s2 = NULL, *s3 = NULL, *r2 = NULL, *r3 = NULL;
        TRY(L->isend(l, sbuf, 4, next, DP_TAG(2, 0), NULL, &s2));
        TRY(L->isend(l, (char *)sbuf + 64, 4, next, DP_TAG(3, 0), NULL, &s3));
        TRY(L->irecv(l, (char *)rbuf + 64, 4, prev, DP_TAG(3, 0), NULL, &r3));
        TRY(L->irecv(l, rbuf, 4, prev, DP_TAG(2, 0), NULL, &r2));
        TRY(L->wait(l, r3));
        TRY(L->wait(l, r2));
        TRY(L->wait(l, s2));
        TRY(L->wait(l, s3));
        TRY(G->copy(dev, &a, rbuf, 4, DP_COPY_DEVICE_TO_HOST, NULL));
        TRY(G->copy(dev, &b, (char *)rbuf + 64, 4, DP_COPY_DEVICE_TO_HOST, NULL));
        c->channels_ok = a == 1.0f + prev && b == 2.0f + prev;
    } else
        c->fifo_ok = c->channels_ok = 1;

    /* all_reduce: small integers, so every order of summation gives the same exact sum */
    for (size_t i = 0; i < N; i++) h[i] = (float)(c->rank + 1) * (float)(i % 7);
    TRY(G->copy(dev, sbuf, h, sizeof(float) * N, DP_COPY_HOST_TO_DEVICE, NULL));
    TRY(L->all_reduce(l, sbuf, rbuf, N, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(G->copy(dev, h2, rbuf, sizeof(float) * N, DP_COPY_DEVICE_TO_HOST, NULL));
    c->sum_ok = 1;
    for (size_t i = 0; i < N; i++)
        c->sum_ok &= h2[i] == (float)(c->size * (c->size + 1) / 2) * (float)(i % 7);
    TRY(L->all_reduce(l, sbuf, sbuf, N, DP_DTYPE_F32, DP_REDUCE_MAX, NULL)); /* in place */
    TRY(G->copy(dev, h2, sbuf, sizeof(float) * N, DP_COPY_DEVICE_TO_HOST, NULL));
    c->max_ok = 1;
    for (size_t i = 0; i < N; i++) c->max_ok &= h2[i] == (float)c->size * (float)(i % 7);

    /* all_to_all_v: rank r sends (p + 1) rows of 3 floats to peer p, valued 100 r + p */
    {
        size_t sc[MAX_RANKS], sd[MAX_RANKS], rc[MAX_RANKS], rd[MAX_RANKS], off = 0, roff = 0;
        for (int p = 0; p < c->size; p++) {
            sc[p] = (size_t)(p + 1) * 3, sd[p] = off, off += sc[p];
            rc[p] = (size_t)(c->rank + 1) * 3, rd[p] = roff, roff += rc[p];
        }
        for (int p = 0; p < c->size; p++)
            for (size_t i = 0; i < sc[p]; i++) h[sd[p] + i] = (float)(100 * c->rank + p);
        TRY(G->copy(dev, sbuf, h, sizeof(float) * off, DP_COPY_HOST_TO_DEVICE, NULL));
        TRY(G->memset(dev, rbuf, 0xff, bytes, NULL));
        TRY(L->all_to_all_v(l, sbuf, sc, sd, rbuf, rc, rd, sizeof(float), NULL));
        TRY(G->copy(dev, h2, rbuf, sizeof(float) * roff, DP_COPY_DEVICE_TO_HOST, NULL));
        c->a2a_ok = 1;
        for (int p = 0; p < c->size; p++)
            for (size_t i = 0; i < rc[p]; i++) c->a2a_ok &= h2[rd[p] + i] == (float)(100 * p + c->rank);
    }

    TRY(L->barrier(l));
    c->barrier_ok = 1;

    /* split into even and odd ranks, ordered by descending rank */
    TRY(L->split(l, c->rank % 2, -c->rank, &sub));
    {
        int sr = -1, ss = -1;
        TRY(L->info(sub, &sr, &ss));
        int want_size = (c->size + 1 - c->rank % 2) / 2;
        int higher = 0; /* members of my color with a larger rank come first */
        for (int q = c->rank + 2; q < c->size; q += 2) higher++;
        float one = 1.0f;
        TRY(G->copy(dev, sbuf, &one, 4, DP_COPY_HOST_TO_DEVICE, NULL));
        TRY(L->all_reduce(sub, sbuf, rbuf, 1, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
        float got;
        TRY(G->copy(dev, &got, rbuf, 4, DP_COPY_DEVICE_TO_HOST, NULL));
        c->split_ok = ss == want_size && sr == higher && got == (float)want_size;
    }

out:
    if (sub) L->close(sub);
    if (l) L->close(l);
    if (dev) {
        G->free(dev, sbuf), G->free(dev, rbuf), G->free(dev, rbuf2);
        G->close(dev);
    }
    free(h), free(h2);
    return NULL;
}

static void run_world(int size, int distinct_gpus, int timeout_case, rank_ctx *ctx)
{
    dp_link_world_config wc = {.world_size = size, .first_rank = 0, .local_ranks = size, .timeout_ms = 20000};
    dp_link_world *w = NULL;
    if (L->world_create(&wc, &w) != DP_OK) {
        printf("Bail out! world_create: %s\n", dp_last_error());
        exit(1);
    }
    pthread_t th[MAX_RANKS];
    for (int r = 0; r < size; r++) {
        memset(&ctx[r], 0, sizeof ctx[r]);
        ctx[r].w = w, ctx[r].rank = r, ctx[r].size = size, ctx[r].ordinal = distinct_gpus ? r : 0;
        ctx[r].timeout_case = timeout_case;
        pthread_create(&th[r], NULL, rank_main, &ctx[r]);
    }
    for (int r = 0; r < size; r++) pthread_join(th[r], NULL);
    L->world_destroy(w);
}

static void check_world(const char *kind, int size, rank_ctx *ctx)
{
    int ring = 1, fifo = 1, chan = 1, sum = 1, max = 1, a2a = 1, bar = 1, split = 1;
    for (int r = 0; r < size; r++) {
        if (ctx[r].fail[0]) tap_diag("%s rank %d: %s", kind, r, ctx[r].fail);
        ring &= ctx[r].ring_ok, fifo &= ctx[r].fifo_ok, chan &= ctx[r].channels_ok, sum &= ctx[r].sum_ok;
        max &= ctx[r].max_ok, a2a &= ctx[r].a2a_ok, bar &= ctx[r].barrier_ok, split &= ctx[r].split_ok;
    }
    tap_ok(ring, "%s, %d ranks: a grouped ring of sends and receives delivers every buffer", kind, size);
    tap_ok(fifo, "%s: two messages with one tag arrive in posting order", kind);
    tap_ok(chan, "%s: tag channels are independent of each other's order", kind);
    tap_ok(sum, "%s: all_reduce sum", kind);
    tap_ok(max, "%s: all_reduce max, in place", kind);
    tap_ok(a2a, "%s: all_to_all_v with uneven counts", kind);
    tap_ok(bar, "%s: barrier", kind);
    tap_ok(split, "%s: split by parity, ordered by key, and an all_reduce inside each half", kind);
}

static void check_timeout(const char *kind, rank_ctx *ctx)
{
    tap_ok(ctx[0].timeout_status == DP_ERR_TIMEOUT && strstr(ctx[0].message, "peer 1") &&
               strstr(ctx[0].message, "tag"),
           "%s: a receive whose send never comes times out naming the peer and tag (%s)", kind, ctx[0].message);
    tap_ok(ctx[1].timeout_status != DP_OK && ctx[1].message[0],
           "%s: the other rank's collective ends in an error too, not a hang (%s)", kind, ctx[1].message);
}

int main(void)
{
    const dp_driver *drv = cuda_test_load_driver();
    G = drv->device;
    L = drv->link;
    int count = 0;
    if (G->device_count(&count) != DP_OK || count < 1) tap_skip_all("no CUDA device");
    rank_ctx ctx[MAX_RANKS];

    run_world(4, 0, 0, ctx);
    check_world("copy link (4 ranks on GPU 0)", 4, ctx);
    run_world(1, 0, 0, ctx);
    check_world("copy link (1 rank)", 1, ctx);
    run_world(2, 0, 1, ctx);
    check_timeout("copy link", ctx);
    /* the link's deadline is 20 s: without the receiver waking the sender, its wait ends there */
    run_world(2, 0, 2, ctx);
    if (ctx[0].fail[0] || ctx[1].fail[0]) tap_diag("%s %s", ctx[0].fail, ctx[1].fail);
    tap_ok(ctx[0].late_ok && ctx[1].late_ok && ctx[0].late_wait_ms < 10000,
           "copy link: a send whose receive comes 300 ms late completes when it comes (waited %.0f ms), intact",
           ctx[0].late_wait_ms);

    /* NCCL on a one-rank world: communicator set-up, sends to itself, collectives and split,
     * where the machine has a single GPU */
    setenv("DUALPIPE_CUDA_LINK", "nccl", 1);
    run_world(1, 1, 0, ctx);
    check_world("NCCL (1 rank)", 1, ctx);
    unsetenv("DUALPIPE_CUDA_LINK");

    if (count >= 2) {
        int n = count < 4 ? count : 4;
        run_world(n, 1, 0, ctx);
        check_world("NCCL (one GPU per rank)", n, ctx);
        run_world(2, 1, 1, ctx);
        check_timeout("NCCL", ctx);
    } else
        tap_diag("one GPU only: the NCCL half of this test needs two (skipped)");
    return tap_done();
}
