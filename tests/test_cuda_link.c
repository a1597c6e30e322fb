/* test_cuda_link.c: what only the CUDA link has (the contract itself is checked by
 * test_link_conformance): DUALPIPE_NCCL_CHANNELS and its limits, an int32 all_reduce refused
 * alike by every rank without NCCL collectives, and worlds of several "processes" (link worlds
 * sharing one bootstrap): ranks of two of them on one GPU go through the IPC transport (here
 * with the worlds' own pointers; test_cuda_ipc runs it between real processes), and on two
 * GPUs they work across NCCL. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "tests/cuda_test_util.h"
#include "tests/tap.h"

static const dp_device_ops *G;
static const dp_link_ops *L;

typedef enum { CASE_CHANNEL, CASE_INT32, CASE_WORLDS } case_kind;

typedef struct {
    dp_link_world *w;
    case_kind kind;
    int rank, size, ordinal;
    dp_status st;
    int ok;
    char msg[1024];
} rank_ctx;

static void *rank_main(void *arg)
{
    rank_ctx *c = arg;
    dp_device *dev = NULL;
    dp_link *l = NULL, *sub = NULL;
    void *buf = NULL;
    dp_device_config dc = {.ordinal = c->ordinal, .rank = c->rank};
    c->st = G->open(&dc, &dev);
    if (c->st == DP_OK) c->st = L->open(c->w, c->rank, dev, &l);
    if (c->st == DP_OK) c->st = G->alloc(dev, 4096, &buf);
    if (c->st != DP_OK) goto out;
    if (c->kind == CASE_CHANNEL) { /* NCCL with 2 channels: channel 3 has no communicator */
        dp_request *r = NULL;
        c->st = L->isend(l, buf, 16, 0, DP_TAG(3, 0), NULL, &r);
        if (r) L->wait(l, r);
    } else if (c->kind == CASE_INT32) {
        c->st = L->all_reduce(l, buf, buf, 4, DP_DTYPE_I32, DP_REDUCE_SUM, NULL);
    } else { /* a ring across the worlds, an all_reduce and a split by world */
        float v = (float)(c->rank + 1), got = 0;
        int next = (c->rank + 1) % c->size, prev = (c->rank + c->size - 1) % c->size;
        dp_request *rs = NULL, *rr = NULL;
        c->st = G->copy(dev, buf, &v, 4, DP_COPY_HOST_TO_DEVICE, NULL);
        if (c->st == DP_OK) c->st = L->group_start(l);
        if (c->st == DP_OK) c->st = L->irecv(l, (char *)buf + 64, 4, prev, DP_TAG(0, 1), NULL, &rr);
        if (c->st == DP_OK) c->st = L->isend(l, buf, 4, next, DP_TAG(0, 1), NULL, &rs);
        if (c->st == DP_OK) c->st = L->group_end(l);
        if (c->st == DP_OK) c->st = L->wait(l, rr);
        if (c->st == DP_OK) c->st = L->wait(l, rs);
        if (c->st == DP_OK) c->st = G->copy(dev, &got, (char *)buf + 64, 4, DP_COPY_DEVICE_TO_HOST, NULL);
        int ring = c->st == DP_OK && got == (float)(prev + 1);
        if (c->st == DP_OK) c->st = L->all_reduce(l, buf, (char *)buf + 128, 1, DP_DTYPE_F32, DP_REDUCE_SUM, NULL);
        if (c->st == DP_OK) c->st = G->copy(dev, &got, (char *)buf + 128, 4, DP_COPY_DEVICE_TO_HOST, NULL);
        int sum = c->st == DP_OK && got == (float)(c->size * (c->size + 1) / 2);
        if (c->st == DP_OK) c->st = L->split(l, c->rank / 2, c->rank, &sub);
        if (c->st == DP_OK) c->st = L->barrier(sub);
        c->ok = ring && sum && c->st == DP_OK;
    }
out:
    snprintf(c->msg, sizeof c->msg, "%s", c->st == DP_OK ? "" : dp_last_error());
    if (sub) L->close(sub);
    if (l) L->close(l);
    if (dev) {
        if (buf) G->free(dev, buf);
        G->close(dev);
    }
    return NULL;
}

/* `size` ranks in `worlds` link worlds (as many processes) of equal share, sharing one
 * bootstrap; rank r runs on GPU ordinal[r]. */
static void run(case_kind kind, int size, int worlds, const int *ordinal, rank_ctx *ctx)
{
    void *boot = NULL;
    dp_link_world *w[4] = {NULL};
    if (dp_bootstrap_threads_create(size, 20000, &boot) != DP_OK) {
        printf("Bail out! bootstrap: %s\n", dp_last_error());
        exit(1);
    }
    int share = size / worlds;
    for (int k = 0; k < worlds; k++) {
        dp_link_world_config wc = {.world_size = size, .first_rank = k * share, .local_ranks = share,
                                   .timeout_ms = 20000, .struct_size = sizeof wc, .bootstrap = &dp_bootstrap_threads,
                                   .bootstrap_ctx = boot};
        if (L->world_create(&wc, &w[k]) != DP_OK) {
            printf("Bail out! world_create: %s\n", dp_last_error());
            exit(1);
        }
    }
    pthread_t th[8];
    for (int r = 0; r < size; r++) {
        memset(&ctx[r], 0, sizeof ctx[r]);
        ctx[r].w = w[r / share], ctx[r].kind = kind, ctx[r].rank = r, ctx[r].size = size, ctx[r].ordinal = ordinal[r];
        pthread_create(&th[r], NULL, rank_main, &ctx[r]);
    }
    for (int r = 0; r < size; r++) pthread_join(th[r], NULL);
    for (int k = 0; k < worlds; k++) L->world_destroy(w[k]);
    dp_bootstrap_threads_destroy(boot);
}

int main(void)
{
    const dp_driver *drv = cuda_test_load_driver();
    G = drv->device;
    L = drv->link;
    int count = 0;
    if (G->device_count(&count) != DP_OK || count < 1) tap_skip_all("no CUDA device");
    rank_ctx ctx[8];
    const int gpu0[8] = {0}, halves[4] = {0, 0, 1, 1};

    setenv("DUALPIPE_NCCL_CHANNELS", "17", 1);
    dp_link_world_config wc = {.world_size = 1};
    dp_link_world *w = NULL;
    tap_is_int(L->world_create(&wc, &w), DP_ERR_INVALID, "DUALPIPE_NCCL_CHANNELS above 16 is refused");
    tap_ok(strstr(dp_last_error(), "DUALPIPE_NCCL_CHANNELS=17") != NULL, "naming the variable and its value");
    setenv("DUALPIPE_NCCL_CHANNELS", "2", 1);
    setenv("DUALPIPE_CUDA_LINK", "nccl", 1);
    run(CASE_CHANNEL, 1, 1, gpu0, ctx);
    tap_ok(ctx[0].st == DP_ERR_UNSUPPORTED && strstr(ctx[0].msg, "DUALPIPE_NCCL_CHANNELS"),
           "a tag channel without a communicator says which variable to raise (%s)", ctx[0].msg);
    unsetenv("DUALPIPE_CUDA_LINK");
    unsetenv("DUALPIPE_NCCL_CHANNELS");

    run(CASE_INT32, 2, 1, gpu0, ctx);
    tap_ok(ctx[0].st == DP_ERR_UNSUPPORTED && ctx[1].st == DP_ERR_UNSUPPORTED,
           "an int32 all_reduce on one GPU is refused by every rank, none left waiting (%s)", ctx[0].msg);

    run(CASE_WORLDS, 4, 2, gpu0, ctx);
    int shared = 1;
    for (int r = 0; r < 4; r++) {
        if (!ctx[r].ok) tap_diag("rank %d: %s", r, ctx[r].msg);
        shared &= ctx[r].ok;
    }
    tap_ok(shared, "two worlds of two ranks on one GPU: a ring, an all_reduce and a split, over the ipc transport");

    if (count < 2) {
        tap_ok(1, "two processes on two GPUs # SKIP one GPU only");
        return tap_done();
    }
    run(CASE_WORLDS, 4, 2, halves, ctx);
    int ok = 1;
    for (int r = 0; r < 4; r++) {
        if (!ctx[r].ok) tap_diag("rank %d: %s", r, ctx[r].msg);
        ok &= ctx[r].ok;
    }
    tap_ok(ok, "two processes of two ranks, one GPU each: a ring, an all_reduce and a split, over NCCL");
    return tap_done();
}
