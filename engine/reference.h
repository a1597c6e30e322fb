/* reference.h: the single-rank sequential reference a pipelined run must equal: the same
 * stages on one device, each micro-batch run forward through every stage and then backward,
 * in micro-batch order, pipe by pipe, with the same kernels. */
#ifndef DP_REFERENCE_H
#define DP_REFERENCE_H

#include "engine/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dp_reference dp_reference;

/* Takes the model, optimizer, driver, and from the schedule only its shape (stages and
 * pipes): a two-pipe schedule keeps a gradient per pipe and adds them, as its two copies of
 * each stage do. threads_per_rank sets the device's threads (0: all cores). */
dp_status dp_reference_create(const dp_runtime_config *cfg, dp_reference **out);
void dp_reference_destroy(dp_reference *ref);

/* The same contract as dp_runtime_train_step and dp_runtime_infer. */
dp_status dp_reference_train_step(dp_reference *ref, const float *inputs, const void *targets, float *losses);
dp_status dp_reference_infer(dp_reference *ref, const float *inputs, float *outputs);

dp_status dp_reference_read_param(dp_reference *ref, int stage, int index, int grad, float *host, size_t *count);

#ifdef __cplusplus
}
#endif
#endif
