/* test_cuda_ipc.c: the CUDA link between processes on one GPU (its IPC transport). The test
 * forks into two processes before touching CUDA; each hosts some ranks of one job on GPU 0, and
 * they meet through a small bootstrap over socket pairs. Checked: a ring, matching order,
 * channels, messages chunked through the ring and spilled out of it, a size mismatch, the
 * collectives and split, with one and with two ranks per process (copy and IPC mixed); a
 * timeout and an abort that reach the other process; nothing left behind (device memory,
 * shared memory, descriptors) as worlds come and go. Process 0 prints the TAP. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/driver.h"
#include "tests/tap.h"

#define MAX_LOCAL 2
#define N 1027                                 /* floats per small message: not a multiple of anything */
#define BIG ((size_t)3 * 1024 * 1024 + 13)     /* bytes of a message chunked through the ring */
#define SMALL_SLOT "65536"                     /* the ring of most runs: 4 slots of 64 KiB */
#define RUNS 16                                /* worlds made in one test, each with its own sockets */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ----------------------------------------------------------------------------
 * a bootstrap between the two processes: the rank threads of a process meet, and the last to
 * arrive swaps the process's bytes with the other process over a stream socket; an abort note
 * travels on a datagram socket of its own */

typedef struct {
    int32_t rank, reason;
    char text[480];
} abort_note;

typedef struct {
    int process, local, fd, abort_fd, timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned long round;
    int arrived, leaving;
    size_t bytes, capacity;
    unsigned char *result; /* [2 x local x bytes], process 0's ranks first */
    dp_status status;
    int aborted;
    char message[600];
} sock_boot;

static sock_boot *boot_new(int process, int local, int fd, int abort_fd, int timeout_ms)
{
    sock_boot *b = calloc(1, sizeof *b);
    if (!b) abort();
    b->process = process, b->local = local, b->fd = fd, b->abort_fd = abort_fd, b->timeout_ms = timeout_ms;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    return b;
}

static void boot_free(sock_boot *b)
{
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->cond);
    free(b->result);
    free(b);
}

/* Lock held. */
static void take_note(sock_boot *b)
{
    abort_note n;
    if (recv(b->abort_fd, &n, sizeof n, MSG_DONTWAIT) > 0 && !b->aborted) {
        n.text[sizeof n.text - 1] = '\0';
        snprintf(b->message, sizeof b->message, "rank %d ended the job: %s", (int)n.rank, n.text);
        b->aborted = 1;
        pthread_cond_broadcast(&b->cond);
    }
}

/* Sends `out` and receives as many bytes into `in`, both at once (lock not held). */
static dp_status swap_bytes(sock_boot *b, const unsigned char *out, unsigned char *in, size_t n)
{
    size_t sent = 0, got = 0;
    double deadline = now_ms() + b->timeout_ms;
    while (sent < n || got < n) {
        struct pollfd p[2] = {{b->fd, (short)((got < n ? POLLIN : 0) | (sent < n ? POLLOUT : 0)), 0},
                              {b->abort_fd, POLLIN, 0}};
        double left = deadline - now_ms();
        if (left <= 0)
            return dp_fail(DP_ERR_TIMEOUT, "test bootstrap: process %d: the other process did not come within %d ms",
                           b->process, b->timeout_ms);
        if (poll(p, 2, left < 100 ? (int)left + 1 : 100) < 0 && errno != EINTR)
            return dp_fail(DP_ERR_COMM, "test bootstrap: poll: %s", strerror(errno));
        if (p[1].revents & POLLIN) {
            pthread_mutex_lock(&b->lock);
            take_note(b);
            pthread_mutex_unlock(&b->lock);
            return dp_fail(DP_ERR_COMM, "%s", b->message);
        }
        if (p[0].revents & POLLOUT) {
            ssize_t w = send(b->fd, out + sent, n - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN) return dp_fail(DP_ERR_COMM, "test bootstrap: send: %s", strerror(errno));
        }
        if (p[0].revents & (POLLIN | POLLHUP)) {
            ssize_t r = recv(b->fd, in + got, n - got, MSG_DONTWAIT);
            if (r > 0) got += (size_t)r;
            else if (r == 0) return dp_fail(DP_ERR_COMM, "test bootstrap: the other process went away");
            else if (errno != EAGAIN) return dp_fail(DP_ERR_COMM, "test bootstrap: recv: %s", strerror(errno));
        }
    }
    return DP_OK;
}

/* Every meeting is an allgather of `bytes` per rank (a broadcast reads the root's). */
static dp_status meet(sock_boot *b, int rank, const void *mine, void *all, size_t bytes, int root)
{
    int me = rank - b->process * b->local;
    if (me < 0 || me >= b->local) return dp_fail(DP_ERR_INVALID, "test bootstrap: rank %d is not here", rank);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += b->timeout_ms / 1000 + 2;
    pthread_mutex_lock(&b->lock);
    while (b->leaving > 0 && !b->aborted) pthread_cond_timedwait(&b->cond, &b->lock, &ts);
    take_note(b);
    if (b->aborted) goto failed;
    if (b->arrived == 0) {
        size_t need = 2 * (size_t)b->local * bytes + 1;
        if (need > b->capacity) {
            free(b->result);
            b->result = malloc(need);
            if (!b->result) abort();
            b->capacity = need;
        }
        b->bytes = bytes;
    }
    size_t block = (size_t)b->local * bytes;
    memcpy(b->result + (size_t)b->process * block + (size_t)me * bytes, mine, bytes);
    unsigned long round = b->round;
    if (++b->arrived == b->local) {
        pthread_mutex_unlock(&b->lock);
        dp_status st = swap_bytes(b, b->result + (size_t)b->process * block, b->result + (size_t)(1 - b->process) * block,
                                  block);
        pthread_mutex_lock(&b->lock);
        b->status = st;
        b->arrived = 0, b->leaving = b->local, b->round++;
        pthread_cond_broadcast(&b->cond);
    } else
        while (b->round == round && !b->aborted)
            if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT) break;
    if (b->round == round) goto failed;
    dp_status st = b->status;
    if (st == DP_OK && all) {
        if (root < 0) memcpy(all, b->result, 2 * block);
        else memcpy(all, b->result + (size_t)root * bytes, bytes);
    }
    if (--b->leaving == 0) pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return st == DP_OK ? DP_OK : dp_fail(st, "test bootstrap: the exchange failed");
failed:
    pthread_mutex_unlock(&b->lock);
    return dp_fail(DP_ERR_COMM, "%s", b->aborted ? b->message : "test bootstrap: a meeting did not end");
}

static dp_status boot_allgather(void *ctx, int rank, const void *mine, void *all, size_t bytes)
{
    return meet(ctx, rank, mine, all, bytes, -1);
}
static dp_status boot_broadcast(void *ctx, int rank, void *buf, size_t bytes, int root)
{
    return meet(ctx, rank, buf, buf, bytes, root);
}
static dp_status boot_barrier(void *ctx, int rank)
{
    char c = 0;
    return meet(ctx, rank, &c, NULL, 1, -1);
}
static dp_status boot_abort(void *ctx, int rank, dp_status reason, const char *message)
{
    sock_boot *b = ctx;
    pthread_mutex_lock(&b->lock);
    if (!b->aborted) {
        abort_note n = {.rank = rank, .reason = (int32_t)reason};
        snprintf(n.text, sizeof n.text, "%s", message ? message : "");
        snprintf(b->message, sizeof b->message, "rank %d ended the job: %s", rank, n.text);
        b->aborted = 1;
        if (send(b->abort_fd, &n, sizeof n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) { /* the other side is gone */
        }
        pthread_cond_broadcast(&b->cond);
    }
    pthread_mutex_unlock(&b->lock);
    return DP_OK;
}

static const dp_bootstrap_ops sock_boot_ops = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION,
    .struct_size = sizeof(dp_bootstrap_ops),
    .name = "test sockets",
    .allgather = boot_allgather,
    .broadcast = boot_broadcast,
    .barrier = boot_barrier,
    .abort = boot_abort,
};

/* ----------------------------------------------------------------------------
 * what each rank finds, sent from process 1 to process 0 */

typedef enum { RUN_SUITE, RUN_TIMEOUT, RUN_ABORT, RUN_LITE } run_kind;

typedef struct {
    int ran; /* reached the end of its part */
    int ring, fifo, channels, big, spill, sizes, after_sizes, zero, sum_exact, rank_order, max_exact, a2a, barrier,
        split, contexts, logged;
    dp_status st, st2;
    double waited_ms;
    char fail[400], msg[400];
} rank_result;

typedef struct {
    dp_link_world *w;
    run_kind kind;
    int rank, size;
    rank_result *res;
} rank_ctx;

static const dp_device_ops *G;
static const dp_link_ops *L;

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

/* Whether rank r logged its transports with one IPC peer or more. */
static int logged_ipc(int r)
{
    char head[64];
    snprintf(head, sizeof head, "cuda link: rank %d ", r);
    pthread_mutex_lock(&log_lock);
    int found = 0;
    for (const char *p = strstr(log_text, head); p && !found; p = strstr(p + 1, head)) {
        const char *end = strchr(p, '\n');
        const char *ipc = strstr(p, " ipc to ");
        found = ipc && (!end || ipc < end);
    }
    pthread_mutex_unlock(&log_lock);
    return found;
}

#define TRY(call)                                                                           \
    do {                                                                                    \
        dp_status try_s_ = (call);                                                          \
        if (try_s_ != DP_OK) {                                                              \
            snprintf(c->res->fail, sizeof c->res->fail, "%s: %s", #call, dp_last_error());  \
            goto out;                                                                       \
        }                                                                                   \
    } while (0)

static float ring_value(int rank, size_t i) { return (float)(rank * 10000 + (int)(i % 1000)); }
static size_t a2a_rows(int from, int to) { return (size_t)((2 * to + from) % 3); }

static void fill_bytes(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (unsigned char)(x >> 32);
    }
}

static dp_status put(dp_device *dev, void *dst, const void *src, size_t bytes)
{
    return G->copy(dev, dst, src, bytes, DP_COPY_HOST_TO_DEVICE, NULL);
}
static dp_status get(dp_device *dev, void *dst, const void *src, size_t bytes)
{
    return G->copy(dev, dst, src, bytes, DP_COPY_DEVICE_TO_HOST, NULL);
}

/* BIG random bytes from every rank to the next, at odd offsets on both sides (no group: the
 * send is posted first, so it fills the ring before the receive is there). */
static int big_ring(rank_ctx *c, dp_device *dev, dp_link *l, unsigned char *sbuf, unsigned char *rbuf,
                    unsigned char *h, unsigned char *want)
{
    int r = c->rank, n = c->size, next = (r + 1) % n, prev = (r + n - 1) % n;
    fill_bytes(h, BIG, (uint64_t)r + 100);
    fill_bytes(want, BIG, (uint64_t)prev + 100);
    if (put(dev, sbuf + 1, h, BIG) != DP_OK || G->memset(dev, rbuf, 0xa5, BIG + 8, NULL) != DP_OK) return 0;
    dp_request *s = NULL, *q = NULL;
    if (L->isend(l, sbuf + 1, BIG, next, DP_TAG(0, 2), NULL, &s) != DP_OK) return 0;
    dp_status st = L->irecv(l, rbuf + 3, BIG, prev, DP_TAG(0, 2), NULL, &q);
    if (st == DP_OK) st = L->wait(l, q);
    dp_status st2 = L->wait(l, s);
    if (st != DP_OK || st2 != DP_OK) {
        snprintf(c->res->fail, sizeof c->res->fail, "big ring: %s", dp_last_error());
        return 0;
    }
    memset(h, 0, BIG + 8);
    if (get(dev, h, rbuf, BIG + 8) != DP_OK) return 0;
    /* intact, and nothing written around it */
    return memcmp(h + 3, want, BIG) == 0 && h[0] == 0xa5 && h[1] == 0xa5 && h[2] == 0xa5 && h[BIG + 3] == 0xa5;
}

static void suite(rank_ctx *c, dp_device *dev, dp_link *l, unsigned char *sbuf_b, unsigned char *rbuf_b,
                  unsigned char *hb, unsigned char *want)
{
    rank_result *res = c->res;
    float *sbuf = (float *)sbuf_b, *rbuf = (float *)rbuf_b, *h = (float *)hb;
    dp_link *sub = NULL;
    int r = c->rank, n = c->size, next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t bytes = sizeof(float) * N;

    /* a ring posted as one group */
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
    res->ring = 1;
    for (size_t i = 0; i < N; i++) res->ring &= h[i] == ring_value(prev, i);

    /* one tag: receives match in posting order, the second waited for first */
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
    res->fifo = a == 1.0f + (float)prev && b == 2.0f + (float)prev;

    /* channels: sent 2 then 3, received 3 then 2 */
    dp_request *s2, *s3, *r2, *r3;
    TRY(L->isend(l, sbuf, 4, next, DP_TAG(2, 0), NULL, &s2));
    TRY(L->isend(l, sbuf + 16, 4, next, DP_TAG(3, 0), NULL, &s3));
    TRY(L->irecv(l, rbuf + 16, 4, prev, DP_TAG(3, 0), NULL, &r3));
    TRY(L->irecv(l, rbuf, 4, prev, DP_TAG(2, 0), NULL, &r2));
    TRY(L->wait(l, r3));
    TRY(L->wait(l, r2));
    TRY(L->wait(l, s2));
    TRY(L->wait(l, s3));
    TRY(get(dev, &a, rbuf, 4));
    TRY(get(dev, &b, rbuf + 16, 4));
    res->channels = a == 1.0f + (float)prev && b == 2.0f + (float)prev;

    /* a message larger than the ring, chunked through it */
    res->big = big_ring(c, dev, l, sbuf_b, rbuf_b, hb, want);
    if (!res->big) goto out;

    /* spill: a big message on channel 0 then a small one on channel 1; the receiver waits for
     * the small one first, so the big one must leave the ring before its receive comes */
    fill_bytes(hb, BIG, (uint64_t)r + 200);
    fill_bytes(want, BIG, (uint64_t)prev + 200);
    float small = 7.0f + (float)r, got_small = 0;
    TRY(put(dev, sbuf_b, hb, BIG));
    TRY(put(dev, sbuf_b + BIG + 8, &small, 4));
    dp_request *sa, *sb, *ra, *rb;
    TRY(L->isend(l, sbuf_b, BIG, next, DP_TAG(0, 3), NULL, &sa));
    TRY(L->isend(l, sbuf_b + BIG + 8, 4, next, DP_TAG(1, 3), NULL, &sb));
    TRY(L->irecv(l, rbuf_b + BIG + 8, 4, prev, DP_TAG(1, 3), NULL, &rb));
    TRY(L->wait(l, rb));
    TRY(L->irecv(l, rbuf_b, BIG, prev, DP_TAG(0, 3), NULL, &ra));
    TRY(L->wait(l, ra));
    TRY(L->wait(l, sa));
    TRY(L->wait(l, sb));
    TRY(get(dev, hb, rbuf_b, BIG));
    TRY(get(dev, &got_small, rbuf_b + BIG + 8, 4));
    res->spill = memcmp(hb, want, BIG) == 0 && got_small == 7.0f + (float)prev;

    /* a message of 4 bytes where the receive expects 8: an error naming both; the pair goes on */
    float later = 9.0f + (float)r;
    TRY(put(dev, sbuf + 32, &later, 4));
    dp_request *m1, *m2, *n1, *n2;
    TRY(L->isend(l, sbuf, 4, next, DP_TAG(3, 77), NULL, &m1));
    TRY(L->isend(l, sbuf + 32, 4, next, DP_TAG(3, 78), NULL, &m2));
    TRY(L->irecv(l, rbuf, 8, prev, DP_TAG(3, 77), NULL, &n1));
    dp_status bad = L->wait(l, n1);
    snprintf(res->msg, sizeof res->msg, "%s", dp_last_error());
    res->sizes = bad == DP_ERR_COMM && strstr(res->msg, "has 4 bytes") && strstr(res->msg, "expects 8");
    TRY(L->irecv(l, rbuf + 32, 4, prev, DP_TAG(3, 78), NULL, &n2));
    TRY(L->wait(l, n2));
    TRY(L->wait(l, m1));
    TRY(L->wait(l, m2));
    TRY(get(dev, &a, rbuf + 32, 4));
    res->after_sizes = a == 9.0f + (float)prev;

    /* an empty message */
    dp_request *z1, *z2;
    TRY(L->isend(l, sbuf, 0, next, DP_TAG(2, 9), NULL, &z1));
    TRY(L->irecv(l, rbuf, 0, prev, DP_TAG(2, 9), NULL, &z2));
    TRY(L->wait(l, z2));
    TRY(L->wait(l, z1));
    res->zero = 1;

    /* all_reduce: exact on small integers, every member the same bits in rank order */
    float v[3] = {1e8f * (r % 2 ? -1.0f : 1.0f), 0.1f * (float)(r + 1), (float)r}, odd[3], wantv[3];
    TRY(put(dev, sbuf, v, sizeof v));
    TRY(L->all_reduce(l, sbuf, rbuf, 3, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(get(dev, odd, rbuf, sizeof odd));
    for (int i = 0; i < 3; i++) {
        wantv[i] = i == 0 ? 1e8f : i == 1 ? 0.1f : 0.0f;
        for (int p = 1; p < n; p++)
            wantv[i] += i == 0 ? 1e8f * (p % 2 ? -1.0f : 1.0f) : i == 1 ? 0.1f * (float)(p + 1) : (float)p;
    }
    res->rank_order = memcmp(odd, wantv, sizeof odd) == 0;
    for (size_t i = 0; i < N; i++) h[i] = (float)(r + 1) * (float)(i % 7);
    TRY(put(dev, sbuf, h, bytes));
    TRY(L->all_reduce(l, sbuf, rbuf, N, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(get(dev, h, rbuf, bytes));
    res->sum_exact = 1;
    for (size_t i = 0; i < N; i++) res->sum_exact &= h[i] == (float)(n * (n + 1) / 2) * (float)(i % 7);
    for (size_t i = 0; i < N; i++) h[i] = (float)((r * 5 + (int)i) % (n + 3));
    TRY(put(dev, sbuf, h, bytes));
    TRY(L->all_reduce(l, sbuf, sbuf, N, DP_DTYPE_F32, DP_REDUCE_MAX, NULL));
    TRY(get(dev, h, sbuf, bytes));
    res->max_exact = 1;
    for (size_t i = 0; i < N; i++) {
        float m = 0;
        for (int p = 0; p < n; p++) m = (float)((p * 5 + (int)i) % (n + 3)) > m ? (float)((p * 5 + (int)i) % (n + 3)) : m;
        res->max_exact &= h[i] == m;
    }

    /* all_to_all_v, uneven (some counts zero) */
    size_t sc[2 * MAX_LOCAL], sd[2 * MAX_LOCAL], rc[2 * MAX_LOCAL], rd[2 * MAX_LOCAL], so = 0, ro = 0;
    for (int p = 0; p < n; p++) {
        sc[p] = 3 * a2a_rows(r, p), sd[p] = so, so += sc[p];
        rc[p] = 3 * a2a_rows(p, r), rd[p] = ro, ro += rc[p];
        for (size_t i = 0; i < sc[p]; i++) h[sd[p] + i] = (float)(100 * r + p);
    }
    TRY(put(dev, sbuf, h, sizeof(float) * (so ? so : 1)));
    TRY(G->memset(dev, rbuf, 0xff, bytes, NULL));
    TRY(L->all_to_all_v(l, sbuf, sc, sd, rbuf, rc, rd, sizeof(float), NULL));
    TRY(get(dev, h, rbuf, sizeof(float) * (ro ? ro : 1)));
    res->a2a = 1;
    for (int p = 0; p < n; p++)
        for (size_t i = 0; i < rc[p]; i++) res->a2a &= h[rd[p] + i] == (float)(100 * p + r);

    TRY(L->barrier(l));
    res->barrier = 1;

    /* split into one group ordered by descending rank; an all_reduce in it, and the same tag on
     * the parent and the child never crossing */
    TRY(L->split(l, 0, -r, &sub));
    int sr = -1, sn = -1;
    if (!sub) {
        snprintf(res->fail, sizeof res->fail, "split gave no group");
        goto out;
    }
    TRY(L->info(sub, &sr, &sn));
    float mine = (float)(r + 1), got = 0;
    TRY(put(dev, sbuf, &mine, 4));
    TRY(L->all_reduce(sub, sbuf, rbuf, 1, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    TRY(get(dev, &got, rbuf, 4));
    res->split = sn == n && sr == n - 1 - r && got == (float)(n * (n + 1) / 2);
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
    int cprev_world = n - 1 - cprev; /* the child runs by descending rank */
    res->contexts = pgot == 1000.0f + (float)prev && cgot == 2000.0f + (float)cprev_world;
    res->ran = 1;
out:
    if (sub) L->close(sub);
}

static void failure(rank_ctx *c, dp_link *l, void *rbuf)
{
    rank_result *res = c->res;
    int r = c->rank;
    dp_request *q = NULL;
    if (c->kind == RUN_TIMEOUT) {
        /* rank 0 waits for a message rank 1 never sends; rank 1 waits in a barrier */
        TRY(L->set_timeout(l, 300));
        double t0 = now_ms();
        if (r == 0) {
            TRY(L->irecv(l, rbuf, 16, 1, DP_TAG(3, 5), NULL, &q));
            res->st = L->wait(l, q);
        } else {
            TRY(L->set_timeout(l, 20000));
            res->st = L->barrier(l);
        }
        res->waited_ms = now_ms() - t0;
        snprintf(res->msg, sizeof res->msg, "%s", dp_last_error());
    } else {
        /* rank 0 aborts; rank 1 waits for it, far from its own deadline */
        TRY(L->set_timeout(l, 20000));
        TRY(L->barrier(l));
        if (r == 0) {
            struct timespec pause = {0, 50 * 1000 * 1000};
            nanosleep(&pause, NULL);
            TRY(L->abort(l, DP_ERR_DEVICE, "its device failed"));
            res->ran = 1;
            return;
        }
        double t0 = now_ms();
        res->st = L->irecv(l, rbuf, 16, 0, DP_TAG(0, 3), NULL, &q);
        if (res->st == DP_OK) res->st = L->wait(l, q);
        res->waited_ms = now_ms() - t0;
        snprintf(res->msg, sizeof res->msg, "%s", dp_last_error());
        q = NULL;
        res->st2 = L->irecv(l, rbuf, 16, 0, DP_TAG(0, 4), NULL, &q);
        if (res->st2 == DP_OK) res->st2 = L->wait(l, q);
    }
    res->ran = 1;
out:
    return;
}

static void *rank_main(void *arg)
{
    rank_ctx *c = arg;
    dp_device *dev = NULL;
    dp_link *l = NULL;
    unsigned char *h = malloc(BIG + 64), *want = malloc(BIG + 64);
    void *sbuf = NULL, *rbuf = NULL;
    dp_device_config dc = {.ordinal = 0, .threads = 1, .rank = c->rank};
    if (!h || !want) abort();
    TRY(G->open(&dc, &dev));
    TRY(L->open(c->w, c->rank, dev, &l));
    TRY(G->alloc(dev, 2 * BIG + 64, &sbuf));
    TRY(G->alloc(dev, 2 * BIG + 64, &rbuf));
    if (c->kind == RUN_SUITE) suite(c, dev, l, sbuf, rbuf, h, want);
    else if (c->kind == RUN_LITE) {
        c->res->big = big_ring(c, dev, l, sbuf, rbuf, h, want);
        c->res->ran = L->barrier(l) == DP_OK;
    } else failure(c, l, rbuf);
out:
    if (l) L->close(l);
    if (dev) {
        if (sbuf) G->free(dev, sbuf);
        if (rbuf) G->free(dev, rbuf);
        G->close(dev);
    }
    free(h), free(want);
    return NULL;
}

/* One world: this process's `local` ranks of 2 x local, on GPU 0. */
static void run_world(int process, int local, run_kind kind, const int *fds, rank_result *res)
{
    memset(res, 0, sizeof(rank_result) * MAX_LOCAL);
    sock_boot *b = boot_new(process, local, fds[0], fds[1], 20000);
    dp_link_world_config wc = {.world_size = 2 * local, .first_rank = process * local, .local_ranks = local,
                               .timeout_ms = 20000, .struct_size = sizeof wc, .bootstrap = &sock_boot_ops,
                               .bootstrap_ctx = b};
    dp_link_world *w = NULL;
    log_text[0] = '\0';
    dp_log_set_hook(log_hook, NULL, DP_LOG_INFO);
    if (L->world_create(&wc, &w) != DP_OK) {
        snprintf(res[0].fail, sizeof res[0].fail, "world_create: %s", dp_last_error());
        dp_log_set_hook(NULL, NULL, DP_LOG_ERROR);
        boot_free(b);
        return;
    }
    rank_ctx ctx[MAX_LOCAL];
    pthread_t th[MAX_LOCAL];
    for (int k = 0; k < local; k++) {
        ctx[k] = (rank_ctx){.w = w, .kind = kind, .rank = process * local + k, .size = 2 * local, .res = &res[k]};
        pthread_create(&th[k], NULL, rank_main, &ctx[k]);
    }
    for (int k = 0; k < local; k++) pthread_join(th[k], NULL);
    dp_log_set_hook(NULL, NULL, DP_LOG_ERROR);
    for (int k = 0; k < local; k++) res[k].logged = logged_ipc(process * local + k);
    L->world_destroy(w);
    boot_free(b);
}

/* ----------------------------------------------------------------------------
 * what is left behind: device memory free (through the CUDA runtime the module loaded, found
 * among this process's libraries), descriptors, shared-memory files */

typedef int (*mem_get_info_fn)(size_t *, size_t *);

static int find_cudart(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "libcudart")) {
        void *h = dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD);
        if (h) *(mem_get_info_fn *)data = (mem_get_info_fn)(uintptr_t)dlsym(h, "cudaMemGetInfo");
        return 1;
    }
    return 0;
}

static long long device_free_bytes(void)
{
    mem_get_info_fn f = NULL;
    dl_iterate_phdr(find_cudart, &f);
    size_t fr = 0, total = 0;
    if (!f || f(&fr, &total) != 0) return -1;
    return (long long)fr;
}

static int count_dir(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' && strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

/* ----------------------------------------------------------------------------
 * the two processes */

typedef struct {
    long long free0, free1;
    int fds0, fds1, shm1;
} leftovers;

/* The runs, alike in both processes; process 1 sends its results after each. */
static int run_all(int process, int (*fds)[2], int results_fd, rank_result (*all)[2 * MAX_LOCAL], leftovers *left)
{
    int k = 0;
    struct {
        run_kind kind;
        int local;
        const char *slot_bytes, *sync;
    } runs[] = {{RUN_SUITE, 1, SMALL_SLOT, NULL}, {RUN_SUITE, 1, NULL, NULL}, {RUN_SUITE, 2, SMALL_SLOT, NULL},
                {RUN_SUITE, 1, SMALL_SLOT, "events"}, {RUN_TIMEOUT, 1, NULL, NULL}, {RUN_ABORT, 1, NULL, NULL},
                {RUN_LITE, 1, NULL, NULL}, {RUN_LITE, 1, NULL, NULL}, {RUN_LITE, 1, NULL, NULL},
                {RUN_LITE, 1, NULL, NULL}, {RUN_LITE, 1, NULL, NULL}};
    int nruns = (int)(sizeof runs / sizeof runs[0]);
    for (k = 0; k < nruns; k++) {
        if (runs[k].slot_bytes) setenv("DUALPIPE_CUDA_IPC_SLOT_BYTES", runs[k].slot_bytes, 1), setenv("DUALPIPE_CUDA_IPC_SLOTS", "4", 1);
        else unsetenv("DUALPIPE_CUDA_IPC_SLOT_BYTES"), unsetenv("DUALPIPE_CUDA_IPC_SLOTS");
        if (runs[k].sync) setenv("DUALPIPE_CUDA_IPC_SYNC", runs[k].sync, 1);
        else unsetenv("DUALPIPE_CUDA_IPC_SYNC");
        if (k == 7) { /* after one light run: what is in use with no world */
            left->free0 = device_free_bytes();
            left->fds0 = count_dir("/proc/self/fd", "");
        }
        rank_result *mine = &all[k][process * runs[k].local];
        run_world(process, runs[k].local, runs[k].kind, fds[k], mine);
        if (process == 1 && write(results_fd, mine, sizeof(rank_result) * (size_t)runs[k].local) < 0) return k;
        if (process == 0) { /* the other half, or nothing within a minute */
            size_t want = sizeof(rank_result) * (size_t)runs[k].local, got = 0;
            unsigned char *p = (unsigned char *)&all[k][runs[k].local];
            while (got < want) {
                struct pollfd pf = {results_fd, POLLIN, 0};
                if (poll(&pf, 1, 60000) <= 0) return k;
                ssize_t n = read(results_fd, p + got, want - got);
                if (n <= 0) return k;
                got += (size_t)n;
            }
        }
    }
    /* the free memory is the whole GPU's: other tests running beside this one (make -j check)
     * may hold some for a while, so a shortfall is measured again for up to 10 s before it counts */
    left->free1 = device_free_bytes();
    for (int i = 0; i < 50 && left->free0 >= 0 && left->free1 >= 0 && left->free1 < left->free0 - (8ll << 20); i++) {
        struct timespec pause = {0, 200 * 1000 * 1000};
        nanosleep(&pause, NULL);
        left->free1 = device_free_bytes();
    }
    left->fds1 = count_dir("/proc/self/fd", "");
    left->shm1 = count_dir("/dev/shm", "dualpipe-ipc-");
    return k;
}

static void report_suite(const char *name, rank_result *res, int n)
{
    int ring = 1, fifo = 1, chan = 1, big = 1, spill = 1, sizes = 1, after = 1, zero = 1, exact = 1, order = 1, max = 1,
        a2a = 1, bar = 1, split = 1, ctx = 1, logs = 1;
    for (int r = 0; r < n; r++) {
        rank_result *x = &res[r];
        if (x->fail[0]) tap_diag("%s, rank %d: %s", name, r, x->fail);
        ring &= x->ring, fifo &= x->fifo, chan &= x->channels, big &= x->big, spill &= x->spill;
        sizes &= x->sizes, after &= x->after_sizes, zero &= x->zero, exact &= x->sum_exact;
        order &= x->rank_order, max &= x->max_exact, a2a &= x->a2a, bar &= x->barrier, split &= x->split;
        ctx &= x->contexts, logs &= x->logged;
    }
    tap_ok(ring, "%s: a ring of sends and receives posted as one group", name);
    tap_ok(fifo, "%s: messages with one tag match receives in posting order", name);
    tap_ok(chan, "%s: tag channels do not wait for each other", name);
    tap_ok(big, "%s: %zu bytes at odd offsets arrive intact, nothing written around them", name, BIG);
    tap_ok(spill, "%s: a large message nobody receives yet leaves the ring for a later one, intact", name);
    tap_ok(sizes, "%s: a message of another size than the receive is an error naming both", name);
    if (res[0].msg[0]) tap_diag("%s", res[0].msg);
    tap_ok(after, "%s: and the next message on the pair arrives", name);
    tap_ok(zero, "%s: an empty message", name);
    tap_ok(exact, "%s: all_reduce sum (exact on small integers)", name);
    tap_ok(order, "%s: all_reduce adds the members in rank order, the same bits everywhere", name);
    tap_ok(max, "%s: all_reduce max, in place", name);
    tap_ok(a2a, "%s: all_to_all_v with uneven counts (some zero)", name);
    tap_ok(bar, "%s: barrier", name);
    tap_ok(split, "%s: split ordered by key, and an all_reduce in the child", name);
    tap_ok(ctx, "%s: one tag on a group and its child never crosses between them", name);
    tap_ok(logs, "%s: every rank logs an ipc transport", name);
}

static const dp_driver *load_driver(void)
{
    const dp_driver *d = NULL;
    int count = 0;
    if (dp_driver_load("cuda", &d) != DP_OK) return NULL;
    if ((d->available && d->available() != DP_OK) || d->device->device_count(&count) != DP_OK || count < 1) return NULL;
    return d;
}

int main(void)
{
    if (access("/dev/nvidiactl", F_OK) != 0) tap_skip_all("no CUDA device");
    if (!getenv("DUALPIPE_DRIVER_PATH")) {
        const char *top = getenv("top_builddir");
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/drivers/cuda/.libs", top ? top : ".");
        setenv("DUALPIPE_DRIVER_PATH", dir, 1);
    }
    int fds[2][RUNS][2], hello[2], results[2];
    for (int k = 0; k < RUNS; k++)
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds[0][k]) != 0 || socketpair(AF_UNIX, SOCK_DGRAM, 0, fds[1][k]) != 0) {
            printf("Bail out! socketpair: %s\n", strerror(errno));
            return 1;
        }
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, hello) != 0 || pipe(results) != 0) {
        printf("Bail out! socketpair: %s\n", strerror(errno));
        return 1;
    }
    fflush(stdout);
    pid_t child = fork(); /* before anything touches CUDA */
    if (child < 0) {
        printf("Bail out! fork: %s\n", strerror(errno));
        return 1;
    }
    int process = child == 0 ? 1 : 0;
    int my_fds[RUNS][2];
    for (int k = 0; k < RUNS; k++) {
        my_fds[k][0] = fds[0][k][process], my_fds[k][1] = fds[1][k][process];
        close(fds[0][k][1 - process]), close(fds[1][k][1 - process]);
    }
    int hello_fd = hello[process];
    close(hello[1 - process]);
    int results_fd = process ? results[1] : results[0];
    close(process ? results[0] : results[1]);

    /* both processes must see the GPU, or both skip */
    const dp_driver *drv = load_driver();
    char mine = drv ? 1 : 0, theirs = 0;
    if (write(hello_fd, &mine, 1) != 1 || read(hello_fd, &theirs, 1) != 1) theirs = 0;
    if (!mine || !theirs) {
        if (process == 1) _exit(0);
        waitpid(child, NULL, 0);
        tap_skip_all("no CUDA device");
    }
    G = drv->device, L = drv->link;

    static rank_result all[RUNS][2 * MAX_LOCAL];
    leftovers left = {0};
    int ran = run_all(process, my_fds, results_fd, all, &left);
    if (process == 1) {
        fflush(stdout);
        _exit(0);
    }

    /* process 0: the report */
    if (ran < 11) tap_diag("the runs stopped at %d of 11 (the other process did not report)", ran);
    report_suite("ipc (2 processes of 1 rank, 4 slots of 64 KiB)", all[0], 2);
    report_suite("ipc (2 processes of 1 rank, the default ring)", all[1], 2);
    report_suite("ipc and copy (2 processes of 2 ranks)", all[2], 4);
    report_suite("ipc ordered by interprocess events (DUALPIPE_CUDA_IPC_SYNC=events)", all[3], 2);

    rank_result *t = all[4];
    tap_ok(t[0].st == DP_ERR_TIMEOUT && strstr(t[0].msg, "rank 0") && strstr(t[0].msg, "rank 1") &&
               strstr(t[0].msg, "channel 3, sequence 5") && strstr(t[0].msg, "300 ms"),
           "a receive whose send never comes times out naming the rank, the peer, the tag and the time");
    tap_diag("%s", t[0].msg);
    tap_ok(t[1].st != DP_OK && t[1].msg[0] && t[1].waited_ms < 10000,
           "the other process's barrier ends in an error too, soon (after %.0f ms)", t[1].waited_ms);
    tap_diag("%s", t[1].msg);

    rank_result *a = all[5];
    tap_ok(a[1].st == DP_ERR_COMM && strstr(a[1].msg, "rank 0 ended the job: its device failed") &&
               a[1].waited_ms < 10000,
           "an abort in one process reaches the other's wait, naming who and why (after %.0f ms)", a[1].waited_ms);
    tap_diag("%s", a[1].msg);
    tap_ok(a[1].st2 == DP_ERR_COMM, "and every later wait fails too");

    int lite = 1;
    for (int k = 6; k < 11; k++)
        for (int r = 0; r < 2; r++) {
            lite &= all[k][r].big && all[k][r].ran;
            if (all[k][r].fail[0]) tap_diag("light run %d, rank %d: %s", k - 6, r, all[k][r].fail);
        }
    tap_ok(lite, "five worlds made and ended one after the other each carry %zu bytes around", BIG);
    if (left.free0 < 0 || left.free1 < 0) tap_ok(1, "device memory # SKIP the CUDA runtime's cudaMemGetInfo was not found");
    else
        tap_ok(left.free1 >= left.free0 - (8ll << 20), "no device memory left behind by four worlds (%lld MiB less free)",
               (left.free0 - left.free1) >> 20);
    tap_ok(left.fds1 == left.fds0, "no descriptor left open (%d before, %d after)", left.fds0, left.fds1);
    tap_ok(left.shm1 == 0, "no shared memory left in /dev/shm (%d)", left.shm1);

    /* the other process ends too, within a bound */
    int status = 0, ended = 0;
    for (int i = 0; i < 300 && !ended; i++) {
        if (waitpid(child, &status, WNOHANG) == child) ended = 1;
        else {
            struct timespec pause = {0, 100 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
    if (!ended) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
    }
    tap_ok(ended && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the other process ended cleanly");
    return tap_done();
}
