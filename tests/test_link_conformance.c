/* test_link_conformance.c: the link contract (engine/link.h), checked alike on every link this
 * build has: the cpu link always; the mpi link where the build has MPI (every rank a thread of
 * this one process, MPI started as a singleton); the cuda link's transports when a CUDA device is present
 * (copy between ranks on one GPU, NCCL across GPUs, both in one group when placement is mixed).
 * One thread per rank; buffers live on each rank's device and are moved through its table. A
 * world's bootstrap is the in-process one, or one the test gives: threads, or the TCP
 * rendezvous with the ranks split between two of its endpoints (two "processes" in this one). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "engine/bootstrap_tcp.h"
#include "engine/mpi_job.h"
#include "tests/mpi_skip.h"
#include "engine/driver.h"
#include "tests/tap.h"

#define MAX_RANKS 8
#define N 1027 /* floats per message: not a multiple of anything */

/* A link under test: a driver, a placement of ranks on its devices, and what it promises
 * beyond the contract. */
typedef struct {
    char name[96];
    const dp_driver *drv;
    int size;
    int ordinal[MAX_RANKS];
    int sums_in_rank_order; /* all_reduce adds members in group-rank order (not NCCL's ring) */
    int checks_sizes;       /* a receive of another size than the send is reported */
    const char *env_name, *env_value; /* set while the target runs */
    const char *log_expect[2];        /* every rank's transport log line has these */
    int own_bootstrap;                /* the world config names a bootstrap (as a launcher would) */
    int tcp_bootstrap;                /* that bootstrap is the TCP rendezvous, two endpoints */
} target;

static const target *T;

/* ----------------------------------------------------------------------------
 * the log: transport lines captured per rank */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[16384];

static void log_hook(void *user, dp_log_level level, const char *message)
{
    (void)user, (void)level;
    pthread_mutex_lock(&log_lock);
    size_t used = strlen(log_text);
    snprintf(log_text + used, sizeof log_text - used, "%s\n", message);
    pthread_mutex_unlock(&log_lock);
}

/* Whether rank r logged a line "<link> link: rank r ..." holding every expected word. */
static int logged(int r)
{
    char head[64];
    snprintf(head, sizeof head, "%s link: rank %d ", T->drv->link->name, r);
    for (const char *p = strstr(log_text, head); p; p = strstr(p + 1, head)) {
        const char *end = strchr(p, '\n');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line ? n : sizeof line - 1), p);
        int all = 1;
        for (int i = 0; i < 2; i++)
            if (T->log_expect[i] && !strstr(line, T->log_expect[i])) all = 0;
        if (all) return 1;
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * one rank */

typedef enum { RUN_SUITE, RUN_TIMEOUT, RUN_ABORT, RUN_SIZES, RUN_LATE } run_kind;

typedef struct {
    dp_link_world *w;
    run_kind kind;
    int rank, size;
    /* results, checked on the main thread (TAP output stays on one thread) */
    int ring, fifo, channels, sum_exact, max_exact, a2a, ia2a, barrier, split, split_none, contexts;
    float odd_sum[3]; /* all_reduce of values whose sum depends on the order */
    dp_status st, st2;
    double waited_ms;
    char msg[1024], fail[1024];
} rank_ctx;

static const dp_device_ops *G;
static const dp_link_ops *L;

#define TRY(call)                                                                \
    do {                                                                         \
        dp_status try_s_ = (call);                                               \
        if (try_s_ != DP_OK) {                                                   \
            snprintf(c->fail, sizeof c->fail, "%s: %s", #call, dp_last_error()); \
            goto out;                                                            \
        }                                                                        \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static float ring_value(int rank, size_t i) { return (float)(rank * 10000 + (int)(i % 1000)); }
static size_t a2a_rows(int from, int to) { return (size_t)((2 * to + from) % 3); } /* 0, 1 or 2 */

static dp_status put(dp_device *dev, void *dst, const void *src, size_t bytes)
{
    return G->copy(dev, dst, src, bytes, DP_COPY_HOST_TO_DEVICE, NULL);
}
static dp_status get(dp_device *dev, void *dst, const void *src, size_t bytes)
{
    return G->copy(dev, dst, src, bytes, DP_COPY_DEVICE_TO_HOST, NULL);
}

/* Point to point, collectives and split on a healthy world. */
static void suite(rank_ctx *c, dp_device *dev, dp_link *l, float *sbuf, float *rbuf, float *h)
{
    dp_link *sub = NULL, *none = NULL;
    int r = c->rank, n = c->size, next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t bytes = sizeof(float) * N;

    /* a ring posted as one group: receive from prev, send to next */
    for (size_t i = 0; i < N; i++) h[i] = ring_value(r, i);
    TRY(put(dev, sbuf, h, bytes));
    TRY(G->memset(dev, rbuf, 0xff, bytes, NULL));
    dp_request *rr, *rs;
    TRY(L->group_start(l));
    TRY(L->irecv(l, rbuf, bytes, prev, DP_TAG(0, 1), NULL, &rr));
    TRY(L->isend(l, sbuf, bytes, next, DP_TAG(0, 1), NULL, &rs));
    TRY(L->group_end(l));
    TRY(L->wait(l, rr));
    TRY(L->wait(l, rs));
    TRY(get(dev, h, rbuf, bytes));
    c->ring = 1;
    for (size_t i = 0; i < N; i++) c->ring &= h[i] == ring_value(prev, i);

    /* two messages with one tag match the receives in posting order, even when the second
     * receive is waited for first */
    float one = 1.0f + (float)r, two = 2.0f + (float)r, a = 0, b = 0;
    TRY(put(dev, sbuf, &one, 4));
    TRY(put(dev, sbuf + 16, &two, 4));
    dp_request *q[4];
    TRY(L->group_start(l));
    TRY(L->isend(l, sbuf, 4, next, DP_TAG(1, 5), NULL, &q[0]));
    TRY(L->isend(l, sbuf + 16, 4, next, DP_TAG(1, 5), NULL, &q[1]));
    TRY(L->irecv(l, rbuf, 4, prev, DP_TAG(1, 5), NULL, &q[2]));
    TRY(L->irecv(l, rbuf + 16, 4, prev, DP_TAG(1, 5), NULL, &q[3]));
    TRY(L->group_end(l));
    TRY(L->wait(l, q[3]));
    TRY(L->wait(l, q[2]));
    TRY(L->wait(l, q[0]));
    TRY(L->wait(l, q[1]));
    TRY(get(dev, &a, rbuf, 4));
    TRY(get(dev, &b, rbuf + 16, 4));
    c->fifo = a == 1.0f + (float)prev && b == 2.0f + (float)prev;

    /* channels are independent: sent 2 then 3, received 3 then 2, outside any group (a rank
     * alone sends to itself, which NCCL can only do inside a group) */
    dp_request *s2, *s3, *r2, *r3;
    if (n == 1) TRY(L->group_start(l));
    TRY(L->isend(l, sbuf, 4, next, DP_TAG(2, 0), NULL, &s2));
    TRY(L->isend(l, sbuf + 16, 4, next, DP_TAG(3, 0), NULL, &s3));
    TRY(L->irecv(l, rbuf + 16, 4, prev, DP_TAG(3, 0), NULL, &r3));
    TRY(L->irecv(l, rbuf, 4, prev, DP_TAG(2, 0), NULL, &r2));
    if (n == 1) TRY(L->group_end(l));
    TRY(L->wait(l, r3));
    TRY(L->wait(l, r2));
    TRY(L->wait(l, s2));
    TRY(L->wait(l, s3));
    TRY(get(dev, &a, rbuf, 4));
    TRY(get(dev, &b, rbuf + 16, 4));
    c->channels = a == 1.0f + (float)prev && b == 2.0f + (float)prev;

    /* all_reduce of values whose float sum depends on the order: the main thread checks that
     * every member has the same bits (and the rank-order sum where the link promises it) */
    float v[3] = {1e8f * (r % 2 ? -1.0f : 1.0f), 0.1f * (float)(r + 1), (float)r};
    TRY(put(dev, sbuf, v, sizeof v));
    TRY(L->all_reduce(l, sbuf, rbuf, 3, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(get(dev, c->odd_sum, rbuf, sizeof v));
    /* small integers: every order gives the exact sum */
    for (size_t i = 0; i < N; i++) h[i] = (float)(r + 1) * (float)(i % 7);
    TRY(put(dev, sbuf, h, bytes));
    TRY(L->all_reduce(l, sbuf, rbuf, N, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(get(dev, h, rbuf, bytes));
    c->sum_exact = 1;
    for (size_t i = 0; i < N; i++) c->sum_exact &= h[i] == (float)(n * (n + 1) / 2) * (float)(i % 7);
    for (size_t i = 0; i < N; i++) h[i] = (float)((r * 5 + (int)i) % (n + 3));
    TRY(put(dev, sbuf, h, bytes));
    TRY(L->all_reduce(l, sbuf, sbuf, N, DP_DTYPE_F32, DP_REDUCE_MAX, NULL)); /* in place */
    TRY(get(dev, h, sbuf, bytes));
    c->max_exact = 1;
    for (size_t i = 0; i < N; i++) {
        float m = 0;
        for (int p = 0; p < n; p++) m = (float)((p * 5 + (int)i) % (n + 3)) > m ? (float)((p * 5 + (int)i) % (n + 3)) : m;
        c->max_exact &= h[i] == m;
    }

    /* all_to_all_v, uneven: rank f sends a2a_rows(f, t) rows of 3 floats, valued 100 f + t,
     * to rank t (zero rows for some pairs) */
    size_t sc[MAX_RANKS], sd[MAX_RANKS], rc[MAX_RANKS], rd[MAX_RANKS], so = 0, ro = 0;
    for (int p = 0; p < n; p++) {
        sc[p] = 3 * a2a_rows(r, p), sd[p] = so, so += sc[p];
        rc[p] = 3 * a2a_rows(p, r), rd[p] = ro, ro += rc[p];
        for (size_t i = 0; i < sc[p]; i++) h[sd[p] + i] = (float)(100 * r + p);
    }
    TRY(put(dev, sbuf, h, sizeof(float) * (so ? so : 1)));
    TRY(G->memset(dev, rbuf, 0xff, bytes, NULL));
    TRY(L->all_to_all_v(l, sbuf, sc, sd, rbuf, rc, rd, sizeof(float), NULL));
    TRY(get(dev, h, rbuf, sizeof(float) * (ro ? ro : 1)));
    c->a2a = 1;
    for (int p = 0; p < n; p++)
        for (size_t i = 0; i < rc[p]; i++) c->a2a &= h[rd[p] + i] == (float)(100 * p + r);

    /* iall_to_all_v where the link has it: two exchanges in flight at once, a blocking one
     * between them, completed in the other order; rows valued 1000 x (exchange) + 100 f + t */
    c->ia2a = -1;
    if (DP_LINK_OPS_HAS(L, iall_to_all_v)) {
        size_t half = N / 2; /* the second exchange's rows start here in both buffers */
        for (int x = 0; x < 2; x++)
            for (int p = 0; p < n; p++)
                for (size_t i = 0; i < sc[p]; i++) h[x * half + sd[p] + i] = (float)(1000 * (x + 1) + 100 * r + p);
        TRY(put(dev, sbuf, h, bytes));
        TRY(G->memset(dev, rbuf, 0xff, bytes, NULL));
        dp_request *q[2] = {NULL, NULL};
        TRY(L->iall_to_all_v(l, sbuf, sc, sd, rbuf, rc, rd, sizeof(float), NULL, &q[0]));
        TRY(L->all_to_all_v(l, sbuf, sc, sd, rbuf + 2 * half / 3, rc, rd, sizeof(float), NULL));
        TRY(L->iall_to_all_v(l, sbuf + half, sc, sd, rbuf + half, rc, rd, sizeof(float), NULL, &q[1]));
        int done = 0;
        TRY(L->test(l, q[1], &done));
        TRY(L->wait(l, q[1]));
        TRY(L->wait(l, q[0]));
        TRY(get(dev, h, rbuf, bytes));
        c->ia2a = 1;
        for (int x = 0; x < 2; x++)
            for (int p = 0; p < n; p++)
                for (size_t i = 0; i < rc[p]; i++) c->ia2a &= h[x * half + rd[p] + i] == (float)(1000 * (x + 1) + 100 * p + r);
    }

    TRY(L->barrier(l));
    c->barrier = 1;

    /* split by parity, ordered by descending rank; an all_reduce inside each half */
    TRY(L->split(l, r % 2, -r, &sub));
    int sr = -1, sn = -1;
    if (!sub) {
        snprintf(c->fail, sizeof c->fail, "split gave no group to a rank with a color");
        goto out;
    }
    TRY(L->info(sub, &sr, &sn));
    int want_n = (n + 1 - r % 2) / 2, want_r = 0;
    for (int p = r + 2; p < n; p += 2) want_r++; /* members of my parity with a larger rank come first */
    float mine = (float)(r + 1), got = 0, want_sum = 0;
    for (int p = r % 2; p < n; p += 2) want_sum += (float)(p + 1);
    TRY(put(dev, sbuf, &mine, 4));
    TRY(L->all_reduce(sub, sbuf, rbuf, 1, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(get(dev, &got, rbuf, 4));
    c->split = sn == want_n && sr == want_r && got == want_sum;

    /* the same tag on the parent and on the child: the groups' messages never cross, even
     * when each side's receives are posted in the other order */
    int cnext = (sr + 1) % sn, cprev = (sr + sn - 1) % sn;
    float pv = 1000.0f + (float)r, cv = 2000.0f + (float)r, pgot = 0, cgot = 0;
    TRY(put(dev, sbuf, &pv, 4));
    TRY(put(dev, sbuf + 16, &cv, 4));
    dp_request *ps, *cs, *pr, *cr;
    TRY(L->group_start(l));
    TRY(L->group_start(sub));
    TRY(L->isend(l, sbuf, 4, next, DP_TAG(1, 9), NULL, &ps));
    TRY(L->isend(sub, sbuf + 16, 4, cnext, DP_TAG(1, 9), NULL, &cs));
    TRY(L->irecv(sub, rbuf + 16, 4, cprev, DP_TAG(1, 9), NULL, &cr));
    TRY(L->irecv(l, rbuf, 4, prev, DP_TAG(1, 9), NULL, &pr));
    TRY(L->group_end(sub));
    TRY(L->group_end(l));
    TRY(L->wait(sub, cr));
    TRY(L->wait(l, pr));
    TRY(L->wait(l, ps));
    TRY(L->wait(sub, cs));
    TRY(get(dev, &pgot, rbuf, 4));
    TRY(get(dev, &cgot, rbuf + 16, 4));
    /* the child's ranks run by descending parent rank: my child predecessor is the next
     * larger parent rank of my parity, wrapping to the smallest */
    int cprev_parent = r + 2 < n ? r + 2 : r % 2;
    c->contexts = pgot == 1000.0f + (float)prev && cgot == 2000.0f + (float)cprev_parent;

    /* a rank passing a negative color joins no group: the last rank stays out */
    TRY(L->split(l, r == n - 1 && n > 1 ? -1 : 0, r, &none));
    if (r == n - 1 && n > 1) c->split_none = none == NULL;
    else if (none) {
        int nr = -1, nn = -1;
        TRY(L->info(none, &nr, &nn));
        TRY(L->barrier(none));
        c->split_none = nr == r && nn == (n > 1 ? n - 1 : 1);
    }
out:
    if (none) L->close(none);
    if (sub) L->close(sub);
}

/* Failures, on a world of two or more ranks. */
static void failure(rank_ctx *c, dp_device *dev, dp_link *l, float *sbuf, float *rbuf)
{
    int r = c->rank;
    dp_request *q = NULL;
    if (c->kind == RUN_TIMEOUT) {
        /* rank 0 waits for a message rank 1 never sends; rank 1 waits in a barrier rank 0
         * never joins: both must end in an error, not a hang. Rank 1 waits longer, so that rank
         * 0's own timeout comes first rather than an abort from rank 1's racing it. */
        TRY(L->set_timeout(l, r == 0 ? 150 : 1000));
        if (r == 0) {
            TRY(L->irecv(l, rbuf, 16, 1, DP_TAG(3, 5), NULL, &q));
            c->st = L->wait(l, q);
        } else
            c->st = L->barrier(l);
        snprintf(c->msg, sizeof c->msg, "%s", dp_last_error());
    } else if (c->kind == RUN_ABORT) {
        /* rank 0 aborts; every other rank is waiting for it, far from its own deadline */
        TRY(L->set_timeout(l, 20000));
        TRY(L->barrier(l));
        if (r == 0) {
            struct timespec pause = {0, 50 * 1000 * 1000};
            nanosleep(&pause, NULL);
            TRY(L->abort(l, DP_ERR_DEVICE, "its device failed"));
            return;
        }
        double t0 = now_ms();
        c->st = L->irecv(l, rbuf, 16, 0, DP_TAG(0, 3), NULL, &q);
        if (c->st == DP_OK) c->st = L->wait(l, q);
        c->waited_ms = now_ms() - t0;
        snprintf(c->msg, sizeof c->msg, "%s", dp_last_error());
        q = NULL; /* and a later wait fails at once too */
        c->st2 = L->irecv(l, rbuf, 16, 0, DP_TAG(0, 4), NULL, &q);
        if (c->st2 == DP_OK) c->st2 = L->wait(l, q);
    } else if (c->kind == RUN_SIZES) {
        TRY(L->set_timeout(l, 5000));
        if (r == 0) {
            TRY(L->irecv(l, rbuf, 8, 1, DP_TAG(3, 5), NULL, &q));
            c->st = L->wait(l, q);
            snprintf(c->msg, sizeof c->msg, "%s", dp_last_error());
        } else if (r == 1) {
            TRY(L->isend(l, sbuf, 4, 0, DP_TAG(3, 5), NULL, &q));
            c->st = L->wait(l, q);
        }
    } else if (c->kind == RUN_LATE) {
        /* rank 1 posts its receive 300 ms after rank 0's send, under a 20 s deadline: the
         * send completes when the receive comes, intact */
        float v[16], w[16];
        for (int i = 0; i < 16; i++) v[i] = (float)(i + 1);
        if (r == 0) {
            TRY(put(dev, sbuf, v, sizeof v));
            double t0 = now_ms();
            TRY(L->isend(l, sbuf, sizeof v, 1, DP_TAG(0, 7), NULL, &q));
            c->st = L->wait(l, q);
            c->waited_ms = now_ms() - t0;
        } else if (r == 1) {
            struct timespec late = {0, 300 * 1000 * 1000};
            nanosleep(&late, NULL);
            TRY(L->irecv(l, rbuf, sizeof v, 0, DP_TAG(0, 7), NULL, &q));
            c->st = L->wait(l, q);
            TRY(get(dev, w, rbuf, sizeof w));
            if (c->st == DP_OK && memcmp(v, w, sizeof v) != 0) c->st = DP_ERR_INTERNAL;
        }
    }
out:
    return;
}

static void *rank_main(void *arg)
{
    rank_ctx *c = arg;
    dp_device *dev = NULL;
    dp_link *l = NULL;
    float *h = malloc(sizeof(float) * N);
    void *sbuf = NULL, *rbuf = NULL;
    dp_device_config dc = {.ordinal = T->ordinal[c->rank], .threads = 1, .rank = c->rank};
    TRY(G->open(&dc, &dev));
    TRY(L->open(c->w, c->rank, dev, &l));
    TRY(G->alloc(dev, sizeof(float) * N, &sbuf));
    TRY(G->alloc(dev, sizeof(float) * N, &rbuf));
    if (c->kind == RUN_SUITE) suite(c, dev, l, sbuf, rbuf, h);
    else failure(c, dev, l, sbuf, rbuf);
out:
    if (l) L->close(l);
    if (dev) {
        if (sbuf) G->free(dev, sbuf);
        if (rbuf) G->free(dev, rbuf);
        G->close(dev);
    }
    free(h);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * the TCP bootstrap as a launcher would give it, its ranks split between two endpoints as if
 * two processes hosted them (even ranks in one, odd in the other), so that what one rank tells
 * it crosses a socket to reach the other half */

typedef struct {
    void *end[2];
    dp_bootstrap_tcp_config cfg[2];
    int process_of[MAX_RANKS];
    dp_status st[2];
} tcp_pair;

typedef struct {
    tcp_pair *t;
    int i;
} tcp_pair_half;

static void *tcp_half_create(void *arg)
{
    tcp_pair_half *h = arg;
    h->t->st[h->i] = dp_bootstrap_tcp_create(&h->t->cfg[h->i], &h->t->end[h->i]);
    if (h->t->st[h->i] != DP_OK) tap_diag("tcp bootstrap, process %d: %s", h->i, dp_last_error());
    return NULL;
}

static dp_status pair_allgather(void *ctx, int rank, const void *mine, void *all, size_t bytes)
{
    tcp_pair *t = ctx;
    return dp_bootstrap_tcp.allgather(t->end[t->process_of[rank]], rank, mine, all, bytes);
}
static dp_status pair_broadcast(void *ctx, int rank, void *buf, size_t bytes, int root)
{
    tcp_pair *t = ctx;
    return dp_bootstrap_tcp.broadcast(t->end[t->process_of[rank]], rank, buf, bytes, root);
}
static dp_status pair_barrier(void *ctx, int rank)
{
    tcp_pair *t = ctx;
    return dp_bootstrap_tcp.barrier(t->end[t->process_of[rank]], rank);
}
static dp_status pair_abort(void *ctx, int rank, dp_status reason, const char *message)
{
    tcp_pair *t = ctx;
    return dp_bootstrap_tcp.abort(t->end[t->process_of[rank]], rank, reason, message);
}
static const dp_bootstrap_ops tcp_pair_ops = {.abi_version = DP_BOOTSTRAP_ABI_VERSION,
                                              .struct_size = sizeof(dp_bootstrap_ops), .name = "tcp (two endpoints)",
                                              .allgather = pair_allgather, .broadcast = pair_broadcast,
                                              .barrier = pair_barrier, .abort = pair_abort};

static tcp_pair *tcp_pair_open(int size)
{
    tcp_pair *t = calloc(1, sizeof *t);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        tap_diag("no free port");
        if (fd >= 0) close(fd);
        free(t);
        return NULL;
    }
    close(fd);
    static char port[16];
    snprintf(port, sizeof port, "%d", ntohs(a.sin_port));
    for (int r = 0; r < size; r++) t->process_of[r] = r % 2;
    pthread_t th[2];
    tcp_pair_half half[2];
    for (int i = 0; i < 2; i++) {
        t->cfg[i] = (dp_bootstrap_tcp_config){.addr = "127.0.0.1", .port = port, .world_size = size, .processes = 2,
                                              .process = i, .process_of = t->process_of, .timeout_ms = 20000};
        half[i] = (tcp_pair_half){t, i};
        pthread_create(&th[i], NULL, tcp_half_create, &half[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    if (t->st[0] != DP_OK || t->st[1] != DP_OK) {
        for (int i = 0; i < 2; i++) dp_bootstrap_tcp_destroy(t->end[i]);
        free(t);
        return NULL;
    }
    return t;
}

static void tcp_pair_close(tcp_pair *t)
{
    if (!t) return;
    for (int i = 0; i < 2; i++) dp_bootstrap_tcp_destroy(t->end[i]);
    free(t);
}

/* After a world whose rank 0 aborted: what the other endpoint's bootstrap says (it must have
 * heard the abort through its socket). */
static dp_status tcp_heard;
static char tcp_heard_msg[1024];

/* Runs `size` ranks of the target (its first ranks' placement) through `kind`. */
static int run_world(int size, run_kind kind, rank_ctx *ctx)
{
    dp_link_world_config wc = {.world_size = size, .first_rank = 0, .local_ranks = size, .timeout_ms = 20000};
    void *boot = NULL;
    tcp_pair *pair = NULL;
    if (T->tcp_bootstrap) {
        if (!(pair = tcp_pair_open(size))) return 0;
        wc.struct_size = sizeof wc, wc.bootstrap = &tcp_pair_ops, wc.bootstrap_ctx = pair;
    } else if (T->own_bootstrap) {
        if (dp_bootstrap_threads_create(size, 20000, &boot) != DP_OK) return 0;
        wc.struct_size = sizeof wc, wc.bootstrap = &dp_bootstrap_threads, wc.bootstrap_ctx = boot;
    }
    dp_link_world *w = NULL;
    if (L->world_create(&wc, &w) != DP_OK) {
        tap_diag("%s: world_create: %s", T->name, dp_last_error());
        dp_bootstrap_threads_destroy(boot);
        tcp_pair_close(pair);
        return 0;
    }
    pthread_t th[MAX_RANKS];
    for (int r = 0; r < size; r++) {
        memset(&ctx[r], 0, sizeof ctx[r]);
        ctx[r].w = w, ctx[r].kind = kind, ctx[r].rank = r, ctx[r].size = size;
        pthread_create(&th[r], NULL, rank_main, &ctx[r]);
    }
    for (int r = 0; r < size; r++) pthread_join(th[r], NULL);
    L->world_destroy(w);
    dp_bootstrap_threads_destroy(boot);
    if (pair && kind == RUN_ABORT) { /* rank 1 lives behind the other endpoint */
        tcp_heard = tcp_pair_ops.barrier(pair, 1);
        snprintf(tcp_heard_msg, sizeof tcp_heard_msg, "%s", dp_last_error());
    }
    tcp_pair_close(pair);
    for (int r = 0; r < size; r++)
        if (ctx[r].fail[0]) tap_diag("%s, rank %d: %s", T->name, r, ctx[r].fail);
    return 1;
}

/* ----------------------------------------------------------------------------
 * checks on the main thread */

static void check_target(const target *t)
{
    T = t;
    G = t->drv->device, L = t->drv->link;
    if (t->env_name) setenv(t->env_name, t->env_value, 1);
    rank_ctx ctx[MAX_RANKS];
    int n = t->size;

    log_text[0] = '\0';
    dp_log_set_hook(log_hook, NULL, DP_LOG_INFO);
    int made = run_world(n, RUN_SUITE, ctx);
    dp_log_set_hook(NULL, NULL, DP_LOG_ERROR);
    int ring = made, fifo = made, chan = made, same = made, exact = made, max = made, a2a = made, bar = made,
        split = made, none = made, contexts = made, logs = made;
    for (int r = 0; r < n; r++) {
        ring &= ctx[r].ring, fifo &= ctx[r].fifo, chan &= ctx[r].channels, exact &= ctx[r].sum_exact;
        max &= ctx[r].max_exact, a2a &= ctx[r].a2a, bar &= ctx[r].barrier, split &= ctx[r].split;
        none &= ctx[r].split_none, contexts &= ctx[r].contexts, logs &= logged(r);
        same &= memcmp(ctx[r].odd_sum, ctx[0].odd_sum, sizeof ctx[0].odd_sum) == 0;
    }
    tap_ok(ring, "%s: a ring of sends and receives posted as one group delivers every buffer", t->name);
    tap_ok(fifo, "%s: messages with one tag match receives in posting order", t->name);
    tap_ok(chan, "%s: tag channels do not wait for each other", t->name);
    tap_ok(exact, "%s: all_reduce sum (exact on small integers)", t->name);
    tap_ok(same, "%s: all_reduce gives every member the same bits", t->name);
    if (t->sums_in_rank_order) {
        float want[3];
        for (int i = 0; i < 3; i++) {
            float x[MAX_RANKS] = {0};
            for (int r = 0; r < n; r++)
                x[r] = i == 0 ? 1e8f * (r % 2 ? -1.0f : 1.0f) : i == 1 ? 0.1f * (float)(r + 1) : (float)r;
            want[i] = x[0];
            for (int r = 1; r < n; r++) want[i] += x[r];
        }
        tap_ok(made && memcmp(ctx[0].odd_sum, want, sizeof want) == 0, "%s: all_reduce adds the members in rank order",
               t->name);
    }
    tap_ok(max, "%s: all_reduce max, in place", t->name);
    tap_ok(a2a, "%s: all_to_all_v with uneven counts (some zero)", t->name);
    int ia2a = made, has_ia2a = 0;
    for (int r = 0; r < n; r++) ia2a &= ctx[r].ia2a != 0, has_ia2a |= ctx[r].ia2a > 0;
    if (made && !has_ia2a) tap_ok(1, "%s: iall_to_all_v # SKIP the link has only the blocking all_to_all_v", t->name);
    else tap_ok(ia2a, "%s: iall_to_all_v: two exchanges in flight at once, a blocking one between them", t->name);
    tap_ok(bar, "%s: barrier", t->name);
    tap_ok(split, "%s: split by color, ordered by key, and an all_reduce inside each group", t->name);
    tap_ok(contexts, "%s: one tag on a group and its child never crosses between them", t->name);
    tap_ok(none, "%s: split with a negative color joins no group; the others go on", t->name);
    tap_ok(logs, "%s: every rank logs its transports (%s%s%s)", t->name, t->log_expect[0] ? t->log_expect[0] : "",
           t->log_expect[1] ? ", " : "", t->log_expect[1] ? t->log_expect[1] : "");
    if (!logs) tap_diag("log:\n%s", log_text);

    if (n < 2) {
        tap_ok(1, "%s: failures # SKIP they need two ranks", t->name);
        if (t->env_name) unsetenv(t->env_name);
        return;
    }
    run_world(2, RUN_TIMEOUT, ctx);
    tap_ok(ctx[0].st == DP_ERR_TIMEOUT && strstr(ctx[0].msg, "rank 0") && strstr(ctx[0].msg, "rank 1") &&
               strstr(ctx[0].msg, "channel 3, sequence 5") && strstr(ctx[0].msg, "150 ms"),
           "%s: a receive whose send never comes times out naming the rank, the peer, the tag and the time",
           t->name);
    tap_diag("%s", ctx[0].msg);
    tap_ok(ctx[1].st != DP_OK && ctx[1].msg[0], "%s: the peer's collective ends in an error too, not a hang",
           t->name);

    int na = n < 3 ? n : 3;
    run_world(na, RUN_ABORT, ctx);
    int reached = 1, later = 1;
    double slowest = 0;
    for (int r = 1; r < na; r++) {
        reached &= ctx[r].st == DP_ERR_COMM && strstr(ctx[r].msg, "rank 0 ended the job: its device failed") != NULL;
        later &= ctx[r].st2 == DP_ERR_COMM;
        slowest = ctx[r].waited_ms > slowest ? ctx[r].waited_ms : slowest;
    }
    tap_ok(reached && slowest < 10000,
           "%s: an abort reaches every rank's wait, naming who and why (%d ranks, the slowest after %.0f ms)",
           t->name, na, slowest);
    tap_diag("%s", ctx[1].msg);
    tap_ok(later, "%s: and every later wait fails too", t->name);
    if (t->tcp_bootstrap) {
        tap_ok(tcp_heard == DP_ERR_COMM && strstr(tcp_heard_msg, "rank 0 ended the job: its device failed"),
               "%s: the link told the bootstrap, and its other endpoint heard it through the socket", t->name);
        tap_diag("%s", tcp_heard_msg);
    }

    run_world(2, RUN_LATE, ctx);
    tap_ok(ctx[0].st == DP_OK && ctx[1].st == DP_OK && ctx[0].waited_ms < 10000,
           "%s: a send whose receive comes 300 ms late completes when it comes, intact (waited %.0f ms)", t->name,
           ctx[0].waited_ms);

    if (t->checks_sizes) {
        run_world(2, RUN_SIZES, ctx);
        tap_ok(ctx[0].st == DP_ERR_COMM && strstr(ctx[0].msg, "has 4 bytes") && strstr(ctx[0].msg, "expects 8"),
               "%s: a message of another size than the receive is an error naming both", t->name);
        tap_diag("%s", ctx[0].msg);
    }
    if (t->env_name) unsetenv(t->env_name);
}

/* ----------------------------------------------------------------------------
 * the links of this build */

static const dp_driver *load_cuda(const char **why)
{
    if (access("/dev/nvidiactl", F_OK) != 0) {
        *why = "no CUDA device";
        return NULL;
    }
    if (!getenv("DUALPIPE_DRIVER_PATH")) {
        const char *top = getenv("top_builddir");
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/drivers/cuda/.libs", top ? top : ".");
        setenv("DUALPIPE_DRIVER_PATH", dir, 1);
    }
    const dp_driver *d = NULL;
    int count = 0;
    if (dp_driver_load("cuda", &d) != DP_OK) {
        tap_diag("the cuda driver did not load: %s", dp_last_error());
        *why = "no CUDA device (or no cuda driver in this build)";
        return NULL;
    }
    if ((d->available && d->available() != DP_OK) || d->device->device_count(&count) != DP_OK || count < 1) {
        *why = "no CUDA device";
        return NULL;
    }
    return d;
}

int main(void)
{
    const dp_driver *cpu;
    if (dp_driver_load("cpu", &cpu) != DP_OK) {
        printf("Bail out! the cpu driver: %s\n", dp_last_error());
        return 1;
    }
    target t = {.drv = cpu, .size = 4, .sums_in_rank_order = 1, .checks_sizes = 1, .log_expect = {"mailboxes"}};
    snprintf(t.name, sizeof t.name, "cpu (4 ranks)");
    check_target(&t);
    t.size = 3, t.own_bootstrap = 1;
    snprintf(t.name, sizeof t.name, "cpu (3 ranks, a bootstrap given)");
    check_target(&t);
    t.tcp_bootstrap = 1;
    snprintf(t.name, sizeof t.name, "cpu (3 ranks, the tcp bootstrap given)");
    check_target(&t);
    t.tcp_bootstrap = 0;

    /* the cpu link is in-process only */
    dp_link_world *w = NULL;
    dp_link_world_config other = {.world_size = 4, .first_rank = 2, .local_ranks = 2};
    tap_is_int(cpu->link->world_create(&other, &w), DP_ERR_UNSUPPORTED, "cpu: ranks in other processes are refused");
    tap_diag("%s", dp_last_error());

    /* the mpi link, its ranks threads of this process (tests/test_mpi_*.sh run it across processes) */
    int process, processes, local_rank;
    if (mpi_test_skip()) {
        tap_ok(1, "mpi link # SKIP %s", mpi_test_skip());
    } else if (dp_mpi_start(NULL, NULL, &process, &processes, &local_rank) != DP_OK) {
        tap_ok(1, "mpi link # SKIP MPI did not start: %s", dp_last_error());
    } else {
        dp_driver over_mpi = *cpu;
        over_mpi.link = &dp_mpi_link_ops;
        target m = {.drv = &over_mpi, .size = 4, .sums_in_rank_order = 1, .checks_sizes = 1, .log_expect = {"process 0 of 1"}};
        snprintf(m.name, sizeof m.name, "mpi (4 ranks in one process)");
        check_target(&m);
        m.size = 3, m.own_bootstrap = 1;
        snprintf(m.name, sizeof m.name, "mpi (3 ranks, a bootstrap given)");
        check_target(&m);
        dp_link_world_config uneven = {.world_size = 3, .first_rank = 0, .local_ranks = 2};
        tap_is_int(dp_mpi_link_ops.world_create(&uneven, &w), DP_ERR_INVALID,
                   "mpi: a world that the processes do not share evenly is refused");
        tap_diag("%s", dp_last_error());
        dp_mpi_finish(0);
    }

    const char *why = NULL;
    const dp_driver *cuda = load_cuda(&why);
    if (!cuda) {
        tap_ok(1, "cuda link # SKIP %s", why);
        return tap_done();
    }
    int gpus = 0;
    cuda->device->device_count(&gpus);
    target c = {.drv = cuda, .size = 4, .sums_in_rank_order = 1, .checks_sizes = 1, .log_expect = {"copy"}};
    snprintf(c.name, sizeof c.name, "cuda copy (4 ranks on GPU 0)");
    check_target(&c);
    c.size = 3, c.own_bootstrap = 1;
    snprintf(c.name, sizeof c.name, "cuda copy (3 ranks on GPU 0, a bootstrap given)");
    check_target(&c);
    c.tcp_bootstrap = 1; /* the world's allgather of where each rank runs crosses the socket */
    snprintf(c.name, sizeof c.name, "cuda copy (3 ranks on GPU 0, the tcp bootstrap given)");
    check_target(&c);
    c.tcp_bootstrap = 0;
    c.size = 1, c.own_bootstrap = 0;
    snprintf(c.name, sizeof c.name, "cuda copy (1 rank)");
    check_target(&c);
    /* NCCL on one rank, where a machine has one GPU: set-up, sends to itself, collectives, split */
    target one = {.drv = cuda, .size = 1, .sums_in_rank_order = 1, .env_name = "DUALPIPE_CUDA_LINK",
                  .env_value = "nccl", .log_expect = {"nccl"}};
    snprintf(one.name, sizeof one.name, "cuda NCCL (1 rank)");
    check_target(&one);
    one.env_name = "DUALPIPE_NCCL_SPLIT", one.env_value = "0";
    setenv("DUALPIPE_CUDA_LINK", "nccl", 1);
    snprintf(one.name, sizeof one.name, "cuda NCCL (1 rank, sub-groups without ncclCommSplit)");
    check_target(&one);
    unsetenv("DUALPIPE_CUDA_LINK");
    if (gpus < 2) {
        tap_ok(1, "cuda NCCL across GPUs and mixed placement # SKIP one GPU only");
        return tap_done();
    }
    target nccl = {.drv = cuda, .size = gpus < 4 ? gpus : 4, .log_expect = {"nccl"}};
    for (int r = 0; r < MAX_RANKS; r++) nccl.ordinal[r] = r;
    snprintf(nccl.name, sizeof nccl.name, "cuda NCCL (%d ranks, one GPU each)", nccl.size);
    check_target(&nccl);
    /* two ranks on each of two GPUs: the parity split then makes groups of one GPU each, and
     * the two-rank failure worlds cross GPUs */
    target mixed = {.drv = cuda, .size = 4, .sums_in_rank_order = 1, .log_expect = {"copy", "nccl"}};
    for (int r = 0; r < 4; r++) mixed.ordinal[r] = r % 2;
    snprintf(mixed.name, sizeof mixed.name, "cuda mixed (ranks 0, 2 on GPU 0 and 1, 3 on GPU 1)");
    check_target(&mixed);
    return tap_done();
}
