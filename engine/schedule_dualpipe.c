/* schedule_dualpipe.c: DeepSeek's DualPipe. PP ranks (even); half of the micro-batches
 * enter at rank 0 (direction 0), half at rank PP-1 (direction 1); rank r holds stage r of
 * direction 0 and stage PP-1-r of direction 1. The order of compute is that of the
 * reference DualPipe.step(): its eight steps, which backwards are split into I + a
 * deferred W (taken in FIFO order), which F/B pairs overlap, and the middle ranks' first
 * main-step pair run apart. */
#include "engine/schedule_internal.h"

/* ----------------------------------------------------------------------------
 * one rank's emitter, mirroring the reference's per-direction chunk counters and its
 * FIFO of deferred weight gradients */

typedef struct {
    dp_schedule *s;
    int rank;
    int flip;
    int f_next[2], b_next[2];
    int wq_local[1024], wq_chunk[1024]; /* FIFO of deferred W; never holds more than a rank's in-flight I's */
    int wq_head, wq_tail;
    dp_status err;
} emitter;

static void emit(emitter *e, int kind, int local_stage, int chunk, int overlap)
{
    if (e->err == DP_OK) e->err = dp_schedule_push(e->s, e->rank, kind, local_stage, chunk, overlap);
}

static void forward(emitter *e, int phase, int overlap)
{
    int local_stage = phase ^ e->flip;
    emit(e, DP_ACT_F, local_stage, e->f_next[local_stage]++, overlap);
}

static void backward(emitter *e, int phase, int zero_bubble)
{
    int local_stage = phase ^ e->flip;
    int chunk = e->b_next[local_stage]++;
    emit(e, zero_bubble ? DP_ACT_I : DP_ACT_B, local_stage, chunk, 0);
    if (zero_bubble) {
        if (e->wq_tail - e->wq_head >= 1024) {
            if (e->err == DP_OK) e->err = dp_fail(DP_ERR_INTERNAL, "too many deferred weight gradients");
            return;
        }
        e->wq_local[e->wq_tail % 1024] = local_stage;
        e->wq_chunk[e->wq_tail % 1024] = chunk;
        e->wq_tail++;
    }
}

/* An overlapped pair: forward of phase0 with the (full) backward of phase1. */
static void forward_backward(emitter *e, int phase0, int phase1)
{
    forward(e, phase0, 1);
    backward(e, phase1, 0);
}

static void weight(emitter *e)
{
    if (e->wq_head == e->wq_tail) {
        if (e->err == DP_OK) e->err = dp_fail(DP_ERR_INTERNAL, "W with no deferred weight gradient on rank %d", e->rank);
        return;
    }
    int i = e->wq_head++ % 1024;
    emit(e, DP_ACT_W, e->wq_local[i], e->wq_chunk[i], 0);
}

dp_status dp_schedule_emit_dualpipe_rank(dp_schedule *s, int rank, int n, int h, int c, int flip,
                                         int unpaired_first)
{
    emitter e = {.s = s, .rank = rank, .flip = flip, .err = DP_OK};

    /* step 1: nF0 */
    for (int i = 0; i < (n - h - 1) * 2; i++) forward(&e, 0, 0);
    /* step 2: nF0F1 */
    for (int i = 0; i < h + 1; i++) {
        forward(&e, 0, 0);
        forward(&e, 1, 0);
    }
    /* step 3: nB1W1F1, zero bubble */
    for (int i = 0; i < n - h - 1; i++) {
        backward(&e, 1, 1);
        weight(&e);
        forward(&e, 1, 0);
    }
    /* step 4, the main step: nF0B1F1B0 */
    int step4 = c - 2 * n + h + 1;
    for (int i = 0; i < step4; i++) {
        if (i == 0 && unpaired_first) {
            /* not overlapped, to shrink the bubble of the ranks at the fold */
            forward(&e, 0, 0);
            backward(&e, 1, 0);
        } else {
            forward_backward(&e, 0, 1);
        }
        forward_backward(&e, 1, 0);
    }
    /* step 5: nB1F1B0 */
    for (int i = 0; i < n - h - 1; i++) {
        backward(&e, 1, 0);
        forward_backward(&e, 1, 0);
    }
    /* step 6: nB1B0, the second half of the chunks use zero bubble */
    int step6 = h + 1, zb = 0;
    for (int i = 0; i < step6; i++) {
        if (i == step6 / 2 && h % 2 == 1) zb = 1;
        backward(&e, 1, zb);
        if (i == step6 / 2 && h % 2 == 0) zb = 1;
        backward(&e, 0, zb);
    }
    /* step 7: nWB0, zero bubble */
    for (int i = 0; i < n - h - 1; i++) {
        weight(&e);
        backward(&e, 0, 1);
    }
    /* step 8: nW */
    for (int i = 0; i < h + 1; i++) weight(&e);

    if (e.err == DP_OK && e.wq_head != e.wq_tail)
        e.err = dp_fail(DP_ERR_INTERNAL, "rank %d ends with deferred weight gradients", rank);
    return e.err;
}

/* ----------------------------------------------------------------------------
 * generator */

dp_status dp_schedule_dualpipe_check(const dp_schedule_params *p)
{
    if (p->ranks < 2 || p->ranks % 2 != 0)
        return dp_fail(DP_ERR_INVALID, "dualpipe needs an even number of pipeline ranks >= 2 (--pp), got %d",
                       p->ranks);
    if (p->chunks < 2 * p->ranks || p->chunks % 2 != 0)
        return dp_fail(DP_ERR_INVALID,
                       "dualpipe needs an even number of micro-batches >= 2 x PP = %d (--chunks), got %d",
                       2 * p->ranks, p->chunks);
    return DP_OK;
}

dp_status dp_schedule_dualpipe_generate(const dp_schedule_params *p, dp_schedule **out)
{
    int pp = p->ranks;
    dp_schedule *s;
    DP_CHECK(dp_schedule_alloc("dualpipe", pp, 2, 2, pp, p->chunks, &s));
    for (int st = 0; st < pp; st++) {
        dp_schedule_place(s, 0, st, st, 0);
        dp_schedule_place(s, 1, st, pp - 1 - st, 1);
    }
    int half = pp / 2;
    for (int r = 0; r < pp; r++) {
        int h = r < pp - 1 - r ? r : pp - 1 - r;
        int middle = r == half - 1 || r == half;
        dp_status st = dp_schedule_emit_dualpipe_rank(s, r, half, h, p->chunks / 2, r >= half, middle);
        if (st != DP_OK) {
            dp_schedule_free(s);
            return st;
        }
    }
    *out = s;
    return DP_OK;
}
