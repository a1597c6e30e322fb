/* schedule_write_chrome.c: Chrome trace-event JSON (opens in Perfetto or chrome://tracing),
 * one track per rank, an overlapped F&B pair one event. The `chrome` format draws the
 * simulator's times (one cost unit as 1 ms), and with all-to-all costs a "comm" track per
 * rank holding each action's all-to-all, hidden and exposed; `dualpipe train --trace` draws
 * measured steps. */
#include <math.h>

#include "engine/schedule_internal.h"
#include "engine/schedule_replay.h"

static int has_a2a(const dp_simulation *sim) { return sim && (sim->cost.a2a_f != 0 || sim->cost.a2a_b != 0); }

/* The all-to-all of the action (or pair) at [t0, t1] on the comm track of rank r: the hidden
 * part from the start, under the compute; the exposed part at the end, the time the action
 * lasts beyond its compute. */
static void write_a2a(FILE *out, const dp_simulation *sim, int r, const dp_action *a, int pair, double t0, double t1,
                      const char *name)
{
    const double us = 1000.0;
    dp_span_cost c = dp_span_cost_of(&sim->cost, a, pair);
    double hidden = c.a2a - c.a2a_exposed;
    if (hidden > 0)
        fprintf(out,
                ",\n  {\"name\": \"all-to-all (hidden)\", \"cat\": \"comm\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, "
                "\"ts\": %.3f, \"dur\": %.3f, \"args\": {\"for\": \"%s\"}}",
                sim->num_ranks + r, t0 * us, hidden * us, name);
    if (c.a2a_exposed > 0)
        fprintf(out,
                ",\n  {\"name\": \"all-to-all (exposed)\", \"cat\": \"comm\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, "
                "\"ts\": %.3f, \"dur\": %.3f, \"args\": {\"for\": \"%s\"}}",
                sim->num_ranks + r, (t1 - c.a2a_exposed) * us, c.a2a_exposed * us, name);
}

/* A measured action's exchanges: each in flight on rank r's comm track, from the phase that
 * started it to the end of the wait for it, and the wait itself (its exposed part) on the rank's
 * own track, inside the action. */
static void write_exchanges(FILE *out, int ranks, int r, const dp_action_time *t, const char *step_arg,
                            const char *name)
{
    const double us = 1000.0;
    for (int x = 0; x < t->exchanges && x < DP_ACTION_EXCHANGES; x++) {
        const float *e = t->exchange[x];
        fprintf(out,
                ",\n  {\"name\": \"all-to-all\", \"cat\": \"comm\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, "
                "\"ts\": %.3f, \"dur\": %.3f, \"args\": {%s\"for\": \"%s\", \"exposed ms\": %.3f}}",
                ranks + r, e[0] * us, (e[2] - e[0]) * us, step_arg, name, (double)(e[2] - e[1]));
        if (e[2] - e[1] > 1e-3f)
            fprintf(out,
                    ",\n  {\"name\": \"wait for all-to-all\", \"cat\": \"wait\", \"ph\": \"X\", \"pid\": 0, "
                    "\"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, \"args\": {%s\"for\": \"%s\"}}",
                    r, e[1] * us, (e[2] - e[1]) * us, step_arg, name);
    }
}

/* Whether any measured action has exchanges (then every rank gets a comm track). */
static int measured_exchanges(const dp_schedule *s, const dp_measured_steps *m)
{
    size_t per_step = 0;
    for (int r = 0; r < s->num_ranks; r++) per_step += (size_t)s->num_actions[r];
    for (size_t i = 0; i < per_step * (size_t)m->num_steps; i++)
        if (m->times[i].exchanges > 0) return 1;
    return 0;
}

/* "F0.3" (kind, local stage, micro-batch), or "F0.3 & B1.2" for an overlapped pair */
static void action_name(char *buf, size_t n, const dp_action *a, const dp_action *pair)
{
    if (pair)
        snprintf(buf, n, "%c%d.%d & %c%d.%d", dp_action_letter(a->kind), a->local_stage, a->chunk,
                 dp_action_letter(pair->kind), pair->local_stage, pair->chunk);
    else
        snprintf(buf, n, "%c%d.%d", dp_action_letter(a->kind), a->local_stage, a->chunk);
}

/* One step's events at the simulator's times or at measured ones (this step's, rank after rank,
 * in ms); a step number above 0 goes into each event's args. */
static void write_step(FILE *out, const dp_schedule *s, int step, const dp_simulation *sim,
                       const dp_action_time *measured)
{
    const double us = 1000.0; /* per ms */
    for (int r = 0; r < s->num_ranks; r++) {
        for (int i = 0; i < s->num_actions[r]; i++) {
            const dp_action *a = &s->actions[r][i];
            dp_action_time t = {0};
            if (measured) t = measured[i];
            else t.start = t.ready = sim->start[r][i], t.end = sim->end[r][i];
            char name[64], step_arg[32] = "";
            int pair = a->overlap && i + 1 < s->num_actions[r];
            action_name(name, sizeof name, a, pair ? a + 1 : NULL);
            if (step) snprintf(step_arg, sizeof step_arg, "\"step\": %d, ", step);
            /* from posting its receives until its inputs had arrived */
            if (t.ready - t.start > 1e-3)
                fprintf(out,
                        ",\n  {\"name\": \"wait\", \"cat\": \"wait\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, "
                        "\"ts\": %.3f, \"dur\": %.3f, \"args\": {%s\"for\": \"%s\"}}",
                        r, t.start * us, (t.ready - t.start) * us, step_arg, name);
            fprintf(out,
                    ",\n  {\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.3f, "
                    "\"dur\": %.3f, \"args\": {%s\"dir\": %d, \"chunk\": %d}}",
                    name, a->overlap ? "F&B" : (char[]){dp_action_letter(a->kind), 0}, r, t.ready * us,
                    (t.end - t.ready) * us, step_arg, a->local_stage, a->chunk);
            if (!measured && has_a2a(sim)) write_a2a(out, sim, r, a, pair, t.ready, t.end, name);
            if (measured) write_exchanges(out, s->num_ranks, r, &t, step_arg, name);
            i += pair;
        }
        if (measured) measured += s->num_actions[r];
    }
}

dp_status dp_schedule_write_chrome(FILE *out, const dp_schedule *s, const dp_simulation *sim,
                                   const dp_measured_steps *measured)
{
    if (!measured && !sim) return dp_fail(DP_ERR_INVALID, "a Chrome trace needs simulated or measured times");
    /* every time is written in microseconds: it must stay finite times 1000 (JSON has no inf) */
    if (!measured) {
        DP_CHECK(dp_simulation_check(s, sim));
        if (!isfinite(sim->makespan * 1000.0))
            return dp_fail(DP_ERR_INVALID, "the simulated makespan %g is too large to write in microseconds",
                           sim->makespan);
    } else {
        size_t per_step = 0;
        for (int r = 0; r < s->num_ranks; r++) per_step += (size_t)s->num_actions[r];
        for (size_t i = 0; i < per_step * (size_t)measured->num_steps; i++) {
            const dp_action_time *t = &measured->times[i];
            int finite = isfinite(t->start * 1000.0) && isfinite(t->ready * 1000.0) && isfinite(t->end * 1000.0);
            for (int x = 0; x < t->exchanges && x < DP_ACTION_EXCHANGES; x++)
                for (int k = 0; k < 3; k++) finite &= isfinite(t->exchange[x][k] * 1000.0);
            if (!finite || t->exchanges < 0)
                return dp_fail(DP_ERR_INVALID, "step %zu: a measured time (%g, %g, %g ms, or an exchange's) is not "
                               "finite in microseconds",
                               i / (per_step ? per_step : 1) + 1, t->start, t->ready, t->end);
        }
    }
    fprintf(out, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n");
    char title[160];
    snprintf(title, sizeof title, "%s schedule", s->name);
    fprintf(out, "  {\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 0, \"args\": {\"name\": \"%s\"}}",
            measured && measured->title ? measured->title : title);
    for (int r = 0; r < s->num_ranks; r++)
        fprintf(out, ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, \"args\": {\"name\": \"rank %d\"}}",
                r, r);
    if (measured ? measured_exchanges(s, measured) : has_a2a(sim)) {
        /* rank r's comm track (tid ranks + r) shown right under rank r's */
        for (int r = 0; r < s->num_ranks; r++)
            fprintf(out,
                    ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, \"args\": {\"name\": "
                    "\"rank %d comm\"}}",
                    s->num_ranks + r, r);
        for (int t = 0; t < 2 * s->num_ranks; t++)
            fprintf(out,
                    ",\n  {\"name\": \"thread_sort_index\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, \"args\": "
                    "{\"sort_index\": %d}}",
                    t, t < s->num_ranks ? 2 * t : 2 * (t - s->num_ranks) + 1);
    }
    if (!measured) {
        write_step(out, s, 0, sim, NULL);
    } else {
        size_t per_step = 0;
        for (int r = 0; r < s->num_ranks; r++) per_step += (size_t)s->num_actions[r];
        for (int k = 0; k < measured->num_steps; k++)
            write_step(out, s, k + 1, NULL, measured->times + (size_t)k * per_step);
    }
    fprintf(out, "\n]}\n");
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the Chrome trace failed") : DP_OK;
}
