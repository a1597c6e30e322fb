/* train_teacher.c: the fixed random network whose outputs `dualpipe train` learns to
 * reproduce (see train_teacher.h). */
#include "tools/train_teacher.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "tools/cli.h"

int train_teacher_open(train_teacher *t, const char *driver, const dp_model_config *m, int chunks, uint64_t seed,
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
    tm.block = DP_BLOCK_MLP, tm.num_layer_kinds = 0;
    memset(&tm.moe, 0, sizeof tm.moe); /* a dense teacher, whatever the student */
    tm.seed = seed ^ 0x7eac4e5ull;
    tm.dtype = DP_DTYPE_F32; /* the teacher's targets are fp32 whatever the student's dtype */
    t->scale = 0;
    t->out = malloc(sizeof(float) * dp_model_act_elems(&tm) * (size_t)chunks);
    if (!t->out) {
        cli_error("out of memory for the teacher's outputs");
        return 1;
    }
    if (t->ops->open(&dc, &t->dev) != DP_OK ||
        dp_stage_create(&(dp_stage_env){.ops = t->ops, .dev = t->dev}, &tm, 0, 2, &t->stage) != DP_OK) {
        cli_error("cannot build the teacher network: %s", dp_last_error());
        return 1;
    }
    return 0;
}

void train_teacher_close(train_teacher *t)
{
    dp_stage_destroy(t->stage);
    if (t->dev) t->ops->close(t->dev);
    free(t->out);
}

int train_teacher_targets(train_teacher *t, const dp_model_config *m, int chunks, const float *x, void *targets)
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
