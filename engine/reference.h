/* reference.h: the single-rank sequential reference a pipelined run must equal: the same
 * stages on one device, each micro-batch run forward through every stage and then backward,
 * in micro-batch order, pipe by pipe, replica by replica, with the same kernels, and the
 * gradients summed in the grouping the pipelined run sums them. */
#ifndef DP_REFERENCE_H
#define DP_REFERENCE_H

#include "engine/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dp_reference dp_reference;

/* Takes the model, optimizer, driver, the replicas (dp) and from the schedule only its shape
 * (stages and pipes): a two-pipe schedule keeps a gradient per pipe and adds them, as its two
 * copies of each stage do; with dp > 1 each replica's micro-batches are summed on their own
 * (and over the pipes), then the replicas' sums are added in replica order, as the
 * data-parallel all-reduce adds them. threads_per_rank sets the device's threads (0: all cores). */
dp_status dp_reference_create(const dp_runtime_config *cfg, dp_reference **out);
void dp_reference_destroy(dp_reference *ref);

/* The same contract as dp_runtime_train_step and dp_runtime_infer. */
dp_status dp_reference_train_step(dp_reference *ref, const float *inputs, const void *targets, float *losses);
dp_status dp_reference_infer(dp_reference *ref, const float *inputs, float *outputs);

/* The same contract as dp_runtime_read_tensor, write_tensor, step and set_step: `copy`
 * picks the pipe's copy of a stage (0 or 1 for a two-pipe schedule's shape, else 0). */
dp_status dp_reference_read_tensor(dp_reference *ref, int stage, int copy, int index, dp_tensor_kind which,
                                   float *host, size_t *count, char name[32]);
dp_status dp_reference_write_tensor(dp_reference *ref, int stage, int copy, int index, dp_tensor_kind which,
                                    const float *host, size_t count);
int dp_reference_step(const dp_reference *ref);
dp_status dp_reference_set_step(dp_reference *ref, int step);
/* The value (grad = 0) or gradient (grad = 1) of copy 0. */
dp_status dp_reference_read_param(dp_reference *ref, int stage, int index, int grad, float *host, size_t *count);

#ifdef __cplusplus
}
#endif
#endif
