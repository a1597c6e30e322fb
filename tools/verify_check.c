/* verify_check.c: `dualpipe verify`'s comparisons after each training step (losses, every
 * gradient, every parameter) and the lockstep hand-over of the CPU's state to the driver under
 * test; the tolerances come from verify_tolerance.c, the verdict and report from here. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tools/verify_check.h"

/* A parameter tensor's place in the runtimes. */
typedef struct verify_place {
    int stage, index, copy;
} tensor_at;

/* The driver's parameters must not lean one way from the replayed step: a correct kernel's
 * rounding lands on either side as often, a kernel off by an ulp in one direction nearly always
 * on the same side. Failing on a 3:1 split of at least 64 signs: by chance alone, less likely
 * than 1e-4. */
#define BIAS_MIN_SIGNS 64

static int row_biased(const verify_row *r)
{
    size_t n = r->above + r->below, d = r->above > r->below ? r->above - r->below : r->below - r->above;
    return n >= BIAS_MIN_SIGNS && 2 * d > n;
}

static int row_failed(const verify_row *r) { return r->judged.outside > 0 || r->moments.outside > 0 || row_biased(r); }

/* ----------------------------------------------------------------------------
 * set-up */

dp_status verify_session_init(verify_session *vs, dp_runtime *drv, dp_runtime *cpu, const dp_optimizer_config *opt,
                              int chunks, double atol, double rtol)
{
    memset(vs, 0, sizeof *vs);
    vs->drv = drv, vs->cpu = cpu, vs->opt = *opt;
    if (vs->opt.kind != DP_OPT_NONE) dp_optimizer_config_defaults(&vs->opt);
    const dp_schedule *s = dp_runtime_schedule(cpu);
    const dp_model_config *m = dp_runtime_model(cpu);
    int blocks = s->num_stages * m->layers_per_stage;
    vs->loss_tol = verify_loss_tolerance(m, blocks);
    vs->grad_tol = verify_grad_tolerance(m, blocks, chunks);
    vs->loss_atol = atol >= 0 ? atol : vs->loss_tol.eps, vs->loss_rtol = rtol >= 0 ? rtol : vs->loss_tol.eps;
    vs->grad_atol = atol >= 0 ? atol : vs->grad_tol.eps, vs->grad_rtol = rtol >= 0 ? rtol : vs->grad_tol.eps;
    snprintf(vs->losses.label, sizeof vs->losses.label, "losses");
    vs->losses.elements = (size_t)chunks;

    for (int st = 0; st < s->num_stages; st++) vs->ntensors += dp_runtime_num_params(cpu, st) * s->num_pipes;
    /* the rows of gradients, then of parameters */
    vs->grads = calloc((size_t)vs->ntensors * 2 + 1, sizeof(verify_row));
    vs->places = calloc((size_t)vs->ntensors + 1, sizeof(tensor_at));
    if (!vs->grads || !vs->places) return dp_fail(DP_ERR_NOMEM, "out of memory for %d tensors' rows", vs->ntensors);
    vs->params = vs->grads + vs->ntensors;
    tensor_at *at = vs->places;
    int k = 0;
    for (int st = 0; st < s->num_stages; st++)
        for (int i = 0; i < dp_runtime_num_params(cpu, st); i++)
            for (int copy = 0; copy < s->num_pipes; copy++, k++) {
                char name[32];
                size_t n = 0;
                DP_CHECK(dp_runtime_read_tensor(cpu, st, copy, i, DP_TENSOR_VALUE, NULL, &n, name));
                at[k] = (tensor_at){st, i, copy};
                char copy_note[24] = "";
                if (s->num_pipes > 1) snprintf(copy_note, sizeof copy_note, " (copy %d)", copy);
                snprintf(vs->grads[k].label, sizeof vs->grads[k].label, "stage%d.%s.grad%s", st, name, copy_note);
                snprintf(vs->params[k].label, sizeof vs->params[k].label, "stage%d.%s%s", st, name, copy_note);
                vs->grads[k].elements = vs->params[k].elements = n;
            }
    return DP_OK;
}

void verify_session_free(verify_session *vs)
{
    free(vs->grads), free(vs->places);
    vs->grads = vs->params = NULL, vs->places = NULL;
}

/* ----------------------------------------------------------------------------
 * the comparisons of one step */

static double rms_of(const float *v, size_t n)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)v[i] * v[i];
    return n ? sqrt(sum / (double)n) : 0;
}

/* |driver - cpu| <= atol x rms + rtol x |cpu| for losses and gradients */
static void judge_by_scale(verify_row *r, const float *drv, const float *cpu, size_t n, double atol, double rtol)
{
    double scale = atol * rms_of(cpu, n);
    for (size_t i = 0; i < n; i++) {
        compare_element(&r->judged, i, drv[i], cpu[i], scale + rtol * fabs((double)cpu[i]));
        compare_element(&r->apart, i, drv[i], cpu[i], INFINITY);
    }
}

void verify_losses(verify_session *vs, const float *drv, const float *cpu, int chunks)
{
    judge_by_scale(&vs->losses, drv, cpu, (size_t)chunks, vs->loss_atol, vs->loss_rtol);
    vs->steps++;
}

/* The parameters after step `step`: the driver's moments against the CPU's moved by the
 * gradients' difference, each element against the step replayed from the driver's own moments
 * or gradient (verify_tolerance.c says why), counting those whose gradient is within its own
 * tolerance, whose direction the arithmetic does not define. */
static void judge_params(const verify_session *vs, verify_row *r, int step, const float *p_drv, const float *p_cpu,
                         const float *m_drv, const float *m_cpu, const float *v_drv, const float *v_cpu,
                         const float *g_drv, const float *g_cpu, size_t n)
{
    const dp_optimizer_config *o = &vs->opt;
    int has_m = o->kind == DP_OPT_ADAMW || (o->kind == DP_OPT_SGD && o->momentum != 0.0f);
    double g_scale = vs->grad_atol * rms_of(g_cpu, n);
    for (size_t i = 0; i < n; i++) {
        verify_expect want = {p_cpu[i], 0};
        if (has_m) {
            verify_expect m = verify_expect_m(o, m_cpu[i], g_cpu[i], g_drv[i]);
            compare_element(&r->moments, i, m_drv[i], m.value, m.tol);
        }
        if (o->kind == DP_OPT_ADAMW) {
            verify_expect v = verify_expect_v(o, v_cpu[i], g_cpu[i], g_drv[i]);
            compare_element(&r->moments, i, v_drv[i], v.value, v.tol);
            want = verify_replay_adamw(o, step, p_cpu[i], m_cpu[i], v_cpu[i], m_drv[i], v_drv[i]);
            if (fabs((double)g_cpu[i]) <= g_scale + vs->grad_rtol * fabs((double)g_cpu[i])) {
                double apart = fabs((double)p_drv[i] - p_cpu[i]) / o->lr;
                r->undefined++;
                if (apart > r->undefined_apart || apart != apart) r->undefined_apart = apart;
            }
        } else if (o->kind == DP_OPT_SGD) {
            want = verify_replay_sgd(o, p_cpu[i], has_m ? &m_cpu[i] : NULL, g_cpu[i], g_drv[i]);
        }
        compare_element(&r->judged, i, p_drv[i], want.value, want.tol);
        compare_element(&r->apart, i, p_drv[i], p_cpu[i], INFINITY);
        /* against the float nearest the replay: where the replayed step moves the parameter by less
         * than an ulp, a correct driver lands on that float, and only a driver that rounds one way
         * lands beside it time and again */
        float nearest = (float)want.value;
        if (p_drv[i] > nearest) r->above++;
        else if (p_drv[i] < nearest) r->below++;
    }
}

static dp_status read_both(const verify_session *vs, const tensor_at *t, dp_tensor_kind which, float *drv, float *cpu,
                           size_t n)
{
    size_t n1 = n, n2 = n;
    if (drv) DP_CHECK(dp_runtime_read_tensor(vs->drv, t->stage, t->copy, t->index, which, drv, &n1, NULL));
    if (cpu) DP_CHECK(dp_runtime_read_tensor(vs->cpu, t->stage, t->copy, t->index, which, cpu, &n2, NULL));
    if (n1 != n || n2 != n)
        return dp_fail(DP_ERR_INVALID, "stage %d parameter %d has %zu elements on the driver and %zu on the cpu",
                       t->stage, t->index, n1, n2);
    return DP_OK;
}

/* the CPU's state into the driver, so that the next step starts both from it */
static dp_status sync_tensor(const verify_session *vs, const tensor_at *t, const float *p, const float *m,
                             const float *v, size_t n)
{
    const dp_optimizer_config *o = &vs->opt;
    if (o->kind == DP_OPT_NONE) return DP_OK;
    DP_CHECK(dp_runtime_write_tensor(vs->drv, t->stage, t->copy, t->index, DP_TENSOR_VALUE, p, n));
    if (o->kind == DP_OPT_ADAMW || o->momentum != 0.0f)
        DP_CHECK(dp_runtime_write_tensor(vs->drv, t->stage, t->copy, t->index, DP_TENSOR_M, m, n));
    if (o->kind == DP_OPT_ADAMW) DP_CHECK(dp_runtime_write_tensor(vs->drv, t->stage, t->copy, t->index, DP_TENSOR_V, v, n));
    return DP_OK;
}

static dp_status check_tensor(verify_session *vs, int k, int step, float *buf)
{
    const tensor_at *t = &vs->places[k];
    size_t n = vs->params[k].elements;
    float *g_drv = buf, *g_cpu = buf + n, *p_drv = buf + 2 * n, *p_cpu = buf + 3 * n;
    float *m_drv = buf + 4 * n, *m_cpu = buf + 5 * n, *v_drv = buf + 6 * n, *v_cpu = buf + 7 * n;
    DP_CHECK(read_both(vs, t, DP_TENSOR_GRAD, g_drv, g_cpu, n));
    DP_CHECK(read_both(vs, t, DP_TENSOR_VALUE, p_drv, p_cpu, n));
    DP_CHECK(read_both(vs, t, DP_TENSOR_M, m_drv, m_cpu, n));
    DP_CHECK(read_both(vs, t, DP_TENSOR_V, v_drv, v_cpu, n));
    judge_by_scale(&vs->grads[k], g_drv, g_cpu, n, vs->grad_atol, vs->grad_rtol);
    judge_params(vs, &vs->params[k], step, p_drv, p_cpu, m_drv, m_cpu, v_drv, v_cpu, g_drv, g_cpu, n);
    return sync_tensor(vs, t, p_cpu, m_cpu, v_cpu, n);
}

dp_status verify_tensors_and_sync(verify_session *vs, int step)
{
    size_t most = 1;
    for (int k = 0; k < vs->ntensors; k++) most = vs->params[k].elements > most ? vs->params[k].elements : most;
    float *buf = malloc(sizeof(float) * 8 * most);
    if (!buf) return dp_fail(DP_ERR_NOMEM, "out of memory for a tensor of %zu elements, eight times", most);
    dp_status e = DP_OK;
    for (int k = 0; k < vs->ntensors && e == DP_OK; k++) e = check_tensor(vs, k, step, buf);
    free(buf);
    return e;
}

/* ----------------------------------------------------------------------------
 * the report */

static void print_row(const verify_row *r, int is_param, const dp_optimizer_config *o, FILE *out)
{
    fprintf(out, "%-40s %9zu  %10.3g  %10.3g  %7.3f  %s", r->label, r->elements, r->apart.max_abs, r->apart.max_rel,
            r->judged.max_use, row_failed(r) ? "FAIL" : "ok");
    if (r->undefined)
        fprintf(out, "  %zu direction-undefined, up to %.2f lr apart", r->undefined, r->undefined_apart);
    fputc('\n', out);
    if (r->judged.outside)
        fprintf(out, "    %zu value(s) outside over all steps; first at %zu: driver %.9g, %s %.9g\n", r->judged.outside,
                r->judged.first_outside, r->judged.first_got, is_param && o->kind != DP_OPT_NONE ? "replayed" : "cpu",
                r->judged.first_want);
    if (r->moments.outside)
        fprintf(out, "    %zu optimizer moment(s) outside over all steps; first at %zu: driver %.9g, expected %.9g\n",
                r->moments.outside, r->moments.first_outside, r->moments.first_got, r->moments.first_want);
    if (row_biased(r))
        fprintf(out, "    leans one way: the driver above the replayed step %zu times, below %zu: a rounding "
                     "biased in one direction\n", r->above, r->below);
}

int verify_report(const verify_session *vs, int quiet, FILE *out)
{
    int failed = 0, rows = 0;
    size_t undefined = 0, above = 0, below = 0;
    double undefined_apart = 0;
    compare_stats grads = {0}, params = {0};
    for (int k = -1; k < 2 * vs->ntensors; k++) {
        const verify_row *r = k < 0 ? &vs->losses : k < vs->ntensors ? &vs->grads[k] : &vs->params[k - vs->ntensors];
        int is_param = k >= vs->ntensors;
        rows++;
        if (row_failed(r)) failed++;
        if (!quiet || row_failed(r)) print_row(r, is_param, &vs->opt, out);
        if (k >= 0 && !is_param) compare_merge(&grads, &r->judged);
        if (is_param) {
            compare_merge(&params, &r->judged);
            undefined += r->undefined, above += r->above, below += r->below;
            undefined_apart = r->undefined_apart > undefined_apart ? r->undefined_apart : undefined_apart;
        }
    }
    fprintf(out, "\njudged over %d step(s), by |driver - cpu| <= atol x rms + rtol x |cpu|: %zu loss values (largest "
                 "use %.3f) and %zu gradient values (%.3f);\n",
            vs->steps, vs->losses.judged.n, vs->losses.judged.max_use, grads.n, grads.max_use);
    if (vs->opt.kind == DP_OPT_NONE)
        fprintf(out, "%zu parameter values bit-equal (no optimizer)\n", params.n);
    else
        fprintf(out, "%zu parameter values against the %s step replayed from the driver's own %s, within "
                     "rounding (%.3f), landing above the float nearest it %zu times, below %zu",
                params.n, vs->opt.kind == DP_OPT_ADAMW ? "AdamW" : "SGD",
                vs->opt.kind == DP_OPT_ADAMW ? "moments" : "gradient", params.max_use, above, below);
    if (vs->opt.kind == DP_OPT_ADAMW)
        fprintf(out, ";\n  of these %zu direction-undefined (the cpu's gradient within its own tolerance): up to "
                     "%.2f lr from the cpu, bound %.2f lr",
                undefined, undefined_apart, 2 * verify_adamw_step_bound(&vs->opt, vs->steps));
    if (vs->opt.kind != DP_OPT_NONE) fputc('\n', out);
    if (vs->routing_note[0]) fprintf(out, "%s\n", vs->routing_note);
    if (failed && vs->routing_failed)
        fprintf(out, "\nFAIL: %d of %d tensors outside the tolerance, and the expert choices\n", failed, rows);
    else if (failed) fprintf(out, "\nFAIL: %d of %d tensors outside the tolerance\n", failed, rows);
    else if (vs->routing_failed) fprintf(out, "\nFAIL: the expert choices (%d tensors within the tolerance)\n", rows);
    else fprintf(out, "\nPASS: %d tensors within the tolerance\n", rows);
    return failed + vs->routing_failed;
}
