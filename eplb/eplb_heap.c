/* eplb_heap.c: an indexed binary heap of ids, largest key first, the lower id first among
 * equal keys (the order the balancer's linear scans used, so heaps answer as they did). Keys
 * change in place; several heaps over disjoint ids may share one pos and key array. */
#include "eplb/eplb_internal.h"

static inline int above(const eplb_heap *h, int a, int b)
{
    double ka = h->key[a], kb = h->key[b];
    return ka > kb || (ka == kb && a < b);
}

static void place(eplb_heap *h, int k, int id)
{
    h->id[k] = id;
    h->pos[id] = k;
}

static void sift_up(eplb_heap *h, int k)
{
    int id = h->id[k];
    while (k > 0) {
        int parent = (k - 1) / 2;
        if (!above(h, id, h->id[parent])) break;
        place(h, k, h->id[parent]);
        k = parent;
    }
    place(h, k, id);
}

static void sift_down(eplb_heap *h, int k)
{
    int id = h->id[k];
    for (;;) {
        int c = 2 * k + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && above(h, h->id[c + 1], h->id[c])) c++;
        if (!above(h, h->id[c], id)) break;
        place(h, k, h->id[c]);
        k = c;
    }
    place(h, k, id);
}

void eplb_heap_init(eplb_heap *h, int *id, int *pos, double *key)
{
    h->n = 0;
    h->id = id;
    h->pos = pos;
    h->key = key;
}

void eplb_heap_build(eplb_heap *h, const int *ids, int n)
{
    h->n = n;
    for (int k = 0; k < n; k++) place(h, k, ids[k]);
    for (int k = n / 2 - 1; k >= 0; k--) sift_down(h, k);
}

void eplb_heap_push(eplb_heap *h, int id)
{
    place(h, h->n++, id);
    sift_up(h, h->n - 1);
}

int eplb_heap_pop(eplb_heap *h)
{
    int top = h->id[0];
    h->pos[top] = -1;
    if (--h->n > 0) {
        place(h, 0, h->id[h->n]);
        sift_down(h, 0);
    }
    return top;
}

void eplb_heap_remove(eplb_heap *h, int id)
{
    int k = h->pos[id];
    h->pos[id] = -1;
    if (--h->n == k) return;
    int moved = h->id[h->n];
    place(h, k, moved);
    sift_up(h, k);
    sift_down(h, h->pos[moved]);
}

void eplb_heap_update(eplb_heap *h, int id, double key)
{
    h->key[id] = key;
    int k = h->pos[id];
    sift_up(h, k);
    sift_down(h, h->pos[id]);
}
