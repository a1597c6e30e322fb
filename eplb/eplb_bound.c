/* eplb_bound.c: what no plan can beat. Greedy replication gives the least possible largest
 * replica load; a branch-and-bound search over group-to-node assignments gives the least
 * possible largest node cost in hierarchical mode. The default policy uses the same search
 * to choose where groups go, so in that mode it aims straight at the bound. */
#include "eplb/eplb_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * Greedy replication with a max-heap on per-replica load (ties: lower expert id first). */

/* The one of a and b with the larger key, the lower expert id on equal keys. */
static inline int heavier(const double *key, const int *ids, int a, int b)
{
    int take_b = (key[b] > key[a]) | ((key[b] == key[a]) & (ids[b] < ids[a]));
    return take_b ? b : a; /* a select, not a branch: the outcome is unpredictable */
}

/* Tournament tree over n leaves: tree[n + i] = i, tree[t] the heavier of tree[2t] and
 * tree[2t + 1], so tree[1] is the heaviest. key[i] caches w[ids[i]] / cnt[i], -1 for an
 * expert taken out at the cap (loads are >= 0). */
static void tree_build(const double *key, const int *ids, int *tree, int n)
{
    for (int i = 0; i < n; i++) tree[n + i] = i;
    for (int t = n - 1; t >= 1; t--) tree[t] = heavier(key, ids, tree[2 * t], tree[2 * t + 1]);
}

static void tree_update(const double *key, const int *ids, int *tree, int n, int i)
{
    for (int t = (n + i) / 2; t >= 1; t /= 2)
        tree[t] = heavier(key, ids, tree[2 * t], tree[2 * t + 1]);
}

double eplb_min_max_replica(const double *w, const int *ids, int n, int k, int cap,
                            int *cnt, int *tree, double *key)
{
    for (int i = 0; i < n; i++) {
        cnt[i] = 1;
        key[i] = w[ids[i]];
    }
    int left = k - n;
    for (int pass = 0; pass < 2 && left > 0; pass++) {
        if (pass == 1) { /* every expert is at the cap: going past it is unavoidable */
            cap = 0;
            for (int i = 0; i < n; i++) key[i] = w[ids[i]] / cnt[i];
        }
        tree_build(key, ids, tree, n);
        while (left > 0) {
            int top = tree[1];
            if (key[top] < 0) break; /* all taken out */
            if (cap > 0 && cnt[top] >= cap) {
                key[top] = -1;
            } else {
                cnt[top]++;
                key[top] = w[ids[top]] / cnt[top];
                left--;
            }
            tree_update(key, ids, tree, n, top);
        }
    }
    double mx = 0;
    for (int i = 0; i < n; i++) {
        double q = w[ids[i]] / cnt[i];
        if (q > mx) mx = q;
    }
    return mx;
}

/* ------------------------------------------------------------------------------------------
 * Group-to-node assignment. */

typedef struct {
    const double *w;
    const eplb_shape *s;
    int with_replicas;
    int G, N, per_node, group_size;
    double *gload, *gmax, *nload, *key;
    int *node_of, *fill, *best_node_of;
    int *ids, *cnt, *heap;
    double *replica_term; /* per set of groups (bit g: group g), -1 until computed; NULL when
                           * the groups are too many for a table */
    unsigned *set;        /* per node: its groups as a set, kept by the search (with a table) */
    double best;
} search;
enum { max_table_groups = 16 };

static double node_cost(search *S, int n)
{
    double c = S->nload[n] / (S->s->P / S->N);
    if (!S->with_replicas) return c;
    if (S->replica_term) { /* max(r, c) is c when the shortcut below would return c */
        double r = S->replica_term[S->set[n]];
        if (r >= 0) return r > c ? r : c;
    }
    /* Every replica is at most its expert's whole load: when no expert of the node outweighs
     * the node's mean GPU load, the replica term cannot win and is not computed. */
    double heaviest = 0;
    for (int g = 0; g < S->G; g++)
        if (S->node_of[g] == n && S->gmax[g] > heaviest) heaviest = S->gmax[g];
    if (heaviest <= c) return c;
    /* The replica term depends only on which groups the node holds: the search meets each
     * set many times, so it is computed once per set. */
    int m = 0;
    for (int g = 0; g < S->G; g++)
        if (S->node_of[g] == n)
            for (int j = 0; j < S->group_size; j++) S->ids[m++] = g * S->group_size + j;
    double r = eplb_min_max_replica(S->w, S->ids, m, S->s->R / S->N, 0, S->cnt, S->heap, S->key);
    if (S->replica_term) S->replica_term[S->set[n]] = r;
    return r > c ? r : c;
}

static void search_from(search *S, int g, int used, double lower)
{
    if (g == S->G) {
        if (lower < S->best) {
            S->best = lower;
            memcpy(S->best_node_of, S->node_of, (size_t)S->G * sizeof(int));
        }
        return;
    }
    for (int n = 0; n <= used && n < S->N; n++) {
        if (S->fill[n] == S->per_node) continue;
        S->node_of[g] = n;
        S->fill[n]++;
        S->nload[n] += S->gload[g];
        if (S->set) S->set[n] |= 1u << g;
        double c = S->fill[n] == S->per_node ? node_cost(S, n)
                                              : S->nload[n] / (S->s->P / S->N);
        double next = c > lower ? c : lower;
        if (next < S->best) search_from(S, g + 1, used + (n == used), next);
        S->nload[n] -= S->gload[g];
        S->fill[n]--;
        if (S->set) S->set[n] &= ~(1u << g);
        S->node_of[g] = -1;
    }
}

static double count_assignments(int G, int N)
{
    int per = G / N;
    double count = 1;
    for (int k = 0; k < N; k++) {
        int left = G - k * per - 1; /* the first free group picks per-1 partners among these */
        for (int i = 0; i < per - 1; i++) count = count * (left - i) / (i + 1);
    }
    return count;
}

double eplb_assign_groups(const double *w, const eplb_shape *s, int with_replicas,
                          int *node_of_group, int *exhaustive)
{
    search S = {0};
    S.w = w;
    S.s = s;
    S.with_replicas = with_replicas;
    S.G = s->groups;
    S.N = s->N;
    S.per_node = S.G / S.N;
    S.group_size = s->E / S.G;
    int En = s->E / s->N;
    S.gload = malloc((size_t)(2 * S.G + S.N + En) * sizeof(double));
    S.node_of = malloc((size_t)(3 * S.G + S.N + 4 * En) * sizeof(int)); /* heap: 2 En */
    if (!S.gload || !S.node_of) {
        free(S.gload);
        free(S.node_of);
        return -1;
    }
    S.gmax = S.gload + S.G;
    S.nload = S.gmax + S.G;
    S.key = S.nload + S.N;
    S.best_node_of = S.node_of + S.G;
    S.fill = S.best_node_of + S.G;
    S.ids = S.fill + S.N;
    S.cnt = S.ids + En;
    S.heap = S.cnt + En;
    for (int g = 0; g < S.G; g++) {
        double sum = 0, mx = 0;
        for (int j = 0; j < S.group_size; j++) {
            sum += w[g * S.group_size + j];
            if (w[g * S.group_size + j] > mx) mx = w[g * S.group_size + j];
        }
        S.gload[g] = sum;
        S.gmax[g] = mx;
        S.node_of[g] = -1;
    }
    for (int n = 0; n < S.N; n++) {
        S.fill[n] = 0;
        S.nload[n] = 0;
    }
    int full = count_assignments(S.G, S.N) <= EPLB_MAX_ASSIGNMENTS;
    if (full) {
        if (with_replicas && S.G <= max_table_groups) {
            S.replica_term = malloc(((size_t)1 << S.G) * sizeof(double));
            S.set = calloc((size_t)S.N, sizeof(unsigned));
            if (!S.replica_term || !S.set) {
                free(S.replica_term);
                free(S.set);
                free(S.gload);
                free(S.node_of);
                return -1;
            }
            for (size_t k = 0; k < (size_t)1 << S.G; k++) S.replica_term[k] = -1;
        }
        S.best = HUGE_VAL;
        search_from(&S, 0, 0, 0.0);
        free(S.replica_term);
        free(S.set);
        S.replica_term = NULL;
        S.set = NULL;
    } else {
        /* Heaviest group first onto the lightest node with room. */
        int *ord = malloc((size_t)S.G * sizeof(int));
        if (!ord) {
            free(S.gload);
            free(S.node_of);
            return -1;
        }
        for (int g = 0; g < S.G; g++) ord[g] = g;
        for (int a = 1; a < S.G; a++) /* insertion sort, heaviest first, stable */
            for (int b = a; b > 0 && S.gload[ord[b]] > S.gload[ord[b - 1]]; b--) {
                int t = ord[b];
                ord[b] = ord[b - 1];
                ord[b - 1] = t;
            }
        for (int k = 0; k < S.G; k++) {
            int g = ord[k], best = -1;
            for (int n = 0; n < S.N; n++)
                if (S.fill[n] < S.per_node && (best < 0 || S.nload[n] < S.nload[best])) best = n;
            S.node_of[g] = best;
            S.fill[best]++;
            S.nload[best] += S.gload[g];
        }
        free(ord);
        S.best = 0;
        for (int n = 0; n < S.N; n++) {
            double c = node_cost(&S, n);
            if (c > S.best) S.best = c;
        }
        memcpy(S.best_node_of, S.node_of, (size_t)S.G * sizeof(int));
    }
    if (node_of_group) memcpy(node_of_group, S.best_node_of, (size_t)S.G * sizeof(int));
    if (exhaustive) *exhaustive = full;
    double best = S.best;
    free(S.gload);
    free(S.node_of);
    return best;
}

/* ------------------------------------------------------------------------------------------
 * The bound. */

eplb_status eplb_lower_bound(const double *w, int num_experts, const eplb_config *cfg,
                             double *bound)
{
    EPLB_CHECK(eplb_config_check(cfg, num_experts));
    EPLB_CHECK(eplb_loads_check(w, 1, num_experts, 0));
    eplb_shape s = eplb_shape_of(cfg, num_experts);
    int *work = malloc((size_t)4 * s.E * sizeof(int)); /* ids, counts, 2E for the tree */
    double *key = malloc((size_t)s.E * sizeof(double));
    if (!work || !key) {
        free(work);
        free(key);
        return eplb_fail(EPLB_ERR_NOMEM, "out of memory computing a bound");
    }
    double total = 0, heaviest = 0;
    for (int e = 0; e < s.E; e++) {
        total += w[e];
        if (w[e] > heaviest) heaviest = w[e];
        work[e] = e;
    }
    double b = total / s.P;
    if (heaviest > b) { /* otherwise no replica can outweigh the mean */
        double m = eplb_min_max_replica(w, work, s.E, s.R, 0, work + s.E, work + 2 * s.E, key);
        if (m > b) b = m;
    }
    free(work);
    free(key);
    int strict = s.hierarchical && !(cfg->policy == EPLB_POLICY_BALANCED && cfg->cross_nodes);
    if (strict) {
        int exhaustive = 0;
        double a = eplb_assign_groups(w, &s, 1, NULL, &exhaustive);
        if (a < 0) return eplb_fail(EPLB_ERR_NOMEM, "out of memory computing a bound");
        if (!exhaustive) {
            /* The node holding the heaviest group also holds per_node - 1 other groups. */
            int G = s.groups, gs = s.E / G, per = G / s.N;
            double *gl = malloc((size_t)G * sizeof(double));
            if (!gl) return eplb_fail(EPLB_ERR_NOMEM, "out of memory computing a bound");
            int heavy = 0;
            for (int g = 0; g < G; g++) {
                gl[g] = 0;
                for (int j = 0; j < gs; j++) gl[g] += w[g * gs + j];
                if (gl[g] > gl[heavy]) heavy = g;
            }
            double node = gl[heavy];
            gl[heavy] = HUGE_VAL;
            for (int k = 0; k < per - 1; k++) { /* add the lightest remaining groups */
                int light = 0;
                for (int g = 1; g < G; g++)
                    if (gl[g] < gl[light]) light = g;
                node += gl[light];
                gl[light] = HUGE_VAL;
            }
            free(gl);
            a = node / (s.P / s.N);
        }
        if (a > b) b = a;
    }
    *bound = b;
    return EPLB_OK;
}
