/* cmd_train.c: `dualpipe train`: trains the pipelined model on rank threads to imitate a
 * fixed random teacher network, printing a line per step, then the measured per-rank busy and
 * idle time next to what the simulator predicts from the measured action times; optionally a
 * Chrome trace of what ran, and a side-by-side check against the single-rank reference. */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "engine/reference.h"
#include "engine/runtime.h"
#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/compare.h"
#include "tools/step_timing.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dualpipe train [--driver NAME] [--schedule NAME] [--pp N] [--chunks M]\n"
            "                      [--hidden H] [--tokens T] [--layers-per-stage L] [--block mlp|residual]\n"
            "                      [--loss mse|xent] [--dtype fp32|bf16] [--steps S] [--seed S]\n"
            "                      [--optimizer adamw|sgd] [--lr X] [--weight-decay X] [--momentum X]\n"
            "                      [--threads N] [--timeout MS] [--trace FILE] [--verify] [--spread]\n"
            "                      [--serial-pairs] [--tf32] [--quiet]\n"
            "Train a pipeline-parallel model on one thread per rank to imitate a fixed random teacher\n"
            "network (fresh random inputs every step), and report how the ranks spent their time.\n\n"
            "  -d, --driver NAME        cpu (default) or a driver module (see DUALPIPE_DRIVER_PATH)\n"
            "  -s, --schedule NAME      dualpipe (default), dualpipev, 1f1b, zb1p, interleaved-1f1b, gpipe\n"
            "  -p, --pp N               pipeline ranks (default 4)\n"
            "  -c, --chunks M           micro-batches per step (default 8)\n"
            "      --hidden H           hidden size (default 256); blocks are h -> 4h -> h\n"
            "      --tokens T           rows per micro-batch (default 64)\n"
            "      --layers-per-stage L blocks per stage (default 1)\n"
            "      --block KIND         residual (default: pre-norm RMSNorm residual MLP blocks) or mlp\n"
            "                           (DualPipe's example stage: Linear, GELU, Linear; a deep stack\n"
            "                           of them without normalisation learns slowly)\n"
            "      --loss KIND          mse (default; regression to the teacher's outputs) or xent\n"
            "                           (classification into the teacher's argmax over h classes)\n"
            "      --dtype T            fp32 (default) or bf16: bf16 activations and weight copies,\n"
            "                           fp32 accumulation; fp32 master weights, gradients, optimizer\n"
            "                           state and losses (the cpu driver computes bf16 in fp32 and\n"
            "                           rounds each result once, as the GPU drivers do)\n"
            "  -n, --steps S            training steps (default 20)\n"
            "      --seed S             seed of the parameters, the teacher and the data (default 1)\n"
            "      --optimizer NAME     adamw (default) or sgd\n"
            "      --lr X               learning rate (default 1e-3 for adamw, 1e-2 for sgd)\n"
            "      --weight-decay X     default 0\n"
            "      --momentum X         sgd momentum (default 0.9)\n"
            "      --threads N          kernel threads per rank (default: cores / ranks)\n"
            "      --timeout MS         a rank gives up waiting for a message after MS (default 60000)\n"
            "      --spread             rank r on device r mod the driver's devices (one GPU per rank\n"
            "                           where there are enough); default: every rank on device 0\n"
            "      --serial-pairs       run an overlapped F&B pair's halves one after the other on one\n"
            "                           stream (default: two streams at once)\n"
            "      --tf32               fp32 GEMMs may use TF32 tensor cores (GPU drivers; default: true\n"
            "                           fp32; the reference of --verify then uses TF32 too)\n"
            "      --trace FILE         write a Chrome trace (chrome://tracing, Perfetto) of every step\n"
            "      --verify             also run the single-rank sequential reference and report the\n"
            "                           largest differences of losses, gradients and parameters\n"
            "  -q, --quiet              only the summary\n"
            "  -h, --help               show this help\n\n"
            "Example: dualpipe train --schedule dualpipev --pp 2 --chunks 8 --verify\n");
}

/* ----------------------------------------------------------------------------
 * the teacher: one fp32 block with its own seed, on the run's driver (device 0), so that a
 * GPU run is not held up by the whole batch's forward on the host */

typedef struct {
    const dp_device_ops *ops;
    dp_device *dev;
    dp_stage *stage;
    float *out;  /* the forward's output, on the host */
    float scale; /* makes the first batch's targets unit-variance */
} teacher;

static int teacher_open(teacher *t, const char *driver, const dp_model_config *m, int chunks, uint64_t seed,
                        int threads)
{
    const dp_driver *drv;
    if (dp_driver_load(driver, &drv) != DP_OK) {
        cli_error("cannot load the teacher's driver: %s", dp_last_error());
        return 1;
    }
    t->ops = drv->device;
    dp_device_config dc = {.threads = threads};
    dp_model_config tm = *m;
    /* the teacher runs one micro-batch at a time (chunks of them per step), so its device
     * memory does not grow with the batch */
    tm.layers_per_stage = 1;
    tm.block = DP_BLOCK_MLP;
    tm.seed = seed ^ 0x7eac4e5ull;
    tm.dtype = DP_DTYPE_F32; /* the teacher's targets are fp32 whatever the student's dtype */
    t->scale = 0;
    t->out = malloc(sizeof(float) * dp_model_act_elems(&tm) * (size_t)chunks);
    if (!t->out) {
        cli_error("out of memory for the teacher's outputs");
        return 1;
    }
    if (t->ops->open(&dc, &t->dev) != DP_OK || dp_stage_create(t->ops, t->dev, &tm, 0, 2, &t->stage) != DP_OK) {
        cli_error("cannot build the teacher network: %s", dp_last_error());
        return 1;
    }
    return 0;
}

static void teacher_close(teacher *t)
{
    dp_stage_destroy(t->stage);
    if (t->dev) t->ops->close(t->dev);
    free(t->out);
}

/* targets for inputs x [chunks*tokens x h]: floats (mse) or argmax labels (xent) */
static int teacher_targets(teacher *t, const dp_model_config *m, int chunks, const float *x, void *targets)
{
    dp_slot *slot;
    size_t rows = (size_t)m->tokens * chunks, n = rows * m->hidden;
    size_t mb = (size_t)m->tokens * m->hidden, bytes = mb * sizeof(float);
    if (dp_stage_slot_get(t->stage, &slot) != DP_OK) goto fail;
    for (int k = 0; k < chunks; k++) {
        if (t->ops->copy(t->dev, slot->x, x + k * mb, bytes, DP_COPY_HOST_TO_DEVICE, NULL) != DP_OK ||
            dp_stage_forward(t->stage, NULL, slot, NULL) != DP_OK ||
            t->ops->copy(t->dev, t->out + k * mb, slot->y, bytes, DP_COPY_DEVICE_TO_HOST, NULL) != DP_OK) {
            dp_stage_slot_put(t->stage, slot);
            goto fail;
        }
    }
    dp_stage_slot_put(t->stage, slot);
    const float *out = t->out;
    if (t->scale == 0) {
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)out[i] * out[i];
        t->scale = ss > 0 ? (float)(1.0 / sqrt(ss / n)) : 1.0f;
    }
    if (m->loss == DP_LOSS_MSE) {
        float *y = targets;
        for (size_t i = 0; i < n; i++) y[i] = out[i] * t->scale;
    } else {
        int32_t *l = targets;
        for (size_t r = 0; r < rows; r++) {
            const float *row = out + r * m->hidden;
            int best = 0;
            for (int c = 1; c < m->hidden; c++) best = row[c] > row[best] ? c : best;
            l[r] = best;
        }
    }
    return 0;
fail:
    cli_error("the teacher network failed: %s", dp_last_error());
    return 1;
}

/* ----------------------------------------------------------------------------
 * the trace's events */

typedef struct {
    int rank, step;
    dp_action a, b; /* b.kind == 0xff: not a pair */
    double start, ready, end; /* ms from the run's start */
} trace_event;

typedef struct {
    trace_event *ev;
    size_t n, cap;
    int step;      /* of the step being collected */
    double offset; /* its start, from the run's start */
} trace_log;

static int trace_add(trace_log *t, const trace_event *e)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 1024;
        trace_event *n = realloc(t->ev, sizeof *n * cap);
        if (!n) return 1;
        t->ev = n, t->cap = cap;
    }
    t->ev[t->n++] = *e;
    return 0;
}

static void trace_visit(void *ctx, int rank, const dp_action *a, const dp_action *b, const dp_action_time *at)
{
    trace_log *t = ctx;
    trace_event e = {rank, t->step, *a, {.kind = 0xff}, t->offset + at->start, t->offset + at->ready,
                     t->offset + at->end};
    if (b) e.b = *b;
    trace_add(t, &e);
}

static void action_name(char *buf, size_t n, const dp_action *a)
{
    snprintf(buf, n, "%c%d%s", dp_action_letter(a->kind), a->chunk, a->local_stage ? "'" : "");
}

/* Writes the trace into an output opened before the run (so that a bad path fails first). */
static int write_trace(cli_output *o, const trace_log *t, const char *title)
{
    fprintf(o->fp, "{\"displayTimeUnit\": \"ms\", \"otherData\": {\"run\": \"%s\"}, \"traceEvents\": [\n", title);
    int ranks = 0;
    for (size_t i = 0; i < t->n; i++) ranks = t->ev[i].rank + 1 > ranks ? t->ev[i].rank + 1 : ranks;
    for (int r = 0; r < ranks; r++)
        fprintf(o->fp, "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, \"args\": {\"name\": \"rank %d\"}},\n",
                r, r);
    for (size_t i = 0; i < t->n; i++) {
        const trace_event *e = &t->ev[i];
        char name[64], n2[32];
        action_name(name, sizeof name, &e->a);
        if (e->b.kind != 0xff) {
            action_name(n2, sizeof n2, &e->b);
            strncat(name, "&", sizeof name - strlen(name) - 1);
            strncat(name, n2, sizeof name - strlen(name) - 1);
        }
        if (e->ready - e->start > 1e-3)
            fprintf(o->fp,
                    "{\"name\": \"wait\", \"cat\": \"wait\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.3f, "
                    "\"dur\": %.3f, \"args\": {\"for\": \"%s\", \"step\": %d}},\n",
                    e->rank, e->start * 1e3, (e->ready - e->start) * 1e3, name, e->step);
        fprintf(o->fp,
                "{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, "
                "\"args\": {\"step\": %d, \"local_stage\": %d, \"micro_batch\": %d}}%s\n",
                name, e->b.kind != 0xff ? "F&B" : (char[]){dp_action_letter(e->a.kind), 0}, e->rank, e->ready * 1e3,
                (e->end - e->ready) * 1e3, e->step, e->a.local_stage, e->a.chunk, i + 1 < t->n ? "," : "");
    }
    fprintf(o->fp, "]}\n");
    return cli_output_commit(o);
}

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
 * the command */

static int parse_kind(const char *opt, const char *v, const char *a, const char *b, int *out)
{
    if (strcmp(v, a) == 0) *out = 0;
    else if (strcmp(v, b) == 0) *out = 1;
    else {
        cli_error("%s: expected %s or %s, got '%s'", opt, a, b, v);
        return 1;
    }
    return 0;
}

int cmd_train(int argc, char **argv)
{
    enum { O_HIDDEN = 256, O_TOKENS, O_LAYERS, O_BLOCK, O_LOSS, O_SEED, O_OPT, O_LR, O_WD, O_MOM, O_THREADS,
           O_TIMEOUT, O_TRACE, O_VERIFY, O_SPREAD, O_DTYPE, O_SERIAL_PAIRS, O_TF32 };
    static const struct option opts[] = {
        {"driver", required_argument, 0, 'd'},     {"schedule", required_argument, 0, 's'},
        {"pp", required_argument, 0, 'p'},         {"chunks", required_argument, 0, 'c'},
        {"hidden", required_argument, 0, O_HIDDEN}, {"tokens", required_argument, 0, O_TOKENS},
        {"layers-per-stage", required_argument, 0, O_LAYERS}, {"block", required_argument, 0, O_BLOCK},
        {"loss", required_argument, 0, O_LOSS},     {"steps", required_argument, 0, 'n'},
        {"seed", required_argument, 0, O_SEED},     {"optimizer", required_argument, 0, O_OPT},
        {"lr", required_argument, 0, O_LR},         {"weight-decay", required_argument, 0, O_WD},
        {"momentum", required_argument, 0, O_MOM},  {"threads", required_argument, 0, O_THREADS},
        {"timeout", required_argument, 0, O_TIMEOUT}, {"trace", required_argument, 0, O_TRACE},
        {"verify", no_argument, 0, O_VERIFY},       {"quiet", no_argument, 0, 'q'},
        {"spread", no_argument, 0, O_SPREAD},       {"dtype", required_argument, 0, O_DTYPE},
        {"serial-pairs", no_argument, 0, O_SERIAL_PAIRS}, {"tf32", no_argument, 0, O_TF32},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0},
    };
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    c.driver = "cpu", c.schedule = "dualpipe", c.ranks = 4, c.chunks = 8;
    c.model.hidden = 256, c.model.tokens = 64, c.model.layers_per_stage = 1;
    c.model.block = DP_BLOCK_RESIDUAL;
    c.optimizer.kind = DP_OPT_ADAMW;
    int steps = 20, seed = 1, verify = 0, quiet = 0, kind, sgd = 0;
    double lr = 0, wd = 0, momentum = 0.9;
    const char *trace_path = NULL;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":d:s:p:c:n:qh", opts, NULL)) != -1) {
        double v;
        switch (opt) {
        case 'd': c.driver = optarg; break;
        case 's': c.schedule = optarg; break;
        case 'p': if (cli_parse_int("--pp", optarg, 1, 1024, &c.ranks)) return CLI_EXIT_USAGE; break;
        case 'c': if (cli_parse_int("--chunks", optarg, 1, 1 << 16, &c.chunks)) return CLI_EXIT_USAGE; break;
        case O_HIDDEN: if (cli_parse_int("--hidden", optarg, 1, 1 << 16, &c.model.hidden)) return CLI_EXIT_USAGE; break;
        case O_TOKENS: if (cli_parse_int("--tokens", optarg, 1, 1 << 20, &c.model.tokens)) return CLI_EXIT_USAGE; break;
        case O_LAYERS:
            if (cli_parse_int("--layers-per-stage", optarg, 1, 64, &c.model.layers_per_stage)) return CLI_EXIT_USAGE;
            break;
        case O_BLOCK:
            if (parse_kind("--block", optarg, "mlp", "residual", &kind)) return CLI_EXIT_USAGE;
            c.model.block = kind ? DP_BLOCK_RESIDUAL : DP_BLOCK_MLP;
            break;
        case O_LOSS:
            if (parse_kind("--loss", optarg, "mse", "xent", &kind)) return CLI_EXIT_USAGE;
            c.model.loss = kind ? DP_LOSS_XENT : DP_LOSS_MSE;
            break;
        case 'n': if (cli_parse_int("--steps", optarg, 1, 1 << 24, &steps)) return CLI_EXIT_USAGE; break;
        case O_SEED: if (cli_parse_int("--seed", optarg, 0, 2147483647, &seed)) return CLI_EXIT_USAGE; break;
        case O_OPT:
            if (parse_kind("--optimizer", optarg, "adamw", "sgd", &sgd)) return CLI_EXIT_USAGE;
            break;
        case O_LR:
        case O_WD:
        case O_MOM:
            if (cli_parse_double(opt == O_LR ? "--lr" : opt == O_WD ? "--weight-decay" : "--momentum", optarg, &v))
                return CLI_EXIT_USAGE;
            if (v < 0 || (opt == O_LR && v == 0) || (opt == O_MOM && v >= 1)) {
                cli_error("%s must be %s, got %s", opt == O_LR ? "--lr" : opt == O_WD ? "--weight-decay" : "--momentum",
                          opt == O_LR ? "> 0" : opt == O_WD ? ">= 0" : "in [0, 1)", optarg);
                return CLI_EXIT_USAGE;
            }
            if (opt == O_LR) lr = v;
            else if (opt == O_WD) wd = v;
            else momentum = v;
            break;
        case O_THREADS:
            if (cli_parse_int("--threads", optarg, 1, 1024, &c.threads_per_rank)) return CLI_EXIT_USAGE;
            break;
        case O_TIMEOUT:
            if (cli_parse_int("--timeout", optarg, 1, 86400000, &c.timeout_ms)) return CLI_EXIT_USAGE;
            break;
        case O_TRACE: trace_path = optarg; break;
        case O_VERIFY: verify = 1; break;
        case O_SPREAD: c.spread_devices = 1; break;
        case O_SERIAL_PAIRS: c.serial_pairs = 1; break;
        case O_TF32: c.device_flags |= DP_DEVICE_ALLOW_TF32; break;
        case O_DTYPE: if (cli_parse_dtype("--dtype", optarg, &c.model.dtype)) return CLI_EXIT_USAGE; break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return CLI_EXIT_OK;
        default: return cli_option_error(opt, argv);
        }
    }
    if (cli_extra_arguments(argc, argv)) return CLI_EXIT_USAGE;
    c.model.seed = (uint64_t)seed;
    c.optimizer.kind = sgd ? DP_OPT_SGD : DP_OPT_ADAMW;
    c.optimizer.lr = (float)(lr > 0 ? lr : sgd ? 1e-2 : 1e-3);
    c.optimizer.weight_decay = (float)wd;
    c.optimizer.momentum = sgd ? (float)momentum : 0.0f;
    c.record_times = 1;
    if (c.threads_per_rank == 0) {
        /* resolved here so that the teacher and the reference use the ranks' count too: the
         * BLAS library's thread count is process-wide */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        c.threads_per_rank = cores > c.ranks ? (int)(cores / c.ranks) : 1;
    }

    cli_output trace_out = {0};
    if (trace_path && cli_output_open(&trace_out, trace_path)) return CLI_EXIT_USAGE;
    dp_runtime *rt = NULL;
    dp_reference *ref = NULL;
    teacher tch = {0};
    trace_log trace = {0};
    step_timing tm = {0};
    float *x = NULL, *losses = NULL, *ref_losses = NULL;
    void *targets = NULL;
    int rc = CLI_EXIT_FAIL;
    dp_status st = dp_runtime_create(&c, &rt);
    if (st != DP_OK) {
        cli_error("%s", dp_last_error());
        if (trace_path) cli_output_abort(&trace_out);
        return st == DP_ERR_INVALID || st == DP_ERR_NOT_FOUND ? CLI_EXIT_USAGE : CLI_EXIT_FAIL;
    }
    const dp_model_config *m = dp_runtime_model(rt);
    const dp_schedule *s = dp_runtime_schedule(rt);
    if (verify && dp_reference_create(&c, &ref) != DP_OK) {
        cli_error("cannot start the reference: %s", dp_last_error());
        goto out;
    }
    size_t n = (size_t)c.chunks * m->tokens * m->hidden;
    x = malloc(sizeof(float) * n);
    targets = malloc(dp_model_host_target_bytes(m) * (size_t)c.chunks);
    losses = calloc((size_t)c.chunks, sizeof(float));
    ref_losses = calloc((size_t)c.chunks, sizeof(float));
    if (step_timing_init(&tm, c.ranks)) goto out;
    if (!x || !targets || !losses || !ref_losses) {
        cli_error("out of memory for a step of %zu floats", n);
        goto out;
    }
    if (teacher_open(&tch, c.driver, m, c.chunks, c.model.seed, c.threads_per_rank)) goto out;

    const dp_driver *drv;
    dp_driver_load(c.driver, &drv);
    /* every micro-batch crosses every stage: forward 4 T h f, backward twice that, per block */
    double flops_per_step = 12.0 * m->tokens * (double)m->hidden * m->ffn * m->layers_per_stage * s->num_stages * c.chunks;
    printf("dualpipe train: %s on %d ranks (%d stages), %d micro-batches x %d tokens, hidden %d, %d %s block%s per "
           "stage, %s loss, %s, %s, driver %s\n",
           s->name, s->num_ranks, s->num_stages, c.chunks, m->tokens, m->hidden,
           m->layers_per_stage, m->block == DP_BLOCK_MLP ? "mlp" : "residual", m->layers_per_stage > 1 ? "s" : "",
           m->loss == DP_LOSS_MSE ? "mse" : "xent", sgd ? "sgd" : "adamw", dp_dtype_name(m->dtype), drv->name);
    fflush(stdout);

    int tty = cli_stderr_is_tty() && !quiet;
    double first_loss = 0, last_loss = 0, total_ms = 0, run_t0 = dp_now_ms();
    double *step_ms = calloc((size_t)steps, sizeof(double));
    differences df = {0};
    if (!step_ms) goto out;
    for (int step = 1; step <= steps; step++) {
        for (size_t i = 0; i < n; i++) x[i] = dp_counter_uniform(c.model.seed, 0x5eed0000ull + (uint64_t)step, i);
        if (teacher_targets(&tch, m, c.chunks, x, targets)) goto out_steps;
        if (tty) fprintf(stderr, "\r  step %d/%d ...", step, steps), fflush(stderr);
        double t0 = dp_now_ms();
        st = dp_runtime_train_step(rt, x, targets, losses);
        double ms = dp_now_ms() - t0;
        if (tty) fprintf(stderr, "\r%*s\r", 40, ""), fflush(stderr);
        if (st != DP_OK) {
            cli_error("step %d failed: %s", step, dp_last_error());
            goto out_steps;
        }
        trace.step = step, trace.offset = dp_runtime_step_start(rt) - run_t0;
        step_timing_collect(&tm, rt, step > 1 || steps == 1, trace_path ? trace_visit : NULL, &trace);
        step_ms[step - 1] = ms;
        total_ms += ms;
        double loss = 0;
        for (int k = 0; k < c.chunks; k++) loss += losses[k];
        loss /= c.chunks;
        if (step == 1) first_loss = loss;
        last_loss = loss;
        if (ref) {
            if (dp_reference_train_step(ref, x, targets, ref_losses) != DP_OK) {
                cli_error("reference step %d failed: %s", step, dp_last_error());
                goto out_steps;
            }
            for (int k = 0; k < c.chunks; k++) {
                double d = fabs((double)losses[k] - ref_losses[k]);
                if (d != d) d = INFINITY;
                df.loss = d > df.loss ? d : df.loss;
            }
        }
        if (!quiet)
            printf("step %4d/%d  loss %.6f  time %8.2f ms  %10.0f tokens/s  %6.2f GFLOP/s\n", step, steps, loss, ms,
                   (double)c.chunks * m->tokens / (ms * 1e-3), flops_per_step / (ms * 1e-3) * 1e-9);
        fflush(stdout);
    }
    {
        /* the median step (the first includes warm-up) */
        for (int i = 1; i < steps; i++)
            for (int j = i; j > 0 && step_ms[j - 1] > step_ms[j]; j--) {
                double t = step_ms[j];
                step_ms[j] = step_ms[j - 1], step_ms[j - 1] = t;
            }
        double med = step_ms[steps / 2];
        printf("loss %.6f -> %.6f over %d steps (%s); median step %.2f ms, %.0f tokens/s, %.2f GFLOP/s\n", first_loss,
               last_loss, steps, last_loss < first_loss ? "learning" : "not falling", med,
               (double)c.chunks * m->tokens / (med * 1e-3), flops_per_step / (med * 1e-3) * 1e-9);

        step_timing_report(&tm, s, stdout);
    }
    if (trace_path) {
        char title[128];
        snprintf(title, sizeof title, "%s pp %d chunks %d hidden %d", s->name, c.ranks, c.chunks, m->hidden);
        if (write_trace(&trace_out, &trace, title)) goto out_steps;
        printf("trace of %zu actions written to %s\n", trace.n, trace_path);
    }
    rc = CLI_EXIT_OK;
    if (ref) {
        if (compare_params(rt, ref, &df)) {
            rc = CLI_EXIT_FAIL;
            goto out_steps;
        }
        int exact = df.loss == 0 && df.grad == 0 && df.param == 0;
        printf("verify against the single-rank reference (%d steps): largest |difference| of losses %.3g, gradients "
               "%.3g (relative %.3g), parameters %.3g (relative %.3g): %s\n",
               steps, df.loss, df.grad, df.grad_rel, df.param, df.param_rel,
               exact ? "bit-equal" : "DIFFERENT");
        /* the cpu driver is bit-exact by construction; other drivers are held to fp32 rounding */
        if (!exact && (strcmp(drv->name, "cpu") == 0 || df.param_rel > 1e-4 || df.loss > 1e-5)) rc = CLI_EXIT_FAIL;
    }
out_steps:
    free(step_ms);
out:
    if (trace_path && trace_out.fp) cli_output_abort(&trace_out);
    teacher_close(&tch);
    dp_reference_destroy(ref);
    dp_runtime_destroy(rt);
    free(x), free(targets), free(losses), free(ref_losses), free(trace.ev);
    step_timing_free(&tm);
    return rc;
}
