/* eplb_train.h: `train --eplb-every N --eplb-window W`: expert placement balanced while training.
 * Each step's per-expert token counts are kept for the last W steps; after every N steps the
 * process hosting rank 0 plans from their sum with the balanced policy, starting from the
 * placement running (eplb_rebalance_from, as many slots per layer as now, num_gpus = --ep), and
 * every process moves the experts there (dp_runtime_move_experts). */
#ifndef DP_TOOLS_EPLB_TRAIN_H
#define DP_TOOLS_EPLB_TRAIN_H

#include <stdint.h>

#include "engine/runtime.h"

typedef struct {
    int every, window;         /* --eplb-every, --eplb-window */
    int layers, experts, slots, gpus;
    int64_t *ring;             /* [window][layers x experts]: step k's counts in row k mod window */
    int recorded;              /* steps recorded so far */
    int rebalances;
} eplb_train;

/* For the runtime's model (made with a placement: --eplb-plan's, or the identity one). 0, or the
 * exit code having said why not. */
int eplb_train_init(eplb_train *et, dp_runtime *rt, int every, int window, int ep);
void eplb_train_free(eplb_train *et);
/* Records the last step's counts (collective: every process calls it). 0, or the exit code. */
int eplb_train_add_step(eplb_train *et, dp_runtime *rt);
/* After step `step`: when it is a multiple of every, plans and moves (collective), printing one
 * line unless quiet (the root prints). 0, or the exit code having said why. */
int eplb_train_after_step(eplb_train *et, dp_runtime *rt, int step, int quiet);

#endif
