/* gemm_floor.h: the bubble-free floor of a training step on a GPU: the cuBLAS time of the
 * example stage's six GEMMs (Linear h->4h and 4h->h: forward, input gradient, weight gradient),
 * measured the way a step runs them, and the sum of the GEMMs each GPU's ranks run in a step
 * as the schedule gives them. Used by `dualpipe bench-cuda`. */
#ifndef DP_TOOLS_GEMM_FLOOR_H
#define DP_TOOLS_GEMM_FLOOR_H

#include "engine/driver.h"
#include "engine/schedule.h"

/* the six GEMMs of a stage visit, in the order engine/model.c runs them */
enum {
    GEMM_FLOOR_F1, /* h = x W1^T */
    GEMM_FLOOR_F2, /* y = g W2^T */
    GEMM_FLOOR_B2, /* dg = dy W2 */
    GEMM_FLOOR_B1, /* dx = dh W1: left out on a first stage */
    GEMM_FLOOR_W2, /* dW2 += dy^T g, into fp32 */
    GEMM_FLOOR_W1, /* dW1 += dh^T x, into fp32 */
    GEMM_FLOOR_GEMMS
};

typedef struct {
    double ms[GEMM_FLOOR_GEMMS]; /* each GEMM's median time, per micro-batch and stage */
    double sustained_ms;         /* GPU time the GEMMs ran before the timed ones */
} gemm_floor;

/* Times the six GEMMs of a stage of `hidden` and `tokens` in `dt` on device 0 of the driver,
 * opened with `device_flags` (DP_DEVICE_*, as the step's devices are). 0, or nonzero with the
 * error printed. */
int gemm_floor_measure(const dp_driver *drv, uint32_t device_flags, int hidden, int tokens, dp_dtype dt,
                       gemm_floor *f);

/* Forward, input-gradient and weight-gradient GEMMs of one stage visit. */
double gemm_floor_fwd(const gemm_floor *f);
double gemm_floor_bwd_in(const gemm_floor *f);
double gemm_floor_bwd_w(const gemm_floor *f);

/* The floor of a step: the GEMM time of the busiest of `gpus` GPUs, rank r on GPU r mod gpus. */
double gemm_floor_per_gpu(const dp_schedule *s, int gpus, const gemm_floor *f);

#endif
