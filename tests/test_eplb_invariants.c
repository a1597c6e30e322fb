/* test_eplb_invariants.c: properties every plan must have, on seeded random loads over many
 * shapes and both policies: every expert present, counts consistent, log2phy the inverse of
 * phy2log; the default policy never less balanced than deepseek, with a same-GPU duplicate only
 * where deepseek's own plan has one and no single exchange could remove it without raising the
 * largest GPU load (at every expert count); the lower bound never above a plan's max load;
 * migration keeping each GPU's contents. Loads and balance are measured by this test's own
 * evaluator (below), not the library's, and every call's status is checked. */
#include "eplb/eplb.h"
#include "tests/eplb_test_evaluate.h"
#include "tests/eplb_test_loads.h"
#include "tests/tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-GPU sorted expert lists of two plans are equal. */
static int same_gpu_contents(const eplb_plan *a, const eplb_plan *b)
{
    int S = a->num_replicas / a->num_gpus;
    for (int l = 0; l < a->num_layers; l++)
        for (int g = 0; g < a->num_gpus; g++) {
            const int *x = a->phy2log + (size_t)l * a->num_replicas + g * S;
            const int *y = b->phy2log + (size_t)l * b->num_replicas + g * S;
            for (int i = 0; i < S; i++) {
                int cx = 0, cy = 0;
                for (int j = 0; j < S; j++) {
                    cx += x[j] == x[i];
                    cy += y[j] == x[i];
                }
                if (cx != cy) return 0;
            }
        }
    return 1;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A layer's placement written so that plans equal up to a permutation of whole nodes and of the
 * GPUs within each node write the same text: each GPU's experts sorted, each node's GPUs sorted,
 * the nodes sorted. */
static char *canonical_layer(const eplb_plan *p, int l, int nodes)
{
    int R = p->num_replicas, G = p->num_gpus, S = R / G, gpn = G / nodes;
    char **gpu = malloc(sizeof(char *) * (size_t)G), **node = malloc(sizeof(char *) * (size_t)nodes);
    int *e = malloc(sizeof(int) * (size_t)S);
    for (int g = 0; g < G; g++) {
        memcpy(e, p->phy2log + (size_t)l * R + (size_t)g * S, sizeof(int) * (size_t)S);
        qsort(e, (size_t)S, sizeof(int), cmp_int);
        gpu[g] = malloc((size_t)S * 12 + 4);
        size_t at = 0;
        for (int i = 0; i < S; i++) at += (size_t)sprintf(gpu[g] + at, "%d,", e[i]);
    }
    size_t total = 4;
    for (int n = 0; n < nodes; n++) {
        qsort(gpu + n * gpn, (size_t)gpn, sizeof(char *), cmp_str);
        size_t len = 4;
        for (int k = 0; k < gpn; k++) len += strlen(gpu[n * gpn + k]) + 1;
        node[n] = malloc(len);
        node[n][0] = '\0';
        for (int k = 0; k < gpn; k++) strcat(strcat(node[n], gpu[n * gpn + k]), "|");
        total += len + 1;
    }
    qsort(node, (size_t)nodes, sizeof(char *), cmp_str);
    char *out = malloc(total);
    out[0] = '\0';
    for (int n = 0; n < nodes; n++) strcat(strcat(out, node[n]), "/"), free(node[n]);
    for (int g = 0; g < G; g++) free(gpu[g]);
    free(gpu), free(node), free(e);
    return out;
}

typedef struct {
    int E, R, groups, nodes, gpus, cross;
} shape;

static int layer_dups(const eplb_plan *p, int l)
{
    int S = p->num_replicas / p->num_gpus, d = 0;
    const int *x = p->phy2log + (size_t)l * p->num_replicas;
    for (int g = 0; g < p->num_gpus; g++)
        for (int a = 1; a < S; a++)
            for (int b = 0; b < a; b++)
                if (x[g * S + a] == x[g * S + b]) {
                    d++;
                    break;
                }
    return d;
}

static int on_gpu(const int *row, int S, int g, int e, int except)
{
    for (int k = 0; k < S; k++)
        if (k + g * S != except && row[g * S + k] == e) return 1;
    return 0;
}

/* A same-GPU duplicate that one exchange with another GPU of its node (any GPU when packing
 * is global) removes, creating none, with neither GPU's load then above the layer's largest
 * load (less a relative 1e-12 for sums in another order): the policy promises there is none.
 * Returns the first such slot, or -1. */
static int removable_duplicate(const double *wl, const eplb_plan *p, int l, int domain_gpus)
{
    int R = p->num_replicas, G = p->num_gpus, S = R / G, E = p->num_experts;
    const int *row = p->phy2log + (size_t)l * R;
    double *load = malloc(sizeof(double) * (size_t)G), mx = 0;
    int *cnt = calloc((size_t)E, sizeof(int)), found = -1;
    gpu_loads(wl, E, row, R, G, load);
    for (int r = 0; r < R; r++) cnt[row[r]]++;
    for (int g = 0; g < G; g++) mx = load[g] > mx ? load[g] : mx;
    for (int a = 0; a < R && found < 0; a++) {
        int g = a / S, ea = row[a];
        if (!on_gpu(row, S, g, ea, a)) continue;
        for (int j = g / domain_gpus * domain_gpus; j < (g / domain_gpus + 1) * domain_gpus && found < 0; j++) {
            if (j == g || on_gpu(row, S, j, ea, -1)) continue;
            for (int b = j * S; b < (j + 1) * S && found < 0; b++) {
                int eb = row[b];
                if (eb == ea || on_gpu(row, S, g, eb, -1)) continue;
                double d = wl[ea] / cnt[ea] - wl[eb] / cnt[eb];
                if (load[g] - d <= mx * (1 - 1e-12) && load[j] + d <= mx * (1 - 1e-12)) found = a;
            }
        }
    }
    free(load), free(cnt);
    return found;
}

int main(void)
{
    test_seed(0x9e3779b97f4a7c15ull);
    const shape shapes[] = {
        {12, 16, 4, 2, 8, 0},    {12, 16, 4, 2, 8, 1},   {16, 16, 4, 2, 4, 0},
        {32, 48, 8, 4, 8, 0},    {32, 48, 8, 4, 8, 1},   {32, 48, 4, 3, 12, 0},
        {64, 80, 8, 2, 16, 0},   {64, 96, 8, 4, 16, 1},  {60, 90, 6, 3, 15, 0},
        {256, 288, 8, 4, 32, 0}, {256, 288, 8, 4, 32, 1}, {256, 288, 8, 1, 32, 0},
        {256, 320, 8, 8, 64, 0}, {256, 320, 8, 16, 64, 0}, {24, 96, 4, 2, 8, 0},
        {8, 24, 2, 1, 4, 0},     {40, 60, 5, 2, 10, 0},
    };
    const int L = 6;
    long dup_layers = 0;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const shape *s = &shapes[k];
        for (int style = 0; style < 3; style++) {
            double *w = malloc(sizeof(double) * L * s->E);
            test_random_loads(w, L * s->E, style);
            eplb_config c = eplb_config_default(s->R, s->gpus);
            c.num_groups = s->groups;
            c.num_nodes = s->nodes;
            c.cross_nodes = s->cross;
            int hier = s->nodes > 1 && s->groups % s->nodes == 0;
            eplb_plan ref, bal;
            c.policy = EPLB_POLICY_DEEPSEEK;
            int st1 = eplb_rebalance(w, L, s->E, &c, &ref);
            c.policy = EPLB_POLICY_BALANCED;
            int st2 = eplb_rebalance(w, L, s->E, &c, &bal);
            char what[128];
            snprintf(what, sizeof what, "E=%d R=%d groups=%d nodes=%d gpus=%d%s loads#%d", s->E,
                     s->R, s->groups, s->nodes, s->gpus, s->cross ? " cross" : "", style);
            if (!tap_ok(st1 == EPLB_OK && st2 == EPLB_OK, "%s: both policies plan (%s)", what,
                        eplb_last_error()))
                continue;
            tap_is_int(eplb_plan_check(&ref), EPLB_OK, "%s: deepseek plan invariants", what);
            tap_is_int(eplb_plan_check(&bal), EPLB_OK, "%s: balanced plan invariants (%s)", what,
                       eplb_last_error());
            /* Duplicates, at every expert count: the balanced policy packs without them and
             * adopts deepseek's plan (improved) only where that is more balanced; so a layer
             * has one only where deepseek's has as many or more, and none that one exchange
             * within its node could remove without raising the layer's largest load. */
            int dups_ok = 1;
            for (int l = 0; l < L; l++) {
                int db = layer_dups(&bal, l), dr = layer_dups(&ref, l);
                const double *wl = w + (size_t)l * s->E;
                int slot = db ? removable_duplicate(wl, &bal, l, hier ? s->gpus / s->nodes : s->gpus) : -1;
                dup_layers += db > 0;
                if (db > dr || slot >= 0) {
                    tap_diag("layer %d: %d duplicates (deepseek's plan: %d); slot %d removable", l, db, dr, slot);
                    dups_ok = 0;
                }
            }
            tap_ok(dups_ok, "%s: a same-GPU duplicate only where deepseek's plan has one and no exchange "
                            "removes it without raising the max (%ld in all)", what, eplb_plan_duplicates(&bal));
            int never_worse = 1, bound_ok = 1, evaluators_agree = 1;
            for (int l = 0; l < L; l++) {
                const double *wl = w + (size_t)l * s->E;
                double mb = layer_max(wl, &bal, l), mr = layer_max(wl, &ref, l), b = -1, bd = -1;
                if (mb > mr) {
                    never_worse = 0;
                    tap_diag("layer %d: balanced max %.17g, deepseek max %.17g", l, mb, mr);
                }
                eplb_layer_stats ls;
                if (eplb_layer_evaluate(wl, &bal, l, &c, &ls) != EPLB_OK || !tap_close(ls.max_load, mb, 0, 1e-12) ||
                    ls.duplicates != layer_dups(&bal, l))
                    evaluators_agree = 0;
                /* The bound holds for the reference plan in its own mode too. */
                eplb_config cd = c;
                cd.policy = EPLB_POLICY_DEEPSEEK;
                if (eplb_lower_bound(wl, s->E, &c, &b) != EPLB_OK || eplb_lower_bound(wl, s->E, &cd, &bd) != EPLB_OK)
                    bound_ok = 0;
                /* |bound| <= max * (1 + 1e-12): sums in another order may round apart */
                if (b < 0 || bd < 0 || b > mb * (1 + 1e-12) || bd > mr * (1 + 1e-12)) bound_ok = 0;
            }
            tap_ok(never_worse, "%s: balanced max GPU load <= deepseek's on every layer", what);
            tap_ok(bound_ok, "%s: the lower bound is <= the max GPU load of both plans", what);
            tap_ok(evaluators_agree, "%s: the library's evaluator agrees with the test's (max load, duplicates)", what);

            /* Migration from the reference plan to the balanced one: the same plan again,
             * reordered; each node's GPUs hold what the fresh plan's did, up to whole nodes
             * (and GPUs within a node) trading places; the moves and traffic as counted here. */
            eplb_plan moved_plan;
            int st = eplb_rebalance(w, L, s->E, &c, &moved_plan);
            if (!tap_ok(st == EPLB_OK && memcmp(moved_plan.phy2log, bal.phy2log, sizeof(int) * (size_t)L * s->R) == 0,
                        "%s: planning again gives the same plan (%s)", what, eplb_last_error()))
                continue;
            long moved = -1, *traffic = calloc((size_t)s->gpus * s->gpus, sizeof(long));
            st = eplb_plan_migrate(&ref, &moved_plan, s->nodes, &moved, traffic);
            long changed = 0, sum = 0, *into = calloc((size_t)s->gpus, sizeof(long));
            int S = s->R / s->gpus, contents = 1, traffic_ok = 1;
            for (int l = 0; l < L; l++) {
                for (int r = 0; r < s->R; r++)
                    if (ref.phy2log[(size_t)l * s->R + r] != moved_plan.phy2log[(size_t)l * s->R + r])
                        changed++, into[r / S]++;
                char *x = canonical_layer(&bal, l, hier ? s->nodes : 1), *y = canonical_layer(&moved_plan, l, hier ? s->nodes : 1);
                contents &= strcmp(x, y) == 0;
                free(x), free(y);
            }
            for (int d = 0; d < s->gpus; d++) {
                long col = 0;
                for (int q = 0; q < s->gpus; q++) col += traffic[q * s->gpus + d];
                traffic_ok &= col == into[d];
                sum += col;
            }
            tap_ok(st == EPLB_OK && eplb_plan_check(&moved_plan) == EPLB_OK && contents,
                   "%s: migration keeps a valid plan whose %s hold what the fresh plan's did", what,
                   hier ? "nodes' GPUs" : "GPUs");
            tap_ok(moved == changed && sum == moved && traffic_ok,
                   "%s: migration's %ld moves are the slots that changed (%ld), its traffic into each GPU the "
                   "changes there", what, moved, changed);
            tap_near(balancedness(w, &moved_plan), balancedness(w, &bal), 0, 1e-12,
                     "%s: migration keeps balancedness (the test's evaluator)", what);
            free(into);
            long self = -1;
            eplb_plan again;
            st = eplb_rebalance(w, L, s->E, &c, &again);
            int st3 = st == EPLB_OK ? eplb_plan_migrate(&bal, &again, s->nodes, &self, NULL) : st;
            tap_ok(st == EPLB_OK && st3 == EPLB_OK && self == 0 && same_gpu_contents(&bal, &again),
                   "%s: migrating a plan onto itself moves nothing (%ld)", what, self);
            if (st == EPLB_OK) eplb_plan_free(&again);
            /* Starting from the running plan: from the balanced plan itself nothing moves;
             * from the reference plan, every layer stays within the tolerance of a fresh plan
             * and at least as balanced as the reference. */
            eplb_plan from;
            long m2 = -1;
            int kept = -1;
            st = eplb_rebalance_from(w, L, s->E, &c, &bal, 0.001, &from, &m2, NULL, &kept);
            /* (Where a layer kept the reference's duplicates, improving the current plan may
             * trade one away within the tolerance: then only validity is asked.) */
            int expect_kept = s->cross && s->nodes > 1 && s->groups % s->nodes == 0 ? 0 : L;
            if (eplb_plan_duplicates(&bal) == 0)
                tap_ok(st == EPLB_OK && m2 == 0 && kept == expect_kept,
                       "%s: re-planning from the same plan moves nothing (%ld moves, %d layers "
                       "kept)", what, m2, kept);
            else
                tap_ok(st == EPLB_OK && eplb_plan_check(&from) == EPLB_OK,
                       "%s: re-planning from the same plan (with duplicates) is valid", what);
            if (st == EPLB_OK) eplb_plan_free(&from);
            st = eplb_rebalance_from(w, L, s->E, &c, &ref, 0.001, &from, &m2, NULL, &kept);
            int within = st == EPLB_OK && eplb_plan_check(&from) == EPLB_OK;
            for (int l = 0; within && l < L; l++) {
                const double *wl = w + (size_t)l * s->E;
                double mf = layer_max(wl, &from, l), mb = layer_max(wl, &bal, l),
                       mr = layer_max(wl, &ref, l), mean = 0;
                for (int e = 0; e < s->E; e++) mean += wl[e] / s->gpus;
                /* balancedness within 0.001 of the fresh plan's (1e-12 for rounding) */
                if (mf > mr * (1 + 1e-12) || (mean > 0 && mean / mf < mean / mb - 0.001 - 1e-12)) within = 0;
            }
            tap_ok(within, "%s: re-planning from the reference plan: valid, never below it, "
                           "within 0.001 of a fresh plan (%ld moves, %d layers kept)",
                   what, m2, kept);
            if (st == EPLB_OK) eplb_plan_free(&from);
            eplb_plan_free(&moved_plan);
            free(traffic);
            eplb_plan_free(&ref);
            eplb_plan_free(&bal);
            free(w);
        }
    }
    tap_diag("layers with a same-GPU duplicate: %ld", dup_layers);
    return tap_done();
}
