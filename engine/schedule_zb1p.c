/* schedule_zb1p.c: zero-bubble ZB-H1. 1F1B's activation memory (at most PP-r micro-batches
 * alive from F to I on stage r) with every backward split into I and a deferred W, the
 * W's filling the bubbles; at most 2PP-1-r micro-batches wait for their W on stage r.
 * The order is derived once by list scheduling with unit costs (F = I = W): a free stage
 * takes an I whose gradient has arrived, else an F whose input has arrived and that the
 * two limits allow, else the oldest pending W. With F=1, B=2, W=1 every rank idles
 * exactly (PP-1)(F+B-2W), the ZB1P bubble (tests/test_schedule_formulas.c). */
#include <stdlib.h>

#include "engine/schedule.h"

dp_status dp_schedule_zb1p_generate(const dp_schedule_params *p, dp_schedule **out)
{
    int pp = p->ranks, m = p->chunks;
    dp_schedule *s;
    DP_CHECK(dp_schedule_alloc("zb1p", pp, 1, 1, pp, m, &s));
    for (int r = 0; r < pp; r++) dp_schedule_place(s, 0, r, r, 0);

    /* f_done[r*m+k] / i_done[r*m+k]: time at which stage r finished F / I of micro-batch k */
    long *f_done = malloc(sizeof(long) * (size_t)pp * (size_t)m);
    long *i_done = malloc(sizeof(long) * (size_t)pp * (size_t)m);
    int *nf = calloc((size_t)pp, sizeof(int)), *ni = calloc((size_t)pp, sizeof(int)), *nw = calloc((size_t)pp, sizeof(int));
    dp_status st = DP_OK;
    if (!f_done || !i_done || !nf || !ni || !nw) st = dp_fail(DP_ERR_NOMEM, "out of memory generating zb1p");
    for (size_t i = 0; st == DP_OK && i < (size_t)pp * (size_t)m; i++) f_done[i] = i_done[i] = -1;

    int remaining = pp * m * 3;
    /* every action lasts one unit, so each stage is free again at every tick */
    long horizon = 3L * pp * m + 4L * pp + 8;
    for (long t = 0; st == DP_OK && remaining > 0; t++) {
        if (t > horizon) {
            st = dp_fail(DP_ERR_INTERNAL, "zb1p list scheduling made no progress (pp %d, chunks %d)", pp, m);
            break;
        }
        for (int r = 0; r < pp && st == DP_OK; r++) {
            int kind = -1, k = -1;
            int grad_ready = ni[r] < nf[r] &&
                             (r == pp - 1 ? f_done[r * m + ni[r]] >= 0 && f_done[r * m + ni[r]] <= t
                                          : i_done[(r + 1) * m + ni[r]] >= 0 && i_done[(r + 1) * m + ni[r]] <= t);
            int input_ready = nf[r] < m && nf[r] - ni[r] < pp - r && nf[r] - nw[r] < 2 * pp - 1 - r &&
                              (r == 0 || (f_done[(r - 1) * m + nf[r]] >= 0 && f_done[(r - 1) * m + nf[r]] <= t));
            int pending_w = ni[r] - nw[r];
            if (grad_ready) kind = DP_ACT_I, k = ni[r];
            else if (input_ready) kind = DP_ACT_F, k = nf[r];
            else if (pending_w > 0) kind = DP_ACT_W, k = nw[r];
            if (kind < 0) continue;
            st = dp_schedule_push(s, r, kind, 0, k, 0);
            remaining--;
            if (kind == DP_ACT_F) f_done[r * m + nf[r]++] = t + 1;
            else if (kind == DP_ACT_I) i_done[r * m + ni[r]++] = t + 1;
            else nw[r]++;
        }
    }
    free(f_done);
    free(i_done);
    free(nf);
    free(ni);
    free(nw);
    if (st != DP_OK) {
        dp_schedule_free(s);
        return st;
    }
    *out = s;
    return DP_OK;
}
