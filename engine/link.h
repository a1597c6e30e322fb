/* link.h: the link interface, how ranks talk. A versioned table of function pointers with
 * NCCL's semantics: point-to-point isend/irecv grouped by group_start/end, all_reduce,
 * all_to_all_v, barrier, sub-groups by split, and waits that give up after a timeout. */
#ifndef DP_LINK_H
#define DP_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "engine/device.h"
#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DP_LINK_ABI_VERSION 1

typedef struct dp_link_world dp_link_world; /* the set of all ranks of a job, driver-owned */
typedef struct dp_link dp_link;             /* one rank's endpoint in one group (a communicator) */
typedef struct dp_request dp_request;       /* a posted send or receive */

typedef enum { DP_REDUCE_SUM = 0, DP_REDUCE_MAX = 1 } dp_reduce_op;

/* ----------------------------------------------------------------------------
 * Bootstrap: how the ranks of a job first meet, before any link exists. The launcher
 * provides it: ranks that are threads of one process (the default, dp_bootstrap_threads),
 * MPI, or a TCP rendezvous for torchrun-style environments. A link uses it for what needs
 * the whole world (the NCCL unique id, every rank's device and process); sub-groups are then
 * made by split over the link itself. Every rank of the world calls the collectives in the
 * same order; `rank` is the caller's world rank (a process may host several ranks). Each
 * call gives up after the bootstrap's own timeout. */

#define DP_BOOTSTRAP_ABI_VERSION 1

typedef struct dp_bootstrap_ops {
    uint32_t abi_version; /* DP_BOOTSTRAP_ABI_VERSION */
    uint32_t struct_size; /* sizeof(struct dp_bootstrap_ops) as it was built */
    const char *name;     /* "threads", "mpi", "tcp" */
    /* all[r * bytes ...] receives rank r's `mine`, for every rank r of the world. */
    dp_status (*allgather)(void *ctx, int rank, const void *mine, void *all, size_t bytes);
    /* buf of `root` is copied to every rank's buf. */
    dp_status (*broadcast)(void *ctx, int rank, void *buf, size_t bytes, int root);
    dp_status (*barrier)(void *ctx, int rank);
    /* Ends the job: every rank's pending and later calls fail with DP_ERR_COMM naming `rank`
     * and the message; a bootstrap that spans processes tells the other processes too. */
    dp_status (*abort)(void *ctx, int rank, dp_status reason, const char *message);
    /* --- appended members: read only where struct_size covers them (DP_HAS) */
    /* Whether the job has ended, answered at once: never waits for a collective under way,
     * for another rank, or for anything to arrive. 0 while the job goes on; non-zero once this
     * process knows of an abort (by one of its ranks, or come from another process) or of a
     * failure that ended the bootstrap (a missed deadline, a process gone). Then *reason is
     * why (the status the aborting rank gave, or the failure's) and message receives the text
     * later calls fail with, naming the rank or process (cut to message_size, always
     * terminated); reason and message may be NULL. Any thread may ask, at any time between
     * create and destroy: a link polls it in waits that the bootstrap does not see (NCCL's),
     * so that an abort in another process ends them at once rather than at their deadline. */
    int (*aborted)(void *ctx, dp_status *reason, char *message, size_t message_size);
} dp_bootstrap_ops;

/* The in-process bootstrap: the ranks are threads of this process. */
extern const dp_bootstrap_ops dp_bootstrap_threads;
dp_status dp_bootstrap_threads_create(int world_size, int timeout_ms, void **ctx);
void dp_bootstrap_threads_destroy(void *ctx);

typedef struct {
    int world_size;    /* ranks in the job */
    int first_rank;    /* the first rank hosted by this process (in-process drivers: 0) */
    int local_ranks;   /* ranks hosted by this process, each on its own thread (in-process: world_size) */
    int timeout_ms;    /* a wait gives up after this long (0: 60 s) */
    uint32_t flags;
    /* --- appended members, read only where struct_size covers them (0: none of them) */
    uint32_t struct_size;                 /* sizeof(dp_link_world_config) as the caller was built */
    const dp_bootstrap_ops *bootstrap;    /* NULL: the ranks are threads of this process */
    void *bootstrap_ctx;                  /* the bootstrap's first argument; it outlives the world */
} dp_link_world_config;

/* Whether the caller's config has `member` (set struct_size when setting any appended member). */
#define DP_LINK_WORLD_CONFIG_HAS(cfg, member)                                                   \
    ((cfg)->struct_size >= offsetof(dp_link_world_config, member) + sizeof((cfg)->member))

/* ----------------------------------------------------------------------------
 * Tags
 *
 * A message is matched by (group, source, destination, tag), first posted first matched.
 * Backends without tags (NCCL) match by posting order per peer; the executor keeps them
 * safe by using few *channels* and posting each channel's messages in the same order on
 * both sides, so a backend may map each channel to its own communicator (or stream) and rely
 * on FIFO order within it. The sequence number only serves messages (a timed-out wait names
 * it). Negative tags are reserved for the links' own collectives. */

#define DP_TAG_CHANNEL_BITS 4
#define DP_TAG(channel, seq) ((int)(((unsigned)(seq) << DP_TAG_CHANNEL_BITS) | (unsigned)(channel)))
#define DP_TAG_CHANNEL(tag) ((tag) & ((1 << DP_TAG_CHANNEL_BITS) - 1))
#define DP_TAG_SEQ(tag) ((tag) >> DP_TAG_CHANNEL_BITS)

/* ----------------------------------------------------------------------------
 * The table. Every member takes its context first and returns a dp_status.
 *
 * Threads: world_create and world_destroy are called once by the owner; every other member
 * is called by the thread that owns the rank's dp_link. Collectives (split, all_reduce,
 * all_to_all_v, barrier) must be called by every member of the group in the same order.
 *
 * Streams: operations are ordered after the work already queued on the stream passed
 * (NULL: the device's default stream); after wait() returns DP_OK the data may be used by
 * work queued on that stream afterwards (the host may or may not have blocked).
 *
 * Failures: a wait that gives up returns DP_ERR_TIMEOUT with a message naming the rank,
 * the peer and the tag. abort() ends the whole world: every rank's pending and future waits
 * return DP_ERR_COMM naming the rank that aborted and why, so that one failure ends the job
 * rather than hanging the others. */

typedef struct dp_link_ops {
    uint32_t abi_version; /* DP_LINK_ABI_VERSION */
    uint32_t struct_size;
    const char *name;

    /* --- bootstrap */
    dp_status (*world_create)(const dp_link_world_config *cfg, dp_link_world **out);
    dp_status (*world_destroy)(dp_link_world *w);
    /* The endpoint of `rank` in the world group, bound to the rank's device. */
    dp_status (*open)(dp_link_world *w, int rank, dp_device *dev, dp_link **out);
    /* Collective over `parent`: members with the same color form a new group, ranked by key
     * (ties by parent rank). color < 0: this rank joins no group (*out = NULL). */
    dp_status (*split)(dp_link *parent, int color, int key, dp_link **out);
    dp_status (*close)(dp_link *l);
    dp_status (*info)(dp_link *l, int *rank, int *size); /* rank and size within the group */

    /* --- point to point. Between group_start and group_end posts are deferred and issued
     * together at group_end (NCCL's ncclGroupStart/End); outside a group they are issued at
     * once. A send's buffer must stay unchanged until its request completes. */
    dp_status (*group_start)(dp_link *l);
    dp_status (*group_end)(dp_link *l);
    dp_status (*isend)(dp_link *l, const void *buf, size_t bytes, int peer, int tag, dp_stream *s,
                       dp_request **req);
    dp_status (*irecv)(dp_link *l, void *buf, size_t bytes, int peer, int tag, dp_stream *s, dp_request **req);
    dp_status (*test)(dp_link *l, dp_request *req, int *done);
    /* Waits for the request and frees it, whatever the outcome. A receive whose message has
     * another size fails with DP_ERR_COMM. */
    dp_status (*wait)(dp_link *l, dp_request *req);

    /* --- collectives. Counts in elements. all_reduce sums (or takes the max) in group-rank
     * order, so every member gets the same bits; send may equal recv (in place). */
    dp_status (*all_reduce)(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t, dp_reduce_op op,
                            dp_stream *s);
    /* Rows to and from every member: member j receives send[send_displs[j] ...
     * + send_counts[j]) of this rank at its recv_displs[this rank]. Counts must match on both
     * sides (exchange them first, e.g. with an all_to_all_v of one count per peer). */
    dp_status (*all_to_all_v)(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                              void *recv, const size_t *recv_counts, const size_t *recv_displs, size_t elem_bytes,
                              dp_stream *s);
    dp_status (*barrier)(dp_link *l);

    /* --- failure */
    dp_status (*abort)(dp_link *l, dp_status reason, const char *message);
    dp_status (*set_timeout)(dp_link *l, int timeout_ms);

    /* --- appended members: use only where the table has them (DP_LINK_OPS_HAS) */
    /* all_to_all_v started and left in flight: the call returns once the exchange is under way
     * (the counts and displacements are read before it returns; send must stay unchanged and recv
     * unread until the request completes), and test/wait on *req complete it as they do a
     * receive. Collective like all_to_all_v: every member starts its exchanges in the same order;
     * the caller may compute meanwhile, which is how one micro-batch's dispatch or combine hides
     * under another's compute. A link without it (or with it NULL) has only the blocking call. */
    dp_status (*iall_to_all_v)(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                               void *recv, const size_t *recv_counts, const size_t *recv_displs, size_t elem_bytes,
                               dp_stream *s, dp_request **req);
} dp_link_ops;

#define DP_LINK_OPS_MIN_SIZE (offsetof(dp_link_ops, set_timeout) + sizeof(void *))
/* Whether the table `ops` has the appended member `member`, and sets it. */
#define DP_LINK_OPS_HAS(ops, member)                                                                  \
    ((ops)->struct_size >= offsetof(dp_link_ops, member) + sizeof((ops)->member) && (ops)->member != NULL)

#ifdef __cplusplus
}
#endif
#endif
