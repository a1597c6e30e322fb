/* eplb_loads.c: which loads the balancer takes: finite numbers >= 0 whose sum over a layer stays
 * within EPLB_MAX_LAYER_LOAD, so that every sum, mean and ratio it forms (some in float32, as the
 * reference does) stays finite, and no balancedness comes out as inf or NaN. */
#include "eplb/eplb_internal.h"

#include <math.h>

eplb_status eplb_loads_check(const double *weight, int num_layers, int num_experts, int first_layer)
{
    if (!weight) return eplb_fail(EPLB_ERR_INVALID, "no loads given");
    for (int l = 0; l < num_layers; l++) {
        const double *w = weight + (size_t)l * num_experts;
        double total = 0;
        for (int e = 0; e < num_experts; e++) {
            if (!isfinite(w[e]))
                return eplb_fail(EPLB_ERR_INVALID, "layer %d expert %d: load is not a finite number",
                                 first_layer + l, e);
            if (w[e] < 0)
                return eplb_fail(EPLB_ERR_INVALID,
                                 "layer %d expert %d: load %g is negative; loads count tokens",
                                 first_layer + l, e, w[e]);
            total += w[e];
        }
        /* the loads are finite, so their sum is at most E * DBL_MAX: a NaN cannot arise, an
         * overflow shows as inf, which the comparison catches */
        if (total > EPLB_MAX_LAYER_LOAD)
            return eplb_fail(EPLB_ERR_INVALID,
                             "layer %d: the loads add up to %g, more than %g: the sums would "
                             "overflow; scale the loads down (only their ratios matter)",
                             first_layer + l, total, EPLB_MAX_LAYER_LOAD);
    }
    return EPLB_OK;
}
