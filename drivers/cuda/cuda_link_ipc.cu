/* cuda_link_ipc.cu: the CUDA IPC transport, between ranks of different processes on one GPU
 * (how one GPU runs a job of several processes). Each ordered pair of ranks has a ring of slots
 * in the receiver's device memory, mapped by the sender (cudaIpcOpenMemHandle): a send copies
 * its message into free slots chunk by chunk, and the receive that matches it (group, source and
 * tag, first posted first matched, as the copy transport) copies the chunks out. The control
 * words (chunks published and released, each slot's header) live in host shared memory made
 * for the job at set-up. On the GPU, counters in the ring's memory, written and waited for by
 * stream memory operations, order each copy into a slot before the copy out of it, and that
 * before the slot is written again (interprocess events where those operations are missing, or
 * with DUALPIPE_CUDA_IPC_SYNC=events). Progress is made by each rank's thread in link calls. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "drivers/cuda/cuda_link.h"

/* ----------------------------------------------------------------------------
 * what lives in shared memory */

#define IPC_MAX_SLOTS 64
#define IPC_DEFAULT_SLOTS 8
#define IPC_DEFAULT_SLOT_BYTES ((size_t)4 << 20)
#define IPC_MAGIC 0x64704950u

/* A slot's header, written by the sender before it publishes the slot. */
typedef struct {
    uint64_t msg; /* the sender's message number on this pair */
    uint64_t context;
    uint64_t total, offset, bytes;
    int32_t tag, pad;
} ipc_chunk;

/* The sender holds BUSY while it fills a slot, so that a receiver closing its end (CLOSED)
 * never frees the ring under a copy being queued. */
enum { PAIR_OPEN = 0, PAIR_BUSY = 1, PAIR_CLOSED = 2 };

typedef struct {
    uint64_t head; /* chunks published, by the sender */
    char pad0[56];
    uint64_t tail; /* chunks released, by the receiver */
    char pad1[56];
    uint32_t state; /* PAIR_* */
    uint32_t want;  /* the sender waits for room: the receiver then spills what nobody receives yet */
    char pad2[56];
    ipc_chunk chunk[IPC_MAX_SLOTS];
} ipc_pair_ctl;

/* The job's segment on this host: the abort note, then one ipc_pair_ctl per ordered pair. */
typedef struct {
    uint32_t magic, pairs;
    uint32_t aborted; /* 0; 1: being written; 2: written */
    int32_t rank, reason, pad;
    char text[488];
} ipc_segment;
static_assert(sizeof(ipc_segment) % 64 == 0, "the pairs after the segment's header stay aligned");

static uint64_t load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static uint32_t load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static int cas32(uint32_t *p, uint32_t from, uint32_t to)
{
    return __atomic_compare_exchange_n(p, &from, to, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* ----------------------------------------------------------------------------
 * what each rank gives the others at set-up (a bootstrap allgather) */

typedef struct {
    cudaIpcEventHandle_t ready, release;
    uint64_t ready_here, release_here; /* the events themselves, for a sender in this same process */
} ipc_peer_rec;

enum { SYNC_MEMOPS = 1, SYNC_EVENTS = 2 };

typedef struct {
    int32_t ok;
    uint32_t slots;
    uint64_t slot_bytes;
    uint64_t ring_here;    /* the ring itself, for a sender in this same process */
    uint64_t flags_offset; /* SYNC_MEMOPS: the pairs' counters, after the rings */
    int32_t sync;          /* SYNC_*: how this receiver's pairs order their copies */
    int32_t pad;
    cudaIpcMemHandle_t ring;
    /* followed by an ipc_peer_rec per sender to this rank, by ascending world rank */
} ipc_rank_rec;

/* ----------------------------------------------------------------------------
 * this process's side */

struct dp_cuda_ipc_msg {
    dp_cuda_ipc_msg *next;
    uint64_t id, context;
    int tag;
    size_t total;
    size_t arrived;   /* bytes of the chunks seen */
    size_t moved;     /* bytes copied out, spilled or discarded (queued on the pair's stream) */
    dp_request *recv; /* the receive it matched */
    int discard;      /* nobody takes its bytes: a receive of another size, or one given up */
    int broken;       /* the sender gave it up before its end */
    void *spill;      /* device copy of a message taken out of the ring before its receive came */
};

typedef struct { /* this rank to a receiver */
    int peer;     /* world rank */
    ipc_pair_ctl *ctl;
    char *ring;   /* this pair's slots, mapped from the receiver */
    uint32_t slots;
    size_t slot_bytes;
    int sync;                   /* SYNC_*, the receiver's choice */
    cudaEvent_t ready, release; /* SYNC_EVENTS: the receiver's */
    uint32_t *ready_at, *release_at; /* SYNC_MEMOPS: the counters, in the receiver's memory */
    int here;                   /* the receiver lives in this process: nothing was opened */
    int mapped;                 /* holds a reference to the receiver's mapped ring */
    cudaStream_t stream;
    uint64_t head;         /* chunks published */
    uint64_t release_seen; /* the released count the stream's last wait on `release` covers */
    uint64_t next_msg;
    int want;
    dp_request *queue, *queue_tail; /* sends not yet wholly in the ring, in posting order */
} ipc_out;

typedef struct {
    dp_cuda_ipc_msg *msg;
    size_t offset, bytes;
    int consumed;
} ipc_slot;

typedef struct { /* a sender to this rank */
    int peer;
    ipc_pair_ctl *ctl;
    char *ring;
    uint32_t slots;
    size_t slot_bytes;
    int sync;
    cudaEvent_t ready, release; /* SYNC_EVENTS: made here, opened by the sender */
    uint32_t *ready_at, *release_at; /* SYNC_MEMOPS */
    cudaStream_t stream;
    uint64_t scanned, tail;
    uint64_t ready_seen; /* the published count the stream's last wait on `ready` covers */
    dp_cuda_ipc_msg *current;          /* the message whose chunks are arriving */
    dp_cuda_ipc_msg *msgs, *msgs_tail; /* arrived and not yet given back */
    dp_request *posted, *posted_tail;  /* receives not yet matched, in posting order */
    ipc_slot slot[IPC_MAX_SLOTS];
} ipc_in;

typedef struct {
    pthread_mutex_t lock;
    int rank, ordinal;
    void *ring; /* every sender's slots, one allocation */
    int nout, nin;
    ipc_out *out;
    ipc_in *in;
    ipc_out **out_of; /* [world size]: NULL where the peer is not reached over IPC */
    ipc_in **in_of;
} ipc_rank;

typedef struct {
    void *ptr;
    int refs;
} ipc_mapping;

struct dp_cuda_ipc {
    pthread_mutex_t lock;
    int size, first_rank, local_ranks;
    ipc_rank **rank; /* [local_ranks]: set when the rank's world link is ready */
    ipc_segment *seg;
    size_t seg_bytes;
    ipc_mapping *opened; /* [size]: receivers' rings mapped into this process */
};

static int me(dp_link *l) { return l->world_of[l->rank]; }

/* The segment, once mapped (read without the lock by waiting threads). */
static ipc_segment *segment(dp_cuda_ipc *x) { return __atomic_load_n(&x->seg, __ATOMIC_ACQUIRE); }
static void set_segment(dp_cuda_ipc *x, ipc_segment *seg, size_t bytes)
{
    x->seg_bytes = bytes;
    __atomic_store_n(&x->seg, seg, __ATOMIC_RELEASE);
}

static ipc_rank *rank_of(dp_link *l)
{
    dp_cuda_ipc *x = l->w->ipc;
    return x->rank[me(l) - x->first_rank];
}

int dp_cuda_ipc_pair(const dp_cuda_place *a, const dp_cuda_place *b)
{
    return dp_cuda_same_gpu(a, b) && a->process != b->process;
}

dp_status dp_cuda_ipc_world_init(dp_link_world *w)
{
    dp_cuda_ipc *x = (dp_cuda_ipc *)calloc(1, sizeof *x);
    if (x) {
        x->rank = (ipc_rank **)calloc((size_t)w->local_ranks, sizeof *x->rank);
        x->opened = (ipc_mapping *)calloc((size_t)w->size, sizeof *x->opened);
    }
    if (!x || !x->rank || !x->opened) {
        if (x) free(x->rank), free(x->opened);
        free(x);
        return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    }
    x->size = w->size, x->first_rank = w->first_rank, x->local_ranks = w->local_ranks;
    pthread_mutex_init(&x->lock, NULL);
    w->ipc = x;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * abort: a note in the segment that every process on this host polls while it waits */

void dp_cuda_ipc_abort(dp_link_world *w, int rank, dp_status reason, const char *why)
{
    dp_cuda_ipc *x = w->ipc;
    if (!x) return;
    pthread_mutex_lock(&x->lock);
    ipc_segment *seg = segment(x);
    if (seg && cas32(&seg->aborted, 0, 1)) {
        seg->rank = rank, seg->reason = (int32_t)reason;
        snprintf(seg->text, sizeof seg->text, "%s", why && *why ? why : dp_status_name(reason));
        store32(&seg->aborted, 2);
    }
    pthread_mutex_unlock(&x->lock);
}

/* Whether the job was aborted, here or by another process (whose note then becomes this
 * world's abort too, so that every rank of this process hears it). */
static int aborted(dp_link_world *w)
{
    if (dp_link_abort_raised(&w->abort)) return 1;
    ipc_segment *seg = segment(w->ipc);
    if (!seg || load32(&seg->aborted) != 2) return 0;
    char text[sizeof seg->text];
    memcpy(text, seg->text, sizeof text);
    text[sizeof text - 1] = '\0';
    dp_cuda_link_abort_world(w, seg->rank, (dp_status)seg->reason, text);
    return 1;
}

/* ----------------------------------------------------------------------------
 * lists */

static void queue_push(dp_request **head, dp_request **tail, dp_request *r)
{
    r->ipc.next = NULL;
    if (*tail) (*tail)->ipc.next = r;
    else *head = r;
    *tail = r;
    r->ipc.queued = 1;
}

static int queue_remove(dp_request **head, dp_request **tail, dp_request *r)
{
    dp_request *prev = NULL;
    for (dp_request *q = *head; q; prev = q, q = q->ipc.next)
        if (q == r) {
            if (prev) prev->ipc.next = r->ipc.next;
            else *head = r->ipc.next;
            if (*tail == r) *tail = prev;
            r->ipc.next = NULL;
            r->ipc.queued = 0;
            return 1;
        }
    return 0;
}

static void msg_unlink(ipc_in *i, dp_cuda_ipc_msg *m)
{
    dp_cuda_ipc_msg *prev = NULL;
    for (dp_cuda_ipc_msg *q = i->msgs; q; prev = q, q = q->next)
        if (q == m) {
            if (prev) prev->next = m->next;
            else i->msgs = m->next;
            if (i->msgs_tail == m) i->msgs_tail = prev;
            break;
        }
    if (i->current == m) i->current = NULL;
}

static void msg_free(ipc_in *i, dp_cuda_ipc_msg *m)
{
    msg_unlink(i, m);
    if (m->spill) cudaFree(m->spill);
    free(m);
}

/* Polls a stream until its work is done, for at most `ms`: after an abort the other process
 * may be gone, and nothing here may hang on it. */
static int settle(cudaStream_t s, double ms)
{
    double deadline = dp_link_now_ms() + ms;
    int spins = 0;
    for (;;) {
        cudaError_t q = cudaStreamQuery(s);
        if (q != cudaErrorNotReady) return q == cudaSuccess;
        if (dp_link_now_ms() > deadline) return 0;
        dp_link_backoff(&spins);
    }
}

/* ----------------------------------------------------------------------------
 * ordering on the GPU. Two counters per pair: `ready`, the chunks whose copy into the ring is
 * done (written by the sender's stream), and `release`, the chunks whose copy out is done
 * (written by the receiver's stream). A stream waits for a counter only to reach a value whose
 * write the other side had queued before it published that count in shared memory, so every
 * wait ends. Stream memory operations (cuStreamWaitValue32/WriteValue32, through the runtime's
 * driver entry points) keep the counters in the ring's memory; interprocess events stand in
 * where those are missing, a wait then covering the latest record (the driver backs each
 * process's interprocess events with a file in /dev/shm that outlives it). */

typedef CUresult (*mem_op32_fn)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

static struct {
    pthread_once_t once;
    mem_op32_fn wait, write;
} memops = {PTHREAD_ONCE_INIT, NULL, NULL};

static void *driver_entry(const char *name)
{
    void *fn = NULL;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found);
#else
    cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &found);
#endif
    if (e != cudaSuccess) cudaGetLastError();
    return e == cudaSuccess && found == cudaDriverEntryPointSuccess ? fn : NULL;
}

static void memops_find(void)
{
    memops.wait = (mem_op32_fn)driver_entry("cuStreamWaitValue32");
    memops.write = (mem_op32_fn)driver_entry("cuStreamWriteValue32");
    if (!memops.wait || !memops.write) memops.wait = memops.write = NULL;
}

static int memops_present(void)
{
    pthread_once(&memops.once, memops_find);
    return memops.wait != NULL;
}

static dp_status memop_fail(CUresult r, const char *what)
{
    return dp_fail(DP_ERR_DEVICE, "cuda link: CUDA IPC transport: %s failed (CUresult %d)", what, (int)r);
}

/* The counters are 32 bits wide, compared modulo 2^32 (they never run more than a ring apart). */
static dp_status counter_write(int sync, cudaStream_t s, cudaEvent_t e, uint32_t *at, uint64_t value, const char *what)
{
    if (sync == SYNC_EVENTS) {
        CUDA_TRY(cudaEventRecord(e, s));
        return DP_OK;
    }
    CUresult r = memops.write((CUstream)s, (CUdeviceptr)(uintptr_t)at, (cuuint32_t)value, CU_STREAM_WRITE_VALUE_DEFAULT);
    return r == CUDA_SUCCESS ? DP_OK : memop_fail(r, what);
}

static dp_status counter_wait(int sync, cudaStream_t s, cudaEvent_t e, uint32_t *at, uint64_t value, const char *what)
{
    if (sync == SYNC_EVENTS) {
        CUDA_TRY(cudaStreamWaitEvent(s, e, 0));
        return DP_OK;
    }
    CUresult r = memops.wait((CUstream)s, (CUdeviceptr)(uintptr_t)at, (cuuint32_t)value, CU_STREAM_WAIT_VALUE_GEQ);
    return r == CUDA_SUCCESS ? DP_OK : memop_fail(r, what);
}

/* ----------------------------------------------------------------------------
 * the sender: sends in posting order, chunk by chunk into free slots */

static dp_status push(ipc_rank *rk, ipc_out *o)
{
    while (o->queue) {
        dp_request *r = o->queue;
        uint64_t tail = load64(&o->ctl->tail);
        if (o->head - tail >= o->slots) {
            if (!o->want) store32(&o->ctl->want, 1), o->want = 1;
            return DP_OK;
        }
        if (!cas32(&o->ctl->state, PAIR_OPEN, PAIR_BUSY))
            return dp_fail(DP_ERR_COMM,
                           "cuda link: rank %d: rank %d closed its end of CUDA IPC (its link world was destroyed) "
                           "while a send of %zu bytes to it was pending",
                           rk->rank, o->peer, r->bytes);
        uint32_t slot = (uint32_t)(o->head % o->slots);
        size_t n = r->bytes - r->ipc.pushed;
        if (n > o->slot_bytes) n = o->slot_bytes;
        dp_status st = DP_OK;
        if (n) {
            if (!r->ipc.started) {
                cudaError_t e = cudaStreamWaitEvent(o->stream, r->ipc.start, 0);
                if (e != cudaSuccess) st = dp_cuda_fail(e, "cudaStreamWaitEvent (CUDA IPC send)", __FILE__, __LINE__);
                r->ipc.started = 1;
            }
            /* the slot's last occupant must have been copied out: the receiver's count passed
             * it (a wait already queued may cover it) */
            if (st == DP_OK && o->head >= o->slots && o->release_seen <= o->head - o->slots) {
                st = counter_wait(o->sync, o->stream, o->release, o->release_at, tail, "waiting for a free slot");
                o->release_seen = tail;
            }
            if (st == DP_OK) {
                cudaError_t e = cudaMemcpyAsync(o->ring + (size_t)slot * o->slot_bytes,
                                                (const char *)r->sbuf + r->ipc.pushed, n, cudaMemcpyDeviceToDevice,
                                                o->stream);
                if (e != cudaSuccess)
                    st = dp_cuda_fail(e, "CUDA IPC transport: a copy into the receiver's ring", __FILE__, __LINE__);
            }
        }
        /* every chunk counts, an empty one too: the receiver waits for the published count */
        if (st == DP_OK) st = counter_write(o->sync, o->stream, o->ready, o->ready_at, o->head + 1, "marking a chunk");
        if (st != DP_OK) {
            store32(&o->ctl->state, PAIR_OPEN);
            return st;
        }
        ipc_chunk *c = &o->ctl->chunk[slot];
        c->msg = o->next_msg, c->context = r->l->context, c->tag = r->tag;
        c->total = r->bytes, c->offset = r->ipc.pushed, c->bytes = n;
        store64(&o->ctl->head, o->head + 1);
        store32(&o->ctl->state, PAIR_OPEN);
        o->head++;
        r->ipc.pushed += n;
        r->ipc.chunks++;
        if (o->want) store32(&o->ctl->want, 0), o->want = 0;
        if (r->ipc.pushed == r->bytes) {
            if (r->bytes) CUDA_TRY(cudaEventRecord(r->ipc.done, o->stream));
            r->ipc.finished = 1;
            o->next_msg++;
            queue_remove(&o->queue, &o->queue_tail, r);
        }
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the receiver: matching, copies out of the ring, spills, completion */

static void give(dp_request *r, dp_cuda_ipc_msg *m)
{
    if (m->total != r->bytes) { /* the receive fails at once; the message's chunks are dropped */
        r->ipc.failed = DP_ERR_COMM;
        r->ipc.sent_bytes = m->total;
        r->ipc.finished = 1;
        m->discard = 1;
        return;
    }
    m->recv = r;
    r->ipc.msg = m;
}

static int same_key(const dp_request *r, const dp_cuda_ipc_msg *m)
{
    return r->l->context == m->context && r->tag == m->tag;
}

/* A message that has just arrived goes to the earliest posted receive that wants it. */
static void match_message(ipc_in *i, dp_cuda_ipc_msg *m)
{
    for (dp_request *r = i->posted; r; r = r->ipc.next)
        if (same_key(r, m)) {
            queue_remove(&i->posted, &i->posted_tail, r);
            give(r, m);
            return;
        }
}

/* A receive just posted takes the earliest message waiting for one like it. */
static int match_receive(ipc_in *i, dp_request *r)
{
    for (dp_cuda_ipc_msg *m = i->msgs; m; m = m->next)
        if (!m->recv && !m->discard && !m->broken && same_key(r, m)) {
            give(r, m);
            return 1;
        }
    return 0;
}

static dp_status start_receive(ipc_in *i, dp_request *r)
{
    if (!r->ipc.started && r->bytes) CUDA_TRY(cudaStreamWaitEvent(i->stream, r->ipc.start, 0));
    r->ipc.started = 1;
    return DP_OK;
}

/* Reads the headers of newly published chunks. */
static dp_status scan(ipc_rank *rk, ipc_in *i, uint64_t head)
{
    for (; i->scanned < head; i->scanned++) {
        ipc_slot *s = &i->slot[i->scanned % i->slots];
        ipc_chunk c = i->ctl->chunk[i->scanned % i->slots];
        dp_cuda_ipc_msg *m = i->current;
        if (c.bytes > i->slot_bytes || c.offset > c.total || c.bytes > c.total - c.offset)
            return dp_fail(DP_ERR_INTERNAL, "cuda link: rank %d: a CUDA IPC chunk from rank %d is malformed", rk->rank,
                           i->peer);
        if (c.offset == 0) {
            if (m && m->arrived < m->total) m->broken = 1; /* its sender gave it up */
            m = (dp_cuda_ipc_msg *)calloc(1, sizeof *m);
            if (!m) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
            m->id = c.msg, m->context = c.context, m->tag = c.tag, m->total = c.total;
            if (i->msgs_tail) i->msgs_tail->next = m;
            else i->msgs = m;
            i->msgs_tail = m;
            i->current = m;
            match_message(i, m);
        } else if (!m || m->id != c.msg || m->arrived != c.offset)
            return dp_fail(DP_ERR_INTERNAL, "cuda link: rank %d: a CUDA IPC chunk from rank %d is out of order",
                           rk->rank, i->peer);
        m->arrived += c.bytes;
        s->msg = m, s->offset = c.offset, s->bytes = c.bytes, s->consumed = 0;
    }
    return DP_OK;
}

/* Queues the copy out of every arrived chunk that has somewhere to go. */
static dp_status consume(ipc_in *i, uint64_t head)
{
    for (uint64_t q = i->tail; q < i->scanned; q++) {
        ipc_slot *s = &i->slot[q % i->slots];
        if (s->consumed) continue;
        dp_cuda_ipc_msg *m = s->msg;
        char *dst = NULL;
        if (m->discard || !s->bytes) dst = NULL;
        else if (m->spill) dst = (char *)m->spill + s->offset;
        else if (m->recv) {
            DP_CHECK(start_receive(i, m->recv));
            dst = (char *)m->recv->rbuf + s->offset;
        } else continue; /* no receive yet */
        if (dst) {
            if (i->ready_seen <= q) { /* one wait covers every chunk published so far */
                DP_CHECK(counter_wait(i->sync, i->stream, i->ready, i->ready_at, head, "waiting for a chunk"));
                i->ready_seen = head;
            }
            CUDA_TRY(cudaMemcpyAsync(dst, i->ring + (size_t)(q % i->slots) * i->slot_bytes, s->bytes,
                                     cudaMemcpyDeviceToDevice, i->stream));
        }
        s->consumed = 1;
        m->moved += s->bytes;
    }
    return DP_OK;
}

/* Gives the sender back the slots copied out, in order. */
static dp_status release(ipc_in *i)
{
    uint64_t t = i->tail;
    while (t < i->scanned && i->slot[t % i->slots].consumed) i->slot[t % i->slots].msg = NULL, t++;
    if (t == i->tail) return DP_OK;
    DP_CHECK(counter_write(i->sync, i->stream, i->release, i->release_at, t, "releasing slots"));
    i->tail = t;
    store64(&i->ctl->tail, t);
    return DP_OK;
}

/* Receives whose every chunk is copied: their `done` is recorded. Messages nobody will take
 * are freed once their last chunk has gone. */
static dp_status finish(ipc_in *i)
{
    for (dp_cuda_ipc_msg *m = i->msgs, *next; m; m = next) {
        next = m->next;
        if (m->broken && m->recv) {
            m->recv->ipc.failed = DP_ERR_COMM;
            m->recv->ipc.finished = 1;
            m->recv->ipc.msg = NULL;
            m->recv = NULL;
        }
        if (m->broken) m->discard = 1;
        int whole = m->arrived == m->total && m->moved == m->total;
        dp_request *r = m->recv;
        if (r && !r->ipc.finished && whole) {
            if (m->spill && m->total) {
                DP_CHECK(start_receive(i, r));
                CUDA_TRY(cudaMemcpyAsync(r->rbuf, m->spill, m->total, cudaMemcpyDeviceToDevice, i->stream));
            }
            if (r->bytes) CUDA_TRY(cudaEventRecord(r->ipc.done, i->stream));
            r->ipc.finished = 1;
        }
        if (!r && m->discard && (m->broken ? m->moved == m->arrived : whole)) msg_free(i, m);
    }
    return DP_OK;
}

static dp_status drain(ipc_rank *rk, ipc_in *i)
{
    uint64_t head = load64(&i->ctl->head);
    DP_CHECK(scan(rk, i, head));
    DP_CHECK(consume(i, head));
    DP_CHECK(release(i));
    /* the sender waits for room, and the oldest slot's message has no receive yet: take that
     * message out of the ring into memory of its own, so that later ones can pass it */
    if (load32(&i->ctl->want) && i->tail < i->scanned) {
        dp_cuda_ipc_msg *m = i->slot[i->tail % i->slots].msg;
        if (m && !m->recv && !m->discard && !m->spill) {
            CUDA_TRY(cudaMalloc(&m->spill, m->total ? m->total : 1));
            DP_CHECK(consume(i, head));
            DP_CHECK(release(i));
        }
    }
    return finish(i);
}

static dp_status progress(ipc_rank *rk)
{
    for (int k = 0; k < rk->nout; k++) DP_CHECK(push(rk, &rk->out[k]));
    for (int k = 0; k < rk->nin; k++) DP_CHECK(drain(rk, &rk->in[k]));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the transport's table */

static void put_events(dp_link *l, dp_request *r)
{
    dp_cuda_event_put(l, r->ipc.start);
    dp_cuda_event_put(l, r->ipc.done);
    r->ipc.start = r->ipc.done = NULL;
}

static dp_status ipc_issue(dp_link *l, dp_request **reqs, int n)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    ipc_rank *rk = rank_of(l);
    if (!rk) return dp_fail(DP_ERR_INTERNAL, "cuda link: rank %d: CUDA IPC was not set up", me(l));
    dp_status st = DP_OK;
    pthread_mutex_lock(&rk->lock);
    for (int k = 0; k < n && st == DP_OK; k++) {
        dp_request *r = reqs[k];
        int peer = l->world_of[r->peer];
        memset(&r->ipc, 0, sizeof r->ipc);
        if (r->bytes) {
            st = dp_cuda_event_get(l, &r->ipc.start);
            if (st == DP_OK) st = dp_cuda_event_get(l, &r->ipc.done);
            if (st == DP_OK) {
                cudaError_t e = cudaEventRecord(r->ipc.start, r->cs);
                if (e != cudaSuccess) st = dp_cuda_fail(e, "CUDA IPC transport: cudaEventRecord", __FILE__, __LINE__);
            }
            if (st != DP_OK) {
                put_events(l, r);
                break;
            }
        }
        r->issued = 1;
        if (r->kind == DP_CUDA_SEND) {
            ipc_out *o = rk->out_of[peer];
            queue_push(&o->queue, &o->queue_tail, r);
        } else {
            ipc_in *i = rk->in_of[peer];
            if (!match_receive(i, r)) queue_push(&i->posted, &i->posted_tail, r);
        }
    }
    if (st == DP_OK) st = progress(rk);
    pthread_mutex_unlock(&rk->lock);
    return st;
}

/* Whether r is complete: every copy queued and done (or a failure known). */
static dp_status complete(dp_request *r, int *done)
{
    *done = 0;
    if (!r->ipc.finished) return DP_OK;
    if (r->ipc.failed || !r->bytes) return *done = 1, DP_OK;
    cudaError_t q = cudaEventQuery(r->ipc.done);
    if (q == cudaErrorNotReady) return DP_OK;
    if (q != cudaSuccess) return dp_cuda_fail(q, "cudaEventQuery (CUDA IPC transport)", __FILE__, __LINE__);
    *done = 1;
    return DP_OK;
}

/* Takes r out of every list. A receive's matched message goes (once whole) or is dropped; where
 * copies for r may still be queued, its pair's stream is let finish first, since the caller
 * may free the buffer once r is gone. */
static void forget(dp_link *l, ipc_rank *rk, dp_request *r)
{
    int peer = l->world_of[r->peer];
    int drain_stream = 0;
    pthread_mutex_lock(&rk->lock);
    if (r->kind == DP_CUDA_SEND) {
        ipc_out *o = rk->out_of[peer];
        if (r->ipc.queued) {
            queue_remove(&o->queue, &o->queue_tail, r);
            if (r->ipc.chunks) o->next_msg++; /* the receiver sees the next message begin: this one is given up */
        }
        if (r->ipc.started && !r->ipc.finished) drain_stream = 1;
        if (drain_stream) settle(o->stream, l->timeout_ms);
    } else {
        ipc_in *i = rk->in_of[peer];
        if (r->ipc.queued) queue_remove(&i->posted, &i->posted_tail, r);
        dp_cuda_ipc_msg *m = r->ipc.msg;
        if (m) {
            m->recv = NULL;
            r->ipc.msg = NULL;
            if (m->arrived == m->total && m->moved == m->total) msg_free(i, m);
            else m->discard = 1;
            drain_stream = r->ipc.started;
        }
        if (drain_stream) settle(i->stream, l->timeout_ms);
    }
    pthread_mutex_unlock(&rk->lock);
    put_events(l, r);
}

static dp_status ipc_test(dp_link *l, dp_request *r, int *done)
{
    *done = 0;
    DP_CHECK(dp_cuda_enter(l->dev));
    ipc_rank *rk = rank_of(l);
    pthread_mutex_lock(&rk->lock);
    dp_status st = progress(rk);
    pthread_mutex_unlock(&rk->lock);
    if (st == DP_OK) st = complete(r, done);
    if (st == DP_OK && !*done && aborted(l->w)) return dp_cuda_link_aborted(l);
    return st;
}

/* A waiting rank polls: for its first 20 ms yielding the processor between looks (a message
 * on the pipeline's critical path is seen within microseconds, not after a sleep), then with
 * short sleeps. */
static void poll_pause(double started, int *spins)
{
    if (dp_link_now_ms() - started < 20) sched_yield();
    else dp_link_backoff(spins);
}

static dp_status ipc_wait(dp_link *l, dp_request *r)
{
    DP_CHECK(dp_cuda_enter(l->dev));
    ipc_rank *rk = rank_of(l);
    double started = dp_link_now_ms(), deadline = started + l->timeout_ms;
    int spins = 0, done = 0;
    dp_status st;
    for (;;) {
        pthread_mutex_lock(&rk->lock);
        st = progress(rk);
        pthread_mutex_unlock(&rk->lock);
        if (st == DP_OK) st = complete(r, &done);
        if (st != DP_OK || done) break;
        if (aborted(l->w)) {
            st = dp_cuda_link_aborted(l);
            break;
        }
        if (dp_link_now_ms() > deadline) { /* one rank giving up ends the job: the others fail at once */
            dp_link_fail_timeout("cuda", me(l), r->kind == DP_CUDA_SEND ? "send" : "receive", r->bytes,
                                 l->world_of[r->peer], r->tag, l->timeout_ms);
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", dp_last_error());
            dp_cuda_link_abort_world(l->w, me(l), DP_ERR_TIMEOUT, msg);
            st = dp_fail(DP_ERR_TIMEOUT, "%s", msg);
            break;
        }
        poll_pause(started, &spins);
    }
    if (st == DP_OK && r->ipc.failed) {
        if (r->ipc.sent_bytes != r->bytes)
            st = dp_link_fail_size("cuda", me(l), l->world_of[r->peer], r->tag, r->ipc.sent_bytes, r->bytes);
        else {
            char t[64];
            dp_link_describe_tag(t, sizeof t, r->tag);
            st = dp_fail(DP_ERR_COMM, "cuda link: rank %d: rank %d gave up its message with %s before its end", me(l),
                         l->world_of[r->peer], t);
        }
    }
    forget(l, rk, r);
    return st;
}

static void ipc_drop(dp_link *l, dp_request *r)
{
    ipc_rank *rk = rank_of(l);
    if (rk) forget(l, rk, r);
}

const dp_cuda_transport dp_cuda_ipc_transport = {
    "ipc", ipc_issue, ipc_test, ipc_wait, ipc_drop,
};

/* Requests of l still in a pair's lists when l closes (never waited for): their memory is the
 * caller's leak to fix, but the pairs must not keep pointing at them. */
void dp_cuda_ipc_close(dp_link *l)
{
    dp_cuda_ipc *x = l->w->ipc;
    if (!x || !x->rank[me(l) - x->first_rank]) return;
    ipc_rank *rk = rank_of(l);
    pthread_mutex_lock(&rk->lock);
    for (int k = 0; k < rk->nout; k++) {
        ipc_out *o = &rk->out[k];
        for (dp_request *r = o->queue, *next; r; r = next) {
            next = r->ipc.next;
            if (r->l != l) continue;
            queue_remove(&o->queue, &o->queue_tail, r);
            if (r->ipc.chunks) o->next_msg++;
            if (r->ipc.started) settle(o->stream, l->timeout_ms);
            put_events(l, r);
            free(r);
        }
    }
    for (int k = 0; k < rk->nin; k++) {
        ipc_in *i = &rk->in[k];
        for (dp_request *r = i->posted, *next; r; r = next) {
            next = r->ipc.next;
            if (r->l != l) continue;
            queue_remove(&i->posted, &i->posted_tail, r);
            put_events(l, r);
            free(r);
        }
        for (dp_cuda_ipc_msg *m = i->msgs; m; m = m->next) {
            dp_request *r = m->recv;
            if (!r || r->l != l) continue;
            m->recv = NULL, m->discard = 1;
            if (r->ipc.started) settle(i->stream, l->timeout_ms);
            put_events(l, r);
            free(r);
        }
    }
    pthread_mutex_unlock(&rk->lock);
}

/* ----------------------------------------------------------------------------
 * set-up: rings and events made by each receiver, handed over through the bootstrap, opened by
 * the senders; the control words in one shared-memory segment per host */

static dp_status env_size(const char *name, size_t def, size_t lo, size_t hi, size_t multiple, size_t *out)
{
    *out = def;
    const char *v = getenv(name);
    if (!v || !*v) return DP_OK;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || *v == '-' || x < lo || x > hi || x % multiple)
        return dp_fail(DP_ERR_INVALID, "cuda link: %s=%s must be a multiple of %zu from %zu to %zu", name, v,
                       multiple, lo, hi);
    *out = (size_t)x;
    return DP_OK;
}

/* Senders to rank `to`, and the index of `from` among them (ascending world rank). */
static int in_index(const dp_cuda_place *place, int n, int from, int to, int *count)
{
    int k = 0, found = -1;
    for (int s = 0; s < n; s++)
        if (s != to && dp_cuda_ipc_pair(&place[s], &place[to])) {
            if (s == from) found = k;
            k++;
        }
    if (count) *count = k;
    return found;
}

/* The ordered pairs of one host, by (receiver, sender): their place in its segment. */
static int pair_index(const dp_cuda_place *place, int n, uint64_t host, int from, int to, int *count)
{
    int k = 0, found = -1;
    for (int r = 0; r < n; r++) {
        if (place[r].host != host) continue;
        for (int s = 0; s < n; s++)
            if (s != r && dp_cuda_ipc_pair(&place[s], &place[r])) {
                if (s == from && r == to) found = k;
                k++;
            }
    }
    if (count) *count = k;
    return found;
}

static ipc_pair_ctl *pair_ctl(ipc_segment *seg, int index)
{
    return (ipc_pair_ctl *)((char *)seg + sizeof(ipc_segment)) + index;
}

static dp_status make_stream(cudaStream_t *s)
{
    int least = 0, greatest = 0;
    CUDA_TRY(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_TRY(cudaStreamCreateWithPriority(s, cudaStreamNonBlocking, greatest)); /* copies pass kernels queued */
    return DP_OK;
}

/* This rank's rings (one allocation), events and streams, described in rec. */
static dp_status rank_make(dp_link *l, ipc_rank *rk, ipc_rank_rec *rec)
{
    int n = l->size, self = l->rank;
    size_t slots, slot_bytes;
    DP_CHECK(env_size("DUALPIPE_CUDA_IPC_SLOTS", IPC_DEFAULT_SLOTS, 2, IPC_MAX_SLOTS, 1, &slots));
    DP_CHECK(env_size("DUALPIPE_CUDA_IPC_SLOT_BYTES", IPC_DEFAULT_SLOT_BYTES, 4096, (size_t)1 << 30, 256, &slot_bytes));
    int sync = memops_present() ? SYNC_MEMOPS : SYNC_EVENTS;
    const char *how = getenv("DUALPIPE_CUDA_IPC_SYNC");
    if (how && *how) {
        if (strcmp(how, "events") == 0) sync = SYNC_EVENTS;
        else if (strcmp(how, "memops") == 0 && sync == SYNC_MEMOPS) sync = SYNC_MEMOPS;
        else
            return dp_fail(DP_ERR_INVALID,
                           "cuda link: DUALPIPE_CUDA_IPC_SYNC=%s: it takes \"memops\" (stream memory operations%s) "
                           "or \"events\" (interprocess events)",
                           how, sync == SYNC_MEMOPS ? "" : ", which this CUDA driver does not offer");
    }
    rk->rank = self, rk->ordinal = l->dev->ordinal;
    for (int p = 0; p < n; p++) {
        if (p == self) continue;
        rk->nin += dp_cuda_ipc_pair(&l->place[p], &l->place[self]);
        rk->nout += dp_cuda_ipc_pair(&l->place[self], &l->place[p]);
    }
    rk->out = (ipc_out *)calloc((size_t)(rk->nout ? rk->nout : 1), sizeof *rk->out);
    rk->in = (ipc_in *)calloc((size_t)(rk->nin ? rk->nin : 1), sizeof *rk->in);
    rk->out_of = (ipc_out **)calloc((size_t)n, sizeof *rk->out_of);
    rk->in_of = (ipc_in **)calloc((size_t)n, sizeof *rk->in_of);
    if (!rk->out || !rk->in || !rk->out_of || !rk->in_of) return dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    rec->slots = (uint32_t)slots, rec->slot_bytes = slot_bytes, rec->sync = sync;
    size_t ring_bytes = slots * slot_bytes;
    /* the rings, then each pair's two counters, 64 bytes apart */
    size_t flags_offset = (size_t)rk->nin * ring_bytes, flags_bytes = (size_t)rk->nin * 128;
    if (rk->nin) {
        CUDA_TRY(cudaMalloc(&rk->ring, flags_offset + flags_bytes));
        CUDA_TRY(cudaMemset((char *)rk->ring + flags_offset, 0, flags_bytes));
        CUDA_TRY(cudaIpcGetMemHandle(&rec->ring, rk->ring));
        rec->ring_here = (uint64_t)(uintptr_t)rk->ring;
        rec->flags_offset = flags_offset;
    }
    ipc_peer_rec *peers = (ipc_peer_rec *)(rec + 1);
    int ki = 0, ko = 0;
    for (int p = 0; p < n; p++) {
        if (p == self) continue;
        if (dp_cuda_ipc_pair(&l->place[p], &l->place[self])) {
            ipc_in *i = &rk->in[ki];
            rk->in_of[p] = i;
            i->peer = p, i->slots = (uint32_t)slots, i->slot_bytes = slot_bytes, i->sync = sync;
            i->ring = (char *)rk->ring + (size_t)ki * ring_bytes;
            i->ready_at = (uint32_t *)((char *)rk->ring + flags_offset + (size_t)ki * 128);
            i->release_at = i->ready_at + 16;
            if (sync == SYNC_EVENTS) {
                unsigned flags = cudaEventDisableTiming | cudaEventInterprocess;
                CUDA_TRY(cudaEventCreateWithFlags(&i->ready, flags));
                CUDA_TRY(cudaEventCreateWithFlags(&i->release, flags));
                CUDA_TRY(cudaIpcGetEventHandle(&peers[ki].ready, i->ready));
                CUDA_TRY(cudaIpcGetEventHandle(&peers[ki].release, i->release));
                peers[ki].ready_here = (uint64_t)(uintptr_t)i->ready;
                peers[ki].release_here = (uint64_t)(uintptr_t)i->release;
            }
            DP_CHECK(make_stream(&i->stream));
            ki++;
        }
        if (dp_cuda_ipc_pair(&l->place[self], &l->place[p])) {
            ipc_out *o = &rk->out[ko++];
            rk->out_of[p] = o;
            o->peer = p;
            DP_CHECK(make_stream(&o->stream));
        }
    }
    return DP_OK;
}

static dp_status segment_create(dp_cuda_ipc *x, const char *name, size_t bytes, int pairs)
{
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        int e = errno;
        return dp_fail(DP_ERR_COMM, "cuda link: CUDA IPC: shm_open(%s) failed: %s%s", name, strerror(e),
                       e == EEXIST ? " (left by another job with the same id? remove it from /dev/shm)" : "");
    }
    void *p = MAP_FAILED;
    int e = ftruncate(fd, (off_t)bytes) == 0 ? 0 : errno;
    if (!e) {
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) e = errno;
    }
    close(fd);
    if (e) {
        shm_unlink(name);
        return dp_fail(DP_ERR_COMM, "cuda link: CUDA IPC: shared memory %s of %zu bytes: %s (is /dev/shm full?)", name,
                       bytes, strerror(e));
    }
    ipc_segment *seg = (ipc_segment *)p;
    seg->pairs = (uint32_t)pairs;
    store32(&seg->magic, IPC_MAGIC);
    set_segment(x, seg, bytes);
    return DP_OK;
}

static dp_status segment_open(dp_cuda_ipc *x, const char *name, size_t bytes)
{
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return dp_fail(DP_ERR_COMM, "cuda link: CUDA IPC: shm_open(%s) failed: %s (its maker did not make it)", name,
                       strerror(errno));
    struct stat sb;
    void *p = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && (size_t)sb.st_size == bytes) p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED || load32(&((ipc_segment *)p)->magic) != IPC_MAGIC) {
        if (p != MAP_FAILED) munmap(p, bytes);
        return dp_fail(DP_ERR_COMM, "cuda link: CUDA IPC: shared memory %s is not the %zu bytes this job made", name,
                       bytes);
    }
    set_segment(x, (ipc_segment *)p, bytes);
    return DP_OK;
}

/* A receiver's ring mapped into this process, once for all of its ranks. */
static dp_status ring_open(dp_cuda_ipc *x, int peer, const cudaIpcMemHandle_t *h, char **out)
{
    pthread_mutex_lock(&x->lock);
    if (x->opened[peer].refs == 0) {
        void *p = NULL;
        cudaError_t e = cudaIpcOpenMemHandle(&p, *h, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            pthread_mutex_unlock(&x->lock);
            return dp_cuda_fail(e, "cudaIpcOpenMemHandle (the receiver's ring)", __FILE__, __LINE__);
        }
        x->opened[peer].ptr = p;
    }
    x->opened[peer].refs++;
    *out = (char *)x->opened[peer].ptr;
    pthread_mutex_unlock(&x->lock);
    return DP_OK;
}

static void ring_close(dp_cuda_ipc *x, int peer)
{
    pthread_mutex_lock(&x->lock);
    if (x->opened[peer].refs > 0 && --x->opened[peer].refs == 0) {
        cudaIpcCloseMemHandle(x->opened[peer].ptr);
        x->opened[peer].ptr = NULL;
    }
    pthread_mutex_unlock(&x->lock);
}

/* Opens what the receivers of this rank's sends made, and finds every pair's control words. */
static dp_status rank_connect(dp_link *l, ipc_rank *rk, const unsigned char *all, size_t rec_bytes, const char *name,
                              size_t seg_bytes)
{
    dp_cuda_ipc *x = l->w->ipc;
    int n = l->size, self = l->rank;
    const dp_cuda_place *place = l->place;
    if (!rk->nout && !rk->nin) return DP_OK; /* a rank with no IPC peer needs no segment */
    pthread_mutex_lock(&x->lock);
    dp_status st = segment(x) ? DP_OK : segment_open(x, name, seg_bytes);
    pthread_mutex_unlock(&x->lock);
    DP_CHECK(st);
    for (int k = 0; k < rk->nout; k++) {
        ipc_out *o = &rk->out[k];
        const ipc_rank_rec *rec = (const ipc_rank_rec *)(all + (size_t)o->peer * rec_bytes);
        const ipc_peer_rec *pr = (const ipc_peer_rec *)(rec + 1) + in_index(place, n, self, o->peer, NULL);
        o->slots = rec->slots, o->slot_bytes = (size_t)rec->slot_bytes, o->sync = rec->sync;
        if (o->sync == SYNC_MEMOPS && !memops_present())
            return dp_fail(DP_ERR_UNSUPPORTED,
                           "cuda link: rank %d: rank %d orders CUDA IPC copies with stream memory operations, which "
                           "this process's CUDA driver does not offer: set DUALPIPE_CUDA_IPC_SYNC=events for the job",
                           self, o->peer);
        int idx = in_index(place, n, self, o->peer, NULL);
        o->ctl = pair_ctl(segment(x), pair_index(place, n, place[self].host, self, o->peer, NULL));
        size_t offset = (size_t)idx * o->slots * o->slot_bytes;
        o->here = place[o->peer].pid == place[self].pid;
        char *base;
        if (o->here) /* two worlds of one process: the receiver's own pointers */
            base = (char *)(uintptr_t)rec->ring_here;
        else {
            DP_CHECK(ring_open(x, o->peer, &rec->ring, &base));
            o->mapped = 1;
        }
        o->ring = base + offset;
        o->ready_at = (uint32_t *)(base + rec->flags_offset + (size_t)idx * 128);
        o->release_at = o->ready_at + 16;
        if (o->sync != SYNC_EVENTS) continue;
        if (o->here) {
            o->ready = (cudaEvent_t)(uintptr_t)pr->ready_here;
            o->release = (cudaEvent_t)(uintptr_t)pr->release_here;
        } else {
            CUDA_TRY(cudaIpcOpenEventHandle(&o->ready, pr->ready));
            CUDA_TRY(cudaIpcOpenEventHandle(&o->release, pr->release));
        }
    }
    for (int k = 0; k < rk->nin; k++)
        rk->in[k].ctl = pair_ctl(segment(x), pair_index(place, n, place[self].host, rk->in[k].peer, self, NULL));
    return DP_OK;
}

/* Lets go of everything a rank made or opened. The senders to it are shut out first (a copy
 * being queued into its ring is let finish), and every copy into or out of its rings is let
 * finish, within a bound: a process that is gone must not hang this one. */
static void rank_free(dp_link_world *w, ipc_rank *rk)
{
    dp_cuda_ipc *x = w->ipc;
    double bound = w->timeout_ms < 5000 ? w->timeout_ms : 5000;
    int settled = 1;
    cudaSetDevice(rk->ordinal);
    for (int k = 0; k < rk->nout; k++) {
        ipc_out *o = &rk->out[k];
        if (o->stream) {
            int ok = settle(o->stream, bound);
            settled &= ok;
            if (ok) cudaStreamDestroy(o->stream);
        }
        if (o->here) continue;
        if (o->ready) cudaEventDestroy(o->ready);
        if (o->release) cudaEventDestroy(o->release);
        if (o->mapped) ring_close(x, o->peer);
    }
    for (int k = 0; k < rk->nin; k++) {
        ipc_in *i = &rk->in[k];
        if (i->ctl) {
            double deadline = dp_link_now_ms() + bound;
            int spins = 0;
            while (!cas32(&i->ctl->state, PAIR_OPEN, PAIR_CLOSED) && load32(&i->ctl->state) != PAIR_CLOSED &&
                   dp_link_now_ms() < deadline)
                dp_link_backoff(&spins);
            uint64_t head = load64(&i->ctl->head);
            if (i->stream && head > 0) counter_wait(i->sync, i->stream, i->ready, i->ready_at, head, "closing");
        }
        if (i->stream) {
            int ok = settle(i->stream, bound);
            settled &= ok;
            if (ok) cudaStreamDestroy(i->stream);
        }
        while (i->msgs) {
            dp_cuda_ipc_msg *m = i->msgs;
            if (!settled) m->spill = NULL; /* a copy may still reach it: leak it rather than hang */
            msg_free(i, m);
        }
        if (i->ready) cudaEventDestroy(i->ready);
        if (i->release) cudaEventDestroy(i->release);
    }
    if (rk->ring) {
        if (settled) cudaFree(rk->ring);
        else
            dp_log(DP_LOG_WARN,
                   "cuda link: rank %d: copies over CUDA IPC did not finish within %.0f ms of the end; their memory "
                   "is left to the process's exit",
                   rk->rank, bound);
    }
    free(rk->out), free(rk->in), free(rk->out_of), free(rk->in_of);
    pthread_mutex_destroy(&rk->lock);
    free(rk);
}

dp_status dp_cuda_ipc_setup(dp_link *l)
{
    const dp_cuda_place *place = l->place;
    int n = l->size, self = l->rank;
    /* every rank decides alike from the places, so that all take part in the same meetings */
    int maxin = 0, creator = -1, pairs = 0;
    for (int r = 0; r < n; r++) {
        int count = 0;
        in_index(place, n, -1, r, &count);
        if (count > maxin) maxin = count;
        for (int s = 0; s < n && creator < 0; s++)
            if (s != r && place[r].host == place[self].host &&
                (dp_cuda_ipc_pair(&place[s], &place[r]) || dp_cuda_ipc_pair(&place[r], &place[s])))
                creator = r;
    }
    if (maxin == 0) return DP_OK;
    pair_index(place, n, place[self].host, -1, -1, &pairs);
    size_t seg_bytes = sizeof(ipc_segment) + (size_t)(pairs ? pairs : 1) * sizeof(ipc_pair_ctl);
    char name[96];
    snprintf(name, sizeof name, "/dualpipe-ipc-%016llx-%08llx", (unsigned long long)place[0].process,
             (unsigned long long)(place[self].host & 0xffffffffu));

    dp_link_bootstrap *b = &l->w->bootstrap;
    size_t rec_bytes = sizeof(ipc_rank_rec) + (size_t)maxin * sizeof(ipc_peer_rec);
    unsigned char *all = (unsigned char *)calloc((size_t)n + 1, rec_bytes);
    int *oks = (int *)calloc((size_t)n, sizeof(int));
    ipc_rank *rk = (ipc_rank *)calloc(1, sizeof *rk);
    if (rk) pthread_mutex_init(&rk->lock, NULL);
    char why[1024] = "";
    dp_status st = all && oks && rk ? dp_cuda_enter(l->dev) : dp_fail(DP_ERR_NOMEM, "cuda link: out of memory");
    ipc_rank_rec *mine = all ? (ipc_rank_rec *)(all + (size_t)n * rec_bytes) : NULL;
    if (st == DP_OK) st = rank_make(l, rk, mine);
    if (st == DP_OK && self == creator) {
        pthread_mutex_lock(&l->w->ipc->lock);
        st = segment_create(l->w->ipc, name, seg_bytes, pairs);
        pthread_mutex_unlock(&l->w->ipc->lock);
    }
    if (st != DP_OK) snprintf(why, sizeof why, "%s", dp_last_error());
    if (!all || !oks || !rk) { /* cannot even take part: the others' meeting times out */
        if (rk) rank_free(l->w, rk);
        free(all), free(oks);
        return st;
    }
    /* first meeting: every rank's rings and events; then each opens its receivers' */
    mine->ok = st == DP_OK;
    dp_status bs = b->ops->allgather(b->ctx, me(l), mine, all, rec_bytes);
    if (st == DP_OK && bs != DP_OK) st = bs, snprintf(why, sizeof why, "%s", dp_last_error());
    int bad = -1;
    for (int r = 0; r < n && st == DP_OK && bs == DP_OK; r++)
        if (!((const ipc_rank_rec *)(all + (size_t)r * rec_bytes))->ok) bad = r;
    if (st == DP_OK && bad >= 0)
        st = dp_fail(DP_ERR_COMM, "cuda link: rank %d: rank %d could not make its CUDA IPC rings (its error says why)",
                     self, bad);
    if (st == DP_OK) {
        st = rank_connect(l, rk, all, rec_bytes, name, seg_bytes);
        if (st != DP_OK) snprintf(why, sizeof why, "%s", dp_last_error());
    }
    /* second meeting: everyone has mapped the segment, so its name can go */
    int ok = st == DP_OK;
    if (bs == DP_OK) bs = b->ops->allgather(b->ctx, me(l), &ok, oks, sizeof ok);
    if (self == creator) shm_unlink(name);
    if (st == DP_OK && bs != DP_OK) st = bs, snprintf(why, sizeof why, "%s", dp_last_error());
    for (int r = 0; r < n && st == DP_OK; r++)
        if (!oks[r])
            st = dp_fail(DP_ERR_COMM, "cuda link: rank %d: rank %d could not open its CUDA IPC peers (its error says why)",
                         self, r);
    free(all), free(oks);
    if (st != DP_OK) {
        rank_free(l->w, rk);
        return why[0] ? dp_fail(st, "%s", why) : st;
    }
    l->w->ipc->rank[self - l->w->first_rank] = rk;
    return DP_OK;
}

void dp_cuda_ipc_world_fini(dp_link_world *w)
{
    dp_cuda_ipc *x = w->ipc;
    if (!x) return;
    for (int k = 0; k < x->local_ranks; k++)
        if (x->rank[k]) rank_free(w, x->rank[k]);
    if (x->seg) munmap(x->seg, x->seg_bytes);
    pthread_mutex_destroy(&x->lock);
    free(x->rank), free(x->opened), free(x);
    w->ipc = NULL;
}
