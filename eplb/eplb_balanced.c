/* eplb_balanced.c: the default policy for one layer. Replicas go to the experts with the
 * largest per-replica load (which minimises the heaviest replica), the replicas are packed
 * heaviest first onto the lightest GPU that does not hold the expert yet, and swaps between
 * the most loaded GPU and the others then lower the maximum until no single swap can. The
 * reference plan of the same layer is a floor: if it is better, it is improved the same way.
 * Heaps, sorted views and a table of which GPU holds which expert keep a layer at O(R log R);
 * the refinement steps count against a work limit so that no shape escapes that bound. */
#include "eplb/eplb_internal.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One layer's replicas and where they are. Items of one expert are consecutive. */
typedef struct {
    const double *w;
    const eplb_shape *s;
    int S, Pn;          /* slots per GPU, GPUs per node */
    int strict;         /* every replica stays on its expert's node */
    int nitems;
    int *expert;        /* per item */
    int *home;          /* per item: the node it must stay on, -1 for anywhere */
    int *gpu;           /* per item */
    int *first;         /* per expert: its first item */
    int *cnt;           /* per expert: its replica count */
    double *load;       /* per item */
    int *slot;          /* per GPU, S items */
    int *fill;          /* per GPU */
    double *gload;      /* per GPU */
    double *sload;      /* per slot: its item's load (kept during improvement, with slots
                         * sorted ascending), contiguous for the exchange searches */
    int *by_load;       /* GPU ids, ascending load (kept sorted during improvement) */
    int *pos;           /* per GPU: its index in by_load */
    int *spot;          /* per item: its slot, g * S + k */
    eplb_placed *placed; /* which GPUs hold which experts */

    void *load_scratch; /* nitems keyed, for sorting */
    /* Refinement (repairs, exchanges, count moves) counts its steps in `work` and stops once
     * they pass `budget`, so that a layer costs O(R log R) whatever its shape; `cut_short`
     * says it stopped there. Construction is not counted: it is O(R log R) by itself. */
    long work, budget;
    int cut_short;
    int layered; /* the packing put whole layers first (see pack_by_differencing) */
} packing;

/* Refinement steps allowed per layer: 4 R log2 R + 2 000 000. The real loads of the tests
 * need at most 60 000 at every typical shape, random small shapes at most 180 000, so only
 * very large layers meet it (about a second of refinement at a million replicas). */
static long work_budget(const eplb_shape *s)
{
    long R = s->R, log2r = 1;
    while ((1L << log2r) < R) log2r++;
    return 4 * R * log2r + 2000000L;
}

static int over_budget(packing *pk)
{
    if (pk->work > pk->budget) pk->cut_short = 1;
    return pk->cut_short;
}

/* A packing over the scratch's arrays; strict: every replica stays on its expert's node. */
static void packing_init(packing *pk, const double *w, const eplb_shape *s, eplb_scratch *sc, int strict)
{
    *pk = (packing){0};
    pk->w = w;
    pk->s = s;
    pk->S = s->slots;
    pk->Pn = s->hierarchical ? s->P / s->N : s->P;
    pk->strict = strict;
    pk->expert = sc->i[0];
    pk->home = sc->i[1];
    pk->gpu = sc->i[2];
    pk->first = sc->i[3];
    pk->cnt = sc->i[4];
    pk->slot = sc->i[5];
    pk->fill = sc->i[6];
    pk->load = sc->d[0];
    pk->gload = sc->d[1];
    pk->by_load = sc->i[20];
    pk->pos = sc->i[21];
    pk->sload = sc->d[6];
    pk->spot = sc->i[30];
    pk->placed = sc->placed;
    pk->budget = work_budget(s);
    pk->load_scratch = (char *)sc->sort_work + (size_t)sc->n * 16;
}

/* Whether GPU g holds a replica of expert e other than except_item (-1: none excepted). */
static int on_gpu(const packing *pk, int e, int g, int except_item)
{
    int n = eplb_placed_count(pk->placed, e, g);
    if (except_item >= 0 && pk->gpu[except_item] == g && pk->expert[except_item] == e) n--;
    return n > 0;
}

static int may_live_on(const packing *pk, int item, int g)
{
    return pk->home[item] < 0 || g / pk->Pn == pk->home[item];
}

/* Every GPU empty, no item placed. */
static void packing_empty(packing *pk)
{
    for (int g = 0; g < pk->s->P; g++) {
        pk->fill[g] = 0;
        pk->gload[g] = 0;
    }
    eplb_placed_clear(pk->placed);
}

static void put(packing *pk, int item, int g)
{
    int r = g * pk->S + pk->fill[g]++;
    pk->slot[r] = item;
    pk->spot[item] = r;
    pk->gpu[item] = g;
    pk->gload[g] += pk->load[item];
    eplb_placed_add(pk->placed, pk->expert[item], g);
}

/* Exchanges item a (on GPU ga, at slot index ka) with item b (on gb, at kb). */
static void swap_items(packing *pk, int ga, int ka, int gb, int kb)
{
    int a = pk->slot[ga * pk->S + ka], b = pk->slot[gb * pk->S + kb];
    pk->slot[ga * pk->S + ka] = b;
    pk->slot[gb * pk->S + kb] = a;
    pk->spot[b] = ga * pk->S + ka;
    pk->spot[a] = gb * pk->S + kb;
    pk->gpu[a] = gb;
    pk->gpu[b] = ga;
    eplb_placed_remove(pk->placed, pk->expert[a], ga);
    eplb_placed_remove(pk->placed, pk->expert[b], gb);
    eplb_placed_add(pk->placed, pk->expert[a], gb);
    eplb_placed_add(pk->placed, pk->expert[b], ga);
    double d = pk->load[a] - pk->load[b];
    pk->gload[ga] -= d;
    pk->gload[gb] += d;
}

/* Whether moving a from ga to gb and b from gb to ga keeps every rule: each may live where it
 * goes, and the exchange adds no same-GPU duplicate, counted over both GPUs. In a plan
 * without duplicates that is: neither expert is on the other GPU already. When the replicas
 * went in whole layers (every expert on every GPU it may use), a replica that duplicates its
 * expert may still change places with another such one. */
static int swap_allowed(const packing *pk, int a, int ga, int b, int gb)
{
    int ea = pk->expert[a], eb = pk->expert[b];
    if (ea == eb) return 0;
    if (!may_live_on(pk, a, gb) || !may_live_on(pk, b, ga)) return 0;
    int added = on_gpu(pk, ea, gb, -1) + on_gpu(pk, eb, ga, -1);
    if (added == 0) return 1;
    if (!pk->layered) return 0;
    int removed = (eplb_placed_count(pk->placed, ea, ga) > 1) +
                  (eplb_placed_count(pk->placed, eb, gb) > 1);
    return added <= removed;
}

static double max_load(const packing *pk, int *where)
{
    int arg = 0;
    for (int g = 1; g < pk->s->P; g++)
        if (pk->gload[g] > pk->gload[arg]) arg = g;
    if (where) *where = arg;
    return pk->gload[arg];
}

/* ------------------------------------------------------------------------------------------
 * Construction */

typedef struct {
    double load;
    int item;
} keyed;

/* order[0..n) heaviest first (ties: lower item first), given in item order. A stable LSD
 * radix sort on the bits of the loads (non-negative doubles order as their bit patterns):
 * no comparison to mispredict, which matters more than the count of operations at these
 * sizes. tmp holds n keyed. */
typedef struct {
    uint64_t key; /* complemented bits of the load: ascending key = descending load */
    int item;
} radix_rec;
_Static_assert(sizeof(radix_rec) == sizeof(keyed), "radix records reuse the keyed buffers");

static void sort_heavier_first(keyed *order, int n, keyed *tmp)
{
    radix_rec *a = (radix_rec *)(void *)order, *b = (radix_rec *)(void *)tmp;
    if (n < 1) return;
    for (int k = 0; k < n; k++) {
        double l = order[k].load;
        int it = order[k].item;
        uint64_t u = 0;
        if (l != 0) memcpy(&u, &l, sizeof u); /* -0.0 sorts as 0 */
        a[k].key = ~u;
        a[k].item = it;
    }
    for (int shift = 0; shift < 64; shift += 8) {
        int count[256] = {0};
        for (int k = 0; k < n; k++) count[(a[k].key >> shift) & 255]++;
        if (count[(a[0].key >> shift) & 255] == n) continue; /* one digit for all: no move */
        for (int d = 0, sum = 0; d < 256; d++) {
            int c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (int k = 0; k < n; k++) b[count[(a[k].key >> shift) & 255]++] = a[k];
        radix_rec *t = a;
        a = b;
        b = t;
    }
    for (int k = n - 1; k >= 0; k--) { /* back to loads, into order (a may be either buffer) */
        uint64_t u = ~a[k].key;
        int it = a[k].item;
        double l;
        memcpy(&l, &u, sizeof l);
        order[k].load = l;
        order[k].item = it;
    }
}

/* Heaviest replica first onto the lightest GPU it may use that does not hold its expert. A
 * replica free to go anywhere only takes a node's slot when the node keeps enough slots for
 * the replicas bound to it. GPUs with room wait in min-heaps by (load, index): one per node
 * for the replicas bound there, one over the nodes still open to free replicas; a replica
 * pops GPUs until one does not hold its expert (the first popped is the fallback when all do)
 * and pushes the others back. Returns the number of replicas that had to join their expert. */
typedef struct {
    int *node_ids, *free_ids; /* heap storage, P ids each: node n's heap from n * Pn */
    int *node_size;           /* per node: its heap's size */
    int *node_pos, *free_pos; /* per GPU: place in its node's heap, in the free heap */
    int *popped;              /* P ids */
    double *key;              /* per GPU: minus its load */
} greedy_heaps;

static eplb_heap node_heap(const greedy_heaps *gh, int n, int Pn)
{
    eplb_heap h;
    eplb_heap_init(&h, gh->node_ids + n * Pn, gh->node_pos, gh->key);
    h.n = gh->node_size[n];
    return h;
}

static int pack_greedy(packing *pk, keyed *order, int *node_free, int *bound_left,
                       const greedy_heaps *gh)
{
    const int P = pk->s->P, N = pk->s->hierarchical ? pk->s->N : 1, Pn = P / N, S = pk->S;
    packing_empty(pk);
    for (int n = 0; n < N; n++) {
        node_free[n] = Pn * S;
        bound_left[n] = 0;
    }
    /* Whole layers first when every expert has a replica for every GPU (as in differencing),
     * the first replica of each (bound to its node) on that node. */
    int layered = 1, m = 0;
    for (int e = 0; e < pk->s->E && layered; e++) layered = pk->cnt[e] >= P;
    pk->layered = layered;
    for (int it = 0; it < pk->nitems; it++) {
        int e = pk->expert[it], k = it - pk->first[e], h = pk->home[it];
        pk->gpu[it] = -1;
        if (layered && k < (pk->cnt[e] / P - 1) * P) {
            int from = pk->home[pk->first[e]] >= 0 ? pk->home[pk->first[e]] * Pn : 0;
            put(pk, it, (from + k) % P);
            node_free[((from + k) % P) / Pn]--;
            continue;
        }
        order[m].load = pk->load[it];
        order[m].item = it;
        m++;
        if (h >= 0) bound_left[h]++;
    }
    sort_heavier_first(order, m, (keyed *)pk->load_scratch);
    for (int g = 0; g < P; g++) {
        gh->key[g] = -pk->gload[g];
        gh->free_pos[g] = -1;
        gh->node_pos[g] = -1;
    }
    for (int n = 0; n < N; n++) {
        eplb_heap h = node_heap(gh, n, Pn);
        int room = 0;
        for (int g = n * Pn; g < (n + 1) * Pn; g++)
            if (pk->fill[g] < S) gh->popped[n * Pn + room++] = g;
        eplb_heap_build(&h, gh->popped + n * Pn, room);
        gh->node_size[n] = h.n;
    }
    eplb_heap free_heap;
    eplb_heap_init(&free_heap, gh->free_ids, gh->free_pos, gh->key);
    int open = 0;
    for (int g = 0; g < P; g++)
        if (pk->fill[g] < S && node_free[g / Pn] > bound_left[g / Pn]) gh->popped[open++] = g;
    eplb_heap_build(&free_heap, gh->popped, open);

    int forced = 0;
    for (int k = 0; k < m; k++) {
        int it = order[k].item, e = pk->expert[it], h = pk->home[it];
        eplb_heap home_heap, *H = &free_heap;
        if (h >= 0) {
            home_heap = node_heap(gh, h, Pn);
            H = &home_heap;
        }
        int best = -1, best_dup = -1, npop = 0;
        int everywhere = eplb_placed_gpus(pk->placed, e) >= P; /* no GPU without it */
        while (H->n > 0) {
            int g = eplb_heap_pop(H);
            gh->popped[npop++] = g;
            if (best_dup < 0) best_dup = g;
            if (everywhere) break;
            if (!on_gpu(pk, e, g, -1)) {
                best = g;
                break;
            }
        }
        for (int x = 0; x < npop; x++) eplb_heap_push(H, gh->popped[x]);
        if (h >= 0) gh->node_size[h] = home_heap.n;
        if (best < 0) {
            best = best_dup;
            forced++;
        }
        if (best < 0) return -1;
        put(pk, it, best);
        int n = best / Pn;
        node_free[n]--;
        if (h >= 0) bound_left[h]--;
        eplb_heap nh = node_heap(gh, n, Pn);
        if (pk->fill[best] == S) {
            eplb_heap_remove(&nh, best);
            if (gh->free_pos[best] >= 0) eplb_heap_remove(&free_heap, best);
        } else {
            eplb_heap_update(&nh, best, -pk->gload[best]);
            if (gh->free_pos[best] >= 0) eplb_heap_update(&free_heap, best, -pk->gload[best]);
        }
        gh->node_size[n] = nh.n;
        if (h < 0 && node_free[n] <= bound_left[n]) /* closed to free replicas from now on */
            for (int g = n * Pn; g < (n + 1) * Pn; g++)
                if (gh->free_pos[g] >= 0) eplb_heap_remove(&free_heap, g);
    }
    return forced;
}

/* Largest differencing for equal-sized bins (Michiels, Korst, Aarts and van Leeuwen): the
 * sorted items are cut into tuples of `bins` items, each a partial solution with one item per
 * bin; the two partial solutions with the largest spread are merged, heaviest bin of one with
 * lightest of the other, until one is left. The partial solutions sit in a list, live; a
 * merged one keeps its place and the last takes the other's. A heap over places keyed by
 * spread finds the two (ties: the earlier place, as a scan of the list would). Every bin ends with one item from each tuple.
 * items[0..n) are item ids sorted heaviest first, n a multiple of bins; bins go to GPUs
 * first_gpu.. first_gpu + bins - 1. Same-GPU duplicates are left to repair_duplicates. */
typedef struct {
    double *sum;            /* per partial solution, per bin */
    int *head, *tail, *next; /* items of a bin as a list */
    int *idx_a, *idx_b, *live;
    double *nsum, *spread;
    int *nhead, *ntail;
    int *heap_ids, *heap_pos;  /* the heap over places in live */
    double *place_spread;      /* per place: the spread of the solution there */
} differencing;

/* idx[0..bins) = bin indices by sum, descending (ties: lower index first); a bottom-up merge
 * sort, as merged partial solutions come in no useful order. tmp holds bins ints. */
static void sort_bins(const double *sum, int *idx, int *tmp, int bins)
{
    if (bins <= 16) { /* few bins (a node's GPUs): insertion sort, the same stable order */
        for (int k = 0; k < bins; k++) {
            double v = sum[k];
            int b = k;
            for (; b > 0 && v > sum[idx[b - 1]]; b--) idx[b] = idx[b - 1];
            idx[b] = k;
        }
        return;
    }
    for (int k = 0; k < bins; k++) idx[k] = k;
    for (int width = 1; width < bins; width *= 2) {
        for (int lo = 0; lo < bins; lo += 2 * width) {
            int mid = lo + width < bins ? lo + width : bins;
            int hi = lo + 2 * width < bins ? lo + 2 * width : bins;
            int a = lo, b = mid, k = lo;
            while (a < mid && b < hi) tmp[k++] = sum[idx[b]] > sum[idx[a]] ? idx[b++] : idx[a++];
            while (a < mid) tmp[k++] = idx[a++];
            while (b < hi) tmp[k++] = idx[b++];
        }
        for (int k = 0; k < bins; k++) idx[k] = tmp[k];
    }
}

static void pack_differencing(packing *pk, const int *items, int n, int bins, int first_gpu,
                              differencing *df)
{
    int tuples = n / bins;
    if (tuples == 0) return; /* every replica went in whole layers */
    for (int t = 0; t < tuples; t++) {
        for (int k = 0; k < bins; k++) {
            int it = items[t * bins + k], b = t * bins + k;
            df->sum[b] = pk->load[it];
            df->head[b] = df->tail[b] = it;
            df->next[it] = -1;
        }
        df->spread[t] = df->sum[t * bins] - df->sum[t * bins + bins - 1];
    }
    int alive = tuples, *live = df->live;
    eplb_heap by_spread;
    eplb_heap_init(&by_spread, df->heap_ids, df->heap_pos, df->place_spread);
    for (int t = 0; t < tuples; t++) {
        live[t] = t;
        df->place_spread[t] = df->spread[t];
    }
    eplb_heap_build(&by_spread, live, tuples);
    while (alive > 1) {
        int x = eplb_heap_pop(&by_spread), y = eplb_heap_pop(&by_spread);
        int A = live[x], B = live[y];
        double *sa = df->sum + A * bins, *sb = df->sum + B * bins;
        sort_bins(sa, df->idx_a, df->nhead, bins);
        sort_bins(sb, df->idx_b, df->nhead, bins);
        /* Merge into fresh arrays in A's place: bin k = A's k-th heaviest + B's k-th lightest. */
        double *nsum = df->nsum;
        int *nhead = df->nhead, *ntail = df->ntail;
        for (int k = 0; k < bins; k++) {
            int a = A * bins + df->idx_a[k], b = B * bins + df->idx_b[bins - 1 - k];
            nsum[k] = df->sum[a] + df->sum[b];
            df->next[df->tail[a]] = df->head[b];
            nhead[k] = df->head[a];
            ntail[k] = df->tail[b];
        }
        double lo = nsum[0], hi = nsum[0];
        for (int k = 0; k < bins; k++) {
            sa[k] = nsum[k];
            df->head[A * bins + k] = nhead[k];
            df->tail[A * bins + k] = ntail[k];
            if (nsum[k] < lo) lo = nsum[k];
            if (nsum[k] > hi) hi = nsum[k];
        }
        df->spread[A] = hi - lo;
        int last = --alive; /* the last solution moves to y's place, A stays at x unless last */
        live[y] = live[last];
        if (last != x && last != y) {
            eplb_heap_remove(&by_spread, last);
            df->place_spread[y] = df->spread[live[y]];
            eplb_heap_push(&by_spread, y);
        }
        int at = last == x ? y : x;
        df->place_spread[at] = df->spread[A];
        eplb_heap_push(&by_spread, at);
    }
    int T = live[0];
    for (int k = 0; k < bins; k++)
        for (int it = df->head[T * bins + k]; it >= 0; it = df->next[it]) put(pk, it, first_gpu + k);
}

/* Differencing over all GPUs, or node by node when replicas stay on their node (each
 * node's items taken out of the sorted order in one pass; start holds N ints).
 *
 * When every expert has at least as many replicas as the GPUs it may use (A: all GPUs, or
 * its node's), duplicates cannot be avoided and repairing them one by one costs a search of
 * every GPU each: so all but the last one or two rounds of A replicas of each expert go in
 * whole layers, one on each of those GPUs (loading them all alike), and only the rest is
 * packed by differencing, where exchanges keep the freedom to balance it. */
static void pack_by_differencing(packing *pk, keyed *order, int *items, int *start,
                                 differencing *df)
{
    const int P = pk->s->P, N = pk->strict ? pk->s->N : 1, A = P / N;
    packing_empty(pk);
    int layered = 1;
    for (int e = 0; e < pk->s->E && layered; e++) layered = pk->cnt[e] >= A;
    pk->layered = layered;
    int m = 0;
    for (int it = 0; it < pk->nitems; it++) {
        int e = pk->expert[it], k = it - pk->first[e];
        if (layered && k < (pk->cnt[e] / A - 1) * A) {
            put(pk, it, (N == 1 ? 0 : pk->home[it] * A) + k % A);
            continue;
        }
        order[m].load = pk->load[it];
        order[m].item = it;
        m++;
    }
    sort_heavier_first(order, m, (keyed *)pk->load_scratch);
    if (N == 1) {
        for (int k = 0; k < m; k++) items[k] = order[k].item;
        pack_differencing(pk, items, m, P, 0, df);
        return;
    }
    for (int n = 0; n < N; n++) start[n] = 0;
    for (int k = 0; k < m; k++) start[pk->home[order[k].item]]++;
    for (int n = 0, sum = 0; n < N; n++) { /* node n's items from start[n] on */
        int c = start[n];
        start[n] = sum;
        sum += c;
    }
    for (int k = 0; k < m; k++) items[start[pk->home[order[k].item]]++] = order[k].item;
    /* start[n] is now the end of node n's items */
    for (int n = 0, from = 0; n < N; from = start[n], n++)
        pack_differencing(pk, items + from, start[n] - from, P / N, n * (P / N), df);
}

/* ------------------------------------------------------------------------------------------
 * Improvement: exchanges between the most loaded GPU and another one, choosing the exchange
 * that leaves the lower maximum of the two, until none lowers it. One replica for one first;
 * when no such swap helps, two for two. Each exchange strictly lowers the sum of squared GPU
 * loads, so this ends; the iteration cap is a guard. */

/* Whether GPU g, after giving items out[0..k) and taking in[0..k), holds each expert once
 * and every incoming item may live there. */
static int exchange_allowed(const packing *pk, int g, const int *out, const int *in, int k)
{
    const int S = pk->S;
    for (int x = 0; x < k; x++) {
        if (!may_live_on(pk, in[x], g)) return 0;
        int e = pk->expert[in[x]];
        for (int y = 0; y < x; y++)
            if (pk->expert[in[y]] == e) return 0;
        for (int t = 0; t < S; t++) {
            int it = pk->slot[g * S + t];
            int leaving = 0;
            for (int y = 0; y < k; y++) leaving |= out[y] == it;
            if (!leaving && pk->expert[it] == e) return 0;
        }
    }
    return 1;
}

/* Moves GPU g to its place in by_load after its load changed (pos: its index there). */
static void reposition(packing *pk, int g)
{
    int *o = pk->by_load, *pos = pk->pos, k = pos[g];
    const double *L = pk->gload;
    while (k > 0 && L[o[k - 1]] > L[g]) {
        o[k] = o[k - 1];
        pos[o[k]] = k;
        k--;
    }
    while (k + 1 < pk->s->P && L[o[k + 1]] < L[g]) {
        o[k] = o[k + 1];
        pos[o[k]] = k;
        k++;
    }
    o[k] = g;
    pos[g] = k;
}

/* Keeps a GPU's slots in ascending load order, so that the swap searches below can look
 * up the partner closest to the ideal one instead of trying them all. */
static void sort_slots(packing *pk, int g)
{
    int *x = pk->slot + g * pk->S;
    double *v = pk->sload + g * pk->S;
    pk->work += pk->S;
    for (int a = 0; a < pk->S; a++) {
        int t = x[a];
        double lt = pk->load[t];
        int b = a;
        for (; b > 0 && lt < v[b - 1]; b--) {
            x[b] = x[b - 1];
            v[b] = v[b - 1];
            pk->spot[x[b]] = g * pk->S + b;
        }
        x[b] = t;
        v[b] = lt;
        pk->spot[t] = g * pk->S + b;
    }
}

/* First index in ascending v[0..n) with v >= want. */
static inline int lower_bound(const double *v, int n, double want)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v[mid] < want) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Sorted views for the exchange searches: each GPU's slots by ascending load (stable:
 * insertion sort for a node's few slots, as the exchanges keep them; a library sort on (load,
 * slot) beyond), and by_load. */
static int keyed_lighter(const void *x, const void *y)
{
    const keyed *a = x, *b = y;
    if (a->load != b->load) return a->load < b->load ? -1 : 1;
    return (a->item > b->item) - (a->item < b->item);
}

static void sort_gpus_by_load(packing *pk)
{
    const int P = pk->s->P;
    keyed *tmp = pk->load_scratch;
    for (int g = 0; g < P; g++) {
        tmp[g].load = pk->gload[g];
        tmp[g].item = g;
    }
    qsort(tmp, (size_t)P, sizeof *tmp, keyed_lighter);
    for (int q = 0; q < P; q++) {
        pk->by_load[q] = tmp[q].item;
        pk->pos[tmp[q].item] = q;
    }
}

/* items[0..S) (and v, their loads) in ascending load, ties in their present order. */
static void sort_stable(packing *pk, int *items, double *v)
{
    const int S = pk->S;
    keyed *tmp = pk->load_scratch;
    for (int k = 0; k < S; k++) {
        tmp[k].load = pk->load[items[k]];
        tmp[k].item = k;
    }
    qsort(tmp, (size_t)S, sizeof *tmp, keyed_lighter);
    for (int k = 0; k < S; k++) tmp[k].item = items[tmp[k].item];
    for (int k = 0; k < S; k++) {
        items[k] = tmp[k].item;
        v[k] = tmp[k].load;
    }
}

static void sort_views(packing *pk)
{
    const int P = pk->s->P, S = pk->S;
    for (int g = 0; g < P; g++) {
        if (S <= 32) {
            sort_slots(pk, g);
            continue;
        }
        sort_stable(pk, pk->slot + g * S, pk->sload + g * S);
        for (int k = 0; k < S; k++) pk->spot[pk->slot[g * S + k]] = g * S + k;
        pk->work += S;
    }
    sort_gpus_by_load(pk);
}

/* ------------------------------------------------------------------------------------------
 * Same-GPU duplicates */

/* In GPU g's view (items by ascending load), item `out` gives way to item `in`. */
static void view_replace(packing *pk, int *view, int g, int out, int in)
{
    const int S = pk->S;
    int *v = view + g * S;
    double *l = pk->sload + g * S, lin = pk->load[in];
    int p = 0;
    while (v[p] != out) p++;
    for (; p + 1 < S; p++) {
        v[p] = v[p + 1];
        l[p] = l[p + 1];
    }
    for (p = S - 1; p > 0 && l[p - 1] > lin; p--) {
        v[p] = v[p - 1];
        l[p] = l[p - 1];
    }
    v[p] = in;
    l[p] = lin;
    pk->work += S;
}

/* Moves replicas that share a GPU with their expert elsewhere, by swaps that keep the
 * largest GPU load at or below `ceiling`. Replicas are taken in slot order; each goes by the
 * allowed swap (partner's expert not on the GPU, and the other way round) that leaves the
 * lowest max(Lg - d, Lj + d) of the two GPUs (d = la - lb), the last in slot order among
 * equals. Found without trying every partner: GPUs go lightest first (no swap with j leaves
 * less than (Lg + Lj) / 2, which ends the search), and on each, from the partner closest to
 * the ideal d = (Lg - Lj) / 2 outwards, as far as a partner may tie. A replica whose expert
 * is on every GPU it may use stays (its duplicate is unavoidable). dups holds R ints; view
 * R ints (the views' loads go in sload). */
enum { repair_partners = 1024 };

static void repair_duplicates(packing *pk, double ceiling, int *dups, int *view)
{
    const int P = pk->s->P, S = pk->S;
    int ndup = 0;
    for (int r = 0; r < pk->s->R; r++) {
        int a = pk->slot[r];
        int allowed = pk->home[a] >= 0 ? pk->Pn : P;
        if (eplb_placed_count(pk->placed, pk->expert[a], r / S) > 1 &&
            eplb_placed_gpus(pk->placed, pk->expert[a]) < allowed)
            dups[ndup++] = a;
    }
    if (ndup == 0) return;
    for (int g = 0; g < P; g++) {
        memcpy(view + g * S, pk->slot + g * S, (size_t)S * sizeof(int));
        sort_stable(pk, view + g * S, pk->sload + g * S);
    }
    sort_gpus_by_load(pk);
    pk->work += pk->s->R;
    for (int x = 0; x < ndup && !over_budget(pk); x++) {
        int a = dups[x], g = pk->gpu[a], ea = pk->expert[a];
        int allowed = pk->home[a] >= 0 ? pk->Pn : P;
        if (!on_gpu(pk, ea, g, a) || eplb_placed_gpus(pk->placed, ea) >= allowed) continue;
        double la = pk->load[a], Lg = pk->gload[g], best = ceiling;
        int bj = -1, bb = -1; /* the best partner so far (GPU, item) */
        for (int q = 0, searched = 0; q < P && searched < repair_partners; q++) {
            int j = pk->by_load[q];
            double Lj = pk->gload[j], floor = (Lg + Lj) / 2;
            pk->work++;
            if (floor - 4 * DBL_EPSILON * floor > best) break; /* rounding aside */
            if (j == g || !may_live_on(pk, a, j) || on_gpu(pk, ea, j, -1)) continue;
            searched += bj >= 0;
            const int *vj = view + j * S;
            const double *lj = pk->sload + j * S;
            int mid = lower_bound(lj, S, la - (Lg - Lj) / 2);
            pk->work += 8;
            for (int dir = 0; dir < 2; dir++)
                for (int k = dir ? mid - 1 : mid; k >= 0 && k < S; k += dir ? -1 : 1) {
                    double d = la - lj[k], up = Lg - d, down = Lj + d;
                    pk->work++;
                    if ((dir ? down : up) > best) break; /* grows along the walk */
                    int b = vj[k], eb = pk->expert[b];
                    if (eb == ea || !may_live_on(pk, b, g) || on_gpu(pk, eb, g, -1)) continue;
                    double hi = up > down ? up : down;
                    if (hi > best) continue;
                    if (hi == best && bj >= 0 &&
                        (j < bj || (j == bj && pk->spot[b] < pk->spot[bb])))
                        continue;
                    best = hi;
                    bj = j;
                    bb = b;
                }
        }
        if (bj < 0) continue;
        swap_items(pk, g, pk->spot[a] - g * S, bj, pk->spot[bb] - bj * S);
        view_replace(pk, view, g, a, bb);
        view_replace(pk, view, bj, bb, a);
        reposition(pk, g);
        reposition(pk, bj);
    }
}

/* Best one-for-one swap for GPU i with a GPU of [lo, hi); returns 1 and applies it when it
 * lowers the max. Exchanging a for b (d = load a - load b) leaves max(Li - d, Lj + d), best
 * at d = gap / 2 and worse the further d is from it, so for each a the search starts at the
 * b closest to that and walks outwards until the first allowed swap or no gain. Partners are
 * tried lightest first, and the first partner that offers a gain is taken: as good as the
 * best partner on real loads, at a fraction of the cost. */
static int swap_one(packing *pk, int i, int lo, int hi)
{
    const int S = pk->S, P = pk->s->P;
    double Li = pk->gload[i], best = Li - 1e-12 * Li;
    int bj = -1, bka = -1, bkb = -1;
    for (int q = 0; q < P; q++) {
        int j = pk->by_load[q];
        if (j == i || j < lo || j >= hi) continue;
        double Lj = pk->gload[j], gap = Li - Lj;
        if (Lj + gap / 2 >= best || bj >= 0) break;
        const int *sj = pk->slot + j * S;
        const double *vj = pk->sload + j * S, *vi = pk->sload + i * S;
        pk->work += S;
        /* Every exchange taken has 0 < d < gap, and for each a the smallest d > 0 comes from
         * the heaviest b lighter than a: one merge of the two sorted lists finds whether
         * any pair qualifies, far cheaper than the search below on the many GPUs without. */
        int any = 0;
        for (int ka = 0, kb = 0; ka < S && !any; ka++) {
            while (kb < S && vj[kb] < vi[ka]) kb++;
            any = kb > 0 && vi[ka] - vj[kb - 1] < gap;
        }
        if (!any) continue;
        const double lightest_j = vj[0];
        for (int ka = S - 1; ka >= 0; ka--) { /* heaviest first: lighter ones fail sooner */
            int a = pk->slot[i * S + ka];
            double la = vi[ka];
            if (la <= lightest_j) break; /* nothing on j is lighter, nor for lighter a */
            if (!may_live_on(pk, a, j)) continue;
            int mid = lower_bound(vj, S, la - gap / 2);
            pk->work += 4;
            for (int kb = mid; kb < S; kb++) { /* d <= gap / 2: i stays the larger */
                double d = la - vj[kb];
                pk->work++;
                if (d <= 0 || Li - d >= best) break;
                if (!swap_allowed(pk, a, i, sj[kb], j)) continue;
                best = Li - d;
                bj = j, bka = ka, bkb = kb;
                break;
            }
            for (int kb = mid - 1; kb >= 0; kb--) { /* d > gap / 2: j becomes the larger */
                double d = la - vj[kb];
                pk->work++;
                if (d >= gap || Lj + d >= best) break;
                if (!swap_allowed(pk, a, i, sj[kb], j)) continue;
                best = Lj + d;
                bj = j, bka = ka, bkb = kb;
                break;
            }
        }
    }
    if (bj < 0) return 0;
    swap_items(pk, i, bka, bj, bkb);
    sort_slots(pk, i);
    sort_slots(pk, bj);
    reposition(pk, i);
    reposition(pk, bj);
    return 1;
}

/* Two-for-two exchanges between GPU i and one of the `partners` lightest GPUs of [lo, hi),
 * by the same closest-first search over sums of two replicas. Only for GPUs of at most
 * max_pair_slots slots (the pair lists grow with the square). */
enum { partners = 4, max_pair_slots = 32 };

typedef struct {
    double sum;
    int k1, k2;
} pair_sum;
_Static_assert(sizeof(pair_sum) <= 16 && max_pair_slots * max_pair_slots / 2 <= 512,
               "EPLB_PAIR_BYTES holds two pair lists");

static int pair_lighter(const void *x, const void *y)
{
    const pair_sum *a = x, *b = y;
    if (a->sum != b->sum) return a->sum < b->sum ? -1 : 1;
    if (a->k1 != b->k1) return a->k1 - b->k1;
    return a->k2 - b->k2;
}

static int make_pairs(const packing *pk, int g, pair_sum *out)
{
    int n = 0;
    for (int k1 = 0; k1 < pk->S; k1++)
        for (int k2 = k1 + 1; k2 < pk->S; k2++) {
            out[n].sum = pk->load[pk->slot[g * pk->S + k1]] + pk->load[pk->slot[g * pk->S + k2]];
            out[n].k1 = k1;
            out[n].k2 = k2;
            n++;
        }
    return n;
}

static int swap_two(packing *pk, int i, int lo, int hi, pair_sum *pi, pair_sum *pj)
{
    const int S = pk->S;
    if (S < 2 || S > max_pair_slots) return 0;
    double Li = pk->gload[i], best = Li - 1e-12 * Li;
    int bj = -1, b1 = 0, b2 = 0, b3 = 0, b4 = 0;
    int light[partners], nl = 0; /* ascending load */
    for (int q = 0; q < pk->s->P && nl < partners; q++) {
        int j = pk->by_load[q];
        if (j != i && j >= lo && j < hi) light[nl++] = j;
    }
    int ni = make_pairs(pk, i, pi);
    for (int q = 0; q < nl; q++) {
        int j = light[q];
        double Lj = pk->gload[j], gap = Li - Lj;
        if (gap <= 0 || Lj + gap / 2 >= best) continue;
        int nj = make_pairs(pk, j, pj);
        pk->work += (long)nj * 8 + ni;
        for (int a = 1; a < nj; a++) { /* insertion sort: short lists, no call per compare */
            pair_sum v = pj[a];
            int b = a;
            for (; b > 0 && pair_lighter(&v, &pj[b - 1]) < 0; b--) pj[b] = pj[b - 1];
            pj[b] = v;
        }
        for (int x = 0; x < ni; x++) {
            int out[2] = {pk->slot[i * S + pi[x].k1], pk->slot[i * S + pi[x].k2]};
            double want = pi[x].sum - gap / 2;
            int lo_k = 0, hi_k = nj;
            while (lo_k < hi_k) {
                int m = (lo_k + hi_k) / 2;
                if (pj[m].sum < want) lo_k = m + 1;
                else hi_k = m;
            }
            for (int dir = 0; dir < 2; dir++)
                for (int y = dir ? lo_k - 1 : lo_k; y >= 0 && y < nj; y += dir ? -1 : 1) {
                    double d = pi[x].sum - pj[y].sum;
                    double nm = dir ? Lj + d : Li - d;
                    pk->work++;
                    if (d <= 0 || d >= gap || nm >= best) break;
                    int in[2] = {pk->slot[j * S + pj[y].k1], pk->slot[j * S + pj[y].k2]};
                    if (!exchange_allowed(pk, j, in, out, 2) ||
                        !exchange_allowed(pk, i, out, in, 2))
                        continue;
                    best = nm;
                    bj = j, b1 = pi[x].k1, b2 = pi[x].k2, b3 = pj[y].k1, b4 = pj[y].k2;
                    break;
                }
        }
    }
    if (bj < 0) return 0;
    swap_items(pk, i, b1, bj, b3);
    swap_items(pk, i, b2, bj, b4);
    sort_slots(pk, i);
    sort_slots(pk, bj);
    reposition(pk, i);
    reposition(pk, bj);
    return 1;
}

/* Stops early once the max is within `close_enough` of `target`, a lower bound: the rest of
 * the gap is not worth the time. */
static const double close_enough = 1e-4;

/* Improves until the max is at most stop_at, or no exchange lowers it. */
static void improve(packing *pk, double stop_at, pair_sum *pairs)
{
    const int P = pk->s->P;
    sort_views(pk);
    pair_sum *pi = pairs, *pj = pairs + max_pair_slots * max_pair_slots / 2;
    int limit = 64 * P + 1000;
    for (int iter = 0; iter < limit && !over_budget(pk); iter++) {
        int i = pk->by_load[P - 1];
        if (pk->gload[i] <= stop_at) return;
        int lo = 0, hi = P;
        if (pk->strict) {
            lo = (i / pk->Pn) * pk->Pn;
            hi = lo + pk->Pn;
        }
        if (!swap_one(pk, i, lo, hi) && !swap_two(pk, i, lo, hi, pi, pj)) return;
    }
}

/* ------------------------------------------------------------------------------------------
 * The layer */

/* Writes phy2log (experts ascending within a GPU, easy to read: items come in expert order,
 * so each GPU's row fills in order) and replica ranks in slot order; seen holds E ints,
 * cursor P ints. */
static void write_plan(const packing *pk, int *phy2log, int *rank, int *seen, int *cursor)
{
    const int P = pk->s->P, S = pk->S;
    for (int g = 0; g < P; g++) cursor[g] = g * S;
    for (int it = 0; it < pk->nitems; it++) phy2log[cursor[pk->gpu[it]]++] = pk->expert[it];
    memset(seen, 0, (size_t)pk->s->E * sizeof(int));
    for (int r = 0; r < pk->s->R; r++) rank[r] = seen[phy2log[r]]++;
}

/* Fills the packing's items from counts; home per item from the expert's node. */
static void make_items(packing *pk, const int *cnt, const int *expert_node, int cross)
{
    int it = 0;
    for (int e = 0; e < pk->s->E; e++) {
        pk->first[e] = it;
        pk->cnt[e] = cnt[e];
        for (int k = 0; k < cnt[e]; k++, it++) {
            pk->expert[it] = e;
            pk->load[it] = pk->w[e] / cnt[e];
            pk->home[it] = expert_node ? (cross && k > 0 ? -1 : expert_node[e]) : -1;
        }
    }
    pk->nitems = it;
}

/* Replica counts when redundant replicas may leave their node: one replica of each expert
 * stays home, so a hot node sheds load only through extra replicas of its own experts. Each
 * extra replica goes to the node whose home share (the sum of its experts' per-replica
 * loads) is largest, to its expert with the largest per-replica load; no expert gets more
 * replicas than GPUs. Heaps: per node its experts that may take one more replica, by
 * per-replica load; over the nodes with such an expert, by share (ties: lower ids). */
typedef struct {
    double *share;          /* per node */
    double *per_replica;    /* per expert */
    int *expert_pos;        /* per expert: place in its node's heap */
    int *by_node;           /* E: node n's heap of experts from start[n] */
    int *start, *size;      /* per node */
    int *node_ids, *node_pos; /* the heap of nodes */
} node_heaps;

static void replicate_by_node(const double *w, const eplb_shape *s, const int *expert_node,
                              int *cnt, const node_heaps *nh)
{
    const int E = s->E, N = s->N;
    int *start = nh->start, *size = nh->size;
    for (int n = 0; n < N; n++) {
        size[n] = 0;
        nh->share[n] = 0;
    }
    for (int e = 0; e < E; e++) size[expert_node[e]]++;
    for (int n = 0, sum = 0; n < N; n++) {
        start[n] = sum;
        sum += size[n];
        size[n] = 0;
    }
    for (int e = 0; e < E; e++) {
        int n = expert_node[e];
        cnt[e] = 1;
        nh->share[n] += w[e];
        nh->per_replica[e] = w[e];
        nh->expert_pos[e] = -1;
        if (cnt[e] < s->P) nh->by_node[start[n] + size[n]++] = e;
    }
    eplb_heap node;
    eplb_heap_init(&node, nh->node_ids, nh->node_pos, nh->share);
    int nonempty = 0;
    for (int n = 0; n < N; n++) {
        eplb_heap h;
        eplb_heap_init(&h, nh->by_node + start[n], nh->expert_pos, nh->per_replica);
        eplb_heap_build(&h, nh->by_node + start[n], size[n]);
        nh->node_pos[n] = -1;
        if (size[n] > 0) nh->node_ids[nonempty++] = n;
    }
    eplb_heap_build(&node, nh->node_ids, nonempty);
    for (int left = s->R - E; left > 0;) {
        if (node.n == 0) { /* every expert on every GPU: duplicates are unavoidable */
            for (int e = 0; e < E && left > 0; e++, left--) cnt[e]++;
            continue;
        }
        int bn = eplb_heap_top(&node);
        eplb_heap h;
        eplb_heap_init(&h, nh->by_node + start[bn], nh->expert_pos, nh->per_replica);
        h.n = size[bn];
        int e = eplb_heap_top(&h);
        nh->share[bn] -= w[e] / cnt[e] - w[e] / (cnt[e] + 1);
        cnt[e]++;
        left--;
        if (cnt[e] < s->P) eplb_heap_update(&h, e, w[e] / cnt[e]);
        else eplb_heap_remove(&h, e);
        size[bn] = h.n;
        if (h.n > 0) eplb_heap_update(&node, bn, nh->share[bn]);
        else eplb_heap_remove(&node, bn);
    }
}

/* Seats items for counts cnt where placement p2l has them, each expert's bound replica on
 * its first slot on its home node (cross_nodes keeps one replica of each expert home).
 * home_slot and next hold E ints. */
static void seat_cross(packing *pk, const int *p2l, const int *cnt, const int *expert_node,
                       int *home_slot, int *next)
{
    const int E = pk->s->E, R = pk->s->R, per_node = R / pk->s->N;
    make_items(pk, cnt, expert_node, 1);
    packing_empty(pk);
    for (int e = 0; e < E; e++) {
        home_slot[e] = -1;
        next[e] = 1;
    }
    for (int r = 0; r < R; r++)
        if (home_slot[p2l[r]] < 0 && r / per_node == expert_node[p2l[r]]) home_slot[p2l[r]] = r;
    for (int r = 0; r < R; r++) { /* an expert away from home (never made here) binds anyway */
        int e = p2l[r];
        if (home_slot[e] < 0) home_slot[e] = r;
        put(pk, pk->first[e] + (r == home_slot[e] ? 0 : next[e]++), r / pk->S);
    }
}

/* One change of replica counts that unloads the most loaded GPU i: a free replica b of
 * expert x on GPU j (x keeping at least one replica) becomes a replica of expert y held by
 * i, so every GPU holding y carries less, and no GPU the change touches ends as loaded as i
 * was. Other GPUs may tie with it, so the max itself may wait for later changes; the sorted
 * vector of GPU loads decreases, so this ends. The change leaves
 *   max(Li - dy, A(b) + w[y] / (cy + 1), C(b)),
 * A(b) = j's load without b, C(b) = the heaviest other GPU holding x once x has one replica
 * fewer; candidates b go by ascending A, so for each y the search ends at the first b with
 * A(b) + w[y] / (cy + 1) above the best so far. Applies the best change and returns 1, or
 * returns 0 when there is none (or the work budget ran out before one was found). */
typedef struct {
    int *top_gpu;       /* per expert: the most loaded GPU holding it */
    double *top, *next; /* per expert: that GPU's load, the most loaded other one's (or -1) */
    keyed *cand;        /* R */
} recount_space;

static int recount(packing *pk, const int *expert_node, int *cnt, int *p2l, int *home_slot,
                   int *next, const recount_space *rs)
{
    const int P = pk->s->P, S = pk->S, R = pk->s->R, E = pk->s->E;
    const double *w = pk->w;
    int i = 0;
    for (int g = 1; g < P; g++)
        if (pk->gload[g] > pk->gload[i]) i = g;
    double Li = pk->gload[i], best = Li - 1e-12 * Li;
    for (int e = 0; e < E; e++) {
        rs->top_gpu[e] = -1;
        rs->top[e] = rs->next[e] = -1;
    }
    for (int it = 0; it < pk->nitems; it++) {
        int x = pk->expert[it], g = pk->gpu[it];
        double l = pk->gload[g];
        if (g == rs->top_gpu[x]) continue;
        if (l > rs->top[x]) {
            rs->next[x] = rs->top[x];
            rs->top[x] = l;
            rs->top_gpu[x] = g;
        } else if (l > rs->next[x]) {
            rs->next[x] = l;
        }
    }
    double v_min = HUGE_VAL; /* the least w[y] / (cy + 1) over the experts y on i */
    for (int ka = 0; ka < S; ka++) {
        int y = pk->expert[pk->slot[i * S + ka]];
        double v = w[y] / (pk->cnt[y] + 1);
        if (v < v_min) v_min = v;
    }
    int n = 0;
    for (int b = 0; b < pk->nitems; b++) {
        int x = pk->expert[b], j = pk->gpu[b];
        if (pk->home[b] >= 0 || pk->cnt[x] < 2) continue;
        double cx = pk->cnt[x], dx = w[x] / (cx - 1) - w[x] / cx;
        double others = rs->top_gpu[x] != j ? rs->top[x] : rs->next[x];
        double A = pk->gload[j] - w[x] / cx;
        if ((others >= 0 && others + dx >= best) || A + v_min >= best) continue;
        rs->cand[n].load = A;
        rs->cand[n].item = b;
        n++;
    }
    qsort(rs->cand, (size_t)n, sizeof *rs->cand, keyed_lighter);
    pk->work += (long)R + (long)n * 8;
    /* The first (slot of i, item) in order with the least result, as a scan of all would. */
    int best_b = -1, best_y = -1, best_ka = -1;
    for (int ka = 0; ka < S && !over_budget(pk); ka++) {
        int y = pk->expert[pk->slot[i * S + ka]];
        double cy = pk->cnt[y], dy = w[y] / cy - w[y] / (cy + 1), vy = w[y] / (cy + 1);
        if (Li - dy >= best) continue;
        for (int k = 0; k < n; k++) {
            pk->work++;
            double A = rs->cand[k].load;
            if (A + vy > best || (A + vy == best && best_ka != ka)) break;
            int b = rs->cand[k].item, x = pk->expert[b], j = pk->gpu[b];
            if (x == y || on_gpu(pk, y, j, -1)) continue;
            double cx = pk->cnt[x], dx = w[x] / (cx - 1) - w[x] / cx;
            double others = rs->top_gpu[x] != j ? rs->top[x] : rs->next[x];
            double hi = Li - dy;
            if (A + vy > hi) hi = A + vy;
            if (others >= 0 && others + dx > hi) hi = others + dx;
            if (hi < best || (hi == best && best_ka == ka && b < best_b)) {
                best = hi;
                best_b = b;
                best_y = y;
                best_ka = ka;
            }
        }
    }
    if (best_b < 0) return 0;
    for (int r = 0; r < R; r++) p2l[r] = pk->expert[pk->slot[r]];
    int slot_b = pk->spot[best_b];
    cnt[pk->expert[best_b]]--;
    cnt[best_y]++;
    p2l[slot_b] = best_y;
    seat_cross(pk, p2l, cnt, expert_node, home_slot, next);
    return 1;
}

/* Items with the counts of an existing placement, each seated where that placement has it;
 * with groups on nodes, each expert bound to the node that holds it. */
static void seat_as(packing *pk, const int *p2l, int *cnt, int *expert_node, int *seated,
                    int cross_nodes)
{
    const int E = pk->s->E, R = pk->s->R;
    const int N = pk->s->hierarchical ? pk->s->N : 1;
    for (int e = 0; e < E; e++) cnt[e] = 0;
    for (int r = 0; r < R; r++) cnt[p2l[r]]++;
    for (int r = 0; r < R; r++) expert_node[p2l[r]] = r / (R / N);
    make_items(pk, cnt, pk->s->hierarchical ? expert_node : NULL, cross_nodes);
    packing_empty(pk);
    pk->layered = 0; /* exchanges keep to the strict rule */
    for (int e = 0; e < E; e++) seated[e] = 0;
    for (int r = 0; r < R; r++) {
        int e = p2l[r];
        put(pk, pk->first[e] + seated[e]++, r / pk->S);
    }
}

eplb_status eplb_balanced_layer(const double *w, const eplb_shape *s, int cross_nodes,
                                eplb_scratch *sc, int *ref_space, int *phy2log, int *rank)
{
    const int E = s->E, R = s->R, P = s->P;
    const int N = s->hierarchical ? s->N : 1;
    packing pk;
    packing_init(&pk, w, s, sc, s->hierarchical && !cross_nodes);
    int *expert_node = sc->i[7], *ids = sc->i[8], *cnt = sc->i[9];
    int *node_free = sc->i[10], *bound_left = sc->i[11];
    double *ref_load = sc->d[2];
    keyed *order = sc->sort_work;

    /* Where each expert lives: its group's node, groups placed for the lowest bound. */
    int *heap = sc->sort_work; /* 2n ints; the packing's sort needs it only later */
    double total = 0, target;
    for (int e = 0; e < E; e++) total += w[e];
    target = total / P;
    if (s->hierarchical) {
        int *node_of_group = sc->i[5];
        double cost = eplb_assign_groups(w, s, pk.strict, node_of_group, NULL);
        if (cost < 0) return eplb_fail(EPLB_ERR_NOMEM, "out of memory placing groups on nodes");
        if (pk.strict && cost > target) target = cost;
        int gs = E / s->groups;
        for (int e = 0; e < E; e++) expert_node[e] = node_of_group[e / gs];
    }

    /* How many replicas: per node when replicas stay on their node, globally otherwise; no
     * expert gets more replicas than the GPUs it may use, unless every expert is there. */
    if (pk.strict) {
        int *end = node_free; /* ids grouped by node, ascending: node n's end at end[n] */
        for (int n = 0; n < N; n++) end[n] = 0;
        for (int e = 0; e < E; e++) end[expert_node[e]]++;
        for (int n = 0, sum = 0; n < N; n++) {
            int c = end[n];
            end[n] = sum;
            sum += c;
        }
        for (int e = 0; e < E; e++) ids[end[expert_node[e]]++] = e;
        for (int n = 0, from = 0; n < N; from = end[n], n++) {
            int m = end[n] - from;
            double m_rep =
                eplb_min_max_replica(w, ids + from, m, R / N, pk.Pn, pk.gpu, heap, pk.load);
            if (m_rep > target) target = m_rep;
            for (int k = 0; k < m; k++) cnt[ids[from + k]] = pk.gpu[k];
        }
    } else {
        for (int e = 0; e < E; e++) ids[e] = e;
        double m_rep = eplb_min_max_replica(w, ids, E, R, P, cnt, heap, pk.load);
        if (m_rep > target) target = m_rep;
        if (s->hierarchical && cross_nodes) {
            node_heaps nh = {pk.load, sc->d[7], sc->i[25], sc->i[12], sc->i[13], sc->i[14],
                             sc->i[15], sc->i[16]};
            replicate_by_node(w, s, expert_node, cnt, &nh);
        }
    }

    make_items(&pk, cnt, s->hierarchical ? expert_node : NULL, cross_nodes);
    if (s->hierarchical && cross_nodes) {
        /* Replicas bound to a node and free ones mixed: greedy with slot reservations. */
        greedy_heaps gh = {sc->i[26], sc->i[27], sc->i[14], sc->i[28], sc->i[29], sc->i[15],
                           sc->d[7]};
        if (pack_greedy(&pk, order, node_free, bound_left, &gh) < 0)
            return eplb_fail(EPLB_ERR_INTERNAL, "no GPU had room for a replica");
    } else {
        differencing df = {sc->d[3], sc->i[12], sc->i[13], sc->i[14], sc->i[15], sc->i[16],
                           sc->i[17], sc->d[4], sc->d[5], sc->i[18], sc->i[19], sc->i[26],
                           sc->i[27], sc->d[7]};
        pack_by_differencing(&pk, order, ids, sc->i[31], &df);
    }
    repair_duplicates(&pk, HUGE_VAL, sc->i[12], sc->i[31]);
    improve(&pk, target * (1 + close_enough), sc->pairs);
    if (s->hierarchical && cross_nodes) {
        /* Exchanges cannot move a node's bound replicas off it; moving replica counts can. */
        int *p2l_now = sc->i[22], *home_slot = sc->i[23], *next = sc->i[24];
        recount_space rs = {sc->i[31], sc->d[2], sc->d[8], sc->sort_work};
        for (int round = 0; round < 4 * (R - E) + 8 && !over_budget(&pk); round++) {
            if (!recount(&pk, expert_node, cnt, p2l_now, home_slot, next, &rs)) break;
            improve(&pk, target * (1 + close_enough), sc->pairs);
        }
    }
    write_plan(&pk, phy2log, rank, ids, sc->i[31]);
    sc->cut_short = pk.cut_short;

    /* The floor: never less balanced than the reference plan of the same layer. Its plan is
     * built only when its largest load, known to float32 rounding, may be below ours. */
    double ours = eplb_gpu_loads(w, E, phy2log, R, P, ids, ref_load);
    if (ours <= 0) return EPLB_OK;
    double ref_f32 = eplb_deepseek_max_f32(w, s, sc, ours * (1 + (pk.S + 2) * 0x1p-22));
    if (ours < ref_f32 * (1 - (pk.S + 2) * 0x1p-23)) return EPLB_OK;
    const int *ref_phy2log = ref_space;
    EPLB_CHECK(eplb_deepseek_layer(w, s, sc, ref_space, ref_space + R));
    double ref = eplb_gpu_loads(w, E, ref_phy2log, R, P, ids, ref_load);
    if (ref >= ours) return EPLB_OK;

    seat_as(&pk, ref_phy2log, cnt, expert_node, ids, cross_nodes);
    repair_duplicates(&pk, max_load(&pk, NULL), sc->i[12], sc->i[31]);
    improve(&pk, target * (1 + close_enough), sc->pairs);
    sc->cut_short |= pk.cut_short;
    /* Keep ours unless the improved reference is strictly better, and that unless the
     * reference as it came is better still (sums in another slot order can round apart). cnt
     * and bound_left are free again: the items hold the counts, and packing is done. */
    int *tmp_p2l = cnt, *tmp_rank = bound_left;
    write_plan(&pk, tmp_p2l, tmp_rank, ids, sc->i[31]);
    double better = eplb_gpu_loads(w, E, tmp_p2l, R, P, ids, ref_load);
    if (better < ours && better <= ref) {
        memcpy(phy2log, tmp_p2l, (size_t)R * sizeof(int));
        memcpy(rank, tmp_rank, (size_t)R * sizeof(int));
    } else if (ref < ours) {
        memcpy(phy2log, ref_phy2log, (size_t)R * sizeof(int));
        memset(ids, 0, (size_t)E * sizeof(int));
        for (int r = 0; r < R; r++) rank[r] = ids[phy2log[r]]++;
    }
    return EPLB_OK;
}

/* Whether a placement keeps groups on nodes: every replica of a group's experts on one
 * node. */
static int keeps_groups_on_nodes(const int *p2l, const eplb_shape *s, int *group_node)
{
    const int gs = s->E / s->groups, per_node = s->R / s->N;
    for (int g = 0; g < s->groups; g++) group_node[g] = -1;
    for (int r = 0; r < s->R; r++) {
        int g = p2l[r] / gs, n = r / per_node;
        if (group_node[g] < 0) group_node[g] = n;
        else if (group_node[g] != n) return 0;
    }
    return 1;
}

double eplb_balanced_layer_from(const double *w, const eplb_shape *s, eplb_scratch *sc,
                                const int *cur_phy2log, double stop_at, int *phy2log, int *rank)
{
    const int P = s->P;
    packing pk;
    packing_init(&pk, w, s, sc, s->hierarchical);

    if (s->hierarchical && !keeps_groups_on_nodes(cur_phy2log, s, sc->i[10])) return -1;
    seat_as(&pk, cur_phy2log, sc->i[9], sc->i[7], sc->i[8], 0);
    repair_duplicates(&pk, HUGE_VAL, sc->i[12], sc->i[31]); /* the current plan may have some */
    improve(&pk, stop_at, sc->pairs);
    sc->cut_short = pk.cut_short;
    /* Keep the current slot order: slot k of GPU g keeps its expert when it is still there. */
    for (int r = 0; r < s->R; r++) phy2log[r] = pk.expert[pk.slot[r]];
    memset(sc->i[8], 0, (size_t)s->E * sizeof(int));
    for (int r = 0; r < s->R; r++) rank[r] = sc->i[8][phy2log[r]]++;
    return eplb_gpu_loads(w, s->E, phy2log, s->R, P, sc->i[8], sc->d[2]);
}
