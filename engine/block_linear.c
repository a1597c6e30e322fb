/* block_linear.c: the Linear layer (no bias) that blocks are built from, as GEMMs on the
 * device: activations and weights in the model's dtype, accumulation in fp32, weight gradients
 * accumulated into fp32. */
#include "engine/block.h"

dp_status dp_linear_forward(const dp_block_layer *L, dp_stream *s, const void *x, const void *w, void *y, int in,
                            int out)
{
    dp_dtype dt = L->cfg->dtype;
    dp_gemm_args g = {0, 1, L->cfg->tokens, out, in, 1.0f, 0.0f, x, in, dt, w, in, dt, y, out, dt};
    return L->env->ops->gemm(L->env->dev, s, &g);
}

dp_status dp_linear_backward_input(const dp_block_layer *L, dp_stream *s, const void *dy, const void *w, void *dx,
                                   int in, int out)
{
    dp_dtype dt = L->cfg->dtype;
    dp_gemm_args g = {0, 0, L->cfg->tokens, in, out, 1.0f, 0.0f, dy, out, dt, w, in, dt, dx, in, dt};
    return L->env->ops->gemm(L->env->dev, s, &g);
}

dp_status dp_linear_backward_weight(const dp_block_layer *L, dp_stream *s, const void *dy, const void *x, float *dw,
                                    int in, int out)
{
    dp_dtype dt = L->cfg->dtype;
    dp_gemm_args g = {1, 0, out, in, L->cfg->tokens, 1.0f, 1.0f, dy, out, dt, x, in, dt, dw, in, DP_DTYPE_F32};
    return L->env->ops->gemm(L->env->dev, s, &g);
}
