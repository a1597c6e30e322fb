/* train_data.c: `dualpipe train --init`, `--save-params` and `--data`: the model's parameters
 * under PyTorch state_dict names and each step's batch, read from and written to safetensors
 * files, so that a run can be repeated by any other implementation on the same numbers. */
#include "tools/train_data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/block.h"
#include "tools/cli.h"

int train_param_name(dp_runtime *rt, int stage, int index, char *name, size_t size, int *ndim, int64_t shape[2])
{
    const dp_model_config *m = dp_runtime_model(rt);
    /* the stage lists its layers' parameters in order, each layer's as its kind's param_spec */
    for (int b = 0, i = 0; b < m->layers_per_stage; b++) {
        int layer = stage * m->layers_per_stage + b;
        dp_block_kind kind = dp_model_layer_kind(m, layer);
        dp_block_layer L = {.ops = dp_block_table[kind], .cfg = m, .stage = stage, .index = b, .layer = layer};
        int np = L.ops->num_params(&L);
        if (index >= i + np) {
            i += np;
            continue;
        }
        dp_block_param_spec spec;
        L.ops->param_spec(&L, index - i, &spec);
        char own[32];
        size_t count = 0;
        if (dp_runtime_read_tensor(rt, stage, 0, index, DP_TENSOR_VALUE, NULL, &count, own) != DP_OK) {
            cli_error("%s", dp_last_error());
            return 1;
        }
        char want[64];
        snprintf(want, sizeof want, "block%d.%s", b, spec.name);
        if (strcmp(own, want) != 0 || count != spec.rows * spec.cols) {
            cli_error("stage %d parameter %d is %s of %zu floats, not %s of %zu: the model and its kinds disagree",
                      stage, index, own, count, want, spec.rows * spec.cols);
            return 1;
        }
        /* a buffer (MoE's gate.bias) is named as it is, a parameter as a weight */
        snprintf(name, size, "layers.%d.%s%s", layer, spec.name, spec.buffer ? "" : ".weight");
        /* a [1 x n] parameter (a norm's weight) is a vector in PyTorch */
        *ndim = spec.rows == 1 ? 1 : 2;
        shape[0] = (int64_t)(spec.rows == 1 ? spec.cols : spec.rows), shape[1] = (int64_t)spec.cols;
        return 0;
    }
    cli_error("stage %d has no parameter %d", stage, index);
    return 1;
}

static int stages_of(dp_runtime *rt) { return dp_runtime_schedule(rt)->num_stages; }

int train_params_load(dp_runtime *rt, dp_reference *ref, const char *path)
{
    dp_safetensors *f;
    dp_status st = dp_safetensors_open(path, &f);
    if (st != DP_OK) {
        cli_error("--init: %s", dp_last_error());
        return st == DP_ERR_NOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    int rc = 0, used = 0, pipes = dp_runtime_schedule(rt)->num_pipes;
    float *buf = NULL;
    for (int s = 0; s < stages_of(rt) && !rc; s++)
        for (int i = 0; i < dp_runtime_num_params(rt, s) && !rc; i++) {
            char name[96];
            int ndim;
            int64_t shape[2];
            if (train_param_name(rt, s, i, name, sizeof name, &ndim, shape)) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            size_t n = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1);
            float *b = realloc(buf, n * sizeof(float));
            if (!b) {
                cli_error("out of memory for %s (%zu floats)", name, n);
                rc = CLI_EXIT_FAIL;
                break;
            }
            buf = b;
            st = dp_safetensors_get(f, name, DP_ST_F32, ndim, shape, buf);
            if (st != DP_OK) {
                cli_error("--init: %s%s", dp_last_error(),
                          st == DP_ERR_NOT_FOUND ? " (the model needs every layers.<L>.<param>.weight, F32: see "
                                                   "dualpipe(1), --init)"
                                                 : "");
                rc = CLI_EXIT_USAGE;
                break;
            }
            used++;
            for (int c = 0; c < pipes && st == DP_OK; c++) {
                st = dp_runtime_write_tensor(rt, s, c, i, DP_TENSOR_VALUE, buf, n);
                if (st == DP_OK && ref) st = dp_reference_write_tensor(ref, s, c, i, DP_TENSOR_VALUE, buf, n);
            }
            if (st != DP_OK) {
                cli_error("--init: writing %s: %s", name, dp_last_error());
                rc = CLI_EXIT_FAIL;
            }
        }
    if (!rc && used != dp_safetensors_count(f)) {
        /* name the first tensor the model has no place for */
        for (int k = 0; k < dp_safetensors_count(f); k++) {
            const char *tn = dp_safetensors_tensor(f, k)->name;
            int found = 0;
            for (int s = 0; s < stages_of(rt) && !found; s++)
                for (int i = 0; i < dp_runtime_num_params(rt, s) && !found; i++) {
                    char name[96];
                    int ndim;
                    int64_t shape[2];
                    found = train_param_name(rt, s, i, name, sizeof name, &ndim, shape) == 0 && strcmp(name, tn) == 0;
                }
            if (!found) {
                cli_error("--init: %s holds \"%s\", which this model has no parameter for (%d tensors, the model has "
                          "%d): a different model's parameters?",
                          path, tn, dp_safetensors_count(f), used);
                break;
            }
        }
        rc = CLI_EXIT_USAGE;
    }
    free(buf);
    dp_safetensors_close(f);
    return rc;
}

int train_params_save(dp_runtime *rt, output_file *out)
{
    dp_safetensors_writer *w;
    if (dp_safetensors_writer_create(&w) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    const dp_model_config *m = dp_runtime_model(rt);
    char text[64];
    dp_status st = dp_safetensors_add_metadata(w, "format", "pt");
    snprintf(text, sizeof text, "%d", m->hidden);
    if (st == DP_OK) st = dp_safetensors_add_metadata(w, "hidden", text);
    snprintf(text, sizeof text, "%d", m->ffn);
    if (st == DP_OK) st = dp_safetensors_add_metadata(w, "ffn", text);
    snprintf(text, sizeof text, "%d", stages_of(rt) * m->layers_per_stage);
    if (st == DP_OK) st = dp_safetensors_add_metadata(w, "layers", text);
    int rc = st == DP_OK ? 0 : CLI_EXIT_FAIL;
    float *buf = NULL;
    for (int s = 0; s < stages_of(rt) && !rc; s++)
        for (int i = 0; i < dp_runtime_num_params(rt, s) && !rc; i++) {
            char name[96];
            int ndim;
            int64_t shape[2];
            if (train_param_name(rt, s, i, name, sizeof name, &ndim, shape)) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            size_t n = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1), count = 0;
            float *b = realloc(buf, n * sizeof(float));
            if (!b) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            buf = b;
            st = dp_runtime_read_tensor(rt, s, 0, i, DP_TENSOR_VALUE, buf, &count, NULL);
            if (st == DP_OK) st = dp_safetensors_add(w, name, DP_ST_F32, ndim, shape, buf);
            if (st != DP_OK) rc = CLI_EXIT_FAIL;
        }
    if (!rc && (st = dp_safetensors_write_stream(w, out->fp, out->path ? out->path : "<stdout>")) != DP_OK)
        rc = CLI_EXIT_FAIL;
    if (rc) cli_error("--save-params %s: %s", out->path ? out->path : "-", st != DP_OK ? dp_last_error() : "out of memory");
    if (rc) output_file_abort(out);
    else if (output_file_commit(out)) rc = CLI_EXIT_FAIL;
    free(buf);
    dp_safetensors_writer_destroy(w);
    return rc;
}

/* ----------------------------------------------------------------------------
 * --data */

static int check_step(const train_data *d, int step, int64_t *xs, int64_t *ts, int *tnd)
{
    char name[64];
    xs[0] = d->chunks, xs[1] = d->tokens, xs[2] = d->hidden;
    ts[0] = d->chunks, ts[1] = d->tokens, ts[2] = d->hidden;
    *tnd = d->loss == DP_LOSS_XENT ? 2 : 3;
    const char *part[2] = {"inputs", "targets"};
    for (int p = 0; p < 2; p++) {
        snprintf(name, sizeof name, "step%d.%s", step, part[p]);
        const dp_st_tensor *t = dp_safetensors_find(d->f, name);
        dp_st_dtype want = p == 1 && d->loss == DP_LOSS_XENT ? DP_ST_I32 : DP_ST_F32;
        int nd = p == 0 ? 3 : *tnd, same = t && t->dtype == want && t->ndim == nd;
        for (int k = 0; same && k < nd; k++) same = t->shape[k] == (p == 0 ? xs : ts)[k];
        if (!t) {
            int have = 0;
            char probe[64];
            do snprintf(probe, sizeof probe, "step%d.inputs", ++have);
            while (dp_safetensors_find(d->f, probe));
            cli_error("--data: %s has no \"%s\": it holds data for %d step%s (step1 .. step%d), fewer than --steps asks for",
                      dp_safetensors_path(d->f), name, have - 1, have == 2 ? "" : "s", have - 1);
            return 1;
        }
        if (!same) {
            char last[32] = "";
            if (nd == 3) snprintf(last, sizeof last, ", %d", d->hidden);
            cli_error("--data: %s: \"%s\" is %s with %d dims, expected %s [%d, %d%s] (--chunks, --tokens%s, --loss %s)",
                      dp_safetensors_path(d->f), name, dp_st_dtype_name(t->dtype), t->ndim, dp_st_dtype_name(want),
                      d->chunks, d->tokens, last, nd == 3 ? ", --hidden" : "", d->loss == DP_LOSS_XENT ? "xent" : "mse");
            return 1;
        }
    }
    return 0;
}

int train_data_open(train_data *d, const char *path, const dp_model_config *m, int chunks, int steps)
{
    memset(d, 0, sizeof *d);
    dp_status st = dp_safetensors_open(path, &d->f);
    if (st != DP_OK) {
        cli_error("--data: %s", dp_last_error());
        return st == DP_ERR_NOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    d->chunks = chunks, d->tokens = m->tokens, d->hidden = m->hidden, d->loss = m->loss;
    int64_t xs[3], ts[3];
    int tnd;
    for (int k = 1; k <= steps; k++)
        if (check_step(d, k, xs, ts, &tnd)) return CLI_EXIT_USAGE;
    return 0;
}

int train_data_step(const train_data *d, int step, float *inputs, void *targets)
{
    int64_t xs[3], ts[3];
    int tnd;
    char name[64];
    if (check_step(d, step, xs, ts, &tnd)) return 1;
    snprintf(name, sizeof name, "step%d.inputs", step);
    dp_status st = dp_safetensors_get(d->f, name, DP_ST_F32, 3, xs, inputs);
    snprintf(name, sizeof name, "step%d.targets", step);
    if (st == DP_OK) st = dp_safetensors_get(d->f, name, d->loss == DP_LOSS_XENT ? DP_ST_I32 : DP_ST_F32, tnd, ts, targets);
    if (st != DP_OK) {
        cli_error("--data: %s", dp_last_error());
        return 1;
    }
    return 0;
}

void train_data_close(train_data *d)
{
    dp_safetensors_close(d->f);
    d->f = NULL;
}
