/* groups.c: the process groups of a rank (see groups.h). Every split is collective: each rank
 * makes the same splits in the same order (pipeline, pair, data, expert), here and nowhere else. */
#include "engine/groups.h"

#include <string.h>

dp_status dp_groups_open(const dp_link_ops *L, dp_link_world *w, int rank, dp_device *dev, int timeout_ms,
                         const dp_schedule *s, const dp_layout *layout, dp_groups *g)
{
    memset(g, 0, sizeof *g);
    int replica = dp_layout_replica(layout, rank), prank = dp_layout_pipeline_rank(layout, rank);
    DP_CHECK(L->open(w, rank, dev, &g->world));
    DP_CHECK(L->set_timeout(g->world, timeout_ms));
    if (layout->replicas > 1) DP_CHECK(L->split(g->world, replica, prank, &g->pipeline));
    else g->pipeline = g->world;
    if (s->num_pipes == 2) {
        /* the rank holding this rank's first stage in the other pipe; color: the lower of the
         * two world ranks, unique across replicas */
        int pipe = s->slot_pipe[0][prank], stage = s->slot_stage[0][prank];
        int partner = dp_layout_world_rank(layout, replica, s->stage_rank[1 - pipe][stage]);
        DP_CHECK(L->split(g->world, rank < partner ? rank : partner, rank, &g->pair));
    }
    /* the data-parallel group: the same pipeline rank and ep rank in every data-parallel replica
     * (without expert parallelism: the same pipeline rank in every replica) */
    int ep = dp_layout_ep(layout), d = replica / ep, e = replica % ep, P = layout->pipeline_ranks;
    if (layout->replicas / ep > 1) DP_CHECK(L->split(g->world, e * P + prank, d, &g->data));
    for (int i = 0; i < 2 && ep > 1; i++) DP_CHECK(L->split(g->world, d * P + prank, e, &g->expert[i]));
    return DP_OK;
}

void dp_groups_close(const dp_link_ops *L, dp_groups *g)
{
    for (int i = 0; i < 2; i++)
        if (g->expert[i]) L->close(g->expert[i]);
    if (g->data) L->close(g->data);
    if (g->pair) L->close(g->pair);
    if (g->pipeline && g->pipeline != g->world) L->close(g->pipeline);
    if (g->world) L->close(g->world);
    memset(g, 0, sizeof *g);
}
