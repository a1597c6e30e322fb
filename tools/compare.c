/* compare.c: element-by-element comparison of float tensors (see compare.h), and the walk over a
 * pipelined run's parameters against the single-rank reference that `train --verify` and the
 * pipeline test both make. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools/compare.h"

void compare_element(compare_stats *s, size_t i, double got, double want, double tol)
{
    double a = got, b = want, d = fabs(a - b);
    int nan = !isfinite(a) || !isfinite(b); /* NaN and infinities never pass */
    if (nan) d = INFINITY;
    if (nan || d > tol) {
        if (!s->outside) s->first_outside = i, s->first_got = got, s->first_want = want;
        s->outside++;
    }
    uint64_t gb, wb; /* bits, so that -0 and 0 differ (floats widen to doubles exactly) */
    memcpy(&gb, &got, sizeof gb), memcpy(&wb, &want, sizeof wb);
    if (gb != wb) s->unequal++;
    if (d > s->max_abs) s->max_abs = d;
    double rel = d > 0 ? (b != 0 ? d / fabs(b) : INFINITY) : 0;
    if (rel > s->max_rel) s->max_rel = rel;
    double use = d > 0 ? (tol > 0 ? d / tol : INFINITY) : 0;
    if (use > s->max_use) s->max_use = use;
    s->n++;
}

void compare_floats(compare_stats *s, const float *got, const float *want, size_t n, double atol, double rtol)
{
    for (size_t i = 0; i < n; i++) compare_element(s, i, got[i], want[i], atol + rtol * fabs((double)want[i]));
}

void compare_merge(compare_stats *a, const compare_stats *b)
{
    if (b->outside && !a->outside)
        a->first_outside = b->first_outside, a->first_got = b->first_got, a->first_want = b->first_want;
    a->n += b->n, a->unequal += b->unequal, a->outside += b->outside;
    a->max_abs = b->max_abs > a->max_abs ? b->max_abs : a->max_abs;
    a->max_rel = b->max_rel > a->max_rel ? b->max_rel : a->max_rel;
    a->max_use = b->max_use > a->max_use ? b->max_use : a->max_use;
}

dp_status compare_with_reference(dp_runtime *rt, dp_reference *ref, int grad, double atol, double rtol,
                                 compare_stats *s)
{
    const dp_schedule *sch = dp_runtime_schedule(rt);
    for (int st = 0; st < sch->num_stages; st++)
        for (int i = 0; i < dp_runtime_num_params(rt, st); i++) {
            size_t n = 0;
            /* without a reference (a process not hosting rank 0) the reads are only taken part in */
            DP_CHECK(ref ? dp_reference_read_param(ref, st, i, grad, NULL, &n)
                         : dp_runtime_read_param(rt, st, 0, i, grad, NULL, &n, NULL));
            float *want = malloc(sizeof(float) * (n ? n : 1)), *got = malloc(sizeof(float) * (n ? n : 1));
            dp_status e = !want || !got ? DP_ERR_NOMEM : ref ? dp_reference_read_param(ref, st, i, grad, want, &n) : DP_OK;
            for (int rep = 0; rep < dp_runtime_replicas(rt) && e == DP_OK; rep++)
                for (int copy = 0; copy < sch->num_pipes && e == DP_OK; copy++) {
                    e = dp_runtime_read_replica_tensor(rt, rep, st, copy, i, grad ? DP_TENSOR_GRAD : DP_TENSOR_VALUE, got);
                    if (e == DP_OK && ref) compare_floats(s, got, want, n, atol, rtol);
                }
            free(want), free(got);
            if (e == DP_ERR_NOMEM) return dp_fail(e, "out of memory comparing stage %d parameter %d", st, i);
            if (e != DP_OK) return dp_fail(e, "comparing stage %d parameter %d: %s", st, i, dp_last_error());
        }
    return DP_OK;
}
