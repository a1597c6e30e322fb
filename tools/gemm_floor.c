/* gemm_floor.c: the bubble-free floor of a step for `dualpipe bench-cuda` (see gemm_floor.h). */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include "tools/gemm_floor.h"

#include <stdlib.h>

#include "engine/host_copy.h"
#include "engine/model.h"
#include "tools/cli_engine.h"

/* Timing: the stage's six GEMMs in the order a stage visit runs them, queued back to back
 * and timed with an event between each two. Two things would put the floor off and are
 * avoided: a GEMM timed between a host wait and its own launch counts the launch latency too
 * (about 10 us, a third of a GEMM at hidden 1024), and a GEMM timed in a short burst runs at
 * clocks that a step of tens of milliseconds does not keep (bf16 GEMMs draw the GPU to its
 * power limit). So the visits first run for about a second, then 15 more are timed; each
 * GEMM's median counts. */

enum { FLOOR_REPS = 15 };
#define FLOOR_SUSTAIN_MS 1000.0

double gemm_floor_fwd(const gemm_floor *f) { return f->ms[GEMM_FLOOR_F1] + f->ms[GEMM_FLOOR_F2]; }
double gemm_floor_bwd_in(const gemm_floor *f) { return f->ms[GEMM_FLOOR_B2] + f->ms[GEMM_FLOOR_B1]; }
double gemm_floor_bwd_w(const gemm_floor *f) { return f->ms[GEMM_FLOOR_W2] + f->ms[GEMM_FLOOR_W1]; }

static int time_visits(const dp_driver *drv, dp_device *dev, dp_stream *s, const dp_gemm_args *g, gemm_floor *f)
{
    const dp_device_ops *D = drv->device;
    enum { NE = FLOOR_REPS * GEMM_FLOOR_GEMMS + 1 };
    dp_event *e[NE] = {NULL};
    double t[FLOOR_REPS];
    int rc = 1;
    for (int i = 0; i < NE; i++) CLI_TRY(D->event_create(dev, &e[i]));
    /* warm-up (handles, heuristics), then one visit timed to size the sustained run */
    for (int i = 0; i < 2 * GEMM_FLOOR_GEMMS; i++) CLI_TRY(D->gemm(dev, s, &g[i % GEMM_FLOOR_GEMMS]));
    CLI_TRY(D->event_record(dev, e[0], s));
    for (int k = 0; k < GEMM_FLOOR_GEMMS; k++) CLI_TRY(D->gemm(dev, s, &g[k]));
    CLI_TRY(D->event_record(dev, e[1], s));
    CLI_TRY(D->event_synchronize(dev, e[1]));
    float one;
    CLI_TRY(D->event_elapsed(dev, e[0], e[1], &one));
    long visits = one > 0 ? (long)(FLOOR_SUSTAIN_MS / one) : 0;
    if (visits > 20000) visits = 20000;
    CLI_TRY(D->event_record(dev, e[0], s));
    for (long v = 0; v < visits; v++)
        for (int k = 0; k < GEMM_FLOOR_GEMMS; k++) CLI_TRY(D->gemm(dev, s, &g[k]));
    CLI_TRY(D->event_record(dev, e[1], s));
    CLI_TRY(D->event_synchronize(dev, e[1]));
    CLI_TRY(D->event_elapsed(dev, e[0], e[1], &one));
    f->sustained_ms = one;
    CLI_TRY(D->event_record(dev, e[0], s));
    for (int r = 0; r < FLOOR_REPS; r++)
        for (int k = 0; k < GEMM_FLOOR_GEMMS; k++) {
            CLI_TRY(D->gemm(dev, s, &g[k]));
            CLI_TRY(D->event_record(dev, e[r * GEMM_FLOOR_GEMMS + k + 1], s));
        }
    CLI_TRY(D->event_synchronize(dev, e[NE - 1]));
    for (int k = 0; k < GEMM_FLOOR_GEMMS; k++) {
        for (int r = 0; r < FLOOR_REPS; r++) {
            int i = r * GEMM_FLOOR_GEMMS + k;
            float ms;
            CLI_TRY(D->event_elapsed(dev, e[i], e[i + 1], &ms));
            t[r] = ms;
        }
        cli_sort_doubles(t, FLOOR_REPS);
        f->ms[k] = t[FLOOR_REPS / 2];
    }
    rc = 0;
out:
    for (int i = 0; i < NE; i++)
        if (e[i]) D->event_destroy(dev, e[i]);
    return rc;
}

/* The floor of one GPU: the GEMMs its ranks run in a step, as the schedule gives them. A
 * first stage computes no input gradient (nobody receives it), so its backward skips the
 * GEMM dh W1; ranks sharing a GPU add up; the busiest GPU sets the floor. */
double gemm_floor_per_gpu(const dp_schedule *sc, int gpus, const gemm_floor *f)
{
    double worst = 0;
    for (int gpu = 0; gpu < gpus; gpu++) {
        double sum = 0;
        for (int r = gpu; r < sc->num_ranks; r += gpus)
            for (int i = 0; i < sc->num_actions[r]; i++) {
                const dp_action *a = &sc->actions[r][i];
                double dx = dp_schedule_is_first_stage(sc, r, a->local_stage) ? 0 : f->ms[GEMM_FLOOR_B1];
                if (a->kind == DP_ACT_F) sum += gemm_floor_fwd(f);
                else if (a->kind == DP_ACT_B) sum += f->ms[GEMM_FLOOR_B2] + dx + gemm_floor_bwd_w(f);
                else if (a->kind == DP_ACT_I) sum += f->ms[GEMM_FLOOR_B2] + dx;
                else sum += gemm_floor_bwd_w(f);
            }
        if (sum > worst) worst = sum;
    }
    return worst;
}

int gemm_floor_measure(const dp_driver *drv, uint32_t device_flags, int hidden, int tokens, dp_dtype dt,
                       gemm_floor *f)
{
    const dp_device_ops *D = drv->device;
    dp_device *dev = NULL;
    dp_stream *s = NULL;
    void *x = NULL, *h = NULL, *w1 = NULL, *w2 = NULL, *dh = NULL, *dx = NULL, *dw1 = NULL, *dw2 = NULL, *y = NULL;
    dp_cast_staging stg = {0};
    float *host = NULL;
    int rc = 1, ffn = 4 * hidden;
    size_t th = (size_t)tokens * hidden, tf = (size_t)tokens * ffn, wf = (size_t)ffn * hidden, es = dp_dtype_size(dt);
    size_t big = tf > wf ? tf : wf;
    dp_device_config dc = {.ordinal = 0, .flags = device_flags};
    CLI_TRY(D->open(&dc, &dev));
    CLI_TRY(D->stream_create(dev, &s));
    CLI_TRY(D->alloc(dev, th * es, &x));
    CLI_TRY(D->alloc(dev, th * es, &y));
    CLI_TRY(D->alloc(dev, th * es, &dx));
    CLI_TRY(D->alloc(dev, tf * es, &h));
    CLI_TRY(D->alloc(dev, tf * es, &dh));
    CLI_TRY(D->alloc(dev, wf * es, &w1));
    CLI_TRY(D->alloc(dev, wf * es, &w2));
    CLI_TRY(D->alloc(dev, wf * 4, &dw1)); /* weight gradients are fp32 in both dtypes */
    CLI_TRY(D->alloc(dev, wf * 4, &dw2));
    /* random-ish data, not zeros: zeros run faster than real data on these GPUs */
    void *bufs[] = {x, y, dx, h, dh, w1, w2, dw1, dw2};
    size_t lens[] = {th, th, th, tf, tf, wf, wf, wf, wf};
    host = malloc(sizeof(float) * big);
    if (!host) {
        cli_error("out of host memory");
        goto out;
    }
    for (size_t i = 0; i < big; i++) host[i] = dp_counter_uniform(5, 0, i) * 0.05f;
    for (int i = 0; i < 9; i++) /* returns with the copy done */
        CLI_TRY(dp_upload_f32(D, dev, s, &stg, bufs[i], i < 7 ? dt : DP_DTYPE_F32, host, lens[i]));
    /* as engine/model.c calls them: y = x W^T; dx = dy W; dW += dy^T x (into fp32) */
    dp_gemm_args f1 = {0, 1, tokens, ffn, hidden, 1.0f, 0.0f, x, hidden, dt, w1, hidden, dt, h, ffn, dt};
    dp_gemm_args f2 = {0, 1, tokens, hidden, ffn, 1.0f, 0.0f, h, ffn, dt, w2, ffn, dt, y, hidden, dt};
    dp_gemm_args b2 = {0, 0, tokens, ffn, hidden, 1.0f, 0.0f, y, hidden, dt, w2, ffn, dt, dh, ffn, dt};
    dp_gemm_args b1 = {0, 0, tokens, hidden, ffn, 1.0f, 0.0f, dh, ffn, dt, w1, hidden, dt, dx, hidden, dt};
    dp_gemm_args w2g = {1, 0, hidden, ffn, tokens, 1.0f, 1.0f, y, hidden, dt, h, ffn, dt, dw2, ffn, DP_DTYPE_F32};
    dp_gemm_args w1g = {1, 0, ffn, hidden, tokens, 1.0f, 1.0f, dh, ffn, dt, x, hidden, dt, dw1, hidden, DP_DTYPE_F32};
    dp_gemm_args g[GEMM_FLOOR_GEMMS];
    g[GEMM_FLOOR_F1] = f1, g[GEMM_FLOOR_F2] = f2, g[GEMM_FLOOR_B2] = b2;
    g[GEMM_FLOOR_B1] = b1, g[GEMM_FLOOR_W2] = w2g, g[GEMM_FLOOR_W1] = w1g;
    if (time_visits(drv, dev, s, g, f)) goto out;
    rc = 0;
out:
    free(host);
    if (dev) {
        void *all[] = {x, y, dx, h, dh, w1, w2, dw1, dw2};
        for (int i = 0; i < 9; i++) D->free(dev, all[i]);
        dp_cast_staging_free(D, dev, &stg);
        if (s) D->stream_destroy(dev, s);
        D->close(dev);
    }
    return rc;
}

