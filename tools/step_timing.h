/* step_timing.h: what the ranks did in recorded steps (a runtime made with record_times):
 * the mean time of each kind of action, each rank's busy and idle time per step, and the same
 * figures predicted by the schedule simulator from those measured action times. Shared by
 * `dualpipe train` and `dualpipe bench-cuda`. */
#ifndef DP_TOOLS_STEP_TIMING_H
#define DP_TOOLS_STEP_TIMING_H

#include <stdio.h>

#include "engine/runtime.h"

typedef struct {
    double sum[5]; /* F, B, I, W, an overlapped F&B pair */
    long count[5];
    double comm[5];      /* of sum, the time waited for expert exchanges in flight (exposed) */
    double *busy, *idle; /* [ranks], summed over the measured steps */
    double *exposed;     /* [ranks]: of busy, the exposed expert communication */
    int ranks, steps;    /* ranks: world ranks (data-parallel replicas x the schedule's ranks) */
    int no_overlap;      /* the run's pairs ran without the overlap (--no-overlap): simulated so */
} step_timing;

/* For `ranks` world ranks (the schedule's, times the replicas with data parallelism). 0, or
 * nonzero (and a message printed) when out of memory. */
int step_timing_init(step_timing *t, int ranks);
void step_timing_free(step_timing *t);
/* Reads the runtime's times of its last step; adds them to the means when `measure` (leave out
 * warm-up steps). */
void step_timing_collect(step_timing *t, dp_runtime *rt, int measure);
/* The simulator's prediction from the measured means: each kind's compute (its time less its
 * waits for exchanges) and the all-to-all of a forward and of an input-backward as the lone ones
 * waited for them, with or without the overlap as the run. 0, or nonzero having warned why;
 * free with dp_simulation_free. */
int step_timing_predict(const step_timing *t, const dp_schedule *s, dp_simulation *sim);
/* The measured exposed all-to-all per step, the mean over the ranks (ms). */
double step_timing_exposed(const step_timing *t);
/* Prints the mean action times, then per rank the measured busy and idle time per step next to
 * the simulator's prediction from the measured means. */
void step_timing_report(const step_timing *t, const dp_schedule *s, FILE *out);

#endif
