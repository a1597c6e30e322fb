/* model_flops.h: the floating-point operations of a training step, counted from the GEMMs
 * each layer's kind runs (dense blocks, MoE layers with their gate, routed and shared experts),
 * for the GFLOP/s that `dualpipe train` reports. */
#ifndef DP_TOOLS_MODEL_FLOPS_H
#define DP_TOOLS_MODEL_FLOPS_H

#include "engine/model.h"

/* One micro-batch's forward through layer `layer` of a checked model (dp_model_config_check
 * filled its defaults): 2 m n k per GEMM; element-wise work (norms, activations, the combine)
 * is left out as small next to them. */
double model_layer_forward_flops(const dp_model_config *m, int layer);
/* A training step of `micro_batches` micro-batches through `layers` layers: each layer's
 * forward, and its backward at twice that (the input's and the weights' gradients). */
double model_train_step_flops(const dp_model_config *m, int layers, int micro_batches);

#endif
