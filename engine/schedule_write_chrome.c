/* schedule_write_chrome.c: the `chrome` format: Chrome trace-event JSON (opens in
 * Perfetto or chrome://tracing), one track per rank, one cost unit drawn as 1 ms. An
 * overlapped F&B pair is one event. */
#include "engine/schedule.h"

dp_status dp_schedule_write_chrome(FILE *out, const dp_schedule *s, const dp_simulation *sim)
{
    const double us = 1000.0; /* one cost unit */
    fprintf(out, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n");
    fprintf(out, "  {\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 0, \"args\": {\"name\": \"%s schedule\"}}",
            s->name);
    for (int r = 0; r < s->num_ranks; r++)
        fprintf(out, ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, \"args\": {\"name\": \"rank %d\"}}",
                r, r);
    for (int r = 0; r < s->num_ranks; r++) {
        for (int i = 0; i < s->num_actions[r]; i++) {
            const dp_action *a = &s->actions[r][i];
            char name[64];
            if (a->overlap && i + 1 < s->num_actions[r]) {
                const dp_action *b = a + 1;
                snprintf(name, sizeof name, "%c%d.%d & %c%d.%d", dp_action_letter(a->kind), a->local_stage, a->chunk,
                         dp_action_letter(b->kind), b->local_stage, b->chunk);
                i++;
            } else {
                snprintf(name, sizeof name, "%c%d.%d", dp_action_letter(a->kind), a->local_stage, a->chunk);
            }
            fprintf(out,
                    ",\n  {\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.3f, "
                    "\"dur\": %.3f, \"args\": {\"dir\": %d, \"chunk\": %d}}",
                    name, a->overlap ? "F&B" : (char[]){dp_action_letter(a->kind), 0}, r, sim->start[r][i] * us,
                    (sim->end[r][i] - sim->start[r][i]) * us, a->local_stage, a->chunk);
        }
    }
    fprintf(out, "\n]}\n");
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the Chrome trace failed") : DP_OK;
}
