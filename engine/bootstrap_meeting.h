/* bootstrap_meeting.h: how the rank threads of one process meet for a bootstrap collective:
 * one meeting at a time around a shared buffer. The in-process bootstrap is just this; a
 * bootstrap spanning processes (TCP, MPI) adds a step that the last thread to arrive runs to
 * exchange the process's share with the other processes. For bootstrap implementers only. */
#ifndef DP_BOOTSTRAP_MEETING_H
#define DP_BOOTSTRAP_MEETING_H

#include <stddef.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dp_meeting dp_meeting;

/* Completes a meeting from what the members brought (`in`, in_bytes) by writing what every
 * member takes away (`out`, out_bytes). Run by the last member to arrive, without the
 * meeting's lock, so that the others can still abort; they wait for it however long it
 * takes, so it must keep its own deadline. A failure ends the meeting for every member with
 * the step's status and dp_last_error(). */
typedef dp_status (*dp_meeting_step)(void *arg, const void *in, size_t in_bytes, void *out, size_t out_bytes);

typedef struct {
    const char *what;  /* "allgather", "broadcast", "barrier": messages, and every member must say the same */
    int rank;          /* the caller's world rank, for messages */
    int slot;          /* the caller's place among the members, 0 .. members-1 */
    const void *mine;  /* what the caller brings: `bytes` of it */
    size_t bytes;
    /* -1: every member brings `bytes`, placed at slot * bytes (a gather). >= 0: only the member
     * in that slot brings them. -2: none does (the root lives in another process). */
    int root_slot;
    void *out;         /* receives out_bytes (may be NULL when out_bytes is 0) */
    size_t out_bytes;
    dp_meeting_step step; /* NULL: out is what was brought, and out_bytes must equal its size */
    void *step_arg;
} dp_meeting_call;

dp_status dp_meeting_create(int members, int timeout_ms, dp_meeting **out);
void dp_meeting_destroy(dp_meeting *m);

/* Joins the current meeting and returns when every member has joined and the step (if any)
 * is done, or with an error after the timeout (the meeting ends for everyone: its buffer is no
 * longer consistent) or an abort. Errors: DP_ERR_COMM, or the failing step's status. */
dp_status dp_meeting_join(dp_meeting *m, const dp_meeting_call *call);

/* Ends the meeting for good: every pending and later join fails with `status` and `message`
 * (the first abort wins). Returns 1 when this call ended it. */
int dp_meeting_abort(dp_meeting *m, dp_status status, const char *message);

/* Whether the meeting has ended for good (an abort, or a failure that ended it): 0 while it
 * goes on; else 1, with the status and message that joins fail with (status and message may
 * be NULL). Never waits for a meeting under way: its step runs without the lock. */
int dp_meeting_ended(dp_meeting *m, dp_status *status, char *message, size_t message_size);

#ifdef __cplusplus
}
#endif
#endif
