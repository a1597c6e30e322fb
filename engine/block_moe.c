/* block_moe.c: a mixture-of-experts layer as a block kind, DeepSeek-V3's:
 * y = x + sum_k w_k E_k(RMSNorm(x)) [+ Shared(RMSNorm(x))], with the sigmoid gate, the
 * balancing bias, group-limited top-k and SwiGLU experts (model.h, dp_moe_config). The rows of
 * the (token, k) slots are dispatched sorted by physical slot (an expert, or with an EPLB plan
 * one replica of one), each slot runs its rows as GEMMs, and combine sums each token's rows in
 * k order in fp32, so the result does not depend on where the slots are. */
#include "engine/block.h"
#include "engine/moe_routing_tape.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parameters: the fixed ones, then the shared experts' (when there are), then each physical
 * slot's this rank holds: without a plan a slot is an expert (with expert parallelism, E / ep of
 * them from ep_rank x E / ep); with an EPLB plan, the plan's slots ep_rank x P / ep .., each
 * holding the weights of the logical expert the plan puts there. */
enum { NORM, GATE, BIAS, NUM_FIXED };
enum { W1, W2, W3, NUM_SWIGLU }; /* w2(silu(w1 x) * w3 x) */

static const char *const swiglu_names[NUM_SWIGLU] = {"w1", "w2", "w3"};

static int has_shared(const dp_block_layer *L) { return L->cfg->moe.shared_experts > 0; }
static int first_expert_param(const dp_block_layer *L) { return NUM_FIXED + (has_shared(L) ? NUM_SWIGLU : 0); }
static int shared_hidden(const dp_block_layer *L) { return L->cfg->moe.shared_experts * L->cfg->moe.expert_hidden; }
/* the expert-parallel group: its size and this rank's place (a layer outside a stage: 1, 0) */
static int ep_size(const dp_block_layer *L) { return L->env && L->env->ep_size > 1 ? L->env->ep_size : 1; }
static int ep_rank(const dp_block_layer *L) { return ep_size(L) > 1 ? L->env->ep_rank : 0; }
/* whose micro-batches the passes run: this ep rank's, or on one rank standing for several (the
 * reference) the one it says */
static int source_rank(const dp_block_layer *L)
{
    return ep_size(L) > 1 ? ep_rank(L) : L->env && L->env->ep_source > 0 ? L->env->ep_source : 0;
}
/* Per-layer state with expert parallelism or a plan. per_source (ep > 1): each local slot's
 * weight gradients kept per source rank, [source][local slot][w1, w2, w3] (device, fp32), folded
 * in source order after the step. With a plan: the layer's row of it, each expert's slots in
 * replica order, and for replicated experts with ep > 1 every rank's per-source gradients
 * gathered, so that each holder folds its expert's sources in source order. */
typedef struct {
    float *per_source;
    size_t expert_floats; /* one expert's three matrices */
    int plan;             /* placed by an EPLB plan */
    int slots;            /* physical slots of the layer (all ranks) */
    const int32_t *slot_expert; /* [slots] the plan's phy2log row */
    int32_t *replica_first;     /* [experts + 1] expert e's replicas are replica_slot[first[e] ..] */
    int32_t *replica_slot;      /* [slots] in replica order */
    int replicated;             /* some expert has more than one slot */
    float *gathered;            /* [rank][source][local slot] x expert_floats, replicated with ep > 1 */
} moe_state;

/* A layer's plan, when it has one. A layer that was never created (no state: a tool's view of
 * the parameters) lists them as one rank holding every expert does. */
static const moe_state *plan_of(const dp_block_layer *L)
{
    const moe_state *ms = L->state;
    return ms && ms->plan ? ms : NULL;
}
/* the physical slots: the plan's, else one per expert; and those this layer holds, from
 * first_slot */
static int num_slots(const dp_block_layer *L) { return plan_of(L) ? plan_of(L)->slots : L->cfg->moe.experts; }
static int local_slots(const dp_block_layer *L) { return num_slots(L) / ep_size(L); }
static int first_slot(const dp_block_layer *L) { return ep_rank(L) * local_slots(L); }
static int slot_expert(const dp_block_layer *L, int slot) { return plan_of(L) ? plan_of(L)->slot_expert[slot] : slot; }

/* Kept per micro-batch (R = tokens x topk rows, one per (token, k) slot, sorted by physical
 * slot; C the rows this rank's slots may receive: R from each source). In the model's dtype
 * unless said: the normalised input and its gradient, rstd (fp32); the gate's scores (fp32), the
 * selection (logical experts), its weights and their gradient (fp32), the logits' gradient (fp32,
 * and in the model's dtype for the GEMMs); with a plan each row's physical slot and each
 * expert's load; the layout (int32), and what each source sends each local slot; the dispatched
 * rows, the experts' outputs returned to them and the gradients of both (source side), and, on
 * the experts' side (the same memory without expert parallelism), the rows received, the
 * experts' a = w1 x, b = w3 x, h = silu(a) b, outputs, output gradients, the gradients of a and
 * b, and of the rows; the shared experts' a, b, h and gradients. */
typedef struct {
    void *xn, *dxn;
    float *rstd;
    float *scores, *weight, *dweight, *dlogits;
    void *dlogits_act;
    int32_t *expert, *phys, *loads, *row_token, *slot_row, *counts, *rcounts;
    void *rows, *out, *dout, *drows;
    void *rrows, *a, *b, *h, *rout, *rdout, *da, *db, *rdrows;
    void *sa, *sb, *sh, *sda, *sdb;
} moe_saved;

static size_t moe_layout(const dp_block_layer *L, void *base, moe_saved *k)
{
    const dp_model_config *c = L->cfg;
    int ep = ep_size(L);
    size_t T = (size_t)c->tokens, K = (size_t)c->moe.topk, E = (size_t)c->moe.experts, R = T * K;
    size_t P = (size_t)num_slots(L);
    size_t C = R * (size_t)ep, es = dp_dtype_size(c->dtype), h = (size_t)c->hidden, f = (size_t)c->moe.expert_hidden;
    size_t sf = (size_t)shared_hidden(L);
    dp_carver cv = {base, 0};
    k->xn = dp_carve(&cv, T * h * es);
    k->dxn = dp_carve(&cv, T * h * es);
    k->rstd = dp_carve(&cv, T * sizeof(float));
    k->scores = dp_carve(&cv, T * E * sizeof(float));
    k->weight = dp_carve(&cv, R * sizeof(float));
    k->dweight = dp_carve(&cv, R * sizeof(float));
    k->dlogits = dp_carve(&cv, T * E * sizeof(float));
    k->dlogits_act = c->dtype == DP_DTYPE_F32 ? (void *)k->dlogits : dp_carve(&cv, T * E * es);
    k->expert = dp_carve(&cv, R * sizeof(int32_t));
    k->phys = plan_of(L) ? dp_carve(&cv, R * sizeof(int32_t)) : k->expert;
    k->loads = plan_of(L) ? dp_carve(&cv, E * sizeof(int32_t)) : NULL;
    k->row_token = dp_carve(&cv, R * sizeof(int32_t));
    k->slot_row = dp_carve(&cv, R * sizeof(int32_t));
    k->counts = dp_carve(&cv, P * sizeof(int32_t));
    k->rcounts = ep > 1 ? dp_carve(&cv, P * sizeof(int32_t)) : k->counts; /* [source][local slot] */
    k->rows = dp_carve(&cv, R * h * es);
    k->out = dp_carve(&cv, R * h * es);
    k->dout = dp_carve(&cv, R * h * es);
    k->drows = dp_carve(&cv, R * h * es);
    k->rrows = ep > 1 ? dp_carve(&cv, C * h * es) : k->rows;
    k->rout = ep > 1 ? dp_carve(&cv, C * h * es) : k->out;
    k->rdout = ep > 1 ? dp_carve(&cv, C * h * es) : k->dout;
    k->rdrows = ep > 1 ? dp_carve(&cv, C * h * es) : k->drows;
    k->a = dp_carve(&cv, C * f * es);
    k->b = dp_carve(&cv, C * f * es);
    k->h = dp_carve(&cv, C * f * es);
    k->da = dp_carve(&cv, C * f * es);
    k->db = dp_carve(&cv, C * f * es);
    k->sa = sf ? dp_carve(&cv, T * sf * es) : NULL;
    k->sb = sf ? dp_carve(&cv, T * sf * es) : NULL;
    k->sh = sf ? dp_carve(&cv, T * sf * es) : NULL;
    k->sda = sf ? dp_carve(&cv, T * sf * es) : NULL;
    k->sdb = sf ? dp_carve(&cv, T * sf * es) : NULL;
    return cv.at;
}

/* ----------------------------------------------------------------------------
 * the kind's table entries */

/* The plan's row for this layer (the MoE layers before it count the rows) and each expert's
 * slots in replica order: the plan's replica ranks, else slot order. */
static dp_status plan_layer(dp_block_layer *L, moe_state *ms)
{
    const dp_moe_config *m = &L->cfg->moe;
    int row = 0, E = m->experts, P = m->plan_slots;
    for (int i = 0; i < L->layer; i++) row += dp_model_layer_kind(L->cfg, i) == DP_BLOCK_MOE;
    if (row >= m->plan_layers)
        return dp_fail(DP_ERR_INVALID, "layer %d is MoE layer %d, but the EPLB plan places %d", L->layer, row,
                       m->plan_layers);
    ms->plan = 1, ms->slots = P;
    ms->slot_expert = m->plan_phy2log + (size_t)row * P;
    const int32_t *rank = m->plan_replica ? m->plan_replica + (size_t)row * P : NULL;
    ms->replica_first = calloc((size_t)E + 1, sizeof *ms->replica_first);
    ms->replica_slot = malloc(sizeof *ms->replica_slot * (size_t)P);
    if (!ms->replica_first || !ms->replica_slot) return dp_fail(DP_ERR_NOMEM, "out of memory for layer %d", L->layer);
    for (int p = 0; p < P; p++) ms->replica_first[ms->slot_expert[p] + 1]++;
    for (int e = 0; e < E; e++) {
        if (ms->replica_first[e + 1] > 1) ms->replicated = 1;
        ms->replica_first[e + 1] += ms->replica_first[e];
    }
    for (int p = 0; p < P; p++) ms->replica_slot[p] = -1;
    for (int p = 0, seen; p < P; p++) {
        int e = ms->slot_expert[p], n = ms->replica_first[e + 1] - ms->replica_first[e], r = 0;
        if (rank) r = rank[p];
        else
            for (seen = 0; seen < p; seen++) r += ms->slot_expert[seen] == e;
        if (r < 0 || r >= n || ms->replica_slot[ms->replica_first[e] + r] >= 0)
            return dp_fail(DP_ERR_INVALID, "the EPLB plan's layer %d makes slot %d replica %d of expert %d, which has %d "
                           "slot(s) and each replica rank once", row, p, r, e, n);
        ms->replica_slot[ms->replica_first[e] + r] = p;
    }
    return DP_OK;
}

static void moe_destroy(dp_block_layer *L);
static dp_status alloc_floats(const dp_block_layer *L, size_t n, float **out);

static int moe_expert_slots(const dp_block_layer *L, int *first, int *per)
{
    *first = first_expert_param(L), *per = NUM_SWIGLU;
    return local_slots(L);
}

/* A new placement of the same slots (dp_stage_set_placement): the plan's row read again, and the
 * buffers of replicated experts' gradients made if it now has replicas. */
static dp_status moe_replan(dp_block_layer *L)
{
    moe_state *ms = L->state;
    if (!ms || !ms->plan || !L->cfg->moe.plan_phy2log)
        return dp_fail(DP_ERR_INVALID, "layer %d was made without an EPLB plan: its experts cannot be placed anew "
                       "(start from a plan, the identity one if need be)", L->layer);
    if (L->cfg->moe.plan_slots != ms->slots)
        return dp_fail(DP_ERR_INVALID, "layer %d has %d physical slots; a new placement of %d is not a move", L->layer,
                       ms->slots, L->cfg->moe.plan_slots);
    free(ms->replica_first), free(ms->replica_slot);
    ms->replica_first = NULL, ms->replica_slot = NULL, ms->replicated = 0;
    DP_CHECK(plan_layer(L, ms));
    size_t ef = ms->expert_floats, S = (size_t)local_slots(L);
    if (ms->replicated && ep_size(L) > 1 && !ms->gathered)
        DP_CHECK(alloc_floats(L, ef * S * (size_t)ep_size(L) * (size_t)ep_size(L), &ms->gathered));
    return DP_OK;
}

static dp_status alloc_floats(const dp_block_layer *L, size_t n, float **out)
{
    void *p = NULL;
    dp_status st = L->env->ops->alloc(L->env->dev, n * sizeof(float), &p);
    if (st == DP_OK) st = L->env->ops->memset(L->env->dev, p, 0, n * sizeof(float), NULL);
    *out = p;
    return st;
}

static dp_status moe_create(dp_block_layer *L)
{
    L->state = NULL;
    const dp_moe_config *m = &L->cfg->moe;
    if (m->experts < 1)
        return dp_fail(DP_ERR_INVALID, "layer %d is an MoE layer, but the model has no experts (set --experts)",
                       L->layer);
    int ep = ep_size(L);
    if (!m->plan_phy2log && ep == 1) return DP_OK;
    if (m->plan_phy2log && ep > 1 && m->plan_ranks != ep)
        return dp_fail(DP_ERR_INVALID, "the EPLB plan is for %d expert-parallel ranks (num_gpus), but --ep is %d: "
                       "make the plan with -g %d", m->plan_ranks, ep, ep);
    if (!m->plan_phy2log && m->experts % ep)
        return dp_fail(DP_ERR_INVALID, "%d experts do not spread evenly over %d expert-parallel ranks (--ep must divide --experts)",
                       m->experts, ep);
    moe_state *ms = calloc(1, sizeof *ms);
    if (!ms) return dp_fail(DP_ERR_NOMEM, "out of memory for layer %d", L->layer);
    L->state = ms;
    ms->expert_floats = 3 * (size_t)m->expert_hidden * (size_t)L->cfg->hidden;
    dp_status st = m->plan_phy2log ? plan_layer(L, ms) : DP_OK;
    size_t ef = ms->expert_floats, S = (size_t)local_slots(L);
    if (st == DP_OK && ep > 1) st = alloc_floats(L, ef * S * (size_t)ep, &ms->per_source);
    if (st == DP_OK && ms->replicated && ep > 1) st = alloc_floats(L, ef * S * (size_t)ep * (size_t)ep, &ms->gathered);
    if (st != DP_OK) moe_destroy(L); /* the stage destroys only the layers created */
    return st;
}

static void moe_destroy(dp_block_layer *L)
{
    moe_state *ms = L->state;
    if (!ms) return;
    L->env->ops->free(L->env->dev, ms->per_source);
    L->env->ops->free(L->env->dev, ms->gathered);
    free(ms->replica_first);
    free(ms->replica_slot);
    free(ms);
    L->state = NULL;
}

static int moe_num_params(const dp_block_layer *L)
{
    return first_expert_param(L) + NUM_SWIGLU * local_slots(L);
}

static int moe_num_whole_params(const dp_block_layer *L)
{
    return first_expert_param(L) + NUM_SWIGLU * L->cfg->moe.experts;
}

/* A SwiGLU's three matrices, inner width f: w1 and w3 f x h, w2 h x f. */
static void swiglu_spec(const dp_block_layer *L, int w, size_t f, dp_block_param_spec *out)
{
    size_t h = (size_t)L->cfg->hidden;
    out->rows = w == W2 ? h : f;
    out->cols = w == W2 ? f : h;
    out->init = DP_PARAM_INIT_LINEAR;
    out->gemm_operand = 1;
}

static void moe_param_spec(const dp_block_layer *L, int j, dp_block_param_spec *out)
{
    const dp_moe_config *m = &L->cfg->moe;
    size_t h = (size_t)L->cfg->hidden, E = (size_t)m->experts;
    memset(out, 0, sizeof *out);
    if (j == NORM) {
        *out = (dp_block_param_spec){.name = "norm", .rows = 1, .cols = h, .init = DP_PARAM_INIT_ONES};
    } else if (j == GATE) {
        *out = (dp_block_param_spec){.name = "gate", .rows = E, .cols = h, .init = DP_PARAM_INIT_LINEAR,
                                     .gemm_operand = 1};
    } else if (j == BIAS) {
        /* DeepSeek-V3's e_score_correction_bias: state, no gradient; its "gradient" counts the
         * tokens each expert received in the step */
        *out = (dp_block_param_spec){.name = "gate.bias", .rows = 1, .cols = E, .init = DP_PARAM_INIT_ZEROS,
                                     .buffer = 1};
    } else if (j < first_expert_param(L)) {
        int w = j - NUM_FIXED;
        swiglu_spec(L, w, (size_t)shared_hidden(L), out);
        snprintf(out->name_storage, sizeof out->name_storage, "shared_experts.%s", swiglu_names[w]);
        out->name = out->name_storage;
    } else {
        int e = (j - first_expert_param(L)) / NUM_SWIGLU, w = (j - first_expert_param(L)) % NUM_SWIGLU;
        int global = slot_expert(L, first_slot(L) + e);
        swiglu_spec(L, w, (size_t)m->expert_hidden, out);
        snprintf(out->name_storage, sizeof out->name_storage, "experts.%d.%s", global, swiglu_names[w]);
        out->name = out->name_storage;
        /* the values of expert `global` wherever it lives, on each of its slots */
        out->init_index = first_expert_param(L) + NUM_SWIGLU * global + w;
        out->sharded = ep_size(L) > 1;
    }
}

static size_t moe_saved_bytes(const dp_block_layer *L)
{
    moe_saved k;
    return moe_layout(L, NULL, &k);
}

/* ----------------------------------------------------------------------------
 * pieces */

/* C[m x n] (dtype or fp32) = A op B with the model's dtype for A and B; beta 1 accumulates. */
static dp_status gemm(const dp_block_layer *L, dp_stream *s, int ta, int tb, int m, int n, int k, const void *a,
                      int lda, const void *b, int ldb, float beta, void *c, int ldc, dp_dtype ct)
{
    dp_dtype dt = L->cfg->dtype;
    dp_gemm_args g = {ta, tb, m, n, k, 1.0f, beta, a, lda, dt, b, ldb, dt, c, ldc, ct};
    return L->env->ops->gemm(L->env->dev, s, &g);
}

/* The layout's counts on the host: counts[P] (the rows this micro-batch sends each physical
 * slot) and rcounts[ep x local slots] (the rows this rank's slots receive from each source). */
typedef struct {
    int32_t *counts, *rcounts;
} host_counts;

static dp_status read_counts(const dp_block_layer *L, dp_stream *s, const moe_saved *k, host_counts *hc)
{
    int E = num_slots(L);
    int32_t *c = malloc(sizeof *c * 2 * (size_t)E);
    if (!c) return dp_fail(DP_ERR_NOMEM, "out of memory for the counts of %d slots", E);
    const dp_device_ops *o = L->env->ops;
    dp_status st = o->copy(L->env->dev, c, k->counts, sizeof *c * (size_t)E, DP_COPY_DEVICE_TO_HOST, s);
    if (st == DP_OK) st = o->copy(L->env->dev, c + E, k->rcounts, sizeof *c * (size_t)E, DP_COPY_DEVICE_TO_HOST, s);
    if (st == DP_OK) st = o->stream_synchronize(L->env->dev, s);
    if (st != DP_OK) {
        free(c);
        return st;
    }
    hc->counts = c, hc->rcounts = c + E;
    return DP_OK;
}

/* Starts an all-to-all and leaves it in flight (the stage waits for p->request before the next
 * phase) where the link can; else it runs to its end here. */
static dp_status start_all_to_all(const dp_block_layer *L, dp_block_pass *p, const void *send, const size_t *to,
                                  const size_t *to_at, void *recv, const size_t *from, const size_t *from_at,
                                  size_t elem)
{
    const dp_link_ops *lo = L->env->link_ops;
    if (DP_LINK_OPS_HAS(lo, iall_to_all_v))
        return lo->iall_to_all_v(p->link, send, to, to_at, recv, from, from_at, elem, p->stream, &p->request);
    return lo->all_to_all_v(p->link, send, to, to_at, recv, from, from_at, elem, p->stream);
}

/* Rows of an all-to-all between the source side (rows sorted by expert, so by destination) and
 * the experts' side (grouped by source, then local expert): `dispatch` sends the source side's
 * rows to the experts, else the experts' rows back. */
static dp_status exchange(const dp_block_layer *L, dp_block_pass *p, const host_counts *hc, int dispatch,
                          const void *send, void *recv)
{
    int ep = ep_size(L), El = local_slots(L);
    size_t *v = calloc(4 * (size_t)ep, sizeof *v);
    if (!v) return dp_fail(DP_ERR_NOMEM, "out of memory for an all-to-all of %d ranks", ep);
    size_t *to = v, *to_at = v + ep, *from = v + 2 * ep, *from_at = v + 3 * ep;
    for (int j = 0; j < ep; j++) {
        for (int e = 0; e < El; e++) to[j] += (size_t)hc->counts[j * El + e], from[j] += (size_t)hc->rcounts[j * El + e];
        if (j) to_at[j] = to_at[j - 1] + to[j - 1], from_at[j] = from_at[j - 1] + from[j - 1];
    }
    size_t row = (size_t)L->cfg->hidden * dp_dtype_size(L->cfg->dtype);
    dp_status st = dispatch ? start_all_to_all(L, p, send, to, to_at, recv, from, from_at, row)
                            : start_all_to_all(L, p, send, from, from_at, recv, to, to_at, row);
    free(v);
    return st;
}

/* A SwiGLU's forward on n rows: a = x w1^T, b = x w3^T, h = silu(a) b, y = h w2^T. */
static dp_status swiglu_forward(const dp_block_layer *L, dp_stream *s, int n, int f, const void *x, const void *const *w,
                                void *a, void *b, void *hh, void *y)
{
    int h = L->cfg->hidden;
    if (n == 0) return DP_OK;
    DP_CHECK(gemm(L, s, 0, 1, n, f, h, x, h, w[W1], h, 0.0f, a, f, L->cfg->dtype));
    DP_CHECK(gemm(L, s, 0, 1, n, f, h, x, h, w[W3], h, 0.0f, b, f, L->cfg->dtype));
    DP_CHECK(L->env->ops->swiglu_forward(L->env->dev, s, L->cfg->dtype, (size_t)n * f, a, b, hh));
    return gemm(L, s, 0, 1, n, h, f, hh, f, w[W2], f, 0.0f, y, h, L->cfg->dtype);
}

/* Its input gradient: dh = dy w2 (into da), da and db from SwiGLU's backward, then
 * dx = da w1 + db w3 (beta: 1 adds to dx). */
static dp_status swiglu_backward_input(const dp_block_layer *L, dp_stream *s, int n, int f, const void *dy,
                                       const void *const *w, const void *a, const void *b, void *da, void *db,
                                       float beta, void *dx)
{
    int h = L->cfg->hidden;
    if (n == 0) return DP_OK;
    DP_CHECK(gemm(L, s, 0, 0, n, f, h, dy, h, w[W2], f, 0.0f, da, f, L->cfg->dtype));
    DP_CHECK(L->env->ops->swiglu_backward(L->env->dev, s, L->cfg->dtype, (size_t)n * f, a, b, da, da, db));
    DP_CHECK(gemm(L, s, 0, 0, n, h, f, da, f, w[W1], h, beta, dx, h, L->cfg->dtype));
    return gemm(L, s, 0, 0, n, h, f, db, f, w[W3], h, 1.0f, dx, h, L->cfg->dtype);
}

/* Its weight gradients, accumulated: dw2 += dy^T h, dw1 += da^T x, dw3 += db^T x. */
static dp_status swiglu_backward_weight(const dp_block_layer *L, dp_stream *s, int n, int f, const void *dy,
                                        const void *x, const void *hh, const void *da, const void *db, float *const *dw)
{
    int h = L->cfg->hidden;
    if (n == 0) return DP_OK;
    DP_CHECK(gemm(L, s, 1, 0, h, f, n, dy, h, hh, f, 1.0f, dw[W2], f, DP_DTYPE_F32));
    DP_CHECK(gemm(L, s, 1, 0, f, h, n, da, f, x, h, 1.0f, dw[W1], h, DP_DTYPE_F32));
    return gemm(L, s, 1, 0, f, h, n, db, f, x, h, 1.0f, dw[W3], h, DP_DTYPE_F32);
}

/* Row r of a [rows x cols] tensor of the model's dtype. */
static void *row_at(const dp_block_layer *L, const void *base, size_t r, int cols)
{
    return (char *)base + r * (size_t)cols * dp_dtype_size(L->cfg->dtype);
}

/* The experts' work on the rows they received, block by block: each source's rows for each
 * local slot as their own GEMMs, the very GEMMs one rank holding every slot runs on that
 * source's micro-batch, so that the bits do not depend on where the slots are. */
typedef enum { EXPERTS_FORWARD, EXPERTS_BACKWARD_INPUT, EXPERTS_BACKWARD_WEIGHT } experts_pass;

static dp_status run_experts(const dp_block_layer *L, dp_stream *s, const moe_saved *k, const host_counts *hc,
                             experts_pass what)
{
    int h = L->cfg->hidden, f = L->cfg->moe.expert_hidden, El = local_slots(L), ep = ep_size(L);
    moe_state *ms = L->state;
    size_t at = 0;
    for (int src = 0; src < ep; src++)
        for (int e = 0; e < El; e++) {
            int n = hc->rcounts[src * El + e];
            int j = first_expert_param(L) + NUM_SWIGLU * e;
            dp_status st;
            if (what == EXPERTS_FORWARD) {
                st = swiglu_forward(L, s, n, f, row_at(L, k->rrows, at, h), L->w + j, row_at(L, k->a, at, f),
                                    row_at(L, k->b, at, f), row_at(L, k->h, at, f), row_at(L, k->rout, at, h));
            } else if (what == EXPERTS_BACKWARD_INPUT) {
                st = swiglu_backward_input(L, s, n, f, row_at(L, k->rdout, at, h), L->w + j, row_at(L, k->a, at, f),
                                           row_at(L, k->b, at, f), row_at(L, k->da, at, f), row_at(L, k->db, at, f),
                                           0.0f, row_at(L, k->rdrows, at, h));
            } else {
                /* with expert parallelism into the source's own gradients, folded in source
                 * order after the step (moe_reduce_grads) */
                float *per[NUM_SWIGLU];
                float *const *dw = L->grad + j;
                if (ms && ms->per_source) {
                    float *base = ms->per_source + ((size_t)src * El + e) * ms->expert_floats;
                    size_t m1 = (size_t)f * h;
                    per[W1] = base, per[W2] = base + m1, per[W3] = base + 2 * m1;
                    dw = per;
                }
                st = swiglu_backward_weight(L, s, n, f, row_at(L, k->rdout, at, h), row_at(L, k->rrows, at, h),
                                            row_at(L, k->h, at, f), row_at(L, k->da, at, f), row_at(L, k->db, at, f),
                                            dw);
            }
            DP_CHECK(st);
            at += (size_t)n;
        }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * passes. With expert parallelism each pass that moves rows stops after starting the move
 * (DP_PHASE_COMM) and goes on in its next phase: forward 0 gate and the counts' exchange, 1
 * dispatch, 2 experts and combine's return, 3 the sum; backward_input 0 combine's backward and the gradients' dispatch,
 * 1 the experts' backward and the return, 2 the sum and the gate. Without it, one phase. */

/* With a plan, each (token, k) row's physical slot: expert e's replica (source rank) mod count_e,
 * so that all of one source's rows of an expert go to one replica and run as the very GEMMs of
 * the plan-less layer (the replicas share the sources between them); and each expert's load. On
 * the host: the layout's counts come there anyway. */
static dp_status choose_replicas(const dp_block_layer *L, dp_stream *s, const moe_saved *k)
{
    const moe_state *ms = plan_of(L);
    const dp_device_ops *o = L->env->ops;
    size_t R = (size_t)L->cfg->tokens * (size_t)L->cfg->moe.topk, E = (size_t)L->cfg->moe.experts;
    int32_t *host = malloc(sizeof *host * (2 * R + E));
    if (!host) return dp_fail(DP_ERR_NOMEM, "out of memory choosing the replicas of %zu rows", R);
    int32_t *phys = host + R, *loads = host + 2 * R;
    memset(loads, 0, sizeof *loads * E);
    dp_status st = o->copy(L->env->dev, host, k->expert, sizeof *host * R, DP_COPY_DEVICE_TO_HOST, s);
    if (st == DP_OK) st = o->stream_synchronize(L->env->dev, s);
    for (size_t i = 0; st == DP_OK && i < R; i++) {
        int32_t e = host[i];
        if (e < 0 || (size_t)e >= E) {
            st = dp_fail(DP_ERR_INTERNAL, "layer %d: row %zu selected expert %d of %zu", L->layer, i, (int)e, E);
            break;
        }
        int32_t first = ms->replica_first[e], count = ms->replica_first[e + 1] - first;
        phys[i] = ms->replica_slot[first + source_rank(L) % count];
        loads[e]++;
    }
    if (st == DP_OK) st = o->copy(L->env->dev, k->phys, phys, sizeof *phys * R, DP_COPY_HOST_TO_DEVICE, s);
    if (st == DP_OK) st = o->copy(L->env->dev, k->loads, loads, sizeof *loads * E, DP_COPY_HOST_TO_DEVICE, s);
    /* the host arrays must outlive the copies */
    if (st == DP_OK) st = o->stream_synchronize(L->env->dev, s);
    free(host);
    return st;
}

/* With a routing tape (`dualpipe verify`): record this forward's expert choices, or follow the
 * recorded ones (moe_routing_tape.h), on the host. */
static dp_status route_by_tape(const dp_block_layer *L, dp_stream *s, const moe_saved *k)
{
    const dp_stage_env *env = L->env;
    const dp_device_ops *o = env->ops;
    const dp_moe_config *m = &L->cfg->moe;
    int T = L->cfg->tokens, E = m->experts, K = m->topk, h = L->cfg->hidden;
    size_t R = (size_t)T * (size_t)K;
    int follow = env->routing_mode == DP_ROUTING_FOLLOW;
    /* own and recorded choices, weights, scores, bias, gate, norm */
    size_t floats = follow ? R + (size_t)T * E + E + (size_t)E * h + h : 0;
    int32_t *own = malloc(sizeof *own * 2 * R);
    float *f = malloc(sizeof *f * (floats ? floats : 1));
    if (!own || !f) {
        free(own), free(f);
        return dp_fail(DP_ERR_NOMEM, "out of memory for the expert choices of layer %d", L->layer);
    }
    int32_t *rec = own + R;
    float *weight = f, *scores = weight + R, *bias = scores + (size_t)T * E, *gate = bias + E, *norm = gate + (size_t)E * h;
    dp_device *dev = env->dev;
    dp_status st = o->copy(dev, own, k->expert, sizeof *own * R, DP_COPY_DEVICE_TO_HOST, s);
    if (st == DP_OK && follow) {
        st = o->copy(dev, weight, k->weight, sizeof *f * R, DP_COPY_DEVICE_TO_HOST, s);
        if (st == DP_OK) st = o->copy(dev, scores, k->scores, sizeof *f * (size_t)T * E, DP_COPY_DEVICE_TO_HOST, s);
        if (st == DP_OK) st = o->copy(dev, bias, L->value[BIAS], sizeof *f * (size_t)E, DP_COPY_DEVICE_TO_HOST, s);
        if (st == DP_OK) st = o->copy(dev, gate, L->value[GATE], sizeof *f * (size_t)E * h, DP_COPY_DEVICE_TO_HOST, s);
        if (st == DP_OK) st = o->copy(dev, norm, L->value[NORM], sizeof *f * (size_t)h, DP_COPY_DEVICE_TO_HOST, s);
    }
    if (st == DP_OK) st = o->stream_synchronize(dev, s);
    if (st == DP_OK && !follow) st = dp_routing_tape_put(env->routing_tape, env->rank, L->layer, own, R);
    if (st == DP_OK && follow) st = dp_routing_tape_take(env->routing_tape, env->rank, L->layer, rec, R);
    uint64_t differed = 0;
    double worst = 0.0;
    int worst_token = -1;
    if (st == DP_OK && follow) {
        int G = m->groups > 0 ? m->groups : 1;
        dp_routing_inputs in = {.tokens = T, .experts = E, .groups = G, .topk_groups = m->topk_groups > 0 ? m->topk_groups : G,
                                .topk = K, .hidden = h, .route_scale = m->route_scale, .scores = scores,
                                .bias = bias, .gate = gate, .norm = norm};
        st = dp_routing_follow(&in, rec, own, weight, &differed, &worst, &worst_token);
    }
    if (st == DP_OK && follow) dp_routing_tape_note(env->routing_tape, L->layer, (uint64_t)T, differed, worst, worst_token);
    if (st == DP_OK && differed) {
        st = o->copy(dev, k->expert, own, sizeof *own * R, DP_COPY_HOST_TO_DEVICE, s);
        if (st == DP_OK) st = o->copy(dev, k->weight, weight, sizeof *f * R, DP_COPY_HOST_TO_DEVICE, s);
        /* the host arrays must outlive the copies */
        if (st == DP_OK) st = o->stream_synchronize(dev, s);
    }
    free(own), free(f);
    return st;
}

/* Forward phase 0: the gate, fp32 scores, the selection on them plus the bias, the layout, the
 * step's load of each expert (for the balancing bias), the rows sorted by expert. */
static dp_status forward_gate(const dp_block_layer *L, dp_block_pass *p, const moe_saved *k)
{
    const dp_device_ops *o = L->env->ops;
    dp_device *dev = L->env->dev;
    const dp_moe_config *m = &L->cfg->moe;
    int h = L->cfg->hidden, T = L->cfg->tokens, E = m->experts, K = m->topk;
    dp_dtype dt = L->cfg->dtype;
    DP_CHECK(o->rmsnorm_forward(dev, p->stream, dt, T, h, L->cfg->norm_eps, p->x, L->value[NORM], k->xn, k->rstd));
    DP_CHECK(gemm(L, p->stream, 0, 1, T, E, h, k->xn, h, L->w[GATE], h, 0.0f, k->scores, E, DP_DTYPE_F32));
    DP_CHECK(o->sigmoid_forward(dev, p->stream, DP_DTYPE_F32, (size_t)T * E, k->scores, k->scores));
    DP_CHECK(o->moe_topk(dev, p->stream, T, E, m->groups, m->topk_groups, K, k->scores, L->value[BIAS],
                         m->route_scale, k->expert, k->weight));
    if (L->env && L->env->routing_tape && L->env->routing_mode != DP_ROUTING_OWN) DP_CHECK(route_by_tape(L, p->stream, k));
    if (plan_of(L)) DP_CHECK(choose_replicas(L, p->stream, k));
    DP_CHECK(o->moe_permute(dev, p->stream, T, K, num_slots(L), k->phys, k->row_token, k->slot_row, k->counts));
    /* the balancing bias counts logical experts' loads, whatever their replicas */
    DP_CHECK(o->add_counts(dev, p->stream, (size_t)E, plan_of(L) ? k->loads : k->counts, L->grad[BIAS]));
    DP_CHECK(o->gather_rows(dev, p->stream, dt, T * K, h, k->xn, k->row_token, k->rows));
    if (ep_size(L) == 1) return DP_OK;
    /* the counts' exchange: each source tells each rank what it sends each of its experts */
    size_t El = (size_t)local_slots(L), ep = (size_t)ep_size(L);
    size_t *v = malloc(sizeof *v * 2 * ep);
    if (!v) return dp_fail(DP_ERR_NOMEM, "out of memory for an all-to-all of %zu ranks", ep);
    for (size_t j = 0; j < ep; j++) v[j] = El, v[ep + j] = j * El;
    dp_status st = start_all_to_all(L, p, k->counts, v, v + ep, k->rcounts, v, v + ep, sizeof(int32_t));
    free(v);
    return st;
}

static dp_status moe_forward(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    const dp_device_ops *o = L->env->ops;
    dp_device *dev = L->env->dev;
    const dp_moe_config *m = &L->cfg->moe;
    moe_saved k;
    moe_layout(L, p->saved, &k);
    int h = L->cfg->hidden, T = L->cfg->tokens, K = m->topk, ep = ep_size(L);
    dp_dtype dt = L->cfg->dtype;
    /* with expert parallelism, phase 0 ends with the counts' exchange in flight, and the rows'
     * phases follow it: 1 dispatch, 2 experts and combine, 3 the sum */
    int phase = ep > 1 ? p->phase - 1 : 0;
    if (p->phase == 0) {
        DP_CHECK(forward_gate(L, p, &k));
        if (ep > 1) {
            *next = DP_PHASE_COMM;
            return DP_OK;
        }
    }
    host_counts hc;
    if (phase < 2) {
        DP_CHECK(read_counts(L, p->stream, &k, &hc));
        dp_status st = DP_OK;
        if (phase == 0 && ep > 1) {
            st = exchange(L, p, &hc, 1, k.rows, k.rrows);
            *next = DP_PHASE_COMM;
        } else {
            st = run_experts(L, p->stream, &k, &hc, EXPERTS_FORWARD);
            if (st == DP_OK && ep > 1) st = exchange(L, p, &hc, 0, k.rout, k.out), *next = DP_PHASE_COMM;
        }
        free(hc.counts);
        if (st != DP_OK || *next == DP_PHASE_COMM) return st;
    }
    /* y = x + [shared +] each token's rows weighted, in k order */
    if (has_shared(L))
        DP_CHECK(swiglu_forward(L, p->stream, T, shared_hidden(L), k.xn, L->w + NUM_FIXED, k.sa, k.sb, k.sh, p->y));
    DP_CHECK(o->moe_combine(dev, p->stream, dt, T, K, h, k.out, k.slot_row, k.weight, has_shared(L), p->y));
    return o->add(dev, p->stream, dt, (size_t)T * h, p->y, p->x, p->y);
}

static dp_status moe_backward_input(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    const dp_device_ops *o = L->env->ops;
    dp_device *dev = L->env->dev;
    const dp_moe_config *m = &L->cfg->moe;
    moe_saved k;
    moe_layout(L, p->saved, &k);
    int h = L->cfg->hidden, T = L->cfg->tokens, E = m->experts, K = m->topk, ep = ep_size(L);
    dp_dtype dt = L->cfg->dtype;
    /* the routed rows' gradients, and the weights' */
    if (p->phase == 0)
        DP_CHECK(o->moe_combine_backward(dev, p->stream, dt, T, K, h, k.out, k.slot_row, k.weight, p->dy, k.dout,
                                         k.dweight));
    if (p->phase < 2) {
        host_counts hc;
        DP_CHECK(read_counts(L, p->stream, &k, &hc));
        dp_status st = DP_OK;
        if (p->phase == 0 && ep > 1) {
            st = exchange(L, p, &hc, 1, k.dout, k.rdout);
            *next = DP_PHASE_COMM;
        } else {
            st = run_experts(L, p->stream, &k, &hc, EXPERTS_BACKWARD_INPUT);
            if (st == DP_OK && ep > 1) st = exchange(L, p, &hc, 0, k.rdrows, k.drows), *next = DP_PHASE_COMM;
        }
        free(hc.counts);
        if (st != DP_OK || *next == DP_PHASE_COMM) return st;
    }
    /* dxn: each token's rows in k order, then the shared experts' and the gate's parts */
    DP_CHECK(o->moe_combine(dev, p->stream, dt, T, K, h, k.drows, k.slot_row, NULL, 0, k.dxn));
    if (has_shared(L))
        DP_CHECK(swiglu_backward_input(L, p->stream, T, shared_hidden(L), p->dy, L->w + NUM_FIXED, k.sa, k.sb, k.sda,
                                       k.sdb, 1.0f, k.dxn));
    DP_CHECK(o->moe_topk_backward(dev, p->stream, T, E, K, k.scores, k.expert, k.dweight, m->route_scale, k.dlogits));
    if (dt != DP_DTYPE_F32) DP_CHECK(o->cast(dev, p->stream, (size_t)T * E, DP_DTYPE_F32, k.dlogits, dt, k.dlogits_act));
    DP_CHECK(gemm(L, p->stream, 0, 0, T, h, E, k.dlogits_act, E, L->w[GATE], h, 1.0f, k.dxn, h, dt));
    if (!p->dx) return DP_OK;
    DP_CHECK(o->rmsnorm_backward_input(dev, p->stream, dt, T, h, p->x, L->value[NORM], k.rstd, k.dxn, p->dx));
    /* the residual path's gradient */
    return o->add(dev, p->stream, dt, (size_t)T * h, p->dx, p->dy, p->dx);
}

static dp_status moe_backward_weight(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    (void)next;
    const dp_moe_config *m = &L->cfg->moe;
    moe_saved k;
    moe_layout(L, p->saved, &k);
    int h = L->cfg->hidden, T = L->cfg->tokens, E = m->experts;
    host_counts hc;
    DP_CHECK(read_counts(L, p->stream, &k, &hc));
    dp_status st = run_experts(L, p->stream, &k, &hc, EXPERTS_BACKWARD_WEIGHT);
    free(hc.counts);
    DP_CHECK(st);
    if (has_shared(L))
        DP_CHECK(swiglu_backward_weight(L, p->stream, T, shared_hidden(L), p->dy, k.xn, k.sh, k.sda, k.sdb,
                                        L->grad + NUM_FIXED));
    DP_CHECK(gemm(L, p->stream, 1, 0, E, h, T, k.dlogits_act, E, k.xn, h, 1.0f, L->grad[GATE], h, DP_DTYPE_F32));
    return L->env->ops->rmsnorm_backward_weight(L->env->dev, p->stream, L->cfg->dtype, T, h, p->x, k.rstd, k.dxn,
                                                L->grad[NORM]);
}

/* Each local slot's gradient: its sources' in source order, ((G0 + G1) + G2) ..., as the
 * single-rank reference adds the replicas it stands for; the buffers start the next step at 0. */
static dp_status fold_sources(const dp_block_layer *L, dp_stream *s)
{
    moe_state *ms = L->state;
    const dp_device_ops *o = L->env->ops;
    int El = local_slots(L), ep = ep_size(L);
    size_t m1 = (size_t)L->cfg->moe.expert_hidden * (size_t)L->cfg->hidden;
    for (int e = 0; e < El; e++)
        for (int w = 0; w < NUM_SWIGLU; w++) {
            float *g = L->grad[first_expert_param(L) + NUM_SWIGLU * e + w];
            for (int src = 0; src < ep; src++) {
                const float *b = ms->per_source + ((size_t)src * El + e) * ms->expert_floats + (size_t)w * m1;
                if (src == 0) DP_CHECK(o->copy(L->env->dev, g, b, m1 * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, s));
                else DP_CHECK(o->add(L->env->dev, s, DP_DTYPE_F32, m1, g, b, g));
            }
        }
    return o->memset(L->env->dev, ms->per_source, 0, sizeof(float) * ms->expert_floats * (size_t)El * (size_t)ep, s);
}

/* The slot source `src`'s rows of expert x go to: its replica src mod count_x (choose_replicas). */
static int source_slot(const moe_state *ms, int x, int src)
{
    int first = ms->replica_first[x], n = ms->replica_first[x + 1] - first;
    return ms->replica_slot[first + src % n];
}

/* With replicas and ep > 1, before the fold: every rank's per-source gradients, [source][local
 * slot], to every rank of the expert-parallel group (an all-gather into [rank][source][slot]). */
static dp_status gather_sources(const dp_block_layer *L, dp_stream *s)
{
    const moe_state *ms = plan_of(L);
    int S = local_slots(L), ep = ep_size(L);
    size_t mine = (size_t)ep * (size_t)S * ms->expert_floats;
    size_t *v = malloc(sizeof *v * 4 * (size_t)ep);
    if (!v) return dp_fail(DP_ERR_NOMEM, "out of memory for an all-to-all of %d ranks", ep);
    for (int j = 0; j < ep; j++) v[j] = mine, v[ep + j] = 0, v[2 * ep + j] = mine, v[3 * ep + j] = (size_t)j * mine;
    dp_status st = L->env->link_ops->all_to_all_v(L->env->ep_link[0], ms->per_source, v, v + ep, ms->gathered,
                                                  v + 2 * ep, v + 3 * ep, sizeof(float), s);
    free(v);
    return st;
}

/* With replicas: each source's rows of an expert went to one replica (choose_replicas), so the
 * expert's gradient is its sources' in source order, ((G0 + G1) + G2) ..., as without replicas;
 * every holder of the expert computes that same sum from the gathered per-source gradients (with
 * ep > 1), or copies it from the replica that ran the rows (one rank), so the replicas stay
 * identical and equal to the plan-less layer's. */
static dp_status sum_replicas(const dp_block_layer *L, dp_stream *s)
{
    const moe_state *ms = plan_of(L);
    const dp_device_ops *o = L->env->ops;
    dp_device *dev = L->env->dev;
    int S = local_slots(L), ep = ep_size(L), fp = first_expert_param(L);
    size_t m1 = (size_t)L->cfg->moe.expert_hidden * (size_t)L->cfg->hidden, ef = ms->expert_floats;
    for (int e = 0; e < S; e++) {
        int x = slot_expert(L, first_slot(L) + e), n = ms->replica_first[x + 1] - ms->replica_first[x];
        if (n < 2) continue;
        for (int w = 0; w < NUM_SWIGLU; w++) {
            float *g = L->grad[fp + NUM_SWIGLU * e + w];
            if (ep == 1) {
                int q = source_slot(ms, x, source_rank(L));
                if (q != e)
                    DP_CHECK(o->copy(dev, g, L->grad[fp + NUM_SWIGLU * q + w], m1 * sizeof(float),
                                     DP_COPY_DEVICE_TO_DEVICE, s));
                continue;
            }
            for (int src = 0; src < ep; src++) {
                int q = source_slot(ms, x, src), j = q / S, l = q % S;
                const float *b = ms->gathered + (((size_t)j * ep + src) * S + l) * ef + (size_t)w * m1;
                if (src == 0) DP_CHECK(o->copy(dev, g, b, m1 * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, s));
                else DP_CHECK(o->add(dev, s, DP_DTYPE_F32, m1, g, b, g));
            }
        }
    }
    return DP_OK;
}

static dp_status moe_reduce_grads(const dp_block_layer *L, dp_stream *s)
{
    moe_state *ms = L->state;
    if (!ms) return DP_OK;
    if (ms->replicated && ms->per_source) DP_CHECK(gather_sources(L, s));
    if (ms->per_source) DP_CHECK(fold_sources(L, s));
    if (ms->replicated) DP_CHECK(sum_replicas(L, s));
    return DP_OK;
}

/* Auxiliary-loss-free balancing: the bias's "gradient" holds the step's loads, summed over every
 * copy of the stage like a gradient. */
static dp_status moe_update_state(const dp_block_layer *L, dp_stream *s)
{
    const dp_moe_config *m = &L->cfg->moe;
    if (m->bias_update_speed == 0.0f) return DP_OK;
    return L->env->ops->moe_bias_update(L->env->dev, s, m->experts, L->grad[BIAS], m->bias_update_speed,
                                        L->value[BIAS]);
}

const dp_block_ops dp_block_moe = {
    .abi_version = DP_BLOCK_ABI_VERSION,
    .struct_size = sizeof(dp_block_ops),
    .name = "moe",
    .create = moe_create,
    .destroy = moe_destroy,
    .num_params = moe_num_params,
    .param_spec = moe_param_spec,
    .saved_bytes = moe_saved_bytes,
    .forward = moe_forward,
    .backward_input = moe_backward_input,
    .backward_weight = moe_backward_weight,
    .update_state = moe_update_state,
    .num_whole_params = moe_num_whole_params,
    .reduce_grads = moe_reduce_grads,
    .expert_slots = moe_expert_slots,
    .replan = moe_replan,
};
