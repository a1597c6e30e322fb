/* model.h: the model, written once against the device interface. A stage is a list of layers,
 * each a block of some kind (engine/block.h: DualPipe's example MLP, a pre-norm residual MLP);
 * a stage runs forward, backward_input and backward_weight (the zero-bubble split) on one
 * micro-batch held in a slot that keeps what the backwards need, in phases that may stop where
 * a block communicates. */
#ifndef DP_MODEL_H
#define DP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/device.h"
#include "engine/link.h"
#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The block kinds, one row each: X(ENUM, name), where engine/block_<name>.c exports the kind's
 * ops table dp_block_<name> (engine/block.h). Adding a kind is its file and its row, appended
 * here so that the kinds' numbers stay what they were. */
#define DP_BLOCK_KINDS(X)                                                                        \
    X(MLP, mlp)           /* y = Linear2(GELU(Linear1(x))), no bias: DualPipe's example stage */ \
    X(RESIDUAL, residual) /* y = x + Linear2(GELU(Linear1(RMSNorm(x)))) */                        \
    X(MOE, moe)           /* y = x + MoE(RMSNorm(x)): DeepSeek-V3's gate, SwiGLU experts */

typedef enum {
#define DP_BLOCK_ENUM_(K, name) DP_BLOCK_##K,
    DP_BLOCK_KINDS(DP_BLOCK_ENUM_)
#undef DP_BLOCK_ENUM_
    DP_BLOCK_NUM_KINDS
} dp_block_kind;

/* A kind's name ("mlp"), or NULL for a number that is no kind. */
const char *dp_block_kind_name(dp_block_kind kind);
/* The kind named `name`; DP_ERR_INVALID, listing the kinds, when there is none. */
dp_status dp_block_kind_parse(const char *name, dp_block_kind *out);

/* Layers a model may list kinds for (stages x layers per stage). */
#define DP_MAX_LAYERS 1024
/* Layers one stage may hold (layers_per_stage). */
#define DP_MAX_STAGE_LAYERS 64
/* Routed experts of an MoE layer. */
#define DP_MAX_EXPERTS 4096

/* A mixture-of-experts layer (engine/block_moe.c), as DeepSeek-V3 makes it: scores
 * s = sigmoid(x Wg^T); experts selected on s + b (b a per-expert bias without gradient), group
 * limited (the experts in `groups` groups, each scored by the sum of its two best, the best
 * `topk_groups` kept), the best `topk`; weights route_scale s_k / (sum of the selected s);
 * routed SwiGLU experts w2(silu(w1 x) * w3 x) and optionally shared ones beside them. After
 * each step b_e += bias_update_speed x sign(mean load - load_e), from the step's counts. */
typedef struct {
    int experts;             /* routed experts; 0: no MoE layer (dense, the default) */
    int topk;                /* experts per token (0: 2, or 1 with one expert) */
    int groups;              /* expert groups (0: 1, no group limit) */
    int topk_groups;         /* groups kept per token (0: all) */
    int expert_hidden;       /* an expert's inner width (0: the model's ffn / topk, at least 1) */
    int shared_experts;      /* shared experts, as one SwiGLU of shared_experts x expert_hidden (0: none) */
    float route_scale;       /* (0: 1) */
    float bias_update_speed; /* gamma of the balancing bias (0: b stays 0) */
    /* which layers of the model are MoE (layer numbers over all stages): with moe_layers_set,
     * layer i is when moe_layers[i] is nonzero; else every layer but the first, as DeepSeek-V3
     * keeps its first layers dense. The others are of the model's `block` kind. */
    int moe_layers_set;
    unsigned char moe_layers[DP_MAX_LAYERS];
    /* Placement by an EPLB plan (plan_phy2log NULL: none, expert-parallel rank r holds experts
     * r x E / ep ..): each MoE layer, in layer order, has plan_slots physical slots, slot p
     * holding logical expert plan_phy2log[layer x plan_slots + p] (every expert at least once;
     * more than once: replicas). With expert parallelism over ep ranks (plan_ranks must be ep)
     * rank r holds slots r x plan_slots / ep ..; without, one rank holds them all, whatever
     * plan_ranks. The rows of expert-parallel rank r's micro-batches that chose e go to e's replica
     * r mod count_e (without expert parallelism: replica 0), the replicas in the order
     * plan_replica gives ([layer x plan_slots]: slot p is replica plan_replica[..p] of its
     * expert, as the plan's log2phy lists them; NULL: slot order): each source's rows of an
     * expert run as one GEMM, and every holder sums the expert's per-source weight gradients in
     * source order, as without a plan, so replicas stay identical and any placement (replicated
     * or not) trains bit-equal to none. Each
     * stage copies the arrays (a placement changed while training is the stage's own,
     * dp_stage_set_placement); the caller's are not written. */
    int plan_layers, plan_slots, plan_ranks;
    const int32_t *plan_phy2log;
    const int32_t *plan_replica;
} dp_moe_config;

typedef enum {
    DP_LOSS_MSE = 0,  /* mean squared error against fp32 targets of the output's shape */
    DP_LOSS_XENT = 1, /* softmax cross-entropy over the hidden width as classes, int32 labels per row */
} dp_loss_kind;

typedef struct {
    int hidden;           /* h */
    int ffn;              /* inner width (0: 4h) */
    int layers_per_stage; /* blocks per stage (0: 1) */
    dp_block_kind block;  /* every layer's kind, unless layer_kind lists them */
    dp_loss_kind loss;
    int tokens;     /* rows of a micro-batch */
    uint64_t seed;  /* parameters are a pure function of (seed, stage, parameter, element) */
    float norm_eps; /* RMSNorm epsilon (0: 1e-6) */
    /* Activations and the weights the GEMMs read: DP_DTYPE_F32 (0, the default), or
     * DP_DTYPE_BF16 for mixed precision: bf16 activations and bf16 copies of the weights,
     * GEMMs accumulating in fp32, while parameters, gradients, optimizer state and losses
     * stay fp32 (the copies are refreshed after every optimizer step). */
    dp_dtype dtype;
    /* A kind per layer, for a model that mixes them (DeepSeek-V3 keeps its first layers dense):
     * layer_kind[i] is layer i of the whole model, stage s's layer b being
     * s * layers_per_stage + b, and num_layer_kinds is then stages x layers_per_stage.
     * 0: every layer is `block`. */
    int num_layer_kinds;
    dp_block_kind layer_kind[DP_MAX_LAYERS];
    /* Mixture of experts: with moe.experts > 0, the layers moe names are of kind DP_BLOCK_MOE
     * (unless layer_kind lists the kinds). */
    dp_moe_config moe;
} dp_model_config;

typedef enum { DP_OPT_NONE = 0, DP_OPT_SGD = 1, DP_OPT_ADAMW = 2 } dp_optimizer_kind;

typedef struct {
    dp_optimizer_kind kind;
    float lr;
    float beta1, beta2, eps, weight_decay; /* AdamW */
    float momentum;                        /* SGD */
} dp_optimizer_config;

/* Fills unset fields with defaults and checks the rest; the message names the field. */
dp_status dp_model_config_check(dp_model_config *cfg);
/* The parameters (floats) of layers 0 .. layers - 1 of the model as one rank holding all of them
 * (no expert parallelism, no placement plan), counted from the kinds' shapes without allocating
 * them; cfg is checked on a copy. DP_OK, or what is wrong with cfg. */
dp_status dp_model_param_floats(const dp_model_config *cfg, int layers, uint64_t *out);
/* The kind of layer `layer` of the model (counted over all stages): layer_kind's when it lists
 * them, else DP_BLOCK_MOE for the MoE layers (dp_moe_config), else `block`. */
dp_block_kind dp_model_layer_kind(const dp_model_config *cfg, int layer);
/* AdamW(lr 1e-3, 0.9, 0.999, 1e-8, wd 0.01) unless set. */
void dp_optimizer_config_defaults(dp_optimizer_config *o);

/* Elements and bytes (in cfg->dtype) of one micro-batch's input/output (tokens x hidden),
 * and the bytes of its target on the device (MSE: tokens x hidden in cfg->dtype;
 * cross-entropy: tokens int32 labels). */
size_t dp_model_act_elems(const dp_model_config *cfg);
size_t dp_model_act_bytes(const dp_model_config *cfg);
size_t dp_model_target_bytes(const dp_model_config *cfg);
/* Bytes of one micro-batch's target as the host hands it over: fp32 values for MSE (whatever
 * the model's dtype), int32 labels for cross-entropy. */
size_t dp_model_host_target_bytes(const dp_model_config *cfg);

/* A counter-based generator: the same (seed, stream, index) gives the same float in
 * [-1, 1) on every driver and thread. */
float dp_counter_uniform(uint64_t seed, uint64_t stream, uint64_t index);

/* ----------------------------------------------------------------------------
 * stages and slots */

typedef struct dp_stage dp_stage;

/* Where a pass stopped: at its end, or at a communication point (a block started a dispatch or
 * a combine that it must wait for) from which it is resumed. */
typedef enum { DP_PHASE_DONE = 0, DP_PHASE_COMM = 1 } dp_phase;

/* One micro-batch's buffers on a stage (device memory, in the model's dtype): the input x,
 * the output y, the gradient dy of the output (received, or the loss's), the gradient dx of
 * the input, and what the backwards keep. Taken before F, given back after W (or B). */
typedef struct dp_slot {
    void *x;           /* [tokens x hidden] input (received into, or copied from the step's input) */
    void *y;           /* [tokens x hidden] output (sent on, or the loss's input) */
    void *dy;          /* [tokens x hidden] gradient of y (received into, or the loss's) */
    void *dx;          /* [tokens x hidden] gradient of x (sent back) */
    const void *target; /* last stage: this micro-batch's target (device memory) */
} dp_slot;

/* What a stage runs on, and what its blocks may use: given once at creation (and copied), so
 * that a block that communicates finds its link here rather than through new parameters. */
#define DP_STAGE_STREAMS 2
typedef struct dp_stage_env {
    const dp_device_ops *ops;
    dp_device *dev;
    /* the streams passes run on: [0] forwards and lone actions, [1] the backward of an
     * overlapped pair (NULL: the device's default stream, as the reference runs) */
    dp_stream *streams[DP_STAGE_STREAMS];
    const dp_link_ops *link_ops; /* the table of the links below (NULL while there are none) */
    /* the expert-parallel group, one communicator per stream, so that an overlapped pair's two
     * all-to-alls never share one: a pass on streams[i] gets ep_link[i] (NULL: no expert
     * parallelism) */
    dp_link *ep_link[DP_STAGE_STREAMS];
    /* the block kinds by dp_block_kind, block_table_size of them (NULL: the built-in table,
     * dp_block_table); a test may put a kind of its own in a row */
    const struct dp_block_ops *const *block_table;
    int block_table_size;
    /* expert parallelism: this stage's copy is one of ep_size (0 or 1: none) that share its
     * experts, ep_rank's part of them (MoE layers hold experts ep_rank x E / ep_size ..); the
     * ep_link groups are those copies, ranked by ep_rank */
    int ep_size, ep_rank;
    /* MoE expert choices recorded or followed (moe_routing_tape.h; NULL: each run its own),
     * under this rank's number in the world */
    struct dp_routing_tape *routing_tape;
    int routing_mode; /* dp_routing_mode */
    int rank;
    /* without expert parallelism (ep_size 0 or 1): the expert-parallel rank whose micro-batches
     * the passes run, for one rank standing for several (the reference; dp_stage_set_ep_source),
     * which picks the replicas of an EPLB plan's experts as that rank would; 0 otherwise */
    int ep_source;
} dp_stage_env;

/* Stage stage_index of num_stages, with its own parameters (initialised from cfg->seed). */
dp_status dp_stage_create(const dp_stage_env *env, const dp_model_config *cfg, int stage_index, int num_stages,
                          dp_stage **out);
void dp_stage_destroy(dp_stage *st);
int dp_stage_index(const dp_stage *st);
const dp_model_config *dp_stage_config(const dp_stage *st);

dp_status dp_stage_slot_get(dp_stage *st, dp_slot **out);
void dp_stage_slot_put(dp_stage *st, dp_slot *slot);

/* Forward of one micro-batch: slot->x -> slot->y. On the last stage, also the loss of y
 * against slot->target into *loss (one fp32 in device memory); loss may be NULL (inference). */
dp_status dp_stage_forward(dp_stage *st, dp_stream *s, dp_slot *slot, float *loss);
/* Input gradient: slot->dy (the last stage computes it from the loss) -> slot->dx; keeps
 * what backward_weight needs. The first stage of a pipe may skip dx (need_dx = 0). */
dp_status dp_stage_backward_input(dp_stage *st, dp_stream *s, dp_slot *slot, int need_dx);
/* Weight gradient of an earlier backward_input, accumulated into the gradients
 * (GEMMs with beta = 1), so that gradients fold micro-batches in the order W runs. */
dp_status dp_stage_backward_weight(dp_stage *st, dp_stream *s, dp_slot *slot);

/* The same passes in phases, for a caller that interleaves two micro-batches (an overlapped
 * F&B pair): each begins the pass and runs it up to its first communication point (a block's
 * dispatch or combine in flight, *phase = DP_PHASE_COMM) or its end (DP_PHASE_DONE). While a
 * pass is stopped, the caller may run other work, on other slots and streams; then
 * dp_stage_continue runs it on to the next point, on the stream it began on, until DONE. A slot
 * has one pass at a time. Blocks that never communicate finish in their first call, and the
 * plain calls above are begin followed by continue until DONE. */
dp_status dp_stage_forward_begin(dp_stage *st, dp_stream *s, dp_slot *slot, float *loss, dp_phase *phase);
dp_status dp_stage_backward_input_begin(dp_stage *st, dp_stream *s, dp_slot *slot, int need_dx, dp_phase *phase);
dp_status dp_stage_backward_weight_begin(dp_stage *st, dp_stream *s, dp_slot *slot, dp_phase *phase);
dp_status dp_stage_continue(dp_stage *st, dp_slot *slot, dp_phase *phase);
/* Milliseconds the stage's passes have spent, since it was made, waiting for the exchanges they
 * left in flight at their communication points (the exposed part of the expert all-to-alls
 * where the link keeps them in flight; a link without iall_to_all_v runs them inside the phase,
 * and that time is the phase's). Read before and after some work to time it. */
double dp_stage_comm_wait_ms(const dp_stage *st);
/* One exchange a pass left in flight, on the monotonic clock (ms): when the phase that started it
 * stopped, when the pass came back and began to wait for it, when the wait ended. */
typedef struct {
    double posted, waited, done;
} dp_exchange_time;
#define DP_STAGE_EXCHANGE_LOG 256
/* Exchanges waited for since the stage was made; exchange i (0 ..) while it is among the last
 * DP_STAGE_EXCHANGE_LOG (1), else 0. */
long dp_stage_exchange_count(const dp_stage *st);
int dp_stage_exchange(const dp_stage *st, long i, dp_exchange_time *out);

/* The expert-parallel links, once the groups exist (the stage is made before them): links[i]
 * for passes on env streams[i]. */
void dp_stage_set_ep_links(dp_stage *st, const dp_link_ops *ops, dp_link *const links[DP_STAGE_STREAMS]);
/* With expert parallelism, after the step's passes and the sum of the replicated parameters'
 * gradients over the expert-parallel group, before the other sums: each expert's weight
 * gradient, kept per source rank, summed in source-rank order into the gradient (so that it is
 * the single-rank run's, whose replicas are summed in that order). Nothing otherwise. */
dp_status dp_stage_reduce_expert_grads(dp_stage *st, dp_stream *s);

/* Layer b of the stage holds expert slots (an MoE layer): the stage's parameters of its local
 * slot i are *first_param + i x *per_slot .. + *per_slot - 1. Returns its local slots (0: none). */
int dp_stage_expert_slots(const dp_stage *st, int b, int *first_param, int *per_slot);
/* Between steps, once the slots' tensors hold their new experts (dp_runtime_move_experts moves
 * them): the stage's placement becomes phy2log and replica (plan_layers x plan_slots, as
 * dp_moe_config's; replica NULL: slot order), copied into the stage's own arrays; the MoE layers
 * follow it, the parameters take their new experts' names, and the GEMMs' copies (bf16) follow
 * the values. DP_ERR_INVALID for a stage made without a plan. */
dp_status dp_stage_set_placement(dp_stage *st, const int32_t *phy2log, const int32_t *replica, dp_stream *s);

/* One rank standing for several expert-parallel ranks (the reference): the passes that follow run
 * expert-parallel rank `source`'s micro-batches (dp_stage_env's ep_source). */
void dp_stage_set_ep_source(dp_stage *st, int source);

dp_status dp_stage_zero_grad(dp_stage *st, dp_stream *s);
/* One optimizer step (step counts from 1). */
dp_status dp_stage_optimizer_step(dp_stage *st, dp_stream *s, const dp_optimizer_config *o, int step);

/* Parameters, for synchronisation, verification and checkpoints (always fp32: the master copy). */
typedef struct {
    char name[32]; /* "block0.linear1" */
    size_t count;
    float *value; /* device memory */
    float *grad;  /* device memory */
    float *m, *v; /* the optimizer's state (AdamW's moments; SGD's momentum is m), device memory;
                     NULL until the optimizer or dp_stage_param_state allocates them */
    int buffer;   /* 1: state its kind updates, not trained (MoE's gate.bias): the optimizer leaves
                     it alone, and its gradient holds what the step gathered for the update (the
                     tokens each expert received) */
    int whole_index; /* its place in the stage's list as one rank holding every expert lists it */
    int sharded;     /* 1: only this expert-parallel rank holds it (an expert's weight) */
} dp_param_view;

/* The tensors of one parameter, each fp32 of the parameter's size. */
typedef enum {
    DP_TENSOR_VALUE = 0, /* the master value */
    DP_TENSOR_GRAD = 1,  /* the gradient of the last step */
    DP_TENSOR_M = 2,     /* AdamW's first moment, SGD's momentum buffer */
    DP_TENSOR_V = 3,     /* AdamW's second moment */
} dp_tensor_kind;

int dp_stage_num_params(const dp_stage *st);
/* The stage's parameters as one rank holding every expert lists them (dp_stage_num_params
 * without expert parallelism). */
int dp_stage_num_whole_params(const dp_stage *st);
/* All the stage's gradients as one array (the parameters' gradients lie in it in order). */
float *dp_stage_grads(const dp_stage *st, size_t *count);
void dp_stage_param(const dp_stage *st, int i, dp_param_view *out);
/* Allocates parameter i's optimizer state `which` (DP_TENSOR_M or DP_TENSOR_V), zeroed, if
 * the optimizer has not yet: zeros are the state before the first step, so a state written
 * from outside (a checkpoint, another run) can land before it. */
dp_status dp_stage_param_state(dp_stage *st, int i, dp_tensor_kind which, dp_stream *s);
/* Parameter i's fp32 value was written from outside the optimizer: the copy the GEMMs read in
 * the model's dtype (bf16) follows it, as after an optimizer step. */
dp_status dp_stage_param_refresh(dp_stage *st, int i, dp_stream *s);
/* The first parameter at or after local index `from` that stands for parameter `whole` as one
 * rank holding every expert lists it (dp_param_view's whole_index), or -1: an expert placed on
 * several slots (the replicas of an EPLB plan) has several. */
int dp_stage_find_param(const dp_stage *st, int whole, int from);

#ifdef __cplusplus
}
#endif
#endif
