/* schedule_gpipe.c: GPipe. Every stage runs all forwards, then all full backwards in
 * micro-batch order: simple, and every micro-batch is alive at once. */
#include "engine/schedule.h"

dp_status dp_schedule_gpipe_generate(const dp_schedule_params *p, dp_schedule **out)
{
    int pp = p->ranks, m = p->chunks;
    dp_schedule *s;
    DP_CHECK(dp_schedule_alloc("gpipe", pp, 1, 1, pp, m, &s));
    dp_status st = DP_OK;
    for (int r = 0; r < pp; r++) {
        dp_schedule_place(s, 0, r, r, 0);
        for (int k = 0; k < m && st == DP_OK; k++) st = dp_schedule_push(s, r, DP_ACT_F, 0, k, 0);
        for (int k = 0; k < m && st == DP_OK; k++) st = dp_schedule_push(s, r, DP_ACT_B, 0, k, 0);
    }
    if (st != DP_OK) {
        dp_schedule_free(s);
        return st;
    }
    *out = s;
    return DP_OK;
}
