/* test_gradcheck.c: the stage's gradients against central finite differences of its own
 * forward, for every block kind and loss the model config accepts, through the public stage API
 * (dp_stage_forward / backward_input / backward_weight on the cpu driver): the gradient of the
 * stage input and of every element of every parameter; kinds mixed in one stage too.
 *
 * What is differentiated. A last stage: its loss (MSE or cross-entropy, fp32, summed in double
 * by the loss kernels). A stage before it: L = sum_i dy_i y_i for a fixed random dy, summed in
 * double here, whose gradient is exactly what backward computes from that dy.
 *
 * Step and tolerance. In fp32, L~ = L + e with |e| <= delta, the rounding of the forward; a
 * central difference with step h then errs by at most delta / h (rounding) + h^2 |L'''| / 6
 * (truncation). Richardson's combination D = (4 D(h) - D(2h)) / 3 cancels the h^2 term, leaving
 * h^4 |L^(5)| / 30, at the price of (4/h + 1/(2h)) delta / 3 = 1.5 delta / h of rounding.
 * delta: every output of these small stages (hidden 4, inner width 8) goes through fewer than 40
 * fp32 roundings of terms bounded by about 4 in magnitude (kernel bounds of
 * tests/kernel_fp64_checks.h), so |e| <= 40 u 4 = 1e-5 for a loss or a sum of order 1. With
 * h = 2^-5 the rounding term is at most 1.5e-5 / 2^-5 = 5e-4; the truncation term is
 * (2^-5)^4 / 30 |L^(5)| = 3e-8 |L^(5)|, below 1e-3 |L'| while the fifth derivative stays under
 * 3e4 times the first, a wide margin for these smooth functions of unit-scale values. Hence
 * |D - g| <= 5e-4 + 1e-3 |D| (measured: below 5e-6); a gradient off by a factor (halved, or 1.5x
 * on some elements) misses it by far. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/model.h"
#include "tests/tap.h"

#define STEP 0x1p-5
#define ATOL 5e-4
#define RTOL 1e-3

static const dp_device_ops *ops;
static dp_device *dev;

static void try(dp_status st, const char *what)
{
    if (st != DP_OK) {
        printf("Bail out! %s: %s\n", what, dp_last_error());
        exit(1);
    }
}

static void put(void *d, const void *h, size_t bytes) { try(ops->copy(dev, d, h, bytes, DP_COPY_HOST_TO_DEVICE, NULL), "copy"); }
static void get(void *h, const void *d, size_t bytes) { try(ops->copy(dev, h, d, bytes, DP_COPY_DEVICE_TO_HOST, NULL), "copy"); }

typedef struct {
    dp_stage *st;
    dp_slot *slot;
    const dp_model_config *cfg;
    int last;
    float *x;       /* host input [T x h] */
    double *dy;     /* host output gradient (a stage before the last) */
    float *loss;    /* device */
    void *target;   /* device */
    size_t n;       /* T x h */
} problem;

/* L at the current parameters and input, in double */
static double loss_at(problem *p)
{
    put(p->slot->x, p->x, sizeof(float) * p->n);
    p->slot->target = p->target;
    try(dp_stage_forward(p->st, NULL, p->slot, p->last ? p->loss : NULL), "forward");
    if (p->last) {
        float l;
        get(&l, p->loss, sizeof l);
        return l;
    }
    float *y = malloc(sizeof(float) * p->n);
    get(y, p->slot->y, sizeof(float) * p->n);
    double s = 0;
    for (size_t i = 0; i < p->n; i++) s += p->dy[i] * y[i];
    free(y);
    return s;
}

/* central difference of L along one float (host or device), step h, with the steps as rounded */
static double central(problem *p, float *host_elem, float *dev_elem, double h)
{
    float v0;
    if (host_elem) v0 = *host_elem;
    else get(&v0, dev_elem, sizeof v0);
    float vp = (float)(v0 + h), vm = (float)(v0 - h);
    double l[2];
    for (int k = 0; k < 2; k++) {
        float v = k ? vm : vp;
        if (host_elem) *host_elem = v;
        else put(dev_elem, &v, sizeof v);
        l[k] = loss_at(p);
    }
    if (host_elem) *host_elem = v0;
    else put(dev_elem, &v0, sizeof v0);
    return (l[0] - l[1]) / ((double)vp - (double)vm);
}

static double richardson(problem *p, float *host_elem, float *dev_elem)
{
    double d1 = central(p, host_elem, dev_elem, STEP), d2 = central(p, host_elem, dev_elem, 2 * STEP);
    return (4 * d1 - d2) / 3;
}

/* every element of one gradient against its finite difference */
static int check_grad(problem *p, const char *what, const float *g, size_t n, float *host, float *devp, double *worst)
{
    for (size_t i = 0; i < n; i++) {
        double fd = richardson(p, host ? host + i : NULL, devp ? devp + i : NULL);
        double err = fabs(fd - g[i]), tol = ATOL + RTOL * fabs(fd);
        if (!(err <= tol)) {
            tap_diag("%s[%zu]: backward %.9g, finite difference %.9g (|d| %.3g > %.3g)", what, i, (double)g[i], fd, err,
                     tol);
            return 0;
        }
        if (err / tol > *worst) *worst = err / tol;
    }
    return 1;
}

static void gradcheck(dp_model_config cfg, int last)
{
    dp_stage *st;
    char label[128];
    char kinds[48] = "";
    for (int b = 0; b < cfg.layers_per_stage; b++) {
        const char *name = dp_block_kind_name(dp_model_layer_kind(&cfg, (last ? 1 : 0) * cfg.layers_per_stage + b));
        snprintf(kinds + strlen(kinds), sizeof kinds - strlen(kinds), "%s%s", b ? "+" : "", name ? name : "?");
    }
    snprintf(label, sizeof label, "%s, %d layer%s, %s", kinds, cfg.layers_per_stage, cfg.layers_per_stage > 1 ? "s" : "",
             !last ? "stage before the last (L = <dy, y>)" : cfg.loss == DP_LOSS_MSE ? "mse loss" : cfg.loss == DP_LOSS_XENT ? "xent loss" : "new loss");
    dp_status s = dp_stage_create(&(dp_stage_env){.ops = ops, .dev = dev}, &cfg, last ? 1 : 0, 2, &st);
    if (s != DP_OK) {
        tap_ok(0, "%s: create a stage: %s", label, dp_last_error());
        return;
    }
    /* MoE gates' balancing biases: the selection is piecewise constant in the inputs, so a finite
     * difference across a change of selection measures a jump, not the gradient. Biases far
     * apart relative to the scores in (0, 1) (expert e: -2 e) fix it; test_engine_moe.c holds
     * varied selections to the single-rank reference bit for bit */
    for (int i = 0; i < dp_stage_num_params(st); i++) {
        dp_param_view v;
        dp_stage_param(st, i, &v);
        if (!v.buffer) continue;
        float *b = malloc(sizeof(float) * v.count);
        for (size_t e = 0; e < v.count; e++) b[e] = -2.0f * (float)e;
        put(v.value, b, sizeof(float) * v.count);
        free(b);
    }
    problem p = {.st = st, .cfg = dp_stage_config(st), .last = last};
    cfg = *p.cfg;
    p.n = (size_t)cfg.tokens * cfg.hidden;
    p.x = malloc(sizeof(float) * p.n);
    p.dy = malloc(sizeof(double) * p.n);
    for (size_t i = 0; i < p.n; i++) p.x[i] = dp_counter_uniform(77, 1, i), p.dy[i] = dp_counter_uniform(77, 2, i);
    try(dp_stage_slot_get(st, &p.slot), "slot");
    void *mem;
    try(ops->alloc(dev, sizeof(float), &mem), "alloc");
    p.loss = mem;
    size_t tb = dp_model_target_bytes(&cfg);
    void *host_target = malloc(tb);
    if (cfg.loss == DP_LOSS_MSE)
        for (size_t i = 0; i < p.n; i++) ((float *)host_target)[i] = dp_counter_uniform(77, 3, i);
    else
        for (int r = 0; r < cfg.tokens; r++) ((int32_t *)host_target)[r] = (int32_t)((r * 5 + 1) % cfg.hidden);
    try(ops->alloc(dev, tb, &p.target), "alloc");
    put(p.target, host_target, tb);

    /* the analytic gradients: forward, backward_input (with dx), backward_weight from zero */
    try(dp_stage_zero_grad(st, NULL), "zero_grad");
    put(p.slot->x, p.x, sizeof(float) * p.n);
    p.slot->target = p.target;
    try(dp_stage_forward(st, NULL, p.slot, last ? p.loss : NULL), "forward");
    if (!last) {
        float *dyf = malloc(sizeof(float) * p.n);
        for (size_t i = 0; i < p.n; i++) dyf[i] = (float)p.dy[i];
        put(p.slot->dy, dyf, sizeof(float) * p.n);
        free(dyf);
    }
    try(dp_stage_backward_input(st, NULL, p.slot, 1), "backward_input");
    try(dp_stage_backward_weight(st, NULL, p.slot), "backward_weight");
    float *dx = malloc(sizeof(float) * p.n);
    get(dx, p.slot->dx, sizeof(float) * p.n);
    size_t ng;
    float *gdev = dp_stage_grads(st, &ng), *grads = malloc(sizeof(float) * ng);
    get(grads, gdev, sizeof(float) * ng);

    double worst = 0;
    int ok = check_grad(&p, "dL/dx", dx, p.n, p.x, NULL, &worst);
    size_t checked = p.n;
    char names[256] = "";
    for (int i = 0; i < dp_stage_num_params(st) && ok; i++) {
        dp_param_view v;
        dp_stage_param(st, i, &v);
        if (v.buffer) continue; /* no gradient: its "gradient" counts tokens */
        ok = check_grad(&p, v.name, grads + (v.grad - gdev), v.count, NULL, v.value, &worst);
        checked += v.count;
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", v.name);
    }
    tap_ok(ok, "%s: dL/dx and every parameter (%s), %zu elements, equal their finite differences within "
               "5e-4 + 1e-3 |d| (worst %.2f of it)", label, names, checked, worst);
    dp_stage_slot_put(st, p.slot);
    ops->free(dev, p.loss), ops->free(dev, p.target);
    free(p.x), free(p.dy), free(host_target), free(dx), free(grads);
    dp_stage_destroy(st);
}

int main(void)
{
    const dp_driver *d;
    if (dp_driver_load("cpu", &d) != DP_OK) {
        printf("Bail out! cpu driver: %s\n", dp_last_error());
        return 1;
    }
    ops = d->device;
    dp_device_config dc = {.threads = 1};
    try(ops->open(&dc, &dev), "open");
    /* MoE layers: 4 experts in 2 groups, 1 group kept, top 2, a shared expert, route_scale 1.5 (the
     * routing is piecewise constant: with these inputs no selection changes within the steps) */
    dp_moe_config moe = {.experts = 4, .topk = 2, .groups = 2, .topk_groups = 1, .expert_hidden = 3,
                         .shared_experts = 1, .route_scale = 1.5f, .moe_layers_set = 1};
    /* every block kind and every loss the config accepts (a new one is checked as it lands) */
    int kinds = 0, losses = 0;
    for (int kind = 0; kind < 64; kind++) {
        dp_model_config cfg = {.hidden = 4, .ffn = 8, .tokens = 3, .seed = 5, .block = (dp_block_kind)kind};
        if (kind == DP_BLOCK_MOE) cfg.moe = moe;
        if (dp_model_config_check(&cfg) != DP_OK) continue;
        kinds++;
        for (int layers = 1; layers <= 2; layers++) {
            cfg.layers_per_stage = layers;
            gradcheck(cfg, 0);
            for (int loss = 0; loss < 64; loss++) {
                dp_model_config lc = cfg;
                lc.loss = (dp_loss_kind)loss;
                if (dp_model_config_check(&lc) != DP_OK) continue;
                losses += kind == 0 && layers == 1;
                gradcheck(lc, 1);
            }
        }
    }
    /* kinds mixed in one stage (a kind per layer: stage 0 mlp then residual, stage 1 the reverse) */
    dp_model_config mix = {.hidden = 4, .ffn = 8, .tokens = 3, .seed = 5, .layers_per_stage = 2, .num_layer_kinds = 4,
                           .layer_kind = {DP_BLOCK_MLP, DP_BLOCK_RESIDUAL, DP_BLOCK_RESIDUAL, DP_BLOCK_MLP}};
    dp_status mst = dp_model_config_check(&mix);
    if (tap_ok(mst == DP_OK, "a model mixing kinds layer by layer is accepted%s%s", mst ? ": " : "", mst ? dp_last_error() : "")) {
        gradcheck(mix, 0);
        gradcheck(mix, 1);
    }
    /* MoE between dense layers, as DeepSeek-V3 mixes them; and without group limits or shared experts */
    dp_model_config mixm = {.hidden = 4, .ffn = 8, .tokens = 3, .seed = 5, .layers_per_stage = 2, .num_layer_kinds = 4,
                            .layer_kind = {DP_BLOCK_RESIDUAL, DP_BLOCK_MOE, DP_BLOCK_MOE, DP_BLOCK_MLP},
                            .moe = {.experts = 3, .topk = 2, .expert_hidden = 2}};
    if (tap_ok(dp_model_config_check(&mixm) == DP_OK, "a model mixing dense and MoE layers is accepted")) {
        gradcheck(mixm, 0);
        gradcheck(mixm, 1);
    }
    tap_ok(kinds == DP_BLOCK_NUM_KINDS && losses >= 2, "block kinds checked: %d of %d, losses: %d (mse, xent at least)",
           kinds, DP_BLOCK_NUM_KINDS, losses);
    ops->close(dev);
    return tap_done();
}
