/* bench_overlap.c: `dualpipe bench`'s overlap figures: DualPipe and 1F1B with MoE layers at
 * pp 2 x ep 2 and pp 4 x ep 2 over the cpu link's emulated network, each with the overlap of an
 * F&B pair's all-to-alls on and off: the median step, the exposed all-to-all per step measured and
 * as the simulator predicts it from the run's own measured costs (see bench_overlap.h). */
#define _POSIX_C_SOURCE 200809L
#include "tools/bench_overlap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/executor.h"
#include "engine/runtime.h"
#include "tools/cli.h"
#include "tools/step_timing.h"

/* The network the figures are taken over when $DUALPIPE_CPU_LINK does not name one: 2 ms of
 * latency (a long way off a real NIC's microseconds, so that the exchanges outweigh the
 * scheduling noise of rank threads sharing a laptop's cores) and 10 Gb/s. */
#define DEFAULT_LINK "2000,10"

typedef struct {
    const char *schedule;
    int pp, ep;
} overlap_case;

typedef struct {
    double step_ms, measured, simulated, makespan;
} overlap_row;

/* Every layer MoE, one per stage; no optimizer, so that every step routes alike. */
static dp_runtime_config overlap_config(const overlap_case *oc, int quick, int no_overlap)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = oc->schedule, c.ranks = oc->pp, c.chunks = 4 * oc->pp, c.ep = oc->ep;
    c.model.hidden = quick ? 32 : 64, c.model.tokens = quick ? 16 : 64, c.model.layers_per_stage = 1;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 1;
    c.model.moe = (dp_moe_config){.experts = 8, .topk = 2, .expert_hidden = c.model.hidden, .moe_layers_set = 1};
    /* one layer per stage: pp stages (DualPipe holds two copies of them; DualPipeV 2 pp stages) */
    for (int l = 0; l < oc->pp * (strcmp(oc->schedule, "dualpipev") == 0 ? 2 : 1); l++) c.model.moe.moe_layers[l] = 1;
    c.optimizer.kind = DP_OPT_NONE;
    c.threads_per_rank = 1;
    c.record_times = 1;
    c.no_overlap = no_overlap;
    return c;
}

static int run_case(const overlap_case *oc, int quick, int no_overlap, int steps, overlap_row *row)
{
    dp_runtime_config c = overlap_config(oc, quick, no_overlap);
    dp_runtime *rt;
    if (dp_runtime_create(&c, &rt) != DP_OK) {
        cli_error("%s pp %d ep %d: %s", oc->schedule, oc->pp, oc->ep, dp_last_error());
        return 1;
    }
    const dp_schedule *s = dp_runtime_schedule(rt);
    size_t n = (size_t)oc->ep * c.chunks * c.model.tokens * c.model.hidden;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    float *l = malloc(sizeof(float) * (size_t)oc->ep * c.chunks);
    double *t = malloc(sizeof(double) * (size_t)(steps + 1));
    step_timing tm;
    int rc = step_timing_init(&tm, s->num_ranks * oc->ep);
    tm.no_overlap = no_overlap;
    if (!x || !y || !l || !t) {
        cli_error("out of memory for a step of %zu floats", n);
        rc = 1;
    }
    for (size_t i = 0; !rc && i < n; i++) x[i] = dp_counter_uniform(3, 0, i), y[i] = dp_counter_uniform(3, 1, i);
    for (int i = 0; !rc && i <= steps; i++) {
        double t0 = dp_now_ms();
        if (dp_runtime_train_step(rt, x, y, l) != DP_OK) {
            cli_error("%s pp %d ep %d: %s", oc->schedule, oc->pp, oc->ep, dp_last_error());
            rc = 1;
            break;
        }
        t[i] = dp_now_ms() - t0;
        step_timing_collect(&tm, rt, i > 0); /* the first step warms up */
    }
    if (!rc) {
        cli_sort_doubles(t + 1, (size_t)steps);
        row->step_ms = t[1 + steps / 2];
        row->measured = step_timing_exposed(&tm);
        dp_simulation sim;
        if (step_timing_predict(&tm, s, &sim) == 0) {
            double sum = 0;
            for (int r = 0; r < s->num_ranks; r++) sum += sim.exposed_a2a[r];
            row->simulated = sum / s->num_ranks;
            row->makespan = sim.makespan;
            dp_simulation_free(&sim);
        } else {
            rc = 1;
        }
    }
    step_timing_free(&tm);
    free(x), free(y), free(l), free(t);
    dp_runtime_destroy(rt);
    return rc;
}

int bench_overlap(int quick, int steps)
{
    const char *env = getenv("DUALPIPE_CPU_LINK");
    int ours = !env || !*env;
    if (ours && setenv("DUALPIPE_CPU_LINK", DEFAULT_LINK, 1) != 0) {
        cli_error("cannot set DUALPIPE_CPU_LINK for the emulated network");
        return 1;
    }
    static const overlap_case cases[] = {
        {"dualpipe", 2, 2}, {"1f1b", 2, 2}, {"dualpipe", 4, 2}, {"1f1b", 4, 2},
    };
    int ncases = quick ? 2 : (int)(sizeof cases / sizeof *cases);
    printf("Overlap of the expert all-to-all (MoE in every layer, 8 experts, top 2, hidden %d, %d tokens, 4 pp "
           "micro-batches per pipeline; cpu link emulating DUALPIPE_CPU_LINK=%s: latency us, Gb/s per rank; median "
           "step of %d)\n",
           quick ? 32 : 64, quick ? 16 : 64, ours ? DEFAULT_LINK : env, steps);
    printf("  %-9s %3s %3s %8s %9s %13s %13s %9s\n", "schedule", "pp", "ep", "overlap", "step ms", "exposed ms",
           "simulated ms", "measured/");
    printf("  %-9s %3s %3s %8s %9s %13s %13s %9s\n", "", "", "", "", "", "(a2a/step)", "(a2a/step)", "simulated");
    int rc = 0;
    overlap_row dualpipe_on = {0}, dualpipe_off = {0};
    for (int i = 0; i < ncases; i++) {
        overlap_row on = {0}, off = {0};
        for (int no = 0; no < 2; no++) {
            overlap_row *row = no ? &off : &on;
            if (run_case(&cases[i], quick, no, steps, row)) {
                rc = 1;
                continue;
            }
            printf("  %-9s %3d %3d %8s %9.1f %13.2f %13.2f %9.2f\n", cases[i].schedule, cases[i].pp, cases[i].ep,
                   no ? "off" : "on", row->step_ms, row->measured, row->simulated,
                   row->simulated > 0 ? row->measured / row->simulated : 0);
            fflush(stdout);
        }
        if (on.step_ms > 0 && off.step_ms > 0)
            printf("  %-9s %3d %3d  overlap on / off: step %.2f, exposed all-to-all %.2f\n", cases[i].schedule,
                   cases[i].pp, cases[i].ep, on.step_ms / off.step_ms, off.measured > 0 ? on.measured / off.measured : 0);
        if (strcmp(cases[i].schedule, "dualpipe") == 0) dualpipe_on = on, dualpipe_off = off;
        else if (dualpipe_on.step_ms > 0 && on.step_ms > 0 && off.step_ms > 0)
            printf("  dualpipe / %s at pp %d x ep %d, same model: step %.2f with the overlap, %.2f without\n",
                   cases[i].schedule, cases[i].pp, cases[i].ep, dualpipe_on.step_ms / on.step_ms,
                   dualpipe_off.step_ms / off.step_ms);
    }
    printf("  (exposed: time a rank waited for exchanges in flight, mean over ranks; simulated: the cost model fed\n"
           "   the run's own compute times and the all-to-all its lone forwards and backwards waited for)\n");
    if (ours) unsetenv("DUALPIPE_CPU_LINK");
    return rc;
}
