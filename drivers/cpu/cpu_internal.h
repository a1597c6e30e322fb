/* cpu_internal.h: what the CPU driver's files share: the device and stream structs, the
 * GEMM entry point and the helpers that keep every kernel deterministic across threads. */
#ifndef DP_CPU_INTERNAL_H
#define DP_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/device.h"
#include "engine/link.h"

/* The portable GEMM's packing buffers, kept between calls. */
typedef struct {
    float *a, *b;
    size_t na, nb;
} dp_gemm_workspace;

struct dp_device {
    int threads;  /* kernel threads (OpenMP and BLAS) */
    int rank;     /* for messages */
    int use_blas; /* 1: CBLAS GEMM, 0: the portable blocked GEMM */
    dp_gemm_workspace gemm_ws; /* a device serves one thread at a time (its streams run in place) */
    float *bf16_scratch;       /* fp32 copies of bf16 tensors for one kernel call, kept between calls */
    size_t bf16_scratch_n;     /* floats in bf16_scratch */
};

/* CPU streams run work at once on the calling thread: queued work is always complete. */
struct dp_stream {
    int unused;
};

struct dp_event {
    double time_ms; /* when it was recorded (monotonic clock) */
    int recorded;
};

extern const dp_device_runtime_ops dp_cpu_runtime_ops; /* cpu_device.c */
extern const dp_device_kernel_ops dp_cpu_kernel_ops;   /* cpu_kernels.c */
extern const dp_link_ops dp_cpu_link_ops;

double dp_cpu_now_ms(void);

/* Devices, memory, streams and events, in cpu_device.c. */
dp_status dp_cpu_device_count(int *count);
dp_status dp_cpu_open(const dp_device_config *cfg, dp_device **out);
dp_status dp_cpu_close(dp_device *dev);
dp_status dp_cpu_info(dp_device *dev, dp_device_info *out);
dp_status dp_cpu_alloc(dp_device *dev, size_t bytes, void **ptr);
dp_status dp_cpu_free(dp_device *dev, void *ptr);
dp_status dp_cpu_copy(dp_device *dev, void *dst, const void *src, size_t bytes, dp_copy_kind kind, dp_stream *s);
dp_status dp_cpu_memset(dp_device *dev, void *dst, int byte, size_t bytes, dp_stream *s);
dp_status dp_cpu_stream_create(dp_device *dev, dp_stream **out);
dp_status dp_cpu_stream_destroy(dp_device *dev, dp_stream *s);
dp_status dp_cpu_stream_synchronize(dp_device *dev, dp_stream *s);
dp_status dp_cpu_event_create(dp_device *dev, dp_event **out);
dp_status dp_cpu_event_destroy(dp_device *dev, dp_event *e);
dp_status dp_cpu_event_record(dp_device *dev, dp_event *e, dp_stream *s);
dp_status dp_cpu_stream_wait_event(dp_device *dev, dp_stream *s, dp_event *e);
dp_status dp_cpu_event_query(dp_device *dev, dp_event *e, int *done);
dp_status dp_cpu_event_synchronize(dp_device *dev, dp_event *e);
dp_status dp_cpu_event_elapsed(dp_device *dev, dp_event *start, dp_event *end, float *ms);

/* GEMM, in cpu_gemm.c. */
dp_status dp_cpu_gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g);
/* The portable blocked GEMM alone (fp32), with `threads` workers; deterministic. */
void dp_cpu_gemm_portable(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc, int threads);
void dp_cpu_gemm_portable_ws(dp_gemm_workspace *ws, int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                             int threads);
void dp_cpu_gemm_workspace_free(dp_gemm_workspace *ws);
/* Whether CBLAS was built in. */
int dp_cpu_have_blas(void);
/* Sets the BLAS library's own thread count when it has one (OpenBLAS, BLIS). */
void dp_cpu_blas_set_threads(int threads);

/* The mixture-of-experts kernels, in cpu_moe.c (contracts in engine/device.h). */
dp_status dp_cpu_sigmoid_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *x, void *y);
dp_status dp_cpu_moe_topk(dp_device *dev, dp_stream *s, int tokens, int experts, int groups, int topk_groups, int topk,
                          const float *scores, const float *bias, float route_scale, int32_t *expert, float *weight);
dp_status dp_cpu_moe_topk_backward(dp_device *dev, dp_stream *s, int tokens, int experts, int topk, const float *scores,
                                   const int32_t *expert, const float *dweight, float route_scale, float *dlogits);
dp_status dp_cpu_moe_permute(dp_device *dev, dp_stream *s, int tokens, int topk, int experts, const int32_t *expert,
                             int32_t *row_token, int32_t *slot_row, int32_t *counts);
dp_status dp_cpu_moe_combine(dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols, const void *rows,
                             const int32_t *slot_row, const float *weight, int accumulate, void *y);
dp_status dp_cpu_moe_combine_backward(dp_device *dev, dp_stream *s, dp_dtype t, int tokens, int topk, int cols,
                                      const void *rows, const int32_t *slot_row, const float *weight, const void *dy,
                                      void *drows, float *dweight);
dp_status dp_cpu_swiglu_forward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,
                                void *y);
dp_status dp_cpu_swiglu_backward(dp_device *dev, dp_stream *s, dp_dtype t, size_t n, const void *a, const void *b,
                                 const void *dy, void *da, void *db);
dp_status dp_cpu_moe_bias_update(dp_device *dev, dp_stream *s, int experts, const float *load, float gamma,
                                 float *bias);
dp_status dp_cpu_add_counts(dp_device *dev, dp_stream *s, size_t n, const int32_t *x, float *y);

/* bf16 storage, in cpu_bf16.c. A bf16 kernel widens its bf16 inputs to fp32 (exact), runs the
 * fp32 kernel and rounds each bf16 output once to nearest even, as the CUDA driver stores its
 * fp32 results: so a bf16 result is a function of the fp32 kernel's result, bit for bit. */
static inline uint16_t dp_cpu_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN, quiet */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float dp_cpu_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void dp_cpu_widen_bf16(const void *src, float *dst, size_t n);
void dp_cpu_round_bf16(const float *src, void *dst, size_t n);
/* The device's fp32 scratch, at least parts * n floats (contents undefined); `what` names the
 * kernel in the message when memory runs out. Valid until the device's next kernel call. */
dp_status dp_cpu_scratch(dp_device *dev, size_t n, size_t parts, const char *what, float **out);
void dp_cpu_scratch_free(dp_device *dev);

/* Tensors are fp32 or bf16 (and i32 indices where a kernel says so); anything else is refused plainly. */
#define DP_CPU_FLOAT_ONLY(t, what)                                                                        \
    do {                                                                                                  \
        if ((t) != DP_DTYPE_F32 && (t) != DP_DTYPE_BF16)                                                  \
            return dp_fail(DP_ERR_UNSUPPORTED,                                                            \
                           "cpu driver: %s supports fp32 and bf16 tensors, not dtype %d (%s)", (what),   \
                           (int)(t), dp_dtype_name(t));                                                   \
    } while (0)

/* Hot loops are compiled for the wider vector units where the machine has them (GCC's
 * function clones; not under the sanitizers, whose runtimes do not support them). Every clone
 * does the same operations in the same order, so results do not depend on the one chosen. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define DP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DP_CLONES
#endif

#endif
