/* eplb_test_evaluate.h: the eplb tests' own evaluator of a plan, written apart from the
 * library's: an expert's load split evenly over its replicas (counted from phy2log), a GPU's load
 * the sum of its slots', balancedness the mean over loaded layers of mean / max GPU load. */
#ifndef EPLB_TEST_EVALUATE_H
#define EPLB_TEST_EVALUATE_H

#include <stdlib.h>

#include "eplb/eplb.h"

static inline void gpu_loads(const double *w, int E, const int *row, int R, int G, double *load)
{
    int *cnt = calloc((size_t)E, sizeof(int));
    for (int r = 0; r < R; r++) cnt[row[r]]++;
    for (int g = 0; g < G; g++) load[g] = 0;
    for (int r = 0; r < R; r++) load[r / (R / G)] += w[row[r]] / cnt[row[r]];
    free(cnt);
}

static inline double layer_max(const double *wl, const eplb_plan *p, int l)
{
    double *load = malloc(sizeof(double) * (size_t)p->num_gpus), mx = 0;
    gpu_loads(wl, p->num_experts, p->phy2log + (size_t)l * p->num_replicas, p->num_replicas, p->num_gpus, load);
    for (int g = 0; g < p->num_gpus; g++) mx = load[g] > mx ? load[g] : mx;
    free(load);
    return mx;
}

/* mean over layers with load of (mean GPU load / max GPU load) */
static inline double balancedness(const double *w, const eplb_plan *p)
{
    double sum = 0;
    int n = 0;
    for (int l = 0; l < p->num_layers; l++) {
        const double *wl = w + (size_t)l * p->num_experts;
        double total = 0;
        for (int e = 0; e < p->num_experts; e++) total += wl[e];
        if (total <= 0) continue;
        sum += total / p->num_gpus / layer_max(wl, p, l);
        n++;
    }
    return n ? sum / n : 1;
}

#endif
