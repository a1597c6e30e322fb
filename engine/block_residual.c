/* block_residual.c: a pre-norm residual MLP as a block kind:
 * y = x + Linear2(GELU(Linear1(RMSNorm(x)))), no bias. One phase: it never communicates. */
#include "engine/block.h"

enum { LINEAR1, LINEAR2, NORM, NUM_PARAMS };

/* Kept per micro-batch in the model's dtype (rstd in fp32): the pre-activation, the GELU output
 * and the gradient of the pre-activation [tokens x ffn]; the normalised input and its gradient
 * [tokens x hidden]; the reciprocal RMS of each row [tokens]. */
typedef struct {
    void *a1, *g1, *da;
    void *xn, *dxn;
    float *rstd;
} residual_saved;

static size_t residual_layout(const dp_block_layer *L, void *base, residual_saved *k)
{
    size_t T = (size_t)L->cfg->tokens, es = dp_dtype_size(L->cfg->dtype);
    size_t nf = T * (size_t)L->cfg->ffn * es, nh = T * (size_t)L->cfg->hidden * es;
    dp_carver c = {base, 0};
    k->a1 = dp_carve(&c, nf);
    k->g1 = dp_carve(&c, nf);
    k->da = dp_carve(&c, nf);
    k->xn = dp_carve(&c, nh);
    k->dxn = dp_carve(&c, nh);
    k->rstd = dp_carve(&c, T * sizeof(float));
    return c.at;
}

static int residual_num_params(const dp_block_layer *L)
{
    (void)L;
    return NUM_PARAMS;
}

static void residual_param_spec(const dp_block_layer *L, int j, dp_block_param_spec *out)
{
    size_t h = (size_t)L->cfg->hidden, f = (size_t)L->cfg->ffn;
    if (j == LINEAR1) *out = (dp_block_param_spec){.name = "linear1", .rows = f, .cols = h,
                                            .init = DP_PARAM_INIT_LINEAR, .gemm_operand = 1};
    else if (j == LINEAR2) *out = (dp_block_param_spec){.name = "linear2", .rows = h, .cols = f,
                                            .init = DP_PARAM_INIT_LINEAR, .gemm_operand = 1};
    /* RMSNorm's weight is read in fp32 by its kernels: no copy in the model's dtype */
    else *out = (dp_block_param_spec){.name = "norm", .rows = 1, .cols = h,
                                            .init = DP_PARAM_INIT_ONES, .gemm_operand = 0};
}

static size_t residual_saved_bytes(const dp_block_layer *L)
{
    residual_saved k;
    return residual_layout(L, NULL, &k);
}

static dp_status residual_forward(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    const dp_device_ops *o = L->env->ops;
    dp_device *dev = L->env->dev;
    residual_saved k;
    residual_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn, T = L->cfg->tokens;
    dp_dtype dt = L->cfg->dtype;
    DP_CHECK(o->rmsnorm_forward(dev, p->stream, dt, T, h, L->cfg->norm_eps, p->x, L->value[NORM], k.xn, k.rstd));
    DP_CHECK(dp_linear_forward(L, p->stream, k.xn, L->w[LINEAR1], k.a1, h, f));
    DP_CHECK(o->gelu_forward(dev, p->stream, dt, (size_t)T * (size_t)f, k.a1, k.g1));
    DP_CHECK(dp_linear_forward(L, p->stream, k.g1, L->w[LINEAR2], p->y, f, h));
    return o->add(dev, p->stream, dt, (size_t)T * (size_t)h, p->y, p->x, p->y);
}

static dp_status residual_backward_input(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    const dp_device_ops *o = L->env->ops;
    dp_device *dev = L->env->dev;
    residual_saved k;
    residual_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn, T = L->cfg->tokens;
    dp_dtype dt = L->cfg->dtype;
    DP_CHECK(dp_linear_backward_input(L, p->stream, p->dy, L->w[LINEAR2], k.da, f, h));
    DP_CHECK(o->gelu_backward(dev, p->stream, dt, (size_t)T * (size_t)f, k.a1, k.da, k.da));
    DP_CHECK(dp_linear_backward_input(L, p->stream, k.da, L->w[LINEAR1], k.dxn, h, f));
    if (!p->dx) return DP_OK;
    DP_CHECK(o->rmsnorm_backward_input(dev, p->stream, dt, T, h, p->x, L->value[NORM], k.rstd, k.dxn, p->dx));
    /* the residual path's gradient */
    return o->add(dev, p->stream, dt, (size_t)T * (size_t)h, p->dx, p->dy, p->dx);
}

static dp_status residual_backward_weight(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    residual_saved k;
    residual_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn, T = L->cfg->tokens;
    DP_CHECK(dp_linear_backward_weight(L, p->stream, p->dy, k.g1, L->grad[LINEAR2], f, h));
    DP_CHECK(dp_linear_backward_weight(L, p->stream, k.da, k.xn, L->grad[LINEAR1], h, f));
    return L->env->ops->rmsnorm_backward_weight(L->env->dev, p->stream, L->cfg->dtype, T, h, p->x, k.rstd, k.dxn,
                                                L->grad[NORM]);
}

const dp_block_ops dp_block_residual = {
    .abi_version = DP_BLOCK_ABI_VERSION,
    .struct_size = sizeof(dp_block_ops),
    .name = "residual",
    .create = dp_block_no_state_create,
    .destroy = dp_block_no_state_destroy,
    .num_params = residual_num_params,
    .param_spec = residual_param_spec,
    .saved_bytes = residual_saved_bytes,
    .forward = residual_forward,
    .backward_input = residual_backward_input,
    .backward_weight = residual_backward_weight,
};
