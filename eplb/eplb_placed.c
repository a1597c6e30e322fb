/* eplb_placed.c: which GPUs hold which experts, as a hash table of (expert, GPU) -> replicas
 * there, and per expert the number of GPUs holding it. "Does GPU g hold expert e?" is asked
 * for every candidate exchange; this answers in O(1) whatever the replica counts. */
#include "eplb/eplb_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Open addressing with linear probing; a key is (e << 20 | g) + 1, 0 marks an empty cell.
 * Removal shifts later cells of the probe run back, so no tombstones pile up over the many
 * exchanges of one layer. */
struct eplb_placed {
    int bits;
    size_t mask;
    uint64_t *key;
    int *count;
    int *gpus; /* per expert: GPUs holding it */
    int experts;
};

enum { gpu_bits = 20 }; /* GPUs and experts are at most 2^20 (checked with the config) */

static inline uint64_t key_of(int e, int g) { return ((uint64_t)e << gpu_bits | (uint64_t)g) + 1; }

static inline size_t home_of(const eplb_placed *t, uint64_t k)
{
    return (size_t)((k * 0x9E3779B97F4A7C15ull) >> (64 - t->bits));
}

eplb_placed *eplb_placed_new(int experts, int replicas)
{
    eplb_placed *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->bits = 4;
    while (((size_t)1 << t->bits) < (size_t)replicas * 2) t->bits++; /* load factor <= 1/2 */
    t->mask = ((size_t)1 << t->bits) - 1;
    t->experts = experts;
    t->key = calloc(t->mask + 1, sizeof *t->key);
    t->count = malloc((t->mask + 1) * sizeof *t->count);
    t->gpus = calloc((size_t)experts, sizeof *t->gpus);
    if (!t->key || !t->count || !t->gpus) {
        eplb_placed_free(t);
        return NULL;
    }
    return t;
}

void eplb_placed_free(eplb_placed *t)
{
    if (!t) return;
    free(t->key);
    free(t->count);
    free(t->gpus);
    free(t);
}

void eplb_placed_clear(eplb_placed *t)
{
    memset(t->key, 0, (t->mask + 1) * sizeof *t->key);
    memset(t->gpus, 0, (size_t)t->experts * sizeof *t->gpus);
}

static size_t find(const eplb_placed *t, uint64_t k)
{
    size_t h = home_of(t, k);
    while (t->key[h] != 0 && t->key[h] != k) h = (h + 1) & t->mask;
    return h;
}

int eplb_placed_count(const eplb_placed *t, int e, int g)
{
    size_t h = find(t, key_of(e, g));
    return t->key[h] ? t->count[h] : 0;
}

int eplb_placed_gpus(const eplb_placed *t, int e) { return t->gpus[e]; }

void eplb_placed_add(eplb_placed *t, int e, int g)
{
    uint64_t k = key_of(e, g);
    size_t h = find(t, k);
    if (t->key[h]) {
        t->count[h]++;
        return;
    }
    t->key[h] = k;
    t->count[h] = 1;
    t->gpus[e]++;
}

void eplb_placed_remove(eplb_placed *t, int e, int g)
{
    size_t h = find(t, key_of(e, g));
    if (!t->key[h]) return; /* not there: nothing to take away */
    if (--t->count[h] > 0) return;
    t->gpus[e]--;
    /* Backward-shift deletion: move up every later cell of the run that may sit at h. */
    size_t hole = h, x = h;
    for (;;) {
        x = (x + 1) & t->mask;
        if (!t->key[x]) break;
        size_t home = home_of(t, t->key[x]);
        /* x may fill the hole when its home is not in (hole, x], cyclically */
        int between = hole <= x ? (home > hole && home <= x) : (home > hole || home <= x);
        if (between) continue;
        t->key[hole] = t->key[x];
        t->count[hole] = t->count[x];
        hole = x;
    }
    t->key[hole] = 0;
}
