/* fuzz_eplb_loads.c: libFuzzer target for the eplb tool's load reader (text and JSON). Whatever
 * it accepts must plan under both policies into a valid plan whose balancedness is a finite
 * number in [0, 1]. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/eplb_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int in_range(double b) { return isfinite(b) && b >= 0 && b <= 1 + 1e-9; }

static void plan_and_check(const eplb_loads *in, int gpus, int policy)
{
    eplb_config cfg = eplb_config_default((in->experts + gpus - 1) / gpus * gpus + gpus, gpus);
    cfg.policy = (eplb_policy)policy;
    eplb_plan plan;
    if (eplb_rebalance(in->w, in->layers, in->experts, &cfg, &plan) != EPLB_OK) {
        fprintf(stderr, "loads read but not planned: %s\n", eplb_last_error());
        abort();
    }
    double after = -1, before = -1, best = -1;
    if (eplb_plan_check(&plan) != EPLB_OK ||
        eplb_plan_balancedness(in->w, &plan, &cfg, &after, &before, &best) != EPLB_OK || !in_range(after) ||
        !in_range(before) || !in_range(best)) {
        fprintf(stderr, "policy %d on %d GPUs: %s; balancedness %g, before %g, best %g\n", policy, gpus,
                eplb_last_error(), after, before, best);
        abort();
    }
    eplb_plan_free(&plan);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cli_program = "fuzz_eplb_loads";
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    eplb_loads in;
    if (eplb_parse_loads("fuzz", text, &in) == 0) {
        /* planning cost grows with the shape: keep each input fast */
        if ((size_t)in.layers * (size_t)in.experts <= 4096 && in.experts <= 512)
            for (int policy = 0; policy < 2; policy++) {
                plan_and_check(&in, 1, policy);
                plan_and_check(&in, 4, policy);
            }
        eplb_loads_free(&in);
    }
    free(text);
    return 0;
}
