/* verify_check.h: the comparisons of `dualpipe verify`, one training step at a time, and the
 * lockstep that keeps them sound: after each step the driver under test is given the CPU's
 * parameters and optimizer state, so every step starts both runs from the same state. */
#ifndef DP_TOOLS_VERIFY_CHECK_H
#define DP_TOOLS_VERIFY_CHECK_H

#include <stdio.h>

#include "engine/runtime.h"
#include "tools/compare.h"
#include "tools/verify_tolerance.h"

/* One compared tensor over all steps: the losses, a gradient or a parameter. */
typedef struct {
    char label[96];
    size_t elements;         /* per step */
    compare_stats judged;    /* every element of every step against its tolerance */
    compare_stats apart;     /* |driver - cpu| (for parameters, next to the replay judged above) */
    compare_stats moments;   /* parameters: the optimizer's m and v against the CPU's moved by dg */
    size_t undefined;        /* parameters: element-steps whose gradient was within its tolerance */
    double undefined_apart;  /* their largest |driver - cpu|, in units of lr */
    size_t above, below;     /* parameters: the driver above / below the replayed step */
} verify_row;

typedef struct {
    dp_runtime *drv, *cpu;
    dp_optimizer_config opt; /* as the runtimes use it (defaults filled in) */
    verify_tolerance loss_tol, grad_tol; /* derived from the model */
    /* what losses and gradients are held to: |driver - cpu| <= atol x rms + rtol x |cpu|, rms
     * the tensor's root mean square; eps of the tolerances above unless --atol, --rtol */
    double loss_atol, loss_rtol, grad_atol, grad_rtol;
    verify_row losses, *grads, *params;
    struct verify_place *places; /* where each tensor is in the runtimes */
    int ntensors;
    int steps;
    /* MoE routing: the line saying how the cpu followed the driver's expert choices ("" when
     * the model has no MoE layer), and whether a choice was no tie that rounding explains */
    char routing_note[512];
    int routing_failed;
} verify_session;

/* Sets up the rows for every tensor of the model (both runtimes must hold the same model) and
 * the derived tolerances; atol, rtol < 0: the derived ones. */
dp_status verify_session_init(verify_session *vs, dp_runtime *drv, dp_runtime *cpu, const dp_optimizer_config *opt,
                              int chunks, double atol, double rtol);
void verify_session_free(verify_session *vs);

/* The losses of one step. */
void verify_losses(verify_session *vs, const float *drv, const float *cpu, int chunks);
/* Every gradient and parameter after step `step` (1-based), then the CPU's state into the
 * driver for the next step. */
dp_status verify_tensors_and_sync(verify_session *vs, int step);

/* Prints the rows (failing ones only when quiet) and the summary; returns the failing rows. */
int verify_report(const verify_session *vs, int quiet, FILE *out);

#endif
