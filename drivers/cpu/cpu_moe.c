/* cpu_moe.c: the CPU driver's mixture-of-experts kernels: the DeepSeek-V3 gate (sigmoid scores,
 * group-limited top-k with a fixed tie rule, and its gradient through the selected weights), the
 * dispatch layout (a stable counting sort of (token, k) slots by expert), the weighted combine
 * in k order, SwiGLU, and the balancing bias's update. Every sum has a fixed order. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <math.h>
#include <stdlib.h>

#include "drivers/cpu/cpu_internal.h"

/* one element of an fp32 or bf16 tensor, widened; and one stored, rounded once */
static inline float load_at(dp_dtype t, const void *p, size_t i)
{
    return t == DP_DTYPE_BF16 ? dp_cpu_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_at(dp_dtype t, void *p, size_t i, float v)
{
    if (t == DP_DTYPE_BF16) ((uint16_t *)p)[i] = dp_cpu_f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

dp_status dp_cpu_sigmoid_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y)
{
    (void)dev, (void)s;
    DP_CPU_FLOAT_ONLY(t, "sigmoid_forward");
    for (size_t i = 0; i < n; i++) store_at(t, y, i, sigmoid(load_at(t, x, i)));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the gate */

static dp_status check_routing(int tokens, int experts, int groups, int topk_groups, int topk, const char *what)
{
    if (tokens < 0 || experts < 1 || groups < 1 || experts % groups || topk_groups < 1 || topk_groups > groups ||
        topk < 1 || topk > topk_groups * (experts / groups))
        return dp_fail(DP_ERR_INVALID,
                       "%s: bad routing shape (tokens %d, experts %d in %d groups, %d groups kept, top %d): experts must "
                       "divide into the groups and the kept groups must hold at least top-k experts",
                       what, tokens, experts, groups, topk_groups, topk);
    return DP_OK;
}

/* whether candidate (value a, index ia) ranks before (b, ib): higher value, then lower index */
static inline int ranks_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

/* The index of the best of n values not yet taken (NaN ranks last), or -1 when all are. */
static int best_untaken(const float *v, const unsigned char *taken, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (best < 0 || isnan(v[best]) || (!isnan(v[i]) && ranks_before(v[i], i, v[best], best))) best = i;
    }
    return best;
}

dp_status dp_cpu_moe_topk(dp_device *dev, dp_stream *s, int tokens, int experts, int groups, int topk_groups,
                                 int topk, const float *scores, const float *bias, float route_scale, int32_t *expert,
                                 float *weight)
{
    (void)dev, (void)s;
    DP_CHECK(check_routing(tokens, experts, groups, topk_groups, topk, "moe_topk"));
    int gsize = experts / groups;
    float *biased = malloc(sizeof(float) * (size_t)(experts + groups));
    unsigned char *taken = malloc((size_t)(experts + groups));
    if (!biased || !taken) {
        free(biased), free(taken);
        return dp_fail(DP_ERR_NOMEM, "moe_topk: out of memory for %d experts", experts);
    }
    float *gscore = biased + experts;
    unsigned char *gtaken = taken + experts;
    for (int t = 0; t < tokens; t++) {
        const float *sc = scores + (size_t)t * experts;
        for (int e = 0; e < experts; e++) biased[e] = bias ? sc[e] + bias[e] : sc[e];
        /* each group's score: its best biased score plus its second best */
        for (int g = 0; g < groups; g++) {
            const float *v = biased + (size_t)g * gsize;
            memset(taken, 0, (size_t)gsize);
            int b0 = best_untaken(v, taken, gsize);
            gscore[g] = v[b0];
            if (gsize > 1) {
                taken[b0] = 1;
                gscore[g] = v[b0] + v[best_untaken(v, taken, gsize)];
            }
        }
        /* the kept groups: the others' experts are taken before the selection starts */
        memset(gtaken, 0, (size_t)groups);
        memset(taken, 1, (size_t)experts);
        for (int j = 0; j < topk_groups; j++) {
            int g = best_untaken(gscore, gtaken, groups);
            gtaken[g] = 1;
            memset(taken + (size_t)g * gsize, 0, (size_t)gsize);
        }
        float sum = 0.0f;
        int32_t *ex = expert + (size_t)t * topk;
        float *w = weight + (size_t)t * topk;
        for (int k = 0; k < topk; k++) {
            int e = best_untaken(biased, taken, experts);
            taken[e] = 1;
            ex[k] = e;
            sum += sc[e];
        }
        for (int k = 0; k < topk; k++) w[k] = sc[ex[k]] / sum * route_scale;
    }
    free(biased), free(taken);
    return DP_OK;
}

static dp_status check_experts(int rows, int topk, int experts, const int32_t *expert, const char *what)
{
    for (size_t i = 0; i < (size_t)rows * (size_t)topk; i++)
        if (expert[i] < 0 || expert[i] >= experts)
            return dp_fail(DP_ERR_INVALID, "%s: slot %zu names expert %d, not one of 0..%d", what, i, expert[i],
                           experts - 1);
    return DP_OK;
}

dp_status dp_cpu_moe_topk_backward(dp_device *dev, dp_stream *s, int tokens, int experts, int topk,
                                          const float *scores, const int32_t *expert, const float *dweight,
                                          float route_scale, float *dlogits)
{
    (void)dev, (void)s;
    if (tokens < 0 || experts < 1 || topk < 1 || topk > experts)
        return dp_fail(DP_ERR_INVALID, "moe_topk_backward: bad shape (tokens %d, experts %d, top %d)", tokens, experts,
                       topk);
    DP_CHECK(check_experts(tokens, topk, experts, expert, "moe_topk_backward"));
    for (int t = 0; t < tokens; t++) {
        const float *sc = scores + (size_t)t * experts;
        const int32_t *ex = expert + (size_t)t * topk;
        const float *dw = dweight + (size_t)t * topk;
        float *dl = dlogits + (size_t)t * experts;
        memset(dl, 0, sizeof(float) * (size_t)experts);
        float sum = 0.0f, dot = 0.0f;
        for (int k = 0; k < topk; k++) sum += sc[ex[k]], dot += dw[k] * sc[ex[k]];
        for (int k = 0; k < topk; k++) {
            float sj = sc[ex[k]];
            float ds = route_scale * (dw[k] - dot / sum) / sum;
            dl[ex[k]] = ds * sj * (1.0f - sj);
        }
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * dispatch and combine */

dp_status dp_cpu_moe_permute(dp_device *dev, dp_stream *s, int tokens, int topk, int experts,
                                    const int32_t *expert, int32_t *row_token, int32_t *slot_row, int32_t *counts)
{
    (void)dev, (void)s;
    if (tokens < 0 || topk < 1 || experts < 1)
        return dp_fail(DP_ERR_INVALID, "moe_permute: bad shape (tokens %d, top %d, experts %d)", tokens, topk, experts);
    DP_CHECK(check_experts(tokens, topk, experts, expert, "moe_permute"));
    int n = tokens * topk;
    int32_t *at = calloc((size_t)experts, sizeof *at);
    if (!at) return dp_fail(DP_ERR_NOMEM, "moe_permute: out of memory for %d experts", experts);
    memset(counts, 0, sizeof *counts * (size_t)experts);
    for (int i = 0; i < n; i++) counts[expert[i]]++;
    for (int e = 1; e < experts; e++) at[e] = at[e - 1] + counts[e - 1];
    for (int i = 0; i < n; i++) {
        int r = at[expert[i]]++;
        row_token[r] = i / topk;
        slot_row[i] = r;
    }
    free(at);
    return DP_OK;
}

static dp_status check_slots(int tokens, int topk, int cols, const int32_t *slot_row, const char *what)
{
    if (tokens < 0 || topk < 1 || cols < 0)
        return dp_fail(DP_ERR_INVALID, "%s: bad shape (tokens %d, top %d, columns %d)", what, tokens, topk, cols);
    for (size_t i = 0; i < (size_t)tokens * (size_t)topk; i++)
        if (slot_row[i] < 0) return dp_fail(DP_ERR_INVALID, "%s: negative row %d for slot %zu", what, slot_row[i], i);
    return DP_OK;
}

dp_status dp_cpu_moe_combine(dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols,
                                    const void *rows, const int32_t *slot_row, const float *weight, int accumulate,
                                    void *y)
{
    (void)dev, (void)s;
    DP_CPU_FLOAT_ONLY(t, "moe_combine");
    DP_CHECK(check_slots(tokens, topk, cols, slot_row, "moe_combine"));
    for (int tk = 0; tk < tokens; tk++)
        for (int c = 0; c < cols; c++) {
            size_t yi = (size_t)tk * cols + c;
            float acc = accumulate ? load_at(t, y, yi) : 0.0f;
            for (int k = 0; k < topk; k++) {
                size_t i = (size_t)tk * topk + k;
                float v = load_at(t, rows, (size_t)slot_row[i] * cols + c);
                acc += weight ? weight[i] * v : v;
            }
            store_at(t, y, yi, acc);
        }
    return DP_OK;
}

dp_status dp_cpu_moe_combine_backward(dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols,
                                             const void *rows, const int32_t *slot_row, const float *weight,
                                             const void *dy, void *drows, float *dweight)
{
    (void)dev, (void)s;
    DP_CPU_FLOAT_ONLY(t, "moe_combine_backward");
    DP_CHECK(check_slots(tokens, topk, cols, slot_row, "moe_combine_backward"));
    for (int tk = 0; tk < tokens; tk++)
        for (int k = 0; k < topk; k++) {
            size_t i = (size_t)tk * topk + k, r = (size_t)slot_row[i] * cols, d = (size_t)tk * cols;
            float w = weight ? weight[i] : 1.0f;
            double dot = 0.0;
            for (int c = 0; c < cols; c++) {
                float g = load_at(t, dy, d + c);
                if (dweight) dot += (double)g * load_at(t, rows, r + c);
                store_at(t, drows, r + c, w * g);
            }
            if (dweight) dweight[i] = (float)dot;
        }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * SwiGLU */

dp_status dp_cpu_swiglu_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a,
                                       const void *b, void *y)
{
    (void)dev, (void)s;
    DP_CPU_FLOAT_ONLY(t, "swiglu_forward");
    for (size_t i = 0; i < n; i++) {
        float av = load_at(t, a, i);
        store_at(t, y, i, av * sigmoid(av) * load_at(t, b, i));
    }
    return DP_OK;
}

/* each element reads a, b and dy before writing da and db, so that they may alias dy */
dp_status dp_cpu_swiglu_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a,
                                        const void *b, const void *dy, void *da, void *db)
{
    (void)dev, (void)s;
    DP_CPU_FLOAT_ONLY(t, "swiglu_backward");
    for (size_t i = 0; i < n; i++) {
        float av = load_at(t, a, i), bv = load_at(t, b, i), g = load_at(t, dy, i);
        float sg = sigmoid(av);
        store_at(t, da, i, g * bv * sg * (1.0f + av * (1.0f - sg)));
        store_at(t, db, i, g * av * sg);
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * balancing */

dp_status dp_cpu_moe_bias_update(dp_device *dev, dp_stream *s, int experts, const float *load, float gamma,
                                        float *bias)
{
    (void)dev, (void)s;
    if (experts < 1) return dp_fail(DP_ERR_INVALID, "moe_bias_update: %d experts", experts);
    float sum = 0.0f;
    for (int e = 0; e < experts; e++) sum += load[e];
    float mean = sum / (float)experts;
    for (int e = 0; e < experts; e++)
        bias[e] += mean > load[e] ? gamma : mean < load[e] ? -gamma : 0.0f;
    return DP_OK;
}

dp_status dp_cpu_add_counts(dp_device *dev, dp_stream *s, size_t n, const int32_t *x, float *y)
{
    (void)dev, (void)s;
    for (size_t i = 0; i < n; i++) y[i] += (float)x[i];
    return DP_OK;
}
