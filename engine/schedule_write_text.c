/* schedule_write_text.c: the `text` format, a per-rank timeline for the terminal drawn
 * from the simulation: one row per rank, each action a cell as wide as its cost, the
 * kind in upper case for direction (local stage) 0 and lower case for 1, followed by the
 * micro-batch; an overlapped pair is one cell "F3&b1"; '.' is idle time. A timeline wider
 * than the page is cut into bands of time, one under the other, each headed by its times. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/schedule_internal.h"

/* Writes text broken at spaces into lines of at most width columns (a longer word alone). */
static void put_wrapped(FILE *out, const char *text, int width)
{
    int col = 0;
    while (*text) {
        size_t word = strcspn(text, " ");
        if (col > 0 && col + 1 + (int)word > width) {
            fputc('\n', out);
            col = 0;
        } else if (col > 0) {
            fputc(' ', out);
            col++;
        }
        fwrite(text, 1, word, out);
        col += (int)word;
        text += word;
        while (*text == ' ') text++;
    }
    fputc('\n', out);
}

static void label(const dp_action *a, char *buf, size_t n)
{
    char k = dp_action_letter(a->kind);
    snprintf(buf, n, "%c%d", a->local_stage ? (char)tolower((unsigned char)k) : k, a->chunk);
}

dp_status dp_schedule_write_text(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                 const dp_schedule_report *rep, int page_width)
{
    if (page_width < DP_TEXT_MIN_WIDTH)
        return dp_fail(DP_ERR_INVALID, "a text timeline needs at least %d columns (asked for %d)", DP_TEXT_MIN_WIDTH,
                       page_width);
    DP_CHECK(dp_simulation_check(s, sim));
    /* columns per cost unit: wide enough for "F12" in a unit action, the row under ~240 */
    double unit = c->f > 0 ? c->f : 1;
    double scale = 4.0 / unit;
    if (sim->makespan * scale > 240) scale = 240 / sim->makespan;
    if (!isfinite(scale) || !(scale > 0))
        return dp_fail(DP_ERR_INVALID, "costs this small (F=%g, makespan %g) cannot be drawn: take larger units",
                       c->f, sim->makespan);
    int width = (int)ceil(sim->makespan * scale);
    /* "rank %2d " before each row; what does not fit goes into further bands */
    int band = page_width - snprintf(NULL, 0, "rank %2d ", s->num_ranks - 1);
    int bands = width > band ? (width + band - 1) / band : 1;
    char **rows = calloc((size_t)s->num_ranks, sizeof *rows);
    if (!rows) return dp_fail(DP_ERR_NOMEM, "out of memory drawing a timeline");
    for (int r = 0; r < s->num_ranks; r++)
        if (!(rows[r] = malloc((size_t)width + 1))) {
            for (int q = 0; q < r; q++) free(rows[q]);
            free(rows);
            return dp_fail(DP_ERR_NOMEM, "out of memory drawing a timeline");
        }

    char text[512];
    int n = snprintf(text, sizeof text, "%s: %d ranks, %d stages per pipe, %d pipe%s, %d micro-batches; cost F=%g B=%g "
                     "W=%g F&B=%g P2P=%g", s->name, s->num_ranks, s->num_stages, s->num_pipes,
                     s->num_pipes > 1 ? "s" : "", s->num_chunks, c->f, c->b, c->w, c->fb, c->p2p);
    if (c->a2a_f != 0 || c->a2a_b != 0)
        n += snprintf(text + n, sizeof text - (size_t)n, " A2AF=%g A2AB=%g", c->a2a_f, c->a2a_b);
    if (c->no_overlap) snprintf(text + n, sizeof text - (size_t)n, "; pairs not overlapped");
    put_wrapped(out, text, page_width);
    snprintf(text, sizeof text, "F forward, B backward, I input-gradient backward, W weight gradient; upper case: %s, "
             "lower case: %s; X&y: an overlapped F&B pair; '.': idle",
             s->num_pipes == 2 ? "direction 0 (enters at rank 0)" : s->num_local_stages == 2 ? "first local stage" : "the stage",
             s->num_pipes == 2 ? "direction 1 (enters at the last rank)" : "second local stage");
    put_wrapped(out, text, page_width);
    fputc('\n', out);
    for (int r = 0; r < s->num_ranks; r++) {
        char *row = rows[r];
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
    }
    for (int b = 0; b < bands; b++) {
        int from = b * band, cols = width - from < band ? width - from : band;
        if (bands > 1)
            fprintf(out, "%stime %g to %g (band %d of %d)\n", b ? "\n" : "", from / scale,
                    fmin((from + cols) / scale, sim->makespan), b + 1, bands);
        for (int r = 0; r < s->num_ranks; r++) fprintf(out, "rank %2d %.*s\n", r, cols, rows[r] + from);
    }
    fprintf(out, "\n%-8s %10s %10s %8s %7s\n", "rank", "busy", "idle", "peak act", "params");
    for (int r = 0; r < s->num_ranks; r++)
        fprintf(out, "%-8d %10g %10g %8d %6dx\n", r, sim->busy[r], sim->idle[r], rep->peak_activations[r],
                rep->param_copies[r]);
    if (dp_cost_has_comm(c) && sim->exposed_a2a && sim->exposed_p2p && sim->exposed_comm) {
        fputc('\n', out);
        put_wrapped(out, "exposed communication per rank: the all-to-all not hidden under compute (part of busy), "
                         "the waits the pipeline transfers' latency adds (part of idle), and their sum",
                    page_width);
        fprintf(out, "%-8s %12s %12s %12s\n", "rank", "all-to-all", "pipeline", "total");
        for (int r = 0; r < s->num_ranks; r++)
            fprintf(out, "%-8d %12g %12g %12g\n", r, sim->exposed_a2a[r], sim->exposed_p2p[r], sim->exposed_comm[r]);
    }
    fprintf(out, "makespan %g\n", sim->makespan);
    for (int r = 0; r < s->num_ranks; r++) free(rows[r]);
    free(rows);
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the timeline failed") : DP_OK;
}
