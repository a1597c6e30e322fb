/* schedule_replay.h: plays every rank's actions in order against the data dependencies
 * between stages; shared by the validator (does it finish?) and the simulator (when does
 * each action start and end?). Internal to the engine. */
#ifndef DP_SCHEDULE_REPLAY_H
#define DP_SCHEDULE_REPLAY_H

#include "engine/schedule.h"

/* Duration of one action under `cost`, outside an overlapped pair. */
double dp_cost_of(const dp_cost *cost, int kind);

/* Each action waits for the rank's previous action and for its inputs: F for the
 * forward of the previous stage, B and I for the backward (B or I) of the next stage;
 * an input from another rank arrives cost->p2p after it is produced. An overlapped pair
 * starts when both halves can, and lasts cost->fb. start/end are [rank][action].
 * Returns DP_ERR_INVALID naming the stuck ranks when the ranks cannot all finish. */
dp_status dp_schedule_replay(const dp_schedule *s, const dp_cost *cost, double **start, double **end);

#endif
