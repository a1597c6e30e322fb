/* schedule_replay.h: plays every rank's actions in order against the data dependencies
 * between stages; shared by the validator (does it finish?) and the simulator (when does
 * each action start and end?). Internal to the engine. */
#ifndef DP_SCHEDULE_REPLAY_H
#define DP_SCHEDULE_REPLAY_H

#include "engine/schedule.h"

/* What a lone action (pair 0) or an overlapped pair (pair 1: a and a + 1) costs under `cost`:
 * how long it lasts, its all-to-all time in all, and the part of that not hidden under compute
 * (duration = compute + a2a_exposed). */
typedef struct {
    double duration;
    double a2a;
    double a2a_exposed;
} dp_span_cost;
dp_span_cost dp_span_cost_of(const dp_cost *cost, const dp_action *a, int pair);

/* Each action waits for the rank's previous action and for its inputs: F for the
 * forward of the previous stage, B and I for the backward (B or I) of the next stage;
 * an input from another rank arrives cost->p2p after it is produced. An overlapped pair
 * starts when both halves can, and lasts as dp_span_cost_of says. start/end are
 * [rank][action]; p2p_exposed (NULL: not wanted) [rank] gathers, over the rank's waits, what
 * the latency of the gating transfer added to each. Returns DP_ERR_INVALID naming the stuck
 * ranks when the ranks cannot all finish. */
dp_status dp_schedule_replay(const dp_schedule *s, const dp_cost *cost, double **start, double **end,
                             double *p2p_exposed);

#endif
