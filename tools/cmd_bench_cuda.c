/* cmd_bench_cuda.c: `dualpipe bench-cuda`: figures for the CUDA driver, in fp32 or bf16. For
 * each model shape, the cuBLAS time of the stage's six GEMMs (the bubble-free floor of a step),
 * the median step time of a pipelined training step, its rate per GPU and its ratio to the
 * floor, then each rank's measured idle time next to the simulator's prediction. Prints
 * figures; asserts nothing about speed. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/runtime.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/step_timing.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dualpipe bench-cuda [OPTIONS]   (also: dualpipe bench --driver cuda [OPTIONS])\n"
            "Benchmark the CUDA driver on the example stage (Linear h->4h, GELU, Linear 4h->h, MSE), in fp32\n"
            "with TF32 off or in bf16 with fp32 accumulation: the stage's GEMMs alone through cuBLAS (the\n"
            "floor), then pipelined steps on a batch loaded onto the GPUs once, as the reference's\n"
            "benchmark does (--host-inputs: copied from the host every step, as dualpipe train does).\n\n"
            "  --driver NAME     GPU driver module (default cuda)\n"
            "  --schedule NAME   schedule (default dualpipe)\n"
            "  --pp N            pipeline ranks (default 2)\n"
            "  --chunks N        micro-batches per step (default 20)\n"
            "  --hidden H        one shape instead of the built-in list (1024, 2048, 4096)\n"
            "  --tokens T        tokens per micro-batch for --hidden (default 2 x hidden)\n"
            "  --steps N         timed steps after 2 warm-up steps (default 10)\n"
            "  --dtype T         fp32 (default) or bf16 (activations and weight copies; fp32 master\n"
            "                    weights and gradients, fp32 accumulation)\n"
            "  --host-inputs     copy inputs and targets from host memory in every step\n"
            "  --no-idle         skip the recorded steps (each action timed on its own) that compare each\n"
            "                    rank's measured idle time with the simulator's prediction\n"
            "  --gemm-only       only the GEMM floor\n"
            "  --shared          all ranks on GPU 0 (copy link) even with several GPUs\n"
            "  -h, --help        show this help\n\n"
            "FLOPs per GPU per step = chunks x 48 x tokens x hidden^2 x stages / pp (forward 16, backward 32).\n"
            "Ranks go one per GPU where there are enough, unless --shared.\n");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define TRY(call)                                                             \
    do {                                                                      \
        if ((call) != DP_OK) {                                                \
            cli_error("%s: %s", #call, dp_last_error());                      \
            goto out;                                                         \
        }                                                                     \
    } while (0)

/* ----------------------------------------------------------------------------
 * the floor: the stage's six GEMMs, each timed with events (median of reps) */

typedef struct {
    double fwd_ms, bwd_in_ms, bwd_w_ms; /* per micro-batch and stage, both Linears */
} gemm_floor;

static int time_gemm(const dp_driver *drv, dp_device *dev, dp_stream *s, const dp_gemm_args *g, int reps,
                     double *ms)
{
    const dp_device_ops *D = drv->device;
    dp_event *e0 = NULL, *e1 = NULL;
    double *t = malloc(sizeof(double) * (size_t)reps);
    int rc = 1;
    if (!t) return 1;
    TRY(D->event_create(dev, &e0));
    TRY(D->event_create(dev, &e1));
    for (int i = 0; i < 3; i++) TRY(D->gemm(dev, s, g)); /* warm-up: handle, heuristics, clocks */
    for (int r = 0; r < reps; r++) {
        float f;
        TRY(D->event_record(dev, e0, s));
        TRY(D->gemm(dev, s, g));
        TRY(D->event_record(dev, e1, s));
        TRY(D->event_synchronize(dev, e1));
        TRY(D->event_elapsed(dev, e0, e1, &f));
        t[r] = f;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *ms = t[reps / 2];
    rc = 0;
out:
    if (e0) D->event_destroy(dev, e0);
    if (e1) D->event_destroy(dev, e1);
    free(t);
    return rc;
}

/* n elements of dtype t on the device from fp32 host values (through tmp, fp32, n long) */
static dp_status upload_as(const dp_device_ops *D, dp_device *dev, dp_stream *s, void *dst, dp_dtype t,
                           const float *host, size_t n, void *tmp)
{
    if (t == DP_DTYPE_F32) return D->copy(dev, dst, host, n * 4, DP_COPY_HOST_TO_DEVICE, s);
    DP_CHECK(D->copy(dev, tmp, host, n * 4, DP_COPY_HOST_TO_DEVICE, s));
    return D->cast(dev, s, n, DP_DTYPE_F32, tmp, t, dst);
}

static int measure_floor(const dp_driver *drv, int hidden, int tokens, dp_dtype dt, gemm_floor *f)
{
    const dp_device_ops *D = drv->device;
    dp_device *dev = NULL;
    dp_stream *s = NULL;
    void *x = NULL, *h = NULL, *w1 = NULL, *w2 = NULL, *dh = NULL, *dx = NULL, *dw1 = NULL, *dw2 = NULL, *y = NULL;
    void *tmp = NULL;
    float *host = NULL;
    int rc = 1, ffn = 4 * hidden;
    size_t th = (size_t)tokens * hidden, tf = (size_t)tokens * ffn, wf = (size_t)ffn * hidden, es = dp_dtype_size(dt);
    size_t big = tf > wf ? tf : wf;
    dp_device_config dc = {.ordinal = 0};
    TRY(D->open(&dc, &dev));
    TRY(D->stream_create(dev, &s));
    TRY(D->alloc(dev, th * es, &x));
    TRY(D->alloc(dev, th * es, &y));
    TRY(D->alloc(dev, th * es, &dx));
    TRY(D->alloc(dev, tf * es, &h));
    TRY(D->alloc(dev, tf * es, &dh));
    TRY(D->alloc(dev, wf * es, &w1));
    TRY(D->alloc(dev, wf * es, &w2));
    TRY(D->alloc(dev, wf * 4, &dw1)); /* weight gradients are fp32 in both dtypes */
    TRY(D->alloc(dev, wf * 4, &dw2));
    TRY(D->alloc(dev, big * 4, &tmp));
    /* random-ish data, not zeros: zeros run faster than real data on these GPUs */
    void *bufs[] = {x, y, dx, h, dh, w1, w2, dw1, dw2};
    size_t lens[] = {th, th, th, tf, tf, wf, wf, wf, wf};
    host = malloc(sizeof(float) * big);
    if (!host) {
        cli_error("out of host memory");
        goto out;
    }
    for (size_t i = 0; i < big; i++) host[i] = dp_counter_uniform(5, 0, i) * 0.05f;
    for (int i = 0; i < 9; i++) TRY(upload_as(D, dev, s, bufs[i], i < 7 ? dt : DP_DTYPE_F32, host, lens[i], tmp));
    TRY(D->stream_synchronize(dev, s));
    /* as engine/model.c calls them: y = x W^T; dx = dy W; dW += dy^T x (into fp32) */
    dp_gemm_args f1 = {0, 1, tokens, ffn, hidden, 1.0f, 0.0f, x, hidden, dt, w1, hidden, dt, h, ffn, dt};
    dp_gemm_args f2 = {0, 1, tokens, hidden, ffn, 1.0f, 0.0f, h, ffn, dt, w2, ffn, dt, y, hidden, dt};
    dp_gemm_args b2 = {0, 0, tokens, ffn, hidden, 1.0f, 0.0f, y, hidden, dt, w2, ffn, dt, dh, ffn, dt};
    dp_gemm_args b1 = {0, 0, tokens, hidden, ffn, 1.0f, 0.0f, dh, ffn, dt, w1, hidden, dt, dx, hidden, dt};
    dp_gemm_args w2g = {1, 0, hidden, ffn, tokens, 1.0f, 1.0f, y, hidden, dt, h, ffn, dt, dw2, ffn, DP_DTYPE_F32};
    dp_gemm_args w1g = {1, 0, ffn, hidden, tokens, 1.0f, 1.0f, dh, ffn, dt, x, hidden, dt, dw1, hidden, DP_DTYPE_F32};
    double t[6];
    int reps = 15;
    if (time_gemm(drv, dev, s, &f1, reps, &t[0]) || time_gemm(drv, dev, s, &f2, reps, &t[1]) ||
        time_gemm(drv, dev, s, &b2, reps, &t[2]) || time_gemm(drv, dev, s, &b1, reps, &t[3]) ||
        time_gemm(drv, dev, s, &w2g, reps, &t[4]) || time_gemm(drv, dev, s, &w1g, reps, &t[5]))
        goto out;
    f->fwd_ms = t[0] + t[1];
    f->bwd_in_ms = t[2] + t[3];
    f->bwd_w_ms = t[4] + t[5];
    rc = 0;
out:
    free(host);
    if (dev) {
        void *all[] = {x, y, dx, h, dh, w1, w2, dw1, dw2, tmp};
        for (int i = 0; i < 10; i++) D->free(dev, all[i]);
        if (s) D->stream_destroy(dev, s);
        D->close(dev);
    }
    return rc;
}

/* ----------------------------------------------------------------------------
 * pipelined steps */

typedef struct {
    const char *schedule;
    int pp, gpus, chunks, steps, gemm_only, host_inputs, no_idle;
    dp_dtype dtype;
} bench_options;

static int bench_shape(const dp_driver *drv, const bench_options *o, int hidden, int tokens)
{
    const char *schedule = o->schedule;
    int pp = o->pp, gpus = o->gpus, chunks = o->chunks, steps = o->steps;
    gemm_floor f = {0, 0, 0};
    if (measure_floor(drv, hidden, tokens, o->dtype, &f)) return 1;
    double visit_flops = 48.0 * tokens * (double)hidden * hidden;
    double visit_ms = f.fwd_ms + f.bwd_in_ms + f.bwd_w_ms;
    printf("hidden %d, tokens %d: cuBLAS %s per stage visit: F %.3f ms, B(input) %.3f ms, W %.3f ms = %.3f ms "
           "(%.1f TFLOP/s)\n",
           hidden, tokens, dp_dtype_name(o->dtype), f.fwd_ms, f.bwd_in_ms, f.bwd_w_ms, visit_ms,
           visit_flops / (visit_ms * 1e-3) * 1e-12);
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
    dp_runtime *rt = NULL;
    float *x = NULL, *y = NULL, *l = NULL;
    double *t = NULL;
    int rc = 1;
    TRY(dp_runtime_create(&c, &rt));
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
        TRY(dp_runtime_load_batch(rt, x, y));
        load_ms = dp_now_ms() - t0;
    }
    for (int i = 0; i < steps + 2; i++) {
        double t0 = dp_now_ms();
        if (o->host_inputs) TRY(dp_runtime_train_step(rt, x, y, l));
        else TRY(dp_runtime_train_loaded(rt, l));
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
    qsort(t + 2, (size_t)steps, sizeof *t, cmp_double);
    double med = t[2 + steps / 2], best = t[2];
    /* visits per GPU: every micro-batch passes every stage of its pipe once; ranks sharing a
     * GPU share its work */
    double visits = (double)chunks * s->num_stages / gpus;
    double floor_ms = visits * visit_ms;
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
            if (st == DP_OK) step_timing_collect(&tm, rt, i > 0, NULL, NULL);
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

int cmd_bench_cuda(int argc, char **argv)
{
    const char *driver = "cuda";
    bench_options o = {.schedule = "dualpipe", .pp = 2, .chunks = 20, .steps = 10, .dtype = DP_DTYPE_F32};
    int hidden = 0, tokens = 0, shared = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return CLI_EXIT_OK;
        } else if (!strcmp(a, "--gemm-only")) {
            o.gemm_only = 1;
            continue;
        } else if (!strcmp(a, "--host-inputs")) {
            o.host_inputs = 1;
            continue;
        } else if (!strcmp(a, "--no-idle")) {
            o.no_idle = 1;
            continue;
        } else if (!strcmp(a, "--shared")) {
            shared = 1;
            continue;
        }
        if (!val) {
            cli_error("%s needs a value; run 'dualpipe bench-cuda --help'", a);
            return CLI_EXIT_USAGE;
        }
        i++;
        if (!strcmp(a, "--driver")) driver = val;
        else if (!strcmp(a, "--schedule")) o.schedule = val;
        else if (!strcmp(a, "--pp")) bad = cli_parse_int(a, val, 1, 64, &o.pp);
        else if (!strcmp(a, "--chunks")) bad = cli_parse_int(a, val, 1, 4096, &o.chunks);
        else if (!strcmp(a, "--dtype")) bad = cli_parse_dtype(a, val, &o.dtype);
        else if (!strcmp(a, "--hidden")) bad = cli_parse_int(a, val, 1, 1 << 16, &hidden);
        else if (!strcmp(a, "--tokens")) bad = cli_parse_int(a, val, 1, 1 << 22, &tokens);
        else if (!strcmp(a, "--steps")) bad = cli_parse_int(a, val, 1, 10000, &o.steps);
        else {
            cli_error("unknown option '%s'; run 'dualpipe bench-cuda --help'", a);
            return CLI_EXIT_USAGE;
        }
        if (bad) return CLI_EXIT_USAGE;
    }
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
    printf("dualpipe bench-cuda: %d x %s; %s; ranks %s\n", count, info.name,
           o.dtype == DP_DTYPE_BF16 ? "bf16, fp32 accumulation" : "fp32, TF32 off",
           o.gpus == 1 ? "share GPU 0 (copy link)" : "one per GPU (NCCL)");
    if (hidden)
        return bench_shape(drv, &o, hidden, tokens ? tokens : 2 * hidden) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    static const int shapes[][2] = {{1024, 2048}, {2048, 4096}, {4096, 8192}};
    int rc = CLI_EXIT_OK;
    for (int i = 0; i < 3; i++)
        if (bench_shape(drv, &o, shapes[i][0], shapes[i][1])) rc = CLI_EXIT_FAIL;
    return rc;
}
