/* cmd_train.c: `dualpipe train`: trains the pipelined model on rank threads to imitate a
 * fixed random teacher network, printing a line per step, then the measured per-rank busy and
 * idle time next to what the simulator predicts from the measured action times; optionally a
 * Chrome trace of what ran, and a side-by-side check against the single-rank reference. */
#define _GNU_SOURCE /* sched_getaffinity: the cores this process may use */
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "engine/reference.h"
#include "engine/runtime.h"
#include "tools/checkpoint.h"
#include "tools/cli_engine.h"
#include "tools/cli_moe.h"
#include "tools/cli_options.h"
#include "tools/commands.h"
#include "tools/compare.h"
#include "tools/eplb_train.h"
#include "tools/expert_load.h"
#include "tools/launch.h"
#include "tools/model_flops.h"
#include "tools/moe_plan.h"
#include "tools/step_timing.h"
#include "tools/train_data.h"
#include "tools/train_teacher.h"
#include "tools/train_trace.h"

/* ----------------------------------------------------------------------------
 * verification */

typedef struct {
    double loss, grad, param; /* largest |difference| */
    double grad_rel, param_rel;
} differences;

static int compare_params(dp_runtime *rt, dp_reference *ref, differences *df)
{
    compare_stats g = {0}, p = {0};
    if (compare_with_reference(rt, ref, 1, 0, 0, &g) != DP_OK || compare_with_reference(rt, ref, 0, 0, 0, &p) != DP_OK) {
        cli_error("%s", dp_last_error());
        return 1;
    }
    df->grad = g.max_abs, df->grad_rel = g.max_rel, df->param = p.max_abs, df->param_rel = p.max_rel;
    return 0;
}

/* ----------------------------------------------------------------------------
 * options */

enum { O_HIDDEN = CLI_LONG_ONLY, O_TOKENS, O_LAYERS, O_BLOCK, O_LOSS, O_SEED, O_OPT, O_LR, O_WD, O_MOM, O_THREADS,
       O_TIMEOUT, O_TRACE, O_VERIFY, O_SPREAD, O_DTYPE, O_SERIAL_PAIRS, O_NO_OVERLAP, O_TF32, O_INIT, O_DATA, O_SAVE_PARAMS, O_DP,
       O_SAVE, O_SAVE_EVERY, O_KEEP, O_RESUME, O_SAVE_OUTPUTS, O_DUMP_LOAD,
       O_EP, O_EPLB_EVERY, O_EPLB_WINDOW, O_MOE, O_MOE_END = O_MOE + CLI_MOE_NUM };

static const cli_option options[] = {
    {'d', 'd', "driver", "NAME", .help = "cpu (default) or a driver module (see DUALPIPE_DRIVER_PATH)"},
    {'s', 's', "schedule", "NAME", .help_fn = usage_schedule_names},
    {'p', 'p', "pp", "N", .help = "pipeline ranks (default 4)"},
    {O_DP, 0, "dp", "N", .help = "data-parallel replicas of the pipeline (default 1): N x pp\n"
                                 "ranks, world rank = replica x pp + pipeline rank; each replica\n"
                                 "runs its own M micro-batches of a global batch of N x M, and\n"
                                 "the replicas sum their gradients"},
    {O_EP, 0, "ep", "N", .help = "expert parallelism (default 1): each stage's MoE experts spread\n"
                                 "over N ranks, which run micro-batches of their own like\n"
                                 "replicas and exchange tokens at each MoE layer; the world is\n"
                                 "dp x N x pp ranks"},
    {'c', 'c', "chunks", "M", .help = "micro-batches per step and replica (default 8)"},
    {O_HIDDEN, 0, "hidden", "H", .help = "hidden size (default 256); blocks are h -> 4h -> h"},
    {O_TOKENS, 0, "tokens", "T", .help = "rows per micro-batch (default 64)"},
    {O_LAYERS, 0, "layers-per-stage", "L", .help = "blocks per stage (default 1)"},
    {O_BLOCK, 0, "block", "KIND", .help = "residual (default: pre-norm RMSNorm residual MLP blocks) or mlp\n"
                                          "(DualPipe's example stage: Linear, GELU, Linear; a deep stack\n"
                                          "of them without normalisation learns slowly)"},
    CLI_MOE_OPTIONS(O_MOE),
    {O_LOSS, 0, "loss", "KIND", .help = "mse (default; regression to the teacher's outputs) or xent\n"
                                        "(classification into the teacher's argmax over h classes)"},
    {O_DTYPE, 0, "dtype", "T", .help = "fp32 (default) or bf16: bf16 activations and weight copies,\n"
                                       "fp32 accumulation; fp32 master weights, gradients, optimizer\n"
                                       "state and losses (the cpu driver computes bf16 in fp32 and\n"
                                       "rounds each result once, as the GPU drivers do)"},
    {'n', 'n', "steps", "S", .help = "training steps (default 20; 0: only --init and --save-params)"},
    {O_SEED, 0, "seed", "S", .help = "seed of the parameters, the teacher and the data (default 1)"},
    {O_OPT, 0, "optimizer", "NAME", .help = "adamw (default) or sgd"},
    {O_LR, 0, "lr", "X", .help = "learning rate (default 1e-3 for adamw, 1e-2 for sgd)"},
    {O_WD, 0, "weight-decay", "X", .help = "default 0"},
    {O_MOM, 0, "momentum", "X", .help = "sgd momentum (default 0.9)"},
    {O_THREADS, 0, "threads", "N", .help = "kernel threads per rank (default: cores / ranks)"},
    {O_TIMEOUT, 0, "timeout-ms", "MS", .help = "a rank gives up waiting for a message after MS (default 60000)"},
    {O_TIMEOUT, 0, "timeout", "MS", .deprecated = "timeout-ms"},
    {O_SPREAD, 0, "spread", NULL, .help = "rank r on device r mod the driver's devices (one GPU per rank\n"
                                          "where there are enough); default: every rank on device 0"},
    {O_SERIAL_PAIRS, 0, "serial-pairs", NULL, .help = "run an overlapped F&B pair's halves one after the other on one\n"
                                                      "stream (default: two streams at once)"},
    {O_NO_OVERLAP, 0, "no-overlap", NULL, .help = "run an overlapped F&B pair's halves one after the other, each\n"
                                                  "to its end, so that no all-to-all hides under the other's\n"
                                                  "compute (the same results; for comparison)"},
    {O_TF32, 0, "tf32", NULL, .help = "fp32 GEMMs may use TF32 tensor cores (GPU drivers; default: true\n"
                                      "fp32; the reference of --verify then uses TF32 too)"},
    {O_TRACE, 0, "trace", "FILE", .help = "write a Chrome trace (chrome://tracing, Perfetto) of every step"},
    {O_VERIFY, 0, "verify", NULL, .help = "also run the single-rank sequential reference and report the\n"
                                          "largest differences of losses, gradients and parameters"},
    {O_INIT, 0, "init", "FILE", .help = "start from the parameters in FILE (safetensors, F32, named as a\n"
                                        "PyTorch state_dict: layers.<L>.linear1.weight, ...; see dualpipe(1))"},
    {O_DATA, 0, "data", "FILE", .help = "each step's inputs and targets from FILE (safetensors:\n"
                                        "step<k>.inputs and step<k>.targets, k = 1 .. S) instead of the teacher"},
    {O_SAVE_PARAMS, 0, "save-params", "FILE", .help = "write the final fp32 parameters to FILE, named as --init reads them"},
    {O_SAVE, 0, "save", "DIR", .help = "write checkpoints into DIR (created if new): DIR/step-N/, one\n"
                                      "safetensors file per pipeline rank and an index.json; at the\n"
                                      "end, and every --save-every steps"},
    {O_SAVE_EVERY, 0, "save-every", "N", .help = "with --save: a checkpoint every N steps too"},
    {O_KEEP, 0, "keep", "N", .help = "with --save: keep the N latest checkpoints in DIR, removing\n"
                                     "older ones as new ones are written (default: all)"},
    {O_RESUME, 0, "resume", "DIR", .help = "continue from the last checkpoint in DIR (or DIR itself, a\n"
                                           "step-N directory), on any schedule and --pp holding the same\n"
                                           "layers; --steps counts from the run's start"},
    {O_SAVE_OUTPUTS, 0, "save-outputs", "FILE", .help = "after training, write the next step's inputs and the model's\n"
                                                        "outputs for them to FILE (safetensors: inputs, outputs)"},
    {O_DUMP_LOAD, 0, "dump-expert-load", "FILE", .help = "write how many tokens each routed expert of each MoE layer\n"
                                                         "received, summed over the run's steps, to FILE as\n"
                                                         "{\"logical_count\": [[MoE layer 0's], ...]}: eplb plans from it"},
    {O_EPLB_EVERY, 0, "eplb-every", "N", .help = "rebalance the experts while training: after every N steps, plan\n"
                                                 "their placement from the loads of the last --eplb-window steps\n"
                                                 "(eplb's balanced policy from the placement running, the same\n"
                                                 "slots over the --ep ranks) and move weights and optimizer state"},
    {O_EPLB_WINDOW, 0, "eplb-window", "W", .help = "with --eplb-every: the steps whose loads it plans from (default N)"},
    {'q', 'q', "quiet", NULL, .help = "only the summary"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]...",
    .about = "Train a pipeline-parallel model on one thread per rank to imitate a fixed random teacher\n"
             "network (fresh random inputs every step), and report how the ranks spent their time.",
    .options = options,
    .epilogue = "Example: dualpipe train --schedule dualpipev --pp 2 --chunks 8 --verify\n",
};

typedef struct {
    dp_runtime_config c;
    int steps, verify, quiet, sgd;
    int follower; /* a process of the job not hosting rank 0: it takes part, quietly */
    const char *trace_path;
    const char *init_path, *data_path, *save_path; /* --init, --data, --save-params */
    const char *save_dir, *resume_dir, *outputs_path; /* --save, --resume, --save-outputs */
    const char *load_path;                            /* --dump-expert-load */
    int eplb_every, eplb_window;                      /* --eplb-every, --eplb-window (0: none) */
    int32_t *identity_plan;                           /* the placement --eplb-every starts from without --eplb-plan */
    int save_every, keep; /* --save-every, --keep (0: every checkpoint stays) */
    int first_step; /* steps already taken: those of the checkpoint resumed from */
    char resumed_from[4096];
} train_options;

enum { TRAIN_GO_ON = -1 }; /* not an exit code: the step succeeded, carry on */

/* the pipelines of the job, each with micro-batches of its own: data-parallel x expert-parallel */
static int replicas(const dp_runtime_config *c) { return (c->dp > 1 ? c->dp : 1) * (c->ep > 1 ? c->ep : 1); }
/* micro-batches of a step's global batch, every replica's */
static int global_chunks(const dp_runtime_config *c) { return c->chunks * replicas(c); }

/* Fills o from the command line: TRAIN_GO_ON, or the exit code (after --help or an error). */
static int parse_options(int argc, char **argv, train_options *o)
{
    memset(o, 0, sizeof *o);
    dp_runtime_config *c = &o->c;
    c->driver = "cpu", c->schedule = "dualpipe", c->ranks = 4, c->chunks = 8;
    c->model.hidden = 256, c->model.tokens = 64, c->model.layers_per_stage = 1;
    c->model.block = DP_BLOCK_RESIDUAL;
    cli_moe_defaults(&c->model.moe);
    unsigned moe_given = 0;
    o->steps = 20;
    int seed = 1, kind;
    /* --block names the dense layers' kind: MoE layers come from --experts */
    const char *blocks[DP_BLOCK_NUM_KINDS];
    dp_block_kind block_kinds[DP_BLOCK_NUM_KINDS];
    int num_blocks = 0;
    for (int k = 0; k < DP_BLOCK_NUM_KINDS; k++)
        if (k != DP_BLOCK_MOE)
            block_kinds[num_blocks] = (dp_block_kind)k, blocks[num_blocks++] = dp_block_kind_name((dp_block_kind)k);
    static const char *const losses[] = {"mse", "xent"};      /* as dp_loss_kind */
    static const char *const optimizers[] = {"adamw", "sgd"}; /* o->sgd: 0 or 1 */
    double lr = 0, wd = 0, momentum = 0.9;
    cli_parser p;
    int opt = cli_parse_start(&p, &spec, argc, argv);
    if (opt != CLI_GO_ON) return opt;
    while ((opt = cli_next(&p))) {
        double v;
        switch (opt) {
        case 'd': c->driver = p.value; break;
        case 's': c->schedule = p.value; break;
        case 'p': if (cli_parse_int("--pp", p.value, 1, 1024, &c->ranks)) return CLI_EXIT_USAGE; break;
        case 'c': if (cli_parse_int("--chunks", p.value, 1, 1 << 16, &c->chunks)) return CLI_EXIT_USAGE; break;
        case O_DP: if (cli_parse_int("--dp", p.value, 1, DP_RUNTIME_MAX_RANKS, &c->dp)) return CLI_EXIT_USAGE; break;
        case O_EP: if (cli_parse_int("--ep", p.value, 1, DP_RUNTIME_MAX_RANKS, &c->ep)) return CLI_EXIT_USAGE; break;
        case O_HIDDEN: if (cli_parse_int("--hidden", p.value, 1, 1 << 16, &c->model.hidden)) return CLI_EXIT_USAGE; break;
        case O_TOKENS: if (cli_parse_int("--tokens", p.value, 1, 1 << 20, &c->model.tokens)) return CLI_EXIT_USAGE; break;
        case O_LAYERS:
            if (cli_parse_int("--layers-per-stage", p.value, 1, DP_MAX_STAGE_LAYERS, &c->model.layers_per_stage)) return CLI_EXIT_USAGE;
            break;
        case O_BLOCK:
            if (cli_parse_kind("--block", p.value, blocks, num_blocks, &kind)) return CLI_EXIT_USAGE;
            c->model.block = block_kinds[kind];
            break;
        case O_LOSS:
            if (cli_parse_kind("--loss", p.value, losses, 2, &kind)) return CLI_EXIT_USAGE;
            c->model.loss = (dp_loss_kind)kind;
            break;
        case 'n': if (cli_parse_int("--steps", p.value, 0, 1 << 24, &o->steps)) return CLI_EXIT_USAGE; break;
        case O_SEED: if (cli_parse_int("--seed", p.value, 0, 2147483647, &seed)) return CLI_EXIT_USAGE; break;
        case O_OPT:
            if (cli_parse_kind("--optimizer", p.value, optimizers, 2, &o->sgd)) return CLI_EXIT_USAGE;
            break;
        case O_LR:
        case O_WD:
        case O_MOM:
            if (cli_parse_f32(opt == O_LR ? "--lr" : opt == O_WD ? "--weight-decay" : "--momentum", p.value, &v))
                return CLI_EXIT_USAGE;
            if (v < 0 || (opt == O_LR && v == 0) || (opt == O_MOM && v >= 1)) {
                cli_error("%s must be %s, got %s", opt == O_LR ? "--lr" : opt == O_WD ? "--weight-decay" : "--momentum",
                          opt == O_LR ? "> 0" : opt == O_WD ? ">= 0" : "in [0, 1)", p.value);
                return CLI_EXIT_USAGE;
            }
            if (opt == O_LR) lr = v;
            else if (opt == O_WD) wd = v;
            else momentum = v;
            break;
        case O_THREADS:
            if (cli_parse_int("--threads", p.value, 1, 1024, &c->threads_per_rank)) return CLI_EXIT_USAGE;
            break;
        case O_TIMEOUT:
            if (cli_parse_int("--timeout-ms", p.value, 1, 86400000, &c->timeout_ms)) return CLI_EXIT_USAGE;
            break;
        case O_TRACE: o->trace_path = p.value; break;
        case O_INIT: o->init_path = p.value; break;
        case O_DATA: o->data_path = p.value; break;
        case O_SAVE_PARAMS: o->save_path = p.value; break;
        case O_SAVE: o->save_dir = p.value; break;
        case O_SAVE_EVERY:
            if (cli_parse_int("--save-every", p.value, 1, 1 << 24, &o->save_every)) return CLI_EXIT_USAGE;
            break;
        case O_KEEP:
            if (cli_parse_int("--keep", p.value, 1, 1 << 24, &o->keep)) return CLI_EXIT_USAGE;
            break;
        case O_RESUME: o->resume_dir = p.value; break;
        case O_SAVE_OUTPUTS: o->outputs_path = p.value; break;
        case O_DUMP_LOAD: o->load_path = p.value; break;
        case O_EPLB_EVERY:
            if (cli_parse_int("--eplb-every", p.value, 1, 1 << 24, &o->eplb_every)) return CLI_EXIT_USAGE;
            break;
        case O_EPLB_WINDOW:
            if (cli_parse_int("--eplb-window", p.value, 1, 1 << 24, &o->eplb_window)) return CLI_EXIT_USAGE;
            break;
        case O_VERIFY: o->verify = 1; break;
        case O_SPREAD: c->spread_devices = 1; break;
        case O_SERIAL_PAIRS: c->serial_pairs = 1; break;
        case O_NO_OVERLAP: c->no_overlap = 1; break;
        case O_TF32: c->device_flags |= DP_DEVICE_ALLOW_TF32; break;
        case O_DTYPE: if (cli_parse_dtype("--dtype", p.value, &c->model.dtype)) return CLI_EXIT_USAGE; break;
        case 'q': o->quiet = 1; break;
        default:
            if (opt >= O_MOE && opt < O_MOE_END && cli_moe_option(opt - O_MOE, p.name, p.value, &c->model.moe, &moe_given))
                return CLI_EXIT_USAGE;
        }
    }
    if (cli_no_operands(&p) || cli_moe_check(c, moe_given)) return CLI_EXIT_USAGE;
    if ((o->save_every || o->keep) && !o->save_dir) {
        cli_error("%s needs --save DIR: the directory the checkpoints go to", o->save_every ? "--save-every" : "--keep");
        return CLI_EXIT_USAGE;
    }
    if (o->resume_dir && o->init_path) {
        cli_error("--resume and --init both give the parameters: name one of them");
        return CLI_EXIT_USAGE;
    }
    if (o->eplb_window && !o->eplb_every) {
        cli_error("--eplb-window needs --eplb-every N: how often to rebalance");
        return CLI_EXIT_USAGE;
    }
    if (o->eplb_every && !o->eplb_window) o->eplb_window = o->eplb_every;
    if (o->eplb_every && c->model.moe.experts == 0) {
        cli_error("--eplb-every balances the experts of MoE layers, which need --experts N");
        return CLI_EXIT_USAGE;
    }
    if (o->eplb_every && !c->model.moe.plan_phy2log && moe_plan_identity(c, &o->identity_plan)) return CLI_EXIT_USAGE;
    if (o->load_path && c->model.moe.experts == 0) {
        cli_error("--dump-expert-load needs MoE layers: give --experts N");
        return CLI_EXIT_USAGE;
    }
    long long step_tokens = (long long)global_chunks(c) * c->model.tokens;
    if ((o->load_path || o->eplb_every) && step_tokens > EXPERT_LOAD_MAX_STEP_TOKENS) {
        cli_error("%s: a step of %lld tokens (%d micro-batches x %d) is past the %lld for which the "
                  "per-step counts are exact (fp32); use fewer tokens or micro-batches per step",
                  o->load_path ? "--dump-expert-load" : "--eplb-every", step_tokens, global_chunks(c), c->model.tokens,
                  EXPERT_LOAD_MAX_STEP_TOKENS);
        return CLI_EXIT_USAGE;
    }
    c->model.seed = (uint64_t)seed;
    c->optimizer.kind = o->sgd ? DP_OPT_SGD : DP_OPT_ADAMW;
    c->optimizer.lr = (float)(lr > 0 ? lr : o->sgd ? 1e-2 : 1e-3);
    c->optimizer.weight_decay = (float)wd;
    c->optimizer.momentum = o->sgd ? (float)momentum : 0.0f;
    c->record_times = 1;
    if (c->threads_per_rank == 0) {
        /* resolved here so that the teacher and the reference use the ranks' count too: the
         * BLAS library's thread count is process-wide */
        long cores = sysconf(_SC_NPROCESSORS_ONLN), world = (long)c->ranks * replicas(c);
        c->threads_per_rank = cores > world ? (int)(cores / world) : 1;
    }
    return TRAIN_GO_ON;
}

/* ----------------------------------------------------------------------------
 * the runtime and what a step needs */

typedef struct {
    dp_runtime *rt;
    dp_reference *ref; /* with --verify */
    train_teacher teacher;
    train_data data; /* with --data */
    const dp_driver *drv;
    const dp_model_config *m;
    const dp_schedule *s;
    size_t n;        /* floats of a step's input */
    float *x;        /* a step's input */
    void *targets;   /* and the teacher's targets for it */
    float *losses, *ref_losses; /* per micro-batch */
    step_timing tm;
    double flops_per_step;
    expert_load *loads; /* with --dump-expert-load */
    eplb_train *eplb;   /* with --eplb-every */
} train_state;

/* TRAIN_GO_ON, or the exit code having said why not (free t either way). */
static int build_runtime(const train_options *o, train_state *t)
{
    const dp_runtime_config *c = &o->c;
    dp_status st = dp_runtime_create(c, &t->rt);
    if (st != DP_OK) {
        cli_error("%s", dp_last_error());
        return st == DP_ERR_INVALID || st == DP_ERR_NOT_FOUND ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    t->m = dp_runtime_model(t->rt);
    t->s = dp_runtime_schedule(t->rt);
    if (o->verify && !o->follower && dp_reference_create(c, &t->ref) != DP_OK) {
        cli_error("cannot start the reference: %s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    int chunks = global_chunks(c);
    t->n = (size_t)chunks * t->m->tokens * t->m->hidden;
    t->x = malloc(sizeof(float) * t->n);
    t->targets = malloc(dp_model_host_target_bytes(t->m) * (size_t)chunks);
    t->losses = calloc((size_t)chunks, sizeof(float));
    t->ref_losses = calloc((size_t)chunks, sizeof(float));
    if (step_timing_init(&t->tm, t->s->num_ranks * replicas(c))) return CLI_EXIT_FAIL;
    t->tm.no_overlap = c->no_overlap;
    if (!t->x || !t->targets || !t->losses || !t->ref_losses) {
        cli_error("out of memory for a step of %zu floats", t->n);
        return CLI_EXIT_FAIL;
    }
    if (train_teacher_open(&t->teacher, c->driver, t->m, chunks, c->model.seed, c->threads_per_rank))
        return CLI_EXIT_FAIL;
    int rc;
    if (o->init_path && (rc = train_params_load(t->rt, t->ref, o->init_path)) != 0) return rc;
    if (o->data_path && (rc = train_data_open(&t->data, o->data_path, t->m, chunks, o->steps)) != 0) return rc;
    dp_driver_load(c->driver, &t->drv); /* loaded already, by the runtime and the teacher */
    /* every micro-batch crosses every layer: its GEMMs forward, twice as many backward */
    t->flops_per_step = model_train_step_flops(t->m, t->m->layers_per_stage * t->s->num_stages, chunks);
    return TRAIN_GO_ON;
}

static void free_runtime(train_state *t)
{
    train_teacher_close(&t->teacher);
    train_data_close(&t->data);
    dp_reference_destroy(t->ref);
    dp_runtime_destroy(t->rt);
    free(t->x), free(t->targets), free(t->losses), free(t->ref_losses);
    step_timing_free(&t->tm);
}

/* ----------------------------------------------------------------------------
 * the training loop */

typedef struct {
    double first_loss, last_loss;
    double *step_ms; /* [steps] */
    differences df;  /* with --verify; the losses' here, the rest from compare_params */
} train_results;

/* The inputs of step `step` as the teacher's generator makes them: a pure function of the
 * seed and the step, so that a resumed run continues the same sequence. */
static void generated_inputs(const train_options *o, const train_state *t, int step)
{
    for (size_t i = 0; i < t->n; i++) t->x[i] = dp_counter_uniform(o->c.model.seed, 0x5eed0000ull + (uint64_t)step, i);
}

static const char *data_source(const train_options *o) { return o->data_path ? "file" : "teacher"; }

/* A checkpoint after `step` steps (in every process of the job): 0, or the exit code. */
static int save_checkpoint(const train_options *o, train_state *t, int step)
{
    checkpoint_run run = {&o->c, data_source(o)};
    return checkpoint_save(t->rt, &run, o->save_dir, step, o->keep, o->quiet);
}

/* 0, or nonzero (the exit code) having said why a step failed. */
static int train_loop(const train_options *o, train_state *t, train_trace *trace, train_results *res)
{
    const dp_runtime_config *c = &o->c;
    const dp_model_config *m = t->m;
    int steps = o->steps, tty = cli_stderr_is_tty() && !o->quiet, chunks = global_chunks(c);
    int first = o->first_step + 1, run_steps = steps - o->first_step, saved = -1;
    double run_t0 = dp_now_ms();
    res->step_ms = calloc(run_steps > 0 ? (size_t)run_steps : 1, sizeof(double));
    if (!res->step_ms) {
        cli_error("out of memory for the times of %d steps", steps);
        return 1;
    }
    for (int step = first; step <= steps; step++) {
        if (t->data.f) {
            if (train_data_step(&t->data, step, t->x, t->targets)) return 1;
        } else {
            generated_inputs(o, t, step);
            if (train_teacher_targets(&t->teacher, m, chunks, t->x, t->targets)) return 1;
        }
        if (tty) fprintf(stderr, "\r  step %d/%d ...", step, steps), fflush(stderr);
        double t0 = dp_now_ms();
        dp_status st = dp_runtime_train_step(t->rt, t->x, t->targets, t->losses);
        double ms = dp_now_ms() - t0;
        if (tty) fprintf(stderr, "\r%*s\r", 40, ""), fflush(stderr);
        if (st != DP_OK) {
            cli_error("step %d failed: %s", step, dp_last_error());
            return 1;
        }
        step_timing_collect(&t->tm, t->rt, step > first || run_steps == 1);
        if (t->loads && expert_load_add_step(t->loads, t->rt)) return 1;
        if (t->eplb && eplb_train_add_step(t->eplb, t->rt)) return 1;
        if (trace && train_trace_add_step(trace, t->rt, dp_runtime_step_start(t->rt) - run_t0)) return 1;
        res->step_ms[step - first] = ms;
        double loss = 0;
        for (int k = 0; k < chunks; k++) loss += t->losses[k];
        loss /= chunks;
        if (step == first) res->first_loss = loss;
        res->last_loss = loss;
        if (t->ref) {
            if (dp_reference_train_step(t->ref, t->x, t->targets, t->ref_losses) != DP_OK) {
                cli_error("reference step %d failed: %s", step, dp_last_error());
                return 1;
            }
            for (int k = 0; k < chunks; k++) {
                double d = fabs((double)t->losses[k] - t->ref_losses[k]);
                if (d != d) d = INFINITY;
                res->df.loss = d > res->df.loss ? d : res->df.loss;
            }
        }
        if (!o->quiet)
            printf("step %4d/%d  loss %.6f  time %8.2f ms  %10.0f tokens/s  %6.2f GFLOP/s\n", step, steps, loss, ms,
                   (double)chunks * m->tokens / (ms * 1e-3), t->flops_per_step / (ms * 1e-3) * 1e-9);
        fflush(stdout);
        if (o->save_dir && ((o->save_every && step % o->save_every == 0) || step == steps)) {
            int rc = save_checkpoint(o, t, step);
            if (rc) return rc;
            saved = step;
        }
        /* after the checkpoint, so that a failed move leaves the step's checkpoint written; not
         * after the last step, which nothing follows */
        if (t->eplb && step < steps) {
            int rc = eplb_train_after_step(t->eplb, t->rt, step, o->quiet);
            if (rc) return rc;
            fflush(stdout);
        }
    }
    /* no step ran (--steps 0, or a run resumed at its last step): the state as it is */
    if (o->save_dir && saved != steps) return save_checkpoint(o, t, steps);
    return 0;
}

/* --resume: the state of the checkpoint DIR means, in every process. TRAIN_GO_ON or the exit code. */
static int resume(train_options *o, train_state *t)
{
    char path[4096];
    int rc = checkpoint_find("--resume", o->resume_dir, path, sizeof path);
    checkpoint_run run = {&o->c, data_source(o)};
    int step = 0;
    if (rc == 0) rc = checkpoint_load(t->rt, t->ref, &run, path, &step);
    if (rc) return rc;
    if (step > o->steps) {
        cli_error("--resume %s: the checkpoint is of step %d, past --steps %d (which counts every step of the run, "
                  "those before the checkpoint too): give --steps %d or more",
                  path, step, o->steps, step);
        return CLI_EXIT_USAGE;
    }
    o->first_step = step;
    /* the teacher scales its targets by its first batch's: that of step 1, as in the run resumed */
    if (step > 0 && !t->data.f) {
        generated_inputs(o, t, 1);
        if (train_teacher_targets(&t->teacher, t->m, global_chunks(&o->c), t->x, t->targets)) return CLI_EXIT_FAIL;
    }
    snprintf(o->resumed_from, sizeof o->resumed_from, "%s", path);
    return TRAIN_GO_ON;
}

/* --save-outputs: the model's outputs for step steps + 1's generated inputs (every process
 * takes part; the root writes). 0, or the exit code. */
static int save_outputs(const train_options *o, train_state *t, output_file *out)
{
    generated_inputs(o, t, o->steps + 1);
    float *y = malloc(sizeof(float) * t->n);
    if (!y) {
        cli_error("out of memory for the outputs (%zu floats)", t->n);
        return CLI_EXIT_FAIL;
    }
    dp_status st = dp_runtime_infer(t->rt, t->x, y);
    dp_safetensors_writer *w = NULL;
    int64_t shape[3] = {global_chunks(&o->c), t->m->tokens, t->m->hidden};
    char step[32];
    snprintf(step, sizeof step, "%d", o->steps + 1);
    if (st == DP_OK && !o->follower) {
        st = dp_safetensors_writer_create(&w);
        if (st == DP_OK) st = dp_safetensors_add_metadata(w, "format", "pt");
        if (st == DP_OK) st = dp_safetensors_add_metadata(w, "step", step);
        if (st == DP_OK) st = dp_safetensors_add(w, "inputs", DP_ST_F32, 3, shape, t->x);
        if (st == DP_OK) st = dp_safetensors_add(w, "outputs", DP_ST_F32, 3, shape, y);
        if (st == DP_OK) st = dp_safetensors_write_stream(w, out->fp, out->path ? out->path : "<stdout>");
    }
    free(y);
    dp_safetensors_writer_destroy(w);
    if (st != DP_OK) {
        cli_error("--save-outputs: %s", dp_last_error());
        output_file_abort(out);
        return CLI_EXIT_FAIL;
    }
    if (o->follower) return CLI_EXIT_OK;
    if (output_file_commit(out)) return CLI_EXIT_FAIL;
    if (!o->quiet) printf("inputs and outputs of step %d written to %s\n", o->steps + 1, o->outputs_path);
    return CLI_EXIT_OK;
}

/* ----------------------------------------------------------------------------
 * reporting */

static void print_header(const train_options *o, const train_state *t)
{
    const dp_model_config *m = t->m;
    const dp_schedule *s = t->s;
    int dp = replicas(&o->c);
    char ranks[64], batch[64];
    snprintf(ranks, sizeof ranks, "%d ranks", s->num_ranks);
    snprintf(batch, sizeof batch, "%d micro-batches", o->c.chunks);
    if (o->c.ep > 1) {
        snprintf(ranks, sizeof ranks, "%d ranks (dp %d x ep %d x pp %d)", dp * s->num_ranks, dp / o->c.ep, o->c.ep,
                 s->num_ranks);
        snprintf(batch, sizeof batch, "%d micro-batches (%d per pipeline)", global_chunks(&o->c), o->c.chunks);
    } else if (dp > 1) {
        snprintf(ranks, sizeof ranks, "%d ranks (dp %d x pp %d)", dp * s->num_ranks, dp, s->num_ranks);
        snprintf(batch, sizeof batch, "%d micro-batches (%d per replica)", global_chunks(&o->c), o->c.chunks);
    }
    printf("dualpipe train: %s on %s (%d stages), %s x %d tokens, hidden %d, %d %s block%s per "
           "stage, %s loss, %s, %s, driver %s\n",
           s->name, ranks, s->num_stages, batch, m->tokens, m->hidden,
           m->layers_per_stage, m->block == DP_BLOCK_MLP ? "mlp" : "residual", m->layers_per_stage > 1 ? "s" : "",
           m->loss == DP_LOSS_MSE ? "mse" : "xent", o->sgd ? "sgd" : "adamw", dp_dtype_name(m->dtype), t->drv->name);
    if (m->moe.experts > 0) {
        char layers[256] = "";
        int total = s->num_stages * m->layers_per_stage, listed = 0;
        for (int l = 0; l < total && strlen(layers) < sizeof layers - 16; l++)
            if (dp_model_layer_kind(m, l) == DP_BLOCK_MOE)
                snprintf(layers + strlen(layers), sizeof layers - strlen(layers), "%s%d", listed++ ? "," : "", l);
        printf("moe: layers %s of %d; %d experts in %d group(s), %d kept, top %d, expert hidden %d, %d shared, "
               "route scale %g, bias update speed %g\n",
               listed ? layers : "none", total, m->moe.experts, m->moe.groups, m->moe.topk_groups, m->moe.topk,
               m->moe.expert_hidden, m->moe.shared_experts, (double)m->moe.route_scale,
               (double)m->moe.bias_update_speed);
        cli_moe_print_placement(m, o->c.ep);
    }
    if (dp > 1)
        printf("layout: world rank = replica x %d + pipeline rank; replica d holds ranks %d d .. %d d + %d and runs "
               "micro-batches %d d .. %d d + %d of each step; gradients summed within each replica, then over the "
               "replicas in replica order\n",
               s->num_ranks, s->num_ranks, s->num_ranks, s->num_ranks - 1, o->c.chunks, o->c.chunks, o->c.chunks - 1);
    fflush(stdout);
}

/* The cores this process may run on (its affinity mask where there is one, as nproc says). */
static long usable_cores(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    return sysconf(_SC_NPROCESSORS_ONLN);
}

/* The losses, the median step (the first includes warm-up), and how the ranks spent their time. */
static void print_summary(const train_options *o, const train_state *t, train_results *res)
{
    int steps = o->steps - o->first_step; /* this run's */
    double *step_ms = res->step_ms;
    for (int i = 1; i < steps; i++)
        for (int j = i; j > 0 && step_ms[j - 1] > step_ms[j]; j--) {
            double x = step_ms[j];
            step_ms[j] = step_ms[j - 1], step_ms[j - 1] = x;
        }
    double med = step_ms[steps / 2];
    printf("loss %.6f -> %.6f over %d steps (%s); median step %.2f ms, %.0f tokens/s, %.2f GFLOP/s\n", res->first_loss,
           res->last_loss, steps, res->last_loss < res->first_loss ? "learning" : "not falling", med,
           (double)global_chunks(&o->c) * t->m->tokens / (med * 1e-3), t->flops_per_step / (med * 1e-3) * 1e-9);
    step_timing_report(&t->tm, t->s, stdout);
    /* On the cpu driver every rank is a thread: with more of them than cores, a rank ready to
     * run waits for a core, and that wait is measured as idle, which the simulation (a core
     * per rank) does not have. Said here so that the two columns are not read as a failure. */
    /* under a launcher, this process's ranks and its own cores (mpirun may bind it to one) */
    long cores = usable_cores(), world = (long)o->c.ranks * replicas(&o->c);
    long here = o->c.local_ranks > 0 && o->c.local_ranks < world ? o->c.local_ranks : world;
    long threads = here * (o->c.threads_per_rank > 0 ? o->c.threads_per_rank : 1);
    if (strcmp(o->c.driver, "cpu") == 0 && cores > 0 && threads > cores)
        printf("note: %ld rank threads%s%s share %ld CPU core%s, so ranks take turns on the cores: "
               "measured idle includes that time-sharing, which the simulation (a core per rank) "
               "leaves out; with no more rank threads than cores the two columns compare\n",
               here, o->c.threads_per_rank > 1 ? " (and their kernel threads)" : "",
               here < world ? " of rank 0's process" : "", cores, cores > 1 ? "s" : "");
}

/* The differences from the single-rank reference: the exit code. */
static int report_verify(const train_options *o, train_state *t, differences *df)
{
    if (compare_params(t->rt, t->ref, df)) return CLI_EXIT_FAIL;
    if (o->follower) return CLI_EXIT_OK; /* the process hosting rank 0 compares and reports */
    int exact = df->loss == 0 && df->grad == 0 && df->param == 0;
    printf("verify against the single-rank reference (%d steps): largest |difference| of losses %.3g, gradients "
           "%.3g (relative %.3g), parameters %.3g (relative %.3g): %s\n",
           o->steps, df->loss, df->grad, df->grad_rel, df->param, df->param_rel, exact ? "bit-equal" : "DIFFERENT");
    /* the cpu driver is bit-exact by construction; other drivers are held to fp32 rounding */
    if (!exact && (strcmp(t->drv->name, "cpu") == 0 || df->param_rel > 1e-4 || df->loss > 1e-5)) return CLI_EXIT_FAIL;
    return CLI_EXIT_OK;
}

/* ----------------------------------------------------------------------------
 * the trace */

static int write_trace(const train_options *o, const train_state *t, train_trace *trace)
{
    char title[128];
    char of_replica[48] = "";
    if (replicas(&o->c) > 1) snprintf(of_replica, sizeof of_replica, " (replica 0 of dp %d)", replicas(&o->c));
    snprintf(title, sizeof title, "%s pp %d chunks %d hidden %d%s", t->s->name, o->c.ranks, o->c.chunks, t->m->hidden,
             of_replica);
    if (train_trace_write(trace, t->s, title)) return 1;
    printf("trace of %zu actions%s written to %s\n", train_trace_actions(trace), of_replica, o->trace_path);
    return 0;
}

/* ----------------------------------------------------------------------------
 * the command */

/* A process not hosting rank 0 takes part in the reads of train_params_save, in its order. */
static int follow_params_save(dp_runtime *rt)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    for (int st = 0; st < s->num_stages; st++)
        for (int i = 0; i < dp_runtime_num_params(rt, st); i++) {
            size_t n = 0;
            float *buf = NULL;
            dp_status e = dp_runtime_read_tensor(rt, st, 0, i, DP_TENSOR_VALUE, NULL, &n, NULL);
            if (e == DP_OK && !(buf = malloc(sizeof(float) * (n ? n : 1)))) e = DP_ERR_NOMEM;
            if (e == DP_OK) e = dp_runtime_read_tensor(rt, st, 0, i, DP_TENSOR_VALUE, buf, &n, NULL);
            free(buf);
            if (e != DP_OK) {
                cli_error("--save-params: %s", e == DP_ERR_NOMEM ? "out of memory" : dp_last_error());
                return CLI_EXIT_FAIL;
            }
        }
    return CLI_EXIT_OK;
}

static int run_train(train_options *o);

int cmd_train(int argc, char **argv)
{
    train_options o;
    int rc = parse_options(argc, argv, &o);
    if (rc != TRAIN_GO_ON) return rc;
    const named_path outputs[] = {{"--trace", o.trace_path}, {"--save-params", o.save_path},
                                  {"--save-outputs", o.outputs_path}, {"--dump-expert-load", o.load_path}};
    const named_path inputs[] = {{"--init", o.init_path}, {"--data", o.data_path}};
    if ((rc = output_files_check(outputs, 4, inputs, 2)) != 0) return rc;
    launch job;
    if ((rc = launch_begin(&job)) != 0) return rc;
    rc = launch_place(&job, &o.c, o.c.ranks * replicas(&o.c));
    /* a rank of an expert-parallel run holds some of a stage's experts: in one process the
     * checkpoint gathers them through the link; across processes that is not written yet */
    int world = o.c.ranks * replicas(&o.c);
    if (rc == 0 && o.c.ep > 1 && (o.save_dir || o.resume_dir) && o.c.local_ranks > 0 && o.c.local_ranks < world) {
        cli_error("%s with --ep %d in several processes: checkpoints of expert-parallel runs are written and "
                  "read in one process only, so far; run it as one process, or without --ep",
                  o.save_dir ? "--save" : "--resume", o.c.ep);
        rc = CLI_EXIT_USAGE;
    }
    if (rc == 0) {
        o.follower = !launch_is_root(&job);
        if (o.follower) o.quiet = 1, o.trace_path = NULL;
        rc = run_train(&o);
    }
    launch_end(&job, rc);
    return rc;
}

static int run_train(train_options *o_in)
{
    train_options o = *o_in;
    int rc;
    train_trace trace = {0};
    output_file params = {0}, outputs = {0}, loads_file = {0};
    /* every output is checked before anything runs, so that a bad path fails first */
    if (o.save_dir && (rc = checkpoint_prepare(o.save_dir, o.resume_dir != NULL)) != 0) return rc;
    if (o.trace_path && train_trace_open(&trace, o.trace_path)) return CLI_EXIT_USAGE;
    if ((o.save_path && !o.follower && output_file_open(&params, o.save_path)) ||
        (o.outputs_path && !o.follower && output_file_open(&outputs, o.outputs_path)) ||
        (o.load_path && !o.follower && output_file_open(&loads_file, o.load_path))) {
        train_trace_close(&trace);
        output_file_abort(&params);
        output_file_abort(&outputs);
        return CLI_EXIT_USAGE;
    }
    train_state t = {0};
    train_results res = {0};
    expert_load loads = {0};
    eplb_train eplb = {0};
    rc = build_runtime(&o, &t);
    if (rc == TRAIN_GO_ON && o.eplb_every) {
        int e = eplb_train_init(&eplb, t.rt, o.eplb_every, o.eplb_window, o.c.ep);
        if (e) rc = e;
        else t.eplb = &eplb;
    }
    if (rc == TRAIN_GO_ON && o.load_path) {
        int e = expert_load_init(&loads, t.rt);
        if (e) rc = e;
        else t.loads = &loads;
    }
    if (rc == TRAIN_GO_ON && o.resume_dir) rc = resume(&o, &t);
    if (rc == TRAIN_GO_ON) {
        if (!o.follower) print_header(&o, &t);
        if (o.resume_dir && !o.quiet) printf("resumed from %s after step %d of %d\n", o.resumed_from, o.first_step, o.steps);
        rc = train_loop(&o, &t, o.trace_path ? &trace : NULL, &res);
        if (rc == 0) {
            if (o.steps > o.first_step && !o.follower) print_summary(&o, &t, &res);
            if (!o.trace_path || write_trace(&o, &t, &trace) == 0)
                rc = o.verify ? report_verify(&o, &t, &res.df) : CLI_EXIT_OK;
            if (rc == CLI_EXIT_OK && o.save_path && o.follower) rc = follow_params_save(t.rt);
            else if (rc == CLI_EXIT_OK && o.save_path) {
                rc = train_params_save(t.rt, &params);
                if (rc == CLI_EXIT_OK && !o.quiet) printf("parameters written to %s\n", o.save_path);
            }
            if (rc == CLI_EXIT_OK && o.outputs_path) rc = save_outputs(&o, &t, &outputs);
            if (rc == CLI_EXIT_OK && o.load_path && !o.follower) {
                rc = expert_load_write(&loads, &loads_file);
                if (rc == CLI_EXIT_OK && !o.quiet)
                    printf("tokens per expert of %d MoE layer%s over %d step%s written to %s\n", loads.layers,
                           loads.layers > 1 ? "s" : "", loads.steps, loads.steps == 1 ? "" : "s", o.load_path);
            }
        }
    }
    free(res.step_ms);
    expert_load_free(&loads);
    eplb_train_free(&eplb);
    free(o.identity_plan);
    train_trace_close(&trace);
    output_file_abort(&params);
    output_file_abort(&outputs);
    output_file_abort(&loads_file);
    free_runtime(&t);
    return rc;
}
