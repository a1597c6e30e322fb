/* block.h: what a block kind is to a stage. A kind is one ops table in one file
 * (engine/block_<name>.c): its parameters, the bytes it keeps per micro-batch, forward,
 * backward for the input and backward for the weights; and one row in DP_BLOCK_KINDS (model.h). */
#ifndef DP_BLOCK_H
#define DP_BLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The table's first two fields are its version and its size; members are only appended. */
#define DP_BLOCK_ABI_VERSION 1

typedef enum {
    DP_PARAM_INIT_LINEAR = 0, /* uniform in [-1/sqrt(cols), 1/sqrt(cols)), as torch.nn.Linear */
    DP_PARAM_INIT_ONES = 1,   /* a norm's weight */
    DP_PARAM_INIT_ZEROS = 2,  /* a bias, a state */
} dp_param_init;

/* One parameter of a layer, as its kind declares it: a rows x cols fp32 matrix (a vector is
 * 1 x n). The stage names it "block<layer>.<name>", allocates it and its gradient, and fills it
 * from the seeded generator. */
typedef struct {
    const char *name; /* "linear1" */
    size_t rows, cols;
    dp_param_init init;
    int gemm_operand; /* 1: GEMMs read it, so in mixed precision it gets a copy in the model's dtype */
    /* 1: state the kind updates itself after each step (update_state), which the optimizer leaves
     * alone (a PyTorch buffer: MoE's balancing bias); its "gradient" holds what the passes gather
     * for the update, summed over the copies like a gradient */
    int buffer;
    /* the parameter's place in the layer as one rank holding all of it lists it, which picks its
     * initial values, when that is not j (a rank holding some of the experts); 0: j */
    int init_index;
    int sharded; /* 1: only this expert-parallel rank holds it (an expert's weight) */
    char name_storage[32]; /* where param_spec may write a name made on the fly (name points here) */
} dp_block_param_spec;

/* One layer of a stage: an instance of a kind, with its parameters in place. */
typedef struct dp_block_layer {
    const struct dp_block_ops *ops;
    const dp_stage_env *env;    /* device, streams, links */
    const dp_model_config *cfg;
    int stage;                  /* the stage's index in the pipeline */
    int index;                  /* the layer's place in its stage */
    int layer;                  /* its place in the model: stage * layers_per_stage + index */
    /* [the kind's num_params] filled by the stage before saved_bytes and the passes: each
     * parameter as kernels read it (its copy in the model's dtype for a GEMM operand in mixed
     * precision, else the fp32 value), the fp32 master value, and the fp32 gradient */
    const void *const *w;
    float *const *value;
    float *const *grad;
    void *state; /* the kind's own (create sets it) */
} dp_block_layer;

/* One micro-batch's pass through one layer. x, y, dy and dx are [tokens x hidden] in the
 * model's dtype. */
typedef struct {
    dp_stream *stream;
    dp_link *link;   /* the env's expert-parallel link for this stream (NULL: none) */
    const void *x;   /* the layer's input */
    void *y;         /* its output (forward writes it) */
    void *dy;        /* the gradient of y (the backwards read it) */
    void *dx;        /* the gradient of x (backward_input writes it; NULL when nobody needs it) */
    void *saved;     /* this micro-batch's saved_bytes for the layer, 256-byte aligned */
    int phase;       /* the phase to run: 0, then one more after each DP_PHASE_COMM */
    /* --- appended members */
    /* A phase that stops at DP_PHASE_COMM may leave here the exchange it started on `link`
     * (iall_to_all_v's request): the stage waits for it before it runs the next phase, so that
     * the wait comes as late as it can. NULL on entry to every phase. */
    dp_request *request;
} dp_block_pass;

/* A pass returns DP_PHASE_COMM in *next when it stopped at a communication point (it has
 * started a dispatch or a combine, left in flight in pass->request where the link can): the
 * stage returns to its caller, who
 * may run another micro-batch's work meanwhile, and calls the pass again with phase + 1.
 * *next is DP_PHASE_DONE on entry, so a block of one phase never touches it. */
typedef struct dp_block_ops {
    uint32_t abi_version; /* DP_BLOCK_ABI_VERSION */
    uint32_t struct_size; /* sizeof(struct dp_block_ops) */
    const char *name;     /* "mlp": what --block and messages call it */
    /* Per-layer state beyond the parameters (placement, buffers, events): create may set
     * layer->state; both are dp_block_no_state for a kind without any. The parameters are not
     * yet allocated when create runs. */
    dp_status (*create)(dp_block_layer *layer);
    void (*destroy)(dp_block_layer *layer);
    int (*num_params)(const dp_block_layer *layer);
    void (*param_spec)(const dp_block_layer *layer, int j, dp_block_param_spec *out);
    /* Bytes kept per micro-batch from forward to the backwards (and for their own scratch). */
    size_t (*saved_bytes)(const dp_block_layer *layer);
    /* x -> y, keeping what the backwards need in saved */
    dp_status (*forward)(const dp_block_layer *layer, dp_block_pass *pass, dp_phase *next);
    /* dy -> dx (when dx is not NULL), keeping what backward_weight needs in saved */
    dp_status (*backward_input)(const dp_block_layer *layer, dp_block_pass *pass, dp_phase *next);
    /* dy, x and saved -> the gradients, accumulated (beta = 1) */
    dp_status (*backward_weight)(const dp_block_layer *layer, dp_block_pass *pass, dp_phase *next);
    /* After the step's gradients are summed over every copy and the optimizer has stepped:
     * updates the kind's buffers from what they gathered (NULL: the kind has none). */
    dp_status (*update_state)(const dp_block_layer *layer, dp_stream *s);
    /* Parameters as one rank holding all of the layer lists them (NULL: num_params). */
    int (*num_whole_params)(const dp_block_layer *layer);
    /* Before the gradients are summed across ranks: folds what the kind kept apart into them
     * (expert gradients kept per source rank; NULL: nothing). */
    dp_status (*reduce_grads)(const dp_block_layer *layer, dp_stream *s);
    /* A kind holding expert slots (MoE): the layer's parameters of its local slot i are
     * *first + i x *per .. + *per - 1 (in its own numbering); returns how many local slots it
     * holds (NULL: none). */
    int (*expert_slots)(const dp_block_layer *layer, int *first, int *per);
    /* Between steps, after the stage's placement (cfg->moe's plan arrays, which the stage owns)
     * changed and the slots' tensors were moved to match it: rebuilds what the kind derives
     * from the placement (NULL: nothing). The parameters' names then follow param_spec. */
    dp_status (*replan)(dp_block_layer *layer);
} dp_block_ops;

/* The built-in kinds, by dp_block_kind (engine/block_table.c). */
extern const dp_block_ops *const dp_block_table[DP_BLOCK_NUM_KINDS];

/* create and destroy of a kind without state. */
dp_status dp_block_no_state_create(dp_block_layer *layer);
void dp_block_no_state_destroy(dp_block_layer *layer);

/* ----------------------------------------------------------------------------
 * what blocks are built from */

/* Lays regions out one after another from base, each aligned to 256 bytes so that kernels can
 * use their widest loads; with base NULL it only counts (at is then the bytes needed). */
typedef struct {
    char *base;
    size_t at;
} dp_carver;

static inline void *dp_carve(dp_carver *c, size_t bytes)
{
    c->at = (c->at + 255) & ~(size_t)255;
    void *p = c->base ? c->base + c->at : NULL;
    c->at += bytes;
    return p;
}

/* Linear without bias on [tokens x in] row-major activations, W [out x in]; activations and
 * W in the model's dtype, accumulation in fp32. y = x W^T */
dp_status dp_linear_forward(const dp_block_layer *layer, dp_stream *s, const void *x, const void *w, void *y, int in,
                            int out);
/* dx[T x in] = dy[T x out] W[out x in] */
dp_status dp_linear_backward_input(const dp_block_layer *layer, dp_stream *s, const void *dy, const void *w, void *dx,
                                   int in, int out);
/* dW[out x in] += dy^T x, into the fp32 gradient */
dp_status dp_linear_backward_weight(const dp_block_layer *layer, dp_stream *s, const void *dy, const void *x,
                                    float *dw, int in, int out);

#ifdef __cplusplus
}
#endif
#endif
