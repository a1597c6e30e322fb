/* schedule_write_text.c: the `text` format, a per-rank timeline for the terminal drawn
 * from the simulation: one row per rank, each action a cell as wide as its cost, the
 * kind in upper case for direction (local stage) 0 and lower case for 1, followed by the
 * micro-batch; an overlapped pair is one cell "F3&b1"; '.' is idle time. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/schedule.h"

static void label(const dp_action *a, char *buf, size_t n)
{
    char k = dp_action_letter(a->kind);
    snprintf(buf, n, "%c%d", a->local_stage ? (char)tolower((unsigned char)k) : k, a->chunk);
}

dp_status dp_schedule_write_text(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                 const dp_schedule_report *rep)
{
    /* columns per cost unit: wide enough for "F12" in a unit action, the row under ~240 */
    double unit = c->f > 0 ? c->f : 1;
    double scale = 4.0 / unit;
    if (sim->makespan * scale > 240) scale = 240 / sim->makespan;
    if (!isfinite(scale) || !(scale > 0))
        return dp_fail(DP_ERR_INVALID, "costs this small (F=%g, makespan %g) cannot be drawn: take larger units",
                       c->f, sim->makespan);
    int width = (int)ceil(sim->makespan * scale);
    char *row = malloc((size_t)width + 1);
    if (!row) return dp_fail(DP_ERR_NOMEM, "out of memory drawing a timeline");

    fprintf(out, "%s: %d ranks, %d stages per pipe, %d pipe%s, %d micro-batches; cost F=%g B=%g W=%g F&B=%g P2P=%g\n",
            s->name, s->num_ranks, s->num_stages, s->num_pipes, s->num_pipes > 1 ? "s" : "", s->num_chunks, c->f, c->b,
            c->w, c->fb, c->p2p);
    fprintf(out, "F forward, B backward, I input-gradient backward, W weight gradient; upper case: %s, lower case: %s;\n"
                 "X&y: an overlapped F&B pair; '.': idle\n\n",
            s->num_pipes == 2 ? "direction 0 (enters at rank 0)" : s->num_local_stages == 2 ? "first local stage" : "the stage",
            s->num_pipes == 2 ? "direction 1 (enters at the last rank)" : "second local stage");
    for (int r = 0; r < s->num_ranks; r++) {
        memset(row, '.', (size_t)width);
        row[width] = '\0';
        for (int i = 0; i < s->num_actions[r]; i++) {
            const dp_action *a = &s->actions[r][i];
            int c0 = (int)lround(sim->start[r][i] * scale), c1 = (int)lround(sim->end[r][i] * scale);
            if (c1 <= c0) c1 = c0 + 1;
            char text[48], second[24];
            label(a, text, sizeof text);
            if (a->overlap && i + 1 < s->num_actions[r]) {
                label(a + 1, second, sizeof second);
                strncat(text, "&", sizeof text - strlen(text) - 1);
                strncat(text, second, sizeof text - strlen(text) - 1);
                i++;
            }
            /* "|F3 " : a border, then the label clipped to the cell */
            if (c0 >= width) continue;
            row[c0] = '|';
            for (int x = c0 + 1; x < c1 && x < width; x++) {
                size_t j = (size_t)(x - c0 - 1);
                row[x] = j < strlen(text) ? text[j] : ' ';
            }
        }
        fprintf(out, "rank %2d %s\n", r, row);
    }
    fprintf(out, "\n%-8s %10s %10s %8s %7s\n", "rank", "busy", "idle", "peak act", "params");
    for (int r = 0; r < s->num_ranks; r++)
        fprintf(out, "%-8d %10g %10g %8d %6dx\n", r, sim->busy[r], sim->idle[r], rep->peak_activations[r],
                rep->param_copies[r]);
    fprintf(out, "makespan %g\n", sim->makespan);
    free(row);
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the timeline failed") : DP_OK;
}
