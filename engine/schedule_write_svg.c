/* schedule_write_svg.c: the `svg` format, a timeline picture in the style of DualPipe's
 * README figure: ranks as rows, time to the right, F/B/I/W in their colours (a lighter
 * shade for direction / local stage 1), the micro-batch number in each cell, and the two
 * halves of an overlapped F&B pair enclosed in one heavy border; a legend below. */
#include <math.h>

#include "engine/schedule.h"

enum { LEFT = 78, TOP = 46, ROW_H = 28, ROW_GAP = 6, FONT = 12 };

/* fill colours by kind (F, B, I, W) and direction 0 / 1 */
static const char *const fill[4][2] = {
    {"#f6b26b", "#fce5cd"},
    {"#93c47d", "#d9ead3"},
    {"#6fa8dc", "#cfe2f3"},
    {"#8e7cc3", "#d9d2e9"},
};

static void cell(FILE *out, double x, double y, double w, const dp_action *a)
{
    fprintf(out, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%d\" fill=\"%s\" stroke=\"#ffffff\" stroke-width=\"1\"/>\n",
            x, y, w, ROW_H, fill[a->kind & 3][a->local_stage ? 1 : 0]);
    if (w >= FONT * 0.8)
        fprintf(out, "<text x=\"%.2f\" y=\"%.2f\">%d</text>\n", x + w / 2, y + ROW_H / 2.0 + FONT * 0.35, a->chunk);
}

dp_status dp_schedule_write_svg(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                const dp_schedule_report *rep)
{
    double unit = c->f > 0 ? c->f : 1;
    double ppu = 26.0 / unit; /* pixels per cost unit: a unit cell fits two digits */
    if (sim->makespan * ppu > 3000) ppu = 3000 / sim->makespan;
    if (!isfinite(ppu) || !(ppu > 0))
        return dp_fail(DP_ERR_INVALID, "costs this small (F=%g, makespan %g) cannot be drawn: take larger units",
                       c->f, sim->makespan);
    double plot_w = sim->makespan * ppu;
    int rows_h = s->num_ranks * (ROW_H + ROW_GAP);
    int legend_y = TOP + rows_h + 34;
    double width = LEFT + plot_w + 20, height = legend_y + 3 * 24 + 12;
    if (width < 760) width = 760;

    fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                 "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
                 "font-family=\"Helvetica, Arial, sans-serif\" font-size=\"%d\">\n",
            width, height, width, height, FONT);
    fprintf(out, "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
    char a2a[80] = "";
    if (c->a2a_f != 0 || c->a2a_b != 0)
        snprintf(a2a, sizeof a2a, ", A2AF=%g, A2AB=%g%s", c->a2a_f, c->a2a_b, c->no_overlap ? ", not overlapped" : "");
    fprintf(out, "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">%s: %d ranks, %d micro-batches "
                 "(F=%g, B=%g, W=%g, F&amp;B=%g%s): idle per rank %g, makespan %g</text>\n",
            LEFT, s->name, s->num_ranks, s->num_chunks, c->f, c->b, c->w, c->fb, a2a, sim->idle[0], sim->makespan);

    /* time axis: a tick every 5 (or more) units */
    double step = 5 * unit;
    while (step * ppu < 60) step *= 2;
    fprintf(out, "<g fill=\"#666666\" text-anchor=\"middle\" font-size=\"10\">\n");
    for (double t = 0; t <= sim->makespan + 1e-9; t += step) {
        double x = LEFT + t * ppu;
        fprintf(out, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\" stroke=\"#dddddd\"/>\n", x, TOP - 4, x,
                TOP + rows_h);
        fprintf(out, "<text x=\"%.2f\" y=\"%d\">%g</text>\n", x, TOP - 8, t);
    }
    fprintf(out, "</g>\n");

    fprintf(out, "<g text-anchor=\"middle\" fill=\"#000000\">\n");
    for (int r = 0; r < s->num_ranks; r++) {
        double y = TOP + r * (ROW_H + ROW_GAP);
        fprintf(out, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\">Rank %d</text>\n", LEFT - 10,
                y + ROW_H / 2.0 + FONT * 0.35, r);
        for (int i = 0; i < s->num_actions[r]; i++) {
            const dp_action *a = &s->actions[r][i];
            double x = LEFT + sim->start[r][i] * ppu, w = (sim->end[r][i] - sim->start[r][i]) * ppu;
            if (a->overlap && i + 1 < s->num_actions[r]) {
                /* split the pair's span between its halves by their own costs */
                const dp_action *b = a + 1;
                double cf = c->f; /* the validator guarantees a pair opens with its F */
                double cb = b->kind == DP_ACT_I ? c->b - c->w : c->b;
                double wf = cf + cb > 0 ? w * cf / (cf + cb) : w / 2;
                cell(out, x, y, wf, a);
                cell(out, x + wf, y, w - wf, b);
                fprintf(out, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%d\" fill=\"none\" stroke=\"#000000\" "
                             "stroke-width=\"2\"/>\n",
                        x + 1, y + 1, w - 2, ROW_H - 2);
                i++;
            } else {
                cell(out, x, y, w, a);
            }
        }
    }
    fprintf(out, "</g>\n");

    /* legend */
    static const char *const names[4] = {"F: forward", "B: backward", "I: backward for input", "W: backward for weights"};
    fprintf(out, "<g font-size=\"12\">\n");
    for (int k = 0; k < 4; k++) {
        double x = LEFT + k * 170;
        for (int d = 0; d < 2; d++)
            fprintf(out, "<rect x=\"%.0f\" y=\"%d\" width=\"14\" height=\"14\" fill=\"%s\"/>\n", x + d * 16,
                    legend_y, fill[k][d]);
        fprintf(out, "<text x=\"%.0f\" y=\"%d\">%s</text>\n", x + 38, legend_y + 11, names[k]);
    }
    const char *dirs = s->num_pipes == 2 ? "dark: micro-batches entering at rank 0, light: entering at the last rank"
                                        : s->num_local_stages == 2 ? "dark: the rank's first stage, light: its second stage"
                                                           : "one stage per rank";
    fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"30\" height=\"14\" fill=\"none\" stroke=\"#000000\" stroke-width=\"2\"/>\n",
            LEFT, legend_y + 24);
    fprintf(out, "<text x=\"%d\" y=\"%d\">overlapped F&amp;B pair (computation and communication of one hide the other's)</text>\n",
            LEFT + 38, legend_y + 35);
    fprintf(out, "<text x=\"%d\" y=\"%d\">%s; numbers: micro-batch within its direction; peak activations %d per rank</text>\n",
            LEFT, legend_y + 59, dirs, rep->max_peak_activations);
    fprintf(out, "</g>\n</svg>\n");
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the SVG failed") : DP_OK;
}
