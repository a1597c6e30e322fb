/* test_bootstrap_tcp.c: the TCP rendezvous bootstrap between real processes on 127.0.0.1
 * (engine/bootstrap_tcp.h): forked processes, one or two rank threads each, check allgather and
 * broadcast byte for byte and the barrier through shared memory; then an abort, a process that
 * exits early and one that is too slow, each seen by every other process well within the
 * deadline; every call after an abort failing at once with its message, also in a process that
 * calls only once the aborting ones have gone; calls in different orders; connections that do
 * not speak the protocol refused while the rendezvous goes on; and configurations refused
 * before any socket. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/bootstrap_tcp.h"
#include "tests/tap.h"

#define MAX_RANKS 8
#define BIG (300 * 1024) /* bytes per rank in the large allgather: many partial reads and writes */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

/* A port nobody listens on right now: bind port 0 and read what the kernel chose. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        printf("Bail out! no free port: %s\n", strerror(errno));
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* ----------------------------------------------------------------------------
 * shared between the forked processes: the barrier's counters */

typedef struct {
    int arrived[16]; /* ranks past the k-th barrier's entrance */
    int exited[MAX_RANKS]; /* processes that have left their bootstrap */
} shared_state;
static shared_state *shared;

/* ----------------------------------------------------------------------------
 * a scenario: processes, each with its ranks on threads */

typedef struct rank_env rank_env;
typedef struct {
    const char *name;
    int processes, world;
    const int *process_of; /* NULL: blocks */
    int timeout_ms;
    void (*rank_main)(rank_env *);
} scenario;

struct rank_env {
    const scenario *sc;
    void *ctx;
    int rank, process;
    int failures;
};

static pthread_mutex_t say_lock = PTHREAD_MUTEX_INITIALIZER;

/* A failed check in a child: a TAP comment, one write, and a count. */
#define CHECK(env, cond, ...)                                                                \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            char line_[1200];                                                                \
            int n_ = snprintf(line_, sizeof line_, "# process %d rank %d: ", (env)->process, \
                              (env)->rank);                                                  \
            snprintf(line_ + n_, sizeof line_ - (size_t)n_, __VA_ARGS__);                    \
            say(line_);                                                                      \
            (env)->failures++;                                                               \
        }                                                                                    \
    } while (0)

static void say(const char *line)
{
    pthread_mutex_lock(&say_lock);
    char buf[1300];
    int n = snprintf(buf, sizeof buf, "%s\n", line);
    ssize_t w = write(STDOUT_FILENO, buf, (size_t)n);
    (void)w;
    pthread_mutex_unlock(&say_lock);
}

static void *rank_thread(void *arg)
{
    rank_env *e = arg;
    e->sc->rank_main(e);
    return NULL;
}

static char port_text[16];

static dp_bootstrap_tcp_config config_of(const scenario *sc, int process)
{
    return (dp_bootstrap_tcp_config){.addr = "127.0.0.1", .port = port_text, .world_size = sc->world,
                                     .processes = sc->processes, .process = process, .process_of = sc->process_of,
                                     .timeout_ms = sc->timeout_ms};
}

/* The life of one process: meet, run its ranks, leave. Exit status: 0 when every check held. */
static void child(const scenario *sc, int process)
{
    dp_bootstrap_tcp_config cfg = config_of(sc, process);
    void *ctx = NULL;
    if (dp_bootstrap_tcp_create(&cfg, &ctx) != DP_OK) {
        char line[1200];
        snprintf(line, sizeof line, "# process %d: create: %s", process, dp_last_error());
        say(line);
        _exit(2);
    }
    rank_env env[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    int n = 0;
    for (int r = 0; r < sc->world; r++) {
        int p = sc->process_of ? sc->process_of[r] : r / (sc->world / sc->processes);
        if (p != process) continue;
        env[n] = (rank_env){.sc = sc, .ctx = ctx, .rank = r, .process = process};
        pthread_create(&th[n], NULL, rank_thread, &env[n]);
        n++;
    }
    int failures = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        failures += env[i].failures;
    }
    dp_bootstrap_tcp_destroy(ctx);
    __atomic_store_n(&shared->exited[process], 1, __ATOMIC_SEQ_CST);
    _exit(failures ? 1 : 0);
}

/* Forks the scenario's processes (after `before`, if any, for process 0 alone) and waits for
 * them, at most 20 s. 1 when every process exited 0. */
static int run(const scenario *sc)
{
    snprintf(port_text, sizeof port_text, "%d", free_port());
    memset(shared, 0, sizeof *shared);
    pid_t pid[MAX_RANKS];
    fflush(stdout);
    for (int p = 0; p < sc->processes; p++) {
        pid[p] = fork();
        if (pid[p] == 0) child(sc, p);
    }
    int good = 1, left = sc->processes;
    double deadline = now_ms() + 20000;
    while (left > 0) {
        int status;
        pid_t w = waitpid(-1, &status, WNOHANG);
        if (w == 0) {
            if (now_ms() > deadline) {
                tap_diag("%s: processes still running after 20 s: a hang; killing them", sc->name);
                for (int p = 0; p < sc->processes; p++)
                    if (pid[p] > 0) kill(pid[p], SIGKILL);
                good = 0;
            }
            sleep_ms(2);
            continue;
        }
        if (w < 0) break;
        left--;
        for (int p = 0; p < sc->processes; p++)
            if (pid[p] == w) {
                pid[p] = -1;
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    tap_diag("%s: process %d ended with %s %d", sc->name, p,
                             WIFEXITED(status) ? "status" : "signal",
                             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                    good = 0;
                }
            }
    }
    return good;
}

/* ----------------------------------------------------------------------------
 * the collectives, checked byte for byte */

static unsigned char pattern(int rank, size_t i, int round) { return (unsigned char)(rank * 131 + i * 7 + round * 29 + (i >> 8)); }

static void barrier_checked(rank_env *e, int k)
{
    __atomic_add_fetch(&shared->arrived[k], 1, __ATOMIC_SEQ_CST);
    dp_status st = dp_bootstrap_tcp.barrier(e->ctx, e->rank);
    CHECK(e, st == DP_OK, "barrier %d: %s", k, dp_last_error());
    int seen = __atomic_load_n(&shared->arrived[k], __ATOMIC_SEQ_CST);
    CHECK(e, seen == e->sc->world, "barrier %d returned when %d of %d ranks had reached it", k, seen, e->sc->world);
}

static void suite(rank_env *e)
{
    int W = e->sc->world, r = e->rank;
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    barrier_checked(e, 0);
    for (int round = 0; round < 3; round++) { /* a small allgather, several times (sequence numbers) */
        unsigned char mine[13], all[13 * MAX_RANKS];
        for (size_t i = 0; i < sizeof mine; i++) mine[i] = pattern(r, i, round);
        memset(all, 0xEE, sizeof all);
        dp_status st = B->allgather(e->ctx, r, mine, all, sizeof mine);
        CHECK(e, st == DP_OK, "allgather: %s", dp_last_error());
        int same = 1;
        for (int q = 0; q < W; q++)
            for (size_t i = 0; i < sizeof mine; i++) same &= all[(size_t)q * sizeof mine + i] == pattern(q, i, round);
        CHECK(e, same, "allgather round %d: the result differs from every rank's bytes in rank order", round);
    }
    dp_status st = B->allgather(e->ctx, r, NULL, NULL, 0);
    CHECK(e, st == DP_OK, "allgather of 0 bytes: %s", dp_last_error());
    unsigned char *big = malloc(BIG), *bigall = malloc((size_t)BIG * W);
    for (size_t i = 0; i < BIG; i++) big[i] = pattern(r, i, 7);
    st = B->allgather(e->ctx, r, big, bigall, BIG);
    CHECK(e, st == DP_OK, "allgather of %d bytes: %s", BIG, dp_last_error());
    int same = 1;
    for (int q = 0; q < W; q++)
        for (size_t i = 0; i < BIG; i++) same &= bigall[(size_t)q * BIG + i] == pattern(q, i, 7);
    CHECK(e, same, "allgather of %d bytes per rank: the result differs", BIG);
    free(big), free(bigall);
    for (int root = 0; root < W; root++) { /* each rank as the root, in turn */
        unsigned char buf[9];
        for (size_t i = 0; i < sizeof buf; i++) buf[i] = r == root ? pattern(root, i, 11) : 0xEE;
        st = B->broadcast(e->ctx, r, buf, sizeof buf, root);
        CHECK(e, st == DP_OK, "broadcast from %d: %s", root, dp_last_error());
        int ok = 1;
        for (size_t i = 0; i < sizeof buf; i++) ok &= buf[i] == pattern(root, i, 11);
        CHECK(e, ok, "broadcast from rank %d: the bytes differ from the root's", root);
    }
    barrier_checked(e, 1);
    barrier_checked(e, 2);
}

/* ----------------------------------------------------------------------------
 * failures: abort, early exit, slowness, disorder */

static int aborter = -1; /* the rank that aborts (set before fork) */

/* Every call after the abort fails at once with the abort's own message, never trying the
 * network (where the aborting process may be gone already: "Broken pipe" would hide who and
 * why). */
static void later_calls_fail(rank_env *e, const char *want)
{
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    for (int call = 0; call < 3; call++) {
        unsigned char x = 1, all[MAX_RANKS];
        const char *name = call == 0 ? "allgather" : call == 1 ? "broadcast" : "barrier";
        double t0 = now_ms();
        dp_status st = call == 0 ? B->allgather(e->ctx, e->rank, &x, all, 1)
                       : call == 1 ? B->broadcast(e->ctx, e->rank, &x, 1, 0)
                                   : B->barrier(e->ctx, e->rank);
        double took = now_ms() - t0;
        CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), want), "a later %s fails with the abort: %s (%s)", name,
              dp_status_name(st), dp_last_error());
        CHECK(e, took < 1000, "a later %s took %.0f ms to fail: it must fail at once", name, took);
    }
}

/* What aborted() says once the job has ended: the abort's reason and message. */
static void query_says_aborted(rank_env *e, const char *want)
{
    dp_status reason = DP_OK;
    char msg[256] = "";
    int a = dp_bootstrap_tcp.aborted(e->ctx, &reason, msg, sizeof msg);
    CHECK(e, a != 0 && reason == DP_ERR_DEVICE && strstr(msg, want), "aborted() after the abort: %d, %s, \"%s\"", a,
          dp_status_name(reason), msg);
}

static void abort_main(rank_env *e)
{
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    CHECK(e, B->barrier(e->ctx, e->rank) == DP_OK, "first barrier: %s", dp_last_error());
    char msg[256] = "";
    CHECK(e, B->aborted(e->ctx, NULL, msg, sizeof msg) == 0, "aborted() before the abort says %s", msg);
    /* and only once every rank has asked may the abort come (a loaded machine may hold a rank
     * back past the aborter's pause below) */
    CHECK(e, B->barrier(e->ctx, e->rank) == DP_OK, "second barrier: %s", dp_last_error());
    if (e->rank == aborter) {
        sleep_ms(100); /* the others are in their barrier by now, which cannot end without this rank */
        double t0 = now_ms();
        int a = B->aborted(e->ctx, NULL, msg, sizeof msg);
        double took = now_ms() - t0;
        CHECK(e, a == 0, "aborted() while the others wait in a barrier: %d (%s)", a, msg);
        CHECK(e, took < 1000, "aborted() took %.0f ms while a barrier was under way: it must not wait", took);
        CHECK(e, B->abort(e->ctx, e->rank, DP_ERR_DEVICE, "its device failed") == DP_OK, "abort");
        return;
    }
    double t0 = now_ms();
    dp_status st = B->barrier(e->ctx, e->rank);
    double waited = now_ms() - t0;
    char want[64];
    snprintf(want, sizeof want, "rank %d ended the job: its device failed", aborter);
    CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), want), "a pending barrier after rank %d's abort: %s (%s)",
          aborter, dp_status_name(st), dp_last_error());
    CHECK(e, waited < e->sc->timeout_ms / 2, "the abort took %.0f ms to arrive (deadline %d ms)", waited,
          e->sc->timeout_ms);
    query_says_aborted(e, want);
    later_calls_fail(e, want);
}

/* Rank 1 aborts; process 2 calls only once processes 0 and 1 have left: the abort is waiting in
 * its socket, and process 0's end of the connection is closed. */
static void late_main(rank_env *e)
{
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    CHECK(e, B->barrier(e->ctx, e->rank) == DP_OK, "first barrier: %s", dp_last_error());
    const char *want = "rank 1 ended the job: its device failed";
    if (e->rank == 1) {
        sleep_ms(100); /* rank 0 is in its barrier by now */
        CHECK(e, B->abort(e->ctx, e->rank, DP_ERR_DEVICE, "its device failed") == DP_OK, "abort");
        return;
    }
    if (e->rank == 0) {
        dp_status st = B->barrier(e->ctx, e->rank);
        CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), want), "a pending barrier after rank 1's abort: %s (%s)",
              dp_status_name(st), dp_last_error());
    } else {
        /* without any call, the query learns of the abort through the socket */
        double t0 = now_ms(), until = t0 + 8000;
        while (!dp_bootstrap_tcp.aborted(e->ctx, NULL, NULL, 0) && now_ms() < until) sleep_ms(2);
        double waited = now_ms() - t0;
        CHECK(e, waited < e->sc->timeout_ms / 2, "aborted() learnt of the abort after %.0f ms (deadline %d ms)", waited,
              e->sc->timeout_ms);
        query_says_aborted(e, want);
        while (!(__atomic_load_n(&shared->exited[0], __ATOMIC_SEQ_CST) &&
                 __atomic_load_n(&shared->exited[1], __ATOMIC_SEQ_CST)) &&
               now_ms() < until)
            sleep_ms(2);
        CHECK(e, shared->exited[0] && shared->exited[1], "processes 0 and 1 did not leave within 8 s");
    }
    query_says_aborted(e, want);
    later_calls_fail(e, want);
}

static int leaver = -1; /* the process that exits early */

static void exit_main(rank_env *e)
{
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    CHECK(e, B->barrier(e->ctx, e->rank) == DP_OK, "first barrier: %s", dp_last_error());
    if (e->process == leaver) {
        sleep_ms(50);
        _exit(0); /* without leaving the bootstrap: as a crash would */
    }
    double t0 = now_ms();
    dp_status st = B->barrier(e->ctx, e->rank);
    double waited = now_ms() - t0;
    char want[32];
    snprintf(want, sizeof want, "process %d (rank", leaver);
    CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), want) && strstr(dp_last_error(), "disappeared"),
          "a barrier after process %d exited: %s (%s)", leaver, dp_status_name(st), dp_last_error());
    CHECK(e, waited < e->sc->timeout_ms / 2, "the exit took %.0f ms to be noticed (deadline %d ms)", waited,
          e->sc->timeout_ms);
    if (e->rank == 1 || (leaver == 1 && e->rank == 0)) {
        char line[1200];
        snprintf(line, sizeof line, "# rank %d saw it after %.0f ms: %s", e->rank, waited, dp_last_error());
        say(line);
    }
}

static void slow_main(rank_env *e)
{
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    if (e->process == 1) sleep_ms(3 * e->sc->timeout_ms); /* alive, but far too slow */
    double t0 = now_ms();
    dp_status st = B->barrier(e->ctx, e->rank);
    double waited = now_ms() - t0;
    if (e->process == 0) {
        char want[64];
        snprintf(want, sizeof want, "within %d ms", e->sc->timeout_ms);
        CHECK(e, st == DP_ERR_TIMEOUT && strstr(dp_last_error(), "process 1 (rank 1)") && strstr(dp_last_error(), want),
              "a barrier process 1 never joins in time: %s (%s)", dp_status_name(st), dp_last_error());
        CHECK(e, waited >= e->sc->timeout_ms - 5 && waited < e->sc->timeout_ms + 1000,
              "gave up after %.0f ms, the deadline being %d ms", waited, e->sc->timeout_ms);
    } else
        CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), "did not join"),
              "the slow process, arriving late, learns why: %s", dp_last_error());
}

static void disorder_main(rank_env *e)
{
    const dp_bootstrap_ops *B = &dp_bootstrap_tcp;
    unsigned char buf[8] = {0}, all[8 * MAX_RANKS];
    dp_status st = e->process == 0 ? B->allgather(e->ctx, e->rank, buf, all, sizeof buf)
                                   : B->broadcast(e->ctx, e->rank, buf, sizeof buf, 0);
    CHECK(e, st == DP_ERR_COMM && strstr(dp_last_error(), "disagree on the call order"),
          "allgather against broadcast: %s (%s)", dp_status_name(st), dp_last_error());
}

/* ----------------------------------------------------------------------------
 * strangers at the door */

static int connect_retry(int port)
{
    double deadline = now_ms() + 5000;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
        close(fd);
        if (now_ms() > deadline) return -1;
        sleep_ms(5);
    }
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Connects, sends `bytes`, and reads the answer until the connection closes (at most 3 s):
 * the text past a frame's 24-byte head, in answer ("" when nothing came). 1 when process 0
 * closed the connection. */
static int stranger(int port, const unsigned char *bytes, size_t n, char *answer, size_t cap)
{
    int fd = connect_retry(port);
    if (fd < 0) return 0;
    if (send(fd, bytes, n, MSG_NOSIGNAL) != (ssize_t)n) {
        close(fd);
        return 0;
    }
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t got = 0;
    int closed = 0;
    for (;;) {
        ssize_t k = recv(fd, answer + got, cap - 1 - got, 0);
        if (k > 0) {
            got += (size_t)k;
            if (got == cap - 1) break;
            continue;
        }
        closed = k == 0 || errno == ECONNRESET;
        break;
    }
    answer[got] = '\0';
    if (got > 24) memmove(answer, answer + 24, got - 24 + 1);
    else answer[0] = '\0';
    close(fd);
    return closed;
}

static char log_text[8192];
static void log_hook(void *user, dp_log_level level, const char *message)
{
    (void)user;
    if (level <= DP_LOG_WARN) {
        size_t used = strlen(log_text);
        snprintf(log_text + used, sizeof log_text - used, "%s\n", message);
    }
}

static void check_strangers(void)
{
    scenario sc = {.name = "strangers", .processes = 2, .world = 2, .timeout_ms = 8000};
    int port = free_port();
    snprintf(port_text, sizeof port_text, "%d", port);
    /* a pipe tells process 0 whether its log has the refusals */
    int fds[2];
    if (pipe(fds) != 0) return;
    fflush(stdout);
    pid_t p0 = fork();
    if (p0 == 0) {
        close(fds[0]);
        dp_log_set_hook(log_hook, NULL, DP_LOG_WARN);
        dp_bootstrap_tcp_config cfg = config_of(&sc, 0);
        void *ctx = NULL;
        dp_status st = dp_bootstrap_tcp_create(&cfg, &ctx);
        unsigned char x = 5, all[2] = {0};
        if (st == DP_OK) st = dp_bootstrap_tcp.allgather(ctx, 0, &x, all, 1);
        char report[8192 + 64];
        int n = snprintf(report, sizeof report, "%d %d %d\n%s", st, all[0], all[1], st ? dp_last_error() : log_text);
        ssize_t w = write(fds[1], report, (size_t)n);
        (void)w;
        if (ctx) dp_bootstrap_tcp_destroy(ctx);
        _exit(0);
    }
    close(fds[1]);

    char answer[1024];
    unsigned char garbage[64];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (unsigned char)("GET / HTTP/1.1\r\nHost: x\r\n\r\n"[i % 28]);
    int closed = stranger(port, garbage, sizeof garbage, answer, sizeof answer);
    tap_ok(closed && answer[0] == '\0', "a connection speaking another protocol is closed without an answer");

    unsigned char head[24] = {0};
    put32(head, 0x44504253u), put32(head + 4, 9u << 16 | 1), put32(head + 12, 1);
    closed = stranger(port, head, sizeof head, answer, sizeof answer);
    tap_ok(closed && strstr(answer, "version 9"),
           "a hello in another protocol version is refused with the reason");

    /* a well-formed hello from a job of another size */
    unsigned char hello[24 + 12 + 4 * 3];
    put32(hello, 0x44504253u), put32(hello + 4, 1u << 16 | 1), put32(hello + 8, 0), put32(hello + 12, 1);
    put32(hello + 16, 0), put32(hello + 20, 12 + 4 * 3);
    put32(hello + 24, 3), put32(hello + 28, 3), put32(hello + 32, 1);
    for (int r = 0; r < 3; r++) put32(hello + 36 + 4 * r, (uint32_t)r);
    closed = stranger(port, hello, sizeof hello, answer, sizeof answer);
    tap_ok(closed && strstr(answer, "3 ranks in 3 processes") && strstr(answer, "another job"),
           "a hello from a job of another size is refused, saying so");
    tap_diag("the refusal: %s", answer);

    fflush(stdout);
    pid_t p1 = fork();
    if (p1 == 0) {
        dp_bootstrap_tcp_config cfg = config_of(&sc, 1);
        void *ctx = NULL;
        dp_status st = dp_bootstrap_tcp_create(&cfg, &ctx);
        unsigned char x = 6, all[2];
        if (st == DP_OK) st = dp_bootstrap_tcp.allgather(ctx, 1, &x, all, 1);
        if (ctx) dp_bootstrap_tcp_destroy(ctx);
        _exit(st == DP_OK && all[0] == 5 && all[1] == 6 ? 0 : 1);
    }
    int s1 = -1, s0 = -1;
    waitpid(p1, &s1, 0);
    waitpid(p0, &s0, 0);
    char report[8192 + 64] = "";
    size_t got = 0;
    ssize_t k;
    while ((k = read(fds[0], report + got, sizeof report - 1 - got)) > 0) got += (size_t)k;
    report[got] = '\0';
    close(fds[0]);
    int st = -1, a0 = 0, a1 = 0;
    sscanf(report, "%d %d %d", &st, &a0, &a1);
    tap_ok(st == 0 && a0 == 5 && a1 == 6 && WIFEXITED(s1) && WEXITSTATUS(s1) == 0,
           "the rendezvous goes on past the strangers, and the real processes meet");
    tap_ok(strstr(report, "refused a connection from 127.0.0.1") && strstr(report, "magic") &&
               strstr(report, "version 9") && strstr(report, "another job"),
           "process 0 logs each refusal with its reason");
    for (char *line = strtok(report, "\n"); line; line = strtok(NULL, "\n")) tap_diag("process 0: %s", line);
}

/* ----------------------------------------------------------------------------
 * refused before any socket, and alone */

static void check_config(void)
{
    void *ctx = NULL;
    int map_empty[4] = {0, 0, 2, 2};
    struct {
        const char *what;
        dp_bootstrap_tcp_config cfg;
        const char *says;
    } bad[] = {
        {"world size 0", {.port = "1", .world_size = 0, .processes = 1}, "world size"},
        {"more processes than ranks", {.port = "1", .world_size = 2, .processes = 3}, "3 processes for 2 ranks"},
        {"a process outside the job", {.port = "1", .world_size = 4, .processes = 2, .process = 2}, "process 2"},
        {"ranks not splitting evenly", {.port = "1", .world_size = 5, .processes = 2}, "evenly"},
        {"a placement outside the job", {.port = "1", .world_size = 4, .processes = 2, .process_of = (int[]){0, 1, 2, 1}},
         "rank 2 is placed in process 2"},
        {"a process without ranks", {.port = "1", .world_size = 4, .processes = 3, .process_of = map_empty},
         "process 1 hosts no rank"},
        {"no port", {.world_size = 2, .processes = 2}, "MASTER_PORT"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dp_status st = dp_bootstrap_tcp_create(&bad[i].cfg, &ctx);
        tap_ok(st == DP_ERR_INVALID && !ctx && strstr(dp_last_error(), bad[i].says), "config refused: %s",
               bad[i].what);
        if (st != DP_ERR_INVALID || !strstr(dp_last_error(), bad[i].says)) tap_diag("%s", dp_last_error());
    }

    /* nobody at the port: the connection is retried until the deadline, then an error naming it */
    char port[16];
    snprintf(port, sizeof port, "%d", free_port());
    dp_bootstrap_tcp_config cfg = {.addr = "127.0.0.1", .port = port, .world_size = 2, .processes = 2, .process = 1,
                                   .timeout_ms = 300};
    double t0 = now_ms();
    dp_status st = dp_bootstrap_tcp_create(&cfg, &ctx);
    double took = now_ms() - t0;
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%s", port);
    tap_ok(st == DP_ERR_TIMEOUT && strstr(dp_last_error(), where) && strstr(dp_last_error(), "300 ms") &&
               took >= 290 && took < 1300,
           "nobody listening: retried for the 300 ms deadline (%.0f ms), then an error naming the address", took);
    tap_diag("%s", dp_last_error());

    /* the port taken: process 0 says so at once */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    listen(fd, 1);
    getsockname(fd, (struct sockaddr *)&a, &len);
    snprintf(port, sizeof port, "%d", ntohs(a.sin_port));
    cfg.process = 0, cfg.timeout_ms = 5000;
    t0 = now_ms();
    st = dp_bootstrap_tcp_create(&cfg, &ctx);
    tap_ok(st == DP_ERR_COMM && strstr(dp_last_error(), "MASTER_PORT") && now_ms() - t0 < 1000,
           "process 0 on a port already taken: an error at once, saying to choose another MASTER_PORT");
    tap_diag("%s", dp_last_error());
    close(fd);
}

static void *alone_rank(void *arg)
{
    rank_env *e = arg;
    unsigned char mine[3] = {(unsigned char)e->rank, 7, (unsigned char)(e->rank * 3)}, all[6], b[2] = {0, 0};
    if (e->rank == 1) b[0] = 42, b[1] = 43;
    e->failures = dp_bootstrap_tcp.allgather(e->ctx, e->rank, mine, all, 3) != DP_OK || all[0] != 0 || all[3] != 1 ||
                  all[5] != 3 || dp_bootstrap_tcp.broadcast(e->ctx, e->rank, b, 2, 1) != DP_OK || b[0] != 42 ||
                  b[1] != 43 || dp_bootstrap_tcp.barrier(e->ctx, e->rank) != DP_OK;
    return NULL;
}

static void check_alone(void)
{
    dp_bootstrap_tcp_config cfg = {.world_size = 2, .processes = 1, .timeout_ms = 2000};
    void *ctx = NULL;
    dp_status st = dp_bootstrap_tcp_create(&cfg, &ctx);
    rank_env e[2] = {{.ctx = ctx, .rank = 0}, {.ctx = ctx, .rank = 1}};
    pthread_t th[2];
    if (st == DP_OK) {
        for (int r = 0; r < 2; r++) pthread_create(&th[r], NULL, alone_rank, &e[r]);
        for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
        unsigned char x = 0, all[2];
        st = dp_bootstrap_tcp.allgather(ctx, 2, &x, all, 1) == DP_ERR_INVALID && strstr(dp_last_error(), "rank 2")
                 ? DP_OK
                 : DP_ERR_INTERNAL;
        dp_bootstrap_tcp_destroy(ctx);
    }
    tap_ok(st == DP_OK && !e[0].failures && !e[1].failures,
           "one process of two rank threads: the collectives work without a socket; a rank outside is refused");
}

int main(void)
{
    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        printf("Bail out! mmap: %s\n", strerror(errno));
        return 1;
    }
    double t0 = now_ms();
    check_config();
    check_alone();

    static const int mixed[5] = {1, 0, 2, 0, 1};
    const scenario good[] = {
        {"2 processes", 2, 2, NULL, 10000, suite},
        {"4 processes", 4, 4, NULL, 10000, suite},
        {"2 processes of 2 rank threads", 2, 4, NULL, 10000, suite},
        {"3 processes, ranks placed 1,0,2,0,1", 3, 5, mixed, 10000, suite},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        tap_ok(run(&good[i]), "%s: allgather (13 bytes x3, 0, %d KiB) and broadcast from every root byte-exact, "
               "barriers hold", good[i].name, BIG / 1024);

    tap_ok(DP_HAS(&dp_bootstrap_tcp, aborted) && dp_bootstrap_tcp.aborted, "the table has aborted()");
    scenario sc = {"abort", 3, 6, NULL, 10000, abort_main};
    aborter = 3;
    tap_ok(run(&sc), "3 processes of 2 threads: aborted() is 0 before, and at once while a barrier is under way; rank "
           "3 aborts; every other rank's pending barrier and later calls fail with its message, well within the "
           "deadline, and aborted() gives its reason and message");
    aborter = 0;
    tap_ok(run(&sc), "the same with rank 0 (on process 0) aborting");

    sc = (scenario){"late", 3, 3, NULL, 10000, late_main};
    tap_ok(run(&sc), "rank 1 aborts; process 2, making no call, learns it through aborted(); once processes 0 and 1 "
           "have left, each of its calls fails at once with the abort's message, not with the closed connection");

    sc = (scenario){"exit", 3, 3, NULL, 10000, exit_main};
    leaver = 2;
    tap_ok(run(&sc), "process 2 exits without leaving: the others' barrier fails naming it, well within the deadline");
    leaver = 0;
    tap_ok(run(&sc), "process 0 exits without leaving: the others' barrier fails naming it");

    sc = (scenario){"slow", 2, 2, NULL, 2000, slow_main};
    tap_ok(run(&sc), "a process too slow for the 2000 ms deadline: process 0 gives up on time naming it, and the "
           "slow one learns why");
    sc = (scenario){"disorder", 2, 2, NULL, 5000, disorder_main};
    tap_ok(run(&sc), "one process calls allgather where the other calls broadcast: both fail, saying so");

    check_strangers();
    tap_diag("all of it took %.0f ms", now_ms() - t0);
    return tap_done();
}
