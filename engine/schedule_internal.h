/* schedule_internal.h: pieces shared between schedule generators, and between the writers,
 * not part of the API. */
#ifndef DP_SCHEDULE_INTERNAL_H
#define DP_SCHEDULE_INTERNAL_H

#include "engine/schedule.h"

/* The eight steps of DualPipe's step(), shared by DualPipe and DualPipeV, for one rank.
 * n: ranks of a half (DualPipe: PP/2; DualPipeV: ranks); h: the rank's position in its
 * half (DualPipe: min(r, PP-1-r); DualPipeV: r); c: micro-batches entering through this
 * half (DualPipe: chunks/2; DualPipeV: chunks); flip: the rank's phase 0 is direction 1
 * (DualPipe's second half); unpaired_first: run the first F0/B1 of the main step
 * unoverlapped (DualPipe's middle ranks, DualPipeV's last rank). */
dp_status dp_schedule_emit_dualpipe_rank(dp_schedule *s, int rank, int n, int h, int c, int flip,
                                         int unpaired_first);

/* DP_ERR_INVALID, naming the rank and action, unless every time of sim is a finite number
 * >= 0 with each action ending no earlier than it starts (the writers' precondition: a
 * picture scaled by an infinite makespan never ends). */
dp_status dp_simulation_check(const dp_schedule *s, const dp_simulation *sim);

/* Whether the costs hold any communication (a p2p latency or an all-to-all): the writers add
 * exposed communication only then, so that output without it stays as it was. */
int dp_cost_has_comm(const dp_cost *c);

#endif
