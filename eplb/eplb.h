/* eplb.h: the expert-parallel load balancer. From measured per-expert loads it decides, for
 * every MoE layer, how many replicas each logical expert gets and on which GPU each replica
 * lives. Standalone C11: no dependency on the rest of dualpipe; never prints, never exits. */
#ifndef EPLB_H
#define EPLB_H

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Status codes. Every failing call leaves a message for eplb_last_error() that names the rule
 * that was broken and what to do about it. */
typedef int eplb_status;

enum {
    EPLB_OK = 0,
    EPLB_ERR_INVALID = -1,  /* bad argument or inconsistent sizes: the message names the rule */
    EPLB_ERR_NOMEM = -2,    /* out of memory */
    EPLB_ERR_INTERNAL = -9, /* a broken invariant: a bug in eplb */
};

/* The message left by the last failing call on this thread ("" when none). */
const char *eplb_last_error(void);
/* A short name for a status code ("invalid argument", ...). */
const char *eplb_status_name(eplb_status s);
/* The library version (the package version, "0.1.0"). */
const char *eplb_version(void);

/* ------------------------------------------------------------------------------------------
 * Configuration.
 *
 * Layout: GPU g owns physical slots [g*R/G, (g+1)*R/G) (R replicas, G GPUs); node n owns GPUs
 * [n*G/N, (n+1)*G/N). Logical expert e belongs to group e / (E / num_groups).
 *
 * Both policies place groups on nodes ("hierarchical" mode) when num_groups % num_nodes == 0,
 * and pack globally otherwise, as deepseek-ai/EPLB does. */
typedef enum {
    /* The default. Per layer: in hierarchical mode groups go to nodes by the assignment with
     * the smallest lower bound (see eplb_lower_bound; exhaustive up to 50 000 assignments;
     * the lightest heaviest node with cross_nodes);
     * each extra replica goes to the expert with the largest load per
     * replica (no expert gets more replicas than the GPUs it may use), replicas are packed
     * onto GPUs by largest differencing (greedy heaviest-first when cross_nodes mixes bound and
     * free replicas), then replicas are exchanged one for one, or two for two, between the
     * most loaded GPU and the others while that lowers the maximum, stopping early once the
     * maximum is within 0.01% of the lower bound. No two replicas of one expert share a GPU.
     * When every expert has at least as many replicas as the GPUs it may use (A), each
     * expert's first floor(count / A) - 1 rounds of A replicas go one to each of those GPUs
     * before the rest is packed (duplicates are unavoidable there; this spreads them), and
     * exchanges may then move a duplicate in place of another. Cost: O(R log R) per layer, with the exchange and repair steps limited to
     * about 4 R log2 R per layer (eplb_plan.layers_cut_short counts the layers that reach it).
     * The reference plan of the same layer is then a floor: its largest GPU load is computed
     * first (as the reference sums it, in float32; the plan itself is built only when that
     * load, allowing for float32 rounding, may be below ours); if it is more
     * balanced, it is improved the same way (same-GPU duplicates removed where that does not
     * raise its maximum) and used instead, so the result is never less balanced than
     * EPLB_POLICY_DEEPSEEK on the same input, and duplicates appear only where the
     * reference's plan, duplicates included, beats every duplicate-free plan found (on small
     * shapes such as two GPUs per node; never on the real loads of the tests). */
    EPLB_POLICY_BALANCED = 0,
    /* deepseek-ai/EPLB rebalance_experts, reproduced exactly (see "Exactness" below). */
    EPLB_POLICY_DEEPSEEK = 1,
} eplb_policy;

typedef struct eplb_config {
    int num_replicas; /* physical experts per layer, a multiple of num_gpus, >= experts */
    int num_groups;   /* expert groups; the expert count must be a multiple */
    int num_nodes;    /* server nodes; num_gpus must be a multiple */
    int num_gpus;     /* GPUs in the expert-parallel group */
    eplb_policy policy;
    /* EPLB_POLICY_BALANCED in hierarchical mode only: 0 keeps every replica of a group's experts
     * on the group's node; 1 keeps one replica of each expert there and lets the redundant
     * replicas go to any node (more inter-node traffic, better balance). */
    int cross_nodes;
} eplb_config;

/* A config with the defaults: policy balanced, one group, one node, cross_nodes 0. */
eplb_config eplb_config_default(int num_replicas, int num_gpus);

/* Checks the config against an expert count; EPLB_ERR_INVALID names the first broken rule. */
eplb_status eplb_config_check(const eplb_config *cfg, int num_experts);

/* Whether cfg packs groups onto nodes (num_groups % num_nodes == 0 and num_nodes > 1). */
int eplb_config_hierarchical(const eplb_config *cfg);

/* ------------------------------------------------------------------------------------------
 * Plans: the same three arrays as the reference, row-major, int.
 *   phy2log[l][r]          logical expert held by physical slot r
 *   log2phy[l][e][k]       the k-th replica (rank k) of expert e, padded with -1
 *   logcnt[l][e]           replicas of expert e
 * max_count is the largest logcnt over all layers (the last dimension of log2phy). */
typedef struct eplb_plan {
    int num_layers, num_experts, num_replicas, num_gpus, max_count;
    int *phy2log;
    int *log2phy;
    int *logcnt;
    /* EPLB_POLICY_BALANCED: layers whose refinement (duplicate repair, exchanges) stopped at
     * its work limit, about 4 R log2 R steps per layer, before it was done. Their plans are
     * valid and never less balanced than EPLB_POLICY_DEEPSEEK's, but further exchanges might
     * have balanced them better. Never on the real loads of the tests. */
    int layers_cut_short;
} eplb_plan;

/* The largest sum of one layer's loads: every function taking loads refuses more (and loads that
 * are negative or not finite) with EPLB_ERR_INVALID naming the layer. The reference policy sums
 * in float32, whose range ends at 3.4e38; only the loads' ratios matter, so scale down. */
#define EPLB_MAX_LAYER_LOAD 1e38

/* Plans every layer of weight[num_layers][num_experts] (loads: finite, >= 0, each layer's sum at
 * most EPLB_MAX_LAYER_LOAD). On success the
 * plan owns its arrays (free with eplb_plan_free); on failure it is left empty.
 *
 * Exactness of EPLB_POLICY_DEEPSEEK: loads are rounded to float32 and every sum, quotient and
 * comparison is done in float32 in the reference's order, so the output equals the
 * reference's element for element. Two places in the reference are order-sensitive:
 *  - its sorts are not stable (PyTorch's CPU sort is libstdc++'s introsort); we run the same
 *    introsort on the same (value, index) pairs, so equal loads are ordered as it orders them;
 *  - argmax takes the lowest index among equal values, as PyTorch does;
 *  - the per-group sums are taken left to right; PyTorch's vectorised sum may round
 *    differently when a group sum exceeds 2^24, which never happens for integer token counts
 *    whose group sums stay below 2^24 (16.7 M).
 * Replica ranks follow the reference: rank k of an expert is the k-th replica it was given. */
eplb_status eplb_rebalance(const double *weight, int num_layers, int num_experts,
                           const eplb_config *cfg, eplb_plan *plan);

void eplb_plan_free(eplb_plan *plan);

/* Builds a plan from phy2log alone (logcnt counted, log2phy ranked in slot order).
 * Checks that every expert id is in [0, num_experts) and every expert has a replica. */
eplb_status eplb_plan_from_phy2log(const int *phy2log, int num_layers, int num_experts,
                                   int num_replicas, int num_gpus, eplb_plan *plan);

/* Checks the invariants: every expert present, logcnt consistent with phy2log, log2phy the
 * inverse of phy2log, padding -1, max_count the largest count. */
eplb_status eplb_plan_check(const eplb_plan *plan);

/* ------------------------------------------------------------------------------------------
 * Measures. Load model: an expert's load is split evenly over its replicas, and a GPU's load
 * is the sum of the loads of the replicas it holds. Balancedness = mean GPU load / max GPU
 * load, in (0, 1]; 1 for a layer without load. */
typedef struct eplb_layer_stats {
    double total;          /* sum of the layer's loads */
    double max_load;       /* largest GPU load of the plan */
    double balancedness;   /* of the plan */
    double before;         /* without balancing: one replica per expert, expert e on GPU e*G/E */
    double bound;          /* provable lower bound on the max GPU load (see eplb_lower_bound) */
    double best_possible;  /* mean / bound: no plan in the same mode can be more balanced */
    int duplicates;        /* replicas beyond the first of the same expert on one GPU */
} eplb_layer_stats;

/* Stats of one layer of plan for weight row w (num_experts loads); cfg gives the mode for the
 * bound. */
eplb_status eplb_layer_evaluate(const double *w, const eplb_plan *plan, int layer,
                                const eplb_config *cfg, eplb_layer_stats *out);

/* Mean of per-layer balancedness over layers with non-zero load (the headline figure); the
 * same for "before" and "best_possible" when those pointers are not NULL. */
eplb_status eplb_plan_balancedness(const double *weight, const eplb_plan *plan,
                                   const eplb_config *cfg, double *after, double *before,
                                   double *best_possible);

/* A lower bound on the largest GPU load of every plan for one layer, in the mode cfg selects.
 * What is proved (M(S, k) = the least possible largest per-replica load when the experts of S
 * share k replicas, computed exactly by greedy replication):
 *  - any mode: max GPU load >= total / num_gpus (the mean) and >= M(all experts, R), since
 *    the GPU holding the heaviest replica carries at least that replica;
 *  - hierarchical without cross_nodes, where node n gets whole groups and exactly R/N slots:
 *    max GPU load >= min over group-to-node assignments A of
 *    max over nodes n of max(load(n) / (G/N), M(experts of n, R/N)).
 *    The minimum over assignments is exact when there are at most 50 000 assignments; beyond
 *    that the bound falls back to the first line plus max(total / N, largest group) / (G/N).
 * The bound holds for both policies, with or without duplicates. */
eplb_status eplb_lower_bound(const double *w, int num_experts, const eplb_config *cfg,
                             double *bound);

/* Replicas beyond the first of the same expert on one GPU, summed over the plan's layers
 * (-1 when out of memory). */
long eplb_plan_duplicates(const eplb_plan *plan);

/* ------------------------------------------------------------------------------------------
 * Migration. Given the placement running now and a new plan of the same shape, reorders the
 * new plan's slots so that as many experts as possible stay where they are: first whole nodes'
 * replica sets are matched to nodes (when num_nodes > 1; groups stay together), then each
 * node's GPU replica sets to the node's GPUs (maximum-overlap assignments, Hungarian method),
 * then within every GPU each expert that is already there keeps its slot. Per-GPU loads, and so balancedness, are unchanged; log2phy is rebuilt.
 *
 * moved (may be NULL) receives the number of slots whose expert changes, i.e. expert weights
 * to copy; traffic (may be NULL, num_gpus * num_gpus longs) receives, in traffic[src*G + dst],
 * how many of those copies go from GPU src (which holds the expert now, preferring the same
 * node, then the lowest index) to GPU dst. */
eplb_status eplb_plan_migrate(const eplb_plan *current, eplb_plan *next, int num_nodes,
                              long *moved, long *traffic);

/* Plans like eplb_rebalance, starting from the placement running now, so that periodic
 * rebalancing does not reshuffle everything. Per layer, the balanced policy first plans from
 * scratch; then it exchanges replicas of the current placement (keeping its replica counts),
 * stopping as soon as the layer's balancedness is within `tolerance` of the fresh plan's (and
 * never less balanced than EPLB_POLICY_DEEPSEEK's); the current placement so improved is kept
 * when it gets there, the fresh plan otherwise. Layers planned afresh, EPLB_POLICY_DEEPSEEK,
 * cross_nodes, and placements that split a group across nodes in hierarchical mode fall back to
 * the fresh plan. The result is then reordered against current by eplb_plan_migrate (moved
 * and traffic as there); layers_kept (may be NULL) counts the layers that kept the current
 * placement. tolerance: a balancedness difference, >= 0 (0: keep only what is as balanced as a
 * fresh plan). */
eplb_status eplb_rebalance_from(const double *weight, int num_layers, int num_experts,
                                const eplb_config *cfg, const eplb_plan *current,
                                double tolerance, eplb_plan *plan, long *moved, long *traffic,
                                int *layers_kept);

#ifdef __cplusplus
}
#endif
#endif
