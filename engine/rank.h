/* rank.h: one rank's share of a training job, acting only on its own state and its links:
 * set-up (device, streams, stages; then its groups, buffers and executor), loading a batch,
 * a training step (with the gradient sync between the copies of a stage, in its pipeline and
 * across the data-parallel replicas), inference, and
 * the results (losses, outputs, parameters, timings) gathered to the root, world rank 0,
 * through the link. A host calls each function on the rank's own thread, on every rank of
 * the job (runtime.c: one thread per rank in one process; a launcher: ranks in processes). */
#ifndef DP_RANK_H
#define DP_RANK_H

#include "engine/driver.h"
#include "engine/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DP_ROOT_RANK 0 /* where results are gathered */

typedef struct dp_rank dp_rank;

typedef struct {
    const dp_runtime_config *cfg; /* defaults filled in (dp_runtime_create does) */
    const dp_driver *drv;
    const dp_schedule *sched; /* the whole job's, the same on every rank */
    int rank;                 /* world rank: replica x pipeline ranks + pipeline rank (groups.h) */
} dp_rank_config;

/* The rank's own set-up, no communication: its device, streams and stages. *out is set even
 * when this fails (unless out of memory), for dp_rank_destroy. */
dp_status dp_rank_create(const dp_rank_config *c, dp_rank **out);
/* Collective over the world: the rank's groups, step buffers and executor, and every rank
 * learns every stage's parameters (dp_rank_num_params). */
dp_status dp_rank_connect(dp_rank *rk, dp_link_world *w);
/* Frees what the rank made (closing its links: collective where the link's close is). */
void dp_rank_destroy(dp_rank *rk);
/* Ends the world: every rank's waits fail naming this rank and the message. */
void dp_rank_abort(dp_rank *rk, dp_status why, const char *message);

/* A step's arguments, the same on every rank. Inputs and targets are host arrays laid out as
 * dp_runtime_train_step describes (every replica's micro-batches); each rank reads its
 * replica's pipes' parts. losses, outputs and times are written on the root only (the others
 * may pass anything). */
typedef struct {
    const float *inputs;  /* NULL: train on the batch dp_rank_load left on the device */
    const void *targets;
    int step;             /* the optimizer's step count, from 1 */
    double t0;            /* the step's start (dp_now_ms), for recorded times */
    float *losses;        /* root: [replicas x chunks] */
    float *outputs;       /* root: [replicas x chunks x tokens x hidden] (inference) */
    dp_action_time **times; /* root: per world rank, [its pipeline rank's num_actions + 1], when the
                               runtime records times */
} dp_rank_step;

dp_status dp_rank_load(dp_rank *rk, const float *inputs, const void *targets);
dp_status dp_rank_train(dp_rank *rk, const dp_rank_step *a);
dp_status dp_rank_infer(dp_rank *rk, const dp_rank_step *a);

/* After connect, on every rank: the parameters of a stage (as its copy 0 in replica 0 holds them). */
int dp_rank_num_params(const dp_rank *rk, int stage);
/* On every rank: parameter `index` of `stage`'s count and name; DP_ERR_INVALID when none. */
dp_status dp_rank_param_info(const dp_rank *rk, int stage, int index, size_t *count, char name[32]);
/* On every rank: `which` of parameter index of (stage, copy) in replica 0 lands in host on the
 * root (count floats, as dp_rank_param_info says), sent there by the rank holding it. */
dp_status dp_rank_gather_tensor(dp_rank *rk, int stage, int copy, int index, dp_tensor_kind which, float *host);
/* The same from `replica` (0 .. replicas - 1, which the caller has checked). */
dp_status dp_rank_gather_replica_tensor(dp_rank *rk, int replica, int stage, int copy, int index, dp_tensor_kind which,
                                        float *host);
/* On the rank holding (stage, copy) in replica 0: `which` of its parameter index into host,
 * with no message (each process reads its own ranks' stages); DP_ERR_INVALID elsewhere. */
dp_status dp_rank_read_own_tensor(dp_rank *rk, int stage, int copy, int index, dp_tensor_kind which, float *host);
/* On every rank: the rank holding (stage, copy) in every replica writes host (count floats)
 * into `which` of its parameter index, so that the replicas stay identical; the others do
 * nothing. host is the caller's array in every process. */
dp_status dp_rank_write_tensor(dp_rank *rk, int stage, int copy, int index, dp_tensor_kind which, const float *host,
                               size_t count);

/* The model as this rank has it now (its placement follows dp_rank_move_experts). */
const dp_model_config *dp_rank_model(const dp_rank *rk);
/* Collective over the world, between steps: the MoE layers' slots take the experts of the
 * placement root_plan (the root's: plan_layers x plan_slots phy2log, then as many replica ranks
 * when root_has_replica; the others' arguments are ignored), which travels from the root to
 * every rank. Each slot's tensors (value, gradient, the optimizer's state) come from a slot
 * holding its new expert now (dp_rank_move_source), in one all-to-all over the expert-parallel
 * group, staged; written only once every rank of the world has what it receives, so a failure
 * leaves every slot as it was. Then the stages take the new placement and the directory of
 * parameters follows. */
dp_status dp_rank_move_experts(dp_rank *rk, const int32_t *root_plan, int root_has_replica);
/* Where slot p's new expert comes from in a move: a slot of the same rank holding it now
 * (the lowest), else the lowest slot holding it; -1 when none does. old is one layer's
 * phy2log of `slots` slots, local_slots per rank. */
int dp_rank_move_source(const int32_t *old, int slots, int local_slots, int p, int32_t expert);

#ifdef __cplusplus
}
#endif
#endif
