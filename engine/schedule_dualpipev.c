/* schedule_dualpipev.c: DualPipeV, DualPipe "cut in half". R ranks hold 2R stages folded
 * in a V (rank r holds stage r, its first local stage, and stage 2R-1-r, its second);
 * every micro-batch enters and leaves at rank 0. The order of compute is that of the
 * reference DualPipeV.step(), the same eight steps as DualPipe's with the rank index in
 * place of the half-rank and the last rank running its first main-step pair apart. */
#include "engine/schedule_internal.h"

dp_status dp_schedule_dualpipev_check(const dp_schedule_params *p)
{
    if (p->ranks < 1)
        return dp_fail(DP_ERR_INVALID, "dualpipev needs at least 1 pipeline rank (--pp), got %d", p->ranks);
    if (p->chunks < 2 * p->ranks)
        return dp_fail(DP_ERR_INVALID, "dualpipev needs micro-batches >= 2 x ranks = %d (--chunks), got %d",
                       2 * p->ranks, p->chunks);
    return DP_OK;
}

dp_status dp_schedule_dualpipev_generate(const dp_schedule_params *p, dp_schedule **out)
{
    int R = p->ranks;
    dp_schedule *s;
    DP_CHECK(dp_schedule_alloc("dualpipev", R, 2, 1, 2 * R, p->chunks, &s));
    for (int r = 0; r < R; r++) {
        dp_schedule_place(s, 0, r, r, 0);
        dp_schedule_place(s, 0, 2 * R - 1 - r, r, 1);
    }
    for (int r = 0; r < R; r++) {
        dp_status st = dp_schedule_emit_dualpipe_rank(s, r, R, r, p->chunks, 0, r == R - 1);
        if (st != DP_OK) {
            dp_schedule_free(s);
            return st;
        }
    }
    *out = s;
    return DP_OK;
}
