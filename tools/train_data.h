/* train_data.h: `dualpipe train`'s exchange with other implementations through safetensors
 * files: parameters named as a PyTorch state_dict of the same model (--init, --save-params)
 * and each step's inputs and targets (--data). */
#ifndef DP_TOOLS_TRAIN_DATA_H
#define DP_TOOLS_TRAIN_DATA_H

#include "engine/reference.h"
#include "engine/runtime.h"
#include "engine/safetensors.h"
#include "tools/output_file.h"

/* Parameter i of stage `stage` as a state_dict key: "layers.<L>.<name>.weight", L the layer's
 * index in the model (stage * layers_per_stage + its place in the stage), with its shape
 * (ndim 1 or 2, PyTorch's layout: a Linear's [out, in]). 0, or nonzero having said why. */
int train_param_name(dp_runtime *rt, int stage, int index, char *name, size_t size, int *ndim, int64_t shape[2]);

/* --init: every parameter of every copy of every stage of rt (and of ref, when not NULL) from
 * path, which must hold exactly the model's tensors, F32, of the right shapes. Returns 0 or
 * the exit code, having said what was wrong (a missing, extra or mis-shaped tensor: 2). */
int train_params_load(dp_runtime *rt, dp_reference *ref, const char *path);
/* --save-params: the fp32 values (copy 0 of each stage) to out (opened before training, so
 * that a bad path fails first), committed: whole or not at all. 0 or the exit code. */
int train_params_save(dp_runtime *rt, output_file *out);

/* --data: "step<k>.inputs" F32 [chunks, tokens, hidden] and "step<k>.targets", F32 of the
 * same shape (mse) or I32 [chunks, tokens] (xent), for k = 1 .. steps. */
typedef struct {
    dp_safetensors *f;
    int chunks, tokens, hidden;
    dp_loss_kind loss;
} train_data;

/* Opens path and checks that it holds steps steps of the model's shape. 0 or the exit code. */
int train_data_open(train_data *d, const char *path, const dp_model_config *m, int chunks, int steps);
/* Step `step`'s inputs [chunks x tokens x hidden] and targets (as dp_runtime_train_step takes
 * them). 0 or nonzero having said why. */
int train_data_step(const train_data *d, int step, float *inputs, void *targets);
void train_data_close(train_data *d);

#endif
