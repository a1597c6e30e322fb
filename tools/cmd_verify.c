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
#include "engine/moe_routing_tape.h"
#include "engine/runtime.h"
#include "tools/cli_engine.h"
#include "tools/cli_moe.h"
#include "tools/cli_options.h"
#include "tools/commands.h"
#include "tools/verify_check.h"

/* ----------------------------------------------------------------------------
 * the two runs */

/* micro-batches of a step's global batch, every data-parallel replica's */
static int global_chunks(const dp_runtime_config *c)
{
    return c->chunks * (c->dp > 1 ? c->dp : 1) * (c->ep > 1 ? c->ep : 1);
}

static float *step_inputs(const dp_runtime_config *c, uint64_t seed, int step, uint64_t stream)
{
    size_t n = (size_t)global_chunks(c) * c->model.tokens * c->model.hidden;
    float *v = malloc(sizeof(float) * (n ? n : 1));
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++) v[i] = dp_counter_uniform(seed, 1000003ull * (uint64_t)step + stream, i);
    return v;
}

static void *step_targets(const dp_runtime_config *c, uint64_t seed, int step)
{
    if (c->model.loss == DP_LOSS_MSE) return step_inputs(c, seed, step, 7);
    size_t rows = (size_t)global_chunks(c) * c->model.tokens;
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

enum { O_HIDDEN = CLI_LONG_ONLY, O_FFN, O_TOKENS, O_LAYERS, O_BLOCK, O_LOSS, O_DTYPE, O_OPT, O_LR, O_SEED, O_SPREAD,
       O_SERIAL_PAIRS, O_NO_OVERLAP, O_ATOL, O_RTOL, O_TIMEOUT, O_PARAM_ATOL, O_DP, O_EP, O_MOE, O_MOE_END = O_MOE + CLI_MOE_NUM };

static const cli_option options[] = {
    {'d', 'd', "driver", "NAME", .help = "driver under test (default cuda)"},
    {'s', 's', "schedule", "NAME", .help_fn = usage_schedule_names},
    {'p', 'p', "pp", "N", .help = "pipeline ranks (default 4)"},
    {O_DP, 0, "dp", "N", .help = "data-parallel replicas of the pipeline on both sides (default 1),\n"
                                 "as for train; replica 0's tensors are compared"},
    {O_EP, 0, "ep", "N", .help = "expert-parallel ranks on both sides (default 1), as for train"},
    {'c', 'c', "chunks", "M", .help = "micro-batches per step (and replica) (default 8)"},
    {O_HIDDEN, 0, "hidden", "H", .help = "model width (default 256)"},
    {O_FFN, 0, "ffn", "F", .help = "inner width of a block (default 4 x hidden)"},
    {O_TOKENS, 0, "tokens", "T", .help = "rows per micro-batch (default 64)"},
    {O_LAYERS, 0, "layers-per-stage", "L", .help = "blocks per stage (default 1)"},
    {O_BLOCK, 0, "block", "KIND", .help = "mlp (default: Linear, GELU, Linear) or residual"},
    CLI_MOE_OPTIONS(O_MOE),
    {O_LOSS, 0, "loss", "KIND", .help = "mse (default) or xent"},
    {O_DTYPE, 0, "dtype", "T", .help = "fp32 (default) or bf16: activations and weight copies on both sides;\n"
                                       "bf16 keeps fp32 master weights, gradients and optimizer state"},
    {O_OPT, 0, "optimizer", "NAME", .help = "adamw (default), sgd or none"},
    {O_LR, 0, "lr", "X", .help = "learning rate (default 1e-3)"},
    {'n', 'n', "steps", "S", .help = "training steps (default 3)"},
    {O_SEED, 0, "seed", "S", .help = "seed of the parameters and the data (default 1)"},
    {O_SPREAD, 0, "spread", NULL, .help = "one GPU per rank where there are enough (NCCL between them)"},
    {O_SERIAL_PAIRS, 0, "serial-pairs", NULL, .help = "an overlapped F&B pair's halves one after the other on one stream"},
    {O_NO_OVERLAP, 0, "no-overlap", NULL, .help = "run an overlapped F&B pair's halves one after the other, each\n"
                                                  "to its end, so that no all-to-all hides under the other's\n"
                                                  "compute (the same results; for comparison)"},
    {O_ATOL, 0, "atol", "X", .help = "hold losses and gradients to X x rms of the tensor + rtol x |cpu|\n"
                                     "(default: the derived tolerance, eps)"},
    {O_RTOL, 0, "rtol", "X", .help = "hold losses and gradients to atol x rms of the tensor + X x |cpu|\n"
                                     "(default: eps)"},
    {O_TIMEOUT, 0, "timeout-ms", "MS", .help = "a rank gives up waiting for a message after MS (default 60000)"},
    {O_TIMEOUT, 0, "timeout", "MS", .deprecated = "timeout-ms"},
    {'q', 'q', "quiet", NULL, .help = "print only failing tensors and the verdict"},
    {O_PARAM_ATOL, 0, "param-atol", "X", .help = NULL}, /* gone: said so, not unknown */
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]...",
    .about = "Runs the same training steps from the same seed on the CPU driver and on DRIVER in lockstep (after\n"
             "each step DRIVER takes the CPU's parameters and optimizer state, so that every step starts both\n"
             "from the same state), compares every loss, gradient and parameter of every step, and prints each\n"
             "tensor's largest differences, then PASS (exit 0) or FAIL (exit 1).",
    .options = options,
    .epilogue = "Tolerances (derived in dualpipe(1), printed in the header): a loss or gradient element c may\n"
                "differ by eps x (rms + |c|), rms the tensor's root mean square, eps = 7 u sqrt(sum K) in fp32\n"
                "(u = 2^-24, sum K the lengths of the sums on its path: different summation orders) plus\n"
                "7 x 2^-7 sqrt(roundings / 6) in bf16 (activations rounded either side of a bf16 boundary). The\n"
                "optimizer's moments must be the CPU's moved by the gradients' difference, and a parameter the\n"
                "step replayed from the driver's own moments, within the optimizer's rounding, not leaning one\n"
                "way. Where AdamW's gradient is within its own tolerance its direction is undefined: such\n"
                "elements may end up to 2 x lr from the CPU's and are counted in the report.\n",
};

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
    cli_moe_defaults(&c->model.moe);
    unsigned moe_given = 0;

    cli_parser p;
    int opt = cli_parse_start(&p, &spec, argc, argv);
    if (opt != CLI_GO_ON) return opt;
    while ((opt = cli_next(&p))) {
        const char *a = p.name, *val = p.value;
        int k, s, bad = 0;
        double d;
        switch (opt) {
        case 'q': o->quiet = 1; break;
        case O_SPREAD: c->spread_devices = 1; break;
        case O_SERIAL_PAIRS: c->serial_pairs = 1; break;
        case O_NO_OVERLAP: c->no_overlap = 1; break;
        case 'd': o->driver = val; break;
        case 's': c->schedule = val; break;
        case 'p': bad = cli_parse_int(a, val, 1, 1024, &c->ranks); break;
        case 'c': bad = cli_parse_int(a, val, 1, 1 << 20, &c->chunks); break;
        case O_DP: bad = cli_parse_int(a, val, 1, DP_RUNTIME_MAX_RANKS, &c->dp); break;
        case O_EP: bad = cli_parse_int(a, val, 1, DP_RUNTIME_MAX_RANKS, &c->ep); break;
        case O_HIDDEN: bad = cli_parse_int(a, val, 1, 1 << 20, &c->model.hidden); break;
        case O_FFN: bad = cli_parse_int(a, val, 0, 1 << 22, &c->model.ffn); break;
        case O_TOKENS: bad = cli_parse_int(a, val, 1, 1 << 24, &c->model.tokens); break;
        case O_LAYERS: bad = cli_parse_int(a, val, 1, 4096, &c->model.layers_per_stage); break;
        case 'n': bad = cli_parse_int(a, val, 1, 1000000, &o->steps); break;
        case O_TIMEOUT: bad = cli_parse_int(a, val, 1, 1 << 30, &c->timeout_ms); break;
        case O_SEED:
            bad = cli_parse_int(a, val, 0, 2147483647L, &s);
            c->model.seed = (uint64_t)s;
            break;
        case O_BLOCK:
            bad = cli_parse_kind(a, val, blocks, 2, &k);
            c->model.block = (dp_block_kind)k;
            break;
        case O_LOSS:
            bad = cli_parse_kind(a, val, losses, 2, &k);
            c->model.loss = (dp_loss_kind)k;
            break;
        case O_OPT:
            bad = cli_parse_kind(a, val, optimizers, 3, &k);
            c->optimizer.kind = (dp_optimizer_kind)k;
            break;
        case O_LR:
            bad = cli_parse_f32(a, val, &d);
            c->optimizer.lr = (float)d;
            break;
        case O_DTYPE: bad = cli_parse_dtype(a, val, &c->model.dtype); break;
        case O_ATOL: bad = cli_parse_double(a, val, &o->atol); break;
        case O_RTOL: bad = cli_parse_double(a, val, &o->rtol); break;
        case O_PARAM_ATOL:
            cli_error("--param-atol is gone: parameters are compared in lockstep against the step replayed from the "
                      "driver's own gradient (see 'dualpipe verify --help'); leave it out");
            return CLI_EXIT_USAGE;
        default:
            if (opt >= O_MOE && opt < O_MOE_END) bad = cli_moe_option(opt - O_MOE, a, val, &c->model.moe, &moe_given);
        }
        if (bad) return CLI_EXIT_USAGE;
    }
    if (cli_no_operands(&p) || cli_moe_check(c, moe_given)) return CLI_EXIT_USAGE;
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

static int start_runs(const verify_options *o, dp_routing_tape *tape, dp_runtime **drv, dp_runtime **cpu)
{
    dp_runtime_config dc = o->c, cc = o->c;
    dc.driver = o->driver;
    cc.driver = "cpu";
    /* with MoE layers the cpu routes each token as the driver did (see routing_verdict) */
    dc.routing_tape = cc.routing_tape = tape;
    dc.routing_mode = tape ? DP_ROUTING_RECORD : DP_ROUTING_OWN;
    cc.routing_mode = tape ? DP_ROUTING_FOLLOW : DP_ROUTING_OWN;
    *drv = *cpu = NULL;
    /* As train: a driver that is not there or cannot run here (no device) is the command line's
     * problem (exit 2), not a failed comparison. */
    dp_status st = dp_runtime_create(&dc, drv);
    if (st != DP_OK) {
        cli_error("cannot start the %s run: %s", o->driver, dp_last_error());
        return st == DP_ERR_INVALID || st == DP_ERR_NOT_FOUND ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    if (dp_runtime_create(&cc, cpu) != DP_OK) {
        cli_error("cannot start the cpu run: %s", dp_last_error());
        dp_runtime_destroy(*drv);
        *drv = NULL;
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

static void print_header(const verify_options *o, const verify_session *vs)
{
    const dp_model_config *m = dp_runtime_model(vs->cpu);
    const dp_optimizer_config *opt = &vs->opt;
    int bf16 = m->dtype == DP_DTYPE_BF16;
    char dp[32] = "", moe[128] = "";
    if (o->c.dp > 1) snprintf(dp, sizeof dp, ", dp %d", o->c.dp);
    if (o->c.ep > 1) snprintf(dp + strlen(dp), sizeof dp - strlen(dp), ", ep %d", o->c.ep);
    if (m->moe.experts > 0) {
        /* which of the layers are MoE: the header's block kind names the others */
        int total = dp_runtime_schedule(vs->cpu)->num_stages * m->layers_per_stage, n = 0;
        for (int l = 0; l < total; l++) n += dp_model_layer_kind(m, l) == DP_BLOCK_MOE;
        snprintf(moe, sizeof moe, " (%d of the %d layers MoE: %d experts, top %d)", n, total, m->moe.experts,
                 m->moe.topk);
    }
    printf("dualpipe verify: driver %s against cpu; schedule %s, pp %d%s, chunks %d, hidden %d, ffn %d, tokens %d, "
           "%d %s block(s) per stage%s, loss %s, optimizer %s (lr %g), %s, %d step(s), seed %llu\n",
           o->driver, o->c.schedule, o->c.ranks, dp, o->c.chunks, m->hidden, m->ffn, m->tokens, m->layers_per_stage,
           blocks[m->block], moe, losses[m->loss], optimizers[opt->kind], (double)opt->lr, dp_dtype_name(m->dtype),
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

/* Expert choices. Where two experts' scores nearly tie, the driver's rounding may choose the
 * other one, and from there the two runs differ by more than rounding; so the cpu follows the
 * driver's choices, and each choice that differed from the cpu's own must be a tie within what
 * rounding explains: the cpu's own score margin against it at most the activations' relative
 * tolerance (the losses' atol) times the spread the rounding of the gate's input gives a score
 * (moe_routing_tape.h). A driver whose top-k is wrong loses by far more on some token. */
static void routing_verdict(const verify_options *o, verify_session *vs, dp_routing_tape *tape)
{
    dp_routing_report r = dp_routing_tape_report(tape);
    double tol = vs->loss_atol;
    vs->routing_failed = r.differed && r.worst > tol;
    if (!r.differed)
        snprintf(vs->routing_note, sizeof vs->routing_note,
                 "expert choices: the cpu's own equal %s's for all %llu token routings", o->driver,
                 (unsigned long long)r.tokens);
    else
        snprintf(vs->routing_note, sizeof vs->routing_note,
                 "expert choices: the cpu followed %s's; %llu of %llu token routings differed from the cpu's own, the cpu's "
                 "widest margin against them %.3g score spreads (layer %d, token %d), tolerance %.3g%s",
                 o->driver, (unsigned long long)r.differed, (unsigned long long)r.tokens, r.worst, r.worst_layer,
                 r.worst_token, tol, vs->routing_failed ? ": more than rounding explains" : ": ties within rounding");
}

static int run_steps(const verify_options *o, verify_session *vs, dp_routing_tape *tape)
{
    const dp_runtime_config *c = &o->c;
    int chunks = global_chunks(c);
    float *dl = malloc(sizeof(float) * (size_t)chunks), *cl = malloc(sizeof(float) * (size_t)chunks);
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
        } else if (tape && dp_routing_tape_end_step(tape) != DP_OK) {
            cli_error("step %d: following %s's expert choices: %s", step, o->driver, dp_last_error());
            rc = 1;
        } else {
            verify_losses(vs, dl, cl, chunks);
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
    dp_routing_tape *tape = NULL;
    if (o.c.model.moe.experts > 0 && dp_routing_tape_create(&tape) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    int started = start_runs(&o, tape, &drv, &cpu);
    if (started != CLI_EXIT_OK) {
        dp_routing_tape_destroy(tape);
        return started;
    }
    verify_session vs;
    rc = CLI_EXIT_FAIL;
    /* the gradients sum every replica's micro-batches: the sums' lengths are the global batch's */
    if (verify_session_init(&vs, drv, cpu, &o.c.optimizer, global_chunks(&o.c), o.atol, o.rtol) != DP_OK)
        cli_error("%s", dp_last_error());
    else {
        print_header(&o, &vs);
        if (!run_steps(&o, &vs, tape)) {
            if (tape) routing_verdict(&o, &vs, tape);
            rc = verify_report(&vs, o.quiet, stdout) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
        }
    }
    verify_session_free(&vs);
    dp_runtime_destroy(drv);
    dp_runtime_destroy(cpu);
    dp_routing_tape_destroy(tape);
    return rc;
}
