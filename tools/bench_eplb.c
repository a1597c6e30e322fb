/* bench_eplb.c: how fast and how well both policies plan real expert loads. For every file
 * (default: tests/data/eplb_prefill_in1024.json, DeepSeek-V3 serving statistics) and every
 * typical shape it prints planning time for all layers (median of several runs, one core),
 * balancedness next to the best possible, and same-GPU duplicates. Prints, never asserts.
 * Usage: bench_eplb [--quick] [FILE...]; --quick plans each shape 3 times instead of 11. */
#define _POSIX_C_SOURCE 200809L
#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/eplb_input.h"

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
    printf("%-28s %-40s %-8s %9s %9s %9s %5s\n", "file", "shape", "policy", "time(ms)",
           "balanced", "best", "dups");
    for (int f = 0; f < nfiles; f++) {
        const char *file = argc > 1 ? argv[f + 1] : path;
        eplb_loads in;
        if (eplb_read_loads(file, &in)) return 1;
        const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
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
    return 0;
}
