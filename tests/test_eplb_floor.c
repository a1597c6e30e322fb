/* test_eplb_floor.c: the balanced policy skips building the reference plan when the
 * reference's largest GPU load, computed alone in float32, is clearly above its own; this
 * checks that load against the reference plan's, on seeded random loads (ties, zeros, and
 * loads past float32's exact integers) over hierarchical and global shapes. */
#include "eplb/eplb_internal.h"
#include "tests/eplb_test_loads.h"
#include "tests/tap.h"

#include <math.h>
#include <stdlib.h>

int main(void)
{
    test_seed(0x2545f4914f6cdd1dull);
    const struct {
        int E, R, groups, nodes, gpus;
    } shapes[] = {
        {256, 288, 8, 4, 32}, {256, 320, 8, 8, 64}, {256, 288, 8, 1, 32},
        {256, 320, 8, 16, 64}, {12, 16, 4, 2, 8},   {32, 48, 8, 4, 8},
        {64, 64, 4, 2, 16},
    };
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int style = 0; style < 4; style++) {
            eplb_config c = eplb_config_default(shapes[k].R, shapes[k].gpus);
            c.num_groups = shapes[k].groups;
            c.num_nodes = shapes[k].nodes;
            eplb_shape s = eplb_shape_of(&c, shapes[k].E);
            eplb_scratch *sc = eplb_scratch_new(&s);
            int *p2l = malloc(2 * (size_t)s.R * sizeof(int));
            int *cnt = malloc((size_t)s.E * sizeof(int));
            double *w = malloc((size_t)s.E * sizeof(double));
            double *load = malloc((size_t)(s.P > s.E ? s.P : s.E) * sizeof(double));
            if (!sc || !p2l || !cnt || !w || !load) {
                tap_ok(0, "out of memory for the test");
                return tap_done();
            }
            int worst_ok = 1, lower_ok = 1, planned = 1;
            double worst = 0, slack = (s.slots + 2) * 0x1p-24;
            for (int layer = 0; layer < 20; layer++) {
                test_random_loads(w, s.E, style);
                planned &= eplb_deepseek_layer(w, &s, sc, p2l, p2l + s.R) == EPLB_OK;
                double ref = eplb_gpu_loads(w, s.E, p2l, s.R, s.P, cnt, load);
                double est = eplb_deepseek_max_f32(w, &s, sc, HUGE_VAL);
                double quick = eplb_deepseek_max_f32(w, &s, sc, 0);
                /* |est - ref| <= (S + 2) * 2^-24 * ref: float32 rounding only */
                double rel = ref > 0 ? fabs(est - ref) / ref : fabs(est);
                if (rel > worst) worst = rel;
                worst_ok &= tap_close(est, ref, 0, slack);
                lower_ok &= quick <= ref * (1 + slack); /* a lower bound, to rounding */
            }
            tap_ok(planned, "E=%d R=%d groups=%d nodes=%d gpus=%d loads#%d: the reference plans every layer (%s)",
                   s.E, s.R, s.groups, s.N, s.P, style, eplb_last_error());
            tap_ok(worst_ok, "E=%d R=%d groups=%d nodes=%d gpus=%d loads#%d: the reference's "
                   "largest GPU load alone is within %.2g of its plan's (worst %.2g)",
                   s.E, s.R, s.groups, s.N, s.P, style, slack, worst);
            tap_ok(lower_ok, "E=%d R=%d groups=%d nodes=%d gpus=%d loads#%d: its shortcut "
                   "never exceeds the plan's", s.E, s.R, s.groups, s.N, s.P, style);
            eplb_scratch_free(sc);
            free(p2l);
            free(cnt);
            free(w);
            free(load);
        }
    return tap_done();
}
