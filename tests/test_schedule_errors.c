/* test_schedule_errors.c: bad parameters and broken schedules give errors that name the
 * rule broken (odd PP for DualPipe, too few chunks, unknown schedule, negative costs,
 * backward before forward, a missing W, a deadlock), and numbers that are not finite or
 * whose simulated times overflow: refused by the parser, the simulator and the writers. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/schedule.h"
#include "tests/tap.h"

static void expect_gen(const char *name, int ranks, int chunks, dp_status want, const char *words)
{
    dp_schedule_params p = {.ranks = ranks, .chunks = chunks};
    dp_schedule *s = NULL;
    dp_status st = dp_schedule_generate(name, &p, &s);
    tap_ok(st == want && s == NULL && strstr(dp_last_error(), words) != NULL, "%s pp=%d chunks=%d fails: %s", name,
           ranks, chunks, dp_last_error());
    dp_schedule_free(s);
}

static void expect_cost(const char *text, const char *words)
{
    dp_cost c = dp_cost_default();
    dp_status st = dp_cost_parse(text, &c);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), words) != NULL, "cost '%s' rejected: %s", text,
           dp_last_error());
}

/* Simulating dualpipe pp=4 chunks=8 under `cost` fails naming the rank and action. */
static void expect_simulation_fails(dp_cost cost, const char *what)
{
    dp_schedule_params p = {.ranks = 4, .chunks = 8};
    dp_schedule *s = NULL;
    dp_simulation sim;
    if (dp_schedule_generate("dualpipe", &p, &s) != DP_OK) {
        tap_ok(0, "generate dualpipe");
        return;
    }
    dp_status st = dp_schedule_simulate(s, &cost, &sim);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), what) && sim.start == NULL && sim.makespan == 0,
           "simulation refused: %s", dp_last_error());
    dp_schedule_free(s);
}

/* Every writer that draws times refuses a simulation holding a non-finite time, whatever the
 * format, and writes nothing endless: the output stays small. */
static void expect_writers_refuse(double bad)
{
    static const char *const formats[] = {"text", "json", "svg", "chrome"};
    dp_schedule_params p = {.ranks = 4, .chunks = 8};
    dp_schedule *s = NULL;
    dp_schedule_report rep = {0};
    dp_simulation sim;
    dp_cost cost = dp_cost_default();
    if (dp_schedule_generate("dualpipe", &p, &s) != DP_OK || dp_schedule_validate(s, &rep) != DP_OK ||
        dp_schedule_simulate(s, &cost, &sim) != DP_OK) {
        tap_ok(0, "generate, validate and simulate dualpipe");
        return;
    }
    sim.end[2][5] = bad;
    for (int f = 0; f < 4; f++) {
        dp_schedule_format fmt;
        dp_schedule_format_parse(formats[f], &fmt);
        FILE *out = tmpfile();
        dp_status st = out ? dp_schedule_write(out, fmt, s, &cost, &sim, &rep) : DP_ERR_IO;
        long size = out ? ftell(out) : -1;
        tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "rank 2") && size >= 0 && size < 100000,
               "%s writer refuses an end time of %g (%ld bytes written): %s", formats[f], bad, size, dp_last_error());
        if (out) fclose(out);
    }
    dp_simulation_free(&sim);
    dp_schedule_report_free(&rep);
    dp_schedule_free(s);
}

/* Costs the library takes (finite, >= 0) but too small for a picture's scale to be finite:
 * the text and SVG writers refuse them instead of drawing NaN coordinates. */
static void expect_tiny_costs_refused(void)
{
    dp_schedule_params p = {.ranks = 4, .chunks = 8};
    dp_schedule *s = NULL;
    dp_schedule_report rep = {0};
    dp_simulation sim;
    dp_cost cost = {.f = 5e-324, .b = 5e-324, .w = 0, .fb = 5e-324};
    if (dp_schedule_generate("dualpipe", &p, &s) != DP_OK || dp_schedule_validate(s, &rep) != DP_OK ||
        dp_schedule_simulate(s, &cost, &sim) != DP_OK) {
        tap_ok(0, "generate, validate and simulate dualpipe with tiny costs: %s", dp_last_error());
        return;
    }
    for (int f = DP_FORMAT_TEXT; f <= DP_FORMAT_SVG; f += DP_FORMAT_SVG - DP_FORMAT_TEXT) {
        FILE *out = tmpfile();
        dp_status st = out ? dp_schedule_write(out, (dp_schedule_format)f, s, &cost, &sim, &rep) : DP_ERR_IO;
        tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "cannot be drawn"), "format %d refuses costs of 5e-324: %s",
               f, dp_last_error());
        if (out) fclose(out);
    }
    dp_simulation_free(&sim);
    dp_schedule_report_free(&rep);
    dp_schedule_free(s);
}

/* A two-rank 1F1B with one action replaced, to break it on purpose. */
static void expect_invalid(int rank, int index, dp_action replacement, const char *words, const char *what)
{
    dp_schedule_params p = {.ranks = 2, .chunks = 4};
    dp_schedule *s;
    if (dp_schedule_generate("1f1b", &p, &s) != DP_OK) {
        tap_ok(0, "generate 1f1b");
        return;
    }
    s->actions[rank][index] = replacement;
    dp_status st = dp_schedule_validate(s, NULL);
    tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), words) != NULL, "%s is rejected: %s", what, dp_last_error());
    dp_schedule_free(s);
}

int main(void)
{
    expect_gen("dualpipe", 3, 12, DP_ERR_INVALID, "even number of pipeline ranks");
    expect_gen("dualpipe", 0, 12, DP_ERR_INVALID, "even number of pipeline ranks");
    expect_gen("dualpipe", 4, 6, DP_ERR_INVALID, ">= 2 x PP");
    expect_gen("dualpipe", 4, 9, DP_ERR_INVALID, "even number of micro-batches");
    expect_gen("dualpipev", 4, 7, DP_ERR_INVALID, ">= 2 x ranks");
    expect_gen("dualpipev", 0, 7, DP_ERR_INVALID, "at least 1 pipeline rank");
    expect_gen("1f1b", 4, 0, DP_ERR_INVALID, "at least 1 micro-batch");
    expect_gen("zb1p", -1, 4, DP_ERR_INVALID, "at least 1 pipeline rank");
    expect_gen("1f1b", 4096, 1 << 20, DP_ERR_INVALID, "too large");
    expect_gen("interleaved-1f1b", 4, 6, DP_ERR_INVALID, "multiple of 4");
    expect_gen("pipedream", 4, 8, DP_ERR_NOT_FOUND,
               "known schedules: dualpipe, dualpipev, 1f1b, zb1p, interleaved-1f1b, gpipe");
    expect_gen(NULL, 4, 8, DP_ERR_NOT_FOUND, "unknown schedule");

    expect_cost("F=-1", "negative");
    expect_cost("F=1,B=x", "not a number");
    expect_cost("Q=1", "unknown cost 'Q'");
    expect_cost("B=1,W=2", "exceeds B");
    expect_cost("A2AF=-1", "cost A2AF is negative");
    expect_cost("A2AB=inf", "not a finite number");
    expect_cost("A2AF=nan", "not a number");
    expect_cost("A2AB=1e10", "between");
    expect_cost("A2AF=1e-400", "between");
    expect_cost("A2A=1", "known: F, B, W, FB, P2P, A2AF, A2AB");
    expect_cost("F", "NAME=VALUE");
    expect_cost("F=inf", "finite");
    expect_cost("B=-inf", "finite");
    expect_cost("F=nan", "not a number");
    expect_cost("F=1e400", "finite");
    expect_cost("P2P=1e-400", "between");
    expect_cost("F=1e10", "between");
    expect_cost("FB=1e-10", "between");
    expect_cost("F=1e308,B=1e308,W=1,FB=1e308", "between");
    dp_cost c = dp_cost_default();
    tap_ok(dp_cost_parse("F=1e9,B=1e9,W=0,FB=1e-9,P2P=0", &c) == DP_OK && c.f == 1e9 && c.fb == 1e-9 && c.w == 0,
           "costs at the ends of the range (0, 1e-9, 1e9) are accepted");
    c = dp_cost_default();
    tap_ok(dp_cost_parse("f=2,fb=5,p2p=0.5", &c) == DP_OK && c.f == 2 && c.fb == 5 && c.p2p == 0.5 && c.b == 2,
           "costs parse case-insensitively and keep the defaults of the others");

    /* the library takes any finite costs >= 0, and refuses times that overflow */
    expect_simulation_fails((dp_cost){.f = INFINITY, .b = 2, .w = 1, .fb = 3}, "cost F");
    expect_simulation_fails((dp_cost){.f = 1, .b = NAN, .w = 1, .fb = 3}, "cost B");
    expect_simulation_fails((dp_cost){.f = 1e308, .b = 1e308, .w = 1, .fb = 1e308}, "rank ");
    expect_simulation_fails((dp_cost){.f = 1, .b = 2, .w = 1, .fb = 3, .p2p = 1.7e308}, "not finite");
    expect_writers_refuse(INFINITY);
    expect_writers_refuse(NAN);
    expect_writers_refuse(-1);
    expect_tiny_costs_refused();

    /* 1f1b, 2 ranks, 4 chunks: rank 0 runs F0 F1 B0 F2 B1 F3 B2 B3, rank 1 F0 B0 F1 B1 ... */
    expect_invalid(1, 0, (dp_action){.kind = DP_ACT_B, .chunk = 0}, "before its forward", "a backward before its forward");
    expect_invalid(1, 1, (dp_action){.kind = DP_ACT_I, .chunk = 0}, "never runs the weight gradient",
                   "an I without its W");
    expect_invalid(1, 1, (dp_action){.kind = DP_ACT_F, .chunk = 0}, "second forward", "a forward run twice");
    expect_invalid(1, 1, (dp_action){.kind = DP_ACT_B, .chunk = 9}, "out of range", "a chunk out of range");
    expect_invalid(0, 0, (dp_action){.kind = DP_ACT_F, .chunk = 0, .overlap = 1}, "overlapped pair",
                   "a pair of two forwards");
    expect_invalid(0, 0, (dp_action){.kind = DP_ACT_F, .local_stage = 1, .chunk = 0}, "does not hold",
                   "a local stage the rank does not hold");

    /* deadlock: rank 1 runs its backwards in reverse order, while rank 0 sends F3 only
     * after B0 came back: swapping B0 and B3 of rank 1 makes both wait forever */
    dp_schedule_params p = {.ranks = 2, .chunks = 4};
    dp_schedule *s;
    if (dp_schedule_generate("gpipe", &p, &s) == DP_OK) {
        /* gpipe rank 0: F0 F1 F2 F3 B0 B1 B2 B3; make rank 0 wait for B0 before F3 */
        dp_action *a = s->actions[0];
        dp_action f3 = a[3];
        a[3] = a[4]; /* B0 */
        a[4] = f3;
        dp_status st = dp_schedule_validate(s, NULL);
        tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), "deadlock") && strstr(dp_last_error(), "rank 0"),
               "a cycle of waits is reported as a deadlock naming the ranks: %s", dp_last_error());
        dp_schedule_free(s);
    }
    return tap_done();
}
