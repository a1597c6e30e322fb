/* step_timing.c: per-action means and per-rank busy/idle of recorded steps, and the
 * simulator's prediction from the measured means (see step_timing.h). */
#include "tools/step_timing.h"

#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"

int step_timing_init(step_timing *t, int ranks)
{
    *t = (step_timing){0};
    t->ranks = ranks;
    t->busy = calloc((size_t)ranks, sizeof(double));
    t->idle = calloc((size_t)ranks, sizeof(double));
    t->exposed = calloc((size_t)ranks, sizeof(double));
    if (!t->busy || !t->idle || !t->exposed) {
        step_timing_free(t);
        cli_error("out of memory for the timings of %d ranks", ranks);
        return 1;
    }
    return 0;
}

void step_timing_free(step_timing *t)
{
    free(t->busy), free(t->idle), free(t->exposed);
    t->busy = t->idle = t->exposed = NULL;
}

void step_timing_collect(step_timing *t, dp_runtime *rt, int measure)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    double makespan = 0;
    /* every world rank; with data parallelism, world rank w plays pipeline rank w mod the
     * schedule's ranks */
    for (int w = 0; w < t->ranks; w++) {
        const dp_action_time *at = dp_runtime_times(rt, w);
        if (!at) return; /* the runtime records no times */
        int r = w % s->num_ranks;
        double busy = 0, last = 0, exposed = 0;
        for (int i = 0; i < s->num_actions[r];) {
            const dp_action *a = &s->actions[r][i];
            int pair = a->overlap && i + 1 < s->num_actions[r];
            double d = at[i].end - at[i].ready;
            busy += d, exposed += at[i].comm;
            last = at[i].end > last ? at[i].end : last;
            if (measure) {
                int k = pair ? 4 : a->kind;
                t->sum[k] += d, t->count[k]++, t->comm[k] += at[i].comm;
            }
            i += pair ? 2 : 1;
        }
        if (measure) t->busy[w] += busy, t->idle[w] -= busy, t->exposed[w] += exposed;
        makespan = last > makespan ? last : makespan;
    }
    if (measure) {
        for (int w = 0; w < t->ranks; w++) t->idle[w] += makespan;
        t->steps++;
    }
}

/* The costs the measured means give: each kind's compute (its time less its waits for exchanges)
 * and the all-to-all of a forward and of an input-backward, which a lone F and a lone B or I
 * wait for whole (nothing of theirs runs meanwhile). */
static dp_cost measured_costs(const step_timing *t)
{
    double mean[5];
    for (int k = 0; k < 5; k++) mean[k] = t->count[k] ? (t->sum[k] - t->comm[k]) / t->count[k] : 0;
    dp_cost cost = {0};
    cost.f = mean[DP_ACT_F];
    cost.w = t->count[DP_ACT_W] ? mean[DP_ACT_W] : 0;
    cost.b = t->count[DP_ACT_B] ? mean[DP_ACT_B] : mean[DP_ACT_I] + cost.w;
    if (!t->count[DP_ACT_W]) cost.w = cost.b / 2;
    /* noisy timings of tiny models can make a W look longer than a B: a B is at least I + W */
    if (cost.w > cost.b) cost.b = cost.w + mean[DP_ACT_I];
    cost.fb = t->count[4] ? mean[4] : cost.f + cost.b;
    long backs = t->count[DP_ACT_B] + t->count[DP_ACT_I];
    cost.a2a_f = t->count[DP_ACT_F] ? t->comm[DP_ACT_F] / t->count[DP_ACT_F] : 0;
    cost.a2a_b = backs ? (t->comm[DP_ACT_B] + t->comm[DP_ACT_I]) / backs : 0;
    cost.no_overlap = t->no_overlap;
    return cost;
}

int step_timing_predict(const step_timing *t, const dp_schedule *s, dp_simulation *sim)
{
    dp_cost cost = measured_costs(t);
    memset(sim, 0, sizeof *sim);
    if (dp_schedule_simulate(s, &cost, sim) == DP_OK) return 0;
    cli_warn("no simulation from the measured times: %s", dp_last_error());
    return 1;
}

double step_timing_exposed(const step_timing *t)
{
    double sum = 0;
    for (int w = 0; w < t->ranks; w++) sum += t->exposed[w];
    return t->ranks ? sum / t->ranks / (t->steps ? t->steps : 1) : 0;
}

void step_timing_report(const step_timing *t, const dp_schedule *s, FILE *out)
{
    double mean[5];
    for (int k = 0; k < 5; k++) mean[k] = t->count[k] ? t->sum[k] / t->count[k] : 0;
    fprintf(out, "measured mean action times: F %.3f ms, B %.3f ms, I %.3f ms, W %.3f ms, F&B %.3f ms\n", mean[0],
            mean[1], mean[2], mean[3], mean[4]);
    /* the expert exchanges' waits, where the link leaves them in flight (MoE with --ep) */
    int comm = 0;
    for (int k = 0; k < 5; k++) comm |= t->comm[k] > 0;
    double ex[5];
    for (int k = 0; k < 5; k++) ex[k] = t->count[k] ? t->comm[k] / t->count[k] : 0;
    if (comm)
        fprintf(out, "of which waiting for expert all-to-alls (exposed): F %.3f ms, B %.3f ms, I %.3f ms, F&B %.3f ms "
                     "(overlap %s)\n",
                ex[0], ex[1], ex[2], ex[4], t->no_overlap ? "off" : "on");
    dp_simulation sim;
    int simulated = step_timing_predict(t, s, &sim) == 0;
    int steps = t->steps ? t->steps : 1;
    fprintf(out, "per rank, mean per step over %d step%s:   measured               simulated from measured costs\n",
            steps, steps > 1 ? "s" : "");
    if (t->ranks > s->num_ranks)
        fprintf(out, "  (every world rank; world rank = replica x %d + pipeline rank, simulated as its pipeline rank)\n",
                s->num_ranks);
    fprintf(out, "  rank    busy ms    idle ms  idle %%%s        busy ms    idle ms  idle %%%s\n",
            comm ? "  a2a ms" : "", comm ? "  a2a ms" : "");
    for (int w = 0; w < t->ranks; w++) {
        int r = w % s->num_ranks;
        double b = t->busy[w] / steps, i = t->idle[w] / steps;
        fprintf(out, "  %4d %10.2f %10.2f %6.1f%%", w, b, i, 100 * i / (b + i + 1e-12));
        if (comm) fprintf(out, " %7.2f", t->exposed[w] / steps);
        if (simulated)
            fprintf(out, "     %10.2f %10.2f %6.1f%%", sim.busy[r], sim.idle[r],
                    100 * sim.idle[r] / (sim.makespan + 1e-12));
        if (simulated && comm) fprintf(out, " %7.2f", sim.exposed_a2a[r]);
        fprintf(out, "\n");
    }
    if (comm && simulated) {
        double predicted = 0;
        for (int r = 0; r < s->num_ranks; r++) predicted += sim.exposed_a2a[r] / s->num_ranks;
        fprintf(out, "a2a ms: the expert all-to-all exposed per step (waited for, not hidden under compute): measured "
                     "%.2f ms, simulated %.2f ms (mean over ranks; simulated with A2AF %.3f, A2AB %.3f ms, what the lone "
                     "forwards and backwards waited, overlap %s)\n",
                step_timing_exposed(t), predicted, sim.cost.a2a_f, sim.cost.a2a_b, t->no_overlap ? "off" : "on");
    }
    dp_simulation_free(&sim);
}
