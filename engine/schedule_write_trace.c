/* schedule_write_trace.c: the `trace` format, a public interface (doc/trace-format.md):
 * one line per compute action in execution order, rank by rank, "RANK KIND DIR CHUNK";
 * the second action of an overlapped F&B pair starts with '&'. */
#include "engine/schedule.h"

dp_status dp_schedule_write_trace(FILE *out, const dp_schedule *s)
{
    for (int r = 0; r < s->num_ranks; r++) {
        for (int i = 0; i < s->num_actions[r]; i++) {
            const dp_action *a = &s->actions[r][i];
            int paired = i > 0 && s->actions[r][i - 1].overlap;
            fprintf(out, "%s%d %c %d %d\n", paired ? "&" : "", r, dp_action_letter(a->kind), a->local_stage, a->chunk);
        }
    }
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the trace failed") : DP_OK;
}
