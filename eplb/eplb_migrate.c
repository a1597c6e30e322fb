/* eplb_migrate.c: turning the running placement into a new plan with few weight copies. The
 * new plan's node contents are matched to nodes, then its GPU contents to the node's GPUs,
 * by maximum overlap (Hungarian method), then each GPU keeps an expert in the slot that already holds it. GPU contents
 * only move as a whole, so loads and balancedness do not change. */
#include "eplb/eplb_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Minimum-cost perfect assignment on an n x n matrix (row i -> column assign[i]); the O(n^3)
 * shortest-augmenting-path form with potentials. work: 4(n+1) longs + 2(n+1) ints. */
static void hungarian(const long *cost, int n, int *assign, long *lw, int *iw)
{
    long *u = lw, *v = lw + (n + 1), *minv = lw + 2 * (n + 1);
    int *p = iw, *way = iw + (n + 1);
    char *used = (char *)(lw + 3 * (n + 1));
    for (int j = 0; j <= n; j++) {
        u[j] = v[j] = 0;
        p[j] = way[j] = 0;
    }
    for (int i = 1; i <= n; i++) {
        p[0] = i;
        int j0 = 0;
        for (int j = 0; j <= n; j++) {
            minv[j] = LONG_MAX;
            used[j] = 0;
        }
        do {
            used[j0] = 1;
            int i0 = p[j0], j1 = 0;
            long delta = LONG_MAX;
            for (int j = 1; j <= n; j++)
                if (!used[j]) {
                    long cur = cost[(size_t)(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if (cur < minv[j]) {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if (minv[j] < delta) {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            for (int j = 0; j <= n; j++)
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            j0 = j1;
        } while (p[j0] != 0);
        do {
            int j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    for (int j = 1; j <= n; j++) assign[p[j] - 1] = j - 1;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Size of the multiset intersection of two sorted lists. */
static int overlap(const int *a, const int *b, int n)
{
    int i = 0, j = 0, k = 0;
    while (i < n && j < n) {
        if (a[i] == b[j]) {
            k++;
            i++;
            j++;
        } else if (a[i] < b[j]) i++;
        else j++;
    }
    return k;
}

eplb_status eplb_plan_migrate(const eplb_plan *cur, eplb_plan *next, int num_nodes,
                              long *moved, long *traffic)
{
    if (!cur || !next || !cur->phy2log || !next->phy2log)
        return eplb_fail(EPLB_ERR_INVALID, "migration needs both plans");
    if (cur->num_layers != next->num_layers || cur->num_replicas != next->num_replicas ||
        cur->num_gpus != next->num_gpus || cur->num_experts != next->num_experts)
        return eplb_fail(EPLB_ERR_INVALID,
                         "the plans differ in shape (%d x %d replicas on %d GPUs, %d experts vs "
                         "%d x %d on %d, %d): migrate between plans of the same shape",
                         cur->num_layers, cur->num_replicas, cur->num_gpus, cur->num_experts,
                         next->num_layers, next->num_replicas, next->num_gpus, next->num_experts);
    const int L = next->num_layers, R = next->num_replicas, P = next->num_gpus, S = R / P;
    if (num_nodes < 1 || P % num_nodes != 0)
        return eplb_fail(EPLB_ERR_INVALID, "GPUs (%d) must be a multiple of nodes (%d)", P,
                         num_nodes);
    const int Pn = P / num_nodes;
    int *sorted_new = malloc((size_t)R * sizeof(int)), *sorted_cur = malloc((size_t)R * sizeof(int));
    int *row = malloc((size_t)R * sizeof(int)), *assign = malloc((size_t)Pn * sizeof(int));
    int *taken = malloc((size_t)S * sizeof(int));
    long *cost = malloc((size_t)Pn * Pn * sizeof(long));
    long *lw = malloc((size_t)4 * (Pn + 1) * sizeof(long));
    int *iw = malloc((size_t)2 * (Pn + 1) * sizeof(int));
    const int N = num_nodes;
    int *node_cur = malloc((size_t)R * sizeof(int)), *nassign = malloc((size_t)N * sizeof(int));
    long *ncost = malloc((size_t)N * N * sizeof(long));
    long *nlw = malloc((size_t)4 * (N + 1) * sizeof(long));
    int *niw = malloc((size_t)2 * (N + 1) * sizeof(int));
    eplb_status st = EPLB_OK;
    if (!sorted_new || !sorted_cur || !row || !assign || !taken || !cost || !lw || !iw ||
        !node_cur || !nassign || !ncost || !nlw || !niw) {
        st = eplb_fail(EPLB_ERR_NOMEM, "out of memory planning a migration");
        goto done;
    }
    if (moved) *moved = 0;
    if (traffic) memset(traffic, 0, (size_t)P * P * sizeof(long));
    for (int l = 0; l < L; l++) {
        const int *c = cur->phy2log + (size_t)l * R;
        int *nx = next->phy2log + (size_t)l * R;
        memcpy(sorted_new, nx, (size_t)R * sizeof(int));
        memcpy(sorted_cur, c, (size_t)R * sizeof(int));
        for (int g = 0; g < P; g++) {
            qsort(sorted_new + g * S, (size_t)S, sizeof(int), cmp_int);
            qsort(sorted_cur + g * S, (size_t)S, sizeof(int), cmp_int);
        }
        /* Which new node content goes to which node (whole nodes keep groups together),
         * then which new GPU content goes to which GPU of that node: most experts kept. */
        if (num_nodes > 1) {
            const int Rn = R / num_nodes;
            memcpy(row, sorted_new, (size_t)R * sizeof(int));
            for (int n = 0; n < num_nodes; n++) {
                qsort(row + n * Rn, (size_t)Rn, sizeof(int), cmp_int);
                memcpy(node_cur + n * Rn, c + n * Rn, (size_t)Rn * sizeof(int));
                qsort(node_cur + n * Rn, (size_t)Rn, sizeof(int), cmp_int);
            }
            for (int a = 0; a < num_nodes; a++)
                for (int b = 0; b < num_nodes; b++)
                    ncost[(size_t)a * num_nodes + b] =
                        -overlap(row + a * Rn, node_cur + b * Rn, Rn);
            hungarian(ncost, num_nodes, nassign, nlw, niw);
            memcpy(row, sorted_new, (size_t)R * sizeof(int));
            for (int a = 0; a < num_nodes; a++)
                memcpy(sorted_new + nassign[a] * Rn, row + a * Rn, (size_t)Rn * sizeof(int));
        }
        for (int n = 0; n < num_nodes; n++) {
            for (int a = 0; a < Pn; a++)
                for (int b = 0; b < Pn; b++)
                    cost[(size_t)a * Pn + b] = -overlap(sorted_new + (n * Pn + a) * S,
                                                        sorted_cur + (n * Pn + b) * S, S);
            hungarian(cost, Pn, assign, lw, iw);
            for (int a = 0; a < Pn; a++)
                memcpy(row + (n * Pn + assign[a]) * S, sorted_new + (n * Pn + a) * S,
                       (size_t)S * sizeof(int));
        }
        /* Within each GPU, an expert already in a slot stays in that slot. */
        for (int g = 0; g < P; g++) {
            int *want = row + g * S; /* the GPU's new experts, ascending */
            for (int k = 0; k < S; k++) taken[k] = 0;
            for (int k = 0; k < S; k++) nx[g * S + k] = -1;
            for (int k = 0; k < S; k++)
                for (int t = 0; t < S; t++)
                    if (!taken[t] && want[t] == c[g * S + k]) {
                        taken[t] = 1;
                        nx[g * S + k] = want[t];
                        break;
                    }
            int t = 0;
            for (int k = 0; k < S; k++) {
                if (nx[g * S + k] >= 0) continue;
                while (taken[t]) t++;
                taken[t] = 1;
                int e = want[t];
                nx[g * S + k] = e;
                if (moved) (*moved)++;
                if (traffic) { /* source: this GPU, then its node, then the lowest index */
                    int src = -1;
                    for (int q = 0; q < S && src < 0; q++)
                        if (c[g * S + q] == e) src = g;
                    for (int h = (g / Pn) * Pn; h < (g / Pn + 1) * Pn && src < 0; h++)
                        for (int q = 0; q < S; q++)
                            if (c[h * S + q] == e) {
                                src = h;
                                break;
                            }
                    for (int r = 0; r < R && src < 0; r++)
                        if (c[r] == e) src = r / S;
                    if (src >= 0) traffic[(size_t)src * P + g]++;
                }
            }
        }
    }
    st = eplb_plan_finish(next, NULL);
done:
    free(sorted_new);
    free(sorted_cur);
    free(row);
    free(assign);
    free(taken);
    free(cost);
    free(lw);
    free(iw);
    free(node_cur);
    free(nassign);
    free(ncost);
    free(nlw);
    free(niw);
    return st;
}
