/* train_trace.h: `dualpipe train --trace`: when each action of each step ran, gathered from
 * the runtime step by step and written at the end by the schedule's Chrome writer (Perfetto,
 * chrome://tracing). The output file is opened before training so that a bad path fails first. */
#ifndef DP_TOOLS_TRAIN_TRACE_H
#define DP_TOOLS_TRAIN_TRACE_H

#include "engine/runtime.h"
#include "tools/cli.h"
#include "tools/output_file.h"

typedef struct {
    output_file out;
    dp_action_time *times; /* [steps][actions of all ranks], from the run's start */
    size_t per_step, cap;  /* times per step, and room for */
    int steps;
    size_t actions;        /* per step, an overlapped pair counting once */
} train_trace;

/* 0, or nonzero having said why the file cannot be written. */
int train_trace_open(train_trace *t, const char *path);
/* Adds the runtime's last step (steps are added in order), which began `offset` ms after the
 * run's start; 0, or nonzero having said so (out of memory). */
int train_trace_add_step(train_trace *t, dp_runtime *rt, double offset);
/* The number of actions (an overlapped pair counting once) added so far. */
size_t train_trace_actions(const train_trace *t);
/* Writes the trace of the steps added and renames it into place; 0, or nonzero having said why. */
int train_trace_write(train_trace *t, const dp_schedule *s, const char *title);
/* Frees the times and removes an unwritten output. */
void train_trace_close(train_trace *t);

#endif
