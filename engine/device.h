/* device.h: the device interface. A driver fills one versioned table of function pointers
 * (memory, streams and events, and every kernel the model needs); the model is written once
 * against it. The CPU driver implements all of it and is the definition of correct. */
#ifndef DP_DEVICE_H
#define DP_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * ABI
 *
 * The table's first two fields are its ABI version and its size. Members are only ever
 * appended: a caller reads a member only when struct_size covers it. A driver that does not
 * support an operation points it at a stub returning DP_ERR_UNSUPPORTED, never at NULL. */

#define DP_DEVICE_ABI_VERSION 1

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
 * The table. Every member takes the device first and returns a dp_status. Kernels and
 * copies are ordered on the stream given (NULL: the device's default stream); pointers
 * are device memory unless named host_*. Element counts are in elements, not bytes. */

typedef struct dp_device_ops {
    uint32_t abi_version; /* DP_DEVICE_ABI_VERSION */
    uint32_t struct_size; /* sizeof(struct dp_device_ops) as the driver was built */
    const char *name;

    /* --- devices */
    dp_status (*device_count)(int *count);
    dp_status (*open)(const dp_device_config *cfg, dp_device **out);
    dp_status (*close)(dp_device *dev);
    dp_status (*info)(dp_device *dev, dp_device_info *out);

    /* --- memory */
    dp_status (*alloc)(dp_device *dev, size_t bytes, void **ptr); /* aligned to 64 bytes at least */
    dp_status (*free)(dp_device *dev, void *ptr);                 /* NULL is fine */
    dp_status (*copy)(dp_device *dev, void *dst, const void *src, size_t bytes, dp_copy_kind kind,
                      dp_stream *stream);
    dp_status (*memset)(dp_device *dev, void *dst, int byte, size_t bytes, dp_stream *stream);

    /* --- streams and events (two streams per rank carry an overlapped F&B pair) */
    dp_status (*stream_create)(dp_device *dev, dp_stream **out);
    dp_status (*stream_destroy)(dp_device *dev, dp_stream *s);
    dp_status (*stream_synchronize)(dp_device *dev, dp_stream *s); /* host waits for the stream */
    dp_status (*event_create)(dp_device *dev, dp_event **out);
    dp_status (*event_destroy)(dp_device *dev, dp_event *e);
    dp_status (*event_record)(dp_device *dev, dp_event *e, dp_stream *s);
    dp_status (*stream_wait_event)(dp_device *dev, dp_stream *s, dp_event *e); /* s waits, host does not */
    dp_status (*event_query)(dp_device *dev, dp_event *e, int *done);
    dp_status (*event_synchronize)(dp_device *dev, dp_event *e);
    /* Milliseconds between two recorded and completed events. */
    dp_status (*event_elapsed)(dp_device *dev, dp_event *start, dp_event *end, float *ms);

    /* --- dense algebra */
    dp_status (*gemm)(dp_device *dev, dp_stream *s, const dp_gemm_args *g);

    /* --- element-wise (n elements of dtype t) */
    dp_status (*fill)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float value, void *y);
    dp_status (*cast)(dp_device *dev, dp_stream *s, size_t n, dp_dtype src_t, const void *src, dp_dtype dst_t,
                      void *dst);
    dp_status (*add)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,
                     void *y); /* y = a + b (y may alias a or b) */
    dp_status (*scale)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, float alpha, void *y); /* y *= alpha */
    /* GELU, exact (erf) form as torch.nn.GELU(): y = x/2 (1 + erf(x / sqrt 2)). */
    dp_status (*gelu_forward)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y);
    dp_status (*gelu_backward)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x,
                               const void *dy, void *dx); /* dx = dy * gelu'(x) */

    /* --- normalisation: RMSNorm over rows of `cols`: y = x / sqrt(mean(x^2) + eps) * w.
     * rstd (fp32, one per row) is saved by forward for both backwards. */
    dp_status (*rmsnorm_forward)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, float eps,
                                 const void *x, const float *w, void *y, float *rstd);
    dp_status (*rmsnorm_backward_input)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                        const void *x, const float *w, const float *rstd, const void *dy,
                                        void *dx); /* dx written */
    dp_status (*rmsnorm_backward_weight)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                                         const void *x, const float *rstd, const void *dy,
                                         float *dw); /* dw += sum over rows, in row order */

    /* --- losses. *loss is one fp32 in device memory (written, not accumulated). */
    /* MSE, mean over n elements (torch.nn.MSELoss()). */
    dp_status (*mse_forward)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                             const void *target, float *loss);
    dp_status (*mse_backward)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *pred,
                              const void *target, float dloss, void *dpred); /* dpred = dloss 2 (p - t) / n */
    /* Softmax cross-entropy over rows of `cols` classes, mean over rows (torch's CrossEntropyLoss). */
    dp_status (*xent_forward)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *logits,
                              const int32_t *labels, float *loss);
    dp_status (*xent_backward)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols,
                               const void *logits, const int32_t *labels, float dloss, void *dlogits);

    /* --- rows (MoE dispatch and combine). Rows have `cols` elements. */
    dp_status (*gather_rows)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                             const int32_t *index, void *dst); /* dst[i] = src[index[i]] */
    /* dst[index[i]] += src[i]; contributions to one row add in increasing i (deterministic). */
    dp_status (*scatter_add_rows)(dp_device *dev, dp_stream *s, dp_dtype t, int rows, int cols, const void *src,
                                  const int32_t *index, void *dst);

    /* --- optimizers, on fp32 parameters, gradients and state */
    dp_status (*sgd_update)(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad,
                            float *momentum_buf, const dp_sgd_args *a);
    dp_status (*adamw_update)(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *m,
                              float *v, const dp_adamw_args *a);

    /* --- reductions: *out = sum of x^2 (fp32 in device memory), for gradient norms */
    dp_status (*sum_squares)(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, float *out);
} dp_device_ops;

/* The part of the table a caller built against this header needs. */
#define DP_DEVICE_OPS_MIN_SIZE (offsetof(dp_device_ops, sum_squares) + sizeof(void *))

#ifdef __cplusplus
}
#endif
#endif
