/* block_mlp.c: DualPipe's example stage as a block kind: y = Linear2(GELU(Linear1(x))), no
 * bias, Linear1 h -> ffn and Linear2 ffn -> h. One phase: it never communicates. */
#include "engine/block.h"

enum { LINEAR1, LINEAR2, NUM_PARAMS };

/* Kept per micro-batch, [tokens x ffn] each in the model's dtype: the pre-activation, the GELU
 * output and the gradient of the pre-activation. */
typedef struct {
    void *a1, *g1, *da;
} mlp_saved;

static size_t mlp_layout(const dp_block_layer *L, void *base, mlp_saved *k)
{
    size_t n = (size_t)L->cfg->tokens * (size_t)L->cfg->ffn * dp_dtype_size(L->cfg->dtype);
    dp_carver c = {base, 0};
    k->a1 = dp_carve(&c, n);
    k->g1 = dp_carve(&c, n);
    k->da = dp_carve(&c, n);
    return c.at;
}

static int mlp_num_params(const dp_block_layer *L)
{
    (void)L;
    return NUM_PARAMS;
}

static void mlp_param_spec(const dp_block_layer *L, int j, dp_block_param_spec *out)
{
    size_t h = (size_t)L->cfg->hidden, f = (size_t)L->cfg->ffn;
    if (j == LINEAR1) *out = (dp_block_param_spec){.name = "linear1", .rows = f, .cols = h,
                                            .init = DP_PARAM_INIT_LINEAR, .gemm_operand = 1};
    else *out = (dp_block_param_spec){.name = "linear2", .rows = h, .cols = f,
                                            .init = DP_PARAM_INIT_LINEAR, .gemm_operand = 1};
}

static size_t mlp_saved_bytes(const dp_block_layer *L)
{
    mlp_saved k;
    return mlp_layout(L, NULL, &k);
}

static dp_status mlp_forward(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    mlp_saved k;
    mlp_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn;
    size_t nf = (size_t)L->cfg->tokens * (size_t)f;
    DP_CHECK(dp_linear_forward(L, p->stream, p->x, L->w[LINEAR1], k.a1, h, f));
    DP_CHECK(L->env->ops->gelu_forward(L->env->dev, p->stream, L->cfg->dtype, nf, k.a1, k.g1));
    return dp_linear_forward(L, p->stream, k.g1, L->w[LINEAR2], p->y, f, h);
}

static dp_status mlp_backward_input(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    mlp_saved k;
    mlp_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn;
    size_t nf = (size_t)L->cfg->tokens * (size_t)f;
    DP_CHECK(dp_linear_backward_input(L, p->stream, p->dy, L->w[LINEAR2], k.da, f, h));
    DP_CHECK(L->env->ops->gelu_backward(L->env->dev, p->stream, L->cfg->dtype, nf, k.a1, k.da, k.da));
    if (p->dx) DP_CHECK(dp_linear_backward_input(L, p->stream, k.da, L->w[LINEAR1], p->dx, h, f));
    return DP_OK;
}

static dp_status mlp_backward_weight(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    mlp_saved k;
    mlp_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn;
    DP_CHECK(dp_linear_backward_weight(L, p->stream, p->dy, k.g1, L->grad[LINEAR2], f, h));
    return dp_linear_backward_weight(L, p->stream, k.da, p->x, L->grad[LINEAR1], h, f);
}

const dp_block_ops dp_block_mlp = {
    .abi_version = DP_BLOCK_ABI_VERSION,
    .struct_size = sizeof(dp_block_ops),
    .name = "mlp",
    .create = dp_block_no_state_create,
    .destroy = dp_block_no_state_destroy,
    .num_params = mlp_num_params,
    .param_spec = mlp_param_spec,
    .saved_bytes = mlp_saved_bytes,
    .forward = mlp_forward,
    .backward_input = mlp_backward_input,
    .backward_weight = mlp_backward_weight,
};
