/* eplb_internal.h: what the balancer's source files share and do not export: the error
 * setter, the per-layer planners of both policies, and small helpers on GPU loads. */
#ifndef EPLB_INTERNAL_H
#define EPLB_INTERNAL_H

#include "eplb/eplb.h"

#include <stddef.h>

eplb_status eplb_fail(eplb_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define EPLB_CHECK(call)                   \
    do {                                   \
        eplb_status eplb_check_s_ = (call); \
        if (eplb_check_s_ != EPLB_OK)      \
            return eplb_check_s_;          \
    } while (0)

/* EPLB_ERR_INVALID, naming the layer (counted from first_layer) and expert, unless every load
 * is finite and >= 0 and each layer's sum is at most EPLB_MAX_LAYER_LOAD. */
eplb_status eplb_loads_check(const double *weight, int num_layers, int num_experts, int first_layer);

/* Sizes of one layer's problem, derived from a checked config. */
typedef struct {
    int E, R, P, N;   /* experts, replicas, GPUs, nodes */
    int groups;       /* expert groups */
    int slots;        /* replicas per GPU, R / P */
    int hierarchical; /* groups are packed onto nodes */
} eplb_shape;

eplb_shape eplb_shape_of(const eplb_config *cfg, int num_experts);

/* Which GPUs hold which experts (eplb_placed.c): replicas of expert e on GPU g, and the
 * number of GPUs holding e, in O(1). */
typedef struct eplb_placed eplb_placed;
eplb_placed *eplb_placed_new(int experts, int replicas);
void eplb_placed_free(eplb_placed *t);
void eplb_placed_clear(eplb_placed *t);
int eplb_placed_count(const eplb_placed *t, int e, int g);
int eplb_placed_gpus(const eplb_placed *t, int e);
void eplb_placed_add(eplb_placed *t, int e, int g);
void eplb_placed_remove(eplb_placed *t, int e, int g);

/* An indexed binary heap of ids (eplb_heap.c): largest key[id] on top, the lower id first
 * among equal keys; pos[id] is the id's place in the heap (-1: not in it). Heaps over
 * disjoint ids may share pos and key. Use negated keys for smallest first. */
typedef struct {
    int n;
    int *id, *pos;
    double *key;
} eplb_heap;
void eplb_heap_init(eplb_heap *h, int *id, int *pos, double *key);
void eplb_heap_build(eplb_heap *h, const int *ids, int n); /* keys set before */
void eplb_heap_push(eplb_heap *h, int id);                 /* key[id] set before */
int eplb_heap_pop(eplb_heap *h);
void eplb_heap_remove(eplb_heap *h, int id);
void eplb_heap_update(eplb_heap *h, int id, double key);
static inline int eplb_heap_top(const eplb_heap *h) { return h->id[0]; }

/* Scratch memory for one layer, sized once per eplb_rebalance call (every array holds at
 * least max(E, R, P, groups) elements, so any planner may use any of them). */
typedef struct eplb_scratch {
    int n;                 /* elements per array */
    float *f[4];
    double *d[9];
    int *i[32];
    eplb_placed *placed;   /* sized for the layer's experts and replicas */
    int cut_short;         /* set by the balanced policy: the layer's refinement stopped at
                            * its work limit */
    void *sort_work;       /* n * 32 bytes */
    void *pairs;           /* EPLB_PAIR_BYTES: sums of two replicas, for exchanges */
} eplb_scratch;
#define EPLB_PAIR_BYTES (2 * 512 * 16)
eplb_scratch *eplb_scratch_new(const eplb_shape *s);
void eplb_scratch_free(eplb_scratch *sc);

/* The reference policy for one layer: phy2log[R] and rank[R] (replica rank of each slot). */
eplb_status eplb_deepseek_layer(const double *w, const eplb_shape *s, eplb_scratch *sc,
                                int *phy2log, int *rank);

/* The largest GPU load of the reference plan of the layer as the reference computes it (in
 * float32), without building the plan. The plan's GPU loads in double differ from it by
 * rounding only: relatively less than (R/P + 2) * 2^-24. Shortcut: when a cheaper lower
 * bound on that load (the heaviest node's mean GPU load, rounding allowed for) is above
 * `below`, returns that bound instead. */
double eplb_deepseek_max_f32(const double *w, const eplb_shape *s, eplb_scratch *sc,
                             double below);

/* The default policy for one layer (same outputs). The deepseek plan of the same layer is a
 * floor: the result is never less balanced than it. It is built, in ref_space (2R ints),
 * only when its largest GPU load, from eplb_deepseek_max_f32, may be below the result's. */
eplb_status eplb_balanced_layer(const double *w, const eplb_shape *s, int cross_nodes,
                                eplb_scratch *sc, int *ref_space, int *phy2log, int *rank);

/* The default policy starting from the placement running now (cur_phy2log): its replicas are
 * exchanged until the max GPU load is at most stop_at or no exchange lowers it. Returns the
 * max GPU load reached, or -1 when the placement breaks the mode's rules (groups split across
 * nodes in hierarchical mode). phy2log keeps replicas in the slots they had where they could
 * stay. */
double eplb_balanced_layer_from(const double *w, const eplb_shape *s, eplb_scratch *sc,
                                const int *cur_phy2log, double stop_at, int *phy2log, int *rank);

/* GPU loads of a layer (load split evenly over replicas); returns the max. cnt may be NULL
 * (counted from phy2log into the scratch space `cnt_space` of E ints). */
double eplb_gpu_loads(const double *w, int E, const int *phy2log, int R, int P, int *cnt_space,
                      double *gpu_load);

/* Greedy replication: experts ids[0..n) (loads w[ids[i]]) share k >= n replicas, each extra
 * replica going to the largest per-replica load (lowest expert id on ties), no count above
 * cap while any expert is below it (cap 0: no cap). cnt_out[i] receives ids[i]'s count; heap
 * (2n ints) and key (n doubles) are work space. Returns the largest per-replica load, which without a cap is the
 * least possible one (splitting the current maximum is the only way to lower it). */
double eplb_min_max_replica(const double *w, const int *ids, int n, int k, int cap,
                            int *cnt_out, int *heap, double *key);

/* Group-to-node assignment minimising the largest node cost, where a node's cost is
 * max(load / gpus_per_node, with_replicas ? M(node's experts, R/N) : 0). Exhaustive (branch
 * and bound) when there are at most EPLB_MAX_ASSIGNMENTS assignments; otherwise heaviest
 * group first onto the cheapest node with room. node_of_group may be NULL. Returns the cost. */
#define EPLB_MAX_ASSIGNMENTS 50000.0
double eplb_assign_groups(const double *w, const eplb_shape *s, int with_replicas,
                          int *node_of_group, int *exhaustive);

/* libstdc++'s std::sort (introsort) on (value, index) pairs in descending value order: the
 * order PyTorch's CPU sort(descending=True) produces, equal values included. idx receives the
 * indices in sorted order; work holds n * EPLB_SORT_PAIR_BYTES bytes. */
#define EPLB_SORT_PAIR_BYTES 8
void eplb_sort_desc_like_torch(const float *val, int n, int *idx, void *work);

/* Allocates phy2log and logcnt of a plan's shape (log2phy comes with eplb_plan_finish). */
eplb_status eplb_plan_alloc(eplb_plan *plan, int num_layers, int num_experts, int num_replicas,
                            int num_gpus);
/* Counts logcnt from phy2log and builds log2phy; rank[l*R + r] gives each slot's replica rank
 * (NULL: ranks in slot order). Checks ids and that ranks are 0..count-1 once each. */
eplb_status eplb_plan_finish(eplb_plan *plan, const int *rank);

#endif
