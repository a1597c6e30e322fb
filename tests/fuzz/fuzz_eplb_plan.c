/* fuzz_eplb_plan.c: libFuzzer target for the eplb tool's plan reader (phy2log from a plan's
 * JSON, as --current takes it). Whatever it accepts and names every expert of is built into a
 * plan, which must pass the plan's own check. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/eplb_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cli_program = "fuzz_eplb_plan";
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    int layers = 0, replicas = 0, *p2l = NULL;
    if (eplb_parse_phy2log("fuzz", text, &layers, &replicas, &p2l) == 0) {
        int experts = 0;
        for (size_t i = 0; i < (size_t)layers * (size_t)replicas; i++)
            if (p2l[i] >= experts) experts = p2l[i] + 1;
        eplb_plan plan;
        if (experts <= replicas &&
            eplb_plan_from_phy2log(p2l, layers, experts, replicas, 1, &plan) == EPLB_OK) {
            if (eplb_plan_check(&plan) != EPLB_OK) {
                fprintf(stderr, "a plan built from phy2log fails its check: %s\n", eplb_last_error());
                abort();
            }
            eplb_plan_free(&plan);
        }
        free(p2l);
    }
    free(text);
    return 0;
}
