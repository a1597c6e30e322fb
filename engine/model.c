/* model.c: layers (Linear without bias, GELU, RMSNorm, residual add), the two block kinds
 * built from them, and a stage: its parameters (initialised on the host from a counter-based
 * generator, so every driver starts from the same bits), the bf16 copies of its weights in
 * mixed precision, and its pool of micro-batch slots. */
#include "engine/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * configuration */

dp_status dp_model_config_check(dp_model_config *c)
{
    if (c->hidden < 1) return dp_fail(DP_ERR_INVALID, "hidden size must be >= 1 (--hidden), got %d", c->hidden);
    if (c->ffn == 0) c->ffn = 4 * c->hidden;
    if (c->ffn < 1) return dp_fail(DP_ERR_INVALID, "inner width must be >= 1, got %d", c->ffn);
    if (c->layers_per_stage == 0) c->layers_per_stage = 1;
    if (c->layers_per_stage < 1 || c->layers_per_stage > 64)
        return dp_fail(DP_ERR_INVALID, "layers per stage must be in 1..64 (--layers-per-stage), got %d",
                       c->layers_per_stage);
    if (c->block != DP_BLOCK_MLP && c->block != DP_BLOCK_RESIDUAL)
        return dp_fail(DP_ERR_INVALID, "unknown block kind %d (mlp or residual)", (int)c->block);
    if (c->loss != DP_LOSS_MSE && c->loss != DP_LOSS_XENT)
        return dp_fail(DP_ERR_INVALID, "unknown loss %d (mse or xent)", (int)c->loss);
    if (c->tokens < 1) return dp_fail(DP_ERR_INVALID, "tokens per micro-batch must be >= 1 (--tokens), got %d", c->tokens);
    if (c->norm_eps == 0.0f) c->norm_eps = 1e-6f;
    if (c->dtype != DP_DTYPE_F32 && c->dtype != DP_DTYPE_BF16)
        return dp_fail(DP_ERR_INVALID, "the model's dtype must be fp32 or bf16 (--dtype), got %d", (int)c->dtype);
    return DP_OK;
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
    const void *w1, *w2;    /* what the GEMMs read, [ffn x h], [h x ffn], in the model's dtype */
    const float *norm_w;    /* [h], fp32 */
    float *g1, *g2, *gnorm; /* gradients, fp32 */
} block_params;

typedef struct {
    float *value, *grad, *m, *v; /* fp32 master value, gradient and optimizer state */
    void *copy;                  /* the value in the model's dtype, when that is not fp32 (weights only) */
    size_t count;
    char name[32];
} param;

struct dp_stage {
    const dp_device_ops *ops;
    dp_device *dev;
    dp_model_config cfg;
    int index, num_stages, is_last;
    int nblocks;
    block_params *blocks;
    int nparams;
    param *params;
    dp_dtype dt;        /* activations and weight copies */
    size_t slot_bytes;  /* device bytes of one slot */
    float *grads;       /* every parameter's gradient, one after another (one all_reduce syncs them) */
    size_t grad_count;
    dp_slot *free_slots;
    dp_slot *all_slots; /* every slot made, for destroy */
};

/* Saved per micro-batch and block, carved from the slot's one allocation; in the model's
 * dtype except rstd. */
typedef struct {
    void *a1, *g1, *da;   /* [T x ffn]: pre-activation, GELU output, gradient of a1 */
    void *out, *gout;     /* [T x h]: block output and its gradient (the slot's y / dy for the last block) */
    void *xn, *dxn;       /* residual: normalised input and its gradient, [T x h] */
    float *rstd;          /* residual: [T] reciprocal RMS, fp32 */
} block_saved;

typedef struct {
    dp_slot pub;
    void *mem;
    block_saved *saved; /* [nblocks] */
    dp_slot *next_all;
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
}

static dp_status dev_alloc_floats(dp_stage *st, size_t n, float **out)
{
    void *p;
    DP_CHECK(st->ops->alloc(st->dev, n * sizeof(float), &p));
    *out = p;
    return DP_OK;
}

/* Fills a parameter on the host and copies it to the device. kind 0: uniform in
 * [-1/sqrt(fan_in), 1/sqrt(fan_in)) like torch.nn.Linear; kind 1: ones (RMSNorm). */
static dp_status init_param(dp_stage *st, param *p, uint64_t stream, int kind, int fan_in)
{
    float *host = malloc(sizeof(float) * p->count);
    if (!host) return dp_fail(DP_ERR_NOMEM, "out of memory initialising %s", p->name);
    float bound = kind == 0 ? 1.0f / sqrtf((float)fan_in) : 0.0f;
    for (size_t i = 0; i < p->count; i++)
        host[i] = kind == 0 ? bound * dp_counter_uniform(st->cfg.seed, stream, i) : 1.0f;
    dp_status s = st->ops->copy(st->dev, p->value, host, sizeof(float) * p->count, DP_COPY_HOST_TO_DEVICE, NULL);
    free(host);
    return s;
}

/* The weights' copies in the model's dtype follow the fp32 values (after init and each step). */
static dp_status refresh_copies(dp_stage *st, dp_stream *s)
{
    for (int i = 0; i < st->nparams; i++) {
        param *p = &st->params[i];
        if (p->copy) DP_CHECK(st->ops->cast(st->dev, s, p->count, DP_DTYPE_F32, p->value, st->dt, p->copy));
    }
    return DP_OK;
}

/* Lays a slot out in one allocation (slot->x must point at its start when slot is not NULL):
 * x, y, dy, dx, then per block a1, g1, da, out, gout (+ xn, dxn, rstd), each region aligned
 * to 256 bytes so that kernels can use their widest loads. Returns the bytes needed. */
static size_t carve_slot(const dp_stage *st, dp_slot *slot, block_saved *saved)
{
    size_t T = (size_t)st->cfg.tokens, h = (size_t)st->cfg.hidden, f = (size_t)st->cfg.ffn, es = dp_dtype_size(st->dt);
    char *base = slot ? slot->x : NULL;
    size_t at = 0;
#define TAKE(bytes) (at = (at + 255) & ~(size_t)255, at += (bytes), base ? (void *)(base + at - (bytes)) : NULL)
    void *x = TAKE(T * h * es), *y = TAKE(T * h * es), *dy = TAKE(T * h * es), *dx = TAKE(T * h * es);
    if (slot) slot->x = x, slot->y = y, slot->dy = dy, slot->dx = dx;
    for (int b = 0; b < st->nblocks; b++) {
        block_saved k = {0};
        k.a1 = TAKE(T * f * es);
        k.g1 = TAKE(T * f * es);
        k.da = TAKE(T * f * es);
        k.out = TAKE(T * h * es);
        k.gout = TAKE(T * h * es);
        if (st->cfg.block == DP_BLOCK_RESIDUAL) {
            k.xn = TAKE(T * h * es);
            k.dxn = TAKE(T * h * es);
            k.rstd = TAKE(T * sizeof(float));
        }
        if (saved) saved[b] = k;
    }
#undef TAKE
    /* the last block writes the slot's output and reads its gradient */
    if (saved && slot) saved[st->nblocks - 1].out = slot->y, saved[st->nblocks - 1].gout = slot->dy;
    return at;
}

dp_status dp_stage_create(const dp_device_ops *ops, dp_device *dev, const dp_model_config *cfg_in, int stage_index,
                          int num_stages, dp_stage **out)
{
    *out = NULL;
    dp_model_config cfg = *cfg_in;
    DP_CHECK(dp_model_config_check(&cfg));
    dp_stage *st = calloc(1, sizeof *st);
    if (!st) return dp_fail(DP_ERR_NOMEM, "out of memory creating stage %d", stage_index);
    st->ops = ops;
    st->dev = dev;
    st->cfg = cfg;
    st->index = stage_index;
    st->num_stages = num_stages;
    st->is_last = stage_index == num_stages - 1;
    st->dt = cfg.dtype;
    st->nblocks = cfg.layers_per_stage;
    int per_block = cfg.block == DP_BLOCK_RESIDUAL ? 3 : 2;
    st->nparams = st->nblocks * per_block;
    st->blocks = calloc((size_t)st->nblocks, sizeof *st->blocks);
    st->params = calloc((size_t)st->nparams, sizeof *st->params);
    dp_status s = st->blocks && st->params ? DP_OK : dp_fail(DP_ERR_NOMEM, "out of memory creating a stage");
    size_t h = (size_t)cfg.hidden, f = (size_t)cfg.ffn;
    st->grad_count = (size_t)st->nblocks * (2 * h * f + (per_block == 3 ? h : 0));
    if (s == DP_OK) s = dev_alloc_floats(st, st->grad_count, &st->grads);
    if (s == DP_OK) s = ops->memset(dev, st->grads, 0, st->grad_count * sizeof(float), NULL);
    size_t grad_offset = 0;
    for (int b = 0; b < st->nblocks && s == DP_OK; b++) {
        for (int j = 0; j < per_block && s == DP_OK; j++) {
            param *p = &st->params[b * per_block + j];
            static const char *names[] = {"linear1", "linear2", "norm"};
            snprintf(p->name, sizeof p->name, "block%d.%s", b, names[j]);
            p->count = j == 2 ? h : h * f;
            s = dev_alloc_floats(st, p->count, &p->value);
            p->grad = st->grads + grad_offset;
            grad_offset += p->count;
            /* the stream of values: stage, block and parameter, so every copy of a stage agrees */
            uint64_t stream = ((uint64_t)stage_index << 32) | ((uint64_t)b << 8) | (uint64_t)j;
            if (s == DP_OK) s = init_param(st, p, stream, j == 2 ? 1 : 0, j == 0 ? (int)h : (int)f);
            /* RMSNorm's weight is read in fp32 by its kernels: only the matrices need copies */
            if (s == DP_OK && st->dt != DP_DTYPE_F32 && j < 2)
                s = ops->alloc(dev, dp_dtype_size(st->dt) * p->count, &p->copy);
        }
        block_params *bp = &st->blocks[b];
        if (s == DP_OK) {
            param *p1 = &st->params[b * per_block], *p2 = &st->params[b * per_block + 1];
            bp->w1 = p1->copy ? p1->copy : (void *)p1->value, bp->g1 = p1->grad;
            bp->w2 = p2->copy ? p2->copy : (void *)p2->value, bp->g2 = p2->grad;
            if (per_block == 3) bp->norm_w = st->params[b * per_block + 2].value, bp->gnorm = st->params[b * per_block + 2].grad;
        }
    }
    if (s == DP_OK) s = refresh_copies(st, NULL);
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
    for (dp_slot *s = st->all_slots; s;) {
        slot_impl *si = (slot_impl *)s;
        dp_slot *next = si->next_all;
        st->ops->free(st->dev, si->mem);
        free(si->saved);
        free(si);
        s = next;
    }
    for (int i = 0; st->params && i < st->nparams; i++) {
        param *p = &st->params[i];
        st->ops->free(st->dev, p->value);
        st->ops->free(st->dev, p->copy);
        st->ops->free(st->dev, p->m);
        st->ops->free(st->dev, p->v);
    }
    st->ops->free(st->dev, st->grads);
    free(st->params);
    free(st->blocks);
    free(st);
}

dp_status dp_stage_slot_get(dp_stage *st, dp_slot **out)
{
    *out = NULL;
    if (st->free_slots) {
        dp_slot *s = st->free_slots;
        st->free_slots = s->next_free;
        s->next_free = NULL;
        s->target = NULL;
        s->pending[0] = s->pending[1] = NULL;
        s->state = 0;
        s->owner = st;
        *out = s;
        return DP_OK;
    }
    slot_impl *si = calloc(1, sizeof *si);
    block_saved *saved = calloc((size_t)st->nblocks, sizeof *saved);
    if (!si || !saved) {
        free(si), free(saved);
        return dp_fail(DP_ERR_NOMEM, "out of memory for a micro-batch slot");
    }
    void *m;
    dp_status s = st->ops->alloc(st->dev, st->slot_bytes, &m);
    if (s != DP_OK) {
        free(si), free(saved);
        return s;
    }
    si->mem = m;
    si->saved = saved;
    si->pub.x = m;
    carve_slot(st, &si->pub, saved);
    si->next_all = st->all_slots;
    st->all_slots = &si->pub;
    si->pub.priv = si;
    si->pub.owner = st;
    *out = &si->pub;
    return DP_OK;
}

void dp_stage_slot_put(dp_stage *st, dp_slot *slot)
{
    if (!slot) return;
    slot->next_free = st->free_slots;
    st->free_slots = slot;
}

/* ----------------------------------------------------------------------------
 * layers: Linear (no bias), on [T x in] row-major activations with W [out x in]; activations
 * and W in the model's dtype, accumulation in fp32 */

static dp_status linear_forward(dp_stage *st, dp_stream *s, const void *x, const void *w, void *y, int in, int out)
{
    dp_gemm_args g = {0, 1, st->cfg.tokens, out, in, 1.0f, 0.0f, x, in, st->dt, w, in, st->dt, y, out, st->dt};
    return st->ops->gemm(st->dev, s, &g);
}

/* dx[T x in] = dy[T x out] W[out x in] */
static dp_status linear_backward_input(dp_stage *st, dp_stream *s, const void *dy, const void *w, void *dx, int in,
                                       int out)
{
    dp_gemm_args g = {0, 0, st->cfg.tokens, in, out, 1.0f, 0.0f, dy, out, st->dt, w, in, st->dt, dx, in, st->dt};
    return st->ops->gemm(st->dev, s, &g);
}

/* dW[out x in] += dy^T x, into the fp32 gradient */
static dp_status linear_backward_weight(dp_stage *st, dp_stream *s, const void *dy, const void *x, float *dw, int in,
                                        int out)
{
    dp_gemm_args g = {1, 0, out, in, st->cfg.tokens, 1.0f, 1.0f, dy, out, st->dt, x, in, st->dt, dw, in, DP_DTYPE_F32};
    return st->ops->gemm(st->dev, s, &g);
}

/* ----------------------------------------------------------------------------
 * blocks */

static const void *block_input(dp_slot *slot, block_saved *saved, int b)
{
    return b == 0 ? slot->x : saved[b - 1].out;
}

static void *block_input_grad(dp_slot *slot, block_saved *saved, int b)
{
    return b == 0 ? slot->dx : saved[b - 1].gout;
}

static dp_status block_forward(dp_stage *st, dp_stream *s, block_params *p, block_saved *k, const void *x)
{
    const dp_device_ops *o = st->ops;
    int h = st->cfg.hidden, f = st->cfg.ffn, T = st->cfg.tokens;
    size_t nf = (size_t)T * f, nh = (size_t)T * h;
    const void *in = x;
    if (st->cfg.block == DP_BLOCK_RESIDUAL) {
        DP_CHECK(o->rmsnorm_forward(st->dev, s, st->dt, T, h, st->cfg.norm_eps, x, p->norm_w, k->xn, k->rstd));
        in = k->xn;
    }
    DP_CHECK(linear_forward(st, s, in, p->w1, k->a1, h, f));
    DP_CHECK(o->gelu_forward(st->dev, s, st->dt, nf, k->a1, k->g1));
    DP_CHECK(linear_forward(st, s, k->g1, p->w2, k->out, f, h));
    if (st->cfg.block == DP_BLOCK_RESIDUAL) DP_CHECK(o->add(st->dev, s, st->dt, nh, k->out, x, k->out));
    return DP_OK;
}

/* k->gout -> dx (NULL: not needed) */
static dp_status block_backward_input(dp_stage *st, dp_stream *s, block_params *p, block_saved *k, const void *x,
                                      void *dx)
{
    const dp_device_ops *o = st->ops;
    int h = st->cfg.hidden, f = st->cfg.ffn, T = st->cfg.tokens;
    size_t nf = (size_t)T * f, nh = (size_t)T * h;
    DP_CHECK(linear_backward_input(st, s, k->gout, p->w2, k->da, f, h));
    DP_CHECK(o->gelu_backward(st->dev, s, st->dt, nf, k->a1, k->da, k->da));
    if (st->cfg.block == DP_BLOCK_RESIDUAL) {
        DP_CHECK(linear_backward_input(st, s, k->da, p->w1, k->dxn, h, f));
        if (dx) {
            DP_CHECK(o->rmsnorm_backward_input(st->dev, s, st->dt, T, h, x, p->norm_w, k->rstd, k->dxn, dx));
            DP_CHECK(o->add(st->dev, s, st->dt, nh, dx, k->gout, dx));
        }
    } else if (dx) {
        DP_CHECK(linear_backward_input(st, s, k->da, p->w1, dx, h, f));
    }
    return DP_OK;
}

static dp_status block_backward_weight(dp_stage *st, dp_stream *s, block_params *p, block_saved *k, const void *x)
{
    int h = st->cfg.hidden, f = st->cfg.ffn, T = st->cfg.tokens;
    DP_CHECK(linear_backward_weight(st, s, k->gout, k->g1, p->g2, f, h));
    if (st->cfg.block == DP_BLOCK_RESIDUAL) {
        DP_CHECK(linear_backward_weight(st, s, k->da, k->xn, p->g1, h, f));
        DP_CHECK(st->ops->rmsnorm_backward_weight(st->dev, s, st->dt, T, h, x, k->rstd, k->dxn, p->gnorm));
    } else {
        DP_CHECK(linear_backward_weight(st, s, k->da, x, p->g1, h, f));
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * stage */

dp_status dp_stage_forward(dp_stage *st, dp_stream *s, dp_slot *slot, float *loss)
{
    block_saved *saved = ((slot_impl *)slot->priv)->saved;
    for (int b = 0; b < st->nblocks; b++)
        DP_CHECK(block_forward(st, s, &st->blocks[b], &saved[b], block_input(slot, saved, b)));
    if (st->is_last && loss) {
        if (!slot->target) return dp_fail(DP_ERR_INTERNAL, "stage %d: the last stage needs a target", st->index);
        if (st->cfg.loss == DP_LOSS_MSE)
            DP_CHECK(st->ops->mse_forward(st->dev, s, st->dt, dp_model_act_elems(&st->cfg), slot->y, slot->target,
                                          loss));
        else
            DP_CHECK(st->ops->xent_forward(st->dev, s, st->dt, st->cfg.tokens, st->cfg.hidden, slot->y,
                                           slot->target, loss));
    }
    return DP_OK;
}

dp_status dp_stage_backward_input(dp_stage *st, dp_stream *s, dp_slot *slot, int need_dx)
{
    block_saved *saved = ((slot_impl *)slot->priv)->saved;
    if (st->is_last) {
        /* each micro-batch's loss is differentiated on its own, as loss.backward() per chunk */
        if (!slot->target) return dp_fail(DP_ERR_INTERNAL, "stage %d: the last stage needs a target", st->index);
        if (st->cfg.loss == DP_LOSS_MSE)
            DP_CHECK(st->ops->mse_backward(st->dev, s, st->dt, dp_model_act_elems(&st->cfg), slot->y,
                                           slot->target, 1.0f, slot->dy));
        else
            DP_CHECK(st->ops->xent_backward(st->dev, s, st->dt, st->cfg.tokens, st->cfg.hidden, slot->y,
                                            slot->target, 1.0f, slot->dy));
    }
    for (int b = st->nblocks - 1; b >= 0; b--) {
        void *dx = b > 0 || need_dx ? block_input_grad(slot, saved, b) : NULL;
        DP_CHECK(block_backward_input(st, s, &st->blocks[b], &saved[b], block_input(slot, saved, b), dx));
    }
    return DP_OK;
}

dp_status dp_stage_backward_weight(dp_stage *st, dp_stream *s, dp_slot *slot)
{
    block_saved *saved = ((slot_impl *)slot->priv)->saved;
    for (int b = st->nblocks - 1; b >= 0; b--)
        DP_CHECK(block_backward_weight(st, s, &st->blocks[b], &saved[b], block_input(slot, saved, b)));
    return DP_OK;
}

dp_status dp_stage_zero_grad(dp_stage *st, dp_stream *s)
{
    return st->ops->memset(st->dev, st->grads, 0, st->grad_count * sizeof(float), s);
}

float *dp_stage_grads(const dp_stage *st, size_t *count)
{
    if (count) *count = st->grad_count;
    return st->grads;
}

dp_status dp_stage_optimizer_step(dp_stage *st, dp_stream *s, const dp_optimizer_config *o, int step)
{
    if (o->kind == DP_OPT_NONE) return DP_OK;
    for (int i = 0; i < st->nparams; i++) {
        param *p = &st->params[i];
        int need_v = o->kind == DP_OPT_ADAMW, need_m = need_v || o->momentum != 0.0f;
        if (need_m && !p->m) {
            DP_CHECK(dev_alloc_floats(st, p->count, &p->m));
            DP_CHECK(st->ops->memset(st->dev, p->m, 0, p->count * sizeof(float), s));
        }
        if (need_v && !p->v) {
            DP_CHECK(dev_alloc_floats(st, p->count, &p->v));
            DP_CHECK(st->ops->memset(st->dev, p->v, 0, p->count * sizeof(float), s));
        }
        if (o->kind == DP_OPT_ADAMW) {
            dp_adamw_args a = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, step};
            DP_CHECK(st->ops->adamw_update(st->dev, s, p->count, p->value, p->grad, p->m, p->v, &a));
        } else {
            dp_sgd_args a = {o->lr, o->momentum, o->weight_decay};
            DP_CHECK(st->ops->sgd_update(st->dev, s, p->count, p->value, p->grad, p->m, &a));
        }
    }
    return refresh_copies(st, s);
}
