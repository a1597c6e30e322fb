/* cuda_link.h: what the CUDA link's files share: the world, a rank's endpoint in a group, a
 * request, and the transport table. cuda_link.cu chooses a transport per pair of ranks (like
 * NCCL's transport table): cuda_link_copy.cu between ranks on one GPU of this process,
 * cuda_link_ipc.cu between ranks of different processes on one GPU, cuda_link_nccl.cu across
 * GPUs. A new transport is one file exporting a cuda_transport. */
#ifndef DP_CUDA_LINK_H
#define DP_CUDA_LINK_H

#include <pthread.h>

#include "drivers/cuda/cuda_internal.h"
#include "engine/link_common.h"

/* Tag channels served by their own communicator (and stream); DUALPIPE_NCCL_CHANNELS changes
 * it. The slot after the last channel carries collectives (negative tags). */
#define DP_CUDA_DEFAULT_CHANNELS 4
#define DP_CUDA_MAX_CHANNELS (1 << DP_TAG_CHANNEL_BITS)

/* ncclCommSplit came with NCCL 2.18: before it, sub-groups get fresh communicators (defining
 * DP_CUDA_HAVE_COMM_SPLIT=0 builds that way with a newer NCCL too). */
#ifndef DP_CUDA_HAVE_COMM_SPLIT
#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
#define DP_CUDA_HAVE_COMM_SPLIT 1
#else
#define DP_CUDA_HAVE_COMM_SPLIT 0
#endif
#endif

/* ----------------------------------------------------------------------------
 * where a rank runs: gathered from every rank through the bootstrap */

typedef struct {
    unsigned char gpu[16]; /* the GPU's UUID */
    uint64_t host;         /* a hash of the host name */
    uint64_t process;      /* the world (one per process) hosting the rank */
    int ordinal;
    int pid;               /* the operating-system process (two worlds may share one) */
} dp_cuda_place;

/* ----------------------------------------------------------------------------
 * transports */

typedef struct dp_cuda_transport {
    const char *name; /* "copy", "ipc", "nccl": in logs */
    /* Issues requests posted to peers of this transport, as one batch (a group_end). */
    dp_status (*issue)(dp_link *l, dp_request **reqs, int n);
    dp_status (*test)(dp_link *l, dp_request *r, int *done);
    /* Waits for an issued request with the link's deadline; the caller frees it. */
    dp_status (*wait)(dp_link *l, dp_request *r);
    /* Lets go of an issued request that was never waited for (the link is closing). */
    void (*drop)(dp_link *l, dp_request *r);
} dp_cuda_transport;

extern const dp_cuda_transport dp_cuda_copy_transport;
extern const dp_cuda_transport dp_cuda_ipc_transport;
extern const dp_cuda_transport dp_cuda_nccl_transport;

/* ----------------------------------------------------------------------------
 * structures */

typedef struct dp_cuda_msg dp_cuda_msg; /* a copy-transport message (cuda_link_copy.cu) */
typedef struct dp_cuda_ipc_msg dp_cuda_ipc_msg; /* a message arriving over CUDA IPC (cuda_link_ipc.cu) */
typedef struct dp_cuda_ipc dp_cuda_ipc;         /* the world's CUDA IPC state (cuda_link_ipc.cu) */

/* What the IPC transport keeps per request. */
typedef struct {
    dp_request *next;     /* in its pair's send queue or list of posted receives */
    dp_cuda_ipc_msg *msg; /* a receive: the message it matched */
    size_t pushed;        /* a send: bytes handed to the ring so far */
    int chunks;           /* a send: chunks handed to the ring so far */
    int queued;           /* in one of its pair's lists */
    int started;          /* the pair's stream already waits for `start` */
    int finished;         /* every copy is queued and `done` recorded after the last (or none needed) */
    dp_status failed;     /* a receive: why it cannot complete (a size mismatch, a message given up) */
    size_t sent_bytes;    /* a receive of another size: the message's */
    cudaEvent_t start;    /* recorded on the caller's stream when posted */
    cudaEvent_t done;     /* recorded after the request's last copy */
} dp_cuda_ipc_req;

typedef struct {
    dp_cuda_msg *head, *tail; /* messages waiting for this rank */
    dp_request *posted;       /* this rank's receives, in posting order (every group of it) */
} dp_cuda_mailbox;

struct dp_link_world {
    int size, first_rank, local_ranks;
    int timeout_ms;
    int channels;
    uint64_t process; /* this world's id among the job's processes */
    pthread_mutex_t lock;
    pthread_cond_t cond; /* broadcast on every copy-transport change and on abort */
    dp_link_abort abort;
    dp_link_bootstrap bootstrap;
    int *opened;              /* [size]: endpoints of the world group open, per local rank */
    dp_cuda_mailbox *mailbox; /* [size]: copy transport, per rank of this process */
    dp_cuda_ipc *ipc;         /* IPC transport: rings, shared control words, the job's abort note */
};

typedef enum {
    DP_CUDA_NCCL_NONE = 0, /* no peer across GPUs */
    DP_CUDA_NCCL_GROUP,    /* every member on its own GPU: communicators over the whole group */
    DP_CUDA_NCCL_PAIRS,    /* some members share a GPU: a communicator per pair across GPUs */
} dp_cuda_nccl_layout;

typedef enum { DP_CUDA_SEND, DP_CUDA_RECV } dp_cuda_req_kind;

struct dp_request {
    dp_request *next_deferred, *next_posted;
    dp_link *l;
    const dp_cuda_transport *tp;
    dp_cuda_req_kind kind;
    const void *sbuf;
    void *rbuf;
    size_t bytes;
    int peer, tag; /* peer: group rank */
    dp_stream *s;
    cudaStream_t cs; /* s resolved */
    int issued;
    int done;              /* copy: send matched / receive's copy queued */
    dp_cuda_msg *msg;      /* copy */
    cudaEvent_t done_event; /* nccl: recorded after the operation on the communicator's stream */
    dp_cuda_ipc_req ipc;    /* ipc */
};

struct dp_link {
    dp_link_world *w;
    int rank, size; /* in the group */
    int *world_of;  /* [size] */
    uint64_t context;
    dp_device *dev;
    int timeout_ms;
    int ready; /* placement known, transports chosen, communicators made */
    dp_cuda_place *place;               /* [size] */
    const dp_cuda_transport **transport; /* [size]: per peer */
    int force_nccl;                      /* DUALPIPE_CUDA_LINK=nccl: NCCL to itself too */
    /* NCCL */
    int channels;
    dp_cuda_nccl_layout layout;
    ncclComm_t comm[DP_CUDA_MAX_CHANNELS + 1]; /* GROUP */
    cudaStream_t cstream[DP_CUDA_MAX_CHANNELS + 1];
    ncclComm_t *pair_comm;      /* PAIRS: [size * (channels + 1)], NULL where the peer is not NCCL's */
    cudaStream_t *pair_stream;  /* PAIRS: alike, one stream per communicator */
    /* point to point */
    int group_depth;
    dp_request *deferred_head, *deferred_tail;
    unsigned split_seq, coll_seq;
    void *tmp; /* collectives' device scratch */
    size_t tmp_bytes;
    cudaEvent_t *event_pool;
    int pool_len, pool_cap;
};

/* ----------------------------------------------------------------------------
 * shared by the files of the link */

/* The world's abort, by world rank `rank`: recorded, told to the bootstrap, waiters woken. */
void dp_cuda_link_abort_world(dp_link_world *w, int rank, dp_status reason, const char *why);
dp_status dp_cuda_link_aborted(dp_link *l); /* DP_ERR_COMM naming who aborted */
/* Whether the job has ended: the world's abort, or one its bootstrap knows of from another
 * process (asked every few ms, timed by *next_ms, 0 at first), which then becomes the world's
 * abort and wakes its waiters. For waits on NCCL, which the bootstrap does not see. */
int dp_cuda_link_ended(dp_link_world *w, double *next_ms);

dp_status dp_cuda_event_get(dp_link *l, cudaEvent_t *out);
void dp_cuda_event_put(dp_link *l, cudaEvent_t e);

/* The NCCL layout of a group whose members[] (indices into place[]) run where place[] says. */
dp_cuda_nccl_layout dp_cuda_choose_layout(const dp_cuda_place *place, const int *members, int size, int force_nccl);
int dp_cuda_same_gpu(const dp_cuda_place *a, const dp_cuda_place *b);

/* NCCL (cuda_link_nccl.cu). */
int dp_cuda_nccl_channel(dp_link *l, int tag);
dp_status dp_cuda_nccl_fail(dp_link *l, ncclResult_t r, const char *what);
void dp_cuda_nccl_abort_comms(dp_link *l);
void dp_cuda_nccl_close(dp_link *l);
/* Communicators of the world group: ids made by world rank 0 and broadcast by the bootstrap. */
dp_status dp_cuda_nccl_world(dp_link *l);
/* Communicators of `child` from its parent's (ncclCommSplit) or from fresh ids given by the
 * parent's members. Every member of the parent calls it, in the same order; child is NULL on
 * a rank that joins no group. color/key/members: of the whole parent, members[] its child's. */
dp_status dp_cuda_nccl_split(dp_link *parent, dp_link *child, const int *color, const int *key);
/* NCCL collectives on a GROUP link, behind the caller's stream. */
dp_status dp_cuda_nccl_all_reduce(dp_link *l, const void *send, void *recv, size_t count, dp_dtype t,
                                  dp_reduce_op op, dp_stream *s);
dp_status dp_cuda_nccl_all_to_all_v(dp_link *l, const void *send, const size_t *send_counts,
                                    const size_t *send_displs, void *recv, const size_t *recv_counts,
                                    const size_t *recv_displs, size_t elem_bytes, dp_stream *s);
dp_status dp_cuda_nccl_barrier(dp_link *l);
/* Whether sub-groups are split from their parent's communicators (NCCL 2.18+, unless
 * DUALPIPE_NCCL_SPLIT=0). */
int dp_cuda_nccl_use_split(void);

/* Host bytes from every member of the group through the link itself (device scratch and an
 * all_to_all_v): all[j * bytes ...] receives member j's `mine`. */
dp_status dp_cuda_link_allgather_host(dp_link *l, const void *mine, void *all, size_t bytes);

/* IPC transport (cuda_link_ipc.cu). Whether ranks at a and b need it (one GPU, two worlds). */
int dp_cuda_ipc_pair(const dp_cuda_place *a, const dp_cuda_place *b);
dp_status dp_cuda_ipc_world_init(dp_link_world *w);
void dp_cuda_ipc_world_fini(dp_link_world *w);
/* Rings, events and shared control words for every IPC pair of the world: called by every
 * rank of the world at its world link's set-up (bootstrap collectives, none where the world
 * has no IPC pair). */
dp_status dp_cuda_ipc_setup(dp_link *l);
void dp_cuda_ipc_close(dp_link *l); /* drops l's requests still queued */
/* Leaves the abort where the other processes on this host poll it. */
void dp_cuda_ipc_abort(dp_link_world *w, int rank, dp_status reason, const char *why);

/* Copy transport (cuda_link_copy.cu): the world's mailboxes. */
void dp_cuda_copy_world_fini(dp_link_world *w);
void dp_cuda_copy_close(dp_link *l); /* drops l's receives still posted */

#endif
