/* cuda_link_copy.cu: the copy transport, between ranks of this process on one GPU. A send
 * leaves a message (its buffer and an event after its data) in the receiver's mailbox; the
 * receive that matches it (same group context, source and tag, first posted first matched)
 * queues a device-to-device copy on the receiver's stream behind that event. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drivers/cuda/cuda_link.h"

struct dp_cuda_msg {
    dp_cuda_msg *next;
    uint64_t context;
    int src; /* world rank */
    int tag;
    size_t bytes;
    const void *buf;
    cudaEvent_t ready;  /* the sender's data is complete */
    cudaEvent_t copied; /* the receiver's copy is complete */
    int matched;
    int refs; /* the sender's request and the receiver's */
};

static void msg_release(dp_cuda_msg *m) /* world lock held */
{
    if (--m->refs > 0) return;
    if (m->ready) cudaEventDestroy(m->ready);
    if (m->copied) cudaEventDestroy(m->copied);
    free(m);
}

static int me(dp_link *l) { return l->world_of[l->rank]; }

/* Gives the messages waiting for world rank `dst` to its posted receives, earliest first, and
 * queues each copy on the receiver's stream. Either side's thread may run it (whichever posts
 * second), so that neither waits for the other to come and match; a match wakes the waiting
 * threads, since a sender may be waiting for its message to be taken. World lock held. */
static dp_status match_locked(dp_link_world *w, int dst)
{
    dp_cuda_mailbox *box = &w->mailbox[dst];
    for (dp_request *r = box->posted; r; r = r->next_posted) {
        if (r->done) continue;
        int src = r->l->world_of[r->peer];
        dp_cuda_msg *prev = NULL;
        for (dp_cuda_msg *m = box->head; m; prev = m, m = m->next) {
            if (m->context != r->l->context || m->src != src || m->tag != r->tag) continue;
            if (prev) prev->next = m->next;
            else box->head = m->next;
            if (box->tail == m) box->tail = prev;
            m->next = NULL;
            r->msg = m;
            r->done = 1;
            m->matched = 1; /* a size mismatch also releases the sender; the receiver reports it */
            pthread_cond_broadcast(&w->cond);
            if (m->bytes == r->bytes) {
                CUDA_TRY(cudaStreamWaitEvent(r->cs, m->ready, 0));
                if (m->bytes) CUDA_TRY(cudaMemcpyAsync(r->rbuf, m->buf, m->bytes, cudaMemcpyDeviceToDevice, r->cs));
                CUDA_TRY(cudaEventRecord(m->copied, r->cs));
            }
            break;
        }
    }
    return DP_OK;
}

static dp_status issue_one(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    r->issued = 1;
    if (r->kind == DP_CUDA_SEND) {
        dp_cuda_msg *m = (dp_cuda_msg *)calloc(1, sizeof *m);
        if (!m) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
        m->context = l->context;
        m->src = me(l);
        m->tag = r->tag;
        m->bytes = r->bytes;
        m->buf = r->sbuf;
        m->refs = 2;
        cudaError_t e = cudaEventCreateWithFlags(&m->ready, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&m->copied, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventRecord(m->ready, r->cs);
        if (e != cudaSuccess) {
            m->refs = 1;
            msg_release(m);
            return dp_cuda_fail(e, "copy transport: send", __FILE__, __LINE__);
        }
        r->msg = m;
        int dst = l->world_of[r->peer];
        pthread_mutex_lock(&w->lock);
        dp_cuda_mailbox *box = &w->mailbox[dst];
        if (box->tail) box->tail->next = m;
        else box->head = m;
        box->tail = m;
        dp_status st = match_locked(w, dst);
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        return st;
    }
    pthread_mutex_lock(&w->lock);
    dp_request **p = &w->mailbox[me(l)].posted;
    while (*p) p = &(*p)->next_posted;
    *p = r;
    r->next_posted = NULL;
    dp_status st = match_locked(w, me(l));
    pthread_mutex_unlock(&w->lock);
    return st;
}

static dp_status copy_issue(dp_link *l, dp_request **reqs, int n)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    for (int i = 0; i < n; i++) DP_CHECK(issue_one(l, reqs[i]));
    return DP_OK;
}

static void unlink_posted_locked(dp_link *l, dp_request *r)
{
    for (dp_request **p = &l->w->mailbox[me(l)].posted; *p; p = &(*p)->next_posted)
        if (*p == r) {
            *p = r->next_posted;
            return;
        }
}

static int complete_locked(dp_request *r) { return r->kind == DP_CUDA_RECV ? r->done : r->msg->matched; }

static dp_status copy_test(dp_link *l, dp_request *r, int *done)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    pthread_mutex_lock(&l->w->lock);
    dp_status st = r->kind == DP_CUDA_RECV ? match_locked(l->w, me(l)) : DP_OK;
    *done = complete_locked(r);
    pthread_mutex_unlock(&l->w->lock);
    if (st != DP_OK) return st;
    if (!*done && dp_link_abort_raised(&l->w->abort)) return dp_cuda_link_aborted(l);
    return DP_OK;
}

static dp_status copy_wait(dp_link *l, dp_request *r)
{
    dp_link_world *w = l->w;
    DP_CHECK(dp_cuda_enter(l->dev));
    struct timespec ts;
    dp_link_deadline_ts(&ts, l->timeout_ms);
    dp_status st = DP_OK;
    int timed_out = 0;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        if (r->kind == DP_CUDA_RECV) st = match_locked(w, me(l));
        if (st != DP_OK || complete_locked(r)) break;
        if (dp_link_abort_raised(&w->abort)) {
            st = dp_cuda_link_aborted(l);
            break;
        }
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0) {
            if (r->kind == DP_CUDA_RECV) st = match_locked(w, me(l));
            if (st != DP_OK || complete_locked(r)) break;
            st = dp_link_fail_timeout("cuda", me(l), r->kind == DP_CUDA_SEND ? "send" : "receive", r->bytes,
                                      l->world_of[r->peer], r->tag, l->timeout_ms);
            timed_out = 1;
            break;
        }
    }
    if (r->kind == DP_CUDA_RECV) unlink_posted_locked(l, r);
    dp_cuda_msg *m = r->msg;
    int size_ok = !m || !complete_locked(r) || m->bytes == r->bytes;
    pthread_mutex_unlock(&w->lock);
    if (timed_out) { /* one rank giving up ends the job: the others' waits fail at once */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dp_last_error());
        dp_cuda_link_abort_world(w, me(l), DP_ERR_TIMEOUT, msg);
        dp_fail(DP_ERR_TIMEOUT, "%s", msg);
    }
    if (st == DP_OK && !size_ok)
        st = dp_link_fail_size("cuda", me(l), l->world_of[r->peer], r->tag, m->bytes, r->bytes);
    if (st == DP_OK && m && m->bytes) {
        /* complete on return, as on the NCCL and CPU links: the buffers may then be used from
         * any stream, not only the one the operation was posted on */
        cudaError_t e = cudaEventSynchronize(m->copied);
        if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaEventSynchronize (copy transport)", __FILE__, __LINE__);
    }
    if (m) {
        pthread_mutex_lock(&w->lock);
        msg_release(m);
        pthread_mutex_unlock(&w->lock);
        r->msg = NULL;
    }
    return st;
}

static void copy_drop(dp_link *l, dp_request *r)
{
    pthread_mutex_lock(&l->w->lock);
    if (r->kind == DP_CUDA_RECV) unlink_posted_locked(l, r);
    if (r->msg) msg_release(r->msg);
    r->msg = NULL;
    pthread_mutex_unlock(&l->w->lock);
}

/* Receives of l still posted (never waited for): their memory is the caller's leak to fix,
 * but the mailbox must not keep pointing at them. */
void dp_cuda_copy_close(dp_link *l)
{
    dp_link_world *w = l->w;
    pthread_mutex_lock(&w->lock);
    for (dp_request **p = &w->mailbox[me(l)].posted; *p;) {
        dp_request *r = *p;
        if (r->l != l) {
            p = &r->next_posted;
            continue;
        }
        *p = r->next_posted;
        if (r->msg) msg_release(r->msg);
        free(r);
    }
    pthread_mutex_unlock(&w->lock);
}

void dp_cuda_copy_world_fini(dp_link_world *w)
{
    for (int i = 0; i < w->size; i++)
        for (dp_cuda_msg *m = w->mailbox[i].head; m;) {
            dp_cuda_msg *n = m->next;
            m->refs = 1;
            msg_release(m);
            m = n;
        }
}

const dp_cuda_transport dp_cuda_copy_transport = {
    "copy", copy_issue, copy_test, copy_wait, copy_drop,
};
