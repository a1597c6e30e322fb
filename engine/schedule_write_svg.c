/* schedule_write_svg.c: the `svg` format, a timeline picture in the style of DualPipe's
 * README figure: ranks as rows, time to the right, F/B/I/W in their colours (a lighter
 * shade for direction / local stage 1), the micro-batch number in each cell, and the two
 * halves of an overlapped F&B pair enclosed in one heavy border; a legend below. With an
 * expert all-to-all in the costs, a thin comm row under each rank's row holds every action's
 * all-to-all, hidden under its compute and exposed beyond it, and the rank's exposed
 * communication is written at the row's end. */
#include <math.h>

#include "engine/schedule_replay.h"

enum { LEFT = 78, TOP = 46, ROW_H = 28, ROW_GAP = 6, FONT = 12 };
/* the comm row: COMM_GAP under the compute row, COMM_H high; COMM_RIGHT: room for the
 * exposed communication written at the rows' end */
enum { COMM_GAP = 2, COMM_H = 8, COMM_RIGHT = 150 };
static const char *const comm_fill[2] = {"#76a5af", "#cc0000"}; /* hidden, exposed */

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

/* On the comm row at y, the all-to-all of the action (or pair) drawn from x to x + w: as in the
 * Chrome trace, the hidden part from the start, under the compute, and the exposed part at the
 * end, the time the action lasts beyond its compute. When the two halves of a pair have their
 * exchanges in flight together, their hidden all-to-all can add up to more than the compute:
 * it is drawn over the whole compute, its amount in the rectangle's title. */
static void comm_cells(FILE *out, const dp_simulation *sim, const dp_action *a, int pair, double x, double y,
                       double w, double ppu)
{
    dp_span_cost c = dp_span_cost_of(&sim->cost, a, pair);
    double hidden = c.a2a - c.a2a_exposed, compute = c.duration - c.a2a_exposed;
    char name[40];
    if (pair)
        snprintf(name, sizeof name, "%c%d.%d &amp; %c%d.%d", dp_action_letter(a->kind), a->local_stage, a->chunk,
                 dp_action_letter(a[1].kind), a[1].local_stage, a[1].chunk);
    else
        snprintf(name, sizeof name, "%c%d.%d", dp_action_letter(a->kind), a->local_stage, a->chunk);
    if (hidden > 0)
        fprintf(out, "<rect class=\"a2a-hidden\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%d\" fill=\"%s\">"
                     "<title>%s: all-to-all %g hidden</title></rect>\n",
                x, y, (hidden < compute ? hidden : compute) * ppu, COMM_H, comm_fill[0], name, hidden);
    if (c.a2a_exposed > 0) {
        double we = c.a2a_exposed * ppu;
        fprintf(out, "<rect class=\"a2a-exposed\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%d\" fill=\"%s\">"
                     "<title>%s: all-to-all %g exposed</title></rect>\n",
                x + w - we, y, we, COMM_H, comm_fill[1], name, c.a2a_exposed);
    }
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
    int comm = sim->cost.a2a_f != 0 || sim->cost.a2a_b != 0;
    double plot_w = sim->makespan * ppu;
    int pitch = ROW_H + ROW_GAP + (comm ? COMM_GAP + COMM_H : 0);
    int rows_h = s->num_ranks * pitch;
    int legend_y = TOP + rows_h + 34;
    double width = LEFT + plot_w + (comm ? COMM_RIGHT : 20), height = legend_y + (comm ? 4 : 3) * 24 + 12;
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
        double y = TOP + r * pitch, yc = y + ROW_H + COMM_GAP;
        fprintf(out, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\">Rank %d</text>\n", LEFT - 10,
                y + ROW_H / 2.0 + FONT * 0.35, r);
        if (comm) {
            fprintf(out, "<rect class=\"comm-row\" x=\"%d\" y=\"%.2f\" width=\"%.2f\" height=\"%d\" fill=\"#f3f3f3\"/>\n",
                    LEFT, yc, plot_w, COMM_H);
            double xa = sim->exposed_a2a ? sim->exposed_a2a[r] : 0, xp = sim->exposed_p2p ? sim->exposed_p2p[r] : 0;
            char p2p[40] = "";
            if (xp > 0) snprintf(p2p, sizeof p2p, ", P2P %g", xp);
            fprintf(out, "<text class=\"comm-exposed\" x=\"%.2f\" y=\"%.2f\" text-anchor=\"start\" font-size=\"10\" "
                         "fill=\"%s\">exposed: all-to-all %g%s</text>\n",
                    LEFT + plot_w + 8, y + ROW_H / 2.0 + 10 * 0.35, xa + xp > 0 ? comm_fill[1] : "#666666", xa, p2p);
        }
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
                if (comm) comm_cells(out, sim, a, 1, x, yc, w, ppu);
                i++;
            } else {
                cell(out, x, y, w, a);
                if (comm) comm_cells(out, sim, a, 0, x, yc, w, ppu);
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
    if (comm) {
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"30\" height=\"%d\" fill=\"%s\"/>\n", LEFT,
                legend_y + 48 + (14 - COMM_H) / 2, COMM_H, comm_fill[0]);
        fprintf(out, "<text x=\"%d\" y=\"%d\">all-to-all hidden under compute</text>\n", LEFT + 38, legend_y + 59);
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"30\" height=\"%d\" fill=\"%s\"/>\n", LEFT + 260,
                legend_y + 48 + (14 - COMM_H) / 2, COMM_H, comm_fill[1]);
        fprintf(out, "<text x=\"%d\" y=\"%d\">all-to-all exposed (the action lasts that much longer)%s</text>\n",
                LEFT + 298, legend_y + 59, sim->cost.no_overlap ? "; pairs not overlapped" : "");
    }
    fprintf(out, "<text x=\"%d\" y=\"%d\">%s; numbers: micro-batch within its direction; peak activations %d per rank</text>\n",
            LEFT, legend_y + 59 + (comm ? 24 : 0), dirs, rep->max_peak_activations);
    fprintf(out, "</g>\n</svg>\n");
    return ferror(out) ? dp_fail(DP_ERR_IO, "writing the SVG failed") : DP_OK;
}
