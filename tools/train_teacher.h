/* train_teacher.h: the network `dualpipe train` learns to imitate: one fp32 block with a seed
 * of its own, run on the training's driver (device 0), so that a GPU run is not held up by the
 * whole batch's forward on the host. It turns each step's inputs into targets. */
#ifndef DP_TOOLS_TRAIN_TEACHER_H
#define DP_TOOLS_TRAIN_TEACHER_H

#include <stdint.h>

#include "engine/model.h"

typedef struct {
    const dp_device_ops *ops;
    dp_device *dev;
    dp_stage *stage;
    float *out;  /* the forward's output, on the host */
    float scale; /* makes the first batch's targets unit-variance */
} train_teacher;

/* 0, or nonzero having said why. Close it either way (a zeroed teacher closes too). */
int train_teacher_open(train_teacher *t, const char *driver, const dp_model_config *m, int chunks, uint64_t seed,
                       int threads);
void train_teacher_close(train_teacher *t);
/* Targets for inputs x [chunks*tokens x h]: floats (mse) or argmax labels (xent); 0, or
 * nonzero having said why. */
int train_teacher_targets(train_teacher *t, const dp_model_config *m, int chunks, const float *x, void *targets);

#endif
