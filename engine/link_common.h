/* link_common.h: what every link (driver) needs and would otherwise write again: the order of
 * a split's members, deadlines for waits, the message of a timed-out wait, the world's abort
 * (first reason wins, told to the bootstrap so that other processes hear it), and the
 * bootstrap a world uses (the caller's, or the in-process one). For link implementers only. */
#ifndef DP_LINK_COMMON_H
#define DP_LINK_COMMON_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "engine/link.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * split */

/* The members of `me`'s color among n parent ranks, ordered by (key, parent rank): writes
 * their parent ranks to members[] and returns how many (0 when color[me] < 0). *my_index
 * (may be NULL) receives me's rank in the new group, -1 when it joins none. */
int dp_link_split_members(int n, const int *color, const int *key, int me, int *members, int *my_index);

/* A group's context: an id every member computes alike, so that a transport can tell
 * groups apart without shared memory (the world group is 0). */
uint64_t dp_link_child_context(uint64_t parent, unsigned split_seq, int color);

/* ----------------------------------------------------------------------------
 * time */

double dp_link_now_ms(void); /* monotonic */
/* An absolute CLOCK_REALTIME time `ms` from now, for pthread_cond_timedwait. */
void dp_link_deadline_ts(struct timespec *ts, double ms);
/* Polling: spins first, then short sleeps, so fast completions stay fast. */
void dp_link_backoff(int *spins);

/* ----------------------------------------------------------------------------
 * messages */

/* "tag 83 (channel 3, sequence 5)" or "tag -4 (a collective)". */
void dp_link_describe_tag(char *buf, size_t n, int tag);

/* The failure of a wait that gave up: DP_ERR_TIMEOUT with a message naming the link, the
 * rank, the operation ("send", "receive", ...: a send's peer reads "to rank P", any other
 * "from rank P"), the tag and the time, and what to check. Ranks are world ranks. */
dp_status dp_link_fail_timeout(const char *link, int rank, const char *what, size_t bytes, int peer, int tag,
                               int timeout_ms);

/* A received message whose size differs from the receive's: DP_ERR_COMM naming both. */
dp_status dp_link_fail_size(const char *link, int rank, int peer, int tag, size_t sent, size_t expected);

/* ----------------------------------------------------------------------------
 * the bootstrap a world uses */

typedef struct {
    const dp_bootstrap_ops *ops;
    void *ctx;
    int owned; /* made here (dp_bootstrap_threads): destroyed with the world */
} dp_link_bootstrap;

/* The caller's bootstrap, checked, or an in-process one when it gives none (then every rank
 * must live in this process). `link` names the link in messages. */
dp_status dp_link_bootstrap_open(dp_link_bootstrap *b, const dp_link_world_config *cfg, int timeout_ms,
                                 const char *link);
void dp_link_bootstrap_close(dp_link_bootstrap *b);

/* ----------------------------------------------------------------------------
 * abort: one per world. The first abort wins; later ones change nothing. */

typedef struct {
    pthread_mutex_t lock;
    int raised; /* read without the lock through dp_link_abort_raised */
    dp_status reason;
    char message[512]; /* "rank R ended the job: why" */
} dp_link_abort;

void dp_link_abort_init(dp_link_abort *a);
void dp_link_abort_fini(dp_link_abort *a);
/* Records the abort of world rank `rank` and tells the bootstrap (b may be NULL). Returns 1
 * when this call raised it. The link then wakes its own waiters. */
int dp_link_abort_raise(dp_link_abort *a, const dp_link_bootstrap *b, int rank, dp_status reason, const char *why);
int dp_link_abort_raised(dp_link_abort *a);
/* DP_ERR_COMM with the abort's message: what every wait returns after an abort. */
dp_status dp_link_abort_fail(dp_link_abort *a);

/* How often a wait asks the bootstrap whether the job has ended. */
#define DP_LINK_BOOTSTRAP_POLL_MS 5.0

/* Whether the job has ended: the world's own abort, or one the bootstrap knows of (its
 * aborted member, where it has one), which then becomes the world's abort as the bootstrap
 * words it (without telling the bootstrap back). The bootstrap is asked at most every
 * DP_LINK_BOOTSTRAP_POLL_MS, timed by the caller's *next_ms (0 at first), and never waits:
 * for waits the bootstrap does not see (NCCL's), so that an abort in another process ends
 * them at once rather than at their deadline. */
int dp_link_abort_heard(dp_link_abort *a, const dp_link_bootstrap *b, double *next_ms);

#ifdef __cplusplus
}
#endif
#endif
