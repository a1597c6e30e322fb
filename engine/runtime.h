/* runtime.h: a pipeline-parallel training job in one process, optionally with several
 * data-parallel replicas of the pipeline: loads the driver, builds and validates the
 * schedule, starts one thread per rank (each with its device, two streams, its link endpoints
 * and its stages), and runs training and inference steps. */
#ifndef DP_RUNTIME_H
#define DP_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "engine/executor.h"
#include "engine/model.h"
#include "engine/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *driver;   /* "cpu" (default) or a module's name */
    const char *schedule; /* "dualpipe" (default), "dualpipev", "1f1b", "zb1p", "gpipe", ... */
    int ranks;            /* pipeline ranks (of one replica) */
    int chunks;           /* micro-batches per step and replica */
    dp_model_config model;
    dp_optimizer_config optimizer; /* kind DP_OPT_NONE: gradients only */
    int threads_per_rank;          /* kernel threads of each rank's device (0: cores / ranks, at least 1) */
    int timeout_ms;                /* a rank gives up waiting after this long (0: 60 s) */
    int record_times;              /* keep when each action ran in the last step */
    /* 1: rank r opens device r mod (the driver's device count), one device per rank where
     * there are enough (GPUs talk through NCCL); 0: every rank opens device 0 (ranks sharing
     * a GPU talk through the driver's same-device link). */
    int spread_devices;
    uint32_t device_flags; /* DP_DEVICE_* for every rank's device (DP_DEVICE_ALLOW_TF32) */
    int serial_pairs;      /* an overlapped F&B pair's halves one after the other on one stream */
    /* --- where the ranks live. Zeros: every rank is a thread of this process. A job spread
     * over processes creates a runtime in each of them with the same configuration (and makes
     * every later call in each, in the same order); each hosts local_ranks ranks from
     * first_rank, meets the others through the bootstrap, and talks to them through `link`.
     * Results (losses, outputs, tensors read, times) arrive in the process hosting rank 0. */
    int first_rank;                    /* the first world rank this process hosts (of dp x ranks) */
    int local_ranks;                   /* how many it hosts (0: all of them) */
    const char *link;                  /* NULL: the driver's own link; "mpi": the MPI link (CPU ranks) */
    const dp_bootstrap_ops *bootstrap; /* how the processes meet (dp_bootstrap_mpi, a TCP rendezvous) */
    void *bootstrap_ctx;
    /* Data parallelism: replicas of the pipeline (0 or 1: none). The world is dp x ranks
     * ranks, world rank = replica x ranks + pipeline rank (each replica's pipeline a contiguous
     * block; replica 0 holds ranks 0 .. ranks - 1). A step's global batch is dp x chunks
     * micro-batches: replica d runs micro-batches d x chunks .. (d + 1) x chunks - 1 (each
     * replica its own micro-batches, as Megatron and DeepSpeed split a global batch), and the
     * gradients are summed over all of them, as one pipeline fed the whole batch would sum. */
    int dp;
    /* 1: every rank of this process opens device `device` of the driver, whatever
     * spread_devices says (a process of a job launched one per GPU: its device comes from the
     * launcher, DUALPIPE_DEVICE or its local rank). */
    int pin_device;
    int device;
    /* Expert parallelism (0 or 1: none): each stage's MoE experts spread over `ep` ranks, E / ep
     * each. Like data-parallel replicas, the ep ranks of a stage run micro-batches of their own
     * (a step's global batch is dp x ep x chunks), and at each MoE layer they exchange their
     * tokens' rows with the ranks holding the experts the rows go to. The world is dp x ep x
     * ranks; the replicas of the layout below are the dp x ep pipelines, replica = d x ep + e. */
    int ep;
    /* MoE expert choices: recorded on the tape, or followed from it (moe_routing_tape.h; NULL:
     * each run chooses its own), so that `dualpipe verify` can make the CPU route as the driver
     * under test did */
    struct dp_routing_tape *routing_tape;
    int routing_mode; /* dp_routing_mode */
    /* 1: an overlapped F&B pair's halves one after the other, each to its end, so no exchange
     * hides under the other half's compute (the comparison for the overlap; same results) */
    int no_overlap;
} dp_runtime_config;

/* The most ranks one process hosts, each on its own thread (local_ranks, or with one process
 * the whole world of dp x ranks). */
#define DP_RUNTIME_MAX_RANKS 1024
/* The most ranks of a job (dp x ranks), in any number of processes. */
#define DP_RUNTIME_MAX_WORLD (1 << 20)

typedef struct dp_runtime dp_runtime;

/* Errors: DP_ERR_NOT_FOUND (driver or schedule), DP_ERR_INVALID (a topology or model rule,
 * named in the message), and whatever the driver reports. */
dp_status dp_runtime_create(const dp_runtime_config *cfg, dp_runtime **out);
void dp_runtime_destroy(dp_runtime *rt);

const dp_schedule *dp_runtime_schedule(const dp_runtime *rt);
const dp_model_config *dp_runtime_model(const dp_runtime *rt);

/* Whether this process hosts rank 0, where results arrive. */
int dp_runtime_is_root(const dp_runtime *rt);

/* One training step over the global batch of B = dp x chunks micro-batches (chunks with no
 * data parallelism), replica by replica as dp describes: inputs [B x tokens x hidden] (host,
 * fp32 whatever the model's dtype), targets per micro-batch ([B x tokens x hidden] floats for
 * MSE, [B x tokens] int32 labels for cross-entropy), losses [B] out (host). Gradients are
 * summed over the micro-batches (each micro-batch's loss differentiated on its own),
 * synchronised between the copies of a stage in each pipeline and then across the replicas,
 * then the optimizer steps. A failure on any rank ends the step on all ranks and is reported
 * with that rank's message. */
dp_status dp_runtime_train_step(dp_runtime *rt, const float *inputs, const void *targets, float *losses);

/* The same step in two parts, so that one batch can stay on the devices: load_batch copies
 * inputs and targets (as above) to the ranks' devices, converted to the model's dtype;
 * train_loaded then runs a training step on them, as often as asked, with no host copies
 * (benchmarks; several passes over one batch). A train_step or an inference replaces them. */
dp_status dp_runtime_load_batch(dp_runtime *rt, const float *inputs, const void *targets);
dp_status dp_runtime_train_loaded(dp_runtime *rt, float *losses);

/* Forward only: outputs [B x tokens x hidden] (host, fp32 whatever the model's dtype), B as above. */
dp_status dp_runtime_infer(dp_runtime *rt, const float *inputs, float *outputs);

/* The training state of the whole model, addressed by (stage, index) as in dp_stage_param;
 * `copy` picks which pipe's copy where a stage lives twice (DualPipe: 0 or 1), 0 otherwise.
 * Reads come from replica 0; writes go to every replica, which stay identical.
 * Every parameter has four fp32 tensors of its size (dp_tensor_kind: value, gradient of the
 * last step, the optimizer's m and v), so two runtimes of the same model, whatever their
 * schedules and rank counts, can hand their state to each other, and a checkpoint can hold it.
 *
 * read_tensor copies `which` into host (when not NULL) and sets *count and name (when not
 * NULL); optimizer state the optimizer has not allocated yet reads as zeros. write_tensor
 * copies count floats (the parameter's size) from host: it allocates m or v first if needed,
 * and a value written also refreshes the weight's copy in the model's dtype (bf16). Call them
 * between steps, never during one. */
int dp_runtime_num_params(const dp_runtime *rt, int stage);
dp_status dp_runtime_read_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which, float *host,
                                 size_t *count, char name[32]);
dp_status dp_runtime_write_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which,
                                  const float *host, size_t count);
/* dp_runtime_read_tensor from `replica` (0 .. dp_runtime_replicas - 1): to check that the
 * replicas are identical. */
dp_status dp_runtime_read_replica_tensor(dp_runtime *rt, int replica, int stage, int copy, int index,
                                         dp_tensor_kind which, float *host);
/* dp_runtime_read_tensor without the link, in the process hosting the rank that holds
 * (stage, copy) in replica 0 (world rank = the schedule's stage_rank[copy][stage]), and only
 * there (DP_ERR_INVALID elsewhere): each process of a job reads its own ranks' state, for
 * example to write its part of a checkpoint, while the others do something else. */
int dp_runtime_hosts_rank(const dp_runtime *rt, int world_rank);
dp_status dp_runtime_read_local_tensor(dp_runtime *rt, int stage, int copy, int index, dp_tensor_kind which,
                                       float *host);
/* Returns when every process of the job has called it (through the bootstrap; at once in a job
 * of one process): what each process wrote before it is there for the others after it. */
dp_status dp_runtime_barrier(dp_runtime *rt);
/* Data-parallel replicas of the pipeline (1: none). */
int dp_runtime_replicas(const dp_runtime *rt);
/* dp_runtime_read_tensor of the value (grad = 0) or the gradient (grad = 1). */
dp_status dp_runtime_read_param(dp_runtime *rt, int stage, int copy, int index, int grad, float *host,
                                size_t *count, char name[32]);

/* Mixture-of-experts loads: the model's MoE layers (dp_model_layer_kind), numbered 0 .. n - 1
 * in layer order, and how many (token, k) slots chose each routed expert of one of them in the
 * last training step: counts[experts] (logical experts, host), summed over every micro-batch of
 * the global batch, whoever ran it (every pipe, data-parallel and expert-parallel copy). They
 * are the balancing bias's step loads, read from the rank holding the layer in replica 0, so a
 * job spread over processes calls it in every process (the counts arrive at rank 0's). Exact
 * integers: the loads are fp32 sums of integers, exact while each stays <= 2^24 (a step's
 * tokens bound it); a value beyond, or not a whole number, is refused (DP_ERR_INVALID). Zeros
 * before the first step. Call it between steps. */
int dp_runtime_num_moe_layers(const dp_runtime *rt);
dp_status dp_runtime_read_expert_load(dp_runtime *rt, int moe_layer, int64_t *counts);

/* Expert placement while training (EPLB). The model must have been made with a placement
 * (dp_moe_config's plan; the identity one, phy2log[l][p] = p, places experts as no plan does);
 * the runtime keeps its own copy of it, which dp_runtime_model shows as it is now. */
typedef struct {
    int experts_moved;     /* slots whose logical expert changed, over the MoE layers */
    uint64_t bytes_sent;   /* bytes sent between ranks for it, over the whole job (every copy of
                              each stage: data-parallel replicas, both pipes of DualPipe) */
    uint64_t bytes_copied; /* bytes copied from one slot to another of the same rank, likewise */
} dp_expert_move_stats;

/* Collective, between steps: the MoE layers take the placement phy2log (plan_layers x
 * plan_slots, as dp_moe_config's: the same slots, every expert at least once) with replica
 * ranks `replica` (the same shape; NULL: slot order), given in the process hosting rank 0 (the
 * others may pass NULL: it travels to them). Every slot whose expert changes receives that
 * expert's value, gradient and optimizer state (AdamW's m and v, SGD's momentum) from a slot
 * holding it now, the same rank's where one does; the transfers of each expert-parallel group go
 * in one all-to-all, staged, and are written into the slots only once every rank has received
 * its part, so that a failure (reported naming the rank) leaves the old placement whole. The bf16
 * copies of the weights follow. Bit-exact: the tensors are copied, not recomputed. stats (may be
 * NULL) says what moved. DP_ERR_INVALID for a model without a placement or a placement that is
 * not one of its slots, naming what is wrong. */
dp_status dp_runtime_move_experts(dp_runtime *rt, const int32_t *phy2log, const int32_t *replica,
                                  dp_expert_move_stats *stats);

/* Optimizer steps taken (training steps started): AdamW's bias correction of the next step
 * uses this + 1. set_step makes a restored state continue where its source left off. */
int dp_runtime_step(const dp_runtime *rt);
dp_status dp_runtime_set_step(dp_runtime *rt, int step);

/* When each action of world rank `rank` ran in the last step (record_times), or NULL; the
 * actions are those of its pipeline rank, rank mod ranks. */
const dp_action_time *dp_runtime_times(const dp_runtime *rt, int rank);
/* When the last step started, on dp_now_ms()'s clock: the times above count from it. */
double dp_runtime_step_start(const dp_runtime *rt);

#ifdef __cplusplus
}
#endif
#endif
