/* eplb_rebalance.c: the entry point. Checks the configuration and the loads, then plans layer
 * by layer with the chosen policy (the default one takes the reference as its floor) and
 * builds log2phy. */
#include "eplb/eplb_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Sizes far beyond any model keep every index product inside int. */
enum { EPLB_MAX_SIZE = 1 << 20 };

eplb_config eplb_config_default(int num_replicas, int num_gpus)
{
    eplb_config c;
    memset(&c, 0, sizeof c);
    c.num_replicas = num_replicas;
    c.num_gpus = num_gpus;
    c.num_groups = 1;
    c.num_nodes = 1;
    c.policy = EPLB_POLICY_BALANCED;
    return c;
}

eplb_status eplb_config_check(const eplb_config *c, int E)
{
    if (!c) return eplb_fail(EPLB_ERR_INVALID, "no configuration given");
    if (E < 1 || E > EPLB_MAX_SIZE)
        return eplb_fail(EPLB_ERR_INVALID, "the number of experts (%d) must be 1..%d", E,
                         EPLB_MAX_SIZE);
    if (c->num_gpus < 1 || c->num_gpus > EPLB_MAX_SIZE)
        return eplb_fail(EPLB_ERR_INVALID, "GPUs (%d) must be 1..%d", c->num_gpus, EPLB_MAX_SIZE);
    if (c->num_nodes < 1)
        return eplb_fail(EPLB_ERR_INVALID, "nodes (%d) must be at least 1", c->num_nodes);
    if (c->num_groups < 1)
        return eplb_fail(EPLB_ERR_INVALID, "groups (%d) must be at least 1", c->num_groups);
    if (c->num_replicas < 1 || c->num_replicas > EPLB_MAX_SIZE)
        return eplb_fail(EPLB_ERR_INVALID, "replicas (%d) must be 1..%d", c->num_replicas,
                         EPLB_MAX_SIZE);
    if (c->num_replicas % c->num_gpus != 0)
        return eplb_fail(EPLB_ERR_INVALID,
                         "replicas (%d) must be a multiple of GPUs (%d): every GPU holds the same "
                         "number of slots", c->num_replicas, c->num_gpus);
    if (c->num_replicas < E)
        return eplb_fail(EPLB_ERR_INVALID,
                         "replicas (%d) must be at least the number of experts (%d): every "
                         "expert needs a replica", c->num_replicas, E);
    if (E % c->num_groups != 0)
        return eplb_fail(EPLB_ERR_INVALID,
                         "experts (%d) must be divisible by groups (%d): groups are equal-sized",
                         E, c->num_groups);
    if (c->num_gpus % c->num_nodes != 0)
        return eplb_fail(EPLB_ERR_INVALID,
                         "GPUs (%d) must be a multiple of nodes (%d): nodes are equal-sized",
                         c->num_gpus, c->num_nodes);
    if (c->policy != EPLB_POLICY_BALANCED && c->policy != EPLB_POLICY_DEEPSEEK)
        return eplb_fail(EPLB_ERR_INVALID, "unknown policy %d", (int)c->policy);
    return EPLB_OK;
}

int eplb_config_hierarchical(const eplb_config *c)
{
    return c->num_nodes > 1 && c->num_groups % c->num_nodes == 0;
}

eplb_shape eplb_shape_of(const eplb_config *c, int E)
{
    eplb_shape s;
    s.E = E;
    s.R = c->num_replicas;
    s.P = c->num_gpus;
    s.N = c->num_nodes;
    s.groups = c->num_groups;
    s.slots = s.R / s.P;
    s.hierarchical = eplb_config_hierarchical(c);
    return s;
}

/* ------------------------------------------------------------------------------------------
 * Scratch */

eplb_scratch *eplb_scratch_new(const eplb_shape *s)
{
    int n = s->E;
    if (s->R > n) n = s->R;
    if (s->P > n) n = s->P;
    if (s->groups > n) n = s->groups;
    eplb_scratch *sc = calloc(1, sizeof *sc);
    if (!sc) return NULL;
    sc->n = n;
    int ok = 1;
    for (int k = 0; k < 4; k++) {
        sc->f[k] = malloc((size_t)n * sizeof(float));
        ok = ok && sc->f[k];
    }
    for (int k = 0; k < 9; k++) {
        sc->d[k] = malloc((size_t)n * sizeof(double));
        ok = ok && sc->d[k];
    }
    for (int k = 0; k < 32; k++) {
        sc->i[k] = malloc((size_t)n * sizeof(int));
        ok = ok && sc->i[k];
    }
    sc->sort_work = malloc((size_t)n * 32); /* two arrays of n 16-byte records */
    sc->pairs = malloc(EPLB_PAIR_BYTES);
    sc->placed = eplb_placed_new(s->E, s->R);
    if (!ok || !sc->sort_work || !sc->pairs || !sc->placed) {
        eplb_scratch_free(sc);
        return NULL;
    }
    return sc;
}

void eplb_scratch_free(eplb_scratch *sc)
{
    if (!sc) return;
    for (int k = 0; k < 4; k++) free(sc->f[k]);
    for (int k = 0; k < 9; k++) free(sc->d[k]);
    for (int k = 0; k < 32; k++) free(sc->i[k]);
    eplb_placed_free(sc->placed);
    free(sc->sort_work);
    free(sc->pairs);
    free(sc);
}

/* ------------------------------------------------------------------------------------------
 * Entry point */

eplb_status eplb_rebalance(const double *weight, int L, int E, const eplb_config *cfg,
                           eplb_plan *plan)
{
    if (!plan) return eplb_fail(EPLB_ERR_INVALID, "no plan to fill");
    memset(plan, 0, sizeof *plan);
    if (!weight) return eplb_fail(EPLB_ERR_INVALID, "no loads given");
    if (L < 1) return eplb_fail(EPLB_ERR_INVALID, "layers (%d) must be at least 1", L);
    EPLB_CHECK(eplb_config_check(cfg, E));
    EPLB_CHECK(eplb_loads_check(weight, L, E, 0));
    eplb_shape s = eplb_shape_of(cfg, E);
    EPLB_CHECK(eplb_plan_alloc(plan, L, E, s.R, s.P));
    eplb_scratch *sc = eplb_scratch_new(&s);
    int *rank = malloc((size_t)L * s.R * sizeof(int));
    int *ref = malloc((size_t)2 * s.R * sizeof(int));
    eplb_status st = EPLB_OK;
    if (!sc || !rank || !ref) {
        st = eplb_fail(EPLB_ERR_NOMEM, "out of memory planning %d layers", L);
        goto done;
    }
    for (int l = 0; l < L && st == EPLB_OK; l++) {
        const double *w = weight + (size_t)l * E;
        int *p2l = plan->phy2log + (size_t)l * s.R, *rk = rank + (size_t)l * s.R;
        if (cfg->policy == EPLB_POLICY_DEEPSEEK) {
            st = eplb_deepseek_layer(w, &s, sc, p2l, rk);
        } else {
            sc->cut_short = 0;
            st = eplb_balanced_layer(w, &s, cfg->cross_nodes, sc, ref, p2l, rk);
            plan->layers_cut_short += sc->cut_short;
        }
    }
    if (st == EPLB_OK) st = eplb_plan_finish(plan, rank);
done:
    eplb_scratch_free(sc);
    free(rank);
    free(ref);
    if (st != EPLB_OK) eplb_plan_free(plan);
    return st;
}

/* ------------------------------------------------------------------------------------------
 * Starting from the running placement */

eplb_status eplb_rebalance_from(const double *weight, int L, int E, const eplb_config *cfg,
                                const eplb_plan *current, double tolerance, eplb_plan *plan,
                                long *moved, long *traffic, int *layers_kept)
{
    if (layers_kept) *layers_kept = 0;
    if (!current || !current->phy2log)
        return eplb_fail(EPLB_ERR_INVALID, "no current plan given");
    if (!(tolerance >= 0) || !isfinite(tolerance))
        return eplb_fail(EPLB_ERR_INVALID, "the tolerance (%g) must be a finite number >= 0",
                         tolerance);
    EPLB_CHECK(eplb_rebalance(weight, L, E, cfg, plan));
    if (current->num_layers != L || current->num_experts != E ||
        current->num_replicas != cfg->num_replicas || current->num_gpus != cfg->num_gpus) {
        eplb_plan_free(plan);
        return eplb_fail(EPLB_ERR_INVALID,
                         "the current plan (%d layers, %d experts, %d replicas on %d GPUs) does "
                         "not match (%d, %d, %d on %d)", current->num_layers,
                         current->num_experts, current->num_replicas, current->num_gpus, L, E,
                         cfg->num_replicas, cfg->num_gpus);
    }
    eplb_shape s = eplb_shape_of(cfg, E);
    int incremental = cfg->policy == EPLB_POLICY_BALANCED && !(s.hierarchical && cfg->cross_nodes);
    eplb_status st = EPLB_OK;
    if (incremental) {
        eplb_scratch *sc = eplb_scratch_new(&s);
        int *ref = malloc((size_t)2 * s.R * sizeof(int));
        int *next = malloc((size_t)2 * s.R * sizeof(int));
        double *load = malloc((size_t)s.P * sizeof(double));
        int *cnt = malloc((size_t)E * sizeof(int));
        if (!sc || !ref || !next || !load || !cnt) st = eplb_fail(EPLB_ERR_NOMEM, "out of memory");
        for (int l = 0; l < L && st == EPLB_OK; l++) {
            const double *w = weight + (size_t)l * E;
            int *p2l = plan->phy2log + (size_t)l * s.R;
            double total = 0;
            for (int e = 0; e < E; e++) total += w[e];
            double mean = total / s.P;
            double fresh = eplb_gpu_loads(w, E, p2l, s.R, s.P, cnt, load);
            st = eplb_deepseek_layer(w, &s, sc, ref, ref + s.R);
            if (st != EPLB_OK) break;
            double allowed = eplb_gpu_loads(w, E, ref, s.R, s.P, cnt, load);
            if (fresh > 0 && mean / fresh - tolerance > 0) {
                double loose = mean / (mean / fresh - tolerance);
                if (loose < allowed) allowed = loose;
            } else if (fresh <= 0) {
                allowed = 0; /* no load: anything goes, so keep everything */
            }
            const int *cur = current->phy2log + (size_t)l * s.R;
            sc->cut_short = 0;
            double got = eplb_balanced_layer_from(w, &s, sc, cur, allowed, next, next + s.R);
            if (got >= 0 && got <= allowed) {
                memcpy(p2l, next, (size_t)s.R * sizeof(int));
                if (layers_kept) (*layers_kept)++;
                plan->layers_cut_short += sc->cut_short;
            }
        }
        eplb_scratch_free(sc);
        free(ref);
        free(next);
        free(load);
        free(cnt);
        if (st == EPLB_OK) st = eplb_plan_finish(plan, NULL);
    }
    if (st == EPLB_OK) st = eplb_plan_migrate(current, plan, cfg->num_nodes, moved, traffic);
    if (st != EPLB_OK) eplb_plan_free(plan);
    return st;
}
