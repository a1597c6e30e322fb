/* schedule_1f1b.c: 1F1B (PipeDream-Flush). Stage r of PP runs PP-1-r warm-up forwards,
 * then alternates one forward and one full backward, then drains the backwards: at most
 * PP-r micro-batches are alive on stage r. */
#include "engine/schedule.h"

static dp_status check_linear(const char *name, const dp_schedule_params *p)
{
    if (p->ranks < 1)
        return dp_fail(DP_ERR_INVALID, "%s needs at least 1 pipeline rank (--pp), got %d", name, p->ranks);
    if (p->chunks < 1)
        return dp_fail(DP_ERR_INVALID, "%s needs at least 1 micro-batch (--chunks), got %d", name, p->chunks);
    return DP_OK;
}

dp_status dp_schedule_1f1b_check(const dp_schedule_params *p) { return check_linear("1f1b", p); }
dp_status dp_schedule_gpipe_check(const dp_schedule_params *p) { return check_linear("gpipe", p); }
dp_status dp_schedule_zb1p_check(const dp_schedule_params *p) { return check_linear("zb1p", p); }

dp_status dp_schedule_1f1b_generate(const dp_schedule_params *p, dp_schedule **out)
{
    int pp = p->ranks, m = p->chunks;
    dp_schedule *s;
    DP_CHECK(dp_schedule_alloc("1f1b", pp, 1, 1, pp, m, &s));
    dp_status st = DP_OK;
    for (int r = 0; r < pp; r++) {
        dp_schedule_place(s, 0, r, r, 0);
        int warmup = pp - 1 - r < m ? pp - 1 - r : m;
        int f = 0, b = 0;
        while (st == DP_OK && f < warmup) st = dp_schedule_push(s, r, DP_ACT_F, 0, f++, 0);
        while (st == DP_OK && f < m) {
            st = dp_schedule_push(s, r, DP_ACT_F, 0, f++, 0);
            if (st == DP_OK) st = dp_schedule_push(s, r, DP_ACT_B, 0, b++, 0);
        }
        while (st == DP_OK && b < m) st = dp_schedule_push(s, r, DP_ACT_B, 0, b++, 0);
    }
    if (st != DP_OK) {
        dp_schedule_free(s);
        return st;
    }
    *out = s;
    return DP_OK;
}
