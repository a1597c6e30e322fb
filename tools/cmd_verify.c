/* cmd_verify.c: `dualpipe verify`: the proof that a driver computes what the CPU driver
 * computes. The same training steps from the same seed run on the CPU and on the driver under
 * test, in lockstep (after each step the driver takes the CPU's parameters and optimizer
 * state); every loss, gradient and parameter is compared element by element against a
 * tolerance derived in verify_tolerance.c, and the command ends with PASS (exit 0) or FAIL (1). */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/runtime.h"
#include "tools/cli_engine.h"
#include "tools/commands.h"
#include "tools/verify_check.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dualpipe verify [OPTIONS]\n"
            "Runs the same training steps from the same seed on the CPU driver and on DRIVER in lockstep (after\n"
            "each step DRIVER takes the CPU's parameters and optimizer state, so that every step starts both\n"
            "from the same state), compares every loss, gradient and parameter of every step, and prints each\n"
            "tensor's largest differences, then PASS (exit 0) or FAIL (exit 1).\n\n"
            "Options:\n"
            "  --driver NAME         driver under test (default cuda)\n"
            "  --schedule NAME       ");
    usage_schedules(out, 24, "dualpipe");
    fprintf(out,
            "  --pp N                pipeline ranks (default 4)\n"
            "  --chunks N            micro-batches per step (default 8)\n"
            "  --hidden N            model width (default 256)\n"
            "  --ffn N               inner width (default 4 x hidden)\n"
            "  --tokens N            rows per micro-batch (default 64)\n"
            "  --layers-per-stage N  blocks per stage (default 1)\n"
            "  --block mlp|residual  stage blocks (default mlp: Linear, GELU, Linear)\n"
            "  --loss mse|xent       loss (default mse)\n"
            "  --dtype fp32|bf16     activations and weight copies on both sides (default fp32); bf16 keeps\n"
            "                        fp32 master weights, gradients and optimizer state\n"
            "  --optimizer adamw|sgd|none  (default adamw)\n"
            "  --lr X                learning rate (default 1e-3)\n"
            "  --steps N             training steps (default 3)\n"
            "  --seed N              parameters and data seed (default 1)\n"
            "  --spread              one GPU per rank where there are enough (NCCL between them)\n"
            "  --serial-pairs        an overlapped F&B pair's halves one after the other on one stream\n"
            "  --atol X, --rtol X    hold losses and gradients to X x rms of the tensor + X x |cpu| instead\n"
            "                        of the derived tolerance\n"
            "  --timeout-ms N        a rank gives up waiting after this long (default 60000)\n"
            "  -q, --quiet           print only failing tensors and the verdict\n"
            "  -h, --help            show this help\n"
            "\nTolerances (derived in dualpipe(1), printed in the header): a loss or gradient element c may\n"
            "differ by eps x (rms + |c|), rms the tensor's root mean square, eps = 7 u sqrt(sum K) in fp32\n"
            "(u = 2^-24, sum K the lengths of the sums on its path: different summation orders) plus\n"
            "7 x 2^-7 sqrt(roundings / 6) in bf16 (activations rounded either side of a bf16 boundary). The\n"
            "optimizer's moments must be the CPU's moved by the gradients' difference, and a parameter the\n"
            "step replayed from the driver's own moments, within the optimizer's rounding, not leaning one\n"
            "way. Where AdamW's gradient is within its own tolerance its direction is undefined: such\n"
            "elements may end up to 2 x lr from the CPU's and are counted in the report.\n");
}

/* ----------------------------------------------------------------------------
 * the two runs */

static float *step_inputs(const dp_runtime_config *c, uint64_t seed, int step, uint64_t stream)
{
    size_t n = (size_t)c->chunks * c->model.tokens * c->model.hidden;
    float *v = malloc(sizeof(float) * (n ? n : 1));
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++) v[i] = dp_counter_uniform(seed, 1000003ull * (uint64_t)step + stream, i);
    return v;
}

static void *step_targets(const dp_runtime_config *c, uint64_t seed, int step)
{
    if (c->model.loss == DP_LOSS_MSE) return step_inputs(c, seed, step, 7);
    size_t rows = (size_t)c->chunks * c->model.tokens;
    int32_t *l = malloc(sizeof(int32_t) * (rows ? rows : 1));
    if (!l) return NULL;
    for (size_t i = 0; i < rows; i++)
        l[i] = (int32_t)((uint32_t)(dp_counter_uniform(seed, 1000003ull * (uint64_t)step + 9, i) * 1e6f + 2e6f) %
                         (uint32_t)c->model.hidden);
    return l;
}

/* ----------------------------------------------------------------------------
 * options */

typedef struct {
    dp_runtime_config c;
    const char *driver;
    int steps, quiet;
    double atol, rtol; /* < 0: derived */
} verify_options;

static const char *const blocks[] = {"mlp", "residual"}, *const losses[] = {"mse", "xent"};
static const char *const optimizers[] = {"none", "sgd", "adamw"};

/* Returns -1 to go on, or the exit status (help, a usage error). */
static int parse_options(int argc, char **argv, verify_options *o)
{
    memset(o, 0, sizeof *o);
    dp_runtime_config *c = &o->c;
    o->driver = "cuda";
    c->schedule = "dualpipe";
    c->ranks = 4;
    c->chunks = 8;
    c->model.hidden = 256;
    c->model.tokens = 64;
    c->model.layers_per_stage = 1;
    c->model.seed = 1;
    c->optimizer.kind = DP_OPT_ADAMW;
    c->optimizer.lr = 1e-3f;
    o->steps = 3;
    o->atol = o->rtol = -1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int k, bad = 0;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return CLI_EXIT_OK;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        } else if (!strcmp(a, "--spread")) {
            c->spread_devices = 1;
            continue;
        } else if (!strcmp(a, "--serial-pairs")) {
            c->serial_pairs = 1;
            continue;
        }
        if (!val) {
            cli_error("%s needs a value; run 'dualpipe verify --help'", a);
            return CLI_EXIT_USAGE;
        }
        i++;
        if (!strcmp(a, "--driver")) o->driver = val;
        else if (!strcmp(a, "--schedule")) c->schedule = val;
        else if (!strcmp(a, "--pp")) bad = cli_parse_int(a, val, 1, 1024, &c->ranks);
        else if (!strcmp(a, "--chunks")) bad = cli_parse_int(a, val, 1, 1 << 20, &c->chunks);
        else if (!strcmp(a, "--hidden")) bad = cli_parse_int(a, val, 1, 1 << 20, &c->model.hidden);
        else if (!strcmp(a, "--ffn")) bad = cli_parse_int(a, val, 0, 1 << 22, &c->model.ffn);
        else if (!strcmp(a, "--tokens")) bad = cli_parse_int(a, val, 1, 1 << 24, &c->model.tokens);
        else if (!strcmp(a, "--layers-per-stage")) bad = cli_parse_int(a, val, 1, 4096, &c->model.layers_per_stage);
        else if (!strcmp(a, "--steps")) bad = cli_parse_int(a, val, 1, 1000000, &o->steps);
        else if (!strcmp(a, "--timeout-ms")) bad = cli_parse_int(a, val, 1, 1 << 30, &c->timeout_ms);
        else if (!strcmp(a, "--seed")) {
            int s;
            bad = cli_parse_int(a, val, 0, 2147483647L, &s);
            c->model.seed = (uint64_t)s;
        } else if (!strcmp(a, "--block")) {
            bad = cli_parse_kind(a, val, blocks, 2, &k);
            c->model.block = (dp_block_kind)k;
        } else if (!strcmp(a, "--loss")) {
            bad = cli_parse_kind(a, val, losses, 2, &k);
            c->model.loss = (dp_loss_kind)k;
        } else if (!strcmp(a, "--optimizer")) {
            bad = cli_parse_kind(a, val, optimizers, 3, &k);
            c->optimizer.kind = (dp_optimizer_kind)k;
        } else if (!strcmp(a, "--lr")) {
            bad = cli_parse_double(a, val, &d);
            c->optimizer.lr = (float)d;
        } else if (!strcmp(a, "--dtype")) bad = cli_parse_dtype(a, val, &c->model.dtype);
        else if (!strcmp(a, "--atol")) bad = cli_parse_double(a, val, &o->atol);
        else if (!strcmp(a, "--rtol")) bad = cli_parse_double(a, val, &o->rtol);
        else if (!strcmp(a, "--param-atol")) {
            cli_error("--param-atol is gone: parameters are compared in lockstep against the step replayed from the "
                      "driver's own gradient (see 'dualpipe verify --help'); leave it out");
            return CLI_EXIT_USAGE;
        } else {
            cli_error("unknown option '%s'; run 'dualpipe verify --help'", a);
            return CLI_EXIT_USAGE;
        }
        if (bad) return CLI_EXIT_USAGE;
    }
    if ((o->atol < 0 && o->atol != -1) || (o->rtol < 0 && o->rtol != -1)) {
        cli_error("--atol and --rtol must not be negative");
        return CLI_EXIT_USAGE;
    }
    if (c->optimizer.kind != DP_OPT_NONE && !(c->optimizer.lr > 0)) {
        cli_error("--lr must be positive: the parameters' tolerances are in units of it");
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(o->driver, "cpu")) cli_warn("comparing the cpu driver with itself: it can only pass");
    return -1;
}

static int start_runs(const verify_options *o, dp_runtime **drv, dp_runtime **cpu)
{
    dp_runtime_config dc = o->c, cc = o->c;
    dc.driver = o->driver;
    cc.driver = "cpu";
    *drv = *cpu = NULL;
    if (dp_runtime_create(&dc, drv) != DP_OK) {
        cli_error("cannot start the %s run: %s", o->driver, dp_last_error());
        return 1;
    }
    if (dp_runtime_create(&cc, cpu) != DP_OK) {
        cli_error("cannot start the cpu run: %s", dp_last_error());
        dp_runtime_destroy(*drv);
        *drv = NULL;
        return 1;
    }
    return 0;
}

static void print_header(const verify_options *o, const verify_session *vs)
{
    const dp_model_config *m = dp_runtime_model(vs->cpu);
    const dp_optimizer_config *opt = &vs->opt;
    int bf16 = m->dtype == DP_DTYPE_BF16;
    printf("dualpipe verify: driver %s against cpu; schedule %s, pp %d, chunks %d, hidden %d, ffn %d, tokens %d, "
           "%d %s block(s) per stage, loss %s, optimizer %s (lr %g), %s, %d step(s), seed %llu\n",
           o->driver, o->c.schedule, o->c.ranks, o->c.chunks, m->hidden, m->ffn, m->tokens, m->layers_per_stage,
           blocks[m->block], losses[m->loss], optimizers[opt->kind], (double)opt->lr, dp_dtype_name(m->dtype),
           o->steps, (unsigned long long)m->seed);
    printf("tolerance: losses and gradients |%s - cpu| <= atol x rms of the tensor + rtol x |cpu|:\n", o->driver);
    const verify_tolerance *t[2] = {&vs->loss_tol, &vs->grad_tol};
    const char *what[2] = {"losses", "gradients"};
    double at[2] = {vs->loss_atol, vs->grad_atol}, rt[2] = {vs->loss_rtol, vs->grad_rtol};
    for (int i = 0; i < 2; i++) {
        printf("  %-9s atol %.3g, rtol %.3g", what[i], at[i], rt[i]);
        if (o->atol >= 0 || o->rtol >= 0) printf(" (given; derived: %.3g)\n", t[i]->eps);
        else if (bf16)
            printf(" (= 7 x 2^-24 x sqrt(sum K = %.0f) + 7 x 2^-7 x sqrt(%d bf16 roundings / 6))\n", t[i]->sum_k,
                   t[i]->roundings);
        else printf(" (= 7 x 2^-24 x sqrt(sum K = %.0f), fp32 with TF32 off)\n", t[i]->sum_k);
    }
    if (opt->kind == DP_OPT_NONE) printf("  parameters bit-equal (no optimizer)\n");
    else
        printf("  parameters: the %s step replayed from %s's own %s, within rounding; in lockstep\n",
               opt->kind == DP_OPT_ADAMW ? "AdamW" : "SGD", o->driver, opt->kind == DP_OPT_ADAMW ? "moments" : "gradient");
    printf("\n%-40s %9s  %10s  %10s  %7s  %s\n", "tensor", "elements", "max |diff|", "max rel", "use", "");
}

static int run_steps(const verify_options *o, verify_session *vs)
{
    const dp_runtime_config *c = &o->c;
    float *dl = malloc(sizeof(float) * (size_t)c->chunks), *cl = malloc(sizeof(float) * (size_t)c->chunks);
    int rc = 0;
    for (int step = 1; step <= o->steps && !rc; step++) {
        float *in = step_inputs(c, c->model.seed, step, 3);
        void *tg = step_targets(c, c->model.seed, step);
        if (!in || !tg || !dl || !cl) {
            cli_error("out of memory");
            rc = 1;
        } else if (dp_runtime_train_step(vs->drv, in, tg, dl) != DP_OK) {
            cli_error("step %d on %s: %s", step, o->driver, dp_last_error());
            rc = 1;
        } else if (dp_runtime_train_step(vs->cpu, in, tg, cl) != DP_OK) {
            cli_error("step %d on cpu: %s", step, dp_last_error());
            rc = 1;
        } else {
            verify_losses(vs, dl, cl, c->chunks);
            if (verify_tensors_and_sync(vs, step) != DP_OK) {
                cli_error("comparing step %d: %s", step, dp_last_error());
                rc = 1;
            }
        }
        free(in), free(tg);
    }
    free(dl), free(cl);
    return rc;
}

int cmd_verify(int argc, char **argv)
{
    verify_options o;
    int rc = parse_options(argc, argv, &o);
    if (rc >= 0) return rc;
    dp_runtime *drv, *cpu;
    if (start_runs(&o, &drv, &cpu)) return CLI_EXIT_FAIL;
    verify_session vs;
    rc = CLI_EXIT_FAIL;
    if (verify_session_init(&vs, drv, cpu, &o.c.optimizer, o.c.chunks, o.atol, o.rtol) != DP_OK)
        cli_error("%s", dp_last_error());
    else {
        print_header(&o, &vs);
        if (!run_steps(&o, &vs)) rc = verify_report(&vs, o.quiet, stdout) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    }
    verify_session_free(&vs);
    dp_runtime_destroy(drv);
    dp_runtime_destroy(cpu);
    return rc;
}
