/* eplb_deepseek.c: the reference policy of deepseek-ai/EPLB (rebalance_experts), one layer at a
 * time, in float32 and in the reference's order of operations so that the plans are equal
 * element for element: groups packed onto nodes, experts replicated within each node by
 * repeatedly splitting the heaviest replica, replicas packed onto the node's GPUs. */
#include "eplb/eplb_internal.h"

#include <math.h>
#include <string.h>

/* idx[0..n) = 0..n-1 ordered by v descending, in no particular order among equal values
 * (for the largest pack weight only, see below); v >= 0 (-0 counts as 0). tmp holds n ints,
 * key 2n unsigned. */
static void radix_desc(const float *v, int n, int *idx, int *tmp, unsigned *key)
{
    unsigned *ka = key, *kb = key + n;
    int *ia = idx, *ib = tmp;
    for (int k = 0; k < n; k++) {
        unsigned u = 0;
        if (v[k] != 0.0f) memcpy(&u, &v[k], sizeof u);
        ka[k] = ~u;
        ia[k] = k;
    }
    for (int shift = 0; shift < 32; shift += 8) {
        int count[256] = {0};
        for (int k = 0; k < n; k++) count[(ka[k] >> shift) & 255]++;
        if (count[(ka[0] >> shift) & 255] == n) continue;
        for (int d = 0, sum = 0; d < 256; d++) {
            int c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (int k = 0; k < n; k++) {
            int at = count[(ka[k] >> shift) & 255]++;
            kb[at] = ka[k];
            ib[at] = ia[k];
        }
        unsigned *tk = ka;
        ka = kb;
        kb = tk;
        int *ti = ia;
        ia = ib;
        ib = ti;
    }
    if (ia != idx) memcpy(idx, ia, (size_t)n * sizeof(int));
}

/* The lighter of packs a and b, the lower index on equal weights (the reference's min). */
static inline int lighter(const float *pw, int a, int b)
{
    int take_b = (pw[b] < pw[a]) | ((pw[b] == pw[a]) & (b < a));
    return take_b ? b : a; /* a select, not a branch: the outcome is unpredictable */
}

/* Packs n items onto `packs` packs of n / packs items each, heaviest first onto the lightest
 * pack that still has room (the first such pack on equal weight); the reference's
 * balanced_packing. The lightest pack comes from a tournament tree (winner[1] the root, the
 * packs its leaves), whose updates compare without branching; a full pack weighs +inf.
 * When pack_index is NULL, only the largest pack weight is computed (and returned); items are
 * then sorted by any means, as equal values may come in any order without changing the
 * pack weights. */
static float pack_items_in(const float *w, int n, int packs, eplb_scratch *sc, int *pack_index,
                           int *rank_in_pack)
{
    int per = n / packs;
    float mx = 0.0f;
    if (per == 1) {
        for (int k = 0; k < n; k++) {
            if (pack_index) {
                pack_index[k] = k;
                rank_in_pack[k] = 0;
            }
            if (w[k] > mx) mx = w[k];
        }
        return mx;
    }
    int *order = sc->i[10], *pack_items = sc->i[11];
    if (pack_index || n < 128) /* the radix sort's fixed cost pays off on many items only */
        eplb_sort_desc_like_torch(w, n, order, sc->sort_work);
    else
        radix_desc(w, n, order, sc->i[13], (unsigned *)sc->sort_work);
    int leaves = 1;
    while (leaves < packs) leaves *= 2;
    /* sort_work: the sorts above use its first 8n bytes; leaves < 2n */
    int *winner = (int *)(void *)((char *)sc->sort_work + (size_t)sc->n * 8);
    float *pw = (float *)(void *)((char *)sc->sort_work + (size_t)sc->n * 24);
    for (int p = 0; p < leaves; p++) {
        pw[p] = p < packs ? 0.0f : HUGE_VALF;
        winner[leaves + p] = p;
        if (p < packs) pack_items[p] = 0;
    }
    for (int t = leaves - 1; t >= 1; t--) winner[t] = lighter(pw, winner[2 * t], winner[2 * t + 1]);
    for (int k = 0; k < n; k++) {
        int item = order[k], best = winner[1];
        if (pack_index) {
            pack_index[item] = best;
            rank_in_pack[item] = pack_items[best];
        }
        pw[best] += w[item];
        if (pw[best] > mx) mx = pw[best];
        if (++pack_items[best] == per) pw[best] = HUGE_VALF;
        for (int t = (leaves + best) / 2; t >= 1; t /= 2)
            winner[t] = lighter(pw, winner[2 * t], winner[2 * t + 1]);
    }
    return mx;
}

static void balanced_packing(const float *w, int n, int packs, eplb_scratch *sc, int *pack_index,
                             int *rank_in_pack)
{
    pack_items_in(w, n, packs, sc, pack_index, rank_in_pack);
}

/* The one of experts a and b with the larger per-replica load, the lower index on equal
 * loads: the reference's argmax, which returns the first index among equal maxima. */
static inline int heavier_replica(const float *q, int a, int b)
{
    int take_b = (q[b] > q[a]) | ((q[b] == q[a]) & (b < a));
    return take_b ? b : a; /* a select, not a branch: the outcome is unpredictable */
}

/* Gives num_phy - n extra replicas, each to the expert with the largest per-replica load
 * (float32 quotient, lowest index on ties); the reference's replicate_experts. The argmax
 * comes from a tournament tree (winner[1] the root, the experts its leaves, padding at
 * -inf) in sc->sort_work, which no caller uses meanwhile: winner 2 * leaves ints, then
 * the loads, leaves floats (leaves < 2n). */
static void replicate(const float *w, int n, int num_phy, int *phy2mlog, int *rank, int *cnt,
                      eplb_scratch *sc)
{
    int leaves = 1;
    while (leaves < n) leaves *= 2;
    int *winner = sc->sort_work;
    float *q = (float *)(void *)((char *)sc->sort_work + (size_t)sc->n * 16);
    for (int m = 0; m < leaves; m++) {
        if (m < n) {
            phy2mlog[m] = m;
            rank[m] = 0;
            cnt[m] = 1;
        }
        q[m] = m < n ? w[m] / 1.0f : -HUGE_VALF;
        winner[leaves + m] = m;
    }
    for (int t = leaves - 1; t >= 1; t--)
        winner[t] = heavier_replica(q, winner[2 * t], winner[2 * t + 1]);
    for (int p = n; p < num_phy; p++) {
        int best = winner[1];
        phy2mlog[p] = best;
        rank[p] = cnt[best];
        cnt[best]++;
        q[best] = w[best] / (float)cnt[best];
        for (int t = (leaves + best) / 2; t >= 1; t /= 2)
            winner[t] = heavier_replica(q, winner[2 * t], winner[2 * t + 1]);
    }
}

/* The reference's step 1: groups onto nodes by their float32 load sums (group_w[g]), giving
 * each group's pack and rank (gpack, grank) and the node-major order of experts (mlog2log).
 * Which groups share a node depends on the tie order of equal group loads, so this always
 * runs the reference's own packing (a handful of groups). */
static void groups_to_nodes(const double *w, int groups, int nodes, int group_size, eplb_scratch *sc,
                            float *group_w, int *gpack, int *grank, int *mlog2log)
{
    const int groups_per_node = groups / nodes;
    for (int g = 0; g < groups; g++) {
        float sum = 0.0f;
        for (int j = 0; j < group_size; j++) sum += (float)w[g * group_size + j];
        group_w[g] = sum;
    }
    balanced_packing(group_w, groups, nodes, sc, gpack, grank);
    for (int g = 0; g < groups; g++)
        for (int j = 0; j < group_size; j++)
            mlog2log[(gpack[g] * groups_per_node + grank[g]) * group_size + j] = g * group_size + j;
}

eplb_status eplb_deepseek_layer(const double *w, const eplb_shape *s, eplb_scratch *sc,
                                int *phy2log, int *rank)
{
    /* The reference chooses its mode by groups % nodes alone (one node is the global case). */
    int groups = s->groups, nodes = s->N;
    if (groups % nodes != 0) groups = nodes = 1;
    const int E = s->E, R = s->R, P = s->P;
    const int group_size = E / groups;
    const int En = E / nodes, Rn = R / nodes, Pn = P / nodes, per_gpu = R / P;

    float *group_w = sc->f[0], *node_w = sc->f[1], *phy_w = sc->f[2];
    int *gpack = sc->i[0], *grank = sc->i[1], *mlog2log = sc->i[2];
    int *phy2mlog = sc->i[3], *phyrank = sc->i[4], *mcnt = sc->i[5];
    int *pack = sc->i[6], *rip = sc->i[7];

    /* Step 1: groups onto nodes by their float32 load sums. */
    groups_to_nodes(w, groups, nodes, group_size, sc, group_w, gpack, grank, mlog2log);

    for (int n = 0; n < nodes; n++) {
        /* Step 2: replicas within the node. */
        for (int m = 0; m < En; m++) node_w[m] = (float)w[mlog2log[n * En + m]];
        replicate(node_w, En, Rn, phy2mlog, phyrank, mcnt, sc);
        /* Step 3: the node's replicas onto its GPUs. */
        for (int p = 0; p < Rn; p++) phy_w[p] = node_w[phy2mlog[p]] / (float)mcnt[phy2mlog[p]];
        balanced_packing(phy_w, Rn, Pn, sc, pack, rip);
        for (int p = 0; p < Rn; p++) {
            int slot = n * Rn + pack[p] * per_gpu + rip[p];
            phy2log[slot] = mlog2log[n * En + phy2mlog[p]];
            rank[slot] = phyrank[p];
        }
    }
    return EPLB_OK;
}

/* ------------------------------------------------------------------------------------------
 * The reference's largest GPU load alone, for the balanced policy's floor. Packing heaviest
 * first feeds the packs the same sequence of values whatever order equal values come in, so
 * the pack weights (float32, as the reference sums them) do not depend on the tie order of
 * the sort: any correct sort gives them, here a radix sort, with neither the exact introsort
 * nor the slot bookkeeping. */

/* The largest pack weight of the reference's balanced_packing of w[0..n) onto `packs`
 * packs. */
static float packing_max(const float *w, int n, int packs, eplb_scratch *sc)
{
    return pack_items_in(w, n, packs, sc, NULL, NULL);
}

double eplb_deepseek_max_f32(const double *w, const eplb_shape *s, eplb_scratch *sc,
                             double below)
{
    int groups = s->groups, nodes = s->N;
    if (groups % nodes != 0) groups = nodes = 1;
    const int E = s->E, R = s->R, P = s->P;
    const int group_size = E / groups;
    const int En = E / nodes, Rn = R / nodes, Pn = P / nodes;
    float *group_w = sc->f[0], *node_w = sc->f[1], *phy_w = sc->f[2];
    int *gpack = sc->i[0], *grank = sc->i[1], *mlog2log = sc->i[2];
    int *phy2mlog = sc->i[3], *phyrank = sc->i[4], *mcnt = sc->i[5];

    groups_to_nodes(w, groups, nodes, group_size, sc, group_w, gpack, grank, mlog2log);
    /* A node's GPUs carry its load: when the heaviest node's mean GPU load already exceeds
     * `below`, so does the answer, and it is not worth computing exactly. */
    float mx = 0.0f;
    if (nodes > 1) {
        for (int n = 0; n < nodes; n++) {
            float load = 0.0f;
            for (int g = 0; g < groups; g++)
                if (gpack[g] == n) load += group_w[g];
            if (load / (float)Pn > mx) mx = load / (float)Pn;
        }
        /* the float sums are within (group_size + groups + 2) * 2^-24 of the exact ones */
        float lower = mx * (1 - (group_size + groups + 4) * 0x1p-23);
        if (lower > below) return lower;
        mx = 0.0f;
    }
    for (int n = 0; n < nodes; n++) {
        for (int m = 0; m < En; m++) node_w[m] = (float)w[mlog2log[n * En + m]];
        replicate(node_w, En, Rn, phy2mlog, phyrank, mcnt, sc);
        for (int p = 0; p < Rn; p++) phy_w[p] = node_w[phy2mlog[p]] / (float)mcnt[phy2mlog[p]];
        float m = packing_max(phy_w, Rn, Pn, sc);
        if (m > mx) mx = m;
    }
    return mx;
}
