/* test_schedule_comm.c: communication in the simulator's cost model. Hand-computed makespans
 * and exposed communication for a lone F, B, I and W with an expert all-to-all, an overlapped
 * pair (F&B and F&I) whose halves' chains of compute and all-to-all are shorter, equal to and
 * longer than its compute, the same pair not overlapped, and the pipeline latency on a
 * two-rank chain; whole schedules keep every time with zero all-to-all and add exactly the
 * all-to-all the model says; the parser and the simulator refuse bad all-to-all costs; the
 * Chrome writer draws the comm tracks, and the SVG writer its comm rows, each rectangle where
 * the simulated times put it, none without an all-to-all.
 * A pair with overlap lasts max(FB, c0 + x0, c1 + x1): x0, x1 its halves' all-to-alls, c0, c1
 * their shares of FB in proportion to their lone compute (with F=1, B=2, W=1, FB=3: an F&B
 * pair's shares are 1 and 2, an F&I pair's 1.5 and 1.5). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/schedule.h"
#include "tests/tap.h"

/* One rank holding the only stage of one pipe: its actions as listed ("F0", "F1&B0", "I0",
 * "W0"; '&' joins an overlapped pair). */
static dp_schedule *one_rank(int chunks, const char *const *acts, int n)
{
    dp_schedule *s = NULL;
    if (dp_schedule_alloc("hand", 1, 1, 1, 1, chunks, &s) != DP_OK) return NULL;
    dp_schedule_place(s, 0, 0, 0, 0);
    for (int i = 0; i < n; i++) {
        const char *a = acts[i];
        int pair = strchr(a, '&') != NULL;
        int kind = a[0] == 'F' ? DP_ACT_F : a[0] == 'B' ? DP_ACT_B : a[0] == 'I' ? DP_ACT_I : DP_ACT_W;
        dp_schedule_push(s, 0, kind, 0, a[1] - '0', pair);
        if (pair) {
            const char *b = strchr(a, '&') + 1;
            dp_schedule_push(s, 0, b[0] == 'B' ? DP_ACT_B : DP_ACT_I, 0, b[1] - '0', 0);
        }
    }
    if (dp_schedule_validate(s, NULL) != DP_OK) {
        tap_diag("hand schedule invalid: %s", dp_last_error());
        dp_schedule_free(s);
        return NULL;
    }
    return s;
}

static dp_cost costs(double af, double ab, int no_overlap)
{
    dp_cost c = dp_cost_default(); /* F=1 B=2 W=1 FB=3 */
    c.a2a_f = af;
    c.a2a_b = ab;
    c.no_overlap = no_overlap;
    return c;
}

/* Simulates s under c and checks the makespan and rank 0's exposed all-to-all; a single rank
 * never waits, so it is busy the whole makespan and exposes no pipeline time. */
static void expect_one_rank(dp_schedule *s, dp_cost c, double makespan, double exposed, const char *what)
{
    dp_simulation sim;
    if (!s || !tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_OK, "%s: simulates %s", what, s ? dp_last_error() : ""))
        return;
    tap_near(sim.makespan, makespan, 0, 0, "%s: makespan %g", what, makespan);
    tap_near(sim.exposed_a2a[0], exposed, 0, 0, "%s: exposed all-to-all %g", what, exposed);
    tap_ok(sim.busy[0] == sim.makespan && sim.exposed_p2p[0] == 0 && sim.exposed_comm[0] == exposed,
           "%s: busy all along (%g), no pipeline exposure (%g), total %g", what, sim.busy[0], sim.exposed_p2p[0],
           sim.exposed_comm[0]);
    dp_simulation_free(&sim);
}

/* F0, then F1 overlapped with B0, then B1: 1F1B's steady state on one stage. */
static void pair_cases(void)
{
    static const char *const acts[] = {"F0", "F1&B0", "B1"};
    dp_schedule *s = one_rank(2, acts, 3);
    tap_ok(s != NULL, "F0, F1&B0, B1 on one rank validates");
    /* F+FB+B = 1+3+2 */
    expect_one_rank(s, costs(0, 0, 0), 6, 0, "no all-to-all");
    expect_one_rank(s, costs(0, 0, 1), 6, 0, "no all-to-all, not overlapped");
    /* lone F 1+1, pair max(3, 1+1, 2+1) = 3 (2 hidden), lone B 2+1; exposed 1 + 0 + 1 */
    expect_one_rank(s, costs(1, 1, 0), 8, 2, "A2AF=A2AB=1 (both chains within FB 3)");
    /* pair max(3, 1+2, 2+1) = 3, nothing exposed at equality; 3 + 3 + 3 */
    expect_one_rank(s, costs(2, 1, 0), 9, 3, "A2AF=2 A2AB=1 (both chains = FB)");
    /* pair max(3, 1+2, 2+2) = 4, 1 exposed; lone F 3, lone B 4; exposed 2 + 1 + 2 */
    expect_one_rank(s, costs(2, 2, 0), 11, 5, "A2AF=A2AB=2 (B's chain 4 > FB 3)");
    /* pair max(3, 1+3, 2+0) = 4 although the all-to-all in all is only FB: the F's exchange
     * cannot hide under its own compute; lone F 4, lone B 2; exposed 3 + 1 + 0 */
    expect_one_rank(s, costs(3, 0, 0), 10, 4, "A2AF=3 A2AB=0 (F's chain 4 > FB 3)");
    /* pair max(3, 1+1.5, 2+1.5) = 3.5; lone F 2.5, lone B 3.5; exposed 1.5 + 0.5 + 1.5 */
    expect_one_rank(s, costs(1.5, 1.5, 0), 9.5, 3.5, "A2AF=A2AB=1.5 (B's chain 3.5 > FB 3)");
    /* not overlapped: the pair is FB + 2 = 5, all exposed; 2 + 5 + 3, exposed 1 + 2 + 1 */
    expect_one_rank(s, costs(1, 1, 1), 10, 4, "A2AF=A2AB=1, not overlapped");
    expect_one_rank(s, costs(2, 2, 1), 14, 8, "A2AF=A2AB=2, not overlapped");

    dp_cost c = costs(1, 1, 0);
    dp_simulation sim;
    if (s && dp_schedule_simulate(s, &c, &sim) == DP_OK) {
        tap_ok(sim.start[0][1] == 2 && sim.end[0][1] == 5 && sim.start[0][2] == 2 && sim.end[0][2] == 5 &&
                   sim.start[0][3] == 5 && sim.end[0][3] == 8,
               "A2AF=A2AB=1: the pair runs 2..5 (both halves), B1 5..8");
        tap_ok(sim.cost.a2a_f == 1 && sim.cost.a2a_b == 1 && sim.cost.fb == 3, "the simulation keeps its costs");
        /* the Chrome writer: a comm track per rank, the pair's 2 hidden, each lone action's 1 exposed */
        FILE *out = tmpfile();
        char buf[8192] = "";
        if (out && dp_schedule_write_chrome(out, s, &sim, NULL) == DP_OK) {
            rewind(out);
            buf[fread(buf, 1, sizeof buf - 1, out)] = '\0';
        }
        if (out) fclose(out);
        int hidden = 0, exposed = 0;
        for (const char *p = buf; (p = strstr(p, "all-to-all (hidden)")); p++) hidden++;
        for (const char *p = buf; (p = strstr(p, "all-to-all (exposed)")); p++) exposed++;
        tap_ok(strstr(buf, "\"rank 0 comm\"") && hidden == 1 && exposed == 2 &&
                   strstr(buf, "\"name\": \"all-to-all (hidden)\", \"cat\": \"comm\", \"ph\": \"X\", \"pid\": 0, "
                               "\"tid\": 1, \"ts\": 2000.000, \"dur\": 2000.000") &&
                   strstr(buf, "\"name\": \"all-to-all (exposed)\", \"cat\": \"comm\", \"ph\": \"X\", \"pid\": 0, "
                               "\"tid\": 1, \"ts\": 7000.000, \"dur\": 1000.000"),
               "chrome: a 'rank 0 comm' track, the pair's all-to-all hidden at 2..4 ms, B1's exposed at 7..8 ms "
               "(%d hidden, %d exposed events)",
               hidden, exposed);
        dp_simulation_free(&sim);
    }
    c = costs(2, 2, 0);
    if (s && dp_schedule_simulate(s, &c, &sim) == DP_OK) {
        FILE *out = tmpfile();
        char buf[8192] = "";
        if (out && dp_schedule_write_chrome(out, s, &sim, NULL) == DP_OK) {
            rewind(out);
            buf[fread(buf, 1, sizeof buf - 1, out)] = '\0';
        }
        if (out) fclose(out);
        /* the pair 3..7: 3 hidden under FB, the last 1 exposed */
        tap_ok(strstr(buf, "\"tid\": 1, \"ts\": 3000.000, \"dur\": 3000.000, \"args\": {\"for\": \"F0.1 & B0.0\"}") &&
                   strstr(buf, "\"tid\": 1, \"ts\": 6000.000, \"dur\": 1000.000, \"args\": {\"for\": \"F0.1 & B0.0\"}"),
               "chrome, A2AF=A2AB=2: the pair's all-to-all 3 ms hidden, then 1 ms exposed");
        dp_simulation_free(&sim);
    }
    dp_schedule_free(s);
}

/* An I costs B-W plus the backward's all-to-all, a W only its compute; in a pair an I's share
 * of FB follows its compute B-W. */
static void split_backward_cases(void)
{
    static const char *const paired[] = {"F0", "F1&I0", "W0", "B1"};
    dp_schedule *p = one_rank(2, paired, 4);
    tap_ok(p != NULL, "F0, F1&I0, W0, B1 on one rank validates");
    /* F0 1+1, pair max(3, 1.5+1, 1.5+1) = 3, W0 1, B1 2+1; exposed 1 + 0 + 0 + 1 */
    expect_one_rank(p, costs(1, 1, 0), 9, 2, "F&I pair, A2AF=A2AB=1 (chains 2.5 within FB 3)");
    /* F0 3, pair max(3, 1.5+2, 1.5+2) = 3.5, W0 1, B1 4; exposed 2 + 0.5 + 0 + 2 */
    expect_one_rank(p, costs(2, 2, 0), 11.5, 4.5, "F&I pair, A2AF=A2AB=2 (chains 3.5 > FB 3)");
    /* not overlapped: F0 2, pair 3+2, W0 1, B1 3 */
    expect_one_rank(p, costs(1, 1, 1), 11, 4, "F&I pair, A2AF=A2AB=1, not overlapped");
    dp_schedule_free(p);

    static const char *const acts[] = {"F0", "I0", "W0"};
    dp_schedule *s = one_rank(1, acts, 3);
    tap_ok(s != NULL, "F0, I0, W0 on one rank validates");
    dp_cost c = costs(0.25, 0.5, 0);
    c.w = 0.5;
    /* (1 + 0.25) + (1.5 + 0.5) + 0.5 */
    expect_one_rank(s, c, 3.75, 0.75, "F, I, W with A2AF=0.25 A2AB=0.5");
    dp_schedule_free(s);
}

/* 1F1B on two ranks (rank 0: F0 F1 B0 B1; rank 1: F0 B0 F1 B1), F=1 B=2: the latency's
 * exposure per wait is min(wait, P2P). */
static void p2p_cases(void)
{
    dp_schedule_params p = {.ranks = 2, .chunks = 2};
    dp_schedule *s = NULL;
    if (!tap_ok(dp_schedule_generate("1f1b", &p, &s) == DP_OK, "1f1b 2 ranks 2 chunks generates")) return;
    dp_simulation sim;
    /* P2P=2: rank 1 F0 3..4 (waited 3, 2 of it the latency), B0 4..6, F1 6..7 (its input came at 4), B1 7..9;
     * rank 0 F0 0..1, F1 1..2, B0 8..10 (waited 6, 2 latency), B1 11..13 (waited 1 < P2P: 1) */
    dp_cost c = dp_cost_default();
    c.p2p = 2;
    if (tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_OK, "simulates with P2P=2")) {
        tap_near(sim.makespan, 13, 0, 0, "P2P=2: makespan 13");
        tap_ok(sim.exposed_p2p[0] == 3 && sim.exposed_p2p[1] == 2, "P2P=2: exposed pipeline time 3 and 2 (got %g, %g)",
               sim.exposed_p2p[0], sim.exposed_p2p[1]);
        tap_ok(sim.exposed_a2a[0] == 0 && sim.exposed_a2a[1] == 0 && sim.exposed_comm[0] == 3 &&
                   sim.exposed_comm[1] == 2,
               "P2P=2: no all-to-all, totals 3 and 2");
        tap_ok(sim.idle[0] == 7 && sim.idle[1] == 7, "P2P=2: idle 7 per rank, of which the latency's part above");
        dp_simulation_free(&sim);
    }
    /* P2P=0.5: rank 1 F0 1.5..2.5, B0 ..4.5, F1 ..5.5, B1 ..7.5; rank 0 B0 5..7 (0.5), B1 8..10 (waited 1: 0.5) */
    c.p2p = 0.5;
    if (tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_OK, "simulates with P2P=0.5")) {
        tap_near(sim.makespan, 10, 0, 0, "P2P=0.5: makespan 10");
        tap_ok(sim.exposed_p2p[0] == 1 && sim.exposed_p2p[1] == 0.5, "P2P=0.5: exposed pipeline time 1 and 0.5 (got %g, %g)",
               sim.exposed_p2p[0], sim.exposed_p2p[1]);
        dp_simulation_free(&sim);
    }
    dp_schedule_free(s);

    /* one micro-batch, all-to-all and latency together: rank 0 F0 0..2, rank 1 F0 2.5..4.5, B0 ..7.5,
     * rank 0 B0 8..11: each rank exposes 2 of all-to-all and 0.5 of latency */
    p.chunks = 1;
    if (!tap_ok(dp_schedule_generate("1f1b", &p, &s) == DP_OK, "1f1b 2 ranks 1 chunk generates")) return;
    c = costs(1, 1, 0);
    c.p2p = 0.5;
    if (tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_OK, "simulates with A2AF=A2AB=1 P2P=0.5")) {
        int ok = sim.makespan == 11;
        for (int r = 0; r < 2; r++)
            ok &= sim.exposed_a2a[r] == 2 && sim.exposed_p2p[r] == 0.5 && sim.exposed_comm[r] == 2.5 && sim.idle[r] == 6;
        tap_ok(ok, "A2AF=A2AB=1 P2P=0.5 on a 2-rank chain: makespan 11 (got %g), each rank 2 + 0.5 exposed, idle 6",
               sim.makespan);
        dp_simulation_free(&sim);
    }
    dp_schedule_free(s);
}

/* Whole schedules: zero all-to-all changes no time; an all-to-all that fits under every pair's
 * compute adds exactly the lone actions' all-to-all to busy; not overlapped, every action's. */
static void whole_schedule(const char *name, int ranks, int chunks)
{
    dp_schedule_params p = {.ranks = ranks, .chunks = chunks};
    dp_schedule *s = NULL;
    if (!tap_ok(dp_schedule_generate(name, &p, &s) == DP_OK, "%s %d %d generates", name, ranks, chunks)) return;
    dp_cost base = dp_cost_default(), zero = costs(0, 0, 0), fits = costs(1, 1, 0), big = costs(2, 2, 0),
            apart = costs(1, 1, 1);
    dp_simulation b, z, f, g, a;
    if (dp_schedule_simulate(s, &base, &b) != DP_OK || dp_schedule_simulate(s, &zero, &z) != DP_OK ||
        dp_schedule_simulate(s, &fits, &f) != DP_OK || dp_schedule_simulate(s, &big, &g) != DP_OK ||
        dp_schedule_simulate(s, &apart, &a) != DP_OK) {
        tap_ok(0, "%s %d %d simulates: %s", name, ranks, chunks, dp_last_error());
        dp_schedule_free(s);
        return;
    }
    int same = b.makespan == z.makespan, zero_exposed = 1, fits_ok = 1, big_ok = 1, apart_ok = 1;
    for (int r = 0; r < s->num_ranks; r++) {
        int lone = 0, pairs = 0, all = s->num_actions[r], w = 0;
        for (int i = 0; i < s->num_actions[r]; i++) {
            same &= b.start[r][i] == z.start[r][i] && b.end[r][i] == z.end[r][i];
            w += s->actions[r][i].kind == DP_ACT_W;
            if (s->actions[r][i].overlap) pairs++, i++;
            else if (s->actions[r][i].kind != DP_ACT_W) lone++;
        }
        zero_exposed &= z.exposed_a2a[r] == 0 && z.exposed_p2p[r] == 0 && z.exposed_comm[r] == 0;
        /* every F and every B/I has 1 of all-to-all: a lone one exposes it, a pair's chains (at
         * most 1.5 + 1 and 2 + 1) fit in FB=3 */
        fits_ok &= f.exposed_a2a[r] == lone && f.busy[r] - f.exposed_a2a[r] == b.busy[r] && f.exposed_p2p[r] == 0;
        /* 2 each: a lone one exposes 2, a pair (F&B in these schedules: chains 1 + 2 and 2 + 2) 4 - 3 = 1 */
        big_ok &= g.exposed_a2a[r] == 2 * lone + pairs && g.busy[r] - g.exposed_a2a[r] == b.busy[r];
        /* not overlapped: all of it, 1 per F and per B/I */
        apart_ok &= a.exposed_a2a[r] == all - w && a.busy[r] == b.busy[r] + (all - w) && a.exposed_comm[r] == all - w;
    }
    tap_ok(same && zero_exposed, "%s %d %d: A2AF=A2AB=0 gives the same times (makespan %g) and no exposure", name,
           ranks, chunks, z.makespan);
    tap_ok(fits_ok, "%s %d %d, A2AF=A2AB=1: exposed = the lone F/B/I's all-to-all, busy grows by exactly that", name,
           ranks, chunks);
    tap_ok(big_ok, "%s %d %d, A2AF=A2AB=2: exposed = 2 per lone action + 1 per pair", name, ranks, chunks);
    tap_ok(apart_ok, "%s %d %d, not overlapped: every F/B/I's all-to-all exposed", name, ranks, chunks);
    tap_ok(f.makespan >= b.makespan && g.makespan >= f.makespan && a.makespan >= f.makespan,
           "%s %d %d: makespan %g, then %g with A2AF=A2AB=1, %g with 2, %g not overlapped", name, ranks, chunks,
           b.makespan, f.makespan, g.makespan, a.makespan);
    /* a latency: its exposure is part of each rank's idle */
    dp_simulation l;
    dp_cost lat = costs(1, 1, 0);
    lat.p2p = 0.25;
    if (dp_schedule_simulate(s, &lat, &l) == DP_OK) {
        int ok = 1;
        double total = 0;
        for (int r = 0; r < s->num_ranks; r++) {
            ok &= l.exposed_p2p[r] >= 0 && l.exposed_p2p[r] <= l.idle[r] + 1e-12 &&
                  l.exposed_comm[r] == l.exposed_a2a[r] + l.exposed_p2p[r] && l.exposed_a2a[r] == f.exposed_a2a[r];
            total += l.exposed_p2p[r];
        }
        tap_ok(ok && total > 0, "%s %d %d, P2P=0.25: exposed pipeline time within idle, %g in all", name, ranks, chunks,
               total);
        dp_simulation_free(&l);
    }
    dp_simulation_free(&b);
    dp_simulation_free(&z);
    dp_simulation_free(&f);
    dp_simulation_free(&g);
    dp_simulation_free(&a);
    dp_schedule_free(s);
}

static void parse_cases(void)
{
    dp_cost c = dp_cost_default();
    tap_ok(c.a2a_f == 0 && c.a2a_b == 0 && c.no_overlap == 0, "the default has no all-to-all and overlaps pairs");
    tap_ok(dp_cost_parse("A2AF=1.5,a2ab=0.25", &c) == DP_OK && c.a2a_f == 1.5 && c.a2a_b == 0.25 && c.f == 1 &&
               c.fb == 3,
           "A2AF and A2AB parse case-insensitively and keep the other costs");
    /* bad A2AF and A2AB values: tests/test_schedule_errors.c, beside the other costs' */
    dp_schedule_params p = {.ranks = 2, .chunks = 2};
    dp_schedule *s = NULL;
    dp_simulation sim;
    if (dp_schedule_generate("1f1b", &p, &s) == DP_OK) {
        c = costs(INFINITY, 0, 0);
        tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_ERR_INVALID && strstr(dp_last_error(), "cost A2AF") &&
                   !sim.exposed_a2a,
               "simulation refuses A2AF=inf: %s", dp_last_error());
        c = costs(0, -1, 0);
        tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_ERR_INVALID && strstr(dp_last_error(), "cost A2AB is negative"),
               "simulation refuses A2AB=-1: %s", dp_last_error());
        dp_schedule_free(s);
    }
}

/* ----------------------------------------------------------------------------
 * The SVG picture's comm rows, read back from its text. */

static char *write_svg(const dp_schedule *s, const dp_cost *c, const dp_simulation *sim)
{
    dp_schedule_report rep;
    if (dp_schedule_validate(s, &rep) != DP_OK) return NULL;
    FILE *out = tmpfile();
    char *buf = NULL;
    if (out && dp_schedule_write(out, DP_FORMAT_SVG, s, c, sim, &rep) == DP_OK) {
        long n = ftell(out);
        rewind(out);
        buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
        if (buf) buf[fread(buf, 1, (size_t)n, out)] = '\0';
    }
    if (out) fclose(out);
    dp_schedule_report_free(&rep);
    return buf;
}

static int count(const char *text, const char *what)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, what)); p++) n++;
    return n;
}

typedef struct {
    int exposed;
    double t, d; /* start and length in cost units */
} comm_rect;

/* What rank r's comm row should hold: each lone F, B or I its whole all-to-all exposed at its
 * end; an overlapped pair (lasting end - start against FB of compute) the part beyond FB exposed
 * at its end and the rest hidden from its start, drawn at most over the compute; without the
 * overlap, all of a pair's exposed. */
static int expected_rects(const dp_schedule *s, const dp_cost *c, const dp_simulation *sim, int r, comm_rect *out,
                          int max)
{
    int n = 0;
    for (int i = 0; i < s->num_actions[r] && n + 2 <= max; i++) {
        const dp_action *a = &s->actions[r][i];
        double t0 = sim->start[r][i], t1 = sim->end[r][i];
        double x = a->kind == DP_ACT_F ? c->a2a_f : a->kind == DP_ACT_W ? 0 : c->a2a_b;
        if (a->overlap) {
            x += c->a2a_b; /* a pair's second half is its B or I */
            i++;
            double exposed = c->no_overlap ? x : t1 - t0 - c->fb;
            if (fabs(exposed) < 1e-9) exposed = 0;
            double hidden = x - exposed;
            if (hidden > 1e-9) out[n++] = (comm_rect){0, t0, hidden < c->fb ? hidden : c->fb};
            if (exposed > 0) out[n++] = (comm_rect){1, t1 - exposed, exposed};
        } else if (x > 0) {
            out[n++] = (comm_rect){1, t1 - x, x};
        }
    }
    return n;
}

/* Reads rank r's comm row from the SVG and checks every rectangle against expected_rects: the
 * row's own rectangle gives where time 0 is and the pixels per unit (its width is the makespan);
 * each rectangle's x and width must be its times' within 0.02 pixels (the file rounds to 0.01).
 * Counts the hidden and exposed rectangles; returns whether all matched. */
static int check_rank(const char *svg, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim, int r,
                      int *hidden, int *exposed, const char *what)
{
    char head[64];
    snprintf(head, sizeof head, ">Rank %d</text>\n", r);
    const char *p = strstr(svg, head);
    double x0, y, width;
    if (!p || sscanf(p + strlen(head), "<rect class=\"comm-row\" x=\"%lf\" y=\"%lf\" width=\"%lf\"", &x0, &y, &width) != 3) {
        tap_diag("%s: rank %d has no comm row right after its label", what, r);
        return 0;
    }
    double ppu = width / sim->makespan;
    const char *end = strstr(p + 1, "text-anchor=\"end\">Rank ");
    if (!end) end = strstr(p, "</g>");
    /* the exposed communication written at the row's end */
    const char *e = strstr(p, ">exposed: all-to-all ");
    if (!e || e > end || fabs(strtod(e + strlen(">exposed: all-to-all "), NULL) - sim->exposed_a2a[r]) > 1e-9) {
        tap_diag("%s: rank %d's row does not end with its exposed all-to-all %g", what, r, sim->exposed_a2a[r]);
        return 0;
    }
    comm_rect want[4096];
    int n = expected_rects(s, c, sim, r, want, 4096), k = 0, ok = 1;
    for (const char *q = p; (q = strstr(q, "<rect class=\"a2a-")) && q < end; q++, k++) {
        char kind[16];
        double x, ry, w;
        if (sscanf(q, "<rect class=\"a2a-%15[a-z]\" x=\"%lf\" y=\"%lf\" width=\"%lf\"", kind, &x, &ry, &w) != 4) {
            tap_diag("%s: rank %d: unreadable rectangle %.60s", what, r, q);
            return 0;
        }
        int is_exposed = strcmp(kind, "exposed") == 0;
        *hidden += !is_exposed;
        *exposed += is_exposed;
        if (k >= n || want[k].exposed != is_exposed || fabs(ry - y) > 1e-9 || fabs(x - (x0 + want[k].t * ppu)) > 0.02 ||
            fabs(w - want[k].d * ppu) > 0.02) {
            if (ok)
                tap_diag("%s: rank %d rectangle %d: %s at x %g width %g, want %s at %g width %g (t %g, length %g)", what,
                         r, k, kind, x, w, k < n && want[k].exposed ? "exposed" : "hidden",
                         k < n ? x0 + want[k].t * ppu : -1, k < n ? want[k].d * ppu : -1, k < n ? want[k].t : -1,
                         k < n ? want[k].d : -1);
            ok = 0;
        }
    }
    if (k != n) {
        tap_diag("%s: rank %d has %d all-to-all rectangles, want %d", what, r, k, n);
        ok = 0;
    }
    return ok;
}

/* Checks every rank's comm row; hidden and exposed get the rectangles counted over all ranks. */
static int check_svg(const char *svg, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim, int *hidden,
                     int *exposed, const char *what)
{
    int ok = svg && count(svg, "class=\"comm-row\"") == s->num_ranks;
    *hidden = *exposed = 0;
    for (int r = 0; ok && r < s->num_ranks; r++) ok &= check_rank(svg, s, c, sim, r, hidden, exposed, what);
    return ok && strstr(svg, "all-to-all hidden under compute") && strstr(svg, "all-to-all exposed");
}

static void svg_cases(void)
{
    static const char *const acts[] = {"F0", "F1&B0", "B1"};
    dp_schedule *s = one_rank(2, acts, 3);
    if (!s) return;
    dp_simulation sim;
    int hidden = 0, exposed = 0, ok;
    /* F0 0..2 (1 exposed at 1..2), the pair 2..5 (2 hidden at 2..4), B1 5..8 (1 exposed at 7..8); F = 26 pixels
     * from x 78 */
    dp_cost c = costs(1, 1, 0);
    if (dp_schedule_simulate(s, &c, &sim) == DP_OK) {
        char *svg = write_svg(s, &c, &sim);
        ok = check_svg(svg, s, &c, &sim, &hidden, &exposed, "one rank, A2AF=A2AB=1");
        tap_ok(ok && hidden == 1 && exposed == 2 &&
                   strstr(svg, "class=\"a2a-hidden\" x=\"130.00\" y=\"76.00\" width=\"52.00\"") &&
                   strstr(svg, "class=\"a2a-exposed\" x=\"104.00\" y=\"76.00\" width=\"26.00\"") &&
                   strstr(svg, "class=\"a2a-exposed\" x=\"260.00\" y=\"76.00\" width=\"26.00\""),
               "svg, one rank, A2AF=A2AB=1: a comm row with the pair's 2 hidden at 2..4, F0's and B1's 1 exposed at "
               "1..2 and 7..8 (%d hidden, %d exposed)",
               hidden, exposed);
        free(svg);
        dp_simulation_free(&sim);
    }
    /* the pair 3..7: 3 hidden under FB, 1 exposed */
    c = costs(2, 2, 0);
    if (dp_schedule_simulate(s, &c, &sim) == DP_OK) {
        char *svg = write_svg(s, &c, &sim);
        ok = check_svg(svg, s, &c, &sim, &hidden, &exposed, "one rank, A2AF=A2AB=2");
        tap_ok(ok && hidden == 1 && exposed == 3,
               "svg, one rank, A2AF=A2AB=2: the pair's 3 hidden then 1 exposed, F0's and B1's 2 exposed (%d hidden, "
               "%d exposed)",
               hidden, exposed);
        free(svg);
        dp_simulation_free(&sim);
    }
    /* the pair lasts max(3, 1 + 10, 2 + 10) = 12: 9 exposed, 11 hidden in flight together, drawn over FB's 3 */
    c = costs(10, 10, 0);
    if (dp_schedule_simulate(s, &c, &sim) == DP_OK) {
        char *svg = write_svg(s, &c, &sim);
        ok = check_svg(svg, s, &c, &sim, &hidden, &exposed, "one rank, A2AF=A2AB=10");
        tap_ok(ok && hidden == 1 &&
                   exposed == 3 && strstr(svg, "F0.1 &amp; B0.0: all-to-all 11 hidden"),
               "svg, one rank, A2AF=A2AB=10: the pair's 11 hidden drawn over its 3 of compute, titled with 11; 9 "
               "exposed");
        free(svg);
        dp_simulation_free(&sim);
    }
    dp_schedule_free(s);

    /* DualPipe as in the README's pictures, with and without the overlap */
    dp_schedule_params p = {.ranks = 4, .chunks = 10};
    if (!tap_ok(dp_schedule_generate("dualpipe", &p, &s) == DP_OK, "dualpipe 4 10 generates")) return;
    int pairs = 0, lone = 0;
    for (int r = 0; r < s->num_ranks; r++)
        for (int i = 0; i < s->num_actions[r]; i++) {
            if (s->actions[r][i].overlap) pairs++, i++;
            else lone += s->actions[r][i].kind != DP_ACT_W;
        }
    for (int no_overlap = 0; no_overlap < 2; no_overlap++) {
        c = costs(1, 1, no_overlap);
        if (dp_schedule_simulate(s, &c, &sim) != DP_OK) continue;
        char *svg = write_svg(s, &c, &sim);
        /* overlapped, each pair's 2 hides under FB=3; not, each pair's 2 is exposed */
        ok = check_svg(svg, s, &c, &sim, &hidden, &exposed, no_overlap ? "dualpipe, not overlapped" : "dualpipe");
        tap_ok(ok && hidden == (no_overlap ? 0 : pairs) && exposed == lone + (no_overlap ? pairs : 0),
               "svg, dualpipe 4 10, A2AF=A2AB=1%s: 4 comm rows, every rectangle at its simulated times, %d hidden "
               "and %d exposed (%d pairs, %d lone F/B/I), each rank's exposed all-to-all at its row's end",
               no_overlap ? ", not overlapped" : "", hidden, exposed, pairs, lone);
        free(svg);
        dp_simulation_free(&sim);
    }

    /* no all-to-all: no comm row, and --no-overlap or a latency alone change nothing of the kind */
    dp_cost zero[3] = {costs(0, 0, 0), costs(0, 0, 1), costs(0, 0, 0)};
    zero[2].p2p = 0.5;
    char *svgs[3] = {NULL, NULL, NULL};
    int none = 1;
    for (int k = 0; k < 3; k++) {
        if (dp_schedule_simulate(s, &zero[k], &sim) != DP_OK) continue;
        svgs[k] = write_svg(s, &zero[k], &sim);
        none &= svgs[k] && !strstr(svgs[k], "comm-row") && !strstr(svgs[k], "a2a-") && !strstr(svgs[k], "all-to-all") &&
                !strstr(svgs[k], "exposed");
        dp_simulation_free(&sim);
    }
    tap_ok(none && svgs[0] && svgs[1] && strcmp(svgs[0], svgs[1]) == 0,
           "svg, dualpipe 4 10, A2AF=A2AB=0 (overlapped or not, or with P2P=0.5): no comm rows, no all-to-all in the "
           "legend; not overlapping changes nothing");
    for (int k = 0; k < 3; k++) free(svgs[k]);
    dp_schedule_free(s);
}

int main(void)
{
    pair_cases();
    split_backward_cases();
    p2p_cases();
    whole_schedule("dualpipe", 4, 8);
    whole_schedule("dualpipe", 8, 20);
    whole_schedule("dualpipev", 4, 10);
    whole_schedule("1f1b", 4, 8);
    whole_schedule("zb1p", 4, 8);
    whole_schedule("interleaved-1f1b", 4, 8);
    parse_cases();
    svg_cases();
    return tap_done();
}
