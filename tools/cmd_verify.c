/* cmd_verify.c: `dualpipe verify`: the proof that a driver computes what the CPU driver
 * computes. The same training steps from the same seed run on the CPU and on the driver under
 * test; every loss, parameter and gradient is compared element by element against a stated
 * tolerance, and the command ends with PASS (exit 0) or FAIL (exit 1). */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/runtime.h"
#include "tools/cli.h"
#include "tools/commands.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dualpipe verify [OPTIONS]\n"
            "Runs the same training steps from the same seed on the CPU driver and on DRIVER, and compares\n"
            "every loss, parameter and gradient: |driver - cpu| <= atol * max|cpu of the tensor| + rtol * |cpu|.\n"
            "Prints each tensor's largest differences, then PASS (exit 0) or FAIL (exit 1).\n\n"
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
            "  --atol X              absolute tolerance as a fraction of the tensor's largest |value|\n"
            "                        (default 1e-5 for fp32, 1e-2 for bf16)\n"
            "  --rtol X              relative tolerance (default 1e-4 for fp32, 1e-2 for bf16)\n"
            "  --param-atol X        parameters after the last step may further differ by X\n"
            "                        (default: AdamW 0.1 x lr x steps in fp32, 2 x lr x steps in bf16;\n"
            "                        otherwise 0)\n"
            "  --timeout-ms N        a rank gives up waiting after this long (default 60000)\n"
            "  -q, --quiet           print only failing tensors and the verdict\n"
            "  -h, --help            show this help\n"
            "\nCompared: the losses of every step, the gradients of step 1 (both runs start from the same\n"
            "parameters, so only the kernels differ) and the parameters after the last step.\n"
            "The defaults are for fp32 with TF32 off: GEMMs on both sides round every product and sum to\n"
            "fp32 but add in different orders, so results agree to a few ulps per layer; an element that is\n"
            "the difference of large terms carries an error at the terms' scale, hence an absolute part\n"
            "relative to the tensor's largest value. AdamW divides each moment by its root mean square, so\n"
            "where m nearly cancels an ulp of gradient becomes a visible fraction of a step: parameters get\n"
            "an allowance in units of lr.\n"
            "In bf16 both sides round every activation to 8 significant bits (one ulp is 2^-8, 0.39%%):\n"
            "where the two GEMMs' fp32 sums fall on either side of a rounding boundary an element differs by\n"
            "an ulp, and later layers carry that on; the bf16 defaults allow about two and a half ulps.\n"
            "There, gradients near zero can differ in sign, and AdamW moves such an element by about lr\n"
            "in opposite directions on the two sides (an AdamW step is about lr whatever the gradient's\n"
            "size): parameters get up to 2 x lr per step. The gradients of step 1 and the losses of every\n"
            "step are held to the tolerance without that allowance.\n");
}

/* ----------------------------------------------------------------------------
 * comparison of one tensor */

typedef struct {
    double atol, rtol;
    double slack; /* added to every element's tolerance: the parameters' AdamW allowance */
    int quiet;
    int tensors, failed;
} verdict;

static int compare_tensor(verdict *v, const char *label, const float *got, const float *want, size_t n)
{
    double scale = 0;
    for (size_t i = 0; i < n; i++) scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    double max_abs = 0, max_rel = 0, worst_use = 0;
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < n; i++) {
        double a = got[i], b = want[i];
        double d = fabs(a - b), tol = v->atol * scale + v->rtol * fabs(b) + v->slack;
        if (!isfinite(a) || !isfinite(b) || d > tol) {
            if (!bad) first_bad = i;
            bad++;
        }
        if (!isfinite(d)) d = INFINITY;
        max_abs = d > max_abs ? d : max_abs;
        if (b != 0) max_rel = d / fabs(b) > max_rel ? d / fabs(b) : max_rel;
        double use = tol > 0 ? d / tol : (d > 0 ? INFINITY : 0);
        worst_use = use > worst_use ? use : worst_use;
    }
    v->tensors++;
    if (bad) v->failed++;
    if (!v->quiet || bad)
        printf("%-34s %9zu  %10.3g  %10.3g  %7.3f  %s\n", label, n, max_abs, max_rel, worst_use, bad ? "FAIL" : "ok");
    if (bad)
        printf("    %zu element(s) outside; first at %zu: %s %.9g, cpu %.9g\n", bad, first_bad, "driver",
               (double)got[first_bad], (double)want[first_bad]);
    return bad == 0;
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

static int compare_params(verdict *v, dp_runtime *gpu, dp_runtime *cpu, int grad)
{
    const dp_schedule *s = dp_runtime_schedule(cpu);
    int ok = 1;
    for (int st = 0; st < s->num_stages; st++)
        for (int i = 0; i < dp_runtime_num_params(cpu, st); i++)
            for (int copy = 0; copy < s->num_pipes; copy++) {
                size_t n = 0;
                char name[32];
                if (dp_runtime_read_param(cpu, st, copy, i, grad, NULL, &n, name) != DP_OK) return 0;
                float *a = malloc(sizeof(float) * (n ? n : 1)), *b = malloc(sizeof(float) * (n ? n : 1));
                dp_status e1 = a && b ? dp_runtime_read_param(gpu, st, copy, i, grad, a, &n, NULL) : DP_ERR_NOMEM;
                dp_status e2 = a && b ? dp_runtime_read_param(cpu, st, copy, i, grad, b, &n, NULL) : DP_ERR_NOMEM;
                if (e1 != DP_OK || e2 != DP_OK) {
                    cli_error("reading stage %d parameter %d: %s", st, i, dp_last_error());
                    free(a), free(b);
                    return 0;
                }
                char label[96];
                if (s->num_pipes > 1)
                    snprintf(label, sizeof label, "stage%d.%s%s (copy %d)", st, name, grad ? ".grad" : "", copy);
                else
                    snprintf(label, sizeof label, "stage%d.%s%s", st, name, grad ? ".grad" : "");
                ok &= compare_tensor(v, label, a, b, n);
                free(a), free(b);
            }
    return ok;
}

/* ----------------------------------------------------------------------------
 * options */

int cmd_verify(int argc, char **argv)
{
    dp_runtime_config c;
    memset(&c, 0, sizeof c);
    const char *driver = "cuda";
    c.schedule = "dualpipe";
    c.ranks = 4;
    c.chunks = 8;
    c.model.hidden = 256;
    c.model.tokens = 64;
    c.model.layers_per_stage = 1;
    c.model.seed = 1;
    c.optimizer.kind = DP_OPT_ADAMW;
    c.optimizer.lr = 1e-3f;
    int steps = 3, spread = 0;
    verdict v = {.atol = -1, .rtol = -1};
    double param_atol = -1;
    static const char *const blocks[] = {"mlp", "residual"}, *const losses[] = {"mse", "xent"};
    static const char *const opts[] = {"none", "sgd", "adamw"};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int k, bad = 0;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return CLI_EXIT_OK;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            v.quiet = 1;
            continue;
        } else if (!strcmp(a, "--spread")) {
            spread = 1;
            continue;
        } else if (!strcmp(a, "--serial-pairs")) {
            c.serial_pairs = 1;
            continue;
        }
        if (!val) {
            cli_error("%s needs a value; run 'dualpipe verify --help'", a);
            return CLI_EXIT_USAGE;
        }
        i++;
        if (!strcmp(a, "--driver")) driver = val;
        else if (!strcmp(a, "--schedule")) c.schedule = val;
        else if (!strcmp(a, "--pp")) bad = cli_parse_int(a, val, 1, 1024, &c.ranks);
        else if (!strcmp(a, "--chunks")) bad = cli_parse_int(a, val, 1, 1 << 20, &c.chunks);
        else if (!strcmp(a, "--hidden")) bad = cli_parse_int(a, val, 1, 1 << 20, &c.model.hidden);
        else if (!strcmp(a, "--ffn")) bad = cli_parse_int(a, val, 0, 1 << 22, &c.model.ffn);
        else if (!strcmp(a, "--tokens")) bad = cli_parse_int(a, val, 1, 1 << 24, &c.model.tokens);
        else if (!strcmp(a, "--layers-per-stage")) bad = cli_parse_int(a, val, 1, 4096, &c.model.layers_per_stage);
        else if (!strcmp(a, "--steps")) bad = cli_parse_int(a, val, 1, 1000000, &steps);
        else if (!strcmp(a, "--timeout-ms")) bad = cli_parse_int(a, val, 1, 1 << 30, &c.timeout_ms);
        else if (!strcmp(a, "--seed")) {
            int s;
            bad = cli_parse_int(a, val, 0, 2147483647L, &s);
            c.model.seed = (uint64_t)s;
        } else if (!strcmp(a, "--block")) {
            bad = cli_parse_kind(a, val, blocks, 2, &k);
            c.model.block = (dp_block_kind)k;
        } else if (!strcmp(a, "--loss")) {
            bad = cli_parse_kind(a, val, losses, 2, &k);
            c.model.loss = (dp_loss_kind)k;
        } else if (!strcmp(a, "--optimizer")) {
            bad = cli_parse_kind(a, val, opts, 3, &k);
            c.optimizer.kind = (dp_optimizer_kind)k;
        } else if (!strcmp(a, "--lr")) {
            bad = cli_parse_double(a, val, &d);
            c.optimizer.lr = (float)d;
        } else if (!strcmp(a, "--dtype")) bad = cli_parse_dtype(a, val, &c.model.dtype);
        else if (!strcmp(a, "--atol")) bad = cli_parse_double(a, val, &v.atol);
        else if (!strcmp(a, "--rtol")) bad = cli_parse_double(a, val, &v.rtol);
        else if (!strcmp(a, "--param-atol")) bad = cli_parse_double(a, val, &param_atol);
        else {
            cli_error("unknown option '%s'; run 'dualpipe verify --help'", a);
            return CLI_EXIT_USAGE;
        }
        if (bad) return CLI_EXIT_USAGE;
    }
    if ((v.atol < 0 && v.atol != -1) || (v.rtol < 0 && v.rtol != -1) || (param_atol < 0 && param_atol != -1)) {
        cli_error("--atol, --rtol and --param-atol must not be negative");
        return CLI_EXIT_USAGE;
    }
    int bf16 = c.model.dtype == DP_DTYPE_BF16;
    if (v.atol < 0) v.atol = bf16 ? 1e-2 : 1e-5;
    if (v.rtol < 0) v.rtol = bf16 ? 1e-2 : 1e-4;
    if (param_atol < 0) param_atol = c.optimizer.kind == DP_OPT_ADAMW ? (bf16 ? 2.0 : 0.1) * c.optimizer.lr * steps : 0;
    if (!strcmp(driver, "cpu")) cli_warn("comparing the cpu driver with itself: it can only pass");
    c.spread_devices = spread;

    dp_runtime_config gc = c, cc = c;
    gc.driver = driver;
    cc.driver = "cpu";
    dp_runtime *gpu = NULL, *cpu = NULL;
    if (dp_runtime_create(&gc, &gpu) != DP_OK) {
        cli_error("cannot start the %s run: %s", driver, dp_last_error());
        return CLI_EXIT_FAIL;
    }
    if (dp_runtime_create(&cc, &cpu) != DP_OK) {
        cli_error("cannot start the cpu run: %s", dp_last_error());
        dp_runtime_destroy(gpu);
        return CLI_EXIT_FAIL;
    }
    const dp_model_config *m = dp_runtime_model(cpu);
    printf("dualpipe verify: driver %s against cpu; schedule %s, pp %d, chunks %d, hidden %d, ffn %d, tokens %d, "
           "%d %s block(s) per stage, loss %s, optimizer %s (lr %g), %s, %d step(s), seed %llu\n",
           driver, c.schedule, c.ranks, c.chunks, m->hidden, m->ffn, m->tokens, m->layers_per_stage,
           blocks[m->block], losses[m->loss], opts[c.optimizer.kind], (double)c.optimizer.lr, dp_dtype_name(m->dtype),
           steps, (unsigned long long)m->seed);
    printf("tolerance: |%s - cpu| <= %g * max|cpu| of the tensor + %g * |cpu| (%s); parameters after "
           "the last step + %g\n\n",
           driver, v.atol, v.rtol, bf16 ? "bf16 activations, fp32 accumulation" : "fp32, TF32 off", param_atol);
    printf("%-34s %9s  %10s  %10s  %7s  %s\n", "tensor", "elements", "max |diff|", "max rel", "use", "");

    int rc = CLI_EXIT_OK;
    float *gl = malloc(sizeof(float) * (size_t)c.chunks), *cl = malloc(sizeof(float) * (size_t)c.chunks);
    for (int step = 1; step <= steps && rc == CLI_EXIT_OK; step++) {
        float *in = step_inputs(&c, m->seed, step, 3);
        void *tg = step_targets(&c, m->seed, step);
        if (!in || !tg || !gl || !cl) {
            cli_error("out of memory");
            rc = CLI_EXIT_FAIL;
        } else if (dp_runtime_train_step(gpu, in, tg, gl) != DP_OK) {
            cli_error("step %d on %s: %s", step, driver, dp_last_error());
            rc = CLI_EXIT_FAIL;
        } else if (dp_runtime_train_step(cpu, in, tg, cl) != DP_OK) {
            cli_error("step %d on cpu: %s", step, dp_last_error());
            rc = CLI_EXIT_FAIL;
        } else {
            char label[64];
            snprintf(label, sizeof label, "step %d losses", step);
            compare_tensor(&v, label, gl, cl, (size_t)c.chunks);
            if (step == 1) compare_params(&v, gpu, cpu, 1); /* gradients from identical parameters */
            if (step == steps) {                            /* parameters after the last optimizer step */
                v.slack = param_atol;
                compare_params(&v, gpu, cpu, 0);
                v.slack = 0;
            }
        }
        free(in), free(tg);
    }
    free(gl), free(cl);
    dp_runtime_destroy(gpu);
    dp_runtime_destroy(cpu);
    if (rc != CLI_EXIT_OK) return rc;
    if (v.failed) {
        printf("\nFAIL: %d of %d tensors outside the tolerance\n", v.failed, v.tensors);
        return CLI_EXIT_FAIL;
    }
    printf("\nPASS: %d tensors within the tolerance\n", v.tensors);
    return CLI_EXIT_OK;
}
