/* eplb_plan.c: plans as arrays (allocation, the log2phy inverse, invariant checks) and what
 * is measured on them: GPU loads, balancedness, same-GPU duplicates. */
#include "eplb/eplb_internal.h"

#include <stdlib.h>
#include <string.h>

void eplb_plan_free(eplb_plan *plan)
{
    if (!plan) return;
    free(plan->phy2log);
    free(plan->log2phy);
    free(plan->logcnt);
    memset(plan, 0, sizeof *plan);
}

eplb_status eplb_plan_alloc(eplb_plan *plan, int num_layers, int num_experts, int num_replicas,
                            int num_gpus)
{
    memset(plan, 0, sizeof *plan);
    if (num_layers < 1 || num_experts < 1 || num_replicas < 1 || num_gpus < 1)
        return eplb_fail(EPLB_ERR_INVALID,
                         "a plan needs at least one layer, expert, replica and GPU (got %d, %d, "
                         "%d, %d)", num_layers, num_experts, num_replicas, num_gpus);
    plan->num_layers = num_layers;
    plan->num_experts = num_experts;
    plan->num_replicas = num_replicas;
    plan->num_gpus = num_gpus;
    plan->phy2log = malloc((size_t)num_layers * num_replicas * sizeof(int));
    plan->logcnt = calloc((size_t)num_layers * num_experts, sizeof(int));
    if (!plan->phy2log || !plan->logcnt) {
        eplb_plan_free(plan);
        return eplb_fail(EPLB_ERR_NOMEM, "out of memory for a plan of %d layers x %d replicas",
                         num_layers, num_replicas);
    }
    return EPLB_OK;
}

eplb_status eplb_plan_finish(eplb_plan *plan, const int *rank)
{
    const int L = plan->num_layers, E = plan->num_experts, R = plan->num_replicas;
    memset(plan->logcnt, 0, (size_t)L * E * sizeof(int));
    int maxcnt = 0;
    for (int l = 0; l < L; l++) {
        const int *p2l = plan->phy2log + (size_t)l * R;
        int *cnt = plan->logcnt + (size_t)l * E;
        for (int r = 0; r < R; r++) {
            if (p2l[r] < 0 || p2l[r] >= E)
                return eplb_fail(EPLB_ERR_INVALID,
                                 "layer %d slot %d holds expert %d, outside 0..%d", l, r, p2l[r],
                                 E - 1);
            if (++cnt[p2l[r]] > maxcnt) maxcnt = cnt[p2l[r]];
        }
        for (int e = 0; e < E; e++)
            if (cnt[e] == 0)
                return eplb_fail(EPLB_ERR_INVALID,
                                 "layer %d has no replica of expert %d: every expert needs one", l,
                                 e);
    }
    free(plan->log2phy);
    plan->max_count = maxcnt;
    plan->log2phy = malloc((size_t)L * E * maxcnt * sizeof(int));
    if (!plan->log2phy) return eplb_fail(EPLB_ERR_NOMEM, "out of memory for log2phy");
    memset(plan->log2phy, 0xff, (size_t)L * E * maxcnt * sizeof(int)); /* all -1 */
    for (int l = 0; l < L; l++) {
        const int *p2l = plan->phy2log + (size_t)l * R;
        const int *cnt = plan->logcnt + (size_t)l * E;
        int *l2p = plan->log2phy + (size_t)l * E * maxcnt;
        for (int r = 0; r < R; r++) {
            int e = p2l[r], k;
            if (rank) {
                k = rank[(size_t)l * R + r];
                if (k < 0 || k >= cnt[e] || l2p[e * maxcnt + k] != -1)
                    return eplb_fail(EPLB_ERR_INTERNAL,
                                     "layer %d: replica rank %d of expert %d is out of range or "
                                     "repeated", l, k, e);
            } else {
                for (k = 0; l2p[e * maxcnt + k] != -1; k++) {}
            }
            l2p[e * maxcnt + k] = r;
        }
    }
    return EPLB_OK;
}

eplb_status eplb_plan_from_phy2log(const int *phy2log, int num_layers, int num_experts,
                                   int num_replicas, int num_gpus, eplb_plan *plan)
{
    EPLB_CHECK(eplb_plan_alloc(plan, num_layers, num_experts, num_replicas, num_gpus));
    if (num_replicas % num_gpus != 0) {
        eplb_plan_free(plan);
        return eplb_fail(EPLB_ERR_INVALID, "replicas (%d) must be a multiple of GPUs (%d)",
                         num_replicas, num_gpus);
    }
    memcpy(plan->phy2log, phy2log, (size_t)num_layers * num_replicas * sizeof(int));
    eplb_status st = eplb_plan_finish(plan, NULL);
    if (st != EPLB_OK) eplb_plan_free(plan);
    return st;
}

eplb_status eplb_plan_check(const eplb_plan *plan)
{
    if (!plan || !plan->phy2log || !plan->log2phy || !plan->logcnt)
        return eplb_fail(EPLB_ERR_INVALID, "the plan is empty");
    const int L = plan->num_layers, E = plan->num_experts, R = plan->num_replicas;
    const int M = plan->max_count;
    if (plan->num_gpus < 1 || R % plan->num_gpus != 0)
        return eplb_fail(EPLB_ERR_INVALID, "replicas (%d) are not a multiple of GPUs (%d)", R,
                         plan->num_gpus);
    int seen_max = 0;
    for (int l = 0; l < L; l++) {
        const int *p2l = plan->phy2log + (size_t)l * R;
        const int *cnt = plan->logcnt + (size_t)l * E;
        const int *l2p = plan->log2phy + (size_t)l * E * M;
        long total = 0;
        for (int e = 0; e < E; e++) {
            if (cnt[e] < 1 || cnt[e] > M)
                return eplb_fail(EPLB_ERR_INVALID, "layer %d: expert %d has count %d", l, e,
                                 cnt[e]);
            if (cnt[e] > seen_max) seen_max = cnt[e];
            total += cnt[e];
            for (int k = 0; k < M; k++) {
                int r = l2p[e * M + k];
                if (k >= cnt[e]) {
                    if (r != -1)
                        return eplb_fail(EPLB_ERR_INVALID,
                                         "layer %d: log2phy[%d][%d] should be padding -1, is %d",
                                         l, e, k, r);
                } else if (r < 0 || r >= R || p2l[r] != e) {
                    return eplb_fail(EPLB_ERR_INVALID,
                                     "layer %d: log2phy[%d][%d] = %d does not point back to "
                                     "expert %d", l, e, k, r, e);
                }
                for (int k2 = 0; k2 < k && k < cnt[e]; k2++)
                    if (l2p[e * M + k2] == r)
                        return eplb_fail(EPLB_ERR_INVALID, "layer %d: slot %d listed twice", l,
                                         r);
            }
        }
        if (total != R)
            return eplb_fail(EPLB_ERR_INVALID, "layer %d: counts sum to %ld, not %d replicas", l,
                             total, R);
    }
    if (seen_max != M)
        return eplb_fail(EPLB_ERR_INVALID, "max_count is %d but the largest count is %d", M,
                         seen_max);
    return EPLB_OK;
}

/* ------------------------------------------------------------------------------------------
 * Measures */

double eplb_gpu_loads(const double *w, int E, const int *phy2log, int R, int P, int *cnt,
                      double *gpu_load)
{
    memset(cnt, 0, (size_t)E * sizeof(int));
    for (int r = 0; r < R; r++) cnt[phy2log[r]]++;
    int per = R / P;
    double mx = 0;
    for (int g = 0; g < P; g++) {
        double s = 0;
        for (int k = 0; k < per; k++) {
            int e = phy2log[g * per + k];
            s += w[e] / cnt[e];
        }
        gpu_load[g] = s;
        if (s > mx) mx = s;
    }
    return mx;
}

/* Replicas beyond the first of the same expert on one GPU. last_gpu (E ints) remembers the
 * last GPU each expert was seen on: one pass, whatever the slots per GPU. */
static int layer_duplicates(const int *p2l, int E, int R, int P, int *last_gpu)
{
    int per = R / P, dups = 0;
    for (int e = 0; e < E; e++) last_gpu[e] = -1;
    for (int r = 0; r < R; r++) {
        int e = p2l[r];
        if (last_gpu[e] == r / per) dups++;
        else last_gpu[e] = r / per;
    }
    return dups;
}

long eplb_plan_duplicates(const eplb_plan *plan)
{
    int *last_gpu = malloc((size_t)plan->num_experts * sizeof(int));
    if (!last_gpu) return -1;
    long dups = 0;
    for (int l = 0; l < plan->num_layers; l++)
        dups += layer_duplicates(plan->phy2log + (size_t)l * plan->num_replicas,
                                 plan->num_experts, plan->num_replicas, plan->num_gpus,
                                 last_gpu);
    free(last_gpu);
    return dups;
}

eplb_status eplb_layer_evaluate(const double *w, const eplb_plan *plan, int layer,
                                const eplb_config *cfg, eplb_layer_stats *out)
{
    const int E = plan->num_experts, R = plan->num_replicas, P = plan->num_gpus;
    if (layer < 0 || layer >= plan->num_layers)
        return eplb_fail(EPLB_ERR_INVALID, "layer %d is outside 0..%d", layer,
                         plan->num_layers - 1);
    if (cfg->num_gpus != P || cfg->num_replicas != R)
        return eplb_fail(EPLB_ERR_INVALID,
                         "the config (%d replicas on %d GPUs) does not match the plan (%d on %d)",
                         cfg->num_replicas, cfg->num_gpus, R, P);
    EPLB_CHECK(eplb_loads_check(w, 1, E, layer));
    int *cnt = malloc((size_t)E * sizeof(int));
    double *load = malloc((size_t)(P > E ? P : E) * sizeof(double));
    if (!cnt || !load) {
        free(cnt);
        free(load);
        return eplb_fail(EPLB_ERR_NOMEM, "out of memory evaluating a plan");
    }
    const int *p2l = plan->phy2log + (size_t)layer * R;
    memset(out, 0, sizeof *out);
    double total = 0;
    for (int e = 0; e < E; e++) total += w[e];
    out->total = total;
    out->max_load = eplb_gpu_loads(w, E, p2l, R, P, cnt, load);
    double mean = total / P;
    out->balancedness = out->max_load > 0 ? mean / out->max_load : 1.0;
    /* Before balancing: expert e alone on GPU e*P/E. */
    for (int g = 0; g < P; g++) load[g] = 0;
    for (int e = 0; e < E; e++) load[(long)e * P / E] += w[e];
    double mx = 0;
    for (int g = 0; g < P; g++)
        if (load[g] > mx) mx = load[g];
    out->before = mx > 0 ? mean / mx : 1.0;
    out->duplicates = layer_duplicates(p2l, E, R, P, cnt);
    free(cnt);
    free(load);
    EPLB_CHECK(eplb_lower_bound(w, E, cfg, &out->bound));
    out->best_possible = out->bound > 0 ? mean / out->bound : 1.0;
    return EPLB_OK;
}

eplb_status eplb_plan_balancedness(const double *weight, const eplb_plan *plan,
                                   const eplb_config *cfg, double *after, double *before,
                                   double *best_possible)
{
    double sa = 0, sb = 0, sp = 0;
    int n = 0;
    for (int l = 0; l < plan->num_layers; l++) {
        eplb_layer_stats st;
        EPLB_CHECK(eplb_layer_evaluate(weight + (size_t)l * plan->num_experts, plan, l, cfg, &st));
        if (st.total <= 0) continue;
        sa += st.balancedness;
        sb += st.before;
        sp += st.best_possible;
        n++;
    }
    if (after) *after = n ? sa / n : 1.0;
    if (before) *before = n ? sb / n : 1.0;
    if (best_possible) *best_possible = n ? sp / n : 1.0;
    return EPLB_OK;
}
