/* fuzz_cost.c: libFuzzer target for the --cost parser (dp_cost_parse). Whatever it accepts must
 * simulate and draw in every format: finite times, no error, no endless picture. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/schedule.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static dp_schedule *sched;
static dp_schedule_report report;
static FILE *sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sched) {
        dp_schedule_params p = {.ranks = 4, .chunks = 8};
        if (dp_schedule_generate("dualpipe", &p, &sched) != DP_OK || dp_schedule_validate(sched, &report) != DP_OK ||
            !(sink = fopen("/dev/null", "w")))
            abort();
    }
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    dp_cost cost = dp_cost_default();
    if (dp_cost_parse(text, &cost) == DP_OK) {
        dp_simulation sim;
        if (dp_schedule_simulate(sched, &cost, &sim) != DP_OK) {
            fprintf(stderr, "'%s' parsed but does not simulate: %s\n", text, dp_last_error());
            abort();
        }
        for (int f = DP_FORMAT_TEXT; f <= DP_FORMAT_CHROME; f++)
            if (dp_schedule_write(sink, (dp_schedule_format)f, sched, &cost, &sim, &report) != DP_OK) {
                fprintf(stderr, "'%s' simulates but format %d fails: %s\n", text, f, dp_last_error());
                abort();
            }
        dp_simulation_free(&sim);
    }
    free(text);
    return 0;
}
