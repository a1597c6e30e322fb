/* schedule_validate.c: the schedule validator. Checks each rank's own order (F before
 * B or I, W after its I, everything exactly once, pairs made of an F and a backward),
 * then replays all ranks together to prove that they finish when every action first
 * waits for the inputs it receives; reports peak live activations and parameter copies. */
#include <stdlib.h>
#include <string.h>

#include "engine/schedule_replay.h"

enum { NONE = 0, FORWARD_DONE, INPUT_GRAD_DONE, COMPLETE };

static const char *describe(const dp_action *a, char *buf, size_t n)
{
    snprintf(buf, n, "%c local stage %d chunk %d", dp_action_letter(a->kind), a->local_stage, a->chunk);
    return buf;
}

/* One rank's own order; fills its peak of live micro-batch-stages. */
static dp_status check_rank(const dp_schedule *s, int r, unsigned char *state, int *peak)
{
    int cpp = s->chunks_per_pipe, alive = 0;
    char buf[64];
    memset(state, NONE, (size_t)s->num_local_stages * (size_t)cpp);
    *peak = 0;
    for (int i = 0; i < s->num_actions[r]; i++) {
        const dp_action *a = &s->actions[r][i];
        if (a->kind > DP_ACT_W)
            return dp_fail(DP_ERR_INVALID, "rank %d action %d has an unknown kind %d", r, i, a->kind);
        if (a->local_stage >= s->num_local_stages || s->slot_pipe[a->local_stage][r] < 0)
            return dp_fail(DP_ERR_INVALID, "rank %d action %d (%s) names a local stage the rank does not hold", r, i,
                           describe(a, buf, sizeof buf));
        if (a->chunk < 0 || a->chunk >= cpp)
            return dp_fail(DP_ERR_INVALID, "rank %d action %d (%s): chunk out of range 0..%d", r, i,
                           describe(a, buf, sizeof buf), cpp - 1);
        if (a->overlap) {
            const dp_action *b = i + 1 < s->num_actions[r] ? a + 1 : NULL;
            if (a->kind != DP_ACT_F || !b || (b->kind != DP_ACT_B && b->kind != DP_ACT_I) || b->overlap)
                return dp_fail(DP_ERR_INVALID,
                               "rank %d action %d (%s): an overlapped pair must be a forward followed by a backward", r,
                               i, describe(a, buf, sizeof buf));
        }
        unsigned char *st = &state[(size_t)a->local_stage * (size_t)cpp + (size_t)a->chunk];
        switch (a->kind) {
        case DP_ACT_F:
            if (*st != NONE)
                return dp_fail(DP_ERR_INVALID, "rank %d action %d: second forward of local stage %d chunk %d", r, i, a->local_stage,
                               a->chunk);
            *st = FORWARD_DONE;
            if (++alive > *peak) *peak = alive;
            break;
        case DP_ACT_B:
        case DP_ACT_I:
            if (*st != FORWARD_DONE)
                return dp_fail(DP_ERR_INVALID, "rank %d action %d (%s): backward %s", r, i, describe(a, buf, sizeof buf),
                               *st == NONE ? "before its forward" : "run twice");
            *st = a->kind == DP_ACT_B ? COMPLETE : INPUT_GRAD_DONE;
            alive--;
            break;
        case DP_ACT_W:
            if (*st != INPUT_GRAD_DONE)
                return dp_fail(DP_ERR_INVALID, "rank %d action %d (%s): weight gradient %s", r, i,
                               describe(a, buf, sizeof buf), *st == COMPLETE ? "run twice or after a full B" : "before its I");
            *st = COMPLETE;
            break;
        }
    }
    for (int d = 0; d < s->num_local_stages; d++) {
        if (s->slot_pipe[d][r] < 0) continue;
        for (int k = 0; k < cpp; k++) {
            unsigned char st = state[(size_t)d * (size_t)cpp + (size_t)k];
            if (st != COMPLETE)
                return dp_fail(DP_ERR_INVALID, "rank %d never %s local stage %d chunk %d", r,
                               st == NONE ? "runs the forward of" : st == FORWARD_DONE ? "runs the backward of"
                                                                                        : "runs the weight gradient of",
                               d, k);
        }
    }
    return DP_OK;
}

void dp_schedule_report_free(dp_schedule_report *r)
{
    if (!r) return;
    free(r->peak_activations);
    free(r->param_copies);
    memset(r, 0, sizeof *r);
}

dp_status dp_schedule_validate(const dp_schedule *s, dp_schedule_report *report)
{
    int R = s->num_ranks;
    if (report) memset(report, 0, sizeof *report);
    for (int p = 0; p < s->num_pipes; p++)
        for (int st = 0; st < s->num_stages; st++)
            if (s->stage_rank[p][st] < 0 || s->stage_rank[p][st] >= R)
                return dp_fail(DP_ERR_INVALID, "stage %d of pipe %d is placed on no rank", st, p);

    unsigned char *state = malloc((size_t)s->num_local_stages * (size_t)s->chunks_per_pipe);
    int *peak = calloc((size_t)R, sizeof(int)), *params = calloc((size_t)R, sizeof(int));
    double **start = calloc((size_t)R, sizeof(double *)), **end = calloc((size_t)R, sizeof(double *));
    dp_status st = DP_OK;
    if (!state || !peak || !params || !start || !end) st = dp_fail(DP_ERR_NOMEM, "out of memory validating a schedule");
    for (int r = 0; st == DP_OK && r < R; r++) {
        st = check_rank(s, r, state, &peak[r]);
        for (int d = 0; d < s->num_local_stages; d++) params[r] += s->slot_pipe[d][r] >= 0;
        size_t n = s->num_actions[r] ? (size_t)s->num_actions[r] : 1;
        start[r] = malloc(sizeof(double) * n);
        end[r] = malloc(sizeof(double) * n);
        if (st == DP_OK && (!start[r] || !end[r])) st = dp_fail(DP_ERR_NOMEM, "out of memory validating a schedule");
    }
    if (st == DP_OK) {
        dp_cost unit = {.f = 1, .b = 2, .w = 1, .fb = 2, .p2p = 0};
        st = dp_schedule_replay(s, &unit, start, end, NULL);
    }
    for (int r = 0; start && end && r < R; r++) {
        free(start[r]);
        free(end[r]);
    }
    free(start);
    free(end);
    free(state);
    if (st == DP_OK && report) {
        report->peak_activations = peak;
        report->param_copies = params;
        for (int r = 0; r < R; r++)
            if (peak[r] > report->max_peak_activations) report->max_peak_activations = peak[r];
    } else {
        free(peak);
        free(params);
    }
    return st;
}
