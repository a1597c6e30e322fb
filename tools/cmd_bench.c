/* cmd_bench.c: `dualpipe bench`: figures for the CPU driver. GEMM rates of the portable
 * GEMM and of CBLAS against the machine's measured peak (CBLAS on a large square GEMM), the
 * median step time of each schedule at fixed models, including the shapes of the reference's
 * side-by-side measurements, and an MoE stage's tokens per second and all-to-all bytes at
 * ep 1, 2 and 4 (bench_moe.c). Prints figures; asserts nothing about speed. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "engine/runtime.h"
#include "tools/bench_moe.h"
#include "tools/bench_overlap.h"
#include "tools/cli_engine.h"
#include "tools/cli_options.h"
#include "tools/commands.h"

/* ----------------------------------------------------------------------------
 * GEMM */

/* The GEMMs are timed through the driver's device table, as the model runs them. The CPU
 * driver fixes a device's GEMM and thread count when the device opens (CBLAS where built in,
 * unless DUALPIPE_CPU_GEMM=portable), so each measurement opens a device of its own. */

/* Opens a device of the CPU driver with `threads` kernel threads (0: all cores); `portable`
 * asks for the driver's own GEMM even where CBLAS is built in. The environment is as before. */
static dp_status open_device(const dp_driver *drv, int portable, int threads, dp_device **dev)
{
    const char *old = getenv("DUALPIPE_CPU_GEMM");
    char *saved = old ? strdup(old) : NULL;
    if (portable) setenv("DUALPIPE_CPU_GEMM", "portable", 1);
    dp_device_config dc = {.threads = threads};
    dp_status st = drv->device->open(&dc, dev);
    if (portable) {
        if (saved) setenv("DUALPIPE_CPU_GEMM", saved, 1);
        else unsetenv("DUALPIPE_CPU_GEMM");
    }
    free(saved);
    return st;
}

/* GFLOP/s of C[m x n] = A[m x k] B^T (the forward's shape), median of `reps` after one warm-up,
 * each timed between two events; 0 (said) on failure. */
static double gemm_rate(const dp_driver *drv, int portable, int threads, int m, int n, int k, int reps)
{
    const dp_device_ops *D = drv->device;
    dp_device *dev = NULL;
    void *a = NULL, *b = NULL, *c = NULL;
    dp_event *e0 = NULL, *e1 = NULL;
    float *ha = malloc(sizeof(float) * (size_t)m * k), *hb = malloc(sizeof(float) * (size_t)n * k);
    double *t = malloc(sizeof(double) * (size_t)reps);
    double rate = 0;
    if (!ha || !hb || !t) {
        cli_error("out of memory for a %d x %d x %d GEMM", m, n, k);
        goto out;
    }
    for (size_t i = 0; i < (size_t)m * k; i++) ha[i] = (float)((i * 7 % 13) - 6) * 0.1f;
    for (size_t i = 0; i < (size_t)n * k; i++) hb[i] = (float)((i * 5 % 11) - 5) * 0.1f;
    CLI_TRY(open_device(drv, portable, threads, &dev));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)m * k, &a));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)n * k, &b));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)m * n, &c));
    CLI_TRY(D->copy(dev, a, ha, sizeof(float) * (size_t)m * k, DP_COPY_HOST_TO_DEVICE, NULL));
    CLI_TRY(D->copy(dev, b, hb, sizeof(float) * (size_t)n * k, DP_COPY_HOST_TO_DEVICE, NULL));
    CLI_TRY(D->event_create(dev, &e0));
    CLI_TRY(D->event_create(dev, &e1));
    dp_gemm_args g = {0, 1, m, n, k, 1.0f, 0.0f, a, k, DP_DTYPE_F32, b, k, DP_DTYPE_F32, c, n, DP_DTYPE_F32};
    CLI_TRY(D->gemm(dev, NULL, &g)); /* warm-up */
    for (int r = 0; r < reps; r++) {
        float ms;
        CLI_TRY(D->event_record(dev, e0, NULL));
        CLI_TRY(D->gemm(dev, NULL, &g));
        CLI_TRY(D->event_record(dev, e1, NULL));
        CLI_TRY(D->event_synchronize(dev, e1));
        CLI_TRY(D->event_elapsed(dev, e0, e1, &ms));
        t[r] = ms;
    }
    cli_sort_doubles(t, (size_t)reps);
    rate = 2.0 * m * n * k / (t[reps / 2] * 1e-3) * 1e-9;
out:
    if (dev) {
        D->event_destroy(dev, e0), D->event_destroy(dev, e1);
        D->free(dev, a), D->free(dev, b), D->free(dev, c);
        D->close(dev);
    }
    free(ha), free(hb), free(t);
    return rate;
}

/* The name the driver gives a device opened that way ("cpu (2 threads, CBLAS GEMM)"). */
static int device_name(const dp_driver *drv, int portable, char *name, size_t size)
{
    dp_device *dev = NULL;
    dp_device_info info;
    int rc = 1;
    CLI_TRY(open_device(drv, portable, 1, &dev));
    CLI_TRY(drv->device->info(dev, &info));
    snprintf(name, size, "%s", info.name);
    rc = 0;
out:
    if (dev) drv->device->close(dev);
    return rc;
}

static int bench_gemm(int quick)
{
    const dp_driver *d;
    if (dp_driver_load("cpu", &d) != DP_OK) {
        cli_error("%s", dp_last_error());
        return 1;
    }
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int cores = online > 0 ? (int)online : 1;
    /* Two GEMMs to compare when the driver's choice differs from its portable GEMM (CBLAS built
     * in and not turned off): backend 0 is the driver's choice, backend 1 the portable one. */
    char chosen[128], portable[128];
    if (device_name(d, 0, chosen, sizeof chosen) || device_name(d, 1, portable, sizeof portable)) return 1;
    int blas = strcmp(chosen, portable) != 0;
    int peak_n = quick ? 512 : 1024;
    double peak1 = gemm_rate(d, 0, 1, peak_n, peak_n, peak_n, 5);
    double peakn = gemm_rate(d, 0, cores, peak_n, peak_n, peak_n, 5);
    if (peak1 <= 0 || peakn <= 0) return 1;
    printf("GEMM (fp32; measured peak = %s %dx%dx%d: %.1f GFLOP/s on 1 core, %.1f on %d)\n",
           blas ? "CBLAS" : "portable GEMM (no CBLAS in use)", peak_n, peak_n, peak_n, peak1, peakn, cores);
    printf("  %-26s %-9s %8s %9s   %8s %9s\n", "shape m x n x k", "gemm", "1 core", "of peak", "all", "of peak");
    static const int shapes[][3] = {{256, 1024, 256}, {256, 256, 1024}, {512, 2048, 512}, {512, 512, 2048},
                                    {1024, 1024, 1024}};
    int nshapes = quick ? 2 : 5;
    for (int i = 0; i < nshapes; i++) {
        int m = shapes[i][0], n = shapes[i][1], k = shapes[i][2];
        char label[64];
        snprintf(label, sizeof label, "%d x %d x %d", m, n, k);
        for (int cblas = 0; cblas <= blas; cblas++) { /* portable first, then CBLAS */
            int use_portable = !cblas;
            double r1 = gemm_rate(d, use_portable, 1, m, n, k, quick ? 3 : 5);
            double rn = gemm_rate(d, use_portable, cores, m, n, k, quick ? 3 : 5);
            if (r1 <= 0 || rn <= 0) return 1;
            printf("  %-26s %-9s %8.1f %8.0f%%   %8.1f %8.0f%%\n", label, cblas ? "cblas" : "portable", r1,
                   100 * r1 / peak1, rn, 100 * rn / peakn);
        }
    }
    fflush(stdout);
    return 0;
}

/* ----------------------------------------------------------------------------
 * steps */

typedef struct {
    const char *schedule;
    int ranks, chunks, hidden, tokens;
} step_shape;

static int bench_step(const step_shape *sh, int steps)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = sh->schedule;
    c.ranks = sh->ranks;
    c.chunks = sh->chunks;
    c.model.hidden = sh->hidden;
    c.model.tokens = sh->tokens;
    c.model.seed = 1;
    c.optimizer.kind = DP_OPT_NONE; /* forwards and backwards only, as the reference's step() */
    dp_runtime *rt;
    if (dp_runtime_create(&c, &rt) != DP_OK) {
        cli_error("%s pp %d: %s", sh->schedule, sh->ranks, dp_last_error());
        return 1;
    }
    const dp_schedule *s = dp_runtime_schedule(rt);
    size_t n = (size_t)c.chunks * c.model.tokens * c.model.hidden;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *l = malloc(sizeof(float) * (size_t)c.chunks);
    double *t = malloc(sizeof(double) * (size_t)(steps + 1));
    int rc = 0;
    if (!x || !y || !l || !t) rc = 1;
    for (size_t i = 0; !rc && i < n; i++) x[i] = dp_counter_uniform(3, 0, i), y[i] = dp_counter_uniform(3, 1, i);
    for (int i = 0; !rc && i <= steps; i++) {
        double t0 = dp_now_ms();
        if (dp_runtime_train_step(rt, x, y, l) != DP_OK) {
            cli_error("%s: %s", sh->schedule, dp_last_error());
            rc = 1;
        }
        t[i] = dp_now_ms() - t0;
    }
    if (!rc) {
        cli_sort_doubles(t + 1, (size_t)steps);
        double med = t[1 + steps / 2];
        double flops = 48.0 * c.model.tokens * (double)c.model.hidden * c.model.hidden * s->num_stages * c.chunks;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        printf("  %-10s %3d %7d %7d %7d %8d %11.1f %9.1f %11.1f\n", sh->schedule, sh->ranks, s->num_stages, sh->hidden,
               sh->tokens, sh->chunks, med, flops / (med * 1e-3) * 1e-9,
               flops / (med * 1e-3) * 1e-9 / (double)(cores < sh->ranks ? cores : sh->ranks));
        fflush(stdout);
    }
    free(x), free(y), free(l), free(t);
    dp_runtime_destroy(rt);
    return rc;
}

static void step_header(void)
{
    printf("Step time (fp32, example stage Linear h->4h, GELU, Linear 4h->h, MSE, forward and backward; median)\n");
    printf("  %-10s %3s %7s %7s %7s %8s %11s %9s %11s\n", "schedule", "pp", "stages", "hidden", "tokens", "chunks",
           "step ms", "GFLOP/s", "per core");
}

/* ----------------------------------------------------------------------------
 * the command */

enum { O_QUICK = CLI_LONG_ONLY, O_GEMM, O_STEPS_ONLY, O_HIDDEN, O_TOKENS, O_MOE_ONLY, O_OVERLAP_ONLY };

static const cli_option options[] = {
    {'d', 'd', "driver", "NAME", .help = "cpu (default); another driver's figures are bench-cuda's, with its\n"
                                         "options (dualpipe bench --driver cuda --help)"},
    {'n', 'n', "steps", "S", .help = "timed steps per configuration, after one warm-up (default 5)"},
    {O_QUICK, 0, "quick", NULL, .help = "small shapes only (seconds)"},
    {O_GEMM, 0, "gemm-only", NULL, .help = "only the GEMM rates"},
    {O_STEPS_ONLY, 0, "steps-only", NULL, .help = "only the step times of the dense schedules"},
    {O_MOE_ONLY, 0, "moe-only", NULL, .help = "only the MoE stage: tokens/s and dispatch and combine bytes\n"
                                              "per step at ep 1, 2 and 4"},
    {O_OVERLAP_ONLY, 0, "overlap-only", NULL, .help = "only the overlap: DualPipe and 1F1B with MoE at pp 2 and 4 x ep 2\n"
                                                      "over an emulated network, all-to-all overlap on and off"},
    {'s', 's', "schedule", "NAME", .help = "with --pp, --chunks, --hidden, --tokens: time one configuration\n"
                                           "instead of the built-in list (defaults dualpipe, 2, 8, 256, 256)"},
    {'p', 'p', "pp", "N", .help = "pipeline ranks of that configuration"},
    {'c', 'c', "chunks", "M", .help = "its micro-batches per step"},
    {O_HIDDEN, 0, "hidden", "H", .help = "its hidden size"},
    {O_TOKENS, 0, "tokens", "T", .help = "its rows per micro-batch"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]...",
    .about = "Benchmark the CPU driver: GEMM GFLOP/s (portable and CBLAS, 1 thread and all cores)\n"
             "against the measured peak, median step times of each schedule, then an MoE stage's\n"
             "tokens/s and the bytes its dispatch and combine move at ep 1, 2 and 4, then the overlap\n"
             "of the expert all-to-all in DualPipe against 1F1B over an emulated network.",
    .options = options,
    .epilogue = "Run the ranks on otherwise idle cores: the figures are wall-clock medians.\n",
};

int cmd_bench(int argc, char **argv)
{
    /* `dualpipe bench --driver NAME ...`: a GPU driver's figures and options are bench-cuda's */
    const char *driver = cli_peek(&spec, 'd', argc, argv);
    if (driver && strcmp(driver, "cpu") != 0) return cmd_bench_cuda(argc, argv);
    int steps = 5, quick = 0, gemm = 1, step_times = 1, moe = 1, overlap = 1, custom = 0;
    step_shape one = {"dualpipe", 2, 8, 256, 256};
    cli_parser p;
    int opt = cli_parse_start(&p, &spec, argc, argv);
    if (opt != CLI_GO_ON) return opt;
    while ((opt = cli_next(&p))) {
        const char *a = p.name, *val = p.value;
        switch (opt) {
        case 'd': break; /* cpu */
        case 'n': if (cli_parse_int(a, val, 1, 1000, &steps)) return CLI_EXIT_USAGE; break;
        case O_QUICK: quick = 1; break;
        case O_GEMM: step_times = 0, moe = 0, overlap = 0; break;
        case O_STEPS_ONLY: gemm = 0, moe = 0, overlap = 0; break;
        case O_MOE_ONLY: gemm = 0, step_times = 0, overlap = 0; break;
        case O_OVERLAP_ONLY: gemm = 0, step_times = 0, moe = 0; break;
        case 's': one.schedule = val, custom = 1; break;
        case 'p': if (cli_parse_int(a, val, 1, 64, &one.ranks)) return CLI_EXIT_USAGE; custom = 1; break;
        case 'c': if (cli_parse_int(a, val, 1, 4096, &one.chunks)) return CLI_EXIT_USAGE; custom = 1; break;
        case O_HIDDEN: if (cli_parse_int(a, val, 1, 1 << 15, &one.hidden)) return CLI_EXIT_USAGE; custom = 1; break;
        case O_TOKENS: if (cli_parse_int(a, val, 1, 1 << 20, &one.tokens)) return CLI_EXIT_USAGE; custom = 1; break;
        }
    }
    if (cli_no_operands(&p)) return CLI_EXIT_USAGE;
    if (gemm && !custom && bench_gemm(quick)) return CLI_EXIT_FAIL;
    if (!step_times && (moe || overlap)) {
        int rc = CLI_EXIT_OK;
        if (moe && bench_moe(quick, steps)) rc = CLI_EXIT_FAIL;
        if (overlap && bench_overlap(quick, steps)) rc = CLI_EXIT_FAIL;
        return rc;
    }
    if (!step_times) return CLI_EXIT_OK;
    step_header();
    if (custom) return bench_step(&one, steps) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    static const step_shape quick_list[] = {
        {"gpipe", 2, 8, 128, 64}, {"1f1b", 2, 8, 128, 64}, {"zb1p", 2, 8, 128, 64},
        {"dualpipe", 2, 8, 128, 64}, {"dualpipev", 2, 8, 128, 64},
    };
    /* the shapes of the reference's side-by-side figures, then every schedule on the first */
    static const step_shape full_list[] = {
        {"dualpipe", 2, 8, 256, 256},  {"dualpipe", 2, 8, 512, 512}, {"dualpipe", 4, 8, 256, 256},
        {"dualpipev", 2, 8, 256, 256}, {"dualpipev", 2, 8, 512, 512}, {"gpipe", 2, 8, 256, 256},
        {"1f1b", 2, 8, 256, 256},      {"zb1p", 2, 8, 256, 256},     {"interleaved-1f1b", 2, 8, 256, 256},
    };
    const step_shape *list = quick ? quick_list : full_list;
    int n = quick ? (int)(sizeof quick_list / sizeof *quick_list) : (int)(sizeof full_list / sizeof *full_list);
    int rc = CLI_EXIT_OK;
    for (int i = 0; i < n; i++)
        if (bench_step(&list[i], steps)) rc = CLI_EXIT_FAIL;
    if (moe && bench_moe(quick, steps)) rc = CLI_EXIT_FAIL;
    if (overlap && bench_overlap(quick, steps)) rc = CLI_EXIT_FAIL;
    return rc;
}
