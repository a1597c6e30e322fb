/* kernel_fp64_moe_checks.h: the mixture-of-experts kernels of a device table (engine/device.h:
 * sigmoid, group-limited top-k and its backward, the dispatch permutation, the weighted combine
 * and its backward, SwiGLU, the balancing bias) against double-precision references, with the
 * router's golden cases (ties, groups, all-negative logits, a bias that changes the selection).
 * Include after tests/kernel_fp64_checks.h, whose helpers and rules it uses. */
#ifndef DP_TESTS_KERNEL_FP64_MOE_CHECKS_H
#define DP_TESTS_KERNEL_FP64_MOE_CHECKS_H

#include "tests/kernel_fp64_checks.h"

/* ----------------------------------------------------------------------------
 * the router's golden cases: exact experts, and weights within gamma(K + 2) of route_scale s / S */

typedef struct {
    const char *what;
    int experts, groups, topk_groups, topk;
    float scores[16], bias[16]; /* one token */
    int use_bias;
    int want[8];
} kc_route_case;

static void kc_route_golden(void)
{
    static const kc_route_case cases[] = {
        {"ties go to the lower index", 8, 1, 1, 3, {.5f, .5f, .5f, .5f, .5f, .5f, .5f, .5f}, {0}, 0, {0, 1, 2}},
        {"ties between groups go to the lower group", 8, 4, 2, 2, {.5f, .5f, .5f, .5f, .5f, .5f, .5f, .5f}, {0}, 0,
         {0, 1}},
        /* the best expert (0) is in a group whose two best sum lowest but one: groups 2 and 1 are kept */
        {"groups scored by their two best", 8, 4, 2, 2, {.9f, 0, .5f, .5f, .6f, .45f, .1f, .1f}, {0}, 0, {4, 2}},
        {"a bias changes the selection", 4, 1, 1, 2, {.9f, .8f, .7f, .6f}, {-.5f, 0, 0, .3f}, 1, {3, 1}},
        /* every biased score negative: the dropped groups must not win by a masked value of 0 */
        {"all-negative biased scores with groups", 8, 4, 1, 2, {.1f, .2f, .05f, .01f, .3f, .02f, .04f, .03f},
         {-1, -1, -1, -1, -1, -1, -1, -1}, 1, {4, 5}},
    };
    float rs = 2.5f;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const kc_route_case *k = &cases[c];
        float *ds = kc_up(k->scores, sizeof(float) * (size_t)k->experts), *db = kc_up(k->bias, sizeof(float) * (size_t)k->experts);
        int32_t *de = kc_poison(sizeof(int32_t) * (size_t)k->topk);
        float *dw = kc_poison(sizeof(float) * (size_t)k->topk);
        dp_status st = kc_ops->moe_topk(kc_dev, NULL, 1, k->experts, k->groups, k->topk_groups, k->topk, ds,
                                        k->use_bias ? db : NULL, rs, de, dw);
        int32_t e[8];
        float w[8];
        kc_down(e, de, sizeof(int32_t) * (size_t)k->topk);
        kc_down(w, dw, sizeof(float) * (size_t)k->topk);
        int ok = st == DP_OK;
        double sum = 0;
        for (int j = 0; ok && j < k->topk; j++) ok = e[j] == k->want[j], sum += k->scores[k->want[j]];
        for (int j = 0; ok && j < k->topk; j++) {
            double ref = rs * k->scores[e[j]] / sum;
            ok = fabs(w[j] - ref) <= kc_gamma(k->topk + 2) * ref;
        }
        if (!ok && st == DP_OK)
            tap_diag("%s got experts %d %d %d (weights %g %g %g)", kc_name, e[0], k->topk > 1 ? e[1] : -1,
                     k->topk > 2 ? e[2] : -1, (double)w[0], k->topk > 1 ? (double)w[1] : 0.0,
                     k->topk > 2 ? (double)w[2] : 0.0);
        tap_ok(ok, "%s moe_topk golden: %s", kc_name, k->what);
        kc_ops->free(kc_dev, ds), kc_ops->free(kc_dev, db), kc_ops->free(kc_dev, de), kc_ops->free(kc_dev, dw);
    }
    /* all-negative logits through the sigmoid: scores stay ordered as the logits */
    float logits[4] = {-3, -1, -2, -5};
    float *dl = kc_up(logits, sizeof logits), *ds = kc_poison(sizeof logits), *dw = kc_poison(2 * sizeof(float));
    int32_t *de = kc_poison(2 * sizeof(int32_t)), e[2];
    dp_status st = kc_ops->sigmoid_forward(kc_dev, NULL, DP_DTYPE_F32, 4, dl, ds);
    if (st == DP_OK) st = kc_ops->moe_topk(kc_dev, NULL, 1, 4, 1, 1, 2, ds, NULL, 1.0f, de, dw);
    kc_down(e, de, sizeof e);
    tap_ok(st == DP_OK && e[0] == 1 && e[1] == 2, "%s moe_topk golden: all-negative logits pick the least negative",
           kc_name);
    kc_ops->free(kc_dev, dl), kc_ops->free(kc_dev, ds), kc_ops->free(kc_dev, dw), kc_ops->free(kc_dev, de);
    /* shapes the routing cannot take are refused */
    st = kc_ops->moe_topk(kc_dev, NULL, 1, 6, 4, 1, 1, NULL, NULL, 1.0f, NULL, NULL);
    dp_status st2 = kc_ops->moe_topk(kc_dev, NULL, 1, 8, 4, 1, 3, NULL, NULL, 1.0f, NULL, NULL);
    tap_ok(st == DP_ERR_INVALID && st2 == DP_ERR_INVALID,
           "%s moe_topk refuses experts not divisible into groups, and top-k beyond the kept groups", kc_name);
}

/* ----------------------------------------------------------------------------
 * the gate on random scores: the selection exactly as a double-precision reference of the same
 * rule makes it (on the fp32 biased scores the kernel compares), the weights within gamma(K + 2);
 * the backward within gamma(2K + 10) of route_scale / S (|dw_j| + sum_k |dw_k s_k| / S) s_j (1 - s_j) */

static int kc_before(double a, int ia, double b, int ib) { return a > b || (a == b && ia < ib); }

static void kc_route_reference(int E, int G, int TG, int K, const float *sc, const float *bias, int32_t *ex)
{
    double b[64], gs[16];
    int gsz = E / G, taken[64] = {0}, gk[16] = {0};
    for (int e = 0; e < E; e++) b[e] = (double)(float)(sc[e] + bias[e]);
    for (int g = 0; g < G; g++) {
        int b0 = g * gsz, b1 = -1;
        for (int e = g * gsz; e < (g + 1) * gsz; e++)
            if (kc_before(b[e], e, b[b0], b0)) b0 = e;
        for (int e = g * gsz; e < (g + 1) * gsz; e++)
            if (e != b0 && (b1 < 0 || kc_before(b[e], e, b[b1], b1))) b1 = e;
        gs[g] = (double)(float)(b[b0] + (b1 >= 0 ? b[b1] : 0.0));
    }
    for (int j = 0; j < TG; j++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!gk[g] && (best < 0 || kc_before(gs[g], g, gs[best], best))) best = g;
        gk[best] = 1;
    }
    for (int e = 0; e < E; e++) taken[e] = !gk[e / gsz];
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || kc_before(b[e], e, b[best], best))) best = e;
        taken[best] = 1;
        ex[k] = best;
    }
}

static void kc_route_random(void)
{
    enum { T = 200, E = 32, G = 4, TG = 2, K = 6 };
    float rs = 2.5f;
    float *sc = kc_host(sizeof(float) * T * E), bias[E], *dwt = kc_host(sizeof(float) * T * K);
    for (int i = 0; i < T * E; i++) sc[i] = (float)(0.5 + 0.5 * kc_urand());
    for (int e = 0; e < E; e++) bias[e] = (float)(0.05 * kc_urand());
    for (int i = 0; i < T * K; i++) dwt[i] = (float)kc_urand();
    float *dsc = kc_up(sc, sizeof(float) * T * E), *db = kc_up(bias, sizeof bias), *ddwt = kc_up(dwt, sizeof(float) * T * K);
    int32_t *de = kc_poison(sizeof(int32_t) * T * K), *ex = kc_host(sizeof(int32_t) * T * K), ref[K];
    float *dw = kc_poison(sizeof(float) * T * K), *w = kc_host(sizeof(float) * T * K);
    dp_status st = kc_ops->moe_topk(kc_dev, NULL, T, E, G, TG, K, dsc, db, rs, de, dw);
    kc_down(ex, de, sizeof(int32_t) * T * K);
    kc_down(w, dw, sizeof(float) * T * K);
    int same = st == DP_OK, wok = st == DP_OK;
    for (int t = 0; t < T && same; t++) {
        kc_route_reference(E, G, TG, K, sc + t * E, bias, ref);
        double sum = 0;
        for (int k = 0; k < K; k++) same = same && ex[t * K + k] == ref[k], sum += sc[t * E + ref[k]];
        for (int k = 0; same && wok && k < K; k++) {
            double r = rs * sc[t * E + ref[k]] / sum;
            wok = fabs(w[t * K + k] - r) <= kc_gamma(K + 2) * r;
        }
        if (!same) tap_diag("%s moe_topk token %d: selection differs from the reference", kc_name, t);
    }
    tap_ok(same, "%s moe_topk, %d tokens of %d experts in %d groups (%d kept), top %d: every selection as the double "
           "reference's", kc_name, T, E, G, TG, K);
    tap_ok(wok, "%s moe_topk weights within gamma(K + 2) of route_scale s / S", kc_name);

    float *dlg = kc_poison(sizeof(float) * T * E);
    st = kc_ops->moe_topk_backward(kc_dev, NULL, T, E, K, dsc, de, ddwt, rs, dlg);
    double *r = kc_host(sizeof(double) * T * E), *bound = kc_host(sizeof(double) * T * E);
    for (int t = 0; t < T; t++) {
        const float *s = sc + t * E;
        const int32_t *e = ex + t * K;
        double S = 0, D = 0, Dm = 0;
        for (int k = 0; k < K; k++) S += s[e[k]], D += (double)dwt[t * K + k] * s[e[k]], Dm += fabs((double)dwt[t * K + k] * s[e[k]]);
        for (int j = 0; j < E; j++) r[t * E + j] = 0, bound[t * E + j] = 0;
        for (int k = 0; k < K; k++) {
            double sj = s[e[k]], dw_ = dwt[t * K + k];
            r[t * E + e[k]] = rs / S * (dw_ - D / S) * sj * (1 - sj);
            bound[t * E + e[k]] = kc_gamma(2 * K + 10) * rs / S * (fabs(dw_) + Dm / S) * sj * (1 - sj);
        }
    }
    tap_ok(st == DP_OK && kc_check_dev("moe_topk_backward", DP_DTYPE_F32, dlg, (size_t)T * E, r, bound),
           "%s moe_topk_backward: every dlogit within gamma(2K + 10) of the double formula, zero where not selected "
           "(worst %.2f)", kc_name, kc_worst);

    /* the dispatch layout: a stable sort of the slots by expert */
    int32_t *drs = kc_poison(sizeof(int32_t) * T * K), *dsr = kc_poison(sizeof(int32_t) * T * K), *dc = kc_poison(sizeof(int32_t) * E);
    st = kc_ops->moe_permute(kc_dev, NULL, T, K, E, de, drs, dsr, dc);
    int32_t *rs_ = kc_host(sizeof(int32_t) * T * K), *sr = kc_host(sizeof(int32_t) * T * K), cnt[E];
    kc_down(rs_, drs, sizeof(int32_t) * T * K), kc_down(sr, dsr, sizeof(int32_t) * T * K), kc_down(cnt, dc, sizeof cnt);
    int ok = st == DP_OK, at = 0;
    for (int e = 0; e < E && ok; e++) {
        int n = 0;
        for (int i = 0; i < T * K && ok; i++)
            if (ex[i] == e) ok = rs_[at] == i / K && sr[i] == at, at++, n++;
        ok = ok && cnt[e] == n;
    }
    tap_ok(ok && at == T * K, "%s moe_permute: rows sorted by expert, within one in slot order; counts, tokens and slots "
           "agree", kc_name);
    kc_ops->free(kc_dev, drs), kc_ops->free(kc_dev, dsr), kc_ops->free(kc_dev, dc);
    free(rs_), free(sr), free(r), free(bound);
    kc_ops->free(kc_dev, dlg), kc_ops->free(kc_dev, dsc), kc_ops->free(kc_dev, db), kc_ops->free(kc_dev, ddwt);
    kc_ops->free(kc_dev, de), kc_ops->free(kc_dev, dw);
    free(sc), free(dwt), free(ex), free(w);
}

/* ----------------------------------------------------------------------------
 * sigmoid: 1 / (1 + exp(-x)) with exp within 2 ulp, one add, one divide: gamma(6) |y|.
 * SwiGLU: forward two more products, gamma(8) |y|; backward da within gamma(12) |dy b| s (1 + |a|)
 * (1 - s cancels: its error is absolute, u s), db gamma(8) |db|. bf16 outputs rounded once. */

static void kc_sigmoid_swiglu(dp_dtype t)
{
    size_t n = 5000;
    double *x = kc_values(t, n, 12.0), *b = kc_values(t, n, 2.0), *g = kc_values(t, n, 2.0);
    double *ref = kc_host(sizeof(double) * n), *bound = kc_host(sizeof(double) * n);
    double *ref2 = kc_host(sizeof(double) * n), *bound2 = kc_host(sizeof(double) * n);
    void *dx = kc_upload(t, n, x), *dbv = kc_upload(t, n, b), *dg = kc_upload(t, n, g), *dy = kc_poison(n * dp_dtype_size(t));
    for (size_t i = 0; i < n; i++) ref[i] = 1 / (1 + exp(-x[i])), bound[i] = kc_gamma(6) * ref[i];
    dp_status st = kc_ops->sigmoid_forward(kc_dev, NULL, t, n, dx, dy);
    tap_ok(st == DP_OK && kc_check_dev("sigmoid", t, dy, n, ref, bound),
           "%s sigmoid_forward %s: every element within gamma(6) |y| (worst %.2f)", kc_name, kc_tname(t), kc_worst);
    for (size_t i = 0; i < n; i++) {
        double s = 1 / (1 + exp(-x[i]));
        ref[i] = x[i] * s * b[i], bound[i] = kc_gamma(8) * fabs(ref[i]);
    }
    st = kc_ops->swiglu_forward(kc_dev, NULL, t, n, dx, dbv, dy);
    tap_ok(st == DP_OK && kc_check_dev("swiglu", t, dy, n, ref, bound),
           "%s swiglu_forward %s: every element within gamma(8) |y| (worst %.2f)", kc_name, kc_tname(t), kc_worst);
    void *dda = kc_poison(n * dp_dtype_size(t)), *ddb = kc_poison(n * dp_dtype_size(t));
    for (size_t i = 0; i < n; i++) {
        double s = 1 / (1 + exp(-x[i]));
        ref[i] = g[i] * b[i] * s * (1 + x[i] * (1 - s));
        bound[i] = kc_gamma(12) * fabs(g[i] * b[i]) * s * (1 + fabs(x[i]));
        ref2[i] = g[i] * x[i] * s, bound2[i] = kc_gamma(8) * fabs(ref2[i]);
    }
    st = kc_ops->swiglu_backward(kc_dev, NULL, t, n, dx, dbv, dg, dda, ddb);
    int ok = st == DP_OK && kc_check_dev("swiglu da", t, dda, n, ref, bound);
    double w1 = kc_worst;
    ok = ok && kc_check_dev("swiglu db", t, ddb, n, ref2, bound2);
    tap_ok(ok, "%s swiglu_backward %s: da within gamma(12) |dy b| s (1 + |a|) (worst %.2f), db within gamma(8) (worst "
           "%.2f)", kc_name, kc_tname(t), w1, kc_worst);
    /* da and db may alias dy */
    void *dg2 = kc_upload(t, n, g), *ddb2 = kc_poison(n * dp_dtype_size(t));
    st = kc_ops->swiglu_backward(kc_dev, NULL, t, n, dx, dbv, dg2, dg2, ddb2);
    tap_ok(st == DP_OK && kc_check_dev("swiglu da in place", t, dg2, n, ref, bound) &&
               kc_check_dev("swiglu db beside", t, ddb2, n, ref2, bound2),
           "%s swiglu_backward %s with da aliasing dy", kc_name, kc_tname(t));
    kc_ops->free(kc_dev, dx), kc_ops->free(kc_dev, dbv), kc_ops->free(kc_dev, dg), kc_ops->free(kc_dev, dy);
    kc_ops->free(kc_dev, dda), kc_ops->free(kc_dev, ddb), kc_ops->free(kc_dev, dg2), kc_ops->free(kc_dev, ddb2);
    free(x), free(b), free(g), free(ref), free(bound), free(ref2), free(bound2);
}

/* ----------------------------------------------------------------------------
 * combine: y = y0 + sum_k w v, K products and K + 1 adds: gamma(2K + 1) (|y0| + sum |w v|).
 * Its backward: drows = w dy (gamma(1)), dweight = the dot product of cols terms: gamma(cols + 1). */

static void kc_combine(dp_dtype t)
{
    enum { T = 37, K = 3, C = 70 };
    int R = T * K + 5; /* rows beyond the slots' are never read */
    double *rows = kc_values(t, (size_t)R * C, 2.0), *y0 = kc_values(t, (size_t)T * C, 2.0), *dy = kc_values(t, (size_t)T * C, 2.0);
    float w[T * K];
    int32_t sr[T * K];
    for (int i = 0; i < T * K; i++) w[i] = (float)kc_urand(), sr[i] = (int32_t)((i * 29 + 11) % (T * K));
    void *drows = kc_upload(t, (size_t)R * C, rows), *dy0 = kc_upload(t, (size_t)T * C, y0), *ddy = kc_upload(t, (size_t)T * C, dy);
    float *dw = kc_up(w, sizeof w);
    int32_t *dsr = kc_up(sr, sizeof sr);
    size_t n = (size_t)T * C;
    double *ref = kc_host(sizeof(double) * n), *bound = kc_host(sizeof(double) * n);
    for (int acc = 0; acc < 2; acc++) {
        for (int tk = 0; tk < T; tk++)
            for (int c = 0; c < C; c++) {
                size_t yi = (size_t)tk * C + c;
                double r = acc ? y0[yi] : 0, m = fabs(r);
                for (int k = 0; k < K; k++) {
                    double p = (double)w[tk * K + k] * rows[(size_t)sr[tk * K + k] * C + c];
                    r += p, m += fabs(p);
                }
                ref[yi] = r, bound[yi] = kc_gamma(2 * K + 1) * m;
            }
        void *y = acc ? dy0 : kc_poison(n * dp_dtype_size(t));
        dp_status st = kc_ops->moe_combine(kc_dev, NULL, t, T, K, C, drows, dsr, dw, acc, y);
        tap_ok(st == DP_OK && kc_check_dev("moe_combine", t, y, n, ref, bound),
               "%s moe_combine %s%s: every element within gamma(2K + 1) (|y0| + sum |w v|) (worst %.2f)", kc_name,
               kc_tname(t), acc ? ", accumulating" : "", kc_worst);
        if (!acc) kc_ops->free(kc_dev, y);
    }
    size_t nr = (size_t)R * C;
    double *rr = kc_host(sizeof(double) * nr), *rb = kc_host(sizeof(double) * nr), dwr[T * K], dwb[T * K];
    for (size_t i = 0; i < nr; i++) rr[i] = 0, rb[i] = 0;
    for (int i = 0; i < T * K; i++) {
        double d = 0, m = 0;
        for (int c = 0; c < C; c++) {
            double g = dy[(size_t)(i / K) * C + c], v = rows[(size_t)sr[i] * C + c];
            rr[(size_t)sr[i] * C + c] = w[i] * g, rb[(size_t)sr[i] * C + c] = kc_gamma(1) * fabs(w[i] * g);
            d += g * v, m += fabs(g * v);
        }
        dwr[i] = d, dwb[i] = kc_gamma(C + 1) * m;
    }
    void *dgr = kc_alloc(nr * dp_dtype_size(t));
    kc_try(kc_ops->memset(kc_dev, dgr, 0, nr * dp_dtype_size(t), NULL), "memset");
    float *dgw = kc_poison(sizeof(float) * T * K);
    dp_status st = kc_ops->moe_combine_backward(kc_dev, NULL, t, T, K, C, drows, dsr, dw, ddy, dgr, dgw);
    int ok = st == DP_OK && kc_check_dev("moe_combine_backward drows", t, dgr, nr, rr, rb);
    ok = ok && kc_check_dev("moe_combine_backward dweight", DP_DTYPE_F32, dgw, T * K, dwr, dwb);
    tap_ok(ok, "%s moe_combine_backward %s: drows = w dy within gamma(1), dweight within gamma(cols + 1) sum |dy v|",
           kc_name, kc_tname(t));
    kc_ops->free(kc_dev, drows), kc_ops->free(kc_dev, dy0), kc_ops->free(kc_dev, ddy), kc_ops->free(kc_dev, dw);
    kc_ops->free(kc_dev, dsr), kc_ops->free(kc_dev, dgr), kc_ops->free(kc_dev, dgw);
    free(rows), free(y0), free(dy), free(ref), free(bound), free(rr), free(rb);
}

/* ----------------------------------------------------------------------------
 * balancing: exact (integer loads, one add of +-gamma or 0 to each bias) */

static void kc_balance(void)
{
    float load[6] = {3, 9, 6, 0, 6, 12}, bias[6] = {0.5f, -0.25f, 0, 1, 0, 0}; /* mean 6 */
    int32_t cnt[6] = {1, 2, 0, 7, 1, 0};
    float want[6] = {0.5f + 0.125f, -0.25f - 0.125f, 0, 1.125f, 0, -0.125f}, got[6], wl[6];
    float *dl = kc_up(load, sizeof load), *db = kc_up(bias, sizeof bias);
    int32_t *dc = kc_up(cnt, sizeof cnt);
    dp_status st = kc_ops->moe_bias_update(kc_dev, NULL, 6, dl, 0.125f, db);
    kc_down(got, db, sizeof got);
    tap_ok(st == DP_OK && memcmp(got, want, sizeof got) == 0,
           "%s moe_bias_update: under-loaded experts up by gamma, over-loaded down, at the mean unchanged", kc_name);
    st = kc_ops->add_counts(kc_dev, NULL, 6, dc, dl);
    kc_down(wl, dl, sizeof wl);
    int ok = st == DP_OK;
    for (int e = 0; e < 6; e++) ok = ok && wl[e] == load[e] + (float)cnt[e];
    tap_ok(ok, "%s add_counts: int32 counts added into fp32 exactly", kc_name);
    kc_ops->free(kc_dev, dl), kc_ops->free(kc_dev, db), kc_ops->free(kc_dev, dc);
}

static void kc_run_moe_kernels(void)
{
    kc_route_golden();
    kc_route_random();
    kc_balance();
    kc_sigmoid_swiglu(DP_DTYPE_F32);
    kc_sigmoid_swiglu(DP_DTYPE_BF16);
    kc_combine(DP_DTYPE_F32);
    kc_combine(DP_DTYPE_BF16);
}

#endif
