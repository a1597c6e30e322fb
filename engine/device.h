/* device.h: the device interface. A driver fills two versioned tables of function pointers,
 * the runtime (memory, streams, events) and the kernels the model needs; the model is written
 * once against the engine's complete view of both. The CPU driver implements all of it and is
 * the definition of correct. */
#ifndef DP_DEVICE_H
#define DP_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * Types shared with the link interface */

typedef enum {
    DP_DTYPE_F32 = 0,  /* the reference type */
    DP_DTYPE_BF16 = 1, /* storage only: arithmetic and accumulation in fp32 */
    DP_DTYPE_I32 = 2,  /* indices and labels */
} dp_dtype;

/* Bytes per element of a dtype (0 for an unknown one). */
static inline size_t dp_dtype_size(dp_dtype t)
{
    return t == DP_DTYPE_F32 || t == DP_DTYPE_I32 ? 4 : t == DP_DTYPE_BF16 ? 2 : 0;
}

/* "fp32", "bf16", "int32" ("?" for an unknown one), for messages and reports. */
static inline const char *dp_dtype_name(dp_dtype t)
{
    return t == DP_DTYPE_F32 ? "fp32" : t == DP_DTYPE_BF16 ? "bf16" : t == DP_DTYPE_I32 ? "int32" : "?";
}

typedef struct dp_device dp_device; /* one opened device (per rank), owned by the driver */
typedef struct dp_stream dp_stream; /* an in-order queue of work on a device */
typedef struct dp_event dp_event;   /* a point in a stream that others can wait for */

typedef struct {
    int ordinal;     /* which device of this driver (GPU index); 0 for the CPU */
    int threads;     /* CPU worker threads for kernels (0: the driver decides) */
    int rank;        /* the pipeline rank using this device, for messages only */
    uint32_t flags;  /* DP_DEVICE_* */
} dp_device_config;

enum {
    DP_DEVICE_ALLOW_TF32 = 1u << 0, /* fp32 GEMMs may use TF32 (off by default: fp32 means fp32) */
};

typedef struct {
    char name[128];         /* "cpu (2 threads, OpenBLAS)", "NVIDIA H100 80GB HBM3" */
    size_t total_memory;    /* bytes; 0 when unknown */
    int supports_bf16;      /* kernels accept DP_DTYPE_BF16 activations */
    int concurrent_streams; /* 1 when two streams really run at once (GPU); 0 when they serialise */
} dp_device_info;

typedef enum {
    DP_COPY_HOST_TO_DEVICE = 0,
    DP_COPY_DEVICE_TO_HOST = 1,
    DP_COPY_DEVICE_TO_DEVICE = 2,
} dp_copy_kind;

/* ----------------------------------------------------------------------------
 * Kernel arguments
 *
 * All matrices are row-major. GEMM: C[m x n] = alpha * op(A)[m x k] * op(B)[k x n] + beta * C,
 * op(X) = X or X^T; lda/ldb/ldc are row strides of the matrices as stored. The compute type is
 * always fp32. beta = 1 accumulates (weight gradients); beta = 0 ignores C's old contents (even
 * NaN). Results must be deterministic: the same call on the same inputs gives the same bits,
 * whatever the number of threads, so that pipelined runs equal single-rank runs. */

typedef struct {
    int trans_a, trans_b;
    int m, n, k;
    float alpha, beta;
    const void *a;
    int lda;
    dp_dtype a_type;
    const void *b;
    int ldb;
    dp_dtype b_type;
    void *c;
    int ldc;
    dp_dtype c_type;
} dp_gemm_args;

/* AdamW (decoupled weight decay, Loshchilov & Hutter; PyTorch's torch.optim.AdamW):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= lr * wd * p;  p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps) */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int step; /* from 1 */
} dp_adamw_args;

/* SGD with optional momentum (PyTorch's convention: buf = mu buf + g; p -= lr buf) and
 * L2 weight decay added to the gradient. momentum_buf may be NULL when momentum is 0. */
typedef struct {
    float lr, momentum, weight_decay;
} dp_sgd_args;

/* ----------------------------------------------------------------------------
 * The tables
 *
 * A driver fills two tables: the runtime (devices, memory, streams, events), which is stable,
 * and the kernels, which grow with the model (MoE adds routing, row permutations, SwiGLU).
 * Each opens with its ABI version and its size as the driver was built, and members are only
 * ever appended to the end of their table, so a driver built against an older header still
 * loads: what its tables lack, the engine treats as unsupported.
 *
 * The members are listed once, below, as X(name, (parameters)); from these lists come both
 * tables, the engine's complete view of a driver (dp_device_ops) and the stubs that stand in
 * for what a driver lacks. Every member takes the device first (device_count excepted) and
 * returns a dp_status. Kernels and copies are ordered on the stream given (NULL: the device's
 * default stream); pointers are device memory unless named host_*. Element counts are in
 * elements, not bytes. To add a kernel: append one X(...) line to DP_DEVICE_KERNEL_OPS, then
 * fill it in each driver's kernel table (a driver without it points it at its
 * dp_unsupported_NAME stub). */

#define DP_DEVICE_RUNTIME_ABI_VERSION 1
#define DP_DEVICE_KERNEL_ABI_VERSION 1

#define DP_DEVICE_RUNTIME_OPS(X)                                                                          \
    /* --- devices */                                                                                     \
    X(device_count, (int *count))                                                                         \
    X(open, (const dp_device_config *cfg, dp_device **out))                                               \
    X(close, (dp_device *dev))                                                                            \
    X(info, (dp_device *dev, dp_device_info *out))                                                        \
    /* --- memory */                                                                                      \
    X(alloc, (dp_device *dev, size_t bytes, void **ptr)) /* aligned to 64 bytes at least */               \
    X(free, (dp_device *dev, void *ptr))                 /* NULL is fine */                               \
    X(copy, (dp_device *dev, void *dst, const void *src, size_t bytes, dp_copy_kind kind, dp_stream *stream)) \
    X(memset, (dp_device *dev, void *dst, int byte, size_t bytes, dp_stream *stream))                     \
    /* --- streams and events (two streams per rank carry an overlapped F&B pair) */                      \
    X(stream_create, (dp_device *dev, dp_stream **out))                                                   \
    X(stream_destroy, (dp_device *dev, dp_stream *s))                                                     \
    X(stream_synchronize, (dp_device *dev, dp_stream *s)) /* host waits for the stream */                 \
    X(event_create, (dp_device *dev, dp_event **out))                                                     \
    X(event_destroy, (dp_device *dev, dp_event *e))                                                       \
    X(event_record, (dp_device *dev, dp_event *e, dp_stream *s))                                          \
    X(stream_wait_event, (dp_device *dev, dp_stream *s, dp_event *e)) /* s waits, host does not */        \
    X(event_query, (dp_device *dev, dp_event *e, int *done))                                              \
    X(event_synchronize, (dp_device *dev, dp_event *e))                                                   \
    /* Milliseconds between two recorded and completed events. */                                        \
    X(event_elapsed, (dp_device *dev, dp_event *start, dp_event *end, float *ms))

#define DP_DEVICE_KERNEL_OPS(X)                                                                           \
    /* --- dense algebra */                                                                               \
    X(gemm, (dp_device *dev, dp_stream *s, const dp_gemm_args *g))                                        \
    /* --- element-wise (n elements of dtype t) */                                                        \
    X(fill, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float value, void *y))                   \
    X(cast, (dp_device *dev, dp_stream *s, size_t n, dp_dtype src_t, const void *src, dp_dtype dst_t,     \
             void *dst))                                                                                  \
    /* y = a + b (y may alias a or b) */                                                                  \
    X(add, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b, void *y))   \
    X(scale, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float alpha, void *y)) /* y *= alpha */ \
    /* GELU, exact (erf) form as torch.nn.GELU(): y = x/2 (1 + erf(x / sqrt 2)). */                       \
    X(gelu_forward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y))         \
    /* dx = dy * gelu'(x) */                                                                              \
    X(gelu_backward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, const void *dy,  \
                      void *dx))                                                                          \
    /* --- normalisation: RMSNorm over rows of `cols`: y = x / sqrt(mean(x^2) + eps) * w.                 \
     * rstd (fp32, one per row) is saved by forward for both backwards. */                                \
    X(rmsnorm_forward, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, float eps,          \
                        const void *x, const float *w, void *y, float *rstd))                             \
    /* dx written */                                                                                      \
    X(rmsnorm_backward_input, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,              \
                               const void *x, const float *w, const float *rstd, const void *dy,          \
                               void *dx))                                                                 \
    /* dw += sum over rows, in row order */                                                               \
    X(rmsnorm_backward_weight, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,             \
                                const void *x, const float *rstd, const void *dy, float *dw))             \
    /* --- losses. *loss is one fp32 in device memory (written, not accumulated).                         \
     * MSE, mean over n elements (torch.nn.MSELoss()); dpred = dloss 2 (p - t) / n. */                    \
    X(mse_forward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,                 \
                    const void *target, float *loss))                                                     \
    X(mse_backward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,                \
                     const void *target, float dloss, void *dpred))                                       \
    /* Softmax cross-entropy over rows of `cols` classes, mean over rows (torch's CrossEntropyLoss). */   \
    X(xent_forward, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,    \
                     const int32_t *labels, float *loss))                                                 \
    X(xent_backward, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,   \
                      const int32_t *labels, float dloss, void *dlogits))                                 \
    /* --- rows (MoE dispatch and combine). Rows have `cols` elements. dst[i] = src[index[i]] */          \
    X(gather_rows, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,        \
                    const int32_t *index, void *dst))                                                     \
    /* dst[index[i]] += src[i]; contributions to one row add in increasing i (deterministic). */          \
    X(scatter_add_rows, (dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,   \
                         const int32_t *index, void *dst))                                                \
    /* --- optimizers, on fp32 parameters, gradients and state */                                         \
    X(sgd_update, (dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad,               \
                   float *momentum_buf, const dp_sgd_args *a))                                            \
    X(adamw_update, (dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *m,   \
                     float *v, const dp_adamw_args *a))                                                   \
    /* --- reductions: *out = sum of x^2 (fp32 in device memory), for gradient norms */                   \
    X(sum_squares, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, float *out))            \
    /* --- mixture of experts (DeepSeek-V3's gate and SwiGLU experts; engine/block_moe.c).                \
     * y = sigmoid(x), n elements of dtype t (the gate's scores, from its fp32 logits) */                 \
    X(sigmoid_forward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y))      \
    /* Group-limited top-k of each of `tokens` rows of `experts` fp32 scores, selecting on               \
     * scores + bias (bias NULL: zeros): the experts in `groups` equal groups, each group scored by the    \
     * sum of its two best biased scores (its one, for groups of one), the best `topk_groups` groups kept,  \
     * then the best `topk` experts of those. Ties go to the lower index (groups and experts), so every    \
     * driver selects alike. expert[t x topk + k] is the k-th selected (best first); weight likewise:      \
     * route_scale x score / (the sum of the selected unbiased scores, added in k order). */                \
    X(moe_topk, (dp_device *dev, dp_stream *s, int tokens, int experts, int groups, int topk_groups, int topk, \
                 const float *scores, const float *bias, float route_scale, int32_t *expert, float *weight))  \
    /* The gradient of the gate's logits through the selected weights only: dlogits [tokens x experts]   \
     * fp32, zero where not selected; with S the sum of the selected scores and D = sum_k dweight_k s_k    \
     * (both in k order), dlogit_j = route_scale / S (dweight_j - D / S) s_j (1 - s_j). */                \
    X(moe_topk_backward, (dp_device *dev, dp_stream *s, int tokens, int experts, int topk, const float *scores, \
                          const int32_t *expert, const float *dweight, float route_scale, float *dlogits))   \
    /* The dispatch layout: the tokens x topk (token, k) slots sorted by expert, stably (within an       \
     * expert in slot order t x topk + k, the global token order). Row r of the sorted order carries      \
     * token row_token[r] (for gather_rows); slot i is row slot_row[i]; counts[e] rows go to expert e. */  \
    X(moe_permute, (dp_device *dev, dp_stream *s, int tokens, int topk, int experts, const int32_t *expert,  \
                    int32_t *row_token, int32_t *slot_row, int32_t *counts))                              \
    /* y[t] = (accumulate ? y[t] : 0) + sum over k in k order of weight[t x topk + k] (NULL: 1) x         \
     * rows[slot_row[t x topk + k]], in fp32 rounded once to dtype t; rows of `cols`. */                  \
    X(moe_combine, (dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols, const void *rows, \
                    const int32_t *slot_row, const float *weight, int accumulate, void *y))                \
    /* Its backward: drows[slot_row[i]] = weight[i] dy[i / topk] (dtype t) and dweight[i] (fp32) =         \
     * the dot product of dy[i / topk] and rows[slot_row[i]], summed in a fixed order. */                  \
    X(moe_combine_backward, (dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols,      \
                             const void *rows, const int32_t *slot_row, const float *weight, const void *dy,  \
                             void *drows, float *dweight))                                                 \
    /* SwiGLU's product: y = silu(a) b = a sigmoid(a) b, n elements */                                    \
    X(swiglu_forward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,   \
                       void *y))                                                                          \
    /* da = dy b sigmoid(a) (1 + a (1 - sigmoid(a))), db = dy silu(a); da and db may alias dy */           \
    X(swiglu_backward, (dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,  \
                        const void *dy, void *da, void *db))                                              \
    /* Auxiliary-loss-free balancing (DeepSeek-V3): bias[e] += gamma sign(mean load - load[e]), with the   \
     * mean the fp32 sum of `load` in index order over `experts` (sign(0) = 0) */                          \
    X(moe_bias_update, (dp_device *dev, dp_stream *s, int experts, const float *load, float gamma, float *bias)) \
    /* y[i] += (float)x[i], n int32 counts into fp32 (exact below 2^24) */                                \
    X(add_counts, (dp_device *dev, dp_stream *s, size_t n, const int32_t *x, float *y))

#define DP_DEVICE_OP_MEMBER_(name, params) dp_status(*name) params;

/* What a driver provides: devices, memory, streams and events. */
typedef struct dp_device_runtime_ops {
    uint32_t abi_version; /* DP_DEVICE_RUNTIME_ABI_VERSION */
    uint32_t struct_size; /* sizeof(dp_device_runtime_ops) as the driver was built */
    const char *name;     /* "cpu", "cuda" */
    DP_DEVICE_RUNTIME_OPS(DP_DEVICE_OP_MEMBER_)
} dp_device_runtime_ops;

/* What a driver provides: the kernels. */
typedef struct dp_device_kernel_ops {
    uint32_t abi_version; /* DP_DEVICE_KERNEL_ABI_VERSION */
    uint32_t struct_size; /* sizeof(dp_device_kernel_ops) as the driver was built */
    DP_DEVICE_KERNEL_OPS(DP_DEVICE_OP_MEMBER_)
} dp_device_kernel_ops;

/* What the engine calls through (dp_driver.device): both tables of one driver in one struct,
 * complete for this header. The registry builds it when it loads a driver; every member is
 * callable, those the driver lacks answer DP_ERR_UNSUPPORTED. Never crosses a module boundary,
 * so it carries no ABI fields of its own. */
typedef struct dp_device_ops {
    const char *name;
    DP_DEVICE_RUNTIME_OPS(DP_DEVICE_OP_MEMBER_)
    DP_DEVICE_KERNEL_OPS(DP_DEVICE_OP_MEMBER_)
} dp_device_ops;

/* The runtime members that this header's ABI 1 defines are required (a device nobody can
 * allocate on is no device); runtime members appended later, and every kernel, are optional. */
#define DP_DEVICE_RUNTIME_OPS_MIN_SIZE (offsetof(dp_device_runtime_ops, event_elapsed) + sizeof(void *))
#define DP_DEVICE_KERNEL_OPS_MIN_SIZE offsetof(dp_device_kernel_ops, gemm)

/* Whether a driver's table, as the driver was built, reaches `member` (a table built against
 * an older header is shorter). Works on any versioned table: dp_device_runtime_ops,
 * dp_device_kernel_ops, dp_link_ops. The address arithmetic stands for offsetof, which needs
 * the table's type; nothing is read beyond struct_size. */
#define DP_HAS(table, member)                                                                              \
    ((size_t)((const char *)&(table)->member - (const char *)(table)) + sizeof((table)->member) <=          \
     (size_t)(table)->struct_size)

/* The stubs (engine/device_stubs.c): dp_unsupported_NAME has member NAME's signature and
 * returns DP_ERR_UNSUPPORTED with a message naming NAME. A driver points a member it does not
 * support at its stub; the registry points the members a driver's tables lack at them. */
#define DP_DEVICE_OP_STUB_(name, params) dp_status dp_unsupported_##name params;
DP_DEVICE_RUNTIME_OPS(DP_DEVICE_OP_STUB_)
DP_DEVICE_KERNEL_OPS(DP_DEVICE_OP_STUB_)

/* Whether a member of the engine's view does real work on this driver. */
#define DP_SUPPORTS(ops, member) ((ops)->member != dp_unsupported_##member)

/* Fills *out, the engine's view, from a driver's two tables: each member the tables reach and
 * set, else its stub. The tables must have been checked (ABI, sizes) by the caller. */
void dp_device_ops_resolve(const dp_device_runtime_ops *runtime, const dp_device_kernel_ops *kernels,
                           dp_device_ops *out);

#ifdef __cplusplus
}
#endif
#endif
