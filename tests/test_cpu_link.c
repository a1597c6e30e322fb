/* test_cpu_link.c: the CPU mailbox link between rank threads: grouped sends and receives,
 * FIFO order per tag, all_reduce (same bits everywhere), all_to_all_v, barrier, split into
 * sub-groups, and failures: a missing send times out naming rank, peer and tag; abort ends
 * every waiter; a size mismatch is an error. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "tests/tap.h"

#define RANKS 4

static const dp_link_ops *L;
static dp_link_world *world;

typedef struct {
    int rank;
    int ring_ok, fifo_ok, reduce_ok, a2a_ok, split_ok, barrier_ok;
    float reduced[3];
} ctx;

static void *rank_main(void *arg)
{
    ctx *c = arg;
    dp_link *l;
    if (L->open(world, c->rank, NULL, &l) != DP_OK) return NULL;
    int r, n;
    L->info(l, &r, &n);

    /* ring inside a group: receive from the left, send to the right */
    int out = 100 + r, in = -1;
    dp_request *rs, *rr;
    L->group_start(l);
    L->irecv(l, &in, sizeof in, (r + n - 1) % n, DP_TAG(1, 0), NULL, &rr);
    L->isend(l, &out, sizeof out, (r + 1) % n, DP_TAG(1, 0), NULL, &rs);
    L->group_end(l);
    c->ring_ok = L->wait(l, rr) == DP_OK && L->wait(l, rs) == DP_OK && in == 100 + (r + n - 1) % n;

    /* two messages on one tag arrive in order, even when the second receive is waited first */
    int a = 0, b = 0, x1 = 10 * r + 1, x2 = 10 * r + 2;
    dp_request *s1, *s2, *q1, *q2;
    int peer = r ^ 1;
    L->isend(l, &x1, sizeof x1, peer, DP_TAG(2, 7), NULL, &s1);
    L->isend(l, &x2, sizeof x2, peer, DP_TAG(2, 7), NULL, &s2);
    L->irecv(l, &a, sizeof a, peer, DP_TAG(2, 7), NULL, &q1);
    L->irecv(l, &b, sizeof b, peer, DP_TAG(2, 7), NULL, &q2);
    int ok = L->wait(l, q2) == DP_OK && L->wait(l, q1) == DP_OK;
    L->wait(l, s1), L->wait(l, s2);
    c->fifo_ok = ok && a == 10 * peer + 1 && b == 10 * peer + 2;

    /* all_reduce of values that are not exactly associative: every rank gets the same bits */
    float v[3] = {1e8f * (r % 2 ? -1 : 1), 0.1f * (r + 1), (float)r};
    c->reduce_ok = L->all_reduce(l, v, c->reduced, 3, DP_DTYPE_F32, DP_REDUCE_SUM, NULL) == DP_OK;
    float mx[1] = {(float)(r * 3 % 4)};
    c->reduce_ok &= L->all_reduce(l, mx, mx, 1, DP_DTYPE_F32, DP_REDUCE_MAX, NULL) == DP_OK && mx[0] == 3.0f;

    /* all_to_all_v: rank r sends j+1 copies of (100 r + j) to rank j */
    int sendbuf[64], recvbuf[64];
    size_t sc[RANKS], sd[RANKS], rc[RANKS], rd[RANKS], off = 0;
    for (int j = 0; j < n; j++) {
        sc[j] = (size_t)j + 1, sd[j] = off;
        for (int k = 0; k <= j; k++) sendbuf[off++] = 100 * r + j;
    }
    off = 0;
    for (int j = 0; j < n; j++) rc[j] = (size_t)r + 1, rd[j] = off, off += rc[j];
    ok = L->all_to_all_v(l, sendbuf, sc, sd, recvbuf, rc, rd, sizeof(int), NULL) == DP_OK;
    for (int j = 0; j < n && ok; j++)
        for (size_t k = 0; k < rc[j]; k++) ok &= recvbuf[rd[j] + k] == 100 * j + r;
    c->a2a_ok = ok;

    c->barrier_ok = L->barrier(l) == DP_OK;

    /* split: even and odd ranks, ordered by descending rank */
    dp_link *sub = NULL;
    ok = L->split(l, r % 2, -r, &sub) == DP_OK && sub;
    if (ok) {
        int sr, sn;
        L->info(sub, &sr, &sn);
        float s[1] = {(float)(r + 1)};
        ok = sn == 2 && sr == (r < 2 ? 1 : 0) && L->all_reduce(sub, s, s, 1, DP_DTYPE_F32, DP_REDUCE_SUM, NULL) == DP_OK &&
             s[0] == (r % 2 ? 2 + 4 : 1 + 3);
        L->close(sub);
    }
    c->split_ok = ok;
    L->barrier(l);
    L->close(l);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * failures, two ranks */

typedef struct {
    int rank;
    int mode; /* 0: rank 1 never sends; 1: rank 1 aborts; 2: sizes differ */
    dp_status st;
    char msg[1024];
} fail_ctx;

static void *fail_main(void *arg)
{
    fail_ctx *c = arg;
    dp_link *l;
    if (L->open(world, c->rank, NULL, &l) != DP_OK) return NULL;
    L->set_timeout(l, 150);
    c->st = DP_OK;
    if (c->rank == 0) {
        char buf[8];
        dp_request *r;
        L->irecv(l, buf, c->mode == 2 ? 8 : 4, 1, DP_TAG(3, 5), NULL, &r);
        c->st = L->wait(l, r);
        snprintf(c->msg, sizeof c->msg, "%s", dp_last_error());
    } else if (c->mode == 1) {
        L->abort(l, DP_ERR_DEVICE, "its device failed");
    } else if (c->mode == 2) {
        dp_request *r;
        int v = 1;
        L->isend(l, &v, sizeof v, 0, DP_TAG(3, 5), NULL, &r);
        L->wait(l, r);
    }
    L->close(l);
    return NULL;
}

static void run_failure(int mode, fail_ctx out[2])
{
    dp_link_world_config cfg = {.world_size = 2, .timeout_ms = 150};
    L->world_create(&cfg, &world);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].rank = i, out[i].mode = mode;
        pthread_create(&t[i], NULL, fail_main, &out[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    L->world_destroy(world);
}

int main(void)
{
    const dp_driver *d;
    if (dp_driver_load("cpu", &d) != DP_OK) return 1;
    L = d->link;
    dp_link_world_config cfg = {.world_size = RANKS, .timeout_ms = 20000};
    tap_is_int(L->world_create(&cfg, &world), DP_OK, "a world of %d ranks", RANKS);
    pthread_t t[RANKS];
    ctx c[RANKS];
    memset(c, 0, sizeof c);
    for (int i = 0; i < RANKS; i++) {
        c[i].rank = i;
        pthread_create(&t[i], NULL, rank_main, &c[i]);
    }
    for (int i = 0; i < RANKS; i++) pthread_join(t[i], NULL);
    L->world_destroy(world);
    int ring = 1, fifo = 1, red = 1, same = 1, a2a = 1, split = 1, bar = 1;
    for (int i = 0; i < RANKS; i++) {
        ring &= c[i].ring_ok, fifo &= c[i].fifo_ok, red &= c[i].reduce_ok, a2a &= c[i].a2a_ok;
        split &= c[i].split_ok, bar &= c[i].barrier_ok;
        same &= memcmp(c[i].reduced, c[0].reduced, sizeof c[0].reduced) == 0;
    }
    tap_ok(ring, "grouped ring of sends and receives");
    tap_ok(fifo, "messages with one tag match receives in posting order");
    tap_ok(red, "all_reduce sum and max");
    /* rank order: ((1e8 - 1e8) + 1e8) - 1e8 = 0 exactly; 0.1 + 0.2 + 0.3 + 0.4 in float; 0+1+2+3 */
    float s01 = 0.1f * 1 + 0.1f * 2;
    float s012 = s01 + 0.1f * 3;
    tap_ok(same && c[0].reduced[0] == 0.0f && c[0].reduced[1] == s012 + 0.1f * 4 && c[0].reduced[2] == 6.0f,
           "all_reduce sums in rank order: every rank has the same bits");
    tap_ok(a2a, "all_to_all_v with per-peer counts");
    tap_ok(bar, "barrier");
    tap_ok(split, "split into even and odd groups ordered by key, all_reduce within each");

    fail_ctx f[2];
    run_failure(0, f);
    tap_is_int(f[0].st, DP_ERR_TIMEOUT, "a receive with no matching send times out");
    tap_ok(strstr(f[0].msg, "rank 0") && strstr(f[0].msg, "rank 1") && strstr(f[0].msg, "channel 3, sequence 5") &&
               strstr(f[0].msg, "150 ms"),
           "the timeout names the rank, the peer, the tag and the time");
    tap_diag("%s", f[0].msg);
    run_failure(1, f);
    tap_is_int(f[0].st, DP_ERR_COMM, "abort by one rank ends the other's wait");
    tap_ok(strstr(f[0].msg, "rank 1 ended the job: its device failed") != NULL, "and says who and why");
    tap_diag("%s", f[0].msg);
    run_failure(2, f);
    tap_is_int(f[0].st, DP_ERR_COMM, "a message of another size is an error");
    tap_diag("%s", f[0].msg);

    dp_link_world_config bad = {.world_size = 4, .first_rank = 2, .local_ranks = 2};
    tap_is_int(L->world_create(&bad, &world), DP_ERR_UNSUPPORTED, "the cpu link refuses ranks in other processes");
    return tap_done();
}
