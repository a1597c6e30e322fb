/* test_eplb_scale.c: the balanced policy on large layers (10^5 replicas, or 20 000 on 20 GPUs
 * with more replicas per expert than GPUs), where its cost once grew with the square of the
 * replicas per GPU: each plan must be valid, free of avoidable duplicates, at least as
 * balanced as deepseek's and close to the bound, its refinement not cut short. No timing is
 * asserted here (tools/bench_eplb prints planning times); these shapes took minutes before. */
#include "eplb/eplb.h"
#include "tests/eplb_test_evaluate.h"
#include "tests/tap.h"
#include "tools/cli.h"
#include "tools/eplb_input.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Skewed synthetic loads, as routed-token counts look: a few hot experts, a long tail
 * (about 1 / rank, ranks shuffled), some experts without load. Deterministic. */
static void skewed_loads(double *w, int E)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int e = 0; e < E; e++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int rank = (int)(x % (uint64_t)E) + 1;
        w[e] = (x >> 40) % 16 == 0 ? 0 : (double)(1000000 / rank + (x >> 20) % 100);
    }
}

typedef struct {
    const char *what;
    int replicas, gpus, groups, nodes, cross;
    int real; /* 1: layer 10 of the real loads; 0: skewed synthetic loads of `experts` */
    int experts;
    double at_least; /* balancedness */
} scale_case;

int main(void)
{
    cli_program = "test_eplb_scale";
    const char *top = getenv("top_srcdir");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/eplb_prefill_in1024.json", top ? top : ".");
    eplb_loads in;
    if (!tap_ok(eplb_read_loads(path, &in) == 0 && in.layers == 61 && in.experts == 256,
                "read %s", path))
        return tap_done();
    const scale_case cases[] = {
        {"10^5 replicas, 10^4 experts on 100 GPUs", 100000, 100, 1, 1, 0, 0, 10000, 0.999},
        {"10^5 replicas of 256 experts on 2 GPUs", 100000, 2, 1, 1, 0, 1, 256, 0.9999},
        {"20 000 replicas of 256 experts on 20 GPUs", 20000, 20, 1, 1, 0, 1, 256, 0.9999},
        {"10^5 replicas on 100 GPUs, groups kept on 4 nodes", 100000, 100, 8, 4, 0, 1, 256, 0.7},
        {"10^5 replicas on 100 GPUs, --cross-nodes", 100000, 100, 8, 4, 1, 1, 256, 0.999},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const scale_case *c = &cases[k];
        int E = c->experts;
        double *w = malloc((size_t)E * sizeof(double));
        if (c->real)
            for (int e = 0; e < E; e++) w[e] = in.w[(size_t)10 * in.experts + e];
        else
            skewed_loads(w, E);
        eplb_config cfg = eplb_config_default(c->replicas, c->gpus);
        cfg.num_groups = c->groups;
        cfg.num_nodes = c->nodes;
        cfg.cross_nodes = c->cross;
        eplb_plan bal, ref;
        int st = eplb_rebalance(w, 1, E, &cfg, &bal);
        cfg.policy = EPLB_POLICY_DEEPSEEK;
        st |= eplb_rebalance(w, 1, E, &cfg, &ref);
        cfg.policy = EPLB_POLICY_BALANCED;
        if (!tap_ok(st == EPLB_OK, "%s: both policies plan", c->what)) {
            tap_diag("%s", eplb_last_error());
            free(w);
            continue;
        }
        tap_is_int(eplb_plan_check(&bal), EPLB_OK, "%s: plan invariants", c->what);
        double b = balancedness(w, &bal), b_ref = balancedness(w, &ref), best = 0;
        eplb_plan_balancedness(w, &bal, &cfg, NULL, NULL, &best);
        tap_ok(b >= b_ref, "%s: balancedness %.6f >= deepseek's %.6f", c->what, b, b_ref);
        tap_ok(b >= c->at_least && b >= best - 1e-3,
               "%s: balancedness %.6f >= %g and within 0.001 of the best possible %.6f", c->what,
               b, c->at_least, best);
        /* Duplicates: none when every expert fits on the GPUs it may use; else no more than
         * deepseek's (which spreads no replica on purpose). */
        long dups = eplb_plan_duplicates(&bal), ref_dups = eplb_plan_duplicates(&ref);
        if ((long)c->replicas <= (long)E * c->gpus)
            tap_is_int(dups, 0, "%s: no same-GPU duplicates", c->what);
        else
            tap_ok(dups >= 0 && dups <= ref_dups, "%s: %ld same-GPU duplicates <= deepseek's %ld",
                   c->what, dups, ref_dups);
        tap_is_int(bal.layers_cut_short, 0, "%s: refinement finished within its work limit",
                   c->what);
        eplb_plan_free(&bal);
        eplb_plan_free(&ref);
        free(w);
    }
    eplb_loads_free(&in);
    return tap_done();
}
