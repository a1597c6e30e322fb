/* test_eplb_errors.c: loads the balancer must refuse, at every entry point that takes loads:
 * NaN, infinities, negative loads, and finite loads whose layer sum passes EPLB_MAX_LAYER_LOAD
 * (1e308 + 1e308 overflowed into a balancedness of inf or NaN); loads just within the limit
 * plan with a balancedness in (0, 1]. */
#include "eplb/eplb.h"
#include "tests/tap.h"

#include <math.h>
#include <string.h>

enum { L = 2, E = 4 };

/* Two layers of four experts, 4 replicas on 2 GPUs; `bad` goes to layer 1 expert 2. */
static void expect_refused(double bad, double other, const char *words)
{
    double w[L * E] = {1, 2, 3, 4, other, 1, bad, 1};
    for (int policy = 0; policy < 2; policy++) {
        eplb_config cfg = eplb_config_default(4, 2);
        cfg.policy = (eplb_policy)policy;
        eplb_plan plan;
        eplb_status st = eplb_rebalance(w, L, E, &cfg, &plan);
        tap_ok(st == EPLB_ERR_INVALID && strstr(eplb_last_error(), "layer 1") && strstr(eplb_last_error(), words) &&
                   plan.phy2log == NULL,
               "policy %d refuses a load of %g beside %g: %s", policy, bad, other, eplb_last_error());
    }
    eplb_config cfg = eplb_config_default(4, 2);
    double bound = -1;
    eplb_status st = eplb_lower_bound(w + E, E, &cfg, &bound);
    tap_ok(st == EPLB_ERR_INVALID && strstr(eplb_last_error(), words) && bound == -1,
           "eplb_lower_bound refuses it: %s", eplb_last_error());

    /* a plan made for good loads, evaluated against the bad ones */
    double good[L * E] = {1, 2, 3, 4, 4, 3, 2, 1};
    eplb_plan plan;
    if (eplb_rebalance(good, L, E, &cfg, &plan) != EPLB_OK) {
        tap_ok(0, "plan good loads: %s", eplb_last_error());
        return;
    }
    eplb_layer_stats stats;
    st = eplb_layer_evaluate(w + E, &plan, 1, &cfg, &stats);
    tap_ok(st == EPLB_ERR_INVALID && strstr(eplb_last_error(), "layer 1") && strstr(eplb_last_error(), words),
           "eplb_layer_evaluate refuses it: %s", eplb_last_error());
    double after = -1, before = -1, best = -1;
    st = eplb_plan_balancedness(w, &plan, &cfg, &after, &before, &best);
    tap_ok(st == EPLB_ERR_INVALID && strstr(eplb_last_error(), "layer 1") && after == -1,
           "eplb_plan_balancedness refuses it: %s", eplb_last_error());
    eplb_plan next;
    st = eplb_rebalance_from(w, L, E, &cfg, &plan, 0, &next, NULL, NULL, NULL);
    tap_ok(st == EPLB_ERR_INVALID && strstr(eplb_last_error(), "layer 1") && next.phy2log == NULL,
           "eplb_rebalance_from refuses it: %s", eplb_last_error());
    eplb_plan_free(&plan);
}

int main(void)
{
    expect_refused(NAN, 1, "not a finite number");
    expect_refused(INFINITY, 1, "not a finite number");
    expect_refused(-1, 1, "negative");
    expect_refused(1e308, 1e308, "add up to");
    expect_refused(1e38, 1e37, "more than 1e+38");

    /* within the limit: finite results for both policies */
    double w[L * E] = {2.5e37, 2.5e37, 2.5e37, 2.4e37, 1e-300, 0, 3e37, 5e-324};
    for (int policy = 0; policy < 2; policy++) {
        eplb_config cfg = eplb_config_default(4, 2);
        cfg.policy = (eplb_policy)policy;
        eplb_plan plan;
        double after = -1, before = -1, best = -1;
        eplb_status st = eplb_rebalance(w, L, E, &cfg, &plan);
        if (st == EPLB_OK) st = eplb_plan_balancedness(w, &plan, &cfg, &after, &before, &best);
        tap_ok(st == EPLB_OK && after > 0 && after <= 1 && before > 0 && before <= 1 && best > 0 && best <= 1,
               "policy %d plans loads summing to just under 1e38: balancedness before %g, after %g, best %g (%s)",
               policy, before, after, best, st == EPLB_OK ? "ok" : eplb_last_error());
        if (st == EPLB_OK) eplb_plan_free(&plan);
    }
    return tap_done();
}
