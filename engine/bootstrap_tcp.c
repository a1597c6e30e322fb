/* bootstrap_tcp.c: the TCP rendezvous bootstrap (see bootstrap_tcp.h). A star through process
 * 0: each collective, the rank threads of a process meet (bootstrap_meeting.c), the last one
 * sends the process's share to process 0, and process 0 answers every process with the
 * result. A reader thread per process takes in whatever arrives, so that an abort or a
 * vanished process is known at once, not at the next call. Frames carry a magic, a version
 * and a length, so bytes from anything else are refused rather than believed. */
#define _POSIX_C_SOURCE 200809L
#include "engine/bootstrap_tcp.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/bootstrap_meeting.h"
#include "engine/link_common.h"

/* ----------------------------------------------------------------------------
 * frames: a 24-byte head (magic, version, type, sequence, sender, payload length), all
 * big-endian, then the payload */

#define TCP_MAGIC 0x44504253u /* "DPBS" */
#define TCP_VERSION 1u
#define TCP_HEAD 24

enum {
    F_HELLO = 1,   /* a process joins: world size, processes, its index, the rank mapping */
    F_WELCOME = 2, /* process 0: everyone has joined */
    F_REFUSE = 3,  /* process 0: not you (the reason as text) */
    F_COLLECT = 4, /* a process's share of a collective: kind, root, bytes, data */
    F_RESULT = 5,  /* process 0: a collective's result */
    F_ABORT = 6,   /* the job ends: rank, reason, message */
    F_BYE = 7,     /* this process leaves on purpose */
};

enum { K_ALLGATHER = 1, K_BROADCAST = 2, K_BARRIER = 3 };
static const char *kind_name(uint32_t k)
{
    return k == K_ALLGATHER ? "allgather" : k == K_BROADCAST ? "broadcast" : k == K_BARRIER ? "barrier" : "?";
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static void put64(unsigned char *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)), put32(p + 4, (uint32_t)v); }
static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/* A connection, and the frame being read from it. */
typedef struct {
    int fd;                    /* -1: none */
    pthread_mutex_t send_lock; /* frames are written whole */
    unsigned char head[TCP_HEAD];
    size_t head_got;
    unsigned char *body;
    uint64_t body_len, body_got;
    int eof, error; /* the read side ended: closed (eof) or errno */
    int left;       /* the peer said it leaves (F_BYE) */
    int gone;       /* the read side ended, seen by the reader thread */
    char peer[80];  /* its address, for messages */
} tcp_conn;

/* A frame's head, decoded. */
typedef struct {
    uint32_t magic, version, type, seq;
    int32_t from;
    uint64_t length;
} tcp_head;

static void head_decode(const unsigned char *p, tcp_head *h)
{
    h->magic = get32(p), h->version = get32(p + 4) >> 16, h->type = get32(p + 4) & 0xffff;
    h->seq = get32(p + 8), h->from = (int32_t)get32(p + 12), h->length = get64(p + 16);
}

/* ----------------------------------------------------------------------------
 * the bootstrap */

typedef struct {
    int have;
    uint32_t seq, kind;
    int32_t root;
    uint64_t bytes;
    unsigned char *data; /* the payload past its 16-byte description */
    uint64_t length;
} tcp_share;

typedef struct {
    int world, processes, process, timeout_ms;
    int *process_of; /* world entries */
    int *slot;       /* world entries: a rank's place among its process's ranks (ascending) */
    int *count;      /* processes entries: ranks each hosts */
    char where[320]; /* "addr:port" */
    dp_meeting *meeting;
    tcp_conn *conns; /* by peer process; process 0 has one to each other, the others one to 0 */
    int wake[2];     /* wakes the reader thread to stop */
    pthread_t reader;
    int reader_started;
    /* One reader of the connections at a time: the reader thread, or a caller taking in what
     * has arrived before it acts, so that an end already on the wire is never missed. */
    pthread_mutex_t read_lock;
    pthread_mutex_t lock; /* what follows, and conns' left and gone */
    pthread_cond_t cond;
    int stopping;
    uint32_t seq;       /* collectives this process began */
    tcp_share *shares;  /* process 0: each other process's share of the current collective */
    tcp_share result;   /* the others: process 0's answer */
    int aborted;
    dp_status reason; /* the end's: the status the aborting rank gave, or the failure's */
    char message[512];
} tcp_bootstrap;

/* "process 2 (ranks 4-5)", "process 1 (ranks 1, 3)", "process 0 (rank 0)". */
static void describe_process(const tcp_bootstrap *b, int p, char *buf, size_t n)
{
    int first = -1, last = -1, listed = 0, runs = 1;
    for (int r = 0; r < b->world; r++)
        if (b->process_of[r] == p) {
            if (first < 0) first = r;
            else if (r != last + 1) runs = 0;
            last = r;
        }
    if (first < 0) snprintf(buf, n, "process %d (no ranks)", p);
    else if (first == last) snprintf(buf, n, "process %d (rank %d)", p, first);
    else if (runs) snprintf(buf, n, "process %d (ranks %d-%d)", p, first, last);
    else {
        size_t used = (size_t)snprintf(buf, n, "process %d (ranks", p);
        for (int r = 0; r < b->world && used < n; r++)
            if (b->process_of[r] == p) {
                if (++listed > 6) {
                    used += (size_t)snprintf(buf + used, n - used, ", ...");
                    break;
                }
                used += (size_t)snprintf(buf + used, n - used, "%s %d", listed > 1 ? "," : "", r);
            }
        if (used < n) snprintf(buf + used, n - used, ")");
    }
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ? -1 : 0;
}

static void conn_init(tcp_conn *c, int fd)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    pthread_mutex_init(&c->send_lock, NULL);
}

static void conn_reset_frame(tcp_conn *c)
{
    free(c->body);
    c->body = NULL;
    c->head_got = 0, c->body_len = c->body_got = 0;
}

static void conn_fini(tcp_conn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    conn_reset_frame(c);
    pthread_mutex_destroy(&c->send_lock);
}

/* ----------------------------------------------------------------------------
 * writing and reading, with deadlines (milliseconds of dp_link_now_ms) */

static int remaining_ms(double deadline)
{
    double left = deadline - dp_link_now_ms();
    return left <= 0 ? 0 : left > 1e9 ? 1000000000 : (int)left + 1;
}

/* 0, or -1 with errno (ETIMEDOUT past the deadline). MSG_NOSIGNAL: a closed peer is EPIPE,
 * never a SIGPIPE that would kill the process. */
static int send_all(int fd, const void *buf, size_t len, double deadline)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n, len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        int wait = remaining_ms(deadline);
        if (wait == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        if (poll(&pf, 1, wait) < 0 && errno != EINTR) return -1;
    }
    return 0;
}

/* One frame: the head, then `a` and `b` (either may be empty). */
static int send_frame(tcp_conn *c, int from, uint32_t type, uint32_t seq, const void *a, size_t alen, const void *b,
                      size_t blen, double deadline)
{
    unsigned char head[TCP_HEAD];
    put32(head, TCP_MAGIC);
    put32(head + 4, TCP_VERSION << 16 | type);
    put32(head + 8, seq);
    put32(head + 12, (uint32_t)from);
    put64(head + 16, (uint64_t)alen + blen);
    pthread_mutex_lock(&c->send_lock);
    int rc = send_all(c->fd, head, sizeof head, deadline);
    if (rc == 0 && alen) rc = send_all(c->fd, a, alen, deadline);
    if (rc == 0 && blen) rc = send_all(c->fd, b, blen, deadline);
    int err = errno;
    pthread_mutex_unlock(&c->send_lock);
    errno = err;
    return rc;
}

/* What went wrong with a frame's head, or NULL when it is one of ours. */
static const char *head_problem(const tcp_head *h, uint64_t limit, char *buf, size_t n)
{
    if (h->magic != TCP_MAGIC)
        snprintf(buf, n, "its bytes are not dualpipe's bootstrap protocol (magic 0x%08x, not 0x%08x)", h->magic,
                 TCP_MAGIC);
    else if (h->version != TCP_VERSION)
        snprintf(buf, n, "it speaks version %u of the bootstrap protocol and this build version %u: run one build "
                 "of dualpipe everywhere", h->version, TCP_VERSION);
    else if (h->type < F_HELLO || h->type > F_BYE)
        snprintf(buf, n, "it sent a frame of unknown type %u", h->type);
    else if (h->length > limit)
        snprintf(buf, n, "it announced a frame of %llu bytes, more than the %llu allowed", (unsigned long long)h->length,
                 (unsigned long long)limit);
    else return NULL;
    return buf;
}

/* Reads what is there without blocking. 1: a frame is complete (head in c->head, payload in
 * c->body); 0: not yet; -1: the connection ended (c->eof, c->error) or the head is not ours
 * (*problem says why). */
static int conn_read(tcp_conn *c, uint64_t limit, char *problem, size_t n)
{
    problem[0] = '\0';
    for (;;) {
        unsigned char *dst;
        size_t want;
        if (c->head_got < TCP_HEAD) dst = c->head + c->head_got, want = TCP_HEAD - c->head_got;
        else if (c->body_got < c->body_len) {
            dst = c->body + c->body_got;
            uint64_t left = c->body_len - c->body_got;
            want = left > (1u << 20) ? (1u << 20) : (size_t)left;
        } else return 1;
        ssize_t got = recv(c->fd, dst, want, MSG_DONTWAIT);
        if (got == 0) {
            c->eof = 1;
            return -1;
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            c->error = errno;
            return -1;
        }
        if (c->head_got < TCP_HEAD) {
            c->head_got += (size_t)got;
            if (c->head_got < TCP_HEAD) continue;
            tcp_head h;
            head_decode(c->head, &h);
            if (head_problem(&h, limit, problem, n)) return -1;
            c->body_len = h.length, c->body_got = 0;
            if (h.length && !(c->body = malloc((size_t)h.length))) {
                snprintf(problem, n, "out of memory for a frame of %llu bytes", (unsigned long long)h.length);
                return -1;
            }
        } else c->body_got += (uint64_t)got;
    }
}

/* "closed the connection" or "reset the connection (Connection reset by peer)". */
static void describe_end(const tcp_conn *c, char *buf, size_t n)
{
    if (c->eof) snprintf(buf, n, "its connection closed");
    else snprintf(buf, n, "its connection failed (%s)", strerror(c->error));
}

/* ----------------------------------------------------------------------------
 * the end of the job */

static double call_deadline(const tcp_bootstrap *b) { return dp_link_now_ms() + b->timeout_ms; }

/* With b->lock: records the end of the job, 1 when this is the first (only the first counts). */
static int claim_end_locked(tcp_bootstrap *b, dp_status reason, const char *message)
{
    if (b->aborted) return 0;
    b->aborted = 1;
    b->reason = reason;
    snprintf(b->message, sizeof b->message, "%s", message);
    pthread_cond_broadcast(&b->cond);
    return 1;
}

/* After claiming the end: ends it for every rank thread of this process, and tells the other
 * processes: process 0 tells everyone but `from` (the process that told it), the others tell
 * process 0 when the end began here (from < 0). `rank` is the rank that aborted, -1 when this
 * process found a failure itself: then its own threads get that failure's status (a timeout
 * stays DP_ERR_TIMEOUT), where an abort is DP_ERR_COMM. Without b->lock. */
static void spread_end(tcp_bootstrap *b, int rank, dp_status reason, const char *message, int from)
{
    dp_meeting_abort(b->meeting, from < 0 && rank < 0 ? reason : DP_ERR_COMM, message);

    unsigned char desc[8];
    put32(desc, (uint32_t)rank), put32(desc + 4, (uint32_t)reason);
    double deadline = call_deadline(b);
    for (int p = 0; p < b->processes; p++) {
        if (p == b->process || p == from || b->conns[p].fd < 0) continue;
        if (b->process != 0 && (p != 0 || from >= 0)) continue;
        pthread_mutex_lock(&b->lock);
        int gone = b->conns[p].gone;
        pthread_mutex_unlock(&b->lock);
        if (!gone) /* best effort: a peer that cannot hear it will see the connection close */
            send_frame(&b->conns[p], b->process, F_ABORT, 0, desc, sizeof desc, message, strlen(message), deadline);
    }
}

/* Ends the job with `message` (see spread_end); 1 when this call ended it. */
static int raise_end(tcp_bootstrap *b, int rank, dp_status reason, const char *message, int from)
{
    pthread_mutex_lock(&b->lock);
    int first = claim_end_locked(b, reason, message);
    pthread_mutex_unlock(&b->lock);
    if (first) spread_end(b, rank, reason, message, from);
    return first;
}

static dp_status end_fail(tcp_bootstrap *b)
{
    pthread_mutex_lock(&b->lock);
    dp_status st = dp_fail(DP_ERR_COMM, "%s", b->message);
    pthread_mutex_unlock(&b->lock);
    return st;
}

/* Ends the job with a message of this process's own making, and fails with it. */
static dp_status fail_end(tcp_bootstrap *b, dp_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static dp_status fail_end(tcp_bootstrap *b, dp_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!raise_end(b, -1, st, msg, -1)) return end_fail(b); /* another end came first */
    return dp_fail(st, "%s", msg);
}

/* ----------------------------------------------------------------------------
 * the reader thread: takes in every frame, so that an end is heard while nobody calls */

static void take_frame(tcp_bootstrap *b, int p)
{
    tcp_conn *c = &b->conns[p];
    tcp_head h;
    head_decode(c->head, &h);
    char who[96], msg[512];
    describe_process(b, p, who, sizeof who);
    if (h.type == F_ABORT && h.length >= 8) {
        snprintf(msg, sizeof msg, "%.*s", (int)(h.length - 8), (const char *)c->body + 8);
        raise_end(b, (int32_t)get32(c->body), (dp_status)(int32_t)get32(c->body + 4), msg, p);
        conn_reset_frame(c);
        return;
    }
    if (h.type == F_BYE) {
        pthread_mutex_lock(&b->lock);
        c->left = 1;
        pthread_cond_broadcast(&b->cond);
        pthread_mutex_unlock(&b->lock);
        conn_reset_frame(c);
        return;
    }
    int ok = 0;
    pthread_mutex_lock(&b->lock);
    tcp_share *s = b->process == 0 && h.type == F_COLLECT ? &b->shares[p]
                   : b->process != 0 && h.type == F_RESULT ? &b->result
                                                           : NULL;
    if (s && !s->have && (h.type == F_RESULT || h.length >= 16)) {
        s->have = 1, s->seq = h.seq;
        if (h.type == F_COLLECT) {
            s->kind = get32(c->body), s->root = (int32_t)get32(c->body + 4), s->bytes = get64(c->body + 8);
            s->length = h.length - 16;
            s->data = s->length ? malloc((size_t)s->length) : NULL;
            if (s->data) memcpy(s->data, c->body + 16, (size_t)s->length);
        } else {
            s->length = h.length;
            s->data = c->body; /* taken over */
            c->body = NULL;
        }
        ok = s->data != NULL || s->length == 0;
        pthread_cond_broadcast(&b->cond);
    }
    pthread_mutex_unlock(&b->lock);
    conn_reset_frame(c);
    if (!ok) {
        snprintf(msg, sizeof msg, "tcp bootstrap: %s sent a frame of type %u (%llu bytes) that process %d did not "
                 "expect: the processes disagree on the protocol or the call order", who, h.type,
                 (unsigned long long)h.length, b->process);
        raise_end(b, -1, DP_ERR_COMM, msg, -1);
    }
}

/* The read side of process p's connection ended. */
static void take_end(tcp_bootstrap *b, int p, const char *problem)
{
    tcp_conn *c = &b->conns[p];
    char who[96], how[160], msg[512];
    describe_process(b, p, who, sizeof who);
    if (problem && *problem)
        snprintf(msg, sizeof msg, "tcp bootstrap: %s broke the protocol: %s", who, problem);
    else {
        describe_end(c, how, sizeof how);
        snprintf(msg, sizeof msg, "tcp bootstrap: %s disappeared: %s without leaving the job (it exited, crashed or "
                 "was killed)", who, how);
    }
    /* gone and the end in one step, so that a waiter never takes a crash for a departure */
    pthread_mutex_lock(&b->lock);
    c->gone = 1;
    int first = !c->left && !b->stopping && claim_end_locked(b, DP_ERR_COMM, msg);
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    if (first) spread_end(b, -1, DP_ERR_COMM, msg, p);
}

/* Takes in every frame process p's connection holds now, and its end, without waiting. With
 * b->read_lock. */
static void drain_locked(tcp_bootstrap *b, int p)
{
    tcp_conn *c = &b->conns[p];
    if (c->fd < 0 || c->gone) return;
    char problem[256];
    int rc;
    while ((rc = conn_read(c, DP_BOOTSTRAP_TCP_MAX_BYTES + 64, problem, sizeof problem)) == 1) take_frame(b, p);
    if (rc < 0) take_end(b, p, problem);
}

/* What the reader thread would take in next, taken now by the caller: before a call acts, so
 * that an abort or a departure already received here ends it at once instead of being met by
 * a send to a process that has gone ("Broken pipe"). Without b->lock. */
static void take_pending(tcp_bootstrap *b)
{
    if (!b->reader_started) return;
    pthread_mutex_lock(&b->read_lock);
    for (int p = 0; p < b->processes; p++)
        if (p != b->process) drain_locked(b, p);
    pthread_mutex_unlock(&b->read_lock);
}

/* Whether the job has ended, after taking in what has arrived. */
static int ended(tcp_bootstrap *b)
{
    take_pending(b);
    pthread_mutex_lock(&b->lock);
    int aborted = b->aborted;
    pthread_mutex_unlock(&b->lock);
    return aborted;
}

static void *reader_main(void *arg)
{
    tcp_bootstrap *b = arg;
    struct pollfd *pf = calloc((size_t)b->processes + 1, sizeof *pf);
    int *peer = calloc((size_t)b->processes + 1, sizeof *peer);
    if (!pf || !peer) {
        free(pf), free(peer);
        raise_end(b, -1, DP_ERR_NOMEM, "tcp bootstrap: out of memory for the reader thread", -1);
        return NULL;
    }
    char problem[256];
    for (;;) {
        int n = 0;
        pf[n].fd = b->wake[0], pf[n].events = POLLIN, pf[n].revents = 0, peer[n++] = -1;
        pthread_mutex_lock(&b->lock);
        int stopping = b->stopping;
        for (int p = 0; p < b->processes; p++)
            if (b->conns[p].fd >= 0 && !b->conns[p].gone)
                pf[n].fd = b->conns[p].fd, pf[n].events = POLLIN, pf[n].revents = 0, peer[n++] = p;
        pthread_mutex_unlock(&b->lock);
        if (stopping) break;
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            snprintf(problem, sizeof problem, "tcp bootstrap: process %d: poll failed (%s)", b->process,
                     strerror(errno));
            raise_end(b, -1, DP_ERR_COMM, problem, -1);
            break;
        }
        if (pf[0].revents) {
            char drain[16];
            while (read(b->wake[0], drain, sizeof drain) > 0) {}
        }
        pthread_mutex_lock(&b->read_lock);
        for (int i = 1; i < n; i++)
            if (pf[i].revents) drain_locked(b, peer[i]);
        pthread_mutex_unlock(&b->read_lock);
    }
    free(pf), free(peer);
    return NULL;
}

/* ----------------------------------------------------------------------------
 * collectives: the step the last rank thread of a process runs */

typedef struct {
    tcp_bootstrap *b;
    uint32_t kind;
    int rank, root;
    size_t bytes;
} tcp_call;

/* What process p brings to a collective. */
static uint64_t share_bytes(const tcp_bootstrap *b, const tcp_call *c, int p)
{
    if (c->kind == K_ALLGATHER) return (uint64_t)c->bytes * (uint64_t)b->count[p];
    if (c->kind == K_BROADCAST) return b->process_of[c->root] == p ? c->bytes : 0;
    return 0;
}

/* Process 0: waits for every other process's share, builds the result and sends it to all. */
static dp_status step_root(tcp_bootstrap *b, const tcp_call *c, const void *in, void *out, size_t out_bytes)
{
    const char *what = kind_name(c->kind);
    double deadline = call_deadline(b);
    struct timespec ts;
    dp_link_deadline_ts(&ts, b->timeout_ms);
    char who[96], list[200];
    pthread_mutex_lock(&b->lock);
    uint32_t seq = ++b->seq;
    int missing = 0, left = -1;
    for (;;) {
        missing = 0, left = -1;
        for (int p = 1; p < b->processes; p++)
            if (!b->shares[p].have) {
                missing++;
                if (left < 0 && (b->conns[p].left || b->conns[p].gone)) left = p;
            }
        if (b->aborted || !missing || left >= 0) break;
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT) break;
    }
    if (b->aborted) {
        pthread_mutex_unlock(&b->lock);
        return end_fail(b);
    }
    if (missing) {
        if (left >= 0) {
            pthread_mutex_unlock(&b->lock);
            describe_process(b, left, who, sizeof who);
            return fail_end(b, DP_ERR_COMM,
                            "bootstrap %s: rank %d: %s has left the job (it closed its bootstrap) while the others "
                            "still call it: every process must make the same bootstrap calls",
                            what, c->rank, who);
        }
        size_t used = 0;
        list[0] = '\0';
        for (int p = 1, shown = 0; p < b->processes && used < sizeof list; p++)
            if (!b->shares[p].have) {
                if (++shown > 8) {
                    snprintf(list + used, sizeof list - used, ", ...");
                    break;
                }
                describe_process(b, p, who, sizeof who);
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", shown > 1 ? ", " : "", who);
            }
        pthread_mutex_unlock(&b->lock);
        return fail_end(b, DP_ERR_TIMEOUT,
                        "bootstrap %s: rank %d: %s did not join it within %d ms: stuck, slower than the timeout, or "
                        "making other calls",
                        what, c->rank, list, b->timeout_ms);
    }
    for (int p = 1; p < b->processes; p++) {
        const tcp_share *s = &b->shares[p];
        if (s->seq != seq || s->kind != c->kind || s->bytes != c->bytes ||
            (c->kind == K_BROADCAST && s->root != c->root) || s->length != share_bytes(b, c, p)) {
            describe_process(b, p, who, sizeof who);
            char mine[64] = "", theirs[64] = "";
            if (c->kind == K_BROADCAST) snprintf(mine, sizeof mine, " from rank %d", c->root);
            if (s->kind == K_BROADCAST) snprintf(theirs, sizeof theirs, " from rank %d", (int)s->root);
            uint32_t kind = s->kind, sseq = s->seq;
            unsigned long long sbytes = (unsigned long long)s->bytes;
            pthread_mutex_unlock(&b->lock);
            return fail_end(b, DP_ERR_COMM,
                            "bootstrap %s: %s calls %s of %llu bytes%s as its call %u where process 0 calls %s of %zu "
                            "bytes%s as its call %u: the processes disagree on the call order",
                            what, who, kind_name(kind), sbytes, theirs, sseq, what, c->bytes, mine, seq);
        }
    }
    unsigned char *o = out;
    const unsigned char *mine = in;
    if (c->kind == K_ALLGATHER)
        for (int r = 0; r < b->world && c->bytes; r++) {
            int p = b->process_of[r];
            const unsigned char *src = p == 0 ? mine : b->shares[p].data;
            memcpy(o + (size_t)r * c->bytes, src + (size_t)b->slot[r] * c->bytes, c->bytes);
        }
    else if (c->kind == K_BROADCAST && c->bytes) {
        int p = b->process_of[c->root];
        memcpy(o, p == 0 ? mine : b->shares[p].data, c->bytes);
    }
    for (int p = 1; p < b->processes; p++) {
        free(b->shares[p].data);
        memset(&b->shares[p], 0, sizeof b->shares[p]);
    }
    pthread_mutex_unlock(&b->lock);
    for (int p = 1; p < b->processes; p++)
        if (send_frame(&b->conns[p], 0, F_RESULT, seq, out, out_bytes, NULL, 0, deadline) != 0) {
            int err = errno;
            if (ended(b)) return end_fail(b); /* it had said why before closing: that is the news */
            describe_process(b, p, who, sizeof who);
            return fail_end(b, DP_ERR_COMM, "bootstrap %s: rank %d: sending the result to %s failed: %s", what,
                            c->rank, who, err == ETIMEDOUT ? "it did not read it within the timeout" : strerror(err));
        }
    return DP_OK;
}

/* The others: send this process's share to process 0 and wait for its result. */
static dp_status step_leaf(tcp_bootstrap *b, const tcp_call *c, const void *in, size_t in_bytes, void *out,
                           size_t out_bytes)
{
    const char *what = kind_name(c->kind);
    double deadline = call_deadline(b);
    struct timespec ts;
    dp_link_deadline_ts(&ts, b->timeout_ms);
    pthread_mutex_lock(&b->lock);
    uint32_t seq = ++b->seq;
    pthread_mutex_unlock(&b->lock);
    unsigned char desc[16];
    put32(desc, c->kind), put32(desc + 4, (uint32_t)c->root), put64(desc + 8, c->bytes);
    if (send_frame(&b->conns[0], b->process, F_COLLECT, seq, desc, sizeof desc, in, in_bytes, deadline) != 0) {
        int err = errno;
        if (ended(b)) return end_fail(b); /* process 0 had said why before closing: that is the news */
        return fail_end(b, DP_ERR_COMM, "bootstrap %s: rank %d: sending to process 0 at %s failed: %s", what,
                        c->rank, b->where, err == ETIMEDOUT ? "it did not read within the timeout" : strerror(err));
    }
    pthread_mutex_lock(&b->lock);
    while (!b->result.have && !b->aborted && !b->conns[0].gone && !b->conns[0].left)
        if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT) break;
    if (b->aborted) {
        pthread_mutex_unlock(&b->lock);
        return end_fail(b);
    }
    if (!b->result.have) {
        int left = b->conns[0].left || b->conns[0].gone;
        pthread_mutex_unlock(&b->lock);
        char who[96];
        describe_process(b, 0, who, sizeof who);
        if (left)
            return fail_end(b, DP_ERR_COMM,
                            "bootstrap %s: rank %d: %s has left the job (it closed its bootstrap) while this "
                            "process still calls it: every process must make the same bootstrap calls",
                            what, c->rank, who);
        return fail_end(b, DP_ERR_TIMEOUT,
                        "bootstrap %s: rank %d: %s gave no result within %d ms: another process is missing, stuck "
                        "or slower than the timeout",
                        what, c->rank, who, b->timeout_ms);
    }
    tcp_share r = b->result;
    memset(&b->result, 0, sizeof b->result);
    pthread_mutex_unlock(&b->lock);
    dp_status st = DP_OK;
    if (r.seq != seq || r.length != out_bytes)
        st = fail_end(b, DP_ERR_COMM,
                      "bootstrap %s: rank %d: process 0's result to call %u has %llu bytes where this process "
                      "expects call %u with %zu: the processes disagree on the call order",
                      what, c->rank, r.seq, (unsigned long long)r.length, seq, out_bytes);
    else if (out_bytes)
        memcpy(out, r.data, out_bytes);
    free(r.data);
    return st;
}

static dp_status tcp_step(void *arg, const void *in, size_t in_bytes, void *out, size_t out_bytes)
{
    const tcp_call *c = arg;
    tcp_bootstrap *b = c->b;
    if (ended(b)) return end_fail(b); /* the threads may have taken long to meet: look again */
    if (b->process == 0) return step_root(b, c, in, out, out_bytes);
    return step_leaf(b, c, in, in_bytes, out, out_bytes);
}

static dp_status collective(tcp_bootstrap *b, uint32_t kind, int rank, const void *mine, size_t bytes, int root,
                            void *out, size_t out_bytes)
{
    const char *what = kind_name(kind);
    if (rank < 0 || rank >= b->world)
        return dp_fail(DP_ERR_INVALID, "bootstrap %s: rank %d is outside the world of %d ranks", what, rank, b->world);
    if (b->process_of[rank] != b->process)
        return dp_fail(DP_ERR_INVALID, "bootstrap %s: rank %d lives in process %d, not in this one (process %d)", what,
                       rank, b->process_of[rank], b->process);
    if ((uint64_t)out_bytes > DP_BOOTSTRAP_TCP_MAX_BYTES)
        return dp_fail(DP_ERR_INVALID, "bootstrap %s: %zu bytes is more than the tcp bootstrap carries (%llu): it is "
                       "for bootstrap bytes, not data", what, out_bytes,
                       (unsigned long long)DP_BOOTSTRAP_TCP_MAX_BYTES);
    if (ended(b)) return end_fail(b); /* every call after the end fails with it, touching no socket */
    int root_slot = kind == K_ALLGATHER || kind == K_BARRIER ? -1 : b->process_of[root] == b->process ? b->slot[root]
                                                                                                      : -2;
    tcp_call call = {.b = b, .kind = kind, .rank = rank, .root = root, .bytes = bytes};
    dp_meeting_call m = {.what = what, .rank = rank, .slot = b->slot[rank], .mine = mine, .bytes = bytes,
                         .root_slot = root_slot, .out = out, .out_bytes = out_bytes, .step = tcp_step,
                         .step_arg = &call};
    dp_status st = dp_meeting_join(b->meeting, &m);
    if (st != DP_OK) { /* a failure among this process's threads (one missing): the others must hear it */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dp_last_error());
        raise_end(b, -1, st, msg, -1);
        dp_fail(st, "%s", msg);
    }
    return st;
}

static dp_status tcp_allgather(void *ctx, int rank, const void *mine, void *all, size_t bytes)
{
    tcp_bootstrap *b = ctx;
    return collective(b, K_ALLGATHER, rank, mine, bytes, -1, all, bytes * (size_t)b->world);
}

static dp_status tcp_broadcast(void *ctx, int rank, void *buf, size_t bytes, int root)
{
    tcp_bootstrap *b = ctx;
    if (root < 0 || root >= b->world)
        return dp_fail(DP_ERR_INVALID, "bootstrap: broadcast root %d is outside the world of %d ranks", root, b->world);
    return collective(b, K_BROADCAST, rank, buf, bytes, root, buf, bytes);
}

static dp_status tcp_barrier(void *ctx, int rank) { return collective(ctx, K_BARRIER, rank, NULL, 0, -1, NULL, 0); }

static dp_status tcp_abort(void *ctx, int rank, dp_status reason, const char *message)
{
    char msg[512];
    snprintf(msg, sizeof msg, "rank %d ended the job: %.460s", rank,
             message && *message ? message : dp_status_name(reason));
    raise_end(ctx, rank, reason, msg, -1);
    return DP_OK;
}

/* Takes in what has arrived unless the reader thread is doing just that (then it is about to
 * record it): the query never waits. */
static int tcp_aborted(void *ctx, dp_status *reason, char *message, size_t message_size)
{
    tcp_bootstrap *b = ctx;
    if (b->reader_started && pthread_mutex_trylock(&b->read_lock) == 0) {
        for (int p = 0; p < b->processes; p++)
            if (p != b->process) drain_locked(b, p);
        pthread_mutex_unlock(&b->read_lock);
    }
    pthread_mutex_lock(&b->lock);
    int ended = b->aborted;
    if (ended && reason) *reason = b->reason;
    if (ended && message && message_size) snprintf(message, message_size, "%s", b->message);
    pthread_mutex_unlock(&b->lock);
    return ended;
}

const dp_bootstrap_ops dp_bootstrap_tcp = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION,
    .struct_size = sizeof(dp_bootstrap_ops),
    .name = "tcp",
    .allgather = tcp_allgather,
    .broadcast = tcp_broadcast,
    .barrier = tcp_barrier,
    .abort = tcp_abort,
    .aborted = tcp_aborted,
};

/* ----------------------------------------------------------------------------
 * the rendezvous */

/* The hello's payload: world size, processes, this process, then the process of every rank. */
static unsigned char *hello_encode(const tcp_bootstrap *b, size_t *len)
{
    *len = 12 + 4 * (size_t)b->world;
    unsigned char *h = malloc(*len);
    if (!h) return NULL;
    put32(h, (uint32_t)b->world), put32(h + 4, (uint32_t)b->processes), put32(h + 8, (uint32_t)b->process);
    for (int r = 0; r < b->world; r++) put32(h + 12 + 4 * (size_t)r, (uint32_t)b->process_of[r]);
    return h;
}

/* Process 0's verdict on a hello: the process it comes from, or -1 with the reason. */
static int hello_check(const tcp_bootstrap *b, const tcp_head *h, const unsigned char *body, char *why, size_t n)
{
    if (h->type != F_HELLO) {
        snprintf(why, n, "it sent a frame of type %u before saying hello", h->type);
        return -1;
    }
    if (h->length < 12) {
        snprintf(why, n, "its hello has %llu bytes, too few", (unsigned long long)h->length);
        return -1;
    }
    int world = (int)get32(body), processes = (int)get32(body + 4), p = (int)get32(body + 8);
    if (world != b->world || processes != b->processes) {
        snprintf(why, n, "it belongs to a job of %d ranks in %d processes, and process 0's job has %d ranks in %d: "
                 "another job on the same MASTER_PORT, or the processes were given different sizes",
                 world, processes, b->world, b->processes);
        return -1;
    }
    if (p <= 0 || p >= b->processes) {
        snprintf(why, n, "it says it is process %d, outside 1 to %d", p, b->processes - 1);
        return -1;
    }
    if (b->conns[p].fd >= 0) {
        snprintf(why, n, "process %d has already joined: two processes were given the same rank", p);
        return -1;
    }
    if (h->length != 12 + 4 * (uint64_t)b->world) {
        snprintf(why, n, "its hello has %llu bytes where %d ranks need %llu", (unsigned long long)h->length, b->world,
                 (unsigned long long)(12 + 4 * (uint64_t)b->world));
        return -1;
    }
    for (int r = 0; r < b->world; r++)
        if ((int)get32(body + 12 + 4 * (size_t)r) != b->process_of[r]) {
            snprintf(why, n, "it places rank %d in process %d where process 0 places it in process %d: every process "
                     "must be given the same placement of ranks", r, (int)get32(body + 12 + 4 * (size_t)r),
                     b->process_of[r]);
            return -1;
        }
    return p;
}

static void peer_name(const struct sockaddr *sa, socklen_t len, char *buf, size_t n)
{
    char host[64] = "?", serv[16] = "?";
    getnameinfo(sa, len, host, sizeof host, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(buf, n, "%s port %s", host, serv);
}

/* Whether process 0 should listen on the address itself (a loopback literal or "localhost":
 * nothing outside this host needs it) rather than on every interface. */
static int listen_on_addr(const char *addr)
{
    return strcmp(addr, "localhost") == 0 || strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0;
}

#define MAX_LISTEN 4
#define MAX_STRAYS 32

/* Process 0: listens, takes one hello from each other process, refuses anything else, then
 * welcomes everyone at once (so that the rendezvous succeeds everywhere or nowhere). */
static dp_status rendezvous_root(tcp_bootstrap *b, const char *addr, const char *port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    const char *host = listen_on_addr(addr) ? addr : NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0)
        return dp_fail(DP_ERR_INVALID, "tcp bootstrap: process 0 cannot listen on %s: %s (check MASTER_ADDR and "
                       "MASTER_PORT)", b->where, gai_strerror(rc));
    int lfd[MAX_LISTEN], nl = 0, last_err = 0;
    for (struct addrinfo *a = ai; a && nl < MAX_LISTEN; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (set_nonblocking(fd) != 0 || bind(fd, a->ai_addr, a->ai_addrlen) != 0 ||
            listen(fd, b->processes < 128 ? 128 : b->processes) != 0) {
            last_err = errno;
            close(fd);
            continue;
        }
        lfd[nl++] = fd;
    }
    freeaddrinfo(ai);
    if (nl == 0)
        return dp_fail(DP_ERR_COMM, "tcp bootstrap: process 0 cannot listen on %s: %s%s", b->where,
                       strerror(last_err),
                       last_err == EADDRINUSE ? ": another program or job holds the port; choose another MASTER_PORT"
                       : last_err == EADDRNOTAVAIL ? ": MASTER_ADDR must name process 0's host"
                                                   : "");

    tcp_conn stray[MAX_STRAYS]; /* connections that have not said hello yet */
    int ns = 0, joined = 0;
    double deadline = call_deadline(b);
    char why[400], problem[256];
    dp_status st = DP_OK;
    while (joined < b->processes - 1) {
        int wait = remaining_ms(deadline);
        if (wait == 0) break;
        struct pollfd pf[MAX_LISTEN + MAX_STRAYS];
        for (int i = 0; i < nl; i++) pf[i] = (struct pollfd){.fd = lfd[i], .events = POLLIN};
        for (int i = 0; i < ns; i++) pf[nl + i] = (struct pollfd){.fd = stray[i].fd, .events = POLLIN};
        if (poll(pf, (nfds_t)(nl + ns), wait) < 0 && errno != EINTR) {
            st = dp_fail(DP_ERR_COMM, "tcp bootstrap: process 0: poll failed: %s", strerror(errno));
            break;
        }
        int polled = ns; /* pf holds the strays 0 .. polled-1; accepted ones are read next time */
        for (int i = 0; i < nl; i++) {
            if (!(pf[i].revents & POLLIN)) continue;
            struct sockaddr_storage sa;
            socklen_t len = sizeof sa;
            int fd = accept(lfd[i], (struct sockaddr *)&sa, &len);
            if (fd < 0) continue;
            if (ns == MAX_STRAYS || set_nonblocking(fd) != 0) {
                close(fd);
                continue;
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            conn_init(&stray[ns], fd);
            peer_name((struct sockaddr *)&sa, len, stray[ns].peer, sizeof stray[ns].peer);
            ns++;
        }
        for (int i = polled - 1; i >= 0; i--) { /* downwards: removing moves a later one into i */
            if (!pf[nl + i].revents) continue;
            tcp_conn *c = &stray[i];
            /* room for a hello of a larger job, so that its refusal can say what it is */
            int got = conn_read(c, 12 + 4 * (uint64_t)(b->world > 65536 ? b->world : 65536), problem, sizeof problem);
            if (got == 0) continue;
            int p = -1;
            tcp_head h;
            head_decode(c->head, &h);
            if (got == 1) p = hello_check(b, &h, c->body, why, sizeof why);
            else if (problem[0]) snprintf(why, sizeof why, "%s", problem);
            else describe_end(c, why, sizeof why);
            if (p > 0) {
                b->conns[p].fd = c->fd; /* adopted: the stray gives its socket up */
                snprintf(b->conns[p].peer, sizeof b->conns[p].peer, "%s", c->peer);
                c->fd = -1;
                joined++;
                dp_log(DP_LOG_DEBUG, "tcp bootstrap: process %d joined from %s", p, b->conns[p].peer);
                conn_fini(c);
            } else {
                dp_log(DP_LOG_WARN, "tcp bootstrap: process 0 refused a connection from %s: %s", c->peer, why);
                if (got == 1 || (problem[0] && h.magic == TCP_MAGIC)) /* one of ours: tell it why */
                    send_frame(c, 0, F_REFUSE, 0, why, strlen(why), NULL, 0, dp_link_now_ms() + 1000);
                conn_fini(c);
            }
            stray[i] = stray[--ns];
        }
    }
    for (int i = 0; i < nl; i++) close(lfd[i]);
    for (int i = 0; i < ns; i++) conn_fini(&stray[i]);
    if (st == DP_OK && joined < b->processes - 1) {
        char list[200] = "";
        size_t used = 0;
        for (int p = 1, shown = 0; p < b->processes && used < sizeof list; p++)
            if (b->conns[p].fd < 0) {
                if (++shown > 8) {
                    snprintf(list + used, sizeof list - used, ", ...");
                    break;
                }
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%d", shown > 1 ? ", " : "", p);
            }
        st = dp_fail(DP_ERR_TIMEOUT,
                     "tcp bootstrap: process 0 listening on %s: process%s %s did not join within %d ms (%d of %d "
                     "did): are they started, with the same MASTER_ADDR and MASTER_PORT, and can they reach it?",
                     b->where, b->processes - 1 - joined > 1 ? "es" : "", list, b->timeout_ms, joined,
                     b->processes - 1);
    }
    for (int p = 1; p < b->processes; p++) {
        if (b->conns[p].fd < 0) continue;
        if (st != DP_OK) {
            const char *msg = dp_last_error();
            send_frame(&b->conns[p], 0, F_REFUSE, 0, msg, strlen(msg), NULL, 0, dp_link_now_ms() + 1000);
        } else if (send_frame(&b->conns[p], 0, F_WELCOME, 0, NULL, 0, NULL, 0, deadline) != 0) {
            char who[96];
            describe_process(b, p, who, sizeof who);
            st = dp_fail(DP_ERR_COMM, "tcp bootstrap: process 0 could not welcome %s: %s", who, strerror(errno));
        }
    }
    return st;
}

/* One connection attempt to `a`, bounded by the deadline: the socket, or -1 with errno. */
static int connect_once(const struct addrinfo *a, double deadline)
{
    int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) return -1;
    if (set_nonblocking(fd) != 0) goto fail;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) goto fail;
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int wait = remaining_ms(deadline);
        int rc = poll(&pf, 1, wait);
        if (rc == 0) {
            errno = ETIMEDOUT;
            goto fail;
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) goto fail;
        if (err) {
            errno = err;
            goto fail;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
fail:;
    int err = errno;
    close(fd);
    errno = err;
    return -1;
}

/* The others: connect to process 0 (retrying while it is not listening yet), say hello and
 * wait to be welcomed. */
static dp_status rendezvous_leaf(tcp_bootstrap *b, const char *addr, const char *port)
{
    double deadline = call_deadline(b);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int fd = -1, last_err = ECONNREFUSED, pause_ms = 5;
    while (fd < 0) {
        struct addrinfo *ai = NULL;
        int rc = getaddrinfo(addr, port, &hints, &ai);
        if (rc != 0 && rc != EAI_AGAIN)
            return dp_fail(DP_ERR_INVALID, "tcp bootstrap: process %d cannot resolve %s: %s (check MASTER_ADDR and "
                           "MASTER_PORT)", b->process, b->where, gai_strerror(rc));
        for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
            fd = connect_once(a, deadline);
            if (fd < 0) last_err = errno;
        }
        if (ai) freeaddrinfo(ai);
        if (fd >= 0) break;
        int wait = remaining_ms(deadline);
        if (wait == 0)
            return dp_fail(DP_ERR_TIMEOUT,
                           "tcp bootstrap: process %d could not connect to process 0 at %s within %d ms (last: %s): "
                           "is process 0 started, and are MASTER_ADDR and MASTER_PORT the same everywhere?",
                           b->process, b->where, b->timeout_ms, rc == EAI_AGAIN ? gai_strerror(rc) : strerror(last_err));
        struct timespec pause = {0, (long)(pause_ms < wait ? pause_ms : wait) * 1000000L};
        nanosleep(&pause, NULL);
        pause_ms = pause_ms * 2 > 200 ? 200 : pause_ms * 2;
    }
    tcp_conn *c = &b->conns[0];
    c->fd = fd;
    size_t len = 0;
    unsigned char *hello = hello_encode(b, &len);
    if (!hello) return dp_fail(DP_ERR_NOMEM, "tcp bootstrap: out of memory");
    int rc = send_frame(c, b->process, F_HELLO, 0, hello, len, NULL, 0, deadline);
    free(hello);
    if (rc != 0)
        return dp_fail(DP_ERR_COMM, "tcp bootstrap: process %d: saying hello to %s failed: %s", b->process, b->where,
                       strerror(errno));
    char problem[256];
    for (;;) {
        int got = conn_read(c, 4096, problem, sizeof problem);
        if (got == 1) break;
        if (got < 0) {
            if (problem[0])
                return dp_fail(DP_ERR_COMM, "tcp bootstrap: process %d: what answers at %s is not process 0 of this "
                               "job: %s (is MASTER_PORT taken by another program?)", b->process, b->where, problem);
            describe_end(c, problem, sizeof problem);
            return dp_fail(DP_ERR_COMM, "tcp bootstrap: process %d: %s at %s during the rendezvous, without a word: "
                           "is it process 0 of this job?", b->process, problem, b->where);
        }
        int wait = remaining_ms(deadline);
        if (wait == 0)
            return dp_fail(DP_ERR_TIMEOUT, "tcp bootstrap: process %d reached %s but was not welcomed within %d ms: "
                           "process 0 is still waiting for other processes (see its message)", b->process, b->where,
                           b->timeout_ms);
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        poll(&pf, 1, wait);
    }
    tcp_head h;
    head_decode(c->head, &h);
    dp_status st = DP_OK;
    if (h.type == F_REFUSE)
        st = dp_fail(DP_ERR_COMM, "tcp bootstrap: process 0 at %s refused process %d: %.*s", b->where, b->process,
                     (int)h.length, c->body ? (const char *)c->body : "");
    else if (h.type != F_WELCOME)
        st = dp_fail(DP_ERR_COMM, "tcp bootstrap: process %d: process 0 at %s answered its hello with a frame of type "
                     "%u", b->process, b->where, h.type);
    conn_reset_frame(c);
    return st;
}

/* ----------------------------------------------------------------------------
 * create and destroy */

static dp_status check_config(const dp_bootstrap_tcp_config *cfg)
{
    if (cfg->world_size < 1 || cfg->world_size > (1 << 24))
        return dp_fail(DP_ERR_INVALID, "tcp bootstrap: the world size must be 1 to %d, got %d", 1 << 24,
                       cfg->world_size);
    if (cfg->processes < 1 || cfg->processes > cfg->world_size)
        return dp_fail(DP_ERR_INVALID, "tcp bootstrap: %d processes for %d ranks: each process hosts at least one "
                       "rank", cfg->processes, cfg->world_size);
    if (cfg->process < 0 || cfg->process >= cfg->processes)
        return dp_fail(DP_ERR_INVALID, "tcp bootstrap: process %d is outside 0 to %d", cfg->process,
                       cfg->processes - 1);
    if (!cfg->process_of && cfg->world_size % cfg->processes)
        return dp_fail(DP_ERR_INVALID, "tcp bootstrap: %d ranks do not split evenly over %d processes: give the "
                       "placement of every rank", cfg->world_size, cfg->processes);
    if (cfg->processes > 1 && (!cfg->port || !*cfg->port))
        return dp_fail(DP_ERR_INVALID, "tcp bootstrap: no port to meet on: set MASTER_PORT (and MASTER_ADDR)");
    return DP_OK;
}

static void destroy(tcp_bootstrap *b, int say_bye)
{
    if (b->reader_started) {
        pthread_mutex_lock(&b->lock);
        b->stopping = 1;
        pthread_mutex_unlock(&b->lock);
        ssize_t w;
        do w = write(b->wake[1], "x", 1);
        while (w < 0 && errno == EINTR);
        pthread_join(b->reader, NULL);
    }
    for (int p = 0; b->conns && p < b->processes; p++) {
        if (say_bye && b->conns[p].fd >= 0 && !b->conns[p].gone)
            send_frame(&b->conns[p], b->process, F_BYE, 0, NULL, 0, NULL, 0,
                       dp_link_now_ms() + (b->timeout_ms < 1000 ? b->timeout_ms : 1000));
        conn_fini(&b->conns[p]);
    }
    for (int p = 0; b->shares && p < b->processes; p++) free(b->shares[p].data);
    free(b->result.data);
    if (b->wake[0] >= 0) close(b->wake[0]);
    if (b->wake[1] >= 0) close(b->wake[1]);
    dp_meeting_destroy(b->meeting);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->read_lock);
    pthread_cond_destroy(&b->cond);
    free(b->process_of), free(b->slot), free(b->count), free(b->conns), free(b->shares);
    free(b);
}

dp_status dp_bootstrap_tcp_create(const dp_bootstrap_tcp_config *cfg, void **out)
{
    *out = NULL;
    DP_CHECK(check_config(cfg));
    tcp_bootstrap *b = calloc(1, sizeof *b);
    if (!b) return dp_fail(DP_ERR_NOMEM, "tcp bootstrap: out of memory");
    b->world = cfg->world_size, b->processes = cfg->processes, b->process = cfg->process;
    b->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 60000;
    b->wake[0] = b->wake[1] = -1;
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->read_lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    const char *addr = cfg->addr && *cfg->addr ? cfg->addr : "127.0.0.1";
    const char *port = cfg->port ? cfg->port : "";
    snprintf(b->where, sizeof b->where, strchr(addr, ':') ? "[%s]:%s" : "%s:%s", addr, port);
    b->process_of = calloc((size_t)b->world, sizeof *b->process_of);
    b->slot = calloc((size_t)b->world, sizeof *b->slot);
    b->count = calloc((size_t)b->processes, sizeof *b->count);
    b->conns = calloc((size_t)b->processes, sizeof *b->conns);
    b->shares = calloc((size_t)b->processes, sizeof *b->shares);
    if (b->conns)
        for (int p = 0; p < b->processes; p++) conn_init(&b->conns[p], -1);
    if (!b->process_of || !b->slot || !b->count || !b->conns || !b->shares) {
        destroy(b, 0);
        return dp_fail(DP_ERR_NOMEM, "tcp bootstrap: out of memory for %d ranks", cfg->world_size);
    }
    int per = b->world / b->processes;
    for (int r = 0; r < b->world; r++) {
        int p = cfg->process_of ? cfg->process_of[r] : r / per;
        if (p < 0 || p >= b->processes) {
            destroy(b, 0);
            return dp_fail(DP_ERR_INVALID, "tcp bootstrap: rank %d is placed in process %d, outside 0 to %d", r, p,
                           cfg->processes - 1);
        }
        b->process_of[r] = p;
        b->slot[r] = b->count[p]++;
    }
    for (int p = 0; p < b->processes; p++)
        if (b->count[p] == 0) {
            destroy(b, 0);
            return dp_fail(DP_ERR_INVALID, "tcp bootstrap: process %d hosts no rank: every process hosts at least one",
                           p);
        }
    dp_status st = dp_meeting_create(b->count[b->process], b->timeout_ms, &b->meeting);
    if (st != DP_OK) {
        destroy(b, 0);
        return st;
    }
    if (b->processes > 1) {
        double t0 = dp_link_now_ms();
        st = b->process == 0 ? rendezvous_root(b, addr, port) : rendezvous_leaf(b, addr, port);
        if (st == DP_OK && (pipe(b->wake) != 0 || set_nonblocking(b->wake[0]) != 0))
            st = dp_fail(DP_ERR_COMM, "tcp bootstrap: a pipe for the reader thread: %s", strerror(errno));
        if (st == DP_OK && pthread_create(&b->reader, NULL, reader_main, b) != 0)
            st = dp_fail(DP_ERR_COMM, "tcp bootstrap: cannot start the reader thread");
        if (st != DP_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", dp_last_error());
            destroy(b, 0);
            return dp_fail(st, "%s", msg);
        }
        b->reader_started = 1;
        char who[96];
        describe_process(b, b->process, who, sizeof who);
        dp_log(DP_LOG_INFO, "tcp bootstrap: %s of %d met the others at %s in %.0f ms", who, b->processes, b->where,
               dp_link_now_ms() - t0);
    }
    *out = b;
    return DP_OK;
}

void dp_bootstrap_tcp_destroy(void *ctx)
{
    if (ctx) destroy(ctx, 1);
}
