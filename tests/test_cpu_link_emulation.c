/* test_cpu_link_emulation.c: $DUALPIPE_CPU_LINK gives the cpu link a network's latency and
 * bandwidth. The delays are lower bounds that always hold (a message never arrives before its
 * latency plus its bytes over the bandwidth, a rank's sends leave one after another) when each
 * rank's time is counted from one instant before either rank starts (from its own start, a rank
 * the scheduler held back would find its peer's messages sent long before), so these checks
 * cannot be upset by a busy machine; the data arrive unchanged; bad values are refused. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/driver.h"
#include "tests/tap.h"

static const dp_link_ops *L;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

typedef struct {
    dp_link_world *w;
    int rank, kind; /* kind 0: ping-pong of 4 bytes, 1: two large sends from rank 0, 2: all_to_all_v */
    size_t bytes;
    int intact;
    double t0; /* before either rank starts, so before any message is posted */
    double ms; /* from t0 to this rank's end */
    dp_status st;
} ctx;

static void *rank_main(void *arg)
{
    ctx *c = arg;
    dp_link *l = NULL;
    c->intact = 1;
    c->st = L->open(c->w, c->rank, NULL, &l);
    if (c->st != DP_OK) return NULL;
    unsigned char *buf = malloc(c->bytes * 2 + 8);
    dp_request *q = NULL;
    if (c->kind == 0) {
        int32_t v = 7;
        for (int i = 0; i < 4 && c->st == DP_OK; i++) {
            if (c->rank == 0) {
                c->st = L->isend(l, &v, sizeof v, 1, i, NULL, &q);
                if (c->st == DP_OK) c->st = L->wait(l, q);
                if (c->st == DP_OK) c->st = L->irecv(l, &v, sizeof v, 1, i, NULL, &q);
                if (c->st == DP_OK) c->st = L->wait(l, q);
                v++;
            } else {
                c->st = L->irecv(l, &v, sizeof v, 0, i, NULL, &q);
                if (c->st == DP_OK) c->st = L->wait(l, q);
                v++;
                if (c->st == DP_OK) c->st = L->isend(l, &v, sizeof v, 0, i, NULL, &q);
                if (c->st == DP_OK) c->st = L->wait(l, q);
            }
        }
        c->intact = v == 7 + 8 || c->rank == 1;
    } else if (c->kind == 1) {
        for (size_t i = 0; i < 2 * c->bytes; i++) buf[i] = (unsigned char)(i * 31 + 5);
        if (c->rank == 0) {
            dp_request *a = NULL, *b = NULL;
            c->st = L->isend(l, buf, c->bytes, 1, 1, NULL, &a);
            if (c->st == DP_OK) c->st = L->isend(l, buf + c->bytes, c->bytes, 1, 2, NULL, &b);
            if (c->st == DP_OK) c->st = L->wait(l, a);
            if (c->st == DP_OK) c->st = L->wait(l, b);
        } else {
            memset(buf, 0, 2 * c->bytes);
            c->st = L->irecv(l, buf + c->bytes, c->bytes, 0, 2, NULL, &q);
            if (c->st == DP_OK) c->st = L->wait(l, q);
            if (c->st == DP_OK) c->st = L->irecv(l, buf, c->bytes, 0, 1, NULL, &q);
            if (c->st == DP_OK) c->st = L->wait(l, q);
            for (size_t i = 0; i < 2 * c->bytes; i++) c->intact &= buf[i] == (unsigned char)(i * 31 + 5);
        }
    } else {
        size_t counts[2] = {c->bytes, c->bytes}, displs[2] = {0, c->bytes};
        for (size_t i = 0; i < 2 * c->bytes; i++) buf[i] = (unsigned char)(c->rank * 100 + i);
        unsigned char *recv = malloc(2 * c->bytes);
        c->st = L->all_to_all_v(l, buf, counts, displs, recv, counts, displs, 1, NULL);
        for (size_t i = 0; c->st == DP_OK && i < 2 * c->bytes; i++)
            c->intact &= recv[i] == (unsigned char)((i / c->bytes) * 100 + c->rank * c->bytes + i % c->bytes);
        free(recv);
    }
    c->ms = now_ms() - c->t0;
    free(buf);
    L->close(l);
    return NULL;
}

static void run(int kind, size_t bytes, ctx out[2])
{
    dp_link_world_config wc = {.world_size = 2, .first_rank = 0, .local_ranks = 2, .timeout_ms = 20000};
    dp_link_world *w = NULL;
    out[0].st = out[1].st = L->world_create(&wc, &w);
    if (out[0].st != DP_OK) return;
    pthread_t th[2];
    double t0 = now_ms();
    for (int r = 0; r < 2; r++) {
        out[r] = (ctx){.w = w, .rank = r, .kind = kind, .bytes = bytes, .t0 = t0};
        pthread_create(&th[r], NULL, rank_main, &out[r]);
    }
    for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
    L->world_destroy(w);
}

int main(void)
{
    const dp_driver *cpu;
    if (dp_driver_load("cpu", &cpu) != DP_OK) {
        printf("Bail out! the cpu driver: %s\n", dp_last_error());
        return 1;
    }
    L = cpu->link;
    tap_plan(9);
    ctx c[2];

    /* latency: 8 one-way trips of 25 ms */
    setenv("DUALPIPE_CPU_LINK", "25000,100", 1);
    run(0, 4, c);
    tap_ok(c[0].st == DP_OK && c[1].st == DP_OK && c[0].intact, "ping-pong over an emulated 25 ms link: the values arrive");
    tap_ok(c[0].ms >= 8 * 25.0, "4 round trips take at least 8 x 25 ms (%.1f ms)", c[0].ms);

    /* bandwidth, and one NIC per rank: two 1 MB sends at 0.08 Gb/s leave one after the other,
     * 100 ms each, so the second (received first) arrives after 200 ms */
    setenv("DUALPIPE_CPU_LINK", "0,0.08", 1);
    run(1, 1000000, c);
    tap_ok(c[0].st == DP_OK && c[1].st == DP_OK && c[1].intact, "two 1 MB messages over 0.08 Gb/s arrive intact");
    tap_ok(c[1].ms >= 200.0, "and the second arrives after both have crossed the sender's NIC: >= 200 ms (%.1f ms)",
           c[1].ms);

    /* an all-to-all: each rank sends 500 kB to the other (its own share is not sent) */
    run(2, 500000, c);
    tap_ok(c[0].st == DP_OK && c[1].st == DP_OK && c[0].intact && c[1].intact, "all_to_all_v over the emulated link");
    tap_ok(c[0].ms >= 50.0 && c[1].ms >= 50.0, "takes at least 500 kB / 0.08 Gb/s = 50 ms (%.1f, %.1f ms)", c[0].ms,
           c[1].ms);

    /* bad values */
    const char *bad[] = {"5", "x,1", "-1,400", "5,0", "5,inf", "5,400,1"};
    int refused = 1;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("DUALPIPE_CPU_LINK", bad[i], 1);
        dp_link_world_config wc = {.world_size = 2, .first_rank = 0, .local_ranks = 2};
        dp_link_world *w = NULL;
        dp_status st = L->world_create(&wc, &w);
        if (st != DP_ERR_INVALID || !strstr(dp_last_error(), "LATENCY_US,GBITS")) {
            refused = 0;
            tap_diag("DUALPIPE_CPU_LINK=%s: status %d, %s", bad[i], (int)st, dp_last_error());
        }
        if (st == DP_OK) L->world_destroy(w);
    }
    tap_ok(refused, "bad values (no bandwidth, a letter, a negative latency, zero or infinite bandwidth, a third field) "
                    "are refused naming the form");
    setenv("DUALPIPE_CPU_LINK", "", 1);
    run(0, 4, c);
    tap_ok(c[0].st == DP_OK && c[0].intact, "empty: no emulation");
    unsetenv("DUALPIPE_CPU_LINK");
    run(1, 1000, c);
    tap_ok(c[1].st == DP_OK && c[1].intact, "unset: no emulation");
    return tap_done();
}
