/* groups.h: the layout of a job's ranks and the process groups one rank takes part in, all
 * made here by splitting the world group: its pipeline (the ranks that pass activations to
 * each other), DualPipe's pair (the two ranks of a pipeline holding the same stages) and its
 * data-parallel group (the ranks holding the same stages in every replica of the pipeline).
 * Training code uses groups; it never splits. */
#ifndef DP_GROUPS_H
#define DP_GROUPS_H

#include "engine/link.h"
#include "engine/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * layout: world rank = replica x pipeline_ranks + pipeline rank, so that each replica's
 * pipeline is a contiguous block of world ranks (on one host where a launcher fills hosts
 * rank by rank: activations, the heaviest traffic, stay within it), and replica 0 holds world
 * ranks 0 .. pipeline_ranks - 1, the root among them. */

typedef struct {
    int replicas;       /* replicas of the pipeline, >= 1: data-parallel x expert-parallel */
    int pipeline_ranks; /* ranks of one pipeline: the schedule's num_ranks */
    int ep;             /* expert-parallel ranks (0 or 1: none): replica = d x ep + e, so that the
                           pipelines sharing experts are neighbours */
} dp_layout;

static inline int dp_layout_ep(const dp_layout *l) { return l->ep > 1 ? l->ep : 1; }

static inline int dp_layout_world_size(const dp_layout *l) { return l->replicas * l->pipeline_ranks; }
static inline int dp_layout_replica(const dp_layout *l, int world_rank) { return world_rank / l->pipeline_ranks; }
static inline int dp_layout_pipeline_rank(const dp_layout *l, int world_rank) { return world_rank % l->pipeline_ranks; }
static inline int dp_layout_world_rank(const dp_layout *l, int replica, int pipeline_rank)
{
    return replica * l->pipeline_ranks + pipeline_rank;
}

/* ----------------------------------------------------------------------------
 * groups */

typedef struct {
    dp_link *world;    /* every rank of the job; results are gathered to its rank 0 through it */
    dp_link *pipeline; /* this rank's pipeline (its replica), ranked by pipeline rank: with one
                          replica it is the world group itself, not a copy */
    dp_link *pair;     /* two-pipe schedules: this rank and the rank of the same pipeline holding its
                          first local stage in the other pipe, ranked by world rank; NULL otherwise */
    dp_link *data;     /* the ranks of the same pipeline rank and expert-parallel rank in every
                          data-parallel replica (they hold the same stages and experts), ranked by
                          replica; NULL with one */
    dp_link *expert[2]; /* expert parallelism: the ranks of the same pipeline rank in the ep
                           pipelines of this data-parallel replica, ranked by ep rank, twice (one
                           communicator per stream); NULL without */
} dp_groups;

/* Collective over the world of dp_layout_world_size(layout) ranks: opens world rank `rank`'s
 * endpoint bound to dev, with the wait timeout, and splits the groups above from it (s is the
 * schedule of one pipeline). On failure the groups made so far stay in *g for dp_groups_close. */
dp_status dp_groups_open(const dp_link_ops *L, dp_link_world *w, int rank, dp_device *dev, int timeout_ms,
                         const dp_schedule *s, const dp_layout *layout, dp_groups *g);
void dp_groups_close(const dp_link_ops *L, dp_groups *g);

#ifdef __cplusplus
}
#endif
#endif
