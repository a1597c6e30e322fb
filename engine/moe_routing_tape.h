/* moe_routing_tape.h: the expert choices of MoE layers recorded in one run and followed in
 * another. Two correct drivers compute the gate's scores with different roundings, so where two
 * experts' scores nearly tie they may choose differently, and from there on their results part by
 * more than rounding. `dualpipe verify` records the choices of the driver under test and makes
 * the CPU follow them, and judges each choice that differed by how close a tie it was. */
#ifndef DP_MOE_ROUTING_TAPE_H
#define DP_MOE_ROUTING_TAPE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dp_routing_tape dp_routing_tape;

typedef enum {
    DP_ROUTING_OWN = 0,    /* no tape: every run chooses for itself */
    DP_ROUTING_RECORD = 1, /* each MoE forward appends its choices to the tape */
    DP_ROUTING_FOLLOW = 2, /* each MoE forward takes the next recorded choices instead of its own */
} dp_routing_mode;

/* What following found since the last reset. A (token) differed when its own top-k (the experts
 * and their order) was not the one followed. Its closeness is the tie it would take: the
 * follower's own score margin by which the recorded choice lost, over the spread that the
 * rounding of the gate's input gives a score (0.25 rms(norm weight) |W_e| for the two experts
 * or groups involved, sigmoid's slope at most 1/4); `dualpipe verify` compares the worst with
 * its relative tolerance for activations. */
typedef struct {
    uint64_t tokens;   /* tokens routed by following */
    uint64_t differed; /* of them, those whose own choice differed */
    double worst;      /* the largest margin / spread over those (0: none) */
    int worst_layer, worst_token;
} dp_routing_report;

dp_status dp_routing_tape_create(dp_routing_tape **out);
void dp_routing_tape_destroy(dp_routing_tape *t);
/* the report since the last reset, and the reset */
dp_routing_report dp_routing_tape_report(dp_routing_tape *t);
void dp_routing_tape_reset_report(dp_routing_tape *t);
/* After the follower's step: every recorded choice must have been followed (else
 * DP_ERR_INTERNAL naming the layer); empties the tape for the next step. */
dp_status dp_routing_tape_end_step(dp_routing_tape *t);

/* ----------------------------------------------------------------------------
 * for the MoE block: one forward's choices of one layer on one rank, in the order the
 * forwards run (both runs play the same schedule, so the n-th forward of a layer on a rank is
 * the same micro-batch in both) */

dp_status dp_routing_tape_put(dp_routing_tape *t, int rank, int layer, const int32_t *expert, size_t n);
/* the next recorded choices of (rank, layer), n of them, copied into expert */
dp_status dp_routing_tape_take(dp_routing_tape *t, int rank, int layer, int32_t *expert, size_t n);
void dp_routing_tape_note(dp_routing_tape *t, int layer, uint64_t tokens, uint64_t differed, double worst,
                          int worst_token);

/* One forward's following, on the host. The gate's scores, bias, weights and the norm's weight
 * are the follower's own (fp32); expert and weight hold its own choices and their weights, and
 * take the recorded ones for each token whose choice differed (the weights recomputed from its
 * own scores, as moe_topk computes them). Says how many tokens differed, and the worst
 * closeness (dp_routing_report) with its token. */
typedef struct {
    int tokens, experts, groups, topk_groups, topk, hidden;
    float route_scale;
    const float *scores; /* [tokens x experts], after the sigmoid */
    const float *bias;   /* [experts] */
    const float *gate;   /* [experts x hidden] */
    const float *norm;   /* [hidden] */
} dp_routing_inputs;

dp_status dp_routing_follow(const dp_routing_inputs *in, const int32_t *recorded, int32_t *expert, float *weight,
                            uint64_t *differed, double *worst, int *worst_token);

#ifdef __cplusplus
}
#endif

#endif
