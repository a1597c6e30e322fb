/* reference.c: the single-rank sequential reference (see reference.h). It shares the stage
 * code with the pipelined run, so a difference between the two is a bug in scheduling or
 * communication, never in arithmetic. */
#define _POSIX_C_SOURCE 200809L
#include "engine/reference.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/host_copy.h"
#include "engine/param_io.h"

struct dp_reference {
    dp_runtime_config cfg;
    const dp_driver *drv;
    dp_device *dev;
    int num_stages, num_pipes, chunks_per_pipe;
    int replicas;      /* replicas whose micro-batches a step runs (>= 1): data-parallel x expert-parallel */
    int ep;            /* expert-parallel replicas among them (>= 1) */
    dp_stage **stages; /* [pipe * num_stages + stage]: a copy of the model per pipe */
    float **sum;       /* replicas > 1: [pipe * num_stages + stage], device, the replicas' gradients summed */
    float **ep_sum;    /* ep > 1: the same, for the ep replicas of one data-parallel replica */
    float *loss;        /* device: one micro-batch's loss */
    void *target;       /* device: its target, in the model's dtype (MSE) or int32 labels */
    dp_cast_staging staging;
    int step;
};

dp_status dp_reference_create(const dp_runtime_config *cfg_in, dp_reference **out)
{
    *out = NULL;
    dp_runtime_config cfg = *cfg_in;
    if (!cfg.driver) cfg.driver = "cpu";
    if (!cfg.schedule) cfg.schedule = "dualpipe";
    DP_CHECK(dp_model_config_check(&cfg.model));
    if (cfg.optimizer.kind != DP_OPT_NONE) dp_optimizer_config_defaults(&cfg.optimizer);
    if (cfg.dp < 0)
        return dp_fail(DP_ERR_INVALID, "data-parallel replicas must be >= 1 (0 or 1: none), got %d", cfg.dp);
    const dp_driver *drv;
    DP_CHECK(dp_driver_load(cfg.driver, &drv));
    dp_schedule_params sp = {.ranks = cfg.ranks, .chunks = cfg.chunks};
    dp_schedule *sched;
    DP_CHECK(dp_schedule_generate(cfg.schedule, &sp, &sched));
    dp_reference *ref = calloc(1, sizeof *ref);
    if (!ref) {
        dp_schedule_free(sched);
        return dp_fail(DP_ERR_NOMEM, "out of memory creating the reference");
    }
    ref->cfg = cfg;
    ref->drv = drv;
    ref->num_stages = sched->num_stages;
    ref->num_pipes = sched->num_pipes;
    ref->chunks_per_pipe = sched->chunks_per_pipe;
    ref->ep = cfg.ep > 1 ? cfg.ep : 1;
    ref->replicas = (cfg.dp > 1 ? cfg.dp : 1) * ref->ep;
    dp_schedule_free(sched);
    const dp_device_ops *D = drv->device;
    dp_device_config dc = {.threads = cfg.threads_per_rank, .flags = cfg.device_flags};
    dp_status st = D->open(&dc, &ref->dev);
    int n = ref->num_pipes * ref->num_stages;
    ref->stages = calloc((size_t)n, sizeof *ref->stages);
    if (st == DP_OK && !ref->stages) st = dp_fail(DP_ERR_NOMEM, "out of memory creating the reference");
    dp_stage_env env = {.ops = D, .dev = ref->dev};
    for (int i = 0; st == DP_OK && i < n; i++)
        st = dp_stage_create(&env, &cfg.model, i % ref->num_stages, ref->num_stages, &ref->stages[i]);
    void *p;
    if (st == DP_OK && (st = D->alloc(ref->dev, sizeof(float), &p)) == DP_OK) ref->loss = p;
    if (st == DP_OK) st = D->alloc(ref->dev, dp_model_target_bytes(&cfg.model), &ref->target);
    if (st == DP_OK && ref->replicas > 1 && !(ref->sum = calloc((size_t)n, sizeof *ref->sum)))
        st = dp_fail(DP_ERR_NOMEM, "out of memory creating the reference");
    if (st == DP_OK && ref->ep > 1 && !(ref->ep_sum = calloc((size_t)n, sizeof *ref->ep_sum)))
        st = dp_fail(DP_ERR_NOMEM, "out of memory creating the reference");
    for (int i = 0; st == DP_OK && ref->sum && i < n; i++) {
        size_t count;
        dp_stage_grads(ref->stages[i], &count);
        if ((st = D->alloc(ref->dev, (count ? count : 1) * sizeof(float), &p)) == DP_OK) ref->sum[i] = p;
        if (st == DP_OK && ref->ep_sum && (st = D->alloc(ref->dev, (count ? count : 1) * sizeof(float), &p)) == DP_OK)
            ref->ep_sum[i] = p;
    }
    if (st != DP_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dp_last_error());
        dp_reference_destroy(ref);
        return dp_fail(st, "%s", msg);
    }
    *out = ref;
    return DP_OK;
}

void dp_reference_destroy(dp_reference *ref)
{
    if (!ref) return;
    const dp_device_ops *D = ref->drv->device;
    for (int i = 0; ref->stages && i < ref->num_pipes * ref->num_stages; i++) dp_stage_destroy(ref->stages[i]);
    free(ref->stages);
    if (ref->dev)
        for (int i = 0; i < ref->num_pipes * ref->num_stages; i++) {
            if (ref->sum) D->free(ref->dev, ref->sum[i]);
            if (ref->ep_sum) D->free(ref->dev, ref->ep_sum[i]);
        }
    free(ref->sum);
    free(ref->ep_sum);
    if (ref->dev) {
        D->free(ref->dev, ref->loss);
        D->free(ref->dev, ref->target);
        dp_cast_staging_free(D, ref->dev, &ref->staging);
        D->close(ref->dev);
    }
    free(ref);
}

/* One micro-batch through every stage of one copy; with `train`, the loss and the backward
 * (input then weight gradient of each stage, last stage first). */
static dp_status run_micro_batch(dp_reference *ref, int pipe, const float *x_host, const void *target_host, int train,
                                 float *loss_host, float *out_host)
{
    const dp_device_ops *D = ref->drv->device;
    dp_device *dev = ref->dev;
    const dp_model_config *m = &ref->cfg.model;
    size_t act = dp_model_act_elems(m), bytes = dp_model_act_bytes(m);
    int S = ref->num_stages;
    dp_stage **stages = ref->stages + (size_t)pipe * S;
    dp_slot **slots = calloc((size_t)S, sizeof *slots);
    if (!slots) return dp_fail(DP_ERR_NOMEM, "out of memory in the reference");
    dp_status st = DP_OK;
    if (train && m->loss == DP_LOSS_MSE)
        st = dp_upload_f32(D, dev, NULL, &ref->staging, ref->target, m->dtype, target_host, act);
    else if (train)
        st = D->copy(dev, ref->target, target_host, dp_model_target_bytes(m), DP_COPY_HOST_TO_DEVICE, NULL);
    for (int s = 0; s < S && st == DP_OK; s++) {
        st = dp_stage_slot_get(stages[s], &slots[s]);
        if (st != DP_OK) break;
        if (s == 0) st = dp_upload_f32(D, dev, NULL, &ref->staging, slots[0]->x, m->dtype, x_host, act);
        else st = D->copy(dev, slots[s]->x, slots[s - 1]->y, bytes, DP_COPY_DEVICE_TO_DEVICE, NULL);
        slots[s]->target = ref->target;
        if (st == DP_OK) st = dp_stage_forward(stages[s], NULL, slots[s], train && s == S - 1 ? ref->loss : NULL);
    }
    if (st == DP_OK && !train) st = dp_download_f32(D, dev, NULL, &ref->staging, out_host, m->dtype, slots[S - 1]->y, act);
    if (st == DP_OK && train) st = D->copy(dev, loss_host, ref->loss, sizeof(float), DP_COPY_DEVICE_TO_HOST, NULL);
    for (int s = S - 1; train && s >= 0 && st == DP_OK; s--) {
        if (s < S - 1) st = D->copy(dev, slots[s]->dy, slots[s + 1]->dx, bytes, DP_COPY_DEVICE_TO_DEVICE, NULL);
        if (st == DP_OK) st = dp_stage_backward_input(stages[s], NULL, slots[s], s > 0);
        if (st == DP_OK) st = dp_stage_backward_weight(stages[s], NULL, slots[s]);
    }
    for (int s = 0; s < S; s++) dp_stage_slot_put(stages[s], slots[s]);
    free(slots);
    return st;
}

/* One data-parallel replica's micro-batches into fresh gradients (losses [chunks] of each of its
 * ep replicas): with expert parallelism each ep replica's on its own, summed per copy in ep
 * order, as the ep ranks sum them (rank.c, sync_gradients); then, with two copies, each copy
 * given the sum of both pipes' gradients, as a pair of ranks sums them. */
static dp_status replica_gradients(dp_reference *ref, int dp_replica, const float *inputs, const void *targets,
                                   float *losses)
{
    const dp_device_ops *D = ref->drv->device;
    const dp_model_config *m = &ref->cfg.model;
    size_t act = dp_model_act_elems(m), tb = dp_model_host_target_bytes(m);
    int S = ref->num_stages, P = ref->num_pipes, cpp = ref->chunks_per_pipe;
    for (int e = 0; e < ref->ep; e++) {
        int replica = dp_replica * ref->ep + e;
        for (int i = 0; i < P * S; i++) {
            DP_CHECK(dp_stage_zero_grad(ref->stages[i], NULL));
            dp_stage_set_ep_source(ref->stages[i], e);
        }
        for (int p = 0; p < P; p++)
            for (int k = 0; k < cpp; k++) {
                size_t mb = ((size_t)replica * P + p) * cpp + k;
                DP_CHECK(run_micro_batch(ref, p, inputs + mb * act, (const char *)targets + mb * tb, 1, &losses[mb],
                                         NULL));
            }
        /* an EPLB plan's replicated experts: ep rank e's rows of each ran on one replica, whose
         * gradient every replica takes before the ep ranks' sum (rank.c folds the sources alike) */
        for (int i = 0; i < P * S; i++) DP_CHECK(dp_stage_reduce_expert_grads(ref->stages[i], NULL));
        for (int i = 0; ref->ep > 1 && i < P * S; i++) {
            size_t count;
            float *g = dp_stage_grads(ref->stages[i], &count);
            if (e == 0) DP_CHECK(D->copy(ref->dev, ref->ep_sum[i], g, count * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, NULL));
            else DP_CHECK(D->add(ref->dev, NULL, DP_DTYPE_F32, count, ref->ep_sum[i], g, ref->ep_sum[i]));
        }
    }
    for (int i = 0; ref->ep > 1 && i < P * S; i++) {
        size_t count;
        float *g = dp_stage_grads(ref->stages[i], &count);
        DP_CHECK(D->copy(ref->dev, g, ref->ep_sum[i], count * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, NULL));
    }
    if (P == 2)
        for (int s = 0; s < S; s++)
            for (int i = 0; i < dp_stage_num_params(ref->stages[s]); i++) {
                dp_param_view a, b;
                dp_stage_param(ref->stages[s], i, &a);
                dp_stage_param(ref->stages[S + s], i, &b);
                DP_CHECK(D->add(ref->dev, NULL, DP_DTYPE_F32, a.count, a.grad, b.grad, a.grad));
                DP_CHECK(D->copy(ref->dev, b.grad, a.grad, a.count * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, NULL));
            }
    return DP_OK;
}

dp_status dp_reference_train_step(dp_reference *ref, const float *inputs, const void *targets, float *losses)
{
    const dp_device_ops *D = ref->drv->device;
    int n = ref->num_stages * ref->num_pipes;
    ref->step++;
    /* replica by replica, each summed within itself first, then added to the sum of the
     * replicas before it: ((G0 + G1) + G2) + ..., the grouping of the pipelined run's
     * all-reduce over the replicas (rank.c, sync_gradients) */
    int dps = ref->replicas / ref->ep;
    for (int d = 0; d < dps; d++) {
        DP_CHECK(replica_gradients(ref, d, inputs, targets, losses));
        for (int i = 0; dps > 1 && i < n; i++) {
            size_t count;
            float *g = dp_stage_grads(ref->stages[i], &count);
            if (d == 0) DP_CHECK(D->copy(ref->dev, ref->sum[i], g, count * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, NULL));
            else DP_CHECK(D->add(ref->dev, NULL, DP_DTYPE_F32, count, ref->sum[i], g, ref->sum[i]));
        }
    }
    for (int i = 0; dps > 1 && i < n; i++) {
        size_t count;
        float *g = dp_stage_grads(ref->stages[i], &count);
        DP_CHECK(D->copy(ref->dev, g, ref->sum[i], count * sizeof(float), DP_COPY_DEVICE_TO_DEVICE, NULL));
    }
    for (int i = 0; i < n; i++) DP_CHECK(dp_stage_optimizer_step(ref->stages[i], NULL, &ref->cfg.optimizer, ref->step));
    return DP_OK;
}

dp_status dp_reference_infer(dp_reference *ref, const float *inputs, float *outputs)
{
    size_t act = dp_model_act_elems(&ref->cfg.model);
    int cpp = ref->chunks_per_pipe;
    for (int d = 0; d < ref->replicas; d++)
        for (int p = 0; p < ref->num_pipes; p++)
            for (int k = 0; k < cpp; k++) {
                size_t mb = ((size_t)d * ref->num_pipes + p) * cpp + k;
                DP_CHECK(run_micro_batch(ref, p, inputs + mb * act, NULL, 0, NULL, outputs + mb * act));
            }
    return DP_OK;
}

static dp_status locate(const dp_reference *ref, int stage, int copy, dp_stage **out)
{
    if (stage < 0 || stage >= ref->num_stages || copy < 0 || copy >= ref->num_pipes)
        return dp_fail(DP_ERR_INVALID, "the reference has no stage %d copy %d (stages %d, copies %d)", stage, copy,
                       ref->num_stages, ref->num_pipes);
    *out = ref->stages[(size_t)copy * ref->num_stages + stage];
    return DP_OK;
}

dp_status dp_reference_read_tensor(dp_reference *ref, int stage, int copy, int index, dp_tensor_kind which,
                                   float *host, size_t *count, char name[32])
{
    dp_stage *st = NULL;
    DP_CHECK(locate(ref, stage, copy, &st));
    /* the parameter as one rank holding every expert lists it: an expert's first slot */
    int local = dp_stage_find_param(st, index, 0);
    return dp_param_read(ref->drv->device, ref->dev, st, local < 0 ? index : local, which, host, count, name);
}

dp_status dp_reference_write_tensor(dp_reference *ref, int stage, int copy, int index, dp_tensor_kind which,
                                    const float *host, size_t count)
{
    dp_stage *st = NULL;
    DP_CHECK(locate(ref, stage, copy, &st));
    if (!host) return dp_fail(DP_ERR_INVALID, "writing the reference's stage %d parameter %d: no host data", stage, index);
    int local = dp_stage_find_param(st, index, 0);
    if (local < 0) return dp_param_write(ref->drv->device, ref->dev, st, index, which, host, count); /* says why not */
    for (; local >= 0; local = dp_stage_find_param(st, index, local + 1))
        DP_CHECK(dp_param_write(ref->drv->device, ref->dev, st, local, which, host, count));
    return DP_OK;
}

dp_status dp_reference_read_param(dp_reference *ref, int stage, int index, int grad, float *host, size_t *count)
{
    return dp_reference_read_tensor(ref, stage, 0, index, grad ? DP_TENSOR_GRAD : DP_TENSOR_VALUE, host, count, NULL);
}

int dp_reference_step(const dp_reference *ref) { return ref->step; }

dp_status dp_reference_set_step(dp_reference *ref, int step)
{
    if (step < 0) return dp_fail(DP_ERR_INVALID, "the optimizer step count must be >= 0, got %d", step);
    ref->step = step;
    return DP_OK;
}
