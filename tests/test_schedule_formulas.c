/* test_schedule_formulas.c: the simulator and validator reproduce the known results of
 * DualPipe's README table with F=1, B=2, W=1, F&B=3: per-rank idle 1F1B (PP-1)(F+B),
 * ZB1P (PP-1)(F+B-2W), DualPipe and DualPipeV (PP/2-1)(F&B+B-3W) (PP = stages), GPipe
 * (PP-1)(F+B); peak live activations PP, PP, PP+1, PP+1; parameter copies 1, 1, 2, 2. */
#include "engine/schedule.h"
#include "tests/tap.h"

typedef struct {
    const char *name;
    int ranks_per_stage_pair; /* 1: ranks = PP; 2: ranks = PP/2 (dualpipev) */
    double (*idle)(int pp, dp_cost c);
    int (*peak)(int pp, int chunks);
    int params;
} expectation;

static double idle_1f1b(int pp, dp_cost c) { return (pp - 1) * (c.f + c.b); }
static double idle_zb1p(int pp, dp_cost c) { return (pp - 1) * (c.f + c.b - 2 * c.w); }
static double idle_dualpipe(int pp, dp_cost c) { return (pp / 2 - 1) * (c.fb + c.b - 3 * c.w); }
static int peak_pp(int pp, int chunks) { (void)chunks; return pp; }
static int peak_pp1(int pp, int chunks) { (void)chunks; return pp + 1; }
static int peak_all(int pp, int chunks) { (void)pp; return chunks; }

static void check(const expectation *e, int pp, int chunks)
{
    dp_schedule_params p = {.ranks = e->ranks_per_stage_pair == 2 ? pp / 2 : pp, .chunks = chunks};
    dp_schedule *s = NULL;
    if (!tap_ok(dp_schedule_generate(e->name, &p, &s) == DP_OK, "%s PP=%d chunks=%d generates %s", e->name, pp, chunks,
                dp_last_error()))
        return;
    dp_schedule_report rep;
    if (tap_ok(dp_schedule_validate(s, &rep) == DP_OK, "%s PP=%d chunks=%d validates %s", e->name, pp, chunks,
               dp_last_error())) {
        int params_ok = 1;
        for (int r = 0; r < s->num_ranks; r++) params_ok &= rep.param_copies[r] == e->params;
        tap_is_int(rep.max_peak_activations, e->peak(pp, chunks), "%s PP=%d chunks=%d peak activations", e->name, pp,
                   chunks);
        tap_ok(params_ok, "%s PP=%d chunks=%d holds %d parameter copies per rank", e->name, pp, chunks, e->params);
        dp_schedule_report_free(&rep);
    }
    dp_cost c = dp_cost_default();
    dp_simulation sim;
    if (tap_ok(dp_schedule_simulate(s, &c, &sim) == DP_OK, "%s PP=%d chunks=%d simulates", e->name, pp, chunks)) {
        double want = e->idle(pp, c);
        int all = 1, bad = -1;
        for (int r = 0; r < s->num_ranks; r++)
            if (!tap_close(sim.idle[r], want, 1e-9, 0)) all = 0, bad = r;
        if (!tap_ok(all, "%s PP=%d chunks=%d: every rank idles %g", e->name, pp, chunks, want))
            tap_diag("rank %d idles %g", bad, sim.idle[bad]);
        dp_simulation_free(&sim);
    }
    dp_schedule_free(s);
}

int main(void)
{
    const expectation e1f1b = {"1f1b", 1, idle_1f1b, peak_pp, 1};
    const expectation ezb = {"zb1p", 1, idle_zb1p, peak_pp, 1};
    const expectation egpipe = {"gpipe", 1, idle_1f1b, peak_all, 1};
    const expectation edp = {"dualpipe", 1, idle_dualpipe, peak_pp1, 2};
    const expectation edpv = {"dualpipev", 2, idle_dualpipe, peak_pp1, 2};
    for (int pp = 2; pp <= 32; pp += 2) {
        const int linear[] = {pp, pp + 1, 2 * pp, 3 * pp + 1};
        for (int i = 0; i < 4; i++) {
            check(&e1f1b, pp, linear[i]);
            check(&ezb, pp, linear[i]);
            check(&egpipe, pp, linear[i]);
        }
        const int dual[] = {2 * pp, 2 * pp + 2, 4 * pp, 20 > 2 * pp ? 20 : 2 * pp + 4};
        for (int i = 0; i < 4; i++) check(&edp, pp, dual[i]);
        /* dualpipev: PP stages on PP/2 ranks, at least PP micro-batches */
        const int v[] = {pp, pp + 1, 2 * pp + 3, 20 > pp ? 20 : pp + 2};
        for (int i = 0; i < 4; i++) check(&edpv, pp, v[i]);
    }
    /* interleaved 1F1B, two model chunks per rank: F and B are a (half-size) stage's costs,
     * the bubble is (PP-1)(F+B) of them, and rank 0 warms up with 3PP-2 forwards */
    for (int pp = 2; pp <= 16; pp += 2) {
        for (int g = 1; g <= 3; g++) {
            dp_schedule_params q = {.ranks = pp, .chunks = g * pp};
            dp_schedule *t = NULL;
            dp_cost u = dp_cost_default();
            dp_simulation sm;
            dp_schedule_report rp;
            if (!tap_ok(dp_schedule_generate("interleaved-1f1b", &q, &t) == DP_OK &&
                            dp_schedule_validate(t, &rp) == DP_OK,
                        "interleaved-1f1b PP=%d chunks=%d generates and validates %s", pp, q.chunks, dp_last_error())) {
                dp_schedule_free(t);
                continue;
            }
            int want_peak = 2 * q.chunks < 3 * pp - 1 ? 2 * q.chunks : 3 * pp - 1;
            tap_is_int(rp.max_peak_activations, want_peak, "interleaved-1f1b PP=%d chunks=%d peak activations", pp,
                       q.chunks);
            dp_schedule_report_free(&rp);
            if (dp_schedule_simulate(t, &u, &sm) == DP_OK) {
                int all = 1;
                for (int r = 0; r < pp; r++) all &= tap_close(sm.idle[r], (pp - 1) * (u.f + u.b), 1e-9, 0);
                tap_ok(all, "interleaved-1f1b PP=%d chunks=%d: every rank idles (PP-1)(F+B) = %g", pp, q.chunks,
                       (pp - 1) * (u.f + u.b));
                dp_simulation_free(&sm);
            }
            dp_schedule_free(t);
        }
    }

    /* the simulated figure quoted in the documentation: PP=8, 20 micro-batches */
    dp_schedule_params p = {.ranks = 8, .chunks = 20};
    dp_schedule *s;
    dp_cost c = dp_cost_default();
    dp_simulation sim;
    if (dp_schedule_generate("dualpipe", &p, &s) == DP_OK && dp_schedule_simulate(s, &c, &sim) == DP_OK) {
        tap_near(sim.makespan, 66, 0, 0, "dualpipe PP=8 chunks=20: makespan 66 (20 x 3 of work + 6 idle)");
        dp_simulation_free(&sim);
        dp_schedule_free(s);
    } else {
        tap_ok(0, "dualpipe PP=8 chunks=20 simulates: %s", dp_last_error());
    }
    /* a p2p latency d stretches GPipe by 2(PP-1)d: the first micro-batch's forward and the
     * last one's backward each cross PP-1 links on the critical path */
    for (int pp = 2; pp <= 8; pp += 2) {
        dp_schedule_params q = {.ranks = pp, .chunks = 3 * pp};
        dp_cost lat = dp_cost_default();
        lat.p2p = 0.25;
        if (dp_schedule_generate("gpipe", &q, &s) == DP_OK && dp_schedule_simulate(s, &lat, &sim) == DP_OK) {
            tap_near(sim.makespan, (q.chunks + pp - 1) * (lat.f + lat.b) + 2 * (pp - 1) * lat.p2p, 1e-9, 0,
                     "gpipe PP=%d with p2p latency 0.25: makespan (m+PP-1)(F+B) + 2(PP-1)p2p", pp);
            dp_simulation_free(&sim);
            dp_schedule_free(s);
        } else {
            tap_ok(0, "gpipe PP=%d simulates with latency: %s", pp, dp_last_error());
        }
    }
    return tap_done();
}
