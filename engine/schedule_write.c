/* schedule_write.c: picks a writer by format name; each format lives in its own file. */
#include <math.h>
#include <string.h>

#include "engine/schedule_internal.h"

dp_status dp_schedule_write_trace(FILE *out, const dp_schedule *s);
dp_status dp_schedule_write_json(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                 const dp_schedule_report *rep);
dp_status dp_schedule_write_svg(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                const dp_schedule_report *rep);

static const char *const format_names[] = {"text", "trace", "json", "svg", "chrome"};

dp_status dp_schedule_format_parse(const char *name, dp_schedule_format *fmt)
{
    for (int i = 0; i < (int)(sizeof format_names / sizeof *format_names); i++) {
        if (name && strcmp(name, format_names[i]) == 0) {
            *fmt = (dp_schedule_format)i;
            return DP_OK;
        }
    }
    return dp_fail(DP_ERR_INVALID, "unknown format '%s'; known formats: text, trace, json, svg, chrome",
                   name ? name : "");
}

int dp_cost_has_comm(const dp_cost *c) { return c->p2p != 0 || c->a2a_f != 0 || c->a2a_b != 0; }

dp_status dp_simulation_check(const dp_schedule *s, const dp_simulation *sim)
{
    if (!sim || sim->num_ranks != s->num_ranks || !sim->start || !sim->end)
        return dp_fail(DP_ERR_INVALID, "no simulation of the schedule's %d ranks to draw", s->num_ranks);
    if (!isfinite(sim->makespan) || sim->makespan < 0)
        return dp_fail(DP_ERR_INVALID, "the simulated makespan is %g: times must be finite numbers >= 0",
                       sim->makespan);
    for (int r = 0; r < s->num_ranks; r++) {
        if (!isfinite(sim->busy[r]) || !isfinite(sim->idle[r]))
            return dp_fail(DP_ERR_INVALID, "rank %d: simulated busy %g and idle %g must be finite", r, sim->busy[r],
                           sim->idle[r]);
        for (int i = 0; i < s->num_actions[r]; i++) {
            double t0 = sim->start[r][i], t1 = sim->end[r][i];
            if (!isfinite(t0) || !isfinite(t1) || t0 < 0 || t1 < t0) {
                const dp_action *a = &s->actions[r][i];
                return dp_fail(DP_ERR_INVALID,
                               "rank %d action %d (%c local stage %d micro-batch %d): simulated start %g and end %g "
                               "must be finite, >= 0 and in order",
                               r, i, dp_action_letter(a->kind), a->local_stage, a->chunk, t0, t1);
            }
        }
    }
    return DP_OK;
}

dp_status dp_schedule_write(FILE *out, dp_schedule_format fmt, const dp_schedule *s, const dp_cost *cost,
                            const dp_simulation *sim, const dp_schedule_report *report)
{
    if (fmt != DP_FORMAT_TRACE) DP_CHECK(dp_simulation_check(s, sim));
    switch (fmt) {
    case DP_FORMAT_TEXT: return dp_schedule_write_text(out, s, cost, sim, report, DP_TEXT_DEFAULT_WIDTH);
    case DP_FORMAT_TRACE: return dp_schedule_write_trace(out, s);
    case DP_FORMAT_JSON: return dp_schedule_write_json(out, s, cost, sim, report);
    case DP_FORMAT_SVG: return dp_schedule_write_svg(out, s, cost, sim, report);
    case DP_FORMAT_CHROME: return dp_schedule_write_chrome(out, s, sim, NULL);
    }
    return dp_fail(DP_ERR_INVALID, "unknown format %d", (int)fmt);
}
