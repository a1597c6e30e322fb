/* bench_moe.c: `dualpipe bench`'s MoE figures: tokens per second of one MoE stage on the CPU
 * driver with its experts over 1, 2 and 4 expert-parallel ranks, and the bytes its dispatch and
 * combine move per step, counted from the layout the run routed (see bench_moe.h). */
#define _POSIX_C_SOURCE 200809L
#include "tools/bench_moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "engine/runtime.h"
#include "tools/cli.h"
#include "tools/cli_engine.h"

typedef struct {
    int hidden, tokens, chunks, experts, topk, groups, topk_groups, expert_hidden, shared;
} moe_shape;

/* One MoE layer as the whole stage (pp 1), the experts over `ep` ranks; the parameters stay as
 * they start (no optimizer, no bias update) so that every step routes alike. */
static dp_runtime_config moe_config(const moe_shape *sh, int ep)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.schedule = "1f1b", c.ranks = 1, c.chunks = sh->chunks, c.ep = ep;
    c.model.hidden = sh->hidden, c.model.tokens = sh->tokens, c.model.layers_per_stage = 1;
    c.model.block = DP_BLOCK_RESIDUAL, c.model.seed = 1;
    c.model.moe = (dp_moe_config){.experts = sh->experts, .topk = sh->topk, .groups = sh->groups,
                                  .topk_groups = sh->topk_groups, .expert_hidden = sh->expert_hidden,
                                  .shared_experts = sh->shared, .moe_layers_set = 1};
    c.model.moe.moe_layers[0] = 1;
    c.optimizer.kind = DP_OPT_NONE;
    return c;
}

/* The stage's parameter called `name` (value, fp32) into host, count floats. */
static int read_param(dp_runtime *rt, const char *name, float *host, size_t count)
{
    for (int i = 0; i < dp_runtime_num_params(rt, 0); i++) {
        char n[32];
        size_t got = 0;
        if (dp_runtime_read_tensor(rt, 0, 0, i, DP_TENSOR_VALUE, NULL, &got, n) != DP_OK) break;
        if (strcmp(n, name) != 0) continue;
        if (got == count && dp_runtime_read_tensor(rt, 0, 0, i, DP_TENSOR_VALUE, host, NULL, NULL) == DP_OK) return 0;
        break;
    }
    cli_error("bench --moe: no parameter %s of %zu floats: %s", name, count, dp_last_error());
    return 1;
}

/* What the step's layout moves: (token, k) rows whose expert lives on another rank than the
 * token's, the (token, rank) pairs among them, and each expert's load (to check the layout
 * against the run's own counts). */
typedef struct {
    long long remote_rows, remote_pairs, rows;
    int64_t *load; /* [experts] */
} moe_traffic;

/* The routing of every micro-batch of the step, recomputed with the run's own kernels (the
 * gate's norm, GEMM, sigmoid and group-limited top-k on a device of the same driver and thread
 * count) from the step's inputs and the stage's parameters: the stage's only layer is the MoE
 * layer, so its input is the step's. */
static int route(const dp_runtime_config *c, dp_runtime *rt, const float *x, moe_traffic *tr)
{
    const dp_model_config *m = dp_runtime_model(rt);
    const dp_moe_config *moe = &m->moe;
    int T = m->tokens, H = m->hidden, E = moe->experts, K = moe->topk, ep = c->ep, El = E / ep;
    const dp_driver *drv;
    if (dp_driver_load(c->driver ? c->driver : "cpu", &drv) != DP_OK) {
        cli_error("%s", dp_last_error());
        return 1;
    }
    const dp_device_ops *D = drv->device;
    dp_device *dev = NULL;
    void *dx = NULL, *dxn = NULL, *dnorm = NULL, *dgate = NULL, *dbias = NULL, *dscores = NULL, *drstd = NULL,
         *dexpert = NULL, *dweight = NULL;
    float *norm = malloc(sizeof(float) * (size_t)H), *gate = malloc(sizeof(float) * (size_t)E * H);
    float *bias = malloc(sizeof(float) * (size_t)E);
    int32_t *expert = malloc(sizeof(int32_t) * (size_t)T * K);
    unsigned char *to = malloc((size_t)ep);
    int rc = 1;
    if (!norm || !gate || !bias || !expert || !to) {
        cli_error("out of memory for the routing of %d tokens", T);
        goto out;
    }
    if (read_param(rt, "block0.norm", norm, (size_t)H) || read_param(rt, "block0.gate", gate, (size_t)E * H) ||
        read_param(rt, "block0.gate.bias", bias, (size_t)E))
        goto out;
    long threads = c->threads_per_rank;
    dp_device_config dc = {.threads = (int)threads};
    CLI_TRY(D->open(&dc, &dev));
    size_t act = sizeof(float) * (size_t)T * H;
    CLI_TRY(D->alloc(dev, act, &dx));
    CLI_TRY(D->alloc(dev, act, &dxn));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)H, &dnorm));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)E * H, &dgate));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)E, &dbias));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)T * E, &dscores));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)T, &drstd));
    CLI_TRY(D->alloc(dev, sizeof(int32_t) * (size_t)T * K, &dexpert));
    CLI_TRY(D->alloc(dev, sizeof(float) * (size_t)T * K, &dweight));
    CLI_TRY(D->copy(dev, dnorm, norm, sizeof(float) * (size_t)H, DP_COPY_HOST_TO_DEVICE, NULL));
    CLI_TRY(D->copy(dev, dgate, gate, sizeof(float) * (size_t)E * H, DP_COPY_HOST_TO_DEVICE, NULL));
    CLI_TRY(D->copy(dev, dbias, bias, sizeof(float) * (size_t)E, DP_COPY_HOST_TO_DEVICE, NULL));
    /* replica e (= ep rank e: no data parallelism) runs micro-batches e x chunks .. of the step */
    for (int src = 0; src < ep; src++)
        for (int j = 0; j < c->chunks; j++) {
            const float *xb = x + ((size_t)src * c->chunks + j) * T * H;
            CLI_TRY(D->copy(dev, dx, xb, act, DP_COPY_HOST_TO_DEVICE, NULL));
            CLI_TRY(D->rmsnorm_forward(dev, NULL, DP_DTYPE_F32, T, H, m->norm_eps, dx, dnorm, dxn, drstd));
            dp_gemm_args g = {0, 1, T, E, H, 1.0f, 0.0f, dxn, H, DP_DTYPE_F32, dgate, H, DP_DTYPE_F32,
                              dscores, E, DP_DTYPE_F32};
            CLI_TRY(D->gemm(dev, NULL, &g));
            CLI_TRY(D->sigmoid_forward(dev, NULL, DP_DTYPE_F32, (size_t)T * E, dscores, dscores));
            CLI_TRY(D->moe_topk(dev, NULL, T, E, moe->groups, moe->topk_groups, K, dscores, dbias, moe->route_scale,
                                dexpert, dweight));
            CLI_TRY(D->copy(dev, expert, dexpert, sizeof(int32_t) * (size_t)T * K, DP_COPY_DEVICE_TO_HOST, NULL));
            CLI_TRY(D->stream_synchronize(dev, NULL));
            for (int t = 0; t < T; t++) {
                memset(to, 0, (size_t)ep);
                for (int k = 0; k < K; k++) {
                    int e = expert[t * K + k], dst = e / El;
                    tr->load[e]++, tr->rows++;
                    if (dst == src) continue; /* kept on its own rank: not moved */
                    tr->remote_rows++;
                    if (!to[dst]) to[dst] = 1, tr->remote_pairs++;
                }
            }
        }
    rc = 0;
out:
    if (dev) {
        void *bufs[] = {dx, dxn, dnorm, dgate, dbias, dscores, drstd, dexpert, dweight};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) D->free(dev, bufs[i]);
        D->close(dev);
    }
    free(norm), free(gate), free(bias), free(expert), free(to);
    return rc;
}

/* One row of the table: 0, or nonzero having said why. */
static int bench_ep(const moe_shape *sh, int ep, int steps)
{
    dp_runtime_config c = moe_config(sh, ep);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c.threads_per_rank = cores > ep ? (int)(cores / ep) : 1;
    dp_runtime *rt;
    if (dp_runtime_create(&c, &rt) != DP_OK) {
        cli_error("bench --moe, ep %d: %s", ep, dp_last_error());
        return 1;
    }
    int B = ep * c.chunks, E = sh->experts;
    size_t n = (size_t)B * sh->tokens * sh->hidden;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *l = malloc(sizeof(float) * (size_t)B);
    double *t = malloc(sizeof(double) * (size_t)(steps + 1));
    int64_t *loads = malloc(sizeof(int64_t) * (size_t)E);
    moe_traffic tr = {.load = calloc((size_t)E, sizeof(int64_t))};
    int rc = 0;
    if (!x || !y || !l || !t || !loads || !tr.load) {
        cli_error("out of memory for a step of %zu floats", n);
        rc = 1;
    }
    for (size_t i = 0; !rc && i < n; i++) x[i] = dp_counter_uniform(7, 0, i), y[i] = dp_counter_uniform(7, 1, i);
    for (int i = 0; !rc && i <= steps; i++) { /* step 0 warms up */
        double t0 = dp_now_ms();
        if (dp_runtime_train_step(rt, x, y, l) != DP_OK) {
            cli_error("bench --moe, ep %d: %s", ep, dp_last_error());
            rc = 1;
        }
        t[i] = dp_now_ms() - t0;
    }
    if (!rc && dp_runtime_read_expert_load(rt, 0, loads) != DP_OK) {
        cli_error("bench --moe, ep %d: %s", ep, dp_last_error());
        rc = 1;
    }
    if (!rc) rc = route(&c, rt, x, &tr);
    if (!rc) {
        /* the recomputed layout must be the one the run routed: its loads are the run's */
        int same = memcmp(tr.load, loads, sizeof(int64_t) * (size_t)E) == 0;
        cli_sort_doubles(t + 1, (size_t)steps);
        double med = t[1 + steps / 2], row = (double)sh->hidden * sizeof(float);
        int El = E / ep;
        /* the counts' exchange: each source tells every other rank its El counts */
        double counts = (double)B * (ep - 1) * El * sizeof(int32_t);
        printf("  %3d %10.0f %9.2f %12.0f %12.0f %14.0f %8.1f%%%s\n", ep, (double)B * sh->tokens / (med * 1e-3), med,
               tr.remote_rows * row + counts, tr.remote_rows * row, tr.remote_pairs * row,
               tr.rows ? 100.0 * (double)(tr.rows - tr.remote_rows) / (double)tr.rows : 0.0,
               same ? "" : "  (layout differs from the run's loads)");
        fflush(stdout);
        if (!same) cli_warn("bench --moe, ep %d: the routing recomputed for the byte counts differs from the run's "
                            "expert loads; the bytes are approximate", ep);
    }
    free(x), free(y), free(l), free(t), free(loads), free(tr.load);
    dp_runtime_destroy(rt);
    return rc;
}

int bench_moe(int quick, int steps)
{
    static const moe_shape full = {.hidden = 256, .tokens = 256, .chunks = 4, .experts = 16, .topk = 4, .groups = 4,
                                   .topk_groups = 2, .expert_hidden = 128, .shared = 1};
    static const moe_shape small = {.hidden = 64, .tokens = 64, .chunks = 2, .experts = 8, .topk = 2, .groups = 4,
                                    .topk_groups = 2, .expert_hidden = 32, .shared = 1};
    const moe_shape *sh = quick ? &small : &full;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    printf("MoE stage (fp32; one MoE layer as the stage: hidden %d, %d experts in %d groups, %d kept, top %d, expert "
           "hidden %d, %d shared; %d micro-batches x %d tokens per ep rank; forward and backward, median of %d "
           "steps; %ld cores)\n",
           sh->hidden, sh->experts, sh->groups, sh->topk_groups, sh->topk, sh->expert_hidden, sh->shared, sh->chunks,
           sh->tokens, steps, cores);
    printf("  bytes per step, the forward's (the backward moves as many again, each the other way): a row is one\n"
           "  token's hidden vector; only rows to or from another rank count (kept ones are not moved); dispatch\n"
           "  includes the counts' exchange; fast combine is computed from the same layout, one row per (token,\n"
           "  destination rank), not run (exact mode is what runs)\n");
    printf("  %3s %10s %9s %12s %12s %14s %9s\n", "ep", "tokens/s", "step ms", "dispatch B", "combine B",
           "fast combine B", "kept");
    int rc = 0;
    static const int eps[] = {1, 2, 4};
    for (size_t i = 0; i < sizeof eps / sizeof *eps; i++)
        if (bench_ep(sh, eps[i], steps)) rc = 1;
    return rc;
}
