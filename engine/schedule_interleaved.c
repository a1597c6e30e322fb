/* schedule_interleaved.c: interleaved 1F1B (Megatron-LM's virtual pipeline) with two model
 * chunks per rank: 2PP stages, stage s on rank s mod PP as its local stage s / PP.
 * Micro-batches go through in groups of PP; each rank warms up with 2(PP-1-r) + PP
 * forwards, then alternates one forward and one backward, then drains. The bubble shrinks
 * to (PP-1)(F+B) counted in the smaller stages' costs, for twice the p2p traffic. */
#include "engine/schedule.h"

enum { CHUNKS_PER_RANK = 2 };

dp_status dp_schedule_interleaved_check(const dp_schedule_params *p)
{
    if (p->ranks < 1)
        return dp_fail(DP_ERR_INVALID, "interleaved-1f1b needs at least 1 pipeline rank (--pp), got %d", p->ranks);
    if (p->chunks < p->ranks || p->chunks % p->ranks != 0)
        return dp_fail(DP_ERR_INVALID,
                       "interleaved-1f1b needs micro-batches in whole groups of PP = %d (--chunks a multiple of %d), got %d",
                       p->ranks, p->ranks, p->chunks);
    return DP_OK;
}

/* The k-th forward (or backward) of a rank: its model chunk and micro-batch. */
static void virtual_step(int k, int pp, int forward, int *local_stage, int *chunk)
{
    int group = k / (pp * CHUNKS_PER_RANK), in_group = k % (pp * CHUNKS_PER_RANK);
    int model_chunk = in_group / pp;
    *local_stage = forward ? model_chunk : CHUNKS_PER_RANK - 1 - model_chunk;
    *chunk = group * pp + in_group % pp;
}

dp_status dp_schedule_interleaved_generate(const dp_schedule_params *p, dp_schedule **out)
{
    int pp = p->ranks, m = p->chunks, v = CHUNKS_PER_RANK;
    dp_schedule *s;
    DP_CHECK(dp_schedule_alloc("interleaved-1f1b", pp, v, 1, v * pp, m, &s));
    for (int st = 0; st < v * pp; st++) dp_schedule_place(s, 0, st, st % pp, st / pp);
    int total = m * v;
    dp_status status = DP_OK;
    for (int r = 0; r < pp && status == DP_OK; r++) {
        int warmup = 2 * (pp - 1 - r) + (v - 1) * pp;
        if (warmup > total) warmup = total;
        int local_stage, chunk;
        for (int k = 0; k < warmup && status == DP_OK; k++) {
            virtual_step(k, pp, 1, &local_stage, &chunk);
            status = dp_schedule_push(s, r, DP_ACT_F, local_stage, chunk, 0);
        }
        for (int k = 0; k < total - warmup && status == DP_OK; k++) {
            virtual_step(k + warmup, pp, 1, &local_stage, &chunk);
            status = dp_schedule_push(s, r, DP_ACT_F, local_stage, chunk, 0);
            virtual_step(k, pp, 0, &local_stage, &chunk);
            if (status == DP_OK) status = dp_schedule_push(s, r, DP_ACT_B, local_stage, chunk, 0);
        }
        for (int k = total - warmup; k < total && status == DP_OK; k++) {
            virtual_step(k, pp, 0, &local_stage, &chunk);
            status = dp_schedule_push(s, r, DP_ACT_B, local_stage, chunk, 0);
        }
    }
    if (status != DP_OK) {
        dp_schedule_free(s);
        return status;
    }
    *out = s;
    return DP_OK;
}
