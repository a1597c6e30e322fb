/* bench_eplb.c: how fast and how well both policies plan real expert loads. For every file
 * (default: tests/data/eplb_prefill_in1024.json, DeepSeek-V3 serving statistics) and every
 * typical shape it prints planning time for all layers (median of several runs, one core),
 * balancedness next to the best possible, and same-GPU duplicates. Then how planning time
 * grows with the replicas of one layer: 10^3 to 10^6 (10^5 with --quick), for 256 real
 * experts with 500 replicas per GPU (more replicas than GPUs per expert) and for skewed
 * synthetic loads of R / 10 experts with 100 replicas per GPU. Prints, never asserts.
 * Usage: bench_eplb [--quick] [FILE...]; --quick plans each shape 3 times instead of 11. */
#define _POSIX_C_SOURCE 200809L
#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/eplb_input.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    int replicas, gpus, groups, nodes, cross;
    const char *what;
} shape;

/* Skewed loads as routed-token counts look: about 1 / rank, ranks shuffled, some zero. */
static void skewed_loads(double *w, int E)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int e = 0; e < E; e++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int rank = (int)(x % (uint64_t)E) + 1;
        w[e] = (x >> 40) % 16 == 0 ? 0 : (double)(1000000 / rank + (x >> 20) % 100);
    }
}

/* Planning time of one layer as it grows: the median of `runs` (one run from 10^6 up). */
static int scaling(const double *real_layer, int real_experts, int quick)
{
    printf("\nplanning time of one layer by replicas (median of runs, ms):\n");
    printf("%-40s %8s %6s %8s %-8s %10s %9s %8s %4s\n", "loads", "replicas", "gpus", "experts",
           "policy", "time(ms)", "balanced", "dups", "cut");
    int top = quick ? 100000 : 1000000;
    for (int series = 0; series < 2; series++)
        for (int R = 1000; R <= top; R *= 10) {
            int E = series == 0 ? real_experts : R / 10, G = series == 0 ? R / 500 : R / 100;
            double *w = malloc((size_t)E * sizeof(double));
            if (!w) return 1;
            if (series == 0)
                for (int e = 0; e < E; e++) w[e] = real_layer[e];
            else
                skewed_loads(w, E);
            for (int pol = 1; pol >= 0; pol--) {
                eplb_config c = eplb_config_default(R, G);
                c.policy = pol;
                int runs = R >= 1000000 ? 1 : quick ? 3 : 5;
                double t[5];
                eplb_plan plan = {0};
                for (int r = 0; r < runs; r++) {
                    if (r) eplb_plan_free(&plan);
                    double t0 = now_ms();
                    if (eplb_rebalance(w, 1, E, &c, &plan) != EPLB_OK) {
                        cli_error("%d replicas: %s", R, eplb_last_error());
                        free(w);
                        return 1;
                    }
                    t[r] = now_ms() - t0;
                }
                qsort(t, runs, sizeof t[0], cmp_double);
                double bal = 0;
                eplb_plan_balancedness(w, &plan, &c, &bal, NULL, NULL);
                printf("%-40s %8d %6d %8d %-8s %10.3f %9.6f %8ld %4d\n",
                       series == 0 ? "real layer, 500 replicas per GPU"
                                   : "skewed, R/10 experts, 100 per GPU",
                       R, G, E, pol ? "deepseek" : "balanced", t[runs / 2], bal,
                       eplb_plan_duplicates(&plan), plan.layers_cut_short);
                fflush(stdout);
                eplb_plan_free(&plan);
            }
            free(w);
        }
    return 0;
}

int main(int argc, char **argv)
{
    cli_program = "bench_eplb";
    const shape shapes[] = {
        {288, 32, 8, 4, 0, "4 nodes, groups kept on nodes"},
        {288, 32, 8, 4, 1, "4 nodes, --cross-nodes"},
        {288, 32, 8, 1, 0, "global"},
        {320, 64, 8, 8, 0, "8 nodes, groups kept on nodes"},
        {320, 64, 8, 8, 1, "8 nodes, --cross-nodes"},
        {320, 64, 8, 16, 0, "16 nodes: global (8 groups % 16)"},
    };
    const char *fallback = "tests/data/eplb_prefill_in1024.json";
#ifndef EPLB_SRCDIR
#define EPLB_SRCDIR "."
#endif
    const char *top = getenv("top_srcdir"); /* else the source tree this was built from */
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", top ? top : EPLB_SRCDIR, fallback);
    enum { RUNS = 11, QUICK_RUNS = 3 };
    int runs = RUNS;
    if (argc > 1 && strcmp(argv[1], "--quick") == 0) runs = QUICK_RUNS, argc--, argv++;
    if (argc > 1 && argv[1][0] == '-') {
        cli_error("unknown option '%s'; usage: bench_eplb [--quick] [FILE...]", argv[1]);
        return CLI_EXIT_USAGE;
    }
    int nfiles = argc > 1 ? argc - 1 : 1;
    double *busiest = NULL; /* the first file's most loaded layer, for the scaling series */
    int busiest_experts = 0;
    printf("%-28s %-40s %-8s %9s %9s %9s %5s\n", "file", "shape", "policy", "time(ms)",
           "balanced", "best", "dups");
    for (int f = 0; f < nfiles; f++) {
        const char *file = argc > 1 ? argv[f + 1] : path;
        eplb_loads in;
        if (eplb_read_loads(file, &in)) return 1;
        const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
        if (!busiest) {
            int lb = 0;
            double most = -1;
            for (int l = 0; l < in.layers; l++) {
                double sum = 0;
                for (int e = 0; e < in.experts; e++) sum += in.w[(size_t)l * in.experts + e];
                if (sum > most) most = sum, lb = l;
            }
            busiest = malloc((size_t)in.experts * sizeof(double));
            if (!busiest) return 1;
            for (int e = 0; e < in.experts; e++) busiest[e] = in.w[(size_t)lb * in.experts + e];
            busiest_experts = in.experts;
        }
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            const shape *s = &shapes[k];
            for (int pol = 1; pol >= 0; pol--) {
                if (pol == EPLB_POLICY_DEEPSEEK && s->cross) continue; /* no such option there */
                eplb_config c = eplb_config_default(s->replicas, s->gpus);
                c.num_groups = s->groups;
                c.num_nodes = s->nodes;
                c.cross_nodes = s->cross;
                c.policy = pol;
                double t[RUNS];
                eplb_plan plan = {0};
                for (int r = 0; r < runs; r++) {
                    if (r) eplb_plan_free(&plan);
                    double t0 = now_ms();
                    if (eplb_rebalance(in.w, in.layers, in.experts, &c, &plan) != EPLB_OK) {
                        cli_error("%s: %s", file, eplb_last_error());
                        return 1;
                    }
                    t[r] = now_ms() - t0;
                }
                qsort(t, runs, sizeof t[0], cmp_double);
                double bal = 0, best = 0;
                eplb_plan_balancedness(in.w, &plan, &c, &bal, NULL, &best);
                char sh[64];
                snprintf(sh, sizeof sh, "%d/%d %s", s->replicas, s->gpus, s->what);
                printf("%-28.28s %-40.40s %-8s %9.3f %9.5f %9.5f %5ld\n", base, sh,
                       pol ? "deepseek" : "balanced", t[runs / 2], bal, best,
                       eplb_plan_duplicates(&plan));
                fflush(stdout);
                eplb_plan_free(&plan);
            }
        }
        eplb_loads_free(&in);
    }
    int rc = scaling(busiest, busiest_experts, runs == QUICK_RUNS);
    free(busiest);
    return rc;
}
