/* expert_load.c: per-layer, per-expert token counts of a training run (see expert_load.h),
 * summed over its steps in 64-bit integers from the runtime's exact per-step counts. */
#include "tools/expert_load.h"

#include <stdio.h>
#include <stdlib.h>

#include "tools/cli.h"

int expert_load_init(expert_load *el, dp_runtime *rt)
{
    *el = (expert_load){0};
    el->layers = dp_runtime_num_moe_layers(rt);
    el->experts = dp_runtime_model(rt)->moe.experts;
    if (el->layers < 1 || el->experts < 1) {
        cli_error("--dump-expert-load: the model has no MoE layer (by default every layer but the first is one: give "
                  "more layers, or name them with --moe-layers)");
        return CLI_EXIT_USAGE;
    }
    el->counts = calloc((size_t)el->layers * (size_t)el->experts, sizeof *el->counts);
    if (!el->counts) {
        cli_error("out of memory for the loads of %d layers x %d experts", el->layers, el->experts);
        return CLI_EXIT_FAIL;
    }
    return 0;
}

void expert_load_free(expert_load *el)
{
    free(el->counts);
    el->counts = NULL;
}

int expert_load_read_step(dp_runtime *rt, int layers, int experts, int64_t *out, const char *option)
{
    for (int l = 0; l < layers; l++)
        if (dp_runtime_read_expert_load(rt, l, out + (size_t)l * experts) != DP_OK) {
            cli_error("%s: %s", option, dp_last_error());
            return CLI_EXIT_FAIL;
        }
    return 0;
}

int expert_load_add_step(expert_load *el, dp_runtime *rt)
{
    size_t row = (size_t)el->layers * (size_t)el->experts;
    int64_t *step = malloc(sizeof *step * (row ? row : 1));
    if (!step) {
        cli_error("out of memory for the loads of %d layers x %d experts", el->layers, el->experts);
        return CLI_EXIT_FAIL;
    }
    int rc = expert_load_read_step(rt, el->layers, el->experts, step, "--dump-expert-load");
    for (size_t i = 0; !rc && i < row; i++) el->counts[i] += step[i];
    free(step);
    if (!rc) el->steps++;
    return rc;
}

int expert_load_write(const expert_load *el, output_file *out)
{
    FILE *fp = out->fp;
    fprintf(fp, "{\"logical_count\": [");
    for (int l = 0; l < el->layers; l++) {
        fprintf(fp, "%s\n  [", l ? "," : "");
        for (int e = 0; e < el->experts; e++)
            fprintf(fp, "%s%lld", e ? ", " : "", (long long)el->counts[(size_t)l * el->experts + e]);
        fprintf(fp, "]");
    }
    fprintf(fp, "\n]}\n");
    return output_file_commit(out) ? CLI_EXIT_FAIL : 0; /* which notices a failed write */
}
