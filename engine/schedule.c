/* schedule.c: the schedule container shared by all generators: allocation, the stage
 * placement tables, appending actions, neighbour lookup and the generators' table. */
#include "engine/schedule.h"

#include <stdlib.h>
#include <string.h>

char dp_action_letter(int kind)
{
    static const char letters[] = "FBIW";
    return kind >= 0 && kind < 4 ? letters[kind] : '?';
}

/* ----------------------------------------------------------------------------
 * generators' table: a new schedule is one file and one row here */

dp_status dp_schedule_dualpipe_check(const dp_schedule_params *p);
dp_status dp_schedule_dualpipe_generate(const dp_schedule_params *p, dp_schedule **out);
dp_status dp_schedule_dualpipev_check(const dp_schedule_params *p);
dp_status dp_schedule_dualpipev_generate(const dp_schedule_params *p, dp_schedule **out);
dp_status dp_schedule_1f1b_check(const dp_schedule_params *p);
dp_status dp_schedule_1f1b_generate(const dp_schedule_params *p, dp_schedule **out);
dp_status dp_schedule_zb1p_check(const dp_schedule_params *p);
dp_status dp_schedule_zb1p_generate(const dp_schedule_params *p, dp_schedule **out);
dp_status dp_schedule_interleaved_check(const dp_schedule_params *p);
dp_status dp_schedule_interleaved_generate(const dp_schedule_params *p, dp_schedule **out);
dp_status dp_schedule_gpipe_check(const dp_schedule_params *p);
dp_status dp_schedule_gpipe_generate(const dp_schedule_params *p, dp_schedule **out);

const dp_schedule_generator dp_schedule_generators[] = {
    {"dualpipe", "DeepSeek's bidirectional DualPipe (two pipes, overlapped F&B)",
     dp_schedule_dualpipe_check, dp_schedule_dualpipe_generate},
    {"dualpipev", "DualPipeV: DualPipe cut in half, 2 stages per rank in a V",
     dp_schedule_dualpipev_check, dp_schedule_dualpipev_generate},
    {"1f1b", "one forward one backward (PipeDream-Flush)", dp_schedule_1f1b_check, dp_schedule_1f1b_generate},
    {"zb1p", "zero-bubble ZB-H1: 1F1B with deferred weight gradients", dp_schedule_zb1p_check,
     dp_schedule_zb1p_generate},
    {"interleaved-1f1b", "1F1B over two model chunks per rank (Megatron-LM's virtual pipeline)",
     dp_schedule_interleaved_check, dp_schedule_interleaved_generate},
    {"gpipe", "all forwards, then all backwards", dp_schedule_gpipe_check, dp_schedule_gpipe_generate},
    {NULL, NULL, NULL, NULL},
};

const dp_schedule_generator *dp_schedule_find(const char *name)
{
    for (const dp_schedule_generator *g = dp_schedule_generators; name && g->name; g++)
        if (strcmp(g->name, name) == 0) return g;
    return NULL;
}

dp_status dp_schedule_generate(const char *name, const dp_schedule_params *p, dp_schedule **out)
{
    *out = NULL;
    const dp_schedule_generator *g = dp_schedule_find(name);
    if (!g) {
        char known[256] = "";
        for (const dp_schedule_generator *k = dp_schedule_generators; k->name; k++) {
            if (known[0]) strncat(known, ", ", sizeof known - strlen(known) - 1);
            strncat(known, k->name, sizeof known - strlen(known) - 1);
        }
        return dp_fail(DP_ERR_NOT_FOUND, "unknown schedule '%s'; known schedules: %s", name ? name : "(none)",
                       known);
    }
    DP_CHECK(g->check(p));
    /* a bound on memory and time: about 3 actions per rank and micro-batch */
    if ((long long)p->ranks * p->chunks > DP_SCHEDULE_MAX_RANK_CHUNKS)
        return dp_fail(DP_ERR_INVALID, "%s with %d ranks x %d micro-batches is too large: ranks x chunks must be <= %d",
                       name, p->ranks, p->chunks, DP_SCHEDULE_MAX_RANK_CHUNKS);
    return g->generate(p, out);
}

/* ----------------------------------------------------------------------------
 * container */

typedef struct {
    dp_schedule pub;
    int *capacity; /* [num_ranks] */
} dp_schedule_impl;

dp_status dp_schedule_alloc(const char *name, int ranks, int local_stages, int pipes, int stages, int chunks,
                            dp_schedule **out)
{
    *out = NULL;
    if (ranks < 1 || local_stages < 1 || local_stages > DP_MAX_LOCAL_STAGES || pipes < 1 || pipes > DP_MAX_LOCAL_STAGES || stages < 1 ||
        chunks < 1 || chunks % pipes != 0)
        return dp_fail(DP_ERR_INTERNAL, "bad schedule shape: ranks %d dirs %d pipes %d stages %d chunks %d",
                       ranks, local_stages, pipes, stages, chunks);
    dp_schedule_impl *impl = calloc(1, sizeof *impl);
    if (!impl) return dp_fail(DP_ERR_NOMEM, "out of memory allocating a schedule");
    dp_schedule *s = &impl->pub;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->num_ranks = ranks;
    s->num_local_stages = local_stages;
    s->num_pipes = pipes;
    s->num_stages = stages;
    s->num_chunks = chunks;
    s->chunks_per_pipe = chunks / pipes;
    s->num_actions = calloc((size_t)ranks, sizeof *s->num_actions);
    s->actions = calloc((size_t)ranks, sizeof *s->actions);
    impl->capacity = calloc((size_t)ranks, sizeof *impl->capacity);
    int ok = s->num_actions && s->actions && impl->capacity;
    for (int d = 0; d < DP_MAX_LOCAL_STAGES && ok; d++) {
        s->stage_rank[d] = malloc(sizeof(int) * (size_t)stages);
        s->stage_local[d] = malloc(sizeof(int) * (size_t)stages);
        s->slot_pipe[d] = malloc(sizeof(int) * (size_t)ranks);
        s->slot_stage[d] = malloc(sizeof(int) * (size_t)ranks);
        ok = s->stage_rank[d] && s->stage_local[d] && s->slot_pipe[d] && s->slot_stage[d];
        if (!ok) break;
        for (int i = 0; i < stages; i++) s->stage_rank[d][i] = s->stage_local[d][i] = -1;
        for (int i = 0; i < ranks; i++) s->slot_pipe[d][i] = s->slot_stage[d][i] = -1;
    }
    if (!ok) {
        dp_schedule_free(s);
        return dp_fail(DP_ERR_NOMEM, "out of memory allocating a schedule");
    }
    *out = s;
    return DP_OK;
}

void dp_schedule_free(dp_schedule *s)
{
    if (!s) return;
    dp_schedule_impl *impl = (dp_schedule_impl *)s;
    for (int r = 0; s->actions && r < s->num_ranks; r++) free(s->actions[r]);
    free(s->actions);
    free(s->num_actions);
    for (int d = 0; d < DP_MAX_LOCAL_STAGES; d++) {
        free(s->stage_rank[d]);
        free(s->stage_local[d]);
        free(s->slot_pipe[d]);
        free(s->slot_stage[d]);
    }
    free(impl->capacity);
    free(impl);
}

void dp_schedule_place(dp_schedule *s, int pipe, int stage, int rank, int local_stage)
{
    s->stage_rank[pipe][stage] = rank;
    s->stage_local[pipe][stage] = local_stage;
    s->slot_pipe[local_stage][rank] = pipe;
    s->slot_stage[local_stage][rank] = stage;
}

dp_status dp_schedule_push(dp_schedule *s, int rank, int kind, int local_stage, int chunk, int overlap)
{
    dp_schedule_impl *impl = (dp_schedule_impl *)s;
    if (s->num_actions[rank] == impl->capacity[rank]) {
        int cap = impl->capacity[rank] ? 2 * impl->capacity[rank] : 64;
        dp_action *a = realloc(s->actions[rank], sizeof *a * (size_t)cap);
        if (!a) return dp_fail(DP_ERR_NOMEM, "out of memory growing a schedule");
        s->actions[rank] = a;
        impl->capacity[rank] = cap;
    }
    dp_action *a = &s->actions[rank][s->num_actions[rank]++];
    a->kind = (uint8_t)kind;
    a->local_stage = (uint8_t)local_stage;
    a->overlap = (uint8_t)(overlap != 0);
    a->reserved = 0;
    a->chunk = chunk;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * neighbours along a pipe */

int dp_schedule_prev(const dp_schedule *s, int rank, int local_stage, int *prev_local)
{
    int p = s->slot_pipe[local_stage][rank], st = s->slot_stage[local_stage][rank];
    if (st <= 0) return -1;
    if (prev_local) *prev_local = s->stage_local[p][st - 1];
    return s->stage_rank[p][st - 1];
}

int dp_schedule_next(const dp_schedule *s, int rank, int local_stage, int *next_local)
{
    int p = s->slot_pipe[local_stage][rank], st = s->slot_stage[local_stage][rank];
    if (st < 0 || st >= s->num_stages - 1) return -1;
    if (next_local) *next_local = s->stage_local[p][st + 1];
    return s->stage_rank[p][st + 1];
}

int dp_schedule_is_first_stage(const dp_schedule *s, int rank, int local_stage)
{
    return s->slot_stage[local_stage][rank] == 0;
}

int dp_schedule_is_last_stage(const dp_schedule *s, int rank, int local_stage)
{
    return s->slot_stage[local_stage][rank] == s->num_stages - 1;
}
