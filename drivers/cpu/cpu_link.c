/* cpu_link.c: the CPU driver's link: mailboxes between rank threads of one process.
 * Sends are eager (the message is copied into the receiver's mailbox, so a send never
 * blocks); receives match messages by (source, tag) in posting order; collectives are built
 * from the same messages; every wait gives up after the timeout naming rank, peer and tag.
 * $DUALPIPE_CPU_LINK gives the link a network's latency and bandwidth (link_emulation). */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "drivers/cpu/cpu_internal.h"
#include "engine/link_common.h"

typedef struct message {
    struct message *next;
    int src; /* group rank of the sender */
    int tag;
    size_t bytes;
    size_t capacity;
    double ready_ms; /* emulated network: when the message has arrived (0: at once) */
    unsigned char data[]; /* copied at send */
} message;

/* ----------------------------------------------------------------------------
 * link emulation: DUALPIPE_CPU_LINK=LATENCY_US,GBITS makes every message between two ranks
 * arrive as over one NIC of GBITS Gb/s per rank with LATENCY_US of latency: a rank's sends leave
 * one after another (each occupies its NIC for bytes / bandwidth from when the NIC is free), and
 * arrive latency later; a receive completes no earlier. Receiving NICs are not modelled (many
 * senders to one rank overlap). Sends stay eager, so a rank computes while its messages travel:
 * the overlap a schedule buys shows in its step time. */

typedef struct {
    int on;
    double latency_ms, ms_per_byte;
} link_emulation;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* $DUALPIPE_CPU_LINK: unset or empty, no emulation */
static dp_status emulation_parse(link_emulation *e)
{
    memset(e, 0, sizeof *e);
    const char *v = getenv("DUALPIPE_CPU_LINK");
    if (!v || !*v) return DP_OK;
    double us = -1, gbits = -1;
    char tail = 0;
    if (sscanf(v, "%lf,%lf%c", &us, &gbits, &tail) != 2 || !(us >= 0 && us <= 1e6) || !(gbits > 0 && gbits <= 1e6))
        return dp_fail(DP_ERR_INVALID, "DUALPIPE_CPU_LINK=%s: give LATENCY_US,GBITS, e.g. 5,400 for 5 us and 400 Gb/s "
                       "(latency 0 to 1e6 us, bandwidth above 0 up to 1e6 Gb/s)", v);
    e->on = 1;
    e->latency_ms = us * 1e-3;
    e->ms_per_byte = 8.0 / (gbits * 1e9) * 1e3;
    return DP_OK;
}

static void sleep_until(double t_ms)
{
    for (double left; (left = t_ms - now_ms()) > 0;) {
        long long ns = (long long)(left * 1e6) + 1;
        struct timespec d = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
        nanosleep(&d, NULL);
    }
}

/* Freed messages are kept for reuse: fresh large allocations cost page faults on every
 * message, which dominates the link's time where faults are slow (sandboxes, VMs). */
#define MESSAGE_CACHE 32

typedef struct group {
    int size;
    int refs;       /* endpoints open on it */
    int *world_of;  /* [size] world rank of each member */
    message **inbox_head, **inbox_tail; /* [size]: messages waiting for member i */
} group;

struct dp_link_world {
    int size;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t arrived; /* broadcast on every message and on abort */
    dp_link_abort abort;
    dp_link_bootstrap bootstrap; /* only to tell an abort to the launcher */
    group *world_group;
    int *opened; /* [size]: whether rank r opened its endpoint */
    message *cache[MESSAGE_CACHE]; /* freed messages, under lock */
    int cached;
    link_emulation emu;
    double *nic_free; /* [size] emulated: when each world rank's NIC is free, under lock */
};

/* REQ_MULTI: a collective in flight (iall_to_all_v), its receives in parts */
typedef enum { REQ_SEND, REQ_RECV, REQ_MULTI } req_kind;

struct dp_request {
    dp_request *next_posted; /* the endpoint's posted receives, in posting order */
    dp_request *next_deferred;
    req_kind kind;
    const void *send_buf;
    void *recv_buf;
    size_t bytes;
    int peer, tag;
    message **take; /* internal receives: hand over the message instead of copying it */
    int issued;  /* 0 while deferred in a group */
    int done;    /* send: copied; recv: message attached */
    message *msg;
    dp_request **parts; /* REQ_MULTI: its receives, nparts of them */
    int nparts;
};

struct dp_link {
    dp_link_world *w;
    group *g;
    int rank; /* in g */
    int timeout_ms;
    int group_depth;
    dp_request *deferred_head, *deferred_tail;
    dp_request *posted_head; /* unmatched or matched-but-not-waited receives, in order */
    unsigned coll_seq;       /* collectives issued so far, to build their reserved tags */
};

/* ----------------------------------------------------------------------------
 * messages */

static message *message_get(dp_link_world *w, size_t bytes)
{
    message *m = NULL;
    pthread_mutex_lock(&w->lock);
    int best = -1;
    for (int i = 0; i < w->cached; i++)
        if (w->cache[i]->capacity >= bytes && (best < 0 || w->cache[i]->capacity < w->cache[best]->capacity)) best = i;
    if (best >= 0) {
        m = w->cache[best];
        w->cache[best] = w->cache[--w->cached];
    }
    pthread_mutex_unlock(&w->lock);
    if (!m) {
        size_t cap = bytes ? bytes : 1;
        m = malloc(sizeof *m + cap);
        if (!m) return NULL;
        m->capacity = cap;
    }
    m->next = NULL;
    m->bytes = bytes;
    return m;
}

/* Called with w->lock held. */
static void message_put_locked(dp_link_world *w, message *m)
{
    if (!m) return;
    if (w->cached < MESSAGE_CACHE) {
        w->cache[w->cached++] = m;
        return;
    }
    /* full: replace the smallest if this one is larger, so the cache keeps the big ones */
    int small = 0;
    for (int i = 1; i < w->cached; i++)
        if (w->cache[i]->capacity < w->cache[small]->capacity) small = i;
    if (w->cache[small]->capacity < m->capacity) {
        message *old = w->cache[small];
        w->cache[small] = m;
        m = old;
    }
    free(m);
}

static void message_put(dp_link_world *w, message *m)
{
    if (!m) return;
    pthread_mutex_lock(&w->lock);
    message_put_locked(w, m);
    pthread_mutex_unlock(&w->lock);
}

/* ----------------------------------------------------------------------------
 * groups */

static group *group_new(int size)
{
    group *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->size = size;
    g->world_of = calloc((size_t)size, sizeof *g->world_of);
    g->inbox_head = calloc((size_t)size, sizeof *g->inbox_head);
    g->inbox_tail = calloc((size_t)size, sizeof *g->inbox_tail);
    if (!g->world_of || !g->inbox_head || !g->inbox_tail) {
        free(g->world_of), free(g->inbox_head), free(g->inbox_tail), free(g);
        return NULL;
    }
    return g;
}

static void group_free(group *g)
{
    for (int i = 0; i < g->size; i++) {
        message *m = g->inbox_head[i];
        while (m) {
            message *n = m->next;
            free(m);
            m = n;
        }
    }
    free(g->world_of), free(g->inbox_head), free(g->inbox_tail), free(g);
}

/* ----------------------------------------------------------------------------
 * world */

static dp_status cpu_world_create(const dp_link_world_config *cfg, dp_link_world **out)
{
    *out = NULL;
    if (cfg->world_size < 1) return dp_fail(DP_ERR_INVALID, "cpu link: world size must be >= 1, got %d", cfg->world_size);
    if (cfg->first_rank != 0 || (cfg->local_ranks != 0 && cfg->local_ranks != cfg->world_size))
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cpu link: all %d ranks must live in this process (first rank %d, local ranks %d given); "
                       "use a link that crosses processes (MPI) for more",
                       cfg->world_size, cfg->first_rank, cfg->local_ranks);
    dp_link_world *w = calloc(1, sizeof *w);
    if (!w) return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory");
    w->size = cfg->world_size;
    w->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    dp_status st = emulation_parse(&w->emu);
    if (st == DP_OK) st = dp_link_bootstrap_open(&w->bootstrap, cfg, w->timeout_ms, "cpu");
    if (st != DP_OK) {
        free(w);
        return st;
    }
    w->world_group = group_new(w->size);
    w->opened = calloc((size_t)w->size, sizeof *w->opened);
    w->nic_free = calloc((size_t)w->size, sizeof *w->nic_free);
    if (!w->world_group || !w->opened || !w->nic_free) {
        if (w->world_group) group_free(w->world_group);
        dp_link_bootstrap_close(&w->bootstrap);
        free(w->opened), free(w->nic_free), free(w);
        return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory");
    }
    dp_link_abort_init(&w->abort);
    for (int i = 0; i < w->size; i++) w->world_group->world_of[i] = i;
    w->world_group->refs = 1; /* the world's own reference */
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->arrived, NULL);
    *out = w;
    return DP_OK;
}

static void group_release(dp_link_world *w, group *g)
{
    /* called with w->lock held */
    if (--g->refs == 0) group_free(g);
}

static dp_status cpu_world_destroy(dp_link_world *w)
{
    if (!w) return DP_OK;
    pthread_mutex_lock(&w->lock);
    group_release(w, w->world_group);
    pthread_mutex_unlock(&w->lock);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->arrived);
    dp_link_abort_fini(&w->abort);
    dp_link_bootstrap_close(&w->bootstrap);
    for (int i = 0; i < w->cached; i++) free(w->cache[i]);
    free(w->opened);
    free(w->nic_free);
    free(w);
    return DP_OK;
}

static dp_status link_new(dp_link_world *w, group *g, int rank, dp_link **out)
{
    dp_link *l = calloc(1, sizeof *l);
    if (!l) return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory");
    l->w = w;
    l->g = g;
    l->rank = rank;
    l->timeout_ms = w->timeout_ms;
    *out = l;
    return DP_OK;
}

static dp_status cpu_open(dp_link_world *w, int rank, dp_device *dev, dp_link **out)
{
    (void)dev;
    *out = NULL;
    if (rank < 0 || rank >= w->size)
        return dp_fail(DP_ERR_INVALID, "cpu link: rank %d is outside the world of %d ranks", rank, w->size);
    pthread_mutex_lock(&w->lock);
    int again = w->opened[rank];
    if (!again) {
        w->opened[rank] = 1;
        w->world_group->refs++;
    }
    pthread_mutex_unlock(&w->lock);
    if (again) return dp_fail(DP_ERR_INVALID, "cpu link: rank %d is already open", rank);
    dp_status st = link_new(w, w->world_group, rank, out);
    if (st != DP_OK) {
        pthread_mutex_lock(&w->lock);
        w->opened[rank] = 0;
        group_release(w, w->world_group);
        pthread_mutex_unlock(&w->lock);
        return st;
    }
    dp_log(DP_LOG_INFO, "cpu link: rank %d of %d: mailboxes to every peer (threads of this process)", rank, w->size);
    return st;
}

static dp_status cpu_close(dp_link *l)
{
    if (!l) return DP_OK;
    dp_link_world *w = l->w;
    pthread_mutex_lock(&w->lock);
    /* requests never waited for are the caller's leak to fix, but their messages are ours */
    for (dp_request *r = l->posted_head; r;) {
        dp_request *n = r->next_posted;
        message_put_locked(w, r->msg);
        free(r);
        r = n;
    }
    for (dp_request *r = l->deferred_head; r;) {
        dp_request *n = r->next_deferred;
        free(r);
        r = n;
    }
    if (l->g == w->world_group) w->opened[w->world_group->world_of[l->rank]] = 0;
    group_release(w, l->g);
    pthread_mutex_unlock(&w->lock);
    free(l);
    return DP_OK;
}

static dp_status cpu_info(dp_link *l, int *rank, int *size)
{
    if (rank) *rank = l->rank;
    if (size) *size = l->g->size;
    return DP_OK;
}

static dp_status cpu_set_timeout(dp_link *l, int timeout_ms)
{
    l->timeout_ms = timeout_ms > 0 ? timeout_ms : l->w->timeout_ms;
    return DP_OK;
}

static dp_status cpu_abort(dp_link *l, dp_status reason, const char *msg)
{
    dp_link_world *w = l->w;
    dp_link_abort_raise(&w->abort, &w->bootstrap, l->g->world_of[l->rank], reason, msg);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->arrived);
    pthread_mutex_unlock(&w->lock);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * point to point */

/* Issues a request: a send is copied into the peer's mailbox, a receive joins the posted list. */
static dp_status issue(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    group *g = l->g;
    r->issued = 1;
    if (r->kind == REQ_SEND) {
        message *m = message_get(w, r->bytes);
        if (!m) return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory sending %zu bytes", r->bytes);
        m->src = l->rank;
        m->tag = r->tag;
        if (r->bytes) memcpy(m->data, r->send_buf, r->bytes);
        pthread_mutex_lock(&w->lock);
        m->ready_ms = 0;
        int from = g->world_of[l->rank], to = g->world_of[r->peer];
        if (w->emu.on && from != to) {
            double start = now_ms();
            if (w->nic_free[from] > start) start = w->nic_free[from];
            w->nic_free[from] = start + (double)r->bytes * w->emu.ms_per_byte;
            m->ready_ms = w->nic_free[from] + w->emu.latency_ms;
        }
        if (g->inbox_tail[r->peer]) g->inbox_tail[r->peer]->next = m;
        else g->inbox_head[r->peer] = m;
        g->inbox_tail[r->peer] = m;
        pthread_cond_broadcast(&w->arrived);
        pthread_mutex_unlock(&w->lock);
        r->done = 1;
    } else {
        pthread_mutex_lock(&w->lock);
        dp_request **p = &l->posted_head;
        while (*p) p = &(*p)->next_posted;
        *p = r;
        r->next_posted = NULL;
        pthread_mutex_unlock(&w->lock);
    }
    return DP_OK;
}

static dp_status post(dp_link *l, req_kind kind, const void *sbuf, void *rbuf, size_t bytes, int peer, int tag,
                      dp_request **out)
{
    *out = NULL;
    if (peer < 0 || peer >= l->g->size)
        return dp_fail(DP_ERR_INVALID, "cpu link: rank %d: peer %d is outside the group of %d", l->rank, peer,
                       l->g->size);
    if (bytes && !(kind == REQ_SEND ? sbuf : rbuf))
        return dp_fail(DP_ERR_INVALID, "cpu link: NULL buffer for %zu bytes", bytes);
    dp_request *r = calloc(1, sizeof *r);
    if (!r) return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory");
    r->kind = kind;
    r->send_buf = sbuf;
    r->recv_buf = rbuf;
    r->bytes = bytes;
    r->peer = peer;
    r->tag = tag;
    if (l->group_depth > 0) {
        if (l->deferred_tail) l->deferred_tail->next_deferred = r;
        else l->deferred_head = r;
        l->deferred_tail = r;
    } else {
        dp_status st = issue(l, r);
        if (st != DP_OK) {
            free(r);
            return st;
        }
    }
    *out = r;
    return DP_OK;
}

static dp_status cpu_isend(dp_link *l, const void *buf, size_t bytes, int peer, int tag, dp_stream *s,
                           dp_request **req)
{
    (void)s;
    return post(l, REQ_SEND, buf, NULL, bytes, peer, tag, req);
}

static dp_status cpu_irecv(dp_link *l, void *buf, size_t bytes, int peer, int tag, dp_stream *s, dp_request **req)
{
    (void)s;
    return post(l, REQ_RECV, NULL, buf, bytes, peer, tag, req);
}

static dp_status cpu_group_start(dp_link *l)
{
    l->group_depth++;
    return DP_OK;
}

static dp_status cpu_group_end(dp_link *l)
{
    if (l->group_depth <= 0) return dp_fail(DP_ERR_INVALID, "cpu link: group_end without group_start");
    if (--l->group_depth > 0) return DP_OK;
    dp_status st = DP_OK;
    for (dp_request *r = l->deferred_head; r; r = r->next_deferred)
        if (st == DP_OK) st = issue(l, r);
    l->deferred_head = l->deferred_tail = NULL;
    return st;
}

/* Attaches arrived messages to posted receives, earliest receive first. Lock held. */
static void match_locked(dp_link *l)
{
    group *g = l->g;
    for (dp_request *r = l->posted_head; r; r = r->next_posted) {
        if (r->done) continue;
        message *prev = NULL;
        for (message *m = g->inbox_head[l->rank]; m; prev = m, m = m->next) {
            if (m->src != r->peer || m->tag != r->tag) continue;
            if (prev) prev->next = m->next;
            else g->inbox_head[l->rank] = m->next;
            if (g->inbox_tail[l->rank] == m) g->inbox_tail[l->rank] = prev;
            m->next = NULL;
            r->msg = m;
            r->done = 1;
            break;
        }
    }
}

static void unlink_posted_locked(dp_link *l, dp_request *r)
{
    for (dp_request **p = &l->posted_head; *p; p = &(*p)->next_posted)
        if (*p == r) {
            *p = r->next_posted;
            return;
        }
}

static dp_status cpu_test(dp_link *l, dp_request *r, int *done)
{
    if (r->kind == REQ_MULTI) {
        /* done once every part's message is attached and, emulated, has arrived */
        double now = l->w->emu.on ? now_ms() : 0;
        pthread_mutex_lock(&l->w->lock);
        match_locked(l);
        *done = 1;
        for (int i = 0; i < r->nparts && *done; i++)
            *done = r->parts[i]->done && r->parts[i]->msg->ready_ms <= now;
        pthread_mutex_unlock(&l->w->lock);
        if (!*done && dp_link_abort_raised(&l->w->abort)) return dp_link_abort_fail(&l->w->abort);
        return DP_OK;
    }
    if (r->kind == REQ_SEND || !r->issued) {
        *done = r->done;
        return DP_OK;
    }
    pthread_mutex_lock(&l->w->lock);
    match_locked(l);
    *done = r->done;
    pthread_mutex_unlock(&l->w->lock);
    if (!*done && dp_link_abort_raised(&l->w->abort)) return dp_link_abort_fail(&l->w->abort);
    return DP_OK;
}

/* Gives up a posted receive without waiting for it (a collective whose earlier part failed). */
static void cancel_recv(dp_link *l, dp_request *r)
{
    pthread_mutex_lock(&l->w->lock);
    unlink_posted_locked(l, r);
    pthread_mutex_unlock(&l->w->lock);
    message_put(l->w, r->msg);
    free(r);
}

static dp_status cpu_wait(dp_link *l, dp_request *r);

/* A collective in flight: each part in order; after a failure the rest are given up, so that
 * one failure costs one timeout, not one per peer. */
static dp_status wait_multi(dp_link *l, dp_request *r)
{
    dp_status st = DP_OK;
    for (int i = 0; i < r->nparts; i++) {
        if (st == DP_OK) st = cpu_wait(l, r->parts[i]);
        else cancel_recv(l, r->parts[i]);
    }
    free(r->parts);
    free(r);
    return st;
}

static dp_status cpu_wait(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    if (r->kind == REQ_MULTI) return wait_multi(l, r);
    if (!r->issued) {
        /* still deferred in an open group: that is a caller error, but free it consistently */
        for (dp_request **p = &l->deferred_head; *p; p = &(*p)->next_deferred)
            if (*p == r) {
                *p = r->next_deferred;
                if (l->deferred_tail == r) {
                    l->deferred_tail = NULL;
                    for (dp_request *q = l->deferred_head; q; q = q->next_deferred) l->deferred_tail = q;
                }
                break;
            }
        free(r);
        return dp_fail(DP_ERR_INVALID, "cpu link: wait on a request inside an open group; call group_end first");
    }
    if (r->kind == REQ_SEND) {
        free(r);
        return DP_OK;
    }
    struct timespec deadline;
    dp_link_deadline_ts(&deadline, l->timeout_ms);

    dp_status st = DP_OK;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        match_locked(l);
        if (r->done) break;
        if (dp_link_abort_raised(&w->abort)) {
            st = dp_link_abort_fail(&w->abort);
            break;
        }
        int rc = pthread_cond_timedwait(&w->arrived, &w->lock, &deadline);
        if (rc == ETIMEDOUT) {
            match_locked(l);
            if (r->done) break;
            st = dp_link_fail_timeout("cpu", l->g->world_of[l->rank], "receive", r->bytes, l->g->world_of[r->peer],
                                      r->tag, l->timeout_ms);
            break;
        }
    }
    unlink_posted_locked(l, r);
    pthread_mutex_unlock(&w->lock);
    if (st == DP_OK && r->msg->ready_ms > 0) sleep_until(r->msg->ready_ms); /* emulated flight */
    if (st == DP_OK) {
        if (r->msg->bytes != r->bytes) {
            st = dp_link_fail_size("cpu", l->g->world_of[l->rank], l->g->world_of[r->peer], r->tag, r->msg->bytes,
                                   r->bytes);
        } else if (r->take) {
            *r->take = r->msg;
            r->msg = NULL;
        } else if (r->bytes) {
            memcpy(r->recv_buf, r->msg->data, r->bytes);
        }
    }
    message_put(w, r->msg);
    free(r);
    return st;
}

/* ----------------------------------------------------------------------------
 * collectives, from messages with reserved negative tags */

static int coll_tag(dp_link *l)
{
    l->coll_seq = (l->coll_seq + 1) & 0x3fffffffu;
    return -1 - (int)l->coll_seq;
}

static dp_status send_now(dp_link *l, const void *buf, size_t bytes, int peer, int tag)
{
    dp_request *r;
    DP_CHECK(post(l, REQ_SEND, buf, NULL, bytes, peer, tag, &r));
    return cpu_wait(l, r);
}

static dp_status recv_now(dp_link *l, void *buf, size_t bytes, int peer, int tag)
{
    dp_request *r;
    DP_CHECK(post(l, REQ_RECV, NULL, buf, bytes, peer, tag, &r));
    return cpu_wait(l, r);
}

/* Receives a message and keeps it (no copy); give it back with message_put. */
static dp_status recv_take(dp_link *l, size_t bytes, int peer, int tag, message **out)
{
    dp_request *r;
    *out = NULL;
    /* the buffer is never written: the message is handed over instead */
    DP_CHECK(post(l, REQ_RECV, NULL, (void *)out, bytes, peer, tag, &r));
    r->take = out;
    return cpu_wait(l, r);
}

static dp_status cpu_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t, dp_reduce_op op,
                                dp_stream *s)
{
    (void)s;
    if (t != DP_DTYPE_F32) return dp_fail(DP_ERR_UNSUPPORTED, "cpu link: all_reduce supports only fp32 (dtype %d)", (int)t);
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cpu link: all_reduce inside a group");
    int tag = coll_tag(l);
    size_t bytes = count * sizeof(float);
    int n = l->g->size;
    if (n > 64) return dp_fail(DP_ERR_UNSUPPORTED, "cpu link: all_reduce supports groups of up to 64 ranks");
    for (int j = 0; j < n; j++)
        if (j != l->rank) DP_CHECK(send_now(l, send, bytes, j, tag));
    message *got[64] = {NULL};
    const float *x[64];
    dp_status st = DP_OK;
    for (int j = 0; j < n; j++) {
        if (j == l->rank) {
            x[j] = send;
            continue;
        }
        if (st == DP_OK) st = recv_take(l, bytes, j, tag, &got[j]);
        x[j] = got[j] ? (const float *)got[j]->data : NULL;
    }
    if (st == DP_OK) {
        /* element by element, members in group-rank order: every member computes the same
         * bits, and recv may be send (each element is read before it is written) */
        float *y = recv;
        for (size_t i = 0; i < count; i++) {
            float acc = x[0][i];
            for (int j = 1; j < n; j++) acc = op == DP_REDUCE_MAX ? (x[j][i] > acc ? x[j][i] : acc) : acc + x[j][i];
            y[i] = acc;
        }
    }
    for (int j = 0; j < n; j++) message_put(l->w, got[j]);
    return st;
}

static dp_status cpu_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                                  void *recv, const size_t *recv_counts, const size_t *recv_displs, size_t elem_bytes,
                                  dp_stream *s)
{
    (void)s;
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cpu link: all_to_all_v inside a group");
    int tag = coll_tag(l);
    int n = l->g->size;
    for (int j = 0; j < n; j++) {
        const char *src = (const char *)send + send_displs[j] * elem_bytes;
        if (j == l->rank) {
            if (send_counts[j] != recv_counts[j])
                return dp_fail(DP_ERR_INVALID, "all_to_all_v: rank %d sends itself %zu elements but expects %zu",
                               l->rank, send_counts[j], recv_counts[j]);
            if (send_counts[j]) memmove((char *)recv + recv_displs[j] * elem_bytes, src, send_counts[j] * elem_bytes);
            continue;
        }
        DP_CHECK(send_now(l, src, send_counts[j] * elem_bytes, j, tag));
    }
    for (int j = 0; j < n; j++)
        if (j != l->rank)
            DP_CHECK(recv_now(l, (char *)recv + recv_displs[j] * elem_bytes, recv_counts[j] * elem_bytes, j, tag));
    return DP_OK;
}

/* all_to_all_v in flight: the sends leave at once (copied, as every send of this link), the
 * receives are posted, and the returned request's wait completes them. With the emulated network
 * the messages travel while the caller computes, which is what an overlapped pair relies on. */
static dp_status cpu_iall_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                                   void *recv, const size_t *recv_counts, const size_t *recv_displs,
                                   size_t elem_bytes, dp_stream *s, dp_request **req)
{
    (void)s;
    *req = NULL;
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cpu link: iall_to_all_v inside a group");
    int n = l->g->size;
    if (send_counts[l->rank] != recv_counts[l->rank])
        return dp_fail(DP_ERR_INVALID, "iall_to_all_v: rank %d sends itself %zu elements but expects %zu", l->rank,
                       send_counts[l->rank], recv_counts[l->rank]);
    dp_request *m = calloc(1, sizeof *m);
    dp_request **parts = calloc((size_t)(n > 1 ? n - 1 : 1), sizeof *parts);
    if (!m || !parts) {
        free(m), free(parts);
        return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory for an all-to-all of %d ranks", n);
    }
    m->kind = REQ_MULTI, m->issued = 1, m->parts = parts;
    int tag = coll_tag(l);
    dp_status st = DP_OK;
    for (int j = 0; j < n && st == DP_OK; j++) {
        const char *src = (const char *)send + send_displs[j] * elem_bytes;
        if (j == l->rank) {
            if (send_counts[j]) memmove((char *)recv + recv_displs[j] * elem_bytes, src, send_counts[j] * elem_bytes);
            continue;
        }
        dp_request *r;
        st = post(l, REQ_SEND, src, NULL, send_counts[j] * elem_bytes, j, tag, &r);
        if (st == DP_OK) free(r); /* a send is done once posted: copied into the peer's mailbox */
    }
    for (int j = 0; j < n && st == DP_OK; j++)
        if (j != l->rank) {
            st = post(l, REQ_RECV, NULL, (char *)recv + recv_displs[j] * elem_bytes, recv_counts[j] * elem_bytes, j,
                      tag, &parts[m->nparts]);
            if (st == DP_OK) m->nparts++;
        }
    if (st != DP_OK) {
        for (int i = 0; i < m->nparts; i++) cancel_recv(l, parts[i]);
        free(parts), free(m);
        return st;
    }
    *req = m;
    return DP_OK;
}

static dp_status cpu_barrier(dp_link *l)
{
    if (l->group_depth > 0) return dp_fail(DP_ERR_INVALID, "cpu link: barrier inside a group");
    int tag = coll_tag(l);
    for (int j = 0; j < l->g->size; j++)
        if (j != l->rank) DP_CHECK(send_now(l, NULL, 0, j, tag));
    for (int j = 0; j < l->g->size; j++)
        if (j != l->rank) DP_CHECK(recv_now(l, NULL, 0, j, tag));
    return DP_OK;
}

/* Every member learns every (color, key); the first member of each color creates the group
 * and sends its address to the others (all in one process). */
static dp_status cpu_split(dp_link *l, int color, int key, dp_link **out)
{
    *out = NULL;
    int n = l->g->size;
    /* one allocation: the (color, key) pairs sent and received, then colors, keys, members */
    int *buf = calloc(7 * (size_t)n, sizeof(int));
    size_t *counts = calloc(2 * (size_t)n, sizeof(size_t));
    if (!buf || !counts) {
        free(buf), free(counts);
        return dp_fail(DP_ERR_NOMEM, "cpu link: out of memory in split");
    }
    int *sendbuf = buf, *all = buf + 2 * n, *colors = buf + 4 * n, *keys = buf + 5 * n, *members = buf + 6 * n;
    size_t *displs = counts + n;
    for (int j = 0; j < n; j++) {
        sendbuf[2 * j] = color, sendbuf[2 * j + 1] = key;
        counts[j] = 2, displs[j] = 2 * (size_t)j;
    }
    dp_status st = cpu_all_to_all_v(l, sendbuf, counts, displs, all, counts, displs, sizeof(int), NULL);
    free(counts);
    if (st != DP_OK) {
        free(buf);
        return st;
    }
    for (int j = 0; j < n; j++) colors[j] = all[2 * j], keys[j] = all[2 * j + 1];
    int tag = coll_tag(l);
    int my_index = -1;
    int size = dp_link_split_members(n, colors, keys, l->rank, members, &my_index);
    int first = n;
    for (int i = 0; i < size; i++) first = members[i] < first ? members[i] : first;
    group *g = NULL;
    if (size > 0 && first == l->rank) {
        g = group_new(size);
        if (!g) st = dp_fail(DP_ERR_NOMEM, "cpu link: out of memory in split");
        else {
            for (int i = 0; i < size; i++) g->world_of[i] = l->g->world_of[members[i]];
            g->refs = size;
        }
        /* tell the others even on failure (a NULL group), so that nobody waits for nothing */
        for (int i = 0; i < size; i++)
            if (members[i] != l->rank) {
                dp_status s2 = send_now(l, &g, sizeof g, members[i], tag);
                if (st == DP_OK) st = s2;
            }
    } else if (size > 0) {
        st = recv_now(l, &g, sizeof g, first, tag);
        if (st == DP_OK && !g) st = dp_fail(DP_ERR_NOMEM, "cpu link: split failed on rank %d (out of memory)", first);
    }
    free(buf);
    if (st != DP_OK || size == 0) return st;
    st = link_new(l->w, g, my_index, out);
    if (st != DP_OK) {
        pthread_mutex_lock(&l->w->lock);
        group_release(l->w, g);
        pthread_mutex_unlock(&l->w->lock);
        return st;
    }
    (*out)->timeout_ms = l->timeout_ms;
    return DP_OK;
}

const dp_link_ops dp_cpu_link_ops = {
    .abi_version = DP_LINK_ABI_VERSION,
    .struct_size = sizeof(dp_link_ops),
    .name = "cpu",
    .world_create = cpu_world_create,
    .world_destroy = cpu_world_destroy,
    .open = cpu_open,
    .split = cpu_split,
    .close = cpu_close,
    .info = cpu_info,
    .group_start = cpu_group_start,
    .group_end = cpu_group_end,
    .isend = cpu_isend,
    .irecv = cpu_irecv,
    .test = cpu_test,
    .wait = cpu_wait,
    .all_reduce = cpu_all_reduce,
    .all_to_all_v = cpu_all_to_all_v,
    .barrier = cpu_barrier,
    .abort = cpu_abort,
    .set_timeout = cpu_set_timeout,
    .iall_to_all_v = cpu_iall_to_all_v,
};
