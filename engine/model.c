/* model.c: a stage, a list of layers whose kinds come from the block table: its parameters
 * (initialised on the host from a counter-based generator, so every driver starts from the same
 * bits), the bf16 copies of its weights in mixed precision, its pool of micro-batch slots, and
 * its passes, run layer by layer and phase by phase. */
#include "engine/model.h"

#include "engine/block.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ----------------------------------------------------------------------------
 * configuration */

/* An EPLB plan's placement (dp_moe_config): its shape, and in each layer every slot a logical
 * expert and every logical expert on some slot. */
static dp_status plan_check(const dp_moe_config *m)
{
    if (!m->plan_phy2log) return DP_OK;
    if (m->plan_layers < 1 || m->plan_layers > DP_MAX_LAYERS || m->plan_ranks < 1 || m->plan_slots < m->plan_ranks ||
        m->plan_slots % m->plan_ranks)
        return dp_fail(DP_ERR_INVALID, "an EPLB plan needs 1 to %d layers and physical slots a multiple of its ranks, "
                       "got %d layers, %d slots, %d ranks", DP_MAX_LAYERS, m->plan_layers, m->plan_slots, m->plan_ranks);
    int E = m->experts, first_missing = -1;
    unsigned char *seen = malloc((size_t)E);
    if (!seen) return dp_fail(DP_ERR_NOMEM, "out of memory checking an EPLB plan of %d experts", E);
    for (int l = 0; l < m->plan_layers; l++) {
        memset(seen, 0, (size_t)E);
        for (int p = 0; p < m->plan_slots; p++) {
            int32_t e = m->plan_phy2log[(size_t)l * m->plan_slots + p];
            if (e < 0 || e >= E) {
                free(seen);
                return dp_fail(DP_ERR_INVALID, "the EPLB plan's layer %d puts expert %d on slot %d, but experts are 0 to %d",
                               l, (int)e, p, E - 1);
            }
            seen[e] = 1;
        }
        for (int e = 0; e < E && first_missing < 0; e++)
            if (!seen[e]) first_missing = e;
        if (first_missing >= 0) {
            free(seen);
            return dp_fail(DP_ERR_INVALID, "the EPLB plan's layer %d places no replica of expert %d: every expert "
                           "needs a slot", l, first_missing);
        }
    }
    free(seen);
    return DP_OK;
}

/* The MoE options, defaults filled in; each message names the option that sets the field. */
static dp_status moe_config_check(dp_model_config *c)
{
    dp_moe_config *m = &c->moe;
    if (m->experts < 0 || m->experts > DP_MAX_EXPERTS)
        return dp_fail(DP_ERR_INVALID, "--experts must be 0 (dense) to %d, got %d", DP_MAX_EXPERTS, m->experts);
    if (m->experts == 0 && m->plan_phy2log)
        return dp_fail(DP_ERR_INVALID, "an EPLB plan places experts, but the model has none (set --experts)");
    if (m->experts == 0) {
        int moe_layer = c->block == DP_BLOCK_MOE ? 0 : -1;
        for (int i = 0; i < c->num_layer_kinds && moe_layer < 0; i++)
            if (c->layer_kind[i] == DP_BLOCK_MOE) moe_layer = i;
        if (moe_layer >= 0)
            return dp_fail(DP_ERR_INVALID, "layer %d is an MoE layer, but the model has no experts (set --experts)",
                           moe_layer);
        return DP_OK;
    }
    if (m->topk == 0) m->topk = m->experts > 1 ? 2 : 1;
    if (m->groups == 0) m->groups = 1;
    if (m->topk_groups == 0) m->topk_groups = m->groups;
    if (m->topk < 1 || m->topk > m->experts)
        return dp_fail(DP_ERR_INVALID, "--topk must be 1 to the number of experts (%d), got %d", m->experts, m->topk);
    if (m->groups < 1 || m->experts % m->groups)
        return dp_fail(DP_ERR_INVALID, "--groups must divide the %d experts into equal groups, got %d", m->experts,
                       m->groups);
    if (m->topk_groups < 1 || m->topk_groups > m->groups)
        return dp_fail(DP_ERR_INVALID, "--topk-groups must be 1 to --groups (%d), got %d", m->groups, m->topk_groups);
    if (m->topk > m->topk_groups * (m->experts / m->groups))
        return dp_fail(DP_ERR_INVALID,
                       "--topk %d exceeds the %d experts of the %d group(s) kept (--topk-groups); keep more groups or "
                       "select fewer experts", m->topk, m->topk_groups * (m->experts / m->groups), m->topk_groups);
    if (m->expert_hidden == 0) m->expert_hidden = c->ffn / m->topk > 0 ? c->ffn / m->topk : 1;
    if (m->expert_hidden < 1 || m->expert_hidden > (1 << 16))
        return dp_fail(DP_ERR_INVALID, "--expert-hidden must be 1 to 65536, got %d", m->expert_hidden);
    if (m->shared_experts < 0 || m->shared_experts > 64)
        return dp_fail(DP_ERR_INVALID, "--shared-experts must be 0 to 64, got %d", m->shared_experts);
    if (m->route_scale == 0.0f) m->route_scale = 1.0f;
    if (!(m->route_scale > 0.0f) || !isfinite(m->route_scale))
        return dp_fail(DP_ERR_INVALID, "--route-scale must be a finite number > 0, got %g", (double)m->route_scale);
    if (!(m->bias_update_speed >= 0.0f) || !isfinite(m->bias_update_speed))
        return dp_fail(DP_ERR_INVALID, "--bias-update-speed must be a finite number >= 0, got %g",
                       (double)m->bias_update_speed);
    return plan_check(m);
}

dp_status dp_model_config_check(dp_model_config *c)
{
    if (c->hidden < 1) return dp_fail(DP_ERR_INVALID, "hidden size must be >= 1 (--hidden), got %d", c->hidden);
    if (c->ffn == 0) c->ffn = 4 * c->hidden;
    if (c->ffn < 1) return dp_fail(DP_ERR_INVALID, "inner width must be >= 1, got %d", c->ffn);
    if (c->layers_per_stage == 0) c->layers_per_stage = 1;
    if (c->layers_per_stage < 1 || c->layers_per_stage > DP_MAX_STAGE_LAYERS)
        return dp_fail(DP_ERR_INVALID, "layers per stage must be in 1..%d (--layers-per-stage), got %d",
                       DP_MAX_STAGE_LAYERS, c->layers_per_stage);
    if (!dp_block_kind_name(c->block))
        return dp_fail(DP_ERR_INVALID, "unknown block kind %d (--block: 0 to %d)", (int)c->block,
                       DP_BLOCK_NUM_KINDS - 1);
    if (c->num_layer_kinds < 0 || c->num_layer_kinds > DP_MAX_LAYERS)
        return dp_fail(DP_ERR_INVALID, "a model lists kinds for 0 to %d layers (num_layer_kinds), got %d",
                       DP_MAX_LAYERS, c->num_layer_kinds);
    for (int i = 0; i < c->num_layer_kinds; i++)
        if (!dp_block_kind_name(c->layer_kind[i]))
            return dp_fail(DP_ERR_INVALID, "layer %d has an unknown block kind %d (layer_kind: 0 to %d)", i,
                           (int)c->layer_kind[i], DP_BLOCK_NUM_KINDS - 1);
    if (c->loss != DP_LOSS_MSE && c->loss != DP_LOSS_XENT)
        return dp_fail(DP_ERR_INVALID, "unknown loss %d (mse or xent)", (int)c->loss);
    if (c->tokens < 1) return dp_fail(DP_ERR_INVALID, "tokens per micro-batch must be >= 1 (--tokens), got %d", c->tokens);
    if (c->norm_eps == 0.0f) c->norm_eps = 1e-6f;
    if (c->dtype != DP_DTYPE_F32 && c->dtype != DP_DTYPE_BF16)
        return dp_fail(DP_ERR_INVALID, "the model's dtype must be fp32 or bf16 (--dtype), got %d", (int)c->dtype);
    return moe_config_check(c);
}

dp_status dp_model_param_floats(const dp_model_config *cfg, int layers, uint64_t *out)
{
    *out = 0;
    dp_model_config c = *cfg;
    DP_CHECK(dp_model_config_check(&c));
    c.moe.plan_phy2log = NULL, c.moe.plan_replica = NULL; /* one rank holding every expert once */
    for (int l = 0; l < layers; l++) {
        dp_block_kind kind = dp_model_layer_kind(&c, l);
        const dp_block_ops *ops = (int)kind >= 0 && (int)kind < DP_BLOCK_NUM_KINDS ? dp_block_table[kind] : NULL;
        if (!ops) return dp_fail(DP_ERR_INVALID, "layer %d has block kind %d, which the block table lacks", l, (int)kind);
        /* a layer outside a stage (no env): one rank holding all of it */
        dp_block_layer layer = {.ops = ops, .cfg = &c, .index = l, .layer = l};
        DP_CHECK(ops->create(&layer));
        dp_block_param_spec spec;
        for (int j = 0; j < ops->num_params(&layer); j++) {
            ops->param_spec(&layer, j, &spec);
            *out += (uint64_t)spec.rows * spec.cols;
        }
        ops->destroy(&layer);
    }
    return DP_OK;
}

dp_block_kind dp_model_layer_kind(const dp_model_config *c, int layer)
{
    if (c->num_layer_kinds > 0 && layer >= 0 && layer < c->num_layer_kinds) return c->layer_kind[layer];
    if (c->moe.experts > 0 && layer >= 0 && layer < DP_MAX_LAYERS &&
        (c->moe.moe_layers_set ? c->moe.moe_layers[layer] != 0 : layer > 0))
        return DP_BLOCK_MOE;
    return c->block;
}

void dp_optimizer_config_defaults(dp_optimizer_config *o)
{
    if (o->lr == 0.0f) o->lr = 1e-3f;
    if (o->beta1 == 0.0f) o->beta1 = 0.9f;
    if (o->beta2 == 0.0f) o->beta2 = 0.999f;
    if (o->eps == 0.0f) o->eps = 1e-8f;
}

size_t dp_model_act_elems(const dp_model_config *c) { return (size_t)c->tokens * (size_t)c->hidden; }

size_t dp_model_act_bytes(const dp_model_config *c) { return dp_dtype_size(c->dtype) * dp_model_act_elems(c); }

size_t dp_model_target_bytes(const dp_model_config *c)
{
    return c->loss == DP_LOSS_XENT ? sizeof(int32_t) * (size_t)c->tokens : dp_model_act_bytes(c);
}

size_t dp_model_host_target_bytes(const dp_model_config *c)
{
    return c->loss == DP_LOSS_XENT ? sizeof(int32_t) * (size_t)c->tokens : sizeof(float) * dp_model_act_elems(c);
}

/* splitmix64: a counter-based generator, one independent value per (seed, stream, index) */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float dp_counter_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t z = mix64(mix64(seed ^ mix64(stream)) + index);
    return (float)((double)(z >> 40) / 8388608.0 - 1.0); /* 24 random bits in [-1, 1) */
}

/* ----------------------------------------------------------------------------
 * stage layout */

typedef struct {
    float *value, *grad, *m, *v; /* fp32 master value, gradient and optimizer state */
    int buffer;                  /* the kind's own state: the optimizer leaves it alone */
    int whole_index, sharded;    /* dp_param_view's */
    void *copy;                  /* the value in the model's dtype, when that is not fp32 (GEMM operands only) */
    size_t count;
    char name[32];
} param;

struct dp_stage {
    dp_stage_env env;
    dp_model_config cfg;
    double comm_wait_ms; /* time the passes waited for exchanges they had left in flight */
    /* the last DP_STAGE_EXCHANGE_LOG of those exchanges, exchange i at [i mod that], and how many
     * there have been */
    dp_exchange_time exchange_log[DP_STAGE_EXCHANGE_LOG];
    long exchanges;
    int index, num_stages, is_last;
    int nlayers;
    dp_block_layer *layers;
    int ncreated;        /* layers whose kind's create ran (destroy undoes those) */
    size_t *saved_bytes; /* [nlayers] each layer's bytes per micro-batch */
    int nparams;
    int nwhole; /* parameters as one rank holding every expert lists them */
    param *params;
    /* [nparams] the layers' views of the parameters (dp_block_layer's w, value, grad) */
    const void **param_read;
    float **param_value, **param_grad;
    size_t slot_bytes;  /* device bytes of one slot */
    float *grads;       /* every parameter's gradient, one after another (one all_reduce syncs them) */
    size_t grad_count;
    struct slot_impl *free_slots;
    struct slot_impl *all_slots; /* every slot made, for destroy */
    /* the EPLB plan's arrays, the stage's own copies (cfg.moe points at them), which
     * dp_stage_set_placement rewrites */
    int32_t *plan_phy2log, *plan_replica;
};

typedef enum { PASS_NONE = 0, PASS_FORWARD, PASS_BACKWARD_INPUT, PASS_BACKWARD_WEIGHT } pass_kind;

/* A pass in progress on one micro-batch: which, where it stopped, and what it began with. */
typedef struct {
    pass_kind kind;
    dp_stream *stream;
    dp_link *link;
    int layer;   /* the layer running (the backwards count down) */
    int phase;   /* and its phase */
    float *loss; /* forward: where the loss goes (NULL: none) */
    int need_dx; /* backward_input: the first layer's dx is wanted */
    dp_request *request; /* the exchange the stopped phase left in flight on `link` (NULL: none) */
    double posted;       /* when that phase stopped, the exchange started (monotonic ms) */
} pass_cursor;

/* A layer's part of a slot: its output and that output's gradient, which are the next layer's
 * input and input gradient (the slot's y and dy for the last layer), and its saved bytes. */
typedef struct {
    void *out, *gout;
    void *saved;
} layer_slot;

/* A slot as the stage keeps it (the public part first, so that a dp_slot * is one of these). */
typedef struct slot_impl {
    dp_slot pub;
    void *mem;
    layer_slot *layers; /* [nlayers] */
    pass_cursor cur;
    struct slot_impl *next_free;
    struct slot_impl *next_all;
} slot_impl;

int dp_stage_index(const dp_stage *st) { return st->index; }
const dp_model_config *dp_stage_config(const dp_stage *st) { return &st->cfg; }
int dp_stage_num_params(const dp_stage *st) { return st->nparams; }

void dp_stage_param(const dp_stage *st, int i, dp_param_view *out)
{
    memset(out, 0, sizeof *out);
    if (i < 0 || i >= st->nparams) return;
    snprintf(out->name, sizeof out->name, "%s", st->params[i].name);
    out->count = st->params[i].count;
    out->value = st->params[i].value;
    out->grad = st->params[i].grad;
    out->m = st->params[i].m;
    out->v = st->params[i].v;
    out->buffer = st->params[i].buffer;
    out->whole_index = st->params[i].whole_index;
    out->sharded = st->params[i].sharded;
}

int dp_stage_num_whole_params(const dp_stage *st) { return st->nwhole; }

int dp_stage_find_param(const dp_stage *st, int whole, int from)
{
    for (int i = from > 0 ? from : 0; i < st->nparams; i++)
        if (st->params[i].whole_index == whole) return i;
    return -1;
}

void dp_stage_set_ep_links(dp_stage *st, const dp_link_ops *ops, dp_link *const links[DP_STAGE_STREAMS])
{
    st->env.link_ops = ops;
    for (int i = 0; i < DP_STAGE_STREAMS; i++) st->env.ep_link[i] = links[i];
}

dp_status dp_stage_reduce_expert_grads(dp_stage *st, dp_stream *s)
{
    for (int b = 0; b < st->nlayers; b++) {
        const dp_block_layer *layer = &st->layers[b];
        if (layer->ops->reduce_grads) DP_CHECK(layer->ops->reduce_grads(layer, s));
    }
    return DP_OK;
}

static dp_status dev_alloc_floats(dp_stage *st, size_t n, float **out)
{
    void *p;
    DP_CHECK(st->env.ops->alloc(st->env.dev, n * sizeof(float), &p));
    *out = p;
    return DP_OK;
}

/* Fills a parameter on the host and copies it to the device: uniform in
 * [-1/sqrt(fan_in), 1/sqrt(fan_in)) like torch.nn.Linear, or ones. */
static dp_status init_param(dp_stage *st, param *p, uint64_t stream, dp_param_init init, size_t fan_in)
{
    float *host = malloc(sizeof(float) * p->count);
    if (!host) return dp_fail(DP_ERR_NOMEM, "out of memory initialising %s", p->name);
    float bound = init == DP_PARAM_INIT_LINEAR ? 1.0f / sqrtf((float)fan_in) : 0.0f;
    for (size_t i = 0; i < p->count; i++)
        host[i] = init == DP_PARAM_INIT_LINEAR ? bound * dp_counter_uniform(st->cfg.seed, stream, i)
                  : init == DP_PARAM_INIT_ONES ? 1.0f : 0.0f;
    dp_status s = st->env.ops->copy(st->env.dev, p->value, host, sizeof(float) * p->count, DP_COPY_HOST_TO_DEVICE,
                                    NULL);
    free(host);
    return s;
}

/* The weights' copies in the model's dtype follow the fp32 values (after init and each step). */
static dp_status refresh_copies(dp_stage *st, dp_stream *s)
{
    for (int i = 0; i < st->nparams; i++) {
        param *p = &st->params[i];
        if (p->copy)
            DP_CHECK(st->env.ops->cast(st->env.dev, s, p->count, DP_DTYPE_F32, p->value, st->cfg.dtype, p->copy));
    }
    return DP_OK;
}

/* Lays a slot out in one allocation from base (NULL: only counts): x, y, dy, dx, then per layer
 * its output and output gradient (but the last's, which are y and dy) and its saved bytes.
 * Returns the bytes needed. */
static size_t carve_slot(const dp_stage *st, void *base, slot_impl *si)
{
    size_t act = dp_model_act_bytes(&st->cfg);
    dp_carver c = {base, 0};
    void *x = dp_carve(&c, act), *y = dp_carve(&c, act), *dy = dp_carve(&c, act), *dx = dp_carve(&c, act);
    if (si) si->pub.x = x, si->pub.y = y, si->pub.dy = dy, si->pub.dx = dx;
    for (int b = 0; b < st->nlayers; b++) {
        int last = b == st->nlayers - 1;
        layer_slot ls;
        ls.out = last ? y : dp_carve(&c, act);
        ls.gout = last ? dy : dp_carve(&c, act);
        ls.saved = dp_carve(&c, st->saved_bytes[b]);
        if (si) si->layers[b] = ls;
    }
    return c.at;
}

/* The stage's layers and their kinds' state; counts their parameters into st->nparams. */
static dp_status create_layers(dp_stage *st, const dp_block_ops *const *table, int table_size)
{
    int L = st->cfg.layers_per_stage;
    for (int b = 0; b < st->nlayers; b++) {
        dp_block_layer *layer = &st->layers[b];
        layer->env = &st->env;
        layer->cfg = &st->cfg;
        layer->stage = st->index;
        layer->index = b;
        layer->layer = st->index * L + b;
        dp_block_kind kind = dp_model_layer_kind(&st->cfg, layer->layer);
        const dp_block_ops *ops = (int)kind >= 0 && (int)kind < table_size ? table[kind] : NULL;
        if (!ops)
            return dp_fail(DP_ERR_INVALID, "layer %d (stage %d, layer %d) has block kind %d, which the block table (%d kinds) lacks",
                           layer->layer, st->index, b, (int)kind, table_size);
        if (ops->abi_version != DP_BLOCK_ABI_VERSION || ops->struct_size < sizeof(dp_block_ops))
            return dp_fail(DP_ERR_INVALID, "block kind %s was built for block ABI %u (%u bytes), this engine has %d (%zu bytes): rebuild it",
                           ops->name ? ops->name : "?", ops->abi_version, ops->struct_size, DP_BLOCK_ABI_VERSION,
                           sizeof(dp_block_ops));
        layer->ops = ops;
        DP_CHECK(ops->create(layer));
        st->ncreated = b + 1;
        int n = ops->num_params(layer);
        if (n < 0) return dp_fail(DP_ERR_INTERNAL, "block kind %s reports %d parameters", ops->name, n);
        st->nparams += n;
    }
    return DP_OK;
}

/* Allocates and initialises every layer's parameters, their gradients (one array) and, in mixed
 * precision, the GEMM operands' copies; points the layers at them. */
static dp_status create_params(dp_stage *st)
{
    const dp_device_ops *ops = st->env.ops;
    size_t n = (size_t)st->nparams;
    st->params = calloc(n ? n : 1, sizeof *st->params);
    st->param_read = calloc(n ? n : 1, sizeof *st->param_read);
    st->param_value = calloc(n ? n : 1, sizeof *st->param_value);
    st->param_grad = calloc(n ? n : 1, sizeof *st->param_grad);
    if (!st->params || !st->param_read || !st->param_value || !st->param_grad)
        return dp_fail(DP_ERR_NOMEM, "out of memory creating stage %d", st->index);
    dp_block_param_spec spec;
    for (int b = 0, i = 0; b < st->nlayers; b++) {
        dp_block_layer *layer = &st->layers[b];
        for (int j = 0; j < layer->ops->num_params(layer); j++, i++) {
            layer->ops->param_spec(layer, j, &spec);
            param *p = &st->params[i];
            snprintf(p->name, sizeof p->name, "block%d.%s", b, spec.name);
            p->count = spec.rows * spec.cols;
            p->whole_index = st->nwhole + (spec.init_index > 0 ? spec.init_index : j);
            p->sharded = spec.sharded;
            st->grad_count += p->count;
        }
        st->nwhole += layer->ops->num_whole_params ? layer->ops->num_whole_params(layer) : layer->ops->num_params(layer);
    }
    DP_CHECK(dev_alloc_floats(st, st->grad_count, &st->grads));
    DP_CHECK(ops->memset(st->env.dev, st->grads, 0, st->grad_count * sizeof(float), NULL));
    size_t grad_offset = 0;
    for (int b = 0, i = 0; b < st->nlayers; b++) {
        dp_block_layer *layer = &st->layers[b];
        layer->w = st->param_read + i;
        layer->value = st->param_value + i;
        layer->grad = st->param_grad + i;
        for (int j = 0; j < layer->ops->num_params(layer); j++, i++) {
            layer->ops->param_spec(layer, j, &spec);
            param *p = &st->params[i];
            DP_CHECK(dev_alloc_floats(st, p->count, &p->value));
            p->grad = st->grads + grad_offset;
            grad_offset += p->count;
            /* the stream of values: stage, layer and parameter (its place as one rank holding all
             * of the layer lists it), so every copy of a stage agrees; a place beyond 255 (an MoE
             * layer's experts) goes on in bits 16 to 31 */
            uint64_t g = spec.init_index > 0 ? (uint64_t)spec.init_index : (uint64_t)j;
            uint64_t stream = ((uint64_t)st->index << 32) | ((g >> 8) << 16) | ((uint64_t)b << 8) | (g & 255);
            p->buffer = spec.buffer;
            DP_CHECK(init_param(st, p, stream, spec.init, spec.cols));
            if (spec.gemm_operand && st->cfg.dtype != DP_DTYPE_F32)
                DP_CHECK(ops->alloc(st->env.dev, dp_dtype_size(st->cfg.dtype) * p->count, &p->copy));
            st->param_read[i] = p->copy ? p->copy : (const void *)p->value;
            st->param_value[i] = p->value;
            st->param_grad[i] = p->grad;
        }
        st->saved_bytes[b] = layer->ops->saved_bytes(layer);
    }
    return refresh_copies(st, NULL);
}

dp_status dp_stage_create(const dp_stage_env *env, const dp_model_config *cfg_in, int stage_index, int num_stages,
                          dp_stage **out)
{
    *out = NULL;
    dp_model_config cfg = *cfg_in;
    DP_CHECK(dp_model_config_check(&cfg));
    int layers = num_stages * cfg.layers_per_stage;
    if (cfg.num_layer_kinds > 0 && cfg.num_layer_kinds != layers)
        return dp_fail(DP_ERR_INVALID,
                       "the model lists block kinds for %d layers (num_layer_kinds), but has %d (%d stages x %d layers per stage)",
                       cfg.num_layer_kinds, layers, num_stages, cfg.layers_per_stage);
    if (stage_index < 0 || stage_index >= num_stages)
        return dp_fail(DP_ERR_INVALID, "stage %d of %d does not exist", stage_index, num_stages);
    for (int i = layers; cfg.moe.experts > 0 && cfg.moe.moe_layers_set && i < DP_MAX_LAYERS; i++)
        if (cfg.moe.moe_layers[i])
            return dp_fail(DP_ERR_INVALID, "--moe-layers names layer %d, but the model has %d layers (0 to %d: %d stages x %d layers per stage)",
                           i, layers, layers - 1, num_stages, cfg.layers_per_stage);
    if (cfg.moe.plan_phy2log) {
        int moe_layers = 0;
        for (int i = 0; i < layers; i++) moe_layers += dp_model_layer_kind(&cfg, i) == DP_BLOCK_MOE;
        if (cfg.moe.plan_layers != moe_layers)
            return dp_fail(DP_ERR_INVALID, "the EPLB plan places %d MoE layer(s), but the model has %d: it needs one row "
                           "of phy2log per MoE layer, in layer order", cfg.moe.plan_layers, moe_layers);
    }
    dp_stage *st = calloc(1, sizeof *st);
    if (!st) return dp_fail(DP_ERR_NOMEM, "out of memory creating stage %d", stage_index);
    st->env = *env;
    st->cfg = cfg;
    if (cfg.moe.plan_phy2log) {
        size_t n = (size_t)cfg.moe.plan_layers * (size_t)cfg.moe.plan_slots;
        st->plan_phy2log = malloc(sizeof *st->plan_phy2log * (n ? n : 1));
        st->plan_replica = cfg.moe.plan_replica ? malloc(sizeof *st->plan_replica * (n ? n : 1)) : NULL;
        if (!st->plan_phy2log || (cfg.moe.plan_replica && !st->plan_replica)) {
            free(st->plan_phy2log), free(st->plan_replica), free(st);
            return dp_fail(DP_ERR_NOMEM, "out of memory creating stage %d", stage_index);
        }
        memcpy(st->plan_phy2log, cfg.moe.plan_phy2log, sizeof *st->plan_phy2log * n);
        if (st->plan_replica) memcpy(st->plan_replica, cfg.moe.plan_replica, sizeof *st->plan_replica * n);
        st->cfg.moe.plan_phy2log = st->plan_phy2log, st->cfg.moe.plan_replica = st->plan_replica;
    }
    st->index = stage_index;
    st->num_stages = num_stages;
    st->is_last = stage_index == num_stages - 1;
    st->nlayers = cfg.layers_per_stage;
    st->layers = calloc((size_t)st->nlayers, sizeof *st->layers);
    st->saved_bytes = calloc((size_t)st->nlayers, sizeof *st->saved_bytes);
    dp_status s = st->layers && st->saved_bytes ? DP_OK : dp_fail(DP_ERR_NOMEM, "out of memory creating stage %d", stage_index);
    const dp_block_ops *const *table = env->block_table ? env->block_table : dp_block_table;
    int table_size = env->block_table ? env->block_table_size : DP_BLOCK_NUM_KINDS;
    if (s == DP_OK) s = create_layers(st, table, table_size);
    if (s == DP_OK) s = create_params(st);
    if (s != DP_OK) {
        dp_stage_destroy(st);
        return s;
    }
    st->slot_bytes = carve_slot(st, NULL, NULL);
    *out = st;
    return DP_OK;
}

void dp_stage_destroy(dp_stage *st)
{
    if (!st) return;
    const dp_device_ops *ops = st->env.ops;
    for (slot_impl *si = st->all_slots; si;) {
        slot_impl *next = si->next_all;
        /* a pass given up while its exchange was in flight (the job failed): the link frees the
         * request in its wait, which the failure has ended */
        if (si->cur.request) (void)st->env.link_ops->wait(si->cur.link, si->cur.request);
        ops->free(st->env.dev, si->mem);
        free(si->layers);
        free(si);
        si = next;
    }
    for (int i = 0; st->params && i < st->nparams; i++) {
        param *p = &st->params[i];
        ops->free(st->env.dev, p->value);
        ops->free(st->env.dev, p->copy);
        ops->free(st->env.dev, p->m);
        ops->free(st->env.dev, p->v);
    }
    for (int b = 0; b < st->ncreated; b++) st->layers[b].ops->destroy(&st->layers[b]);
    ops->free(st->env.dev, st->grads);
    free(st->params);
    free(st->param_read);
    free(st->param_value);
    free(st->param_grad);
    free(st->saved_bytes);
    free(st->layers);
    free(st->plan_phy2log), free(st->plan_replica);
    free(st);
}

void dp_stage_set_ep_source(dp_stage *st, int source) { st->env.ep_source = source; }

int dp_stage_expert_slots(const dp_stage *st, int b, int *first_param, int *per_slot)
{
    if (b < 0 || b >= st->nlayers || !st->layers[b].ops->expert_slots) return 0;
    int first = 0, per = 0, i = 0;
    for (int k = 0; k < b; k++) i += st->layers[k].ops->num_params(&st->layers[k]);
    int n = st->layers[b].ops->expert_slots(&st->layers[b], &first, &per);
    *first_param = i + first, *per_slot = per;
    return n;
}

dp_status dp_stage_set_placement(dp_stage *st, const int32_t *phy2log, const int32_t *replica, dp_stream *s)
{
    if (!st->plan_phy2log)
        return dp_fail(DP_ERR_INVALID, "stage %d was made without an EPLB plan: its experts cannot be placed anew "
                       "(start from a plan, the identity one if need be)", st->index);
    size_t n = (size_t)st->cfg.moe.plan_layers * (size_t)st->cfg.moe.plan_slots;
    if (replica && !st->plan_replica) {
        if (!(st->plan_replica = malloc(sizeof *st->plan_replica * (n ? n : 1))))
            return dp_fail(DP_ERR_NOMEM, "out of memory placing the experts of stage %d", st->index);
    }
    if (!replica) free(st->plan_replica), st->plan_replica = NULL;
    memcpy(st->plan_phy2log, phy2log, sizeof *st->plan_phy2log * n);
    if (replica) memcpy(st->plan_replica, replica, sizeof *st->plan_replica * n);
    st->cfg.moe.plan_replica = st->plan_replica;
    dp_block_param_spec spec;
    for (int b = 0, i = 0; b < st->nlayers; b++) {
        dp_block_layer *layer = &st->layers[b];
        if (layer->ops->replan) DP_CHECK(layer->ops->replan(layer));
        int base = 0; /* the layer's first whole index: what create_params counted before it */
        for (int k = 0; k < b; k++)
            base += st->layers[k].ops->num_whole_params ? st->layers[k].ops->num_whole_params(&st->layers[k])
                                                        : st->layers[k].ops->num_params(&st->layers[k]);
        for (int j = 0; j < layer->ops->num_params(layer); j++, i++) {
            layer->ops->param_spec(layer, j, &spec);
            param *p = &st->params[i];
            snprintf(p->name, sizeof p->name, "block%d.%s", b, spec.name);
            p->whole_index = base + (spec.init_index > 0 ? spec.init_index : j);
        }
    }
    return refresh_copies(st, s);
}

dp_status dp_stage_slot_get(dp_stage *st, dp_slot **out)
{
    *out = NULL;
    if (st->free_slots) {
        slot_impl *si = st->free_slots;
        st->free_slots = si->next_free;
        si->next_free = NULL;
        si->pub.target = NULL;
        memset(&si->cur, 0, sizeof si->cur); /* a pass cut short by an error ends here */
        *out = &si->pub;
        return DP_OK;
    }
    slot_impl *si = calloc(1, sizeof *si);
    layer_slot *layers = calloc((size_t)st->nlayers, sizeof *layers);
    if (!si || !layers) {
        free(si), free(layers);
        return dp_fail(DP_ERR_NOMEM, "out of memory for a micro-batch slot");
    }
    void *m;
    dp_status s = st->env.ops->alloc(st->env.dev, st->slot_bytes, &m);
    if (s != DP_OK) {
        free(si), free(layers);
        return s;
    }
    si->mem = m;
    si->layers = layers;
    carve_slot(st, m, si);
    si->next_all = st->all_slots;
    st->all_slots = si;
    *out = &si->pub;
    return DP_OK;
}

void dp_stage_slot_put(dp_stage *st, dp_slot *slot)
{
    if (!slot) return;
    slot_impl *si = (slot_impl *)slot;
    si->next_free = st->free_slots;
    st->free_slots = si;
}

/* ----------------------------------------------------------------------------
 * passes: layer by layer, each layer phase by phase; a phase that stops at a communication
 * point returns to the caller, and dp_stage_continue picks up at the same layer's next phase */

/* The expert-parallel link of the stream a pass runs on. */
static dp_link *link_for(const dp_stage *st, dp_stream *s)
{
    for (int i = 0; i < DP_STAGE_STREAMS; i++)
        if (st->env.streams[i] == s) return st->env.ep_link[i];
    return NULL;
}

static dp_status loss_forward(dp_stage *st, dp_stream *s, dp_slot *slot, float *loss)
{
    const dp_device_ops *o = st->env.ops;
    if (st->cfg.loss == DP_LOSS_MSE)
        return o->mse_forward(st->env.dev, s, st->cfg.dtype, dp_model_act_elems(&st->cfg), slot->y, slot->target,
                              loss);
    return o->xent_forward(st->env.dev, s, st->cfg.dtype, st->cfg.tokens, st->cfg.hidden, slot->y, slot->target, loss);
}

/* each micro-batch's loss is differentiated on its own, as loss.backward() per chunk */
static dp_status loss_backward(dp_stage *st, dp_stream *s, dp_slot *slot)
{
    const dp_device_ops *o = st->env.ops;
    if (st->cfg.loss == DP_LOSS_MSE)
        return o->mse_backward(st->env.dev, s, st->cfg.dtype, dp_model_act_elems(&st->cfg), slot->y, slot->target,
                               1.0f, slot->dy);
    return o->xent_backward(st->env.dev, s, st->cfg.dtype, st->cfg.tokens, st->cfg.hidden, slot->y, slot->target,
                            1.0f, slot->dy);
}

static double clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Waits for the exchange a stopped phase left in flight: what of it the other work run
 * meanwhile did not hide is counted as exposed communication. */
static dp_status wait_in_flight(dp_stage *st, pass_cursor *c)
{
    if (!c->request) return DP_OK;
    double t0 = clock_ms();
    dp_status s = st->env.link_ops->wait(c->link, c->request);
    c->request = NULL;
    double t1 = clock_ms();
    st->comm_wait_ms += t1 - t0;
    st->exchange_log[st->exchanges++ % DP_STAGE_EXCHANGE_LOG] = (dp_exchange_time){c->posted, t0, t1};
    return s;
}

double dp_stage_comm_wait_ms(const dp_stage *st) { return st->comm_wait_ms; }

long dp_stage_exchange_count(const dp_stage *st) { return st->exchanges; }

int dp_stage_exchange(const dp_stage *st, long i, dp_exchange_time *out)
{
    if (i < 0 || i >= st->exchanges || i < st->exchanges - DP_STAGE_EXCHANGE_LOG) return 0;
    *out = st->exchange_log[i % DP_STAGE_EXCHANGE_LOG];
    return 1;
}

/* Runs the slot's pass from where it stopped to its next communication point or its end. */
static dp_status run_pass(dp_stage *st, slot_impl *si, dp_phase *phase)
{
    pass_cursor *c = &si->cur;
    int forward = c->kind == PASS_FORWARD;
    dp_status w = wait_in_flight(st, c);
    if (w != DP_OK) {
        c->kind = PASS_NONE;
        return w;
    }
    while (c->layer >= 0 && c->layer < st->nlayers) {
        int b = c->layer;
        const dp_block_layer *layer = &st->layers[b];
        dp_block_pass p = {
            .stream = c->stream,
            .link = c->link,
            .x = b == 0 ? si->pub.x : si->layers[b - 1].out,
            .y = si->layers[b].out,
            .dy = si->layers[b].gout,
            .saved = si->layers[b].saved,
            .phase = c->phase,
        };
        dp_phase next = DP_PHASE_DONE;
        dp_status s;
        if (forward) {
            s = layer->ops->forward(layer, &p, &next);
        } else if (c->kind == PASS_BACKWARD_INPUT) {
            if (b > 0 || c->need_dx) p.dx = b == 0 ? si->pub.dx : si->layers[b - 1].gout;
            s = layer->ops->backward_input(layer, &p, &next);
        } else {
            s = layer->ops->backward_weight(layer, &p, &next);
        }
        if (s != DP_OK) {
            c->kind = PASS_NONE;
            return s;
        }
        if (next == DP_PHASE_COMM) {
            c->request = p.request;
            if (p.request) c->posted = clock_ms();
            c->phase++;
            *phase = DP_PHASE_COMM;
            return DP_OK;
        }
        c->phase = 0;
        c->layer += forward ? 1 : -1;
    }
    c->kind = PASS_NONE;
    *phase = DP_PHASE_DONE;
    if (forward && c->loss) DP_CHECK(loss_forward(st, c->stream, &si->pub, c->loss));
    return DP_OK;
}

static dp_status begin_pass(dp_stage *st, dp_stream *s, dp_slot *slot, pass_kind kind, slot_impl **out)
{
    slot_impl *si = (slot_impl *)slot;
    static const char *names[] = {"", "forward", "backward_input", "backward_weight"};
    if (si->cur.kind != PASS_NONE)
        return dp_fail(DP_ERR_INTERNAL, "stage %d: %s began on a micro-batch whose %s has not finished (continue it first)",
                       st->index, names[kind], names[si->cur.kind]);
    memset(&si->cur, 0, sizeof si->cur);
    si->cur.kind = kind;
    si->cur.stream = s;
    si->cur.link = link_for(st, s);
    si->cur.layer = kind == PASS_FORWARD ? 0 : st->nlayers - 1;
    *out = si;
    return DP_OK;
}

dp_status dp_stage_forward_begin(dp_stage *st, dp_stream *s, dp_slot *slot, float *loss, dp_phase *phase)
{
    if (st->is_last && loss && !slot->target)
        return dp_fail(DP_ERR_INTERNAL, "stage %d: the last stage needs a target", st->index);
    slot_impl *si = NULL;
    DP_CHECK(begin_pass(st, s, slot, PASS_FORWARD, &si));
    si->cur.loss = st->is_last ? loss : NULL;
    return run_pass(st, si, phase);
}

dp_status dp_stage_backward_input_begin(dp_stage *st, dp_stream *s, dp_slot *slot, int need_dx, dp_phase *phase)
{
    if (st->is_last && !slot->target)
        return dp_fail(DP_ERR_INTERNAL, "stage %d: the last stage needs a target", st->index);
    slot_impl *si = NULL;
    DP_CHECK(begin_pass(st, s, slot, PASS_BACKWARD_INPUT, &si));
    si->cur.need_dx = need_dx;
    if (st->is_last) {
        dp_status e = loss_backward(st, s, slot);
        if (e != DP_OK) {
            si->cur.kind = PASS_NONE;
            return e;
        }
    }
    return run_pass(st, si, phase);
}

dp_status dp_stage_backward_weight_begin(dp_stage *st, dp_stream *s, dp_slot *slot, dp_phase *phase)
{
    slot_impl *si = NULL;
    DP_CHECK(begin_pass(st, s, slot, PASS_BACKWARD_WEIGHT, &si));
    return run_pass(st, si, phase);
}

dp_status dp_stage_continue(dp_stage *st, dp_slot *slot, dp_phase *phase)
{
    slot_impl *si = (slot_impl *)slot;
    if (si->cur.kind == PASS_NONE)
        return dp_fail(DP_ERR_INTERNAL, "stage %d: continue on a micro-batch with no pass stopped at a communication point",
                       st->index);
    return run_pass(st, si, phase);
}

/* A whole pass: its phases one after the other, nothing between them. */
static dp_status finish(dp_stage *st, dp_slot *slot, dp_status s, dp_phase phase)
{
    while (s == DP_OK && phase == DP_PHASE_COMM) s = dp_stage_continue(st, slot, &phase);
    return s;
}

dp_status dp_stage_forward(dp_stage *st, dp_stream *s, dp_slot *slot, float *loss)
{
    dp_phase phase = DP_PHASE_DONE;
    dp_status e = dp_stage_forward_begin(st, s, slot, loss, &phase);
    return finish(st, slot, e, phase);
}

dp_status dp_stage_backward_input(dp_stage *st, dp_stream *s, dp_slot *slot, int need_dx)
{
    dp_phase phase = DP_PHASE_DONE;
    dp_status e = dp_stage_backward_input_begin(st, s, slot, need_dx, &phase);
    return finish(st, slot, e, phase);
}

dp_status dp_stage_backward_weight(dp_stage *st, dp_stream *s, dp_slot *slot)
{
    dp_phase phase = DP_PHASE_DONE;
    dp_status e = dp_stage_backward_weight_begin(st, s, slot, &phase);
    return finish(st, slot, e, phase);
}

dp_status dp_stage_zero_grad(dp_stage *st, dp_stream *s)
{
    return st->env.ops->memset(st->env.dev, st->grads, 0, st->grad_count * sizeof(float), s);
}

float *dp_stage_grads(const dp_stage *st, size_t *count)
{
    if (count) *count = st->grad_count;
    return st->grads;
}

/* The kinds' own state (MoE's balancing bias), from the step's summed gradients. */
static dp_status update_states(dp_stage *st, dp_stream *s)
{
    for (int b = 0; b < st->nlayers; b++) {
        const dp_block_layer *layer = &st->layers[b];
        if (layer->ops->update_state) DP_CHECK(layer->ops->update_state(layer, s));
    }
    return DP_OK;
}

dp_status dp_stage_optimizer_step(dp_stage *st, dp_stream *s, const dp_optimizer_config *o, int step)
{
    DP_CHECK(update_states(st, s));
    if (o->kind == DP_OPT_NONE) return DP_OK;
    for (int i = 0; i < st->nparams; i++) {
        param *p = &st->params[i];
        if (p->buffer) continue;
        int need_v = o->kind == DP_OPT_ADAMW, need_m = need_v || o->momentum != 0.0f;
        if (need_m) DP_CHECK(dp_stage_param_state(st, i, DP_TENSOR_M, s));
        if (need_v) DP_CHECK(dp_stage_param_state(st, i, DP_TENSOR_V, s));
        if (o->kind == DP_OPT_ADAMW) {
            dp_adamw_args a = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, step};
            DP_CHECK(st->env.ops->adamw_update(st->env.dev, s, p->count, p->value, p->grad, p->m, p->v, &a));
        } else {
            dp_sgd_args a = {o->lr, o->momentum, o->weight_decay};
            DP_CHECK(st->env.ops->sgd_update(st->env.dev, s, p->count, p->value, p->grad, p->m, &a));
        }
    }
    return refresh_copies(st, s);
}

dp_status dp_stage_param_state(dp_stage *st, int i, dp_tensor_kind which, dp_stream *s)
{
    if (i < 0 || i >= st->nparams || (which != DP_TENSOR_M && which != DP_TENSOR_V))
        return dp_fail(DP_ERR_INVALID, "stage %d: no optimizer state %d of parameter %d", st->index, (int)which, i);
    param *p = &st->params[i];
    float **state = which == DP_TENSOR_M ? &p->m : &p->v;
    if (*state) return DP_OK;
    DP_CHECK(dev_alloc_floats(st, p->count, state));
    return st->env.ops->memset(st->env.dev, *state, 0, p->count * sizeof(float), s);
}

dp_status dp_stage_param_refresh(dp_stage *st, int i, dp_stream *s)
{
    if (i < 0 || i >= st->nparams) return dp_fail(DP_ERR_INVALID, "stage %d has no parameter %d", st->index, i);
    param *p = &st->params[i];
    if (!p->copy) return DP_OK;
    return st->env.ops->cast(st->env.dev, s, p->count, DP_DTYPE_F32, p->value, st->cfg.dtype, p->copy);
}
