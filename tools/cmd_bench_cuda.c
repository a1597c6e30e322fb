/* cmd_bench_cuda.c: `dualpipe bench-cuda`: figures for the CUDA driver, in fp32 or bf16. For
 * each model shape, the cuBLAS time of the stage's six GEMMs (the bubble-free floor of a step,
 * tools/gemm_floor.c), the median step time of a pipelined training step, its rate per GPU and
 * its ratio to the floor, then each rank's measured idle time next to the simulator's
 * prediction. Prints figures; asserts nothing about speed. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/runtime.h"
#include "tools/cli_engine.h"
#include "tools/cli_options.h"
#include "tools/commands.h"
#include "tools/gemm_floor.h"
#include "tools/step_timing.h"

/* ----------------------------------------------------------------------------
 * pipelined steps */

typedef struct {
    const char *schedule;
    int pp, gpus, chunks, steps, gemm_only, host_inputs, no_idle, serial_pairs;
    uint32_t device_flags;
    dp_dtype dtype;
} bench_options;

static int bench_shape(const dp_driver *drv, const bench_options *o, int hidden, int tokens)
{
    const char *schedule = o->schedule;
    int pp = o->pp, gpus = o->gpus, chunks = o->chunks, steps = o->steps;
    gemm_floor f;
    memset(&f, 0, sizeof f);
    if (gemm_floor_measure(drv, o->device_flags, hidden, tokens, o->dtype, &f)) return 1;
    double visit_flops = 48.0 * tokens * (double)hidden * hidden;
    double visit_ms = gemm_floor_fwd(&f) + gemm_floor_bwd_in(&f) + gemm_floor_bwd_w(&f);
    printf("hidden %d, tokens %d: %s GEMMs per stage visit, after %.0f ms of them: F %.3f ms, B(input) %.3f ms "
           "(dx %.3f of it), W %.3f ms = %.3f ms (%.1f TFLOP/s)\n",
           hidden, tokens, dp_dtype_name(o->dtype), f.sustained_ms, gemm_floor_fwd(&f), gemm_floor_bwd_in(&f), f.ms[GEMM_FLOOR_B1],
           gemm_floor_bwd_w(&f), visit_ms, visit_flops / (visit_ms * 1e-3) * 1e-12);
    fflush(stdout);
    if (o->gemm_only) return 0;

    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.driver = drv->name;
    c.schedule = schedule;
    c.ranks = pp;
    c.chunks = chunks;
    c.model.hidden = hidden;
    c.model.tokens = tokens;
    c.model.seed = 1;
    c.model.dtype = o->dtype;
    c.optimizer.kind = DP_OPT_NONE; /* the reference's step: forwards and backwards, no optimizer */
    c.spread_devices = gpus > 1;
    c.device_flags = o->device_flags;
    c.serial_pairs = o->serial_pairs;
    dp_runtime *rt = NULL;
    float *x = NULL, *y = NULL, *l = NULL;
    double *t = NULL;
    int rc = 1;
    CLI_TRY(dp_runtime_create(&c, &rt));
    const dp_schedule *s = dp_runtime_schedule(rt);
    size_t n = (size_t)chunks * tokens * hidden;
    x = malloc(sizeof(float) * n), y = malloc(sizeof(float) * n), l = malloc(sizeof(float) * (size_t)chunks);
    t = malloc(sizeof(double) * (size_t)(steps + 2));
    if (!x || !y || !l || !t) {
        cli_error("out of host memory for %zu inputs", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) x[i] = dp_counter_uniform(3, 0, i), y[i] = dp_counter_uniform(3, 1, i);
    double load_ms = 0;
    if (!o->host_inputs) {
        double t0 = dp_now_ms();
        CLI_TRY(dp_runtime_load_batch(rt, x, y));
        load_ms = dp_now_ms() - t0;
    }
    for (int i = 0; i < steps + 2; i++) {
        double t0 = dp_now_ms();
        if (o->host_inputs) CLI_TRY(dp_runtime_train_step(rt, x, y, l));
        else CLI_TRY(dp_runtime_train_loaded(rt, l));
        t[i] = dp_now_ms() - t0;
        if (cli_stderr_is_tty()) fprintf(stderr, "\r  step %d/%d: %.1f ms   ", i + 1, steps + 2, t[i]);
    }
    if (cli_stderr_is_tty()) fprintf(stderr, "\r%40s\r", "");
    /* with --host-inputs the runtime copies each step's inputs and targets from pageable host
     * memory: time the same bytes once, serially, to show how much of the step they are */
    double copy_ms = 0;
    if (o->host_inputs) {
        const dp_device_ops *D = drv->device;
        dp_device *dev = NULL;
        void *buf = NULL;
        dp_device_config dc = {.ordinal = 0};
        if (D->open(&dc, &dev) == DP_OK && D->alloc(dev, sizeof(float) * n, &buf) == DP_OK) {
            double c0 = dp_now_ms();
            if (D->copy(dev, buf, x, sizeof(float) * n, DP_COPY_HOST_TO_DEVICE, NULL) == DP_OK &&
                D->copy(dev, buf, y, sizeof(float) * n, DP_COPY_HOST_TO_DEVICE, NULL) == DP_OK &&
                D->stream_synchronize(dev, NULL) == DP_OK)
                copy_ms = dp_now_ms() - c0;
        }
        if (dev) {
            D->free(dev, buf);
            D->close(dev);
        }
    }
    cli_sort_doubles(t + 2, (size_t)steps);
    double med = t[2 + steps / 2], best = t[2];
    /* visits per GPU: every micro-batch passes every stage of its pipe once; ranks sharing a
     * GPU share its work. The rate counts 48 x tokens x hidden^2 per visit, as the reference's
     * figures do; the floor counts the GEMMs really run (first stages skip one). */
    double visits = (double)chunks * s->num_stages / gpus;
    double floor_ms = gemm_floor_per_gpu(s, gpus, &f);
    double flops = visits * visit_flops;
    printf("  %-9s pp %d, %d chunks: step median %.2f ms (best %.2f), %.1f TFLOP/s per GPU; floor %.2f ms; "
           "step / floor %.3f; first loss %.6g\n",
           schedule, pp, chunks, med, best, flops / (med * 1e-3) * 1e-12, floor_ms, med / floor_ms, (double)l[0]);
    if (o->host_inputs)
        printf("  %-9s inputs and targets copied from the host each step: %.0f MB, %.2f ms when copied serially\n",
               "", 2.0 * sizeof(float) * n / 1e6, copy_ms);
    else
        printf("  %-9s inputs and targets (%.0f MB of fp32 on the host) loaded onto the GPUs once: %.2f ms\n", "",
               2.0 * sizeof(float) * n / 1e6, load_ms);
    fflush(stdout);
    if (!o->no_idle) {
        /* the same steps again with every action synchronised and timed: slower, but they give
         * the measured F, B, W and F&B times the simulator predicts each rank's idle time from */
        dp_runtime_destroy(rt);
        rt = NULL;
        c.record_times = 1;
        step_timing tm;
        if (step_timing_init(&tm, pp)) goto out;
        dp_status st = dp_runtime_create(&c, &rt);
        if (st == DP_OK) st = dp_runtime_load_batch(rt, x, y);
        for (int i = 0; i < 3 && st == DP_OK; i++) {
            st = dp_runtime_train_loaded(rt, l);
            if (st == DP_OK) step_timing_collect(&tm, rt, i > 0);
        }
        if (st == DP_OK) {
            printf("  %-9s with each action timed (2 steps after a warm-up):\n", "");
            step_timing_report(&tm, dp_runtime_schedule(rt), stdout);
        }
        step_timing_free(&tm);
        if (st != DP_OK) {
            cli_error("recorded steps: %s", dp_last_error());
            goto out;
        }
        fflush(stdout);
    }
    rc = 0;
out:
    dp_runtime_destroy(rt);
    free(x), free(y), free(l), free(t);
    return rc;
}

/* ----------------------------------------------------------------------------
 * the command */

enum { O_HIDDEN = CLI_LONG_ONLY, O_TOKENS, O_DTYPE, O_HOST_INPUTS, O_NO_IDLE, O_GEMM_ONLY, O_SHARED, O_SERIAL_PAIRS,
       O_TF32 };

static const cli_option options[] = {
    {'d', 'd', "driver", "NAME", .help = "GPU driver module (default cuda)"},
    {'s', 's', "schedule", "NAME", .help_fn = usage_schedule_names},
    {'p', 'p', "pp", "N", .help = "pipeline ranks (default 2)"},
    {'c', 'c', "chunks", "M", .help = "micro-batches per step (default 20)"},
    {O_HIDDEN, 0, "hidden", "H", .help = "one shape instead of the built-in list (1024, 2048, 4096)"},
    {O_TOKENS, 0, "tokens", "T", .help = "tokens per micro-batch for --hidden (default 2 x hidden)"},
    {'n', 'n', "steps", "S", .help = "timed steps after 2 warm-up steps (default 10)"},
    {O_DTYPE, 0, "dtype", "T", .help = "fp32 (default) or bf16 (activations and weight copies; fp32 master\n"
                                       "weights and gradients, fp32 accumulation)"},
    {O_HOST_INPUTS, 0, "host-inputs", NULL, .help = "copy inputs and targets from host memory in every step"},
    {O_NO_IDLE, 0, "no-idle", NULL, .help = "skip the recorded steps (each action timed on its own) that compare\n"
                                            "each rank's measured idle time with the simulator's prediction"},
    {O_GEMM_ONLY, 0, "gemm-only", NULL, .help = "only the GEMM floor"},
    {O_SHARED, 0, "shared", NULL, .help = "all ranks on GPU 0 (copy link) even with several GPUs"},
    {O_SERIAL_PAIRS, 0, "serial-pairs", NULL, .help = "run an overlapped F&B pair's halves one after the other on one\n"
                                                      "stream (default: on two streams at once)"},
    {O_TF32, 0, "tf32", NULL, .help = "fp32 GEMMs may use TF32 tensor cores (inputs rounded to 10-bit\n"
                                      "mantissas; default: true fp32)"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]...",
    .about = "Benchmark the CUDA driver on the example stage (Linear h->4h, GELU, Linear 4h->h, MSE), in fp32\n"
             "with TF32 off or in bf16 with fp32 accumulation: the stage's GEMMs through cuBLAS, back to\n"
             "back after a second of them (the floor of a step is the GEMMs the busiest GPU runs, as the\n"
             "schedule gives them; a first stage computes no input gradient), then pipelined steps on a\n"
             "batch loaded onto the GPUs once, as the reference's benchmark does (--host-inputs: copied\n"
             "from the host every step, as dualpipe train does). 'dualpipe bench --driver cuda' is the same.",
    .options = options,
    .epilogue = "FLOPs per GPU per step = chunks x 48 x tokens x hidden^2 x stages / pp (forward 16, backward 32),\n"
                "as the reference's figures count them.\n"
                "One GPU standing in for one rank of DualPipe on two: --schedule dualpipev --pp 1 --chunks 10\n"
                "runs the same forwards, backwards and overlapped pairs, without the transfers.\n"
                "Ranks go one per GPU where there are enough, unless --shared.\n",
};

int cmd_bench_cuda(int argc, char **argv)
{
    const char *driver = "cuda";
    bench_options o = {.schedule = "dualpipe", .pp = 2, .chunks = 20, .steps = 10, .dtype = DP_DTYPE_F32};
    int hidden = 0, tokens = 0, shared = 0;
    cli_parser p;
    int opt = cli_parse_start(&p, &spec, argc, argv);
    if (opt != CLI_GO_ON) return opt;
    while ((opt = cli_next(&p))) {
        const char *a = p.name, *val = p.value;
        int bad = 0;
        switch (opt) {
        case O_GEMM_ONLY: o.gemm_only = 1; break;
        case O_HOST_INPUTS: o.host_inputs = 1; break;
        case O_NO_IDLE: o.no_idle = 1; break;
        case O_SHARED: shared = 1; break;
        case O_SERIAL_PAIRS: o.serial_pairs = 1; break;
        case O_TF32: o.device_flags |= DP_DEVICE_ALLOW_TF32; break;
        case 'd': driver = val; break;
        case 's': o.schedule = val; break;
        case 'p': bad = cli_parse_int(a, val, 1, 64, &o.pp); break;
        case 'c': bad = cli_parse_int(a, val, 1, 4096, &o.chunks); break;
        case O_DTYPE: bad = cli_parse_dtype(a, val, &o.dtype); break;
        case O_HIDDEN: bad = cli_parse_int(a, val, 1, 1 << 16, &hidden); break;
        case O_TOKENS: bad = cli_parse_int(a, val, 1, 1 << 22, &tokens); break;
        case 'n': bad = cli_parse_int(a, val, 1, 10000, &o.steps); break;
        }
        if (bad) return CLI_EXIT_USAGE;
    }
    if (cli_no_operands(&p)) return CLI_EXIT_USAGE;
    const dp_driver *drv;
    if (dp_driver_load(driver, &drv) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    int count = 0;
    drv->device->device_count(&count);
    dp_device *dev;
    dp_device_config dc = {.ordinal = 0};
    dp_device_info info;
    if (drv->device->open(&dc, &dev) != DP_OK || drv->device->info(dev, &info) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    drv->device->close(dev);
    o.gpus = shared || count < o.pp ? 1 : o.pp;
    const char *precision = o.dtype == DP_DTYPE_BF16 ? "bf16, fp32 accumulation"
                            : o.device_flags & DP_DEVICE_ALLOW_TF32 ? "fp32, TF32 allowed"
                                                                    : "fp32, TF32 off";
    printf("dualpipe bench-cuda: %d x %s; %s; ranks %s; overlapped pairs %s\n", count, info.name, precision,
           o.gpus == 1 ? "share device 0 (copy link)" : "one per GPU (NCCL)",
           o.serial_pairs ? "one after the other" : "on two streams");
    if (hidden)
        return bench_shape(drv, &o, hidden, tokens ? tokens : 2 * hidden) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    static const int shapes[][2] = {{1024, 2048}, {2048, 4096}, {4096, 8192}};
    int rc = CLI_EXIT_OK;
    for (int i = 0; i < 3; i++)
        if (bench_shape(drv, &o, shapes[i][0], shapes[i][1])) rc = CLI_EXIT_FAIL;
    return rc;
}
