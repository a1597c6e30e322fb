/* executor.h: plays one rank's actions of a schedule. Each action first posts, in one link
 * group, the sends left by the previous action and the receives it needs, waits for the
 * receives, then runs the stage's forward / backward-input / backward-weight; an overlapped
 * F&B pair posts both halves' receives together and runs them on two streams (or, asked to,
 * one after the other on one), their phases taking turns where a block stops at a
 * communication point. */
#ifndef DP_EXECUTOR_H
#define DP_EXECUTOR_H

#include "engine/device.h"
#include "engine/link.h"
#include "engine/model.h"
#include "engine/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Link channels: one per pipe and direction of travel, so that a backend matching by order
 * (NCCL) sees each channel's messages in micro-batch order on both sides. */
#define DP_CHANNEL_ACTIVATION(pipe) (2 * (pipe))
#define DP_CHANNEL_GRADIENT(pipe) (2 * (pipe) + 1)

typedef struct {
    const dp_schedule *sched;
    int rank; /* pipeline rank, which is also this rank's rank in `link` */
    const dp_device_ops *dops;
    dp_device *dev;
    dp_stream *streams[2]; /* [0] forwards and lone actions, [1] the backward of an overlapped pair */
    const dp_link_ops *lops;
    dp_link *link;                  /* the pipeline group */
    dp_stage *stages[DP_MAX_LOCAL_STAGES];  /* by local stage (local_stage) */
    int sync_each_action;           /* synchronise streams after every action, so timings are real */
    /* 1: an overlapped pair's halves run one after the other on streams[0], as the reference's
     * example stage runs them (their transfers still overlap them); 0: on two streams at once */
    int serial_pairs;
    /* 1: no overlap: an overlapped pair's halves run one after the other, each to its end (and
     * on streams[0]), so that no exchange of one hides under the other's compute; results are
     * the same bits. 0: the halves take turns at their communication points. */
    int no_overlap;
} dp_executor_config;

/* A step's data, per pipe, in device memory. Micro-batch k of pipe p is element
 * p * chunks_per_pipe + k of the step, as in the schedule. */
typedef struct {
    const void *input[DP_MAX_LOCAL_STAGES];  /* [chunks_per_pipe x tokens x hidden] in the model's dtype: read by the pipe's first stage */
    const void *target[DP_MAX_LOCAL_STAGES]; /* per micro-batch targets (dp_model_target_bytes each): read by the pipe's last stage */
    float *loss[DP_MAX_LOCAL_STAGES];        /* [chunks_per_pipe] fp32: written by the pipe's last stage (training) */
    void *output[DP_MAX_LOCAL_STAGES];       /* [chunks_per_pipe x tokens x hidden] in the model's dtype: written by the last stage (inference) */
    dp_action_time *times;           /* [num_actions of this rank] or NULL */
    double t0;                       /* the step's start on the monotonic clock (ms), for times */
} dp_step_io;

typedef struct dp_executor dp_executor;

dp_status dp_executor_create(const dp_executor_config *cfg, dp_executor **out);
void dp_executor_destroy(dp_executor *ex);

/* One training step's forwards and backwards (gradients accumulate into the stages;
 * zeroing, synchronising and the optimizer are the runtime's). */
dp_status dp_executor_train(dp_executor *ex, dp_step_io *io);
/* Forward only: the schedule's F actions in order; outputs instead of losses. */
dp_status dp_executor_infer(dp_executor *ex, dp_step_io *io);

/* Milliseconds on the monotonic clock. */
double dp_now_ms(void);

#ifdef __cplusplus
}
#endif
#endif
