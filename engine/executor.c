/* executor.c: one rank playing its actions (see executor.h). Sends are posted with the next
 * action's receives, as the reference posts them; a hand-off between two local stages of one
 * rank (the fold of a V) is a device copy through a staging buffer, not a message. */
#define _POSIX_C_SOURCE 200809L
#include "engine/executor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double dp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* The executor's record of one micro-batch on one local stage: its slot from the forward to the
 * last backward, then, retired, until the link's sends that read the slot's y and dx are done. */
typedef enum { MB_FREE = 0, MB_LIVE, MB_RETIRED } mb_state;

typedef struct {
    dp_slot *slot;
    int local_stage;
    mb_state state;
    dp_request *sending[2]; /* the link's send requests still reading y / dx */
    int unposted;           /* sends of y / dx queued for the next group, not yet given to the link */
} mb_record;

/* A send waiting for the next group. */
typedef struct {
    const void *buf;
    size_t bytes;
    int peer, tag;
    mb_record *mb;
    int which; /* 0: y, 1: dx */
    dp_stream *stream;
} deferred_send;

/* A receive of the current action. */
typedef struct {
    void *buf;
    int peer, tag;
    dp_stream *stream;
    dp_request *req;
} pending_recv;

/* Data handed from one local stage to the other (peer == this rank). */
typedef struct staged {
    struct staged *next;
    int tag;
    void *buf;
} staged;

struct dp_executor {
    dp_executor_config cfg;
    const dp_schedule *s;
    int r;
    size_t act_bytes, target_bytes;
    mb_record *mb[DP_MAX_LOCAL_STAGES]; /* [local_stage][chunk] */
    deferred_send *sends;
    int nsends, cap_sends;
    mb_record **retired; /* micro-batches done with, waiting for their sends to finish (at most all of them) */
    int nretired;
    staged *staging, *staging_free;
    dp_event *fork, *join; /* order a pair's second stream after the first, and the first after the pair */
};

/* ----------------------------------------------------------------------------
 * bookkeeping */

dp_status dp_executor_create(const dp_executor_config *cfg, dp_executor **out)
{
    *out = NULL;
    dp_executor *ex = calloc(1, sizeof *ex);
    if (!ex) return dp_fail(DP_ERR_NOMEM, "out of memory creating an executor");
    ex->cfg = *cfg;
    ex->s = cfg->sched;
    ex->r = cfg->rank;
    const dp_schedule *s = ex->s;
    for (int d = 0; d < s->num_local_stages; d++) {
        if (!cfg->stages[d]) {
            free(ex);
            return dp_fail(DP_ERR_INTERNAL, "executor: rank %d has no stage for local stage %d", cfg->rank, d);
        }
        ex->mb[d] = calloc((size_t)s->chunks_per_pipe, sizeof *ex->mb[d]);
        if (!ex->mb[d]) {
            dp_executor_destroy(ex);
            return dp_fail(DP_ERR_NOMEM, "out of memory creating an executor");
        }
        for (int k = 0; k < s->chunks_per_pipe; k++) ex->mb[d][k].local_stage = d;
    }
    /* every local stage has the model's shape */
    ex->act_bytes = dp_model_act_bytes(dp_stage_config(cfg->stages[0]));
    ex->target_bytes = dp_model_target_bytes(dp_stage_config(cfg->stages[0]));
    ex->cap_sends = 16;
    ex->sends = malloc(sizeof *ex->sends * (size_t)ex->cap_sends);
    ex->retired = malloc(sizeof *ex->retired * (size_t)(s->num_local_stages * s->chunks_per_pipe));
    if (!ex->sends || !ex->retired) {
        dp_executor_destroy(ex);
        return dp_fail(DP_ERR_NOMEM, "out of memory creating an executor");
    }
    dp_status st = cfg->dops->event_create(cfg->dev, &ex->fork);
    if (st == DP_OK) st = cfg->dops->event_create(cfg->dev, &ex->join);
    if (st != DP_OK) {
        dp_executor_destroy(ex);
        return st;
    }
    *out = ex;
    return DP_OK;
}

static void staging_free_list(dp_executor *ex, staged *p)
{
    while (p) {
        staged *n = p->next;
        ex->cfg.dops->free(ex->cfg.dev, p->buf);
        free(p);
        p = n;
    }
}

void dp_executor_destroy(dp_executor *ex)
{
    if (!ex) return;
    for (int d = 0; d < DP_MAX_LOCAL_STAGES; d++) free(ex->mb[d]);
    free(ex->sends);
    free(ex->retired);
    staging_free_list(ex, ex->staging);
    staging_free_list(ex, ex->staging_free);
    if (ex->fork) ex->cfg.dops->event_destroy(ex->cfg.dev, ex->fork);
    if (ex->join) ex->cfg.dops->event_destroy(ex->cfg.dev, ex->join);
    free(ex);
}

static dp_stage *stage_of(dp_executor *ex, int local_stage) { return ex->cfg.stages[local_stage]; }
static int pipe_of(dp_executor *ex, int local_stage) { return ex->s->slot_pipe[local_stage][ex->r]; }

static dp_status defer_send(dp_executor *ex, const void *buf, size_t bytes, int peer, int tag, mb_record *mb,
                            int which, dp_stream *stream)
{
    if (ex->nsends == ex->cap_sends) {
        int cap = 2 * ex->cap_sends;
        deferred_send *n = realloc(ex->sends, sizeof *n * (size_t)cap);
        if (!n) return dp_fail(DP_ERR_NOMEM, "out of memory queueing a send");
        ex->sends = n, ex->cap_sends = cap;
    }
    ex->sends[ex->nsends++] = (deferred_send){buf, bytes, peer, tag, mb, which, stream};
    mb->unposted++;
    return DP_OK;
}

/* A micro-batch's passes are done: its slot goes back once its sends are. */
static void retire(dp_executor *ex, mb_record *mb)
{
    mb->state = MB_RETIRED;
    ex->retired[ex->nretired++] = mb;
}

/* Gives back the retired slots whose sends have finished; with `all`, waits for them. */
static dp_status reclaim(dp_executor *ex, int all)
{
    const dp_link_ops *L = ex->cfg.lops;
    int kept = 0;
    dp_status st = DP_OK;
    for (int i = 0; i < ex->nretired; i++) {
        mb_record *mb = ex->retired[i];
        int done = mb->unposted == 0;
        for (int w = 0; w < 2 && done; w++) {
            if (!mb->sending[w]) continue;
            int d = 1;
            if (!all) {
                dp_status t = L->test(ex->cfg.link, mb->sending[w], &d);
                if (t != DP_OK && st == DP_OK) st = t;
            }
            done = d;
        }
        if (!done && !all) {
            ex->retired[kept++] = mb;
            continue;
        }
        for (int w = 0; w < 2; w++)
            if (mb->sending[w]) {
                dp_status t = L->wait(ex->cfg.link, mb->sending[w]);
                if (t != DP_OK && st == DP_OK) st = t;
                mb->sending[w] = NULL;
            }
        dp_stage_slot_put(stage_of(ex, mb->local_stage), mb->slot);
        mb->slot = NULL;
        mb->unposted = 0;
        mb->state = MB_FREE;
    }
    ex->nretired = kept;
    return st;
}

/* ----------------------------------------------------------------------------
 * local hand-off between the two stages of one rank */

static dp_status stage_out(dp_executor *ex, int tag, const void *src, dp_stream *stream)
{
    const dp_device_ops *D = ex->cfg.dops;
    staged *b = ex->staging_free;
    if (b) ex->staging_free = b->next;
    else {
        b = calloc(1, sizeof *b);
        if (!b) return dp_fail(DP_ERR_NOMEM, "out of memory staging a hand-off");
        dp_status st = D->alloc(ex->cfg.dev, ex->act_bytes, &b->buf);
        if (st != DP_OK) {
            free(b);
            return st;
        }
    }
    b->tag = tag;
    b->next = ex->staging;
    ex->staging = b;
    return D->copy(ex->cfg.dev, b->buf, src, ex->act_bytes, DP_COPY_DEVICE_TO_DEVICE, stream);
}

static dp_status stage_in(dp_executor *ex, int tag, void *dst, dp_stream *stream)
{
    for (staged **p = &ex->staging; *p; p = &(*p)->next) {
        if ((*p)->tag != tag) continue;
        staged *b = *p;
        *p = b->next;
        dp_status st = ex->cfg.dops->copy(ex->cfg.dev, dst, b->buf, ex->act_bytes,
                                          DP_COPY_DEVICE_TO_DEVICE, stream);
        b->next = ex->staging_free;
        ex->staging_free = b;
        return st;
    }
    return dp_fail(DP_ERR_INTERNAL,
                   "rank %d: a hand-off between its two stages (channel %d, micro-batch %d) was used before it was made",
                   ex->r, DP_TAG_CHANNEL(tag), DP_TAG_SEQ(tag));
}

/* ----------------------------------------------------------------------------
 * one action: what it receives, what it computes, what it sends */

/* Where an action's compute stands: a B runs two stage passes, input then weight. */
typedef enum { STEP_START = 0, STEP_FORWARD, STEP_BACKWARD_INPUT, STEP_BACKWARD_WEIGHT, STEP_DONE } action_step;

typedef struct {
    dp_action a;
    dp_stream *stream;
    pending_recv recv; /* recv.buf == NULL: nothing to receive from another rank */
    int local_tag;     /* >= 0: take the input from the local staging instead */
    void *local_dst;
    action_step step;
} prepared;

static dp_status prepare(dp_executor *ex, dp_step_io *io, const dp_action *a, dp_stream *stream, int infer,
                         prepared *p)
{
    const dp_schedule *s = ex->s;
    int r = ex->r, d = a->local_stage, k = a->chunk, pipe = pipe_of(ex, d);
    memset(p, 0, sizeof *p);
    p->a = *a;
    p->stream = stream;
    p->local_tag = -1;
    if (k < 0 || k >= s->chunks_per_pipe || d >= s->num_local_stages)
        return dp_fail(DP_ERR_INTERNAL, "rank %d: action %c with local stage %d chunk %d is out of range", r,
                       dp_action_letter(a->kind), d, k);
    dp_stage *stage = stage_of(ex, d);
    if (a->kind == DP_ACT_F) {
        mb_record *mb = &ex->mb[d][k];
        if (mb->state != MB_FREE)
            return dp_fail(DP_ERR_INTERNAL, "rank %d: forward of local stage %d chunk %d runs twice", r, d, k);
        dp_slot *slot;
        DP_CHECK(dp_stage_slot_get(stage, &slot));
        mb->slot = slot;
        mb->state = MB_LIVE;
        if (dp_schedule_is_last_stage(s, r, d) && !infer)
            slot->target = (const char *)io->target[pipe] + (size_t)k * ex->target_bytes;
        int pd, prev = dp_schedule_prev(s, r, d, &pd);
        if (prev < 0) {
            return ex->cfg.dops->copy(ex->cfg.dev, slot->x, (const char *)io->input[pipe] + (size_t)k * ex->act_bytes,
                                      ex->act_bytes, DP_COPY_DEVICE_TO_DEVICE, stream);
        }
        int tag = DP_TAG(DP_CHANNEL_ACTIVATION(pipe), k);
        if (prev == r) p->local_tag = tag, p->local_dst = slot->x;
        else p->recv = (pending_recv){slot->x, prev, tag, stream, NULL};
        return DP_OK;
    }
    if (ex->mb[d][k].state != MB_LIVE)
        return dp_fail(DP_ERR_INTERNAL, "rank %d: %c of local stage %d chunk %d before its forward", r,
                       dp_action_letter(a->kind), d, k);
    if (a->kind == DP_ACT_W) return DP_OK;
    dp_slot *slot = ex->mb[d][k].slot;
    int nd, next = dp_schedule_next(s, r, d, &nd);
    if (next < 0) return DP_OK; /* the loss gives the gradient */
    int tag = DP_TAG(DP_CHANNEL_GRADIENT(pipe), k);
    if (next == r) p->local_tag = tag, p->local_dst = slot->dy;
    else p->recv = (pending_recv){slot->dy, next, tag, stream, NULL};
    return DP_OK;
}

/* Runs an action's compute from where it stopped to its next communication point (a block's
 * dispatch or combine in flight) or to its end (p->step == STEP_DONE). */
static dp_status advance(dp_executor *ex, dp_step_io *io, prepared *p, int infer)
{
    const dp_schedule *s = ex->s;
    int r = ex->r, d = p->a.local_stage, k = p->a.chunk, pipe = pipe_of(ex, d);
    dp_stage *stage = stage_of(ex, d);
    mb_record *mb = &ex->mb[d][k];
    dp_slot *slot = mb->slot;
    int pd, prev = dp_schedule_prev(s, r, d, &pd), nd, next = dp_schedule_next(s, r, d, &nd);
    int last = dp_schedule_is_last_stage(s, r, d);
    dp_phase phase = DP_PHASE_DONE;
    if (p->step != STEP_START) {
        DP_CHECK(dp_stage_continue(stage, slot, &phase));
    } else {
        if (p->local_tag >= 0) DP_CHECK(stage_in(ex, p->local_tag, p->local_dst, p->stream));
        switch (p->a.kind) {
        case DP_ACT_F:
            p->step = STEP_FORWARD;
            DP_CHECK(dp_stage_forward_begin(stage, p->stream, slot, last && !infer ? io->loss[pipe] + k : NULL, &phase));
            break;
        case DP_ACT_B:
        case DP_ACT_I:
            p->step = STEP_BACKWARD_INPUT;
            DP_CHECK(dp_stage_backward_input_begin(stage, p->stream, slot, prev >= 0, &phase));
            break;
        case DP_ACT_W:
            p->step = STEP_BACKWARD_WEIGHT;
            DP_CHECK(dp_stage_backward_weight_begin(stage, p->stream, slot, &phase));
            break;
        default:
            return dp_fail(DP_ERR_INTERNAL, "rank %d: unknown action kind %d", r, p->a.kind);
        }
    }
    /* a finished pass hands on what it made; a full backward goes on with its weight gradient */
    while (phase == DP_PHASE_DONE && p->step != STEP_DONE) {
        switch (p->step) {
        case STEP_FORWARD:
            if (last && infer) {
                DP_CHECK(ex->cfg.dops->copy(ex->cfg.dev, (char *)io->output[pipe] + (size_t)k * ex->act_bytes, slot->y,
                                            ex->act_bytes, DP_COPY_DEVICE_TO_DEVICE, p->stream));
            }
            if (!last) {
                int tag = DP_TAG(DP_CHANNEL_ACTIVATION(pipe), k);
                if (next == r) DP_CHECK(stage_out(ex, tag, slot->y, p->stream));
                else DP_CHECK(defer_send(ex, slot->y, ex->act_bytes, next, tag, mb, 0, p->stream));
            }
            if (infer) retire(ex, mb);
            p->step = STEP_DONE;
            break;
        case STEP_BACKWARD_INPUT:
            if (prev >= 0) {
                int tag = DP_TAG(DP_CHANNEL_GRADIENT(pipe), k);
                if (prev == r) DP_CHECK(stage_out(ex, tag, slot->dx, p->stream));
                else DP_CHECK(defer_send(ex, slot->dx, ex->act_bytes, prev, tag, mb, 1, p->stream));
            }
            if (p->a.kind == DP_ACT_I) {
                p->step = STEP_DONE;
                break;
            }
            p->step = STEP_BACKWARD_WEIGHT;
            DP_CHECK(dp_stage_backward_weight_begin(stage, p->stream, slot, &phase));
            break;
        default: /* STEP_BACKWARD_WEIGHT */
            retire(ex, mb);
            p->step = STEP_DONE;
            break;
        }
    }
    return DP_OK;
}

/* Posts the deferred sends and the receives of up to two actions in one group, then waits
 * for the receives. */
static dp_status communicate(dp_executor *ex, prepared *p, int n)
{
    const dp_link_ops *L = ex->cfg.lops;
    dp_link *l = ex->cfg.link;
    int any = ex->nsends > 0;
    for (int i = 0; i < n; i++) any |= p[i].recv.buf != NULL;
    if (!any) return DP_OK;
    DP_CHECK(L->group_start(l));
    dp_status st = DP_OK;
    for (int i = 0; i < ex->nsends && st == DP_OK; i++) {
        deferred_send *q = &ex->sends[i];
        st = L->isend(l, q->buf, q->bytes, q->peer, q->tag, q->stream, &q->mb->sending[q->which]);
        if (st == DP_OK) q->mb->unposted--;
    }
    ex->nsends = 0;
    for (int i = 0; i < n && st == DP_OK; i++)
        if (p[i].recv.buf)
            st = L->irecv(l, p[i].recv.buf, ex->act_bytes, p[i].recv.peer, p[i].recv.tag,
                          p[i].recv.stream, &p[i].recv.req);
    dp_status end = L->group_end(l);
    if (st == DP_OK) st = end;
    for (int i = 0; i < n; i++)
        if (p[i].recv.req) {
            dp_status w = L->wait(l, p[i].recv.req);
            p[i].recv.req = NULL;
            if (st == DP_OK && w != DP_OK)
                st = dp_fail(w, "%s (while rank %d waited to run %c of local stage %d, micro-batch %d)",
                             dp_last_error(), ex->r, dp_action_letter(p[i].a.kind), p[i].a.local_stage, p[i].a.chunk);
        }
    return st;
}

static dp_status flush(dp_executor *ex)
{
    DP_CHECK(communicate(ex, NULL, 0));
    return reclaim(ex, 1);
}

/* What the rank's passes have waited for their exchanges in flight so far (ms). */
static double comm_waited(dp_executor *ex)
{
    double t = 0;
    for (int d = 0; d < ex->s->num_local_stages; d++) t += dp_stage_comm_wait_ms(stage_of(ex, d));
    return t;
}

/* Into *t, the exchanges the rank's stages waited for since `from` (their counts then), in the
 * order they ended, on the step's clock. */
static void record_exchanges(dp_executor *ex, const long *from, double t0, dp_action_time *t)
{
    t->exchanges = 0;
    for (int d = 0; d < ex->s->num_local_stages; d++) {
        dp_stage *st = stage_of(ex, d);
        dp_exchange_time x;
        for (long i = from[d]; dp_stage_exchange(st, i, &x); i++) {
            float e[3] = {(float)(x.posted - t0), (float)(x.waited - t0), (float)(x.done - t0)};
            int n = t->exchanges;
            if (n == DP_ACTION_EXCHANGES) { /* fold into the last */
                float *l = t->exchange[n - 1];
                if (e[0] < l[0]) l[0] = e[0];
                if (e[2] > l[2]) l[2] = e[2];
                continue;
            }
            int j = n;
            for (; j > 0 && t->exchange[j - 1][2] > e[2]; j--) memcpy(t->exchange[j], t->exchange[j - 1], sizeof e);
            memcpy(t->exchange[j], e, sizeof e);
            t->exchanges++;
        }
    }
}

static dp_status play(dp_executor *ex, dp_step_io *io, int infer)
{
    const dp_schedule *s = ex->s;
    int r = ex->r, n = s->num_actions[r];
    const dp_action *acts = s->actions[r];
    for (int i = 0; i < n;) {
        if (infer && acts[i].kind != DP_ACT_F) {
            i++;
            continue;
        }
        int pair = !infer && acts[i].overlap && i + 1 < n;
        int count = pair ? 2 : 1;
        int two = pair && !ex->cfg.serial_pairs && !ex->cfg.no_overlap; /* the pair's halves on two streams */
        /* a pair's second stream must see all the first stream has queued (local hand-offs,
         * activations, weight gradients): on a GPU the two streams really run at once. An
         * event orders them on the device, so the host goes on queueing work meanwhile. */
        const dp_device_ops *D = ex->cfg.dops;
        if (two) {
            DP_CHECK(D->event_record(ex->cfg.dev, ex->fork, ex->cfg.streams[0]));
            DP_CHECK(D->stream_wait_event(ex->cfg.dev, ex->cfg.streams[1], ex->fork));
        }
        prepared p[2];
        double t_start = io->times ? dp_now_ms() - io->t0 : 0, c_start = io->times ? comm_waited(ex) : 0;
        long x_start[DP_MAX_LOCAL_STAGES];
        for (int d = 0; d < s->num_local_stages; d++) x_start[d] = dp_stage_exchange_count(stage_of(ex, d));
        for (int j = 0; j < count; j++)
            DP_CHECK(prepare(ex, io, &acts[i + j], ex->cfg.streams[two ? j : 0], infer, &p[j]));
        DP_CHECK(communicate(ex, p, count));
        DP_CHECK(reclaim(ex, 0));
        double t_ready = io->times ? dp_now_ms() - io->t0 : 0;
        /* a pair's halves take turns, each running to its next communication point, so that one
         * micro-batch's dispatch or combine is in flight while the other computes (DeepSeek-V3's
         * overlap); a half of one phase (every dense block) simply runs to its end in its turn */
        for (int left = count; left > 0;) {
            left = 0;
            for (int j = 0; j < count; j++) {
                if (p[j].step == STEP_DONE) continue;
                DP_CHECK(advance(ex, io, &p[j], infer));
                /* without the overlap, each half runs to its end before the other begins */
                while (ex->cfg.no_overlap && p[j].step != STEP_DONE) DP_CHECK(advance(ex, io, &p[j], infer));
                left += p[j].step != STEP_DONE;
            }
        }
        /* and what follows on the first stream sees all the pair did */
        if (two) {
            DP_CHECK(D->event_record(ex->cfg.dev, ex->join, ex->cfg.streams[1]));
            DP_CHECK(D->stream_wait_event(ex->cfg.dev, ex->cfg.streams[0], ex->join));
        }
        if (ex->cfg.sync_each_action)
            for (int j = 0; j < count; j++) DP_CHECK(D->stream_synchronize(ex->cfg.dev, p[j].stream));
        if (io->times) {
            double t_end = dp_now_ms() - io->t0;
            dp_action_time t = {t_start, t_ready, t_end, comm_waited(ex) - c_start, 0, {{0}}};
            record_exchanges(ex, x_start, io->t0, &t);
            for (int j = 0; j < count; j++) io->times[i + j] = t;
        }
        i += count;
    }
    DP_CHECK(flush(ex));
    for (int d = 0; d < s->num_local_stages; d++)
        for (int k = 0; k < s->chunks_per_pipe; k++)
            if (ex->mb[d][k].state == MB_LIVE)
                return dp_fail(DP_ERR_INTERNAL, "rank %d: micro-batch %d of local stage %d never finished its backward",
                               r, k, d);
    if (ex->staging) return dp_fail(DP_ERR_INTERNAL, "rank %d: a hand-off between its stages was never used", r);
    return DP_OK;
}

dp_status dp_executor_train(dp_executor *ex, dp_step_io *io) { return play(ex, io, 0); }

dp_status dp_executor_infer(dp_executor *ex, dp_step_io *io) { return play(ex, io, 1); }
