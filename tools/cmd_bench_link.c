/* cmd_bench_link.c: `dualpipe bench-link`: times a link in nccl-tests' manner: a ring of sends
 * and receives, an all-to-all-v of equal counts and an fp32 all_reduce between rank threads, at
 * sizes from -b to -e, with algorithm and bus bandwidth and a check of every element received. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/driver.h"
#include "engine/mpi_job.h"
#include "tools/cli_engine.h"
#include "tools/cli_options.h"
#include "tools/commands.h"
#include "tools/launch.h"

/* ----------------------------------------------------------------------------
 * the operations: what each sends, what each rank must receive, the bus bandwidth factor */

typedef struct bench_rank bench_rank;

typedef struct {
    const char *name;
    /* nccl-tests' bus bandwidth: the fraction of the data that crosses each rank's busiest link,
     * so that figures of different operations and rank counts compare with the hardware's */
    double (*bus_factor)(int n);
    size_t (*elements)(size_t bytes, int n); /* of each rank's send buffer at a size */
    dp_status (*run)(bench_rank *b, size_t count);
    float (*expect)(int rank, int n, size_t count, size_t i); /* element i received by `rank` */
} bench_op;

/* What rank `rank` sends at index i: exact in fp32 and in a sum of up to 256 ranks (< 2^24),
 * different for every rank at one index and for every index within a rank's 65521. */
static float pattern(int rank, size_t i) { return (float)((i + 1 + 257 * (size_t)rank) % 65521); }

struct bench_rank {
    const dp_device_ops *G;
    const dp_link_ops *L;
    dp_device *dev;
    dp_link *l;
    int rank, n;
    void *sbuf, *rbuf;   /* device memory, each of the largest size */
    size_t *counts;      /* [4 n]: all_to_all_v's counts and displacements */
};

static double factor_one(int n) { return (void)n, 1.0; }
static double factor_alltoall(int n) { return (double)(n - 1) / n; }
static double factor_allreduce(int n) { return 2.0 * (n - 1) / n; }

static size_t elements_whole(size_t bytes, int n) { return (void)n, bytes / sizeof(float); }
/* all-to-all: the same count to every rank, as nccl-tests rounds it */
static size_t elements_per_peer(size_t bytes, int n) { return bytes / sizeof(float) / (size_t)n * (size_t)n; }

/* A ring: every rank sends to the next and receives from the previous, posted as one group. */
static dp_status run_sendrecv(bench_rank *b, size_t count)
{
    int next = (b->rank + 1) % b->n, prev = (b->rank + b->n - 1) % b->n;
    size_t bytes = count * sizeof(float);
    dp_request *rr = NULL, *rs = NULL;
    DP_CHECK(b->L->group_start(b->l));
    DP_CHECK(b->L->irecv(b->l, b->rbuf, bytes, prev, DP_TAG(0, 0), NULL, &rr));
    DP_CHECK(b->L->isend(b->l, b->sbuf, bytes, next, DP_TAG(0, 0), NULL, &rs));
    DP_CHECK(b->L->group_end(b->l));
    dp_status st = b->L->wait(b->l, rr), st2 = b->L->wait(b->l, rs);
    return st != DP_OK ? st : st2;
}

static float expect_sendrecv(int rank, int n, size_t count, size_t i)
{
    (void)count;
    return pattern((rank + n - 1) % n, i);
}

static dp_status run_alltoallv(bench_rank *b, size_t count)
{
    size_t c = count / (size_t)b->n, *sc = b->counts, *sd = sc + b->n, *rc = sd + b->n, *rd = rc + b->n;
    for (int p = 0; p < b->n; p++) sc[p] = rc[p] = c, sd[p] = rd[p] = (size_t)p * c;
    return b->L->all_to_all_v(b->l, b->sbuf, sc, sd, b->rbuf, rc, rd, sizeof(float), NULL);
}

/* Block p of the receive buffer is block `rank` of rank p's send buffer. */
static float expect_alltoallv(int rank, int n, size_t count, size_t i)
{
    size_t c = count / (size_t)n;
    return pattern((int)(i / c), (size_t)rank * c + i % c);
}

static dp_status run_allreduce(bench_rank *b, size_t count)
{
    return b->L->all_reduce(b->l, b->sbuf, b->rbuf, count, DP_DTYPE_F32, DP_REDUCE_SUM, NULL);
}

static float expect_allreduce(int rank, int n, size_t count, size_t i)
{
    (void)rank, (void)count;
    float sum = 0;
    for (int p = 0; p < n; p++) sum += pattern(p, i);
    return sum;
}

static const bench_op bench_ops[] = {
    {"sendrecv", factor_one, elements_whole, run_sendrecv, expect_sendrecv},
    {"alltoallv", factor_alltoall, elements_per_peer, run_alltoallv, expect_alltoallv},
    {"allreduce", factor_allreduce, elements_whole, run_allreduce, expect_allreduce},
};
enum { NUM_OPS = (int)(sizeof bench_ops / sizeof bench_ops[0]) };

/* ----------------------------------------------------------------------------
 * options */

enum { O_RANKS = CLI_LONG_ONLY, O_LINK, O_TIMEOUT, O_SHARED };

#define MAX_BYTES (8ull << 30) /* -e: 8 GiB per buffer, two buffers per rank */

static const cli_option options[] = {
    {'d', 'd', "driver", "NAME", .help = "cpu (default) or a driver module (see DUALPIPE_DRIVER_PATH)"},
    {O_LINK, 0, "link", "NAME", .help = "the driver's own link (default; under mpirun, mpi for the cpu driver)\n"
                                        "or mpi (CPU ranks across processes)"},
    {O_RANKS, 0, "ranks", "N", .help = "rank threads per process (default 2 in a process alone, 1 under\n"
                                       "mpirun); the ranks are the processes x N"},
    {'o', 'o', "op", "OP", .help = "sendrecv (a ring), alltoallv (equal counts), allreduce (fp32 sum)\n"
                                   "or all (default)"},
    {'b', 'b', "minbytes", "SIZE", .help = "smallest size per rank, in bytes; K, M, G: 1024, 1024^2, 1024^3\n"
                                           "(default 8)"},
    {'e', 'e', "maxbytes", "SIZE", .help = "largest size (default 32M; at most 8G)"},
    {'f', 'f', "stepfactor", "F", .help = "each size is F times the previous (default 2)"},
    {'n', 'n', "iters", "N", .help = "timed iterations per size (default 20)"},
    {'w', 'w', "warmup_iters", "N", .help = "untimed iterations before them (default 5)"},
    {'c', 'c', "check", "0|1", .help = "1 (default): one more iteration into a poisoned buffer, every element\n"
                                       "received checked against what its sender wrote; 0: none"},
    {O_SHARED, 0, "shared", NULL, .help = "every rank on device 0 (default: rank r on device r mod the\n"
                                          "driver's devices, one GPU per rank where there are enough)"},
    {O_TIMEOUT, 0, "timeout-ms", "MS", .help = "a rank gives up waiting for a message after MS (default 60000)"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]...",
    .about = "Time a link between ranks in nccl-tests' manner: for each operation and size, the average\n"
             "time of an iteration, the algorithm bandwidth (size / time) and the bus bandwidth (times\n"
             "1 for sendrecv, (n-1)/n for alltoallv, 2(n-1)/n for allreduce), and the elements received\n"
             "wrong. Buffers live on each rank's device. Exit status 1 when any element is wrong.",
    .options = options,
    .epilogue = "Example: dualpipe bench-link --ranks 4 -b 1K -e 64M -f 4 -o alltoallv\n"
                "         mpirun -np 2 dualpipe bench-link --ranks 2\n",
};

typedef struct {
    const char *driver, *link;
    int ranks; /* per process; 0: the default */
    int op;    /* an index into bench_ops, or NUM_OPS: all */
    size_t minbytes, maxbytes;
    int factor, iters, warmup, check, shared, timeout_ms;
} bench_options;

/* A size: a whole number of bytes with an optional K, M or G (powers of 1024, as nccl-tests). */
static int parse_size(const char *option, const char *text, size_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = 0;
    int digits = text && *text >= '0' && *text <= '9';
    if (digits) v = strtoull(text, &end, 10);
    unsigned long long unit = 1;
    if (digits && *end) {
        switch (*end) {
        case 'k': case 'K': unit = 1ull << 10; break;
        case 'm': case 'M': unit = 1ull << 20; break;
        case 'g': case 'G': unit = 1ull << 30; break;
        default: unit = 0;
        }
        if (unit && end[1]) unit = 0;
    }
    if (!digits || errno == ERANGE || unit == 0) {
        cli_error("%s expects a size in bytes (a whole number, optionally with K, M or G), got '%s'", option,
                  text ? text : "");
        return 1;
    }
    if (v > MAX_BYTES / unit || v * unit < sizeof(float) || v * unit > MAX_BYTES) {
        cli_error("%s must be between 4 (one fp32 element) and 8G, got %s", option, text);
        return 1;
    }
    *out = (size_t)(v * unit);
    return 0;
}

/* Fills o from the command line: CLI_GO_ON, or the exit code (after --help or an error). */
static int parse_options(int argc, char **argv, bench_options *o)
{
    memset(o, 0, sizeof *o);
    o->driver = "cpu", o->op = NUM_OPS;
    o->minbytes = 8, o->maxbytes = 32u << 20, o->factor = 2, o->iters = 20, o->warmup = 5, o->check = 1;
    const char *names[NUM_OPS + 1];
    for (int i = 0; i < NUM_OPS; i++) names[i] = bench_ops[i].name;
    names[NUM_OPS] = "all";
    cli_parser p;
    int opt = cli_parse_start(&p, &spec, argc, argv);
    if (opt != CLI_GO_ON) return opt;
    while ((opt = cli_next(&p))) {
        int bad = 0;
        switch (opt) {
        case 'd': o->driver = p.value; break;
        case O_LINK: o->link = p.value; break;
        case O_RANKS: bad = cli_parse_int("--ranks", p.value, 1, 64, &o->ranks); break;
        case 'o': bad = cli_parse_kind("--op", p.value, names, NUM_OPS + 1, &o->op); break;
        case 'b': bad = parse_size("-b/--minbytes", p.value, &o->minbytes); break;
        case 'e': bad = parse_size("-e/--maxbytes", p.value, &o->maxbytes); break;
        case 'f': bad = cli_parse_int("-f/--stepfactor", p.value, 2, 1 << 20, &o->factor); break;
        case 'n': bad = cli_parse_int("-n/--iters", p.value, 1, 1000000, &o->iters); break;
        case 'w': bad = cli_parse_int("-w/--warmup_iters", p.value, 0, 1000000, &o->warmup); break;
        case 'c': bad = cli_parse_int("-c/--check", p.value, 0, 1, &o->check); break;
        case O_SHARED: o->shared = 1; break;
        case O_TIMEOUT: bad = cli_parse_int("--timeout-ms", p.value, 1, 86400000, &o->timeout_ms); break;
        }
        if (bad) return CLI_EXIT_USAGE;
    }
    if (cli_no_operands(&p)) return CLI_EXIT_USAGE;
    if (o->minbytes > o->maxbytes) {
        cli_error("-b/--minbytes (%zu) is larger than -e/--maxbytes (%zu): give the smallest size first",
                  o->minbytes, o->maxbytes);
        return CLI_EXIT_USAGE;
    }
    return CLI_GO_ON;
}

/* The link to time: the driver's own, or the mpi link (host memory only). */
static int pick_link(const dp_driver *drv, const char *name, const dp_link_ops **out)
{
    *out = drv->link;
    if (!name || strcmp(name, drv->link->name) == 0) return 0;
    if (strcmp(name, "mpi") != 0) {
        cli_error("--link: no link '%s': the links are the %s driver's own (%s) and mpi", name, drv->name,
                  drv->link->name);
        return CLI_EXIT_USAGE;
    }
    if (!dp_mpi_built()) {
        cli_error("--link mpi: this build has no MPI: install an MPI (Debian: libopenmpi-dev openmpi-bin) and run "
                  "./configure again");
        return CLI_EXIT_USAGE;
    }
    if (strcmp(drv->link->name, "cpu") != 0) {
        cli_error("--link mpi carries host memory, so it runs with drivers of host memory (cpu); the %s driver "
                  "crosses processes with its own link (%s)", drv->name, drv->link->name);
        return CLI_EXIT_USAGE;
    }
    *out = &dp_mpi_link_ops;
    return 0;
}

/* ----------------------------------------------------------------------------
 * the job: every rank thread of this process runs every operation at every size */

typedef struct {
    const bench_options *o;
    const dp_driver *drv;
    const dp_link_ops *link;
    dp_link_world *world;
    int world_size, first_rank, local_ranks, processes, devices;
    int pin_device, device;            /* every rank of this process on `device` (a launcher's choice) */
    const dp_bootstrap_ops *bootstrap; /* how the processes meet (NULL: one process) */
    void *bootstrap_ctx;
    int timeout_ms;
    int wrong_everywhere; /* every process knows the results were wrong: none needs to end the others */
    size_t *sizes;
    int num_sizes;
    int corrupt; /* DUALPIPE_BENCH_LINK_CORRUPT: a test hook */
    /* the first failure, whose message is the job's */
    pthread_mutex_t lock;
    pthread_cond_t gate_cond;
    int gate_arrived;
    int failed_rank;
    char failed_msg[1024];
    uint64_t wrong; /* over the ranks, known in every process */
    /* rank 0's results */
    double busbw_sum[NUM_OPS], last_busbw[NUM_OPS];
    size_t last_size[NUM_OPS];
    int rows[NUM_OPS];
} bench_job;

typedef struct {
    bench_job *job;
    int rank;
    pthread_t thread;
} rank_arg;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* The elements received wrong at one size: the receive buffer poisoned (NaN), one more
 * iteration, then every element compared with what its sender wrote. */
static dp_status check_once(bench_job *job, bench_rank *b, const bench_op *op, size_t count, float *host,
                            uint64_t *wrong)
{
    *wrong = 0;
    DP_CHECK(b->G->memset(b->dev, b->rbuf, 0xff, count * sizeof(float), NULL));
    DP_CHECK(op->run(b, count));
    DP_CHECK(b->G->stream_synchronize(b->dev, NULL));
    DP_CHECK(b->G->copy(b->dev, host, b->rbuf, count * sizeof(float), DP_COPY_DEVICE_TO_HOST, NULL));
    if (job->corrupt && b->rank == 0 && count > 0) host[count / 2] += 1.0f; /* the test hook */
    for (size_t i = 0; i < count; i++)
        if (!(host[i] == op->expect(b->rank, b->n, count, i))) ++*wrong;
    return DP_OK;
}

/* Rank 0's row of the table, from the sums over ranks. */
static void print_row(bench_job *job, int opi, size_t count, double time_us, uint64_t wrong)
{
    const bench_op *op = &bench_ops[opi];
    size_t bytes = count * sizeof(float);
    double algbw = time_us > 0 ? (double)bytes / (time_us * 1e3) : 0; /* GB/s: 1e9 bytes per second */
    double busbw = algbw * op->bus_factor(job->world_size);
    char w[32] = "N/A";
    if (job->o->check) snprintf(w, sizeof w, "%" PRIu64, wrong);
    printf("%10s %12zu %12zu %6s %10.2f %8.3f %8.3f %7s\n", op->name, bytes, count, "fp32", time_us, algbw, busbw, w);
    fflush(stdout);
    job->busbw_sum[opi] += busbw, job->rows[opi]++;
    job->last_busbw[opi] = busbw, job->last_size[opi] = bytes;
}

/* One operation at one size on one rank: warm-up, timed iterations, the check, then the time
 * and the wrong elements summed over the ranks (an fp32 all_reduce: the count in two halves
 * that each stay exact). */
static dp_status run_size(bench_job *job, bench_rank *b, int opi, size_t bytes, float *host, float *stats)
{
    const bench_options *o = job->o;
    const bench_op *op = &bench_ops[opi];
    size_t count = op->elements(bytes, b->n);
    for (int i = 0; i < o->warmup; i++) DP_CHECK(op->run(b, count));
    DP_CHECK(b->L->barrier(b->l));
    double t0 = now_us();
    for (int i = 0; i < o->iters; i++) DP_CHECK(op->run(b, count));
    DP_CHECK(b->G->stream_synchronize(b->dev, NULL));
    double time_us = (now_us() - t0) / o->iters;
    uint64_t wrong = 0;
    if (o->check) DP_CHECK(check_once(job, b, op, count, host, &wrong));
    float mine[4] = {(float)time_us, (float)(wrong >> 16), (float)(wrong & 0xffff), 0}, all[4];
    DP_CHECK(b->G->copy(b->dev, stats, mine, sizeof mine, DP_COPY_HOST_TO_DEVICE, NULL));
    DP_CHECK(b->L->all_reduce(b->l, stats, stats + 4, 4, DP_DTYPE_F32, DP_REDUCE_SUM, NULL));
    DP_CHECK(b->G->copy(b->dev, all, stats + 4, sizeof all, DP_COPY_DEVICE_TO_HOST, NULL));
    wrong = (uint64_t)all[1] * 65536u + (uint64_t)all[2];
    if (b->rank == job->first_rank) job->wrong += wrong;
    if (b->rank == 0) print_row(job, opi, count, all[0] / b->n, wrong);
    return DP_OK;
}

static void print_header(bench_job *job, bench_rank *b)
{
    const bench_options *o = job->o;
    dp_device_info info;
    if (b->G->info(b->dev, &info) != DP_OK) snprintf(info.name, sizeof info.name, "?");
    printf("# dualpipe bench-link: %s", o->op < NUM_OPS ? bench_ops[o->op].name : "");
    for (int i = 0; o->op == NUM_OPS && i < NUM_OPS; i++) printf("%s%s", i ? ", " : "", bench_ops[i].name);
    printf("; %zu to %zu bytes, x%d; %d iterations after %d warm-up; check %s\n", o->minbytes, o->maxbytes,
           o->factor, o->iters, o->warmup, o->check ? "on" : "off");
    printf("# ranks %d: %d process%s x %d rank thread%s; driver %s, link %s; %s\n", job->world_size,
           job->processes, job->processes == 1 ? "" : "es", job->local_ranks, job->local_ranks == 1 ? "" : "s",
           job->drv->name, job->link->name,
           job->pin_device ? "each process's ranks on its device"
           : o->shared || job->devices <= 1 ? "every rank on device 0" : "rank r on device r mod the devices");
    printf("# rank 0's device: %s\n", info.name);
    printf("# time: the average over the ranks of an iteration's time; algbw = size / time; busbw = algbw x 1 "
           "(sendrecv), (n-1)/n (alltoallv), 2(n-1)/n (allreduce); GB = 1e9 bytes\n");
    printf("#\n#%9s %12s %12s %6s %10s %8s %8s %7s\n", "op", "size", "count", "type", "time", "algbw", "busbw",
           "#wrong");
    printf("#%9s %12s %12s %6s %10s %8s %8s %7s\n", "", "(B)", "(elements)", "", "(us)", "(GB/s)", "(GB/s)", "");
    fflush(stdout);
}

static void fail(bench_job *job, bench_rank *b, int rank, const char *what)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "rank %d: %s: %s", rank, what, dp_last_error());
    pthread_mutex_lock(&job->lock);
    int first = job->failed_rank < 0;
    if (first) job->failed_rank = rank, snprintf(job->failed_msg, sizeof job->failed_msg, "%s", msg);
    pthread_mutex_unlock(&job->lock);
    /* the other ranks are waiting for this one: end the job rather than let them time out */
    if (b->l) b->L->abort(b->l, DP_ERR_COMM, msg);
}

/* Whether the ranks sharing this rank's device would not fit their two buffers in its memory
 * (said through dp_fail): a clear error rather than a machine driven out of memory. */
static int memory_too_small(const bench_job *job, bench_rank *b, size_t max_bytes)
{
    dp_device_info info;
    if (b->G->info(b->dev, &info) != DP_OK || info.total_memory == 0) return 0;
    int sharing = job->o->shared || job->devices <= 1 ? job->local_ranks
                                                       : (job->local_ranks + job->devices - 1) / job->devices;
    double need = 2.0 * (double)max_bytes * sharing;
    if (need <= (double)info.total_memory) return 0;
    dp_fail(DP_ERR_NOMEM, "two buffers of %zu bytes for each of %d rank%s on one device need %.3g GB, more than its "
            "%.3g GB (%s): lower -e/--maxbytes or the ranks",
            max_bytes, sharing, sharing == 1 ? "" : "s", need / 1e9, (double)info.total_memory / 1e9, info.name);
    return 1;
}

/* The ranks of this process meet here after their set-up, before the link's first collective:
 * when one could not open its device or allocate its buffers, the others end too instead of
 * waiting for it until their deadline. Returns nonzero when a rank failed. */
static int setup_gate(bench_job *job, bench_rank *b, int failed)
{
    pthread_mutex_lock(&job->lock);
    if (++job->gate_arrived == job->local_ranks) pthread_cond_broadcast(&job->gate_cond);
    while (job->gate_arrived < job->local_ranks) pthread_cond_wait(&job->gate_cond, &job->lock);
    int any = job->failed_rank >= 0;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", job->failed_msg);
    pthread_mutex_unlock(&job->lock);
    /* ranks of other processes learn it through the link */
    if (any && !failed && b->l) b->L->abort(b->l, DP_ERR_COMM, msg);
    return any;
}

static void *rank_main(void *argp)
{
    rank_arg *a = argp;
    bench_job *job = a->job;
    const bench_options *o = job->o;
    bench_rank b = {.G = job->drv->device, .L = job->link, .rank = a->rank, .n = job->world_size};
    size_t max_bytes = o->maxbytes / sizeof(float) * sizeof(float);
    float *host = NULL, *stats = NULL;
    char where[96];
    int ordinal = job->pin_device ? job->device
                  : o->shared || job->devices < 1 ? 0 : (a->rank - job->first_rank) % job->devices;
    dp_device_config dc = {.ordinal = ordinal, .threads = 1, .rank = a->rank};
    const char *what = "opening its device";
    if (b.G->open(&dc, &b.dev) != DP_OK) goto set_up;
    what = "opening its link";
    if (b.L->open(job->world, a->rank, b.dev, &b.l) != DP_OK) goto set_up;
    what = "its buffers";
    if (memory_too_small(job, &b, max_bytes)) goto set_up;
    what = "out of memory for the host's buffers";
    host = malloc(max_bytes);
    b.counts = calloc(4 * (size_t)b.n, sizeof *b.counts);
    if (!host || !b.counts) {
        dp_fail(DP_ERR_NOMEM, "%zu bytes", max_bytes);
        goto set_up;
    }
    what = "allocating its buffers on the device";
    if (b.G->alloc(b.dev, max_bytes, &b.sbuf) != DP_OK || b.G->alloc(b.dev, max_bytes, &b.rbuf) != DP_OK ||
        b.G->alloc(b.dev, 8 * sizeof(float), (void **)&stats) != DP_OK)
        goto set_up;
    for (size_t i = 0; i < max_bytes / sizeof(float); i++) host[i] = pattern(a->rank, i);
    what = "filling its send buffer";
    if (b.G->copy(b.dev, b.sbuf, host, max_bytes, DP_COPY_HOST_TO_DEVICE, NULL) != DP_OK ||
        b.G->stream_synchronize(b.dev, NULL) != DP_OK)
        goto set_up;
    what = NULL;
set_up:
    if (what) fail(job, &b, a->rank, what);
    if (setup_gate(job, &b, what != NULL)) {
        what = NULL; /* said by the rank that failed */
        goto out;
    }
    what = "the barrier before the first operation";
    if (b.L->barrier(b.l) != DP_OK) goto out;
    if (a->rank == 0) print_header(job, &b);
    for (int opi = 0; opi < NUM_OPS; opi++) {
        if (o->op != NUM_OPS && o->op != opi) continue;
        for (int s = 0; s < job->num_sizes; s++)
            if (run_size(job, &b, opi, job->sizes[s], host, stats) != DP_OK) {
                snprintf(where, sizeof where, "%s at %zu bytes", bench_ops[opi].name, job->sizes[s]);
                what = where;
                goto out;
            }
    }
    what = NULL;
out:
    if (what) fail(job, &b, a->rank, what);
    if (b.dev) {
        b.G->free(b.dev, b.sbuf), b.G->free(b.dev, b.rbuf), b.G->free(b.dev, stats);
    }
    if (b.l) b.L->close(b.l);
    if (b.dev) b.G->close(b.dev);
    free(host), free(b.counts);
    return NULL;
}

/* The sizes from -b to -e, each -f times the last. */
static int make_sizes(bench_job *job)
{
    const bench_options *o = job->o;
    int n = 0;
    for (size_t s = o->minbytes; s <= o->maxbytes; s *= (size_t)o->factor) {
        n++;
        if (s > o->maxbytes / (size_t)o->factor) break;
    }
    if (!(job->sizes = calloc((size_t)n, sizeof *job->sizes))) return 1;
    size_t s = o->minbytes;
    for (int i = 0; i < n; i++, s *= (size_t)o->factor) job->sizes[i] = s;
    job->num_sizes = n;
    return 0;
}

/* The lines under the table: the wrong elements, each operation's average bus bandwidth and,
 * with several operations, their bus bandwidths at the largest size side by side. */
static void print_summary(const bench_job *job)
{
    if (job->o->check) printf("# wrong elements: %" PRIu64 " %s\n", job->wrong, job->wrong ? "FAILED" : "OK");
    else printf("# results not checked (-c 0)\n");
    printf("# average bus bandwidth over the sizes:");
    for (int i = 0; i < NUM_OPS; i++)
        if (job->rows[i]) printf(" %s %.3f GB/s", bench_ops[i].name, job->busbw_sum[i] / job->rows[i]);
    printf("\n");
    int first = -1, shown = 0;
    for (int i = 0; i < NUM_OPS; i++)
        if (job->rows[i]) shown++, first = first < 0 ? i : first;
    if (shown < 2) return;
    printf("# bus bandwidth at the largest size:");
    for (int i = 0, k = 0; i < NUM_OPS; i++) {
        if (!job->rows[i]) continue;
        printf("%s %s %.3f GB/s (%zu B", k++ ? "," : "", bench_ops[i].name, job->last_busbw[i], job->last_size[i]);
        if (i != first && job->last_busbw[first] > 0)
            printf(", %.2fx %s", job->last_busbw[i] / job->last_busbw[first], bench_ops[first].name);
        printf(")");
    }
    printf("\n");
}

/* Starts this process's rank threads over the world and waits for them: 0, or having said why not. */
static int run_job(bench_job *job)
{
    rank_arg *ranks = calloc((size_t)job->local_ranks, sizeof *ranks);
    if (!ranks || make_sizes(job)) {
        free(ranks);
        cli_error("out of memory");
        return CLI_EXIT_FAIL;
    }
    dp_link_world_config wc = {.world_size = job->world_size, .first_rank = job->first_rank,
                               .local_ranks = job->local_ranks, .timeout_ms = job->timeout_ms,
                               .struct_size = sizeof wc, .bootstrap = job->bootstrap,
                               .bootstrap_ctx = job->bootstrap_ctx};
    if (job->link->world_create(&wc, &job->world) != DP_OK) {
        cli_error("%s", dp_last_error());
        free(ranks);
        return CLI_EXIT_FAIL;
    }
    int started = 0;
    for (; started < job->local_ranks; started++) {
        ranks[started] = (rank_arg){.job = job, .rank = job->first_rank + started};
        if (pthread_create(&ranks[started].thread, NULL, rank_main, &ranks[started]) != 0) {
            /* those started meet the missing ones at the set-up gate as failed */
            pthread_mutex_lock(&job->lock);
            if (job->failed_rank < 0)
                job->failed_rank = ranks[started].rank,
                snprintf(job->failed_msg, sizeof job->failed_msg, "cannot start the thread of rank %d",
                         ranks[started].rank);
            job->gate_arrived += job->local_ranks - started;
            pthread_cond_broadcast(&job->gate_cond);
            pthread_mutex_unlock(&job->lock);
            break;
        }
    }
    for (int i = 0; i < started; i++) pthread_join(ranks[i].thread, NULL);
    job->link->world_destroy(job->world);
    free(ranks);
    if (job->failed_rank >= 0) {
        cli_error("%s", job->failed_msg);
        return CLI_EXIT_FAIL;
    }
    if (job->first_rank == 0) print_summary(job);
    job->wrong_everywhere = job->wrong != 0;
    return job->wrong ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

/* This process's share of the job, once launch_begin has said where it sits: its ranks,
 * their link and devices; then the run. 0, or the exit code having said why not. */
static int place_and_run(bench_job *job, launch *lp)
{
    const bench_options *o = job->o;
    if (dp_driver_load(o->driver, &job->drv) != DP_OK) {
        cli_error("--driver: %s", dp_last_error());
        return CLI_EXIT_USAGE;
    }
    int per = o->ranks ? o->ranks : lp->processes > 1 ? 1 : 2;
    dp_runtime_config place = {.driver = o->driver, .link = o->link, .timeout_ms = o->timeout_ms};
    int rc = launch_place(lp, &place, per * lp->processes);
    if (rc == 0) rc = pick_link(job->drv, place.link, &job->link);
    if (rc != 0) return rc;
    if (job->link == &dp_mpi_link_ops && per > DP_MPI_MAX_LOCAL_RANKS) {
        cli_error("--ranks %d: the mpi link hosts at most %d rank threads per process; start more processes", per,
                  DP_MPI_MAX_LOCAL_RANKS);
        return CLI_EXIT_USAGE;
    }
    if (job->drv->available && job->drv->available() != DP_OK) {
        cli_error("the %s driver cannot run here: %s", job->drv->name, dp_last_error());
        return CLI_EXIT_FAIL;
    }
    job->processes = lp->processes, job->local_ranks = per, job->world_size = per * lp->processes;
    job->first_rank = place.first_rank, job->timeout_ms = place.timeout_ms;
    job->bootstrap = place.bootstrap, job->bootstrap_ctx = place.bootstrap_ctx;
    if (job->drv->device->device_count(&job->devices) != DP_OK) job->devices = 1;
    job->pin_device = place.pin_device, job->device = place.device;
    int mpi_here = 0; /* the mpi link in a process alone: MPI started here, as a singleton */
    if (job->link == &dp_mpi_link_ops && !dp_mpi_running()) {
        int process, processes, local;
        if (dp_mpi_start(NULL, NULL, &process, &processes, &local) != DP_OK) {
            cli_error("--link mpi: %s", dp_last_error());
            return CLI_EXIT_FAIL;
        }
        mpi_here = 1;
    }
    rc = run_job(job);
    if (mpi_here) dp_mpi_finish(0);
    return rc;
}

int cmd_bench_link(int argc, char **argv)
{
    bench_options o;
    int rc = parse_options(argc, argv, &o);
    if (rc != CLI_GO_ON) return rc;
    bench_job job = {.o = &o, .failed_rank = -1, .processes = 1};
    const char *corrupt = getenv("DUALPIPE_BENCH_LINK_CORRUPT");
    job.corrupt = corrupt && *corrupt && strcmp(corrupt, "0") != 0;
    pthread_mutex_init(&job.lock, NULL);
    pthread_cond_init(&job.gate_cond, NULL);
    launch lp;
    if ((rc = launch_begin(&lp)) == 0) {
        rc = place_and_run(&job, &lp);
        /* wrong results are known to every process, which each exit 1 on their own; any other
         * failure of one process ends the others */
        launch_end(&lp, job.wrong_everywhere ? 0 : rc);
    }
    pthread_cond_destroy(&job.gate_cond);
    pthread_mutex_destroy(&job.lock);
    free(job.sizes);
    return rc;
}
