/* model_flops.c: GEMM operations per layer kind (see model_flops.h). */
#include "tools/model_flops.h"

double model_layer_forward_flops(const dp_model_config *m, int layer)
{
    double T = m->tokens, h = m->hidden;
    if (dp_model_layer_kind(m, layer) != DP_BLOCK_MOE) return 2 * (2 * T * h * m->ffn); /* h -> ffn -> h */
    const dp_moe_config *e = &m->moe;
    double f = e->expert_hidden;
    double gate = 2 * T * h * e->experts;
    /* a SwiGLU of width f on n rows: w1 and w3 (h -> f), w2 (f -> h) */
    double routed = 3 * (2 * T * e->topk * h * f); /* on every (token, k) row */
    double shared = 3 * (2 * T * h * f * e->shared_experts);
    return gate + routed + shared;
}

double model_train_step_flops(const dp_model_config *m, int layers, int micro_batches)
{
    double forward = 0;
    for (int l = 0; l < layers; l++) forward += model_layer_forward_flops(m, l);
    return 3 * forward * micro_batches;
}
