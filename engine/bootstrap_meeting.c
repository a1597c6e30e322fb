/* bootstrap_meeting.c: the meeting of a process's rank threads for one bootstrap collective
 * (see bootstrap_meeting.h): they gather around a shared buffer, the last one runs the
 * optional step that reaches other processes, and every member copies its result out. */
#define _POSIX_C_SOURCE 200809L
#include "engine/bootstrap_meeting.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/link_common.h"

struct dp_meeting {
    int members;
    int timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned long round; /* meetings completed */
    int arrived;         /* members in the current meeting */
    int leaving;         /* members still copying the last meeting's result */
    int stepping;        /* the last member is running the step, without the lock */
    /* the current meeting, as its first member described it */
    const char *what;
    size_t bytes, out_bytes;
    int root_slot;
    unsigned char *in, *out; /* out: only for meetings with a step (else `in` is the result) */
    size_t in_capacity, out_capacity;
    int aborted;
    dp_status status;
    char message[512];
};

dp_status dp_meeting_create(int members, int timeout_ms, dp_meeting **out)
{
    *out = NULL;
    if (members < 1) return dp_fail(DP_ERR_INVALID, "bootstrap: a meeting needs at least one member, got %d", members);
    dp_meeting *m = calloc(1, sizeof *m);
    if (!m) return dp_fail(DP_ERR_NOMEM, "bootstrap: out of memory");
    m->members = members;
    m->timeout_ms = timeout_ms > 0 ? timeout_ms : 60000;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    *out = m;
    return DP_OK;
}

void dp_meeting_destroy(dp_meeting *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
    free(m->in);
    free(m->out);
    free(m);
}

/* With the lock held. */
static void end_locked(dp_meeting *m, dp_status status, const char *message)
{
    if (m->aborted) return;
    m->aborted = 1;
    m->status = status;
    snprintf(m->message, sizeof m->message, "%s", message);
    pthread_cond_broadcast(&m->cond);
}

int dp_meeting_abort(dp_meeting *m, dp_status status, const char *message)
{
    pthread_mutex_lock(&m->lock);
    int first = !m->aborted;
    end_locked(m, status, message);
    pthread_mutex_unlock(&m->lock);
    return first;
}

int dp_meeting_ended(dp_meeting *m, dp_status *status, char *message, size_t message_size)
{
    pthread_mutex_lock(&m->lock);
    int ended = m->aborted;
    if (ended && status) *status = m->status;
    if (ended && message && message_size) snprintf(message, message_size, "%s", m->message);
    pthread_mutex_unlock(&m->lock);
    return ended;
}

static int grow(unsigned char **buf, size_t *capacity, size_t need)
{
    if (need <= *capacity) return 1;
    unsigned char *b = realloc(*buf, need);
    if (!b) return 0;
    *buf = b, *capacity = need;
    return 1;
}

dp_status dp_meeting_join(dp_meeting *m, const dp_meeting_call *c)
{
    if (c->slot < 0 || c->slot >= m->members)
        return dp_fail(DP_ERR_INVALID, "bootstrap %s: rank %d has slot %d outside the %d ranks meeting here", c->what,
                       c->rank, c->slot, m->members);
    size_t in_bytes = c->root_slot == -1 ? c->bytes * (size_t)m->members : c->root_slot >= 0 ? c->bytes : 0;
    if (!c->step && c->out_bytes != in_bytes)
        return dp_fail(DP_ERR_INTERNAL, "bootstrap %s: a meeting without a step gives back %zu bytes, not %zu",
                       c->what, in_bytes, c->out_bytes);
    char why[512];
    struct timespec deadline;
    dp_link_deadline_ts(&deadline, m->timeout_ms);
    pthread_mutex_lock(&m->lock);
    while (m->leaving > 0 && !m->aborted) /* the last meeting is still being read */
        if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT) break;
    if (!m->aborted && m->leaving > 0) {
        snprintf(why, sizeof why, "bootstrap %s: rank %d: the previous meeting did not end within %d ms", c->what,
                 c->rank, m->timeout_ms);
        end_locked(m, DP_ERR_COMM, why);
    }
    if (m->aborted) goto aborted;
    if (m->arrived == 0) {
        if (!grow(&m->in, &m->in_capacity, in_bytes) || (c->step && !grow(&m->out, &m->out_capacity, c->out_bytes))) {
            pthread_mutex_unlock(&m->lock);
            return dp_fail(DP_ERR_NOMEM, "bootstrap %s: out of memory for %zu bytes", c->what,
                           in_bytes > c->out_bytes ? in_bytes : c->out_bytes);
        }
        m->what = c->what, m->bytes = c->bytes, m->out_bytes = c->out_bytes, m->root_slot = c->root_slot;
    } else if (strcmp(m->what, c->what) != 0 || m->bytes != c->bytes || m->root_slot != c->root_slot ||
               m->out_bytes != c->out_bytes) {
        snprintf(why, sizeof why,
                 "bootstrap %s: rank %d calls %s of %zu bytes where the others call %s of %zu bytes (or another "
                 "root): the ranks disagree on the call order",
                 c->what, c->rank, c->what, c->bytes, m->what, m->bytes);
        end_locked(m, DP_ERR_COMM, why);
        goto aborted;
    }
    if (c->bytes && c->root_slot == -1) memcpy(m->in + (size_t)c->slot * c->bytes, c->mine, c->bytes);
    else if (c->bytes && c->slot == c->root_slot) memcpy(m->in, c->mine, c->bytes);
    unsigned long round = m->round;
    if (++m->arrived == m->members) {
        if (c->step) {
            m->stepping = 1;
            pthread_mutex_unlock(&m->lock);
            dp_status st = c->step(c->step_arg, m->in, in_bytes, m->out, c->out_bytes);
            if (st != DP_OK) snprintf(why, sizeof why, "%s", dp_last_error());
            pthread_mutex_lock(&m->lock);
            m->stepping = 0;
            if (st != DP_OK) end_locked(m, st, why);
            pthread_cond_broadcast(&m->cond);
            if (m->aborted) goto aborted;
        }
        m->round++;
        m->arrived = 0;
        m->leaving = m->members;
        pthread_cond_broadcast(&m->cond);
    }
    /* Past the deadline a member still waits for a running step: the step keeps its own. */
    int timed_out = 0;
    while (m->round == round && !m->aborted) {
        if (m->stepping) pthread_cond_wait(&m->cond, &m->lock);
        else if (timed_out) break;
        else if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT) timed_out = 1;
    }
    if (m->round == round) {
        if (!m->aborted) {
            snprintf(why, sizeof why, "bootstrap %s: rank %d: only %d of %d ranks arrived within %d ms", c->what,
                     c->rank, m->arrived, m->members, m->timeout_ms);
            end_locked(m, DP_ERR_COMM, why);
        }
        goto aborted;
    }
    if (c->out_bytes && c->out) memcpy(c->out, c->step ? m->out : m->in, c->out_bytes);
    if (--m->leaving == 0) pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return DP_OK;
aborted:;
    dp_status st = dp_fail(m->status, "%s", m->message);
    pthread_mutex_unlock(&m->lock);
    return st;
}
