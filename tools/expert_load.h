/* expert_load.h: `train --dump-expert-load FILE`: how many (token, k) slots chose each routed
 * expert of each MoE layer, read from the runtime after every step, summed over the run, and
 * written as SGLang's {"logical_count": [[layer 0's], ...]} that the eplb tool plans from. */
#ifndef DP_TOOLS_EXPERT_LOAD_H
#define DP_TOOLS_EXPERT_LOAD_H

#include <stdint.h>

#include "engine/runtime.h"
#include "tools/output_file.h"

typedef struct {
    int layers, experts; /* the model's MoE layers (rows, in layer order) and routed experts */
    int64_t *counts;     /* [layers x experts]: summed over the steps recorded */
    int steps;           /* recorded */
} expert_load;

/* The most tokens a step may have for its counts to be exact: each is an fp32 sum of whole
 * numbers, exact up to 2^24, and one expert receives at most every token of the step. */
#define EXPERT_LOAD_MAX_STEP_TOKENS (1LL << 24)

/* For the runtime's model: 0, or CLI_EXIT_USAGE having said why (no MoE layer). */
int expert_load_init(expert_load *el, dp_runtime *rt);
void expert_load_free(expert_load *el);
/* The last step's counts of every MoE layer into out[layers x experts] (collective in every
 * process of a job, as below). 0, or CLI_EXIT_FAIL having said why, naming `option`. */
int expert_load_read_step(dp_runtime *rt, int layers, int experts, int64_t *out, const char *option);
/* Adds the last step's counts of every MoE layer (in every process of a job: the reads are
 * collective; the counts arrive in rank 0's). 0, or CLI_EXIT_FAIL having said why. */
int expert_load_add_step(expert_load *el, dp_runtime *rt);
/* Writes {"logical_count": [...]}, one row per MoE layer, and commits the file. 0, or
 * CLI_EXIT_FAIL having said why (the file is then left as it was). */
int expert_load_write(const expert_load *el, output_file *out);

#endif
