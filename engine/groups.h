/* groups.h: the process groups one rank takes part in, all made here by splitting the world
 * group: its pipeline (the ranks that pass activations to each other) and DualPipe's pair
 * (the two ranks holding the same stages, which add their gradients); expert-parallel and
 * data-parallel groups join them here. Training code uses groups; it never splits. */
#ifndef DP_GROUPS_H
#define DP_GROUPS_H

#include "engine/link.h"
#include "engine/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    dp_link *world;    /* every rank of the job; results are gathered to its rank 0 through it */
    dp_link *pipeline; /* this rank's pipeline, ranked by pipeline rank: with one pipeline per job (no data
                          parallelism yet) it is the world group itself, not a copy */
    dp_link *pair;     /* two-pipe schedules: this rank and the rank holding its first local stage in the
                          other pipe, ranked by world rank; NULL otherwise */
} dp_groups;

/* Collective over the world: opens `rank`'s endpoint bound to dev, with the wait timeout, and
 * splits the groups above from it. On failure the groups made so far stay in *g for
 * dp_groups_close. */
dp_status dp_groups_open(const dp_link_ops *L, dp_link_world *w, int rank, dp_device *dev, int timeout_ms,
                         const dp_schedule *s, dp_groups *g);
void dp_groups_close(const dp_link_ops *L, dp_groups *g);

#ifdef __cplusplus
}
#endif
#endif
