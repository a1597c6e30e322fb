/* schedule_simulate.c: the cost-model simulator and the dependency replay it shares with
 * the validator. Given F, B, W, F&B, a p2p latency and the expert all-to-all of a forward
 * and of a backward it gives every action's start and end, each rank's busy and idle time,
 * the makespan, and each rank's exposed communication. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/schedule_replay.h"

dp_cost dp_cost_default(void) { return (dp_cost){.f = 1, .b = 2, .w = 1, .fb = 3, .p2p = 0, .a2a_f = 0, .a2a_b = 0}; }

/* Any finite cost >= 0 keeps the simulator's arithmetic meaningful (its times are checked
 * for overflow as they are made); W <= B keeps an I's cost B - W >= 0. */
static dp_status cost_check(const dp_cost *c)
{
    const double v[7] = {c->f, c->b, c->w, c->fb, c->p2p, c->a2a_f, c->a2a_b};
    static const char *names[7] = {"F", "B", "W", "FB", "P2P", "A2AF", "A2AB"};
    for (int i = 0; i < 7; i++) {
        if (!isfinite(v[i]))
            return dp_fail(DP_ERR_INVALID, "cost %s is %g: every cost must be a finite number >= 0", names[i], v[i]);
        if (v[i] < 0)
            return dp_fail(DP_ERR_INVALID, "cost %s is negative (%g): every cost must be >= 0", names[i], v[i]);
    }
    if (c->w > c->b)
        return dp_fail(DP_ERR_INVALID, "cost W (%g) exceeds B (%g): B is the full backward, and an I costs B - W",
                       c->w, c->b);
    return DP_OK;
}

dp_status dp_cost_parse(const char *text, dp_cost *cost)
{
    char buf[256];
    if (!text || strlen(text) >= sizeof buf)
        return dp_fail(DP_ERR_INVALID, "cost list is empty or too long; expected e.g. F=1,B=2,W=1,FB=3");
    strcpy(buf, text);
    dp_cost c = *cost;
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            return dp_fail(DP_ERR_INVALID, "cost item '%s' is not NAME=VALUE; expected e.g. F=1,B=2,W=1,FB=3", item);
        *eq = '\0';
        char *end = NULL;
        errno = 0;
        double v = strtod(eq + 1, &end);
        if (eq[1] == '\0' || *end != '\0' || v != v)
            return dp_fail(DP_ERR_INVALID, "cost %s has value '%s', which is not a number", item, eq + 1);
        if (!isfinite(v) || (errno == ERANGE && fabs(v) > 1))
            return dp_fail(DP_ERR_INVALID, "cost %s is '%s', which is not a finite number: every cost must be 0 or "
                                           "between %g and %g", item, eq + 1, DP_COST_MIN, DP_COST_MAX);
        if (v < 0)
            return dp_fail(DP_ERR_INVALID, "cost %s is negative (%g): every cost must be >= 0", item, v);
        /* the range keeps every simulated time and the pictures' scales finite; an underflow
         * (1e-400) is not silently taken for 0 */
        if (errno == ERANGE || (v != 0 && (v < DP_COST_MIN || v > DP_COST_MAX)))
            return dp_fail(DP_ERR_INVALID, "cost %s is '%s': every cost must be 0 or between %g and %g", item, eq + 1,
                           DP_COST_MIN, DP_COST_MAX);
        double *slot = NULL;
        if (strcasecmp(item, "F") == 0) slot = &c.f;
        else if (strcasecmp(item, "B") == 0) slot = &c.b;
        else if (strcasecmp(item, "W") == 0) slot = &c.w;
        else if (strcasecmp(item, "FB") == 0 || strcasecmp(item, "F&B") == 0) slot = &c.fb;
        else if (strcasecmp(item, "P2P") == 0) slot = &c.p2p;
        else if (strcasecmp(item, "A2AF") == 0) slot = &c.a2a_f;
        else if (strcasecmp(item, "A2AB") == 0) slot = &c.a2a_b;
        else
            return dp_fail(DP_ERR_INVALID, "unknown cost '%s'; known: F, B, W, FB, P2P, A2AF, A2AB", item);
        *slot = v;
    }
    DP_CHECK(cost_check(&c));
    *cost = c;
    return DP_OK;
}

/* compute of one action */
static double compute_of(const dp_cost *cost, int kind)
{
    switch (kind) {
    case DP_ACT_F: return cost->f;
    case DP_ACT_B: return cost->b;
    case DP_ACT_I: return cost->b - cost->w;
    default: return cost->w;
    }
}

/* all-to-all of one action: a forward dispatches and combines, an input-backward (B or I) does
 * the same exchanges the other way, a W communicates nothing */
static double a2a_of(const dp_cost *cost, int kind)
{
    return kind == DP_ACT_F ? cost->a2a_f : kind == DP_ACT_W ? 0 : cost->a2a_b;
}

dp_span_cost dp_span_cost_of(const dp_cost *cost, const dp_action *a, int pair)
{
    if (!pair) {
        /* alone, an action waits out each of its exchanges: nothing else computes meanwhile */
        double x = a2a_of(cost, a->kind);
        return (dp_span_cost){compute_of(cost, a->kind) + x, x, x};
    }
    double x = a2a_of(cost, a[0].kind) + a2a_of(cost, a[1].kind);
    if (cost->no_overlap) return (dp_span_cost){cost->fb + x, x, x};
    /* The executor gives the two halves turns, each up to its next communication point: while
     * one half's dispatch or combine is in flight, the other half computes, and the two halves'
     * exchanges are in flight at the same time. So each half is a chain of its own compute and
     * its own exchanges, the two chains sharing one compute engine: the pair lasts
     * max(fb, c0 + x0, c1 + x1), c0 and c1 the halves' shares of fb (in proportion to their lone
     * costs), x0 and x1 their all-to-alls. An all-to-all shorter than the other half's compute
     * hides entirely; with compute small against the network the pair lasts about its longer
     * half's chain, not the sum of both halves' exchanges (that is fb + x0 + x1, without the
     * overlap). */
    double x0 = a2a_of(cost, a[0].kind), x1 = a2a_of(cost, a[1].kind);
    double k0 = compute_of(cost, a[0].kind), k1 = compute_of(cost, a[1].kind);
    double c0 = k0 + k1 > 0 ? cost->fb * k0 / (k0 + k1) : cost->fb / 2, c1 = cost->fb - c0;
    double d = cost->fb;
    if (c0 + x0 > d) d = c0 + x0;
    if (c1 + x1 > d) d = c1 + x1;
    return (dp_span_cost){d, x, d - cost->fb};
}

/* ----------------------------------------------------------------------------
 * replay */

typedef struct {
    const dp_schedule *s;
    double *f_end; /* [pipe][stage][chunk]: when the forward finished, -1 before */
    double *b_end; /* the same for the backward (B or I) */
} replay_state;

static size_t at(const dp_schedule *s, int pipe, int stage, int chunk)
{
    return ((size_t)pipe * (size_t)s->num_stages + (size_t)stage) * (size_t)s->chunks_per_pipe + (size_t)chunk;
}

/* When the inputs of `a` on `rank` are there, or -1 when not yet known; *made: when they were
 * produced (earlier by the latency when they come from another rank). */
static double ready_time(const replay_state *st, const dp_cost *cost, int rank, const dp_action *a, double *made)
{
    *made = 0;
    const dp_schedule *s = st->s;
    int pipe = s->slot_pipe[a->local_stage][rank], stage = s->slot_stage[a->local_stage][rank];
    int from_stage;
    const double *table;
    if (a->kind == DP_ACT_F) {
        if (stage == 0) return 0;
        from_stage = stage - 1;
        table = st->f_end;
    } else if (a->kind == DP_ACT_B || a->kind == DP_ACT_I) {
        if (stage == s->num_stages - 1) return 0;
        from_stage = stage + 1;
        table = st->b_end;
    } else {
        return 0; /* W needs only its I, earlier on the same rank */
    }
    double t = table[at(s, pipe, from_stage, a->chunk)];
    if (t < 0) return -1;
    *made = t;
    return s->stage_rank[pipe][from_stage] == rank ? t : t + cost->p2p;
}

static void record(replay_state *st, int rank, const dp_action *a, double end)
{
    const dp_schedule *s = st->s;
    int pipe = s->slot_pipe[a->local_stage][rank], stage = s->slot_stage[a->local_stage][rank];
    if (a->kind == DP_ACT_F) st->f_end[at(s, pipe, stage, a->chunk)] = end;
    else if (a->kind == DP_ACT_B || a->kind == DP_ACT_I) st->b_end[at(s, pipe, stage, a->chunk)] = end;
}

dp_status dp_schedule_replay(const dp_schedule *s, const dp_cost *cost, double **start, double **end,
                             double *p2p_exposed)
{
    size_t n = (size_t)s->num_pipes * (size_t)s->num_stages * (size_t)s->chunks_per_pipe;
    replay_state st = {.s = s, .f_end = malloc(sizeof(double) * n), .b_end = malloc(sizeof(double) * n)};
    int *next = calloc((size_t)s->num_ranks, sizeof(int));
    double *free_at = calloc((size_t)s->num_ranks, sizeof(double));
    dp_status status = DP_OK;
    if (!st.f_end || !st.b_end || !next || !free_at) {
        status = dp_fail(DP_ERR_NOMEM, "out of memory replaying a schedule");
        goto done;
    }
    for (size_t i = 0; i < n; i++) st.f_end[i] = st.b_end[i] = -1;

    for (int progress = 1; progress;) {
        progress = 0;
        for (int r = 0; r < s->num_ranks; r++) {
            while (next[r] < s->num_actions[r]) {
                int i = next[r];
                const dp_action *a = &s->actions[r][i];
                int pair = a->overlap && i + 1 < s->num_actions[r];
                double made0, made1 = 0;
                double t0 = ready_time(&st, cost, r, a, &made0);
                double t1 = pair ? ready_time(&st, cost, r, a + 1, &made1) : 0;
                if (t0 < 0 || t1 < 0) break;
                double t = free_at[r];
                if (t0 > t) t = t0;
                if (t1 > t) t = t1;
                /* the start without the latency of the inputs: t minus it is the wait the
                 * gating transfer's latency added (min(wait, p2p) when it came from afar) */
                double t_near = free_at[r];
                if (made0 > t_near) t_near = made0;
                if (made1 > t_near) t_near = made1;
                if (p2p_exposed && t > t_near) p2p_exposed[r] += t - t_near;
                double d = dp_span_cost_of(cost, a, pair).duration;
                if (!isfinite(t + d)) {
                    status = dp_fail(DP_ERR_INVALID,
                                     "rank %d action %d (%c local stage %d micro-batch %d) would end at %g, which is not "
                                     "finite: the costs are too large for the simulated times (keep them within %g)",
                                     r, i, dp_action_letter(a->kind), a->local_stage, a->chunk, t + d, DP_COST_MAX);
                    goto done;
                }
                start[r][i] = t;
                end[r][i] = t + d;
                record(&st, r, a, t + d);
                if (pair) {
                    start[r][i + 1] = t;
                    end[r][i + 1] = t + d;
                    record(&st, r, a + 1, t + d);
                }
                free_at[r] = t + d;
                next[r] += pair ? 2 : 1;
                progress = 1;
            }
        }
    }

    char stuck[512] = "";
    for (int r = 0; r < s->num_ranks; r++) {
        if (next[r] == s->num_actions[r]) continue;
        const dp_action *a = &s->actions[r][next[r]];
        size_t len = strlen(stuck);
        if (len < sizeof stuck - 64)
            snprintf(stuck + len, sizeof stuck - len, "%srank %d at action %d (%c local stage %d chunk %d)", len ? "; " : "", r,
                     next[r], dp_action_letter(a->kind), a->local_stage, a->chunk);
        status = DP_ERR_INVALID;
    }
    if (status != DP_OK)
        dp_fail(status, "deadlock: ranks wait for inputs that are never produced: %s", stuck);
done:
    free(st.f_end);
    free(st.b_end);
    free(next);
    free(free_at);
    return status;
}

/* ----------------------------------------------------------------------------
 * simulator */

void dp_simulation_free(dp_simulation *sim)
{
    if (!sim) return;
    for (int r = 0; r < sim->num_ranks; r++) {
        if (sim->start) free(sim->start[r]);
        if (sim->end) free(sim->end[r]);
    }
    free(sim->start);
    free(sim->end);
    free(sim->busy);
    free(sim->idle);
    free(sim->exposed_a2a);
    free(sim->exposed_p2p);
    free(sim->exposed_comm);
    memset(sim, 0, sizeof *sim);
}

dp_status dp_schedule_simulate(const dp_schedule *s, const dp_cost *cost, dp_simulation *out)
{
    memset(out, 0, sizeof *out);
    DP_CHECK(cost_check(cost));
    int R = s->num_ranks;
    out->num_ranks = R;
    out->start = calloc((size_t)R, sizeof(double *));
    out->end = calloc((size_t)R, sizeof(double *));
    out->busy = calloc((size_t)R, sizeof(double));
    out->idle = calloc((size_t)R, sizeof(double));
    out->exposed_a2a = calloc((size_t)R, sizeof(double));
    out->exposed_p2p = calloc((size_t)R, sizeof(double));
    out->exposed_comm = calloc((size_t)R, sizeof(double));
    out->cost = *cost;
    int ok = out->start && out->end && out->busy && out->idle && out->exposed_a2a && out->exposed_p2p &&
             out->exposed_comm;
    for (int r = 0; ok && r < R; r++) {
        size_t n = s->num_actions[r] ? (size_t)s->num_actions[r] : 1;
        out->start[r] = calloc(n, sizeof(double));
        out->end[r] = calloc(n, sizeof(double));
        ok = out->start[r] && out->end[r];
    }
    if (!ok) {
        dp_simulation_free(out);
        return dp_fail(DP_ERR_NOMEM, "out of memory simulating a schedule");
    }
    dp_status st = dp_schedule_replay(s, cost, out->start, out->end, out->exposed_p2p);
    if (st != DP_OK) {
        dp_simulation_free(out);
        return st;
    }
    for (int r = 0; r < R; r++) {
        for (int i = 0; i < s->num_actions[r]; i++) {
            if (i > 0 && s->actions[r][i - 1].overlap) continue; /* second half of a pair */
            out->busy[r] += out->end[r][i] - out->start[r][i];
            const dp_action *a = &s->actions[r][i];
            out->exposed_a2a[r] += dp_span_cost_of(cost, a, a->overlap && i + 1 < s->num_actions[r]).a2a_exposed;
            if (out->end[r][i] > out->makespan) out->makespan = out->end[r][i];
        }
    }
    for (int r = 0; r < R; r++) {
        out->idle[r] = out->makespan - out->busy[r];
        out->exposed_comm[r] = out->exposed_a2a[r] + out->exposed_p2p[r];
    }
    return DP_OK;
}
