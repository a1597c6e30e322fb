/* schedule_write_json.c: the `json` format: the schedule's shape and cost model, every
 * action with its simulated start and end, and per-rank busy, idle, peak activations and
 * parameter copies (with communication costs, exposed communication too), with the makespan. */
#include "engine/schedule_internal.h"

dp_status dp_schedule_write_json(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                 const dp_schedule_report *rep)
{
    fprintf(out, "{\n  \"schedule\": \"%s\",\n  \"num_ranks\": %d,\n  \"num_stages\": %d,\n  \"num_pipes\": %d,\n"
                 "  \"num_chunks\": %d,\n",
            s->name, s->num_ranks, s->num_stages, s->num_pipes, s->num_chunks);
    /* communication fields only with communication costs: output without them stays as it was */
    int comm = dp_cost_has_comm(c) && sim->exposed_a2a && sim->exposed_p2p && sim->exposed_comm;
    fprintf(out, "  \"cost\": {\"F\": %.17g, \"B\": %.17g, \"W\": %.17g, \"FB\": %.17g, \"P2P\": %.17g", c->f, c->b,
            c->w, c->fb, c->p2p);
    if (comm || c->no_overlap)
        fprintf(out, ", \"A2AF\": %.17g, \"A2AB\": %.17g, \"overlap\": %s", c->a2a_f, c->a2a_b,
                c->no_overlap ? "false" : "true");
    fprintf(out, "},\n");
    fprintf(out, "  \"makespan\": %.17g,\n  \"max_peak_activations\": %d,\n  \"ranks\": [\n", sim->makespan,
            rep->max_peak_activations);
    for (int r = 0; r < s->num_ranks; r++) {
        fprintf(out,
                "    {\"rank\": %d, \"busy\": %.17g, \"idle\": %.17g, \"peak_activations\": %d, \"param_copies\": %d,\n",
                r, sim->busy[r], sim->idle[r], rep->peak_activations[r], rep->param_copies[r]);
        if (comm)
            fprintf(out, "     \"exposed_a2a\": %.17g, \"exposed_p2p\": %.17g, \"exposed_comm\": %.17g,\n",
                    sim->exposed_a2a[r], sim->exposed_p2p[r], sim->exposed_comm[r]);
        fprintf(out, "     \"actions\": [");
        for (int i = 0; i < s->num_actions[r]; i++) {
            const dp_action *a = &s->actions[r][i];
            int paired = i > 0 && s->actions[r][i - 1].overlap;
            fprintf(out, "%s\n       {\"kind\": \"%c\", \"dir\": %d, \"chunk\": %d, \"stage\": %d, \"start\": %.17g, "
                         "\"end\": %.17g, \"overlapped\": %s}",
                    i ? "," : "", dp_action_letter(a->kind), a->local_stage, a->chunk, s->slot_stage[a->local_stage][r],
                    sim->start[r][i], sim->end[r][i], a->overlap || paired ? "true" : "false");
        }
        fprintf(out, "\n     ]}%s\n", r + 1 < s->num_ranks ? "," : "");
    }
    fprintf(out, "  ]\n}\n");
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the JSON failed") : DP_OK;
}
