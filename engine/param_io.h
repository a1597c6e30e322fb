/* param_io.h: one tensor of a stage's parameter (value, gradient, optimizer moments) copied
 * between the host and the stage's device, for whoever holds the stage: a rank of the runtime,
 * or the single-device reference. Reads and writes keep the stage consistent. */
#ifndef DP_PARAM_IO_H
#define DP_PARAM_IO_H

#include <stddef.h>

#include "engine/device.h"
#include "engine/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Copies `which` of parameter i (count floats, also returned in *count, and its name, when
 * not NULL) into host, when not NULL. Optimizer state not yet allocated reads as zeros (the
 * state before the first step). Returns with host written. */
dp_status dp_param_read(const dp_device_ops *D, dp_device *dev, dp_stage *st, int i, dp_tensor_kind which,
                        float *host, size_t *count, char name[32]);
/* Copies count floats (the parameter's size) from host into `which` of parameter i:
 * optimizer state is allocated first if needed; a value refreshes its copy in the model's
 * dtype. Returns with the device's default stream idle, so any stream may use the tensor. */
dp_status dp_param_write(const dp_device_ops *D, dp_device *dev, dp_stage *st, int i, dp_tensor_kind which,
                         const float *host, size_t count);

/* The device pointer of `which` in a parameter's view (NULL: optimizer state not allocated). */
float *dp_param_tensor(const dp_param_view *v, dp_tensor_kind which);
/* "value", "grad", "m", "v" */
const char *dp_tensor_kind_name(dp_tensor_kind which);

#ifdef __cplusplus
}
#endif
#endif
