/* moe_routing_tape.c: the tape of MoE expert choices (moe_routing_tape.h): one FIFO of recorded
 * choices per (rank, layer), and the report of how following went. Ranks are threads, so every
 * call takes the tape's lock. */
#include "engine/moe_routing_tape.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t *expert;
    size_t n;
} entry;

typedef struct {
    int rank, layer;
    entry *entries;
    size_t count, cap, next; /* next: the first not yet taken */
} channel;

struct dp_routing_tape {
    pthread_mutex_t lock;
    channel *ch;
    size_t nch, cap;
    dp_routing_report report;
};

dp_status dp_routing_tape_create(dp_routing_tape **out)
{
    dp_routing_tape *t = calloc(1, sizeof *t);
    if (!t) return dp_fail(DP_ERR_NOMEM, "out of memory for the routing tape");
    pthread_mutex_init(&t->lock, NULL);
    t->report.worst_layer = t->report.worst_token = -1;
    *out = t;
    return DP_OK;
}

static void clear(dp_routing_tape *t)
{
    for (size_t i = 0; i < t->nch; i++) {
        for (size_t j = 0; j < t->ch[i].count; j++) free(t->ch[i].entries[j].expert);
        t->ch[i].count = t->ch[i].next = 0;
    }
}

void dp_routing_tape_destroy(dp_routing_tape *t)
{
    if (!t) return;
    clear(t);
    for (size_t i = 0; i < t->nch; i++) free(t->ch[i].entries);
    free(t->ch);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

dp_routing_report dp_routing_tape_report(dp_routing_tape *t)
{
    pthread_mutex_lock(&t->lock);
    dp_routing_report r = t->report;
    pthread_mutex_unlock(&t->lock);
    return r;
}

void dp_routing_tape_reset_report(dp_routing_tape *t)
{
    pthread_mutex_lock(&t->lock);
    memset(&t->report, 0, sizeof t->report);
    t->report.worst_layer = t->report.worst_token = -1;
    pthread_mutex_unlock(&t->lock);
}

dp_status dp_routing_tape_end_step(dp_routing_tape *t)
{
    pthread_mutex_lock(&t->lock);
    dp_status st = DP_OK;
    for (size_t i = 0; i < t->nch && st == DP_OK; i++)
        if (t->ch[i].next != t->ch[i].count)
            st = dp_fail(DP_ERR_INTERNAL, "rank %d, layer %d: %zu MoE forward(s) recorded, %zu followed",
                         t->ch[i].rank, t->ch[i].layer, t->ch[i].count, t->ch[i].next);
    clear(t);
    pthread_mutex_unlock(&t->lock);
    return st;
}

/* (rank, layer)'s channel, made when asked to (else NULL when there is none); locked */
static channel *find(dp_routing_tape *t, int rank, int layer, int make)
{
    for (size_t i = 0; i < t->nch; i++)
        if (t->ch[i].rank == rank && t->ch[i].layer == layer) return &t->ch[i];
    if (!make) return NULL;
    if (t->nch == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        channel *c = realloc(t->ch, cap * sizeof *c);
        if (!c) return NULL;
        t->ch = c, t->cap = cap;
    }
    channel *c = &t->ch[t->nch++];
    memset(c, 0, sizeof *c);
    c->rank = rank, c->layer = layer;
    return c;
}

dp_status dp_routing_tape_put(dp_routing_tape *t, int rank, int layer, const int32_t *expert, size_t n)
{
    int32_t *copy = malloc(sizeof *copy * (n ? n : 1));
    if (!copy) return dp_fail(DP_ERR_NOMEM, "out of memory recording %zu expert choices", n);
    memcpy(copy, expert, sizeof *copy * n);
    pthread_mutex_lock(&t->lock);
    channel *c = find(t, rank, layer, 1);
    if (c && c->count == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        entry *e = realloc(c->entries, cap * sizeof *e);
        if (e) c->entries = e, c->cap = cap;
    }
    int ok = c && c->count < c->cap;
    if (ok) c->entries[c->count++] = (entry){copy, n};
    pthread_mutex_unlock(&t->lock);
    if (!ok) {
        free(copy);
        return dp_fail(DP_ERR_NOMEM, "out of memory recording %zu expert choices", n);
    }
    return DP_OK;
}

dp_status dp_routing_tape_take(dp_routing_tape *t, int rank, int layer, int32_t *expert, size_t n)
{
    pthread_mutex_lock(&t->lock);
    channel *c = find(t, rank, layer, 0);
    dp_status st = DP_OK;
    if (!c || c->next == c->count)
        st = dp_fail(DP_ERR_INTERNAL, "rank %d, layer %d: no recorded expert choices left to follow (%zu recorded)", rank,
                     layer, c ? c->count : 0);
    else if (c->entries[c->next].n != n)
        st = dp_fail(DP_ERR_INTERNAL, "rank %d, layer %d: %zu expert choices recorded, %zu to follow", rank, layer,
                     c->entries[c->next].n, n);
    else
        memcpy(expert, c->entries[c->next++].expert, sizeof *expert * n);
    pthread_mutex_unlock(&t->lock);
    return st;
}

void dp_routing_tape_note(dp_routing_tape *t, int layer, uint64_t tokens, uint64_t differed, double worst,
                          int worst_token)
{
    pthread_mutex_lock(&t->lock);
    t->report.tokens += tokens;
    t->report.differed += differed;
    if (differed && (t->report.worst_layer < 0 || worst > t->report.worst)) {
        t->report.worst = worst;
        t->report.worst_layer = layer, t->report.worst_token = worst_token;
    }
    pthread_mutex_unlock(&t->lock);
}

/* ----------------------------------------------------------------------------
 * following */

/* the spread of a score difference between experts a and b (and c, d for groups; -1: none):
 * 0.25 rms(norm) sqrt(sum |W_e|^2) */
static double spread(const double *wnorm2, double rms, int a, int b, int c, int d)
{
    double s2 = 0.0;
    int e[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (e[i] >= 0) s2 += wnorm2[e[i]];
    double s = 0.25 * rms * sqrt(s2);
    return s > 0.0 ? s : 1e-30;
}

/* group g's best two experts by biased score (second -1 when the group has one) and their sum */
static double group_score(const float *b, int g, int gsize, int *best, int *second)
{
    int b0 = g * gsize, b1 = -1;
    for (int e = g * gsize + 1; e < (g + 1) * gsize; e++)
        if (b[e] > b[b0]) b0 = e;
    for (int e = g * gsize; e < (g + 1) * gsize; e++)
        if (e != b0 && (b1 < 0 || b[e] > b[b1])) b1 = e;
    *best = b0, *second = b1;
    return (double)b[b0] + (b1 >= 0 ? (double)b[b1] : 0.0);
}

/* How close a tie the recorded choice rec[K] of one token is under the follower's biased scores
 * b: the largest margin by which it loses, over that margin's spread. Groups the choice used
 * that the follower did not keep lose to the follower's weakest kept group; within the groups the
 * choice used, an expert left out that scores above one chosen, and chosen experts out of order,
 * lose by their difference. */
static double closeness(const dp_routing_inputs *in, const float *b, const int32_t *rec, const double *wnorm2,
                        double rms, double *gs, unsigned char *used, unsigned char *kept)
{
    int E = in->experts, G = in->groups, K = in->topk, gsize = E / G;
    double worst = 0.0;
    memset(used, 0, (size_t)G);
    memset(kept, 0, (size_t)G);
    for (int k = 0; k < K; k++) used[rec[k] / gsize] = 1;
    if (G > 1 && in->topk_groups < G) {
        int weakest = -1, x0, x1;
        for (int g = 0; g < G; g++) gs[g] = group_score(b, g, gsize, &x0, &x1);
        for (int j = 0; j < in->topk_groups; j++) { /* the follower's kept groups, best first, lower index on ties */
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!kept[g] && (best < 0 || gs[g] > gs[best])) best = g;
            kept[best] = 1, weakest = best;
        }
        for (int g = 0; g < G; g++)
            if (used[g] && !kept[g]) {
                int a0, a1, c0, c1;
                group_score(b, g, gsize, &a0, &a1);
                group_score(b, weakest, gsize, &c0, &c1);
                double r = (gs[weakest] - gs[g]) / spread(wnorm2, rms, a0, a1, c0, c1);
                if (r > worst) worst = r;
            }
    }
    for (int k = 0; k < K; k++) {
        int d = rec[k];
        if (k + 1 < K && b[rec[k + 1]] > b[d]) {
            double r = ((double)b[rec[k + 1]] - b[d]) / spread(wnorm2, rms, d, rec[k + 1], -1, -1);
            if (r > worst) worst = r;
        }
        for (int e = 0; e < E; e++) {
            if (!used[e / gsize] || b[e] <= b[d]) continue;
            int chosen = 0;
            for (int j = 0; j < K; j++) chosen |= rec[j] == e;
            if (chosen) continue;
            double r = ((double)b[e] - b[d]) / spread(wnorm2, rms, e, d, -1, -1);
            if (r > worst) worst = r;
        }
    }
    return worst;
}

dp_status dp_routing_follow(const dp_routing_inputs *in, const int32_t *recorded, int32_t *expert, float *weight,
                            uint64_t *differed, double *worst, int *worst_token)
{
    int T = in->tokens, E = in->experts, G = in->groups, K = in->topk, h = in->hidden;
    *differed = 0, *worst = 0.0, *worst_token = -1;
    double rms = 0.0;
    for (int i = 0; i < h; i++) rms += (double)in->norm[i] * in->norm[i];
    rms = sqrt(rms / (h > 0 ? h : 1));
    double *wnorm2 = calloc((size_t)E, sizeof *wnorm2), *gs = calloc((size_t)G, sizeof *gs);
    float *b = malloc(sizeof *b * (size_t)E);
    unsigned char *flags = malloc(2 * (size_t)G);
    if (!wnorm2 || !gs || !b || !flags) {
        free(wnorm2), free(gs), free(b), free(flags);
        return dp_fail(DP_ERR_NOMEM, "out of memory following the expert choices of %d experts", E);
    }
    for (int e = 0; e < E; e++)
        for (int i = 0; i < h; i++) wnorm2[e] += (double)in->gate[(size_t)e * h + i] * in->gate[(size_t)e * h + i];
    for (int t = 0; t < T; t++) {
        const int32_t *rec = recorded + (size_t)t * K;
        int32_t *own = expert + (size_t)t * K;
        if (!memcmp(rec, own, sizeof *own * (size_t)K)) continue;
        const float *sc = in->scores + (size_t)t * E;
        for (int e = 0; e < E; e++) b[e] = in->bias ? sc[e] + in->bias[e] : sc[e];
        double r = closeness(in, b, rec, wnorm2, rms, gs, flags, flags + G);
        if (r >= *worst) *worst = r, *worst_token = t;
        (*differed)++;
        /* take the recorded choice, weighted as moe_topk weighs its own */
        float sum = 0.0f;
        for (int k = 0; k < K; k++) own[k] = rec[k], sum += sc[rec[k]];
        for (int k = 0; k < K; k++) weight[(size_t)t * K + k] = sc[rec[k]] / sum * in->route_scale;
    }
    free(wnorm2), free(gs), free(b), free(flags);
    return DP_OK;
}
