/* link_common.c: the helpers every link shares (see link_common.h): split order, deadlines,
 * timeout messages, the world's bootstrap and its abort. */
#define _POSIX_C_SOURCE 200809L
#include "engine/link_common.h"

#include <stdio.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * split */

int dp_link_split_members(int n, const int *color, const int *key, int me, int *members, int *my_index)
{
    int size = 0;
    if (my_index) *my_index = -1;
    if (color[me] < 0) return 0;
    for (int j = 0; j < n; j++)
        if (color[j] == color[me]) members[size++] = j;
    /* insertion sort by key; members start in parent-rank order and the sort is stable */
    for (int i = 1; i < size; i++)
        for (int k = i; k > 0 && key[members[k - 1]] > key[members[k]]; k--) {
            int t = members[k];
            members[k] = members[k - 1];
            members[k - 1] = t;
        }
    for (int i = 0; i < size && my_index; i++)
        if (members[i] == me) *my_index = i;
    return size;
}

static uint64_t mix64(uint64_t x) /* splitmix64's finaliser */
{
    x ^= x >> 30, x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27, x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t dp_link_child_context(uint64_t parent, unsigned split_seq, int color)
{
    uint64_t c = mix64(parent ^ mix64(((uint64_t)split_seq << 32) ^ (uint32_t)color ^ 0x5bd1e995ull));
    return c ? c : 1; /* 0 is the world's */
}

/* ----------------------------------------------------------------------------
 * time */

double dp_link_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

void dp_link_deadline_ts(struct timespec *ts, double ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    long long ns = (long long)ts->tv_nsec + (long long)(ms * 1e6);
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

void dp_link_backoff(int *spins)
{
    if (++*spins > 200) {
        struct timespec pause = {0, 50 * 1000};
        nanosleep(&pause, NULL);
    }
}

/* ----------------------------------------------------------------------------
 * messages */

void dp_link_describe_tag(char *buf, size_t n, int tag)
{
    if (tag < 0) snprintf(buf, n, "tag %d (a collective)", tag);
    else snprintf(buf, n, "tag %d (channel %d, sequence %d)", tag, DP_TAG_CHANNEL(tag), DP_TAG_SEQ(tag));
}

dp_status dp_link_fail_timeout(const char *link, int rank, const char *what, size_t bytes, int peer, int tag,
                               int timeout_ms)
{
    char t[64];
    dp_link_describe_tag(t, sizeof t, tag);
    return dp_fail(DP_ERR_TIMEOUT,
                   "%s link: rank %d: %s of %zu bytes %s rank %d, %s, did not complete within %d ms; the peer "
                   "never posted its side (a missing or reordered action) or is stuck: check the schedule, or "
                   "raise the timeout",
                   link, rank, what, bytes, strcmp(what, "send") == 0 ? "to" : "from", peer, t, timeout_ms);
}

dp_status dp_link_fail_size(const char *link, int rank, int peer, int tag, size_t sent, size_t expected)
{
    char t[64];
    dp_link_describe_tag(t, sizeof t, tag);
    return dp_fail(DP_ERR_COMM,
                   "%s link: rank %d: the message from rank %d with %s has %zu bytes where the receive expects %zu: "
                   "the two sides disagree on the size",
                   link, rank, peer, t, sent, expected);
}

/* ----------------------------------------------------------------------------
 * bootstrap */

dp_status dp_link_bootstrap_open(dp_link_bootstrap *b, const dp_link_world_config *cfg, int timeout_ms,
                                 const char *link)
{
    memset(b, 0, sizeof *b);
    const dp_bootstrap_ops *ops = DP_LINK_WORLD_CONFIG_HAS(cfg, bootstrap) ? cfg->bootstrap : NULL;
    if (ops) {
        if (ops->abi_version != DP_BOOTSTRAP_ABI_VERSION ||
            ops->struct_size < offsetof(dp_bootstrap_ops, abort) + sizeof(void *) || !ops->allgather ||
            !ops->broadcast || !ops->barrier || !ops->abort)
            return dp_fail(DP_ERR_INVALID,
                           "%s link: the bootstrap \"%s\" has ABI %u and %u bytes, or members missing; this build "
                           "needs ABI %d with allgather, broadcast, barrier and abort",
                           link, ops->name ? ops->name : "?", ops->abi_version, ops->struct_size,
                           DP_BOOTSTRAP_ABI_VERSION);
        b->ops = ops;
        b->ctx = DP_LINK_WORLD_CONFIG_HAS(cfg, bootstrap_ctx) ? cfg->bootstrap_ctx : NULL;
        return DP_OK;
    }
    if (cfg->first_rank != 0 || (cfg->local_ranks != 0 && cfg->local_ranks != cfg->world_size))
        return dp_fail(DP_ERR_INVALID,
                       "%s link: ranks %d to %d of %d live in this process, so the others are elsewhere: give the "
                       "world config a bootstrap (MPI, TCP) to meet them",
                       link, cfg->first_rank, cfg->first_rank + cfg->local_ranks - 1, cfg->world_size);
    DP_CHECK(dp_bootstrap_threads_create(cfg->world_size, timeout_ms, &b->ctx));
    b->ops = &dp_bootstrap_threads;
    b->owned = 1;
    return DP_OK;
}

void dp_link_bootstrap_close(dp_link_bootstrap *b)
{
    if (b->owned) dp_bootstrap_threads_destroy(b->ctx);
    memset(b, 0, sizeof *b);
}

/* ----------------------------------------------------------------------------
 * abort */

void dp_link_abort_init(dp_link_abort *a)
{
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->lock, NULL);
}

void dp_link_abort_fini(dp_link_abort *a) { pthread_mutex_destroy(&a->lock); }

/* Records the first end: "rank R ended the job: text", or the text alone where it names the
 * rank itself (named). 1 when this call recorded it. */
static int abort_record(dp_link_abort *a, int named, int rank, dp_status reason, const char *text)
{
    pthread_mutex_lock(&a->lock);
    int first = !a->raised;
    if (first) {
        a->reason = reason;
        /* the reason may itself be long (a nested message): keep its head */
        int n = named ? 0 : snprintf(a->message, sizeof a->message, "rank %d ended the job: ", rank);
        if (n < 0 || (size_t)n >= sizeof a->message) n = 0;
        size_t room = sizeof a->message - (size_t)n - 1, len = strlen(text);
        if (len > room) len = room;
        memcpy(a->message + n, text, len);
        a->message[(size_t)n + len] = '\0';
        __atomic_store_n(&a->raised, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&a->lock);
    return first;
}

int dp_link_abort_raise(dp_link_abort *a, const dp_link_bootstrap *b, int rank, dp_status reason, const char *why)
{
    const char *text = why && *why ? why : dp_status_name(reason);
    int first = abort_record(a, 0, rank, reason, text);
    if (first && b && b->ops) b->ops->abort(b->ctx, rank, reason, text);
    return first;
}

int dp_link_abort_heard(dp_link_abort *a, const dp_link_bootstrap *b, double *next_ms)
{
    if (dp_link_abort_raised(a)) return 1;
    if (!b || !b->ops || !DP_HAS(b->ops, aborted) || !b->ops->aborted) return 0;
    double now = dp_link_now_ms();
    if (now < *next_ms) return 0;
    *next_ms = now + DP_LINK_BOOTSTRAP_POLL_MS;
    dp_status reason = DP_ERR_COMM;
    char message[sizeof a->message];
    message[0] = '\0';
    if (!b->ops->aborted(b->ctx, &reason, message, sizeof message)) return 0;
    abort_record(a, 1, -1, reason, message[0] ? message : "the bootstrap says the job has ended, without a word why");
    return 1;
}

int dp_link_abort_raised(dp_link_abort *a) { return __atomic_load_n(&a->raised, __ATOMIC_ACQUIRE); }

dp_status dp_link_abort_fail(dp_link_abort *a) { return dp_fail(DP_ERR_COMM, "%s", a->message); }
