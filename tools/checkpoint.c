/* checkpoint.c: saving and resuming training (see checkpoint.h). The tensors are found through
 * the runtime's state API (every parameter of every stage, its value and the optimizer's
 * state) and named by train_param_name, so parameters that new block kinds bring are saved and
 * restored with no change here. */
#define _POSIX_C_SOURCE 200809L
#include "tools/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "tools/checkpoint_index.h"
#include "tools/cli.h"
#include "tools/crc32.h"
#include "tools/train_data.h"

/* ----------------------------------------------------------------------------
 * what is saved: each parameter's value and the optimizer state its optimizer keeps, named as
 * PyTorch names them (torch.optim.AdamW's exp_avg and exp_avg_sq, SGD's momentum_buffer) */

typedef struct {
    dp_tensor_kind which;
    char name[128];
    int ndim;
    int64_t shape[2];
    size_t count;
} saved_tensor;

static int uses_m(const dp_optimizer_config *o) { return o->kind == DP_OPT_ADAMW || (o->kind == DP_OPT_SGD && o->momentum != 0); }
static int uses_v(const dp_optimizer_config *o) { return o->kind == DP_OPT_ADAMW; }

/* The tensors of parameter (stage, index) this run keeps: n of them in out[0..2]. */
static int tensors_of(dp_runtime *rt, const dp_optimizer_config *o, int stage, int index, saved_tensor out[3], int *n)
{
    char param[96];
    int ndim;
    int64_t shape[2];
    if (train_param_name(rt, stage, index, param, sizeof param, &ndim, shape)) return 1;
    size_t count = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1);
    *n = 0;
    const char *m_name = o->kind == DP_OPT_ADAMW ? "exp_avg" : "momentum_buffer";
    for (int k = 0; k < 3; k++) {
        saved_tensor *t = &out[*n];
        if ((k == 1 && !uses_m(o)) || (k == 2 && !uses_v(o))) continue;
        t->which = k == 0 ? DP_TENSOR_VALUE : k == 1 ? DP_TENSOR_M : DP_TENSOR_V;
        if (k == 0) snprintf(t->name, sizeof t->name, "%s", param);
        else snprintf(t->name, sizeof t->name, "optimizer.%s.%s", param, k == 1 ? m_name : "exp_avg_sq");
        t->ndim = ndim, t->shape[0] = shape[0], t->shape[1] = shape[1], t->count = count;
        (*n)++;
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * files and directories */

static int is_step_name(const char *name, int *step)
{
    if (strncmp(name, "step-", 5) != 0 || !name[5] || strlen(name) > 5 + 9) return 0;
    for (const char *p = name + 5; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    *step = atoi(name + 5);
    return 1;
}

/* Makes what was renamed or created in dir durable. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The whole file at path, at most max bytes: 0, or an errno (EFBIG beyond max). */
static int read_file(const char *path, size_t max, unsigned char **out, size_t *size)
{
    *out = NULL, *size = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return errno;
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int e = S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
        fclose(fp);
        return e;
    }
    if ((uint64_t)sb.st_size > max) {
        fclose(fp);
        return EFBIG;
    }
    unsigned char *b = malloc((size_t)sb.st_size + 1);
    if (!b) {
        fclose(fp);
        return ENOMEM;
    }
    size_t n = fread(b, 1, (size_t)sb.st_size, fp);
    int e = ferror(fp) ? EIO : 0;
    fclose(fp);
    if (e) {
        free(b);
        return e;
    }
    *out = b, *size = n;
    return 0;
}

/* path = dir/name (checkpoint_prepare and checkpoint_find refuse a DIR too long for it) */
static void join(char *path, size_t size, const char *dir, const char *name)
{
    if (snprintf(path, size, "%s/%s", dir, name) >= (int)size) path[0] = 0;
}

/* path = name + suffix */
static void suffixed(char *path, size_t size, const char *name, const char *suffix)
{
    if (snprintf(path, size, "%s%s", name, suffix) >= (int)size) path[0] = 0;
}

/* Room for DIR/step-N.partial/rank-R.safetensors.tmp.PID in a 4096-byte path. */
#define MAX_DIR_BYTES 3072

static int dir_too_long(const char *option, const char *dir)
{
    if (strlen(dir) <= MAX_DIR_BYTES) return 0;
    cli_error("%s: a path of %zu bytes: give one of at most %d", option, strlen(dir), MAX_DIR_BYTES);
    return 1;
}

/* Removes the plain files in dir that keep[] does not name (a crashed earlier write's). */
static int remove_others(const char *dir, const char *const *keep, int nkeep)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int kept = 0;
        for (int i = 0; i < nkeep && !kept; i++) kept = !strcmp(keep[i], e->d_name);
        char p[4096];
        join(p, sizeof p, dir, e->d_name);
        if (!kept && unlink(p) != 0) rc = -1;
    }
    closedir(d);
    return rc;
}

/* Removes a checkpoint directory: its plain files, then itself. */
static int remove_checkpoint_dir(const char *dir) { return remove_others(dir, NULL, 0) == 0 && rmdir(dir) == 0 ? 0 : -1; }

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The N of dir's step-N directories below `below`, ascending, into *steps (malloc'ed; NULL when
 * none) and *n; follow_links 0: a symbolic link is not a directory. 0, or -1 with errno. */
static int list_step_dirs(const char *dir, int below, int follow_links, int **steps, int *n)
{
    *steps = NULL, *n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int cap = 0, s;
    struct dirent *e;
    while ((e = readdir(d))) {
        char p[4096];
        struct stat sb;
        join(p, sizeof p, dir, e->d_name);
        if (!is_step_name(e->d_name, &s) || s >= below) continue;
        if ((follow_links ? stat(p, &sb) : lstat(p, &sb)) != 0 || !S_ISDIR(sb.st_mode)) continue;
        if (*n == cap) {
            int *grown = realloc(*steps, (size_t)(cap = cap ? 2 * cap : 16) * sizeof **steps);
            if (!grown) {
                free(*steps), closedir(d);
                *steps = NULL, *n = 0, errno = ENOMEM;
                return -1;
            }
            *steps = grown;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    if (*n > 1) qsort(*steps, (size_t)*n, sizeof **steps, compare_ints);
    return 0;
}

/* The highest N of DIR's step-N directories (-1: none, or DIR cannot be listed). */
static int highest_step(const char *dir)
{
    int *steps, n, best;
    if (list_step_dirs(dir, INT_MAX, 1, &steps, &n) != 0) return -1;
    best = n ? steps[n - 1] : -1;
    free(steps);
    return best;
}

int checkpoint_prepare(const char *dir, int resuming)
{
    struct stat sb;
    if (dir_too_long("--save", dir)) return CLI_EXIT_USAGE;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT) {
            cli_error("--save %s: %s", dir, strerror(errno));
            return CLI_EXIT_USAGE;
        }
        if (mkdir(dir, 0777) != 0 && !(errno == EEXIST && stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode))) {
            cli_error("--save %s: cannot create the directory: %s%s", dir, strerror(errno),
                      errno == ENOENT ? " (its parent directory must exist)" : "");
            return CLI_EXIT_USAGE;
        }
        return 0;
    }
    if (!S_ISDIR(sb.st_mode)) {
        cli_error("--save %s: not a directory (%s): checkpoints are directories of files; give a directory, or a new "
                  "path to create one",
                  dir, S_ISREG(sb.st_mode) ? "a regular file" : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "a device"
                                                          : S_ISFIFO(sb.st_mode) ? "a FIFO" : "not a directory");
        return CLI_EXIT_USAGE;
    }
    /* try it, as permissions alone do not say (root, read-only file systems, ACLs) */
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/.dualpipe-probe.%ld", dir, (long)getpid());
    if (mkdir(probe, 0700) != 0) {
        cli_error("--save %s: cannot write in this directory: %s", dir, strerror(errno));
        return CLI_EXIT_USAGE;
    }
    rmdir(probe);
    int last = highest_step(dir);
    if (!resuming && last >= 0) {
        cli_error("--save %s: the directory already holds checkpoints (the last of step %d): --resume %s continues "
                  "from it; to start afresh, name another directory",
                  dir, last, dir);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * saving */

static int hosts_pipeline_rank(dp_runtime *rt, int r) { return dp_runtime_hosts_rank(rt, r); }

/* This process's part: the file of every pipeline rank of replica 0 it hosts, in partial. */
static int write_rank_files(dp_runtime *rt, const checkpoint_run *run, const char *partial, int step)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    const dp_optimizer_config *o = &run->c->optimizer;
    int rc = 0;
    char text[32];
    snprintf(text, sizeof text, "%d", step);
    for (int r = 0; r < s->num_ranks && !rc; r++) {
        if (!hosts_pipeline_rank(rt, r)) continue;
        dp_safetensors_writer *w;
        if (dp_safetensors_writer_create(&w) != DP_OK) {
            cli_error("%s", dp_last_error());
            return CLI_EXIT_FAIL;
        }
        dp_status st = dp_safetensors_add_metadata(w, "format", "pt");
        if (st == DP_OK) st = dp_safetensors_add_metadata(w, "step", text);
        float *buf = NULL;
        /* every stage this rank holds copy 0 of; the values first, then the optimizer's state */
        for (int pass = 0; pass < 2 && st == DP_OK && !rc; pass++)
            for (int stage = 0; stage < s->num_stages && st == DP_OK && !rc; stage++) {
                if (s->stage_rank[0][stage] != r) continue;
                for (int i = 0; i < dp_runtime_num_params(rt, stage) && st == DP_OK && !rc; i++) {
                    saved_tensor t[3];
                    int n;
                    if (tensors_of(rt, o, stage, i, t, &n)) {
                        rc = CLI_EXIT_FAIL;
                        break;
                    }
                    for (int k = pass == 0 ? 0 : 1; k < (pass == 0 ? 1 : n) && st == DP_OK; k++) {
                        float *b = realloc(buf, t[k].count * sizeof(float) + 1);
                        if (!b) {
                            st = dp_fail(DP_ERR_NOMEM, "out of memory for %s (%zu floats)", t[k].name, t[k].count);
                            break;
                        }
                        buf = b;
                        /* with --ep a rank holds only some of a stage's experts: the directory
                         * read gathers each through the link (one process: cmd_train refuses
                         * checkpoints of expert-parallel runs across processes) */
                        st = run->c->ep > 1 ? dp_runtime_read_tensor(rt, stage, 0, i, t[k].which, buf, NULL, NULL)
                                            : dp_runtime_read_local_tensor(rt, stage, 0, i, t[k].which, buf);
                        if (st == DP_OK) st = dp_safetensors_add(w, t[k].name, DP_ST_F32, t[k].ndim, t[k].shape, buf);
                    }
                }
            }
        char path[4096], name[64];
        snprintf(name, sizeof name, "rank-%d.safetensors", r);
        join(path, sizeof path, partial, name);
        if (st == DP_OK && !rc) st = dp_safetensors_write(w, path);
        if (st != DP_OK) {
            cli_error("checkpoint of step %d: %s", step, dp_last_error());
            rc = CLI_EXIT_FAIL;
        }
        free(buf);
        dp_safetensors_writer_destroy(w);
    }
    return rc;
}

static void describe_run(const checkpoint_run *run, dp_runtime *rt, int step, checkpoint_index *x)
{
    const dp_runtime_config *c = run->c;
    const dp_model_config *m = dp_runtime_model(rt);
    const dp_schedule *s = dp_runtime_schedule(rt);
    x->version = CHECKPOINT_VERSION, x->step = step;
    x->hidden = m->hidden, x->ffn = m->ffn, x->layers = s->num_stages * m->layers_per_stage, x->tokens = m->tokens;
    for (int l = 0; l < x->layers; l++)
        snprintf(x->layer_kinds[l], sizeof x->layer_kinds[l], "%s", dp_block_kind_name(dp_model_layer_kind(m, l)));
    snprintf(x->dtype, sizeof x->dtype, "%s", dp_dtype_name(m->dtype));
    snprintf(x->loss, sizeof x->loss, "%s", m->loss == DP_LOSS_XENT ? "xent" : "mse");
    x->seed = m->seed, x->norm_eps = m->norm_eps;
    x->moe_experts = 0;
    for (int l = 0; l < x->layers; l++)
        if (dp_model_layer_kind(m, l) == DP_BLOCK_MOE) x->moe_experts = m->moe.experts;
    if (x->moe_experts > 0) {
        x->moe_topk = m->moe.topk, x->moe_groups = m->moe.groups, x->moe_topk_groups = m->moe.topk_groups;
        x->moe_expert_hidden = m->moe.expert_hidden, x->moe_shared_experts = m->moe.shared_experts;
        x->moe_route_scale = m->moe.route_scale, x->moe_bias_update_speed = m->moe.bias_update_speed;
    }
    dp_optimizer_config opt = c->optimizer; /* with the defaults the runtime fills in */
    if (opt.kind != DP_OPT_NONE) dp_optimizer_config_defaults(&opt);
    const dp_optimizer_config *o = &opt;
    snprintf(x->optimizer, sizeof x->optimizer, "%s", o->kind == DP_OPT_ADAMW ? "adamw" : o->kind == DP_OPT_SGD ? "sgd" : "none");
    x->lr = o->lr, x->weight_decay = o->weight_decay, x->momentum = o->momentum;
    x->beta1 = o->beta1, x->beta2 = o->beta2, x->eps = o->eps;
    snprintf(x->schedule, sizeof x->schedule, "%s", s->name);
    x->pp = s->num_ranks, x->chunks = c->chunks;
    x->dp = c->dp > 1 ? c->dp : 1, x->ep = c->ep > 1 ? c->ep : 1;
    snprintf(x->data_source, sizeof x->data_source, "%s", run->data_source);
    x->data_position = step;
}

int checkpoint_model_run(const checkpoint_index *x, const char *index_path, dp_runtime_config *c)
{
    memset(c, 0, sizeof *c);
    c->driver = "cpu", c->schedule = "1f1b", c->threads_per_rank = 1;
    dp_model_config *m = &c->model;
    const char *bad = NULL, *value = NULL, *known = NULL;
    if (x->layers > DP_MAX_LAYERS) {
        cli_error("%s: the model has %d layers, more than the %d a model may have", index_path, x->layers,
                  DP_MAX_LAYERS);
        return CLI_EXIT_USAGE;
    }
    /* as few stages as hold the layers (a stage holds at most DP_MAX_STAGE_LAYERS), one micro-
     * batch a stage; one token a micro-batch: the tensors do not depend on it, and activations
     * then take next to nothing beside the parameters */
    int stages = 1;
    while (x->layers % stages || x->layers / stages > DP_MAX_STAGE_LAYERS) stages++;
    c->ranks = c->chunks = stages;
    m->hidden = x->hidden, m->ffn = x->ffn, m->layers_per_stage = x->layers / stages, m->tokens = 1;
    m->seed = x->seed, m->norm_eps = (float)x->norm_eps;
    if (!strcmp(x->loss, "mse")) m->loss = DP_LOSS_MSE;
    else if (!strcmp(x->loss, "xent")) m->loss = DP_LOSS_XENT;
    else bad = "model.loss", value = x->loss, known = "mse, xent";
    if (!strcmp(x->dtype, "fp32")) m->dtype = DP_DTYPE_F32;
    else if (!strcmp(x->dtype, "bf16")) m->dtype = DP_DTYPE_BF16;
    else bad = "model.dtype", value = x->dtype, known = "fp32, bf16";
    if (!strcmp(x->optimizer, "adamw")) c->optimizer.kind = DP_OPT_ADAMW;
    else if (!strcmp(x->optimizer, "sgd")) c->optimizer.kind = DP_OPT_SGD;
    else if (!strcmp(x->optimizer, "none")) c->optimizer.kind = DP_OPT_NONE;
    else bad = "optimizer.kind", value = x->optimizer, known = "adamw, sgd, none";
    if (bad) {
        cli_error("%s: \"%s\" is \"%s\", which this dualpipe does not know (it knows %s)", index_path, bad, value,
                  known);
        return CLI_EXIT_USAGE;
    }
    c->optimizer.lr = (float)x->lr, c->optimizer.weight_decay = (float)x->weight_decay;
    c->optimizer.momentum = (float)x->momentum, c->optimizer.beta1 = (float)x->beta1;
    c->optimizer.beta2 = (float)x->beta2, c->optimizer.eps = (float)x->eps;
    /* the kinds layer by layer; the dense ones' kind is also the model's block */
    m->num_layer_kinds = x->layers;
    int moe_layers = 0;
    for (int l = 0; l < x->layers; l++) {
        if (dp_block_kind_parse(x->layer_kinds[l], &m->layer_kind[l]) != DP_OK) {
            cli_error("%s: \"model.layer_kinds\"[%d]: %s", index_path, l, dp_last_error());
            return CLI_EXIT_USAGE;
        }
        if (m->layer_kind[l] == DP_BLOCK_MOE) moe_layers++, m->moe.moe_layers[l] = 1;
        else m->block = m->layer_kind[l];
    }
    if (moe_layers && x->moe_experts <= 0) {
        cli_error("%s: the model has MoE layers but no \"moe\" object (experts, top-k, ...) to build them from",
                  index_path);
        return CLI_EXIT_USAGE;
    }
    if (x->moe_experts > 0) {
        dp_moe_config *e = &m->moe;
        e->experts = x->moe_experts, e->topk = x->moe_topk, e->groups = x->moe_groups;
        e->topk_groups = x->moe_topk_groups, e->expert_hidden = x->moe_expert_hidden;
        e->shared_experts = x->moe_shared_experts, e->route_scale = (float)x->moe_route_scale;
        e->bias_update_speed = (float)x->moe_bias_update_speed;
        e->moe_layers_set = 1;
    }
    return 0;
}

/* The root's part once every process has written: each file's size and checksum from the
 * disk (some were written by other processes), the index, the renames. */
static int finish_checkpoint(dp_runtime *rt, const checkpoint_run *run, const char *dir, const char *partial, int step,
                             uint64_t *total)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    checkpoint_index x = {0};
    int rc = CLI_EXIT_FAIL;
    char path[4096], final_dir[4096], name[64], *index_text = NULL;
    const char **keep = calloc((size_t)s->num_ranks + 1, sizeof *keep);
    x.layers = s->num_stages * dp_runtime_model(rt)->layers_per_stage;
    x.layer_kinds = calloc((size_t)x.layers, sizeof *x.layer_kinds);
    x.files = calloc((size_t)s->num_ranks, sizeof *x.files);
    if (!keep || !x.layer_kinds || !x.files) {
        cli_error("out of memory for the checkpoint's index");
        goto out;
    }
    describe_run(run, rt, step, &x);
    x.num_files = s->num_ranks;
    *total = 0;
    for (int r = 0; r < s->num_ranks; r++) {
        checkpoint_file *f = &x.files[r];
        snprintf(f->name, sizeof f->name, "rank-%d.safetensors", r);
        keep[r] = f->name;
        join(path, sizeof path, partial, f->name);
        unsigned char *bytes;
        size_t n;
        int e = read_file(path, SIZE_MAX / 2, &bytes, &n);
        if (e) {
            cli_error("checkpoint of step %d: %s was not written (%s): the process hosting rank %d says why", step,
                      path, strerror(e), r);
            goto out;
        }
        dp_safetensors *sf;
        if (dp_safetensors_open_bytes(bytes, n, path, &sf) != DP_OK) {
            cli_error("checkpoint of step %d: %s", step, dp_last_error());
            free(bytes);
            goto out;
        }
        f->bytes = n, f->crc32 = crc32_update(0, bytes, n), f->tensors = dp_safetensors_count(sf);
        *total += n;
        dp_safetensors_close(sf);
        free(bytes);
    }
    size_t len;
    if (!(index_text = checkpoint_index_format(&x, &len))) {
        cli_error("out of memory for the checkpoint's index");
        goto out;
    }
    join(path, sizeof path, partial, "index.json.tmp");
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(index_text, 1, len, fp) == len && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int e = errno;
    if (fp && fclose(fp) != 0 && ok) ok = 0, e = errno;
    char index_path[4096];
    join(index_path, sizeof index_path, partial, "index.json");
    if (ok && rename(path, index_path) != 0) ok = 0, e = errno;
    if (!ok) {
        cli_error("checkpoint of step %d: cannot write %s: %s", step, index_path, strerror(e));
        unlink(path);
        goto out;
    }
    keep[s->num_ranks] = "index.json";
    if (remove_others(partial, keep, s->num_ranks + 1) != 0 || sync_dir(partial) != 0) {
        cli_error("checkpoint of step %d: cannot tidy %s: %s", step, partial, strerror(errno));
        goto out;
    }
    /* the new checkpoint takes its name; one of the same step from an earlier run is replaced */
    snprintf(name, sizeof name, "step-%08d", step);
    join(final_dir, sizeof final_dir, dir, name);
    struct stat sb;
    if (stat(final_dir, &sb) == 0) {
        char old[4096];
        suffixed(old, sizeof old, final_dir, ".old");
        if (rename(final_dir, old) != 0 || remove_checkpoint_dir(old) != 0) {
            cli_error("checkpoint of step %d: cannot replace %s, written earlier: %s", step, final_dir, strerror(errno));
            goto out;
        }
    }
    if (rename(partial, final_dir) != 0 || sync_dir(dir) != 0) {
        cli_error("checkpoint of step %d: cannot rename %s to %s: %s", step, partial, final_dir, strerror(errno));
        goto out;
    }
    /* DIR/latest names it, replaced whole */
    char latest[4096], latest_tmp[4096];
    join(latest, sizeof latest, dir, "latest");
    suffixed(latest_tmp, sizeof latest_tmp, latest, ".tmp");
    fp = fopen(latest_tmp, "w");
    ok = fp && fprintf(fp, "%s\n", name) > 0 && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    if (fp && fclose(fp) != 0) ok = 0;
    if (!ok || rename(latest_tmp, latest) != 0 || sync_dir(dir) != 0) {
        cli_error("checkpoint of step %d is in %s, but %s could not be written: %s", step, final_dir, latest,
                  strerror(errno));
        unlink(latest_tmp);
        goto out;
    }
    rc = 0;
out:
    free(index_text);
    free(keep);
    checkpoint_index_free(&x);
    return rc;
}

int checkpoint_list(const char *dir, int **steps, int *n) { return list_step_dirs(dir, INT_MAX, 1, steps, n); }

/* --keep: removes DIR's checkpoints of steps below `step` but the keep - 1 latest of them.
 * Each is renamed out of the step-N names first (step-N.removing), so that one removed halfway
 * is never taken for a checkpoint. Returns how many were removed; those that could not be are
 * warned of. */
static int remove_older(const char *dir, int step, int keep)
{
    int *steps, n;
    /* not following links: a link named like a checkpoint is not ours to empty */
    if (list_step_dirs(dir, step, 0, &steps, &n) != 0) {
        cli_warn("--keep: cannot list %s to remove old checkpoints: %s", dir, strerror(errno));
        return 0;
    }
    int removed = 0;
    for (int i = 0; i < n - (keep - 1); i++) {
        char name[64], path[4096], doomed[4096];
        snprintf(name, sizeof name, "step-%08d", steps[i]);
        join(path, sizeof path, dir, name);
        suffixed(doomed, sizeof doomed, path, ".removing");
        if (rename(path, doomed) != 0)
            cli_warn("--keep: cannot remove the checkpoint %s: %s (remove it by hand)", path, strerror(errno));
        else if (remove_checkpoint_dir(doomed) != 0)
            cli_warn("--keep: cannot remove the checkpoint %s: %s; what is left of it is %s (remove it by hand)", path,
                     strerror(errno), doomed);
        else
            removed++;
    }
    free(steps);
    if (removed && sync_dir(dir) != 0) cli_warn("--keep: cannot sync %s: %s", dir, strerror(errno));
    return removed;
}

int checkpoint_save(dp_runtime *rt, const checkpoint_run *run, const char *dir, int step, int keep, int quiet)
{
    double t0 = dp_now_ms();
    char partial[4096];
    char name[64];
    snprintf(name, sizeof name, "step-%08d.partial", step);
    join(partial, sizeof partial, dir, name);
    int rc = 0;
    if (mkdir(partial, 0777) != 0 && errno != EEXIST) {
        cli_error("checkpoint of step %d: cannot create %s: %s", step, partial, strerror(errno));
        rc = CLI_EXIT_FAIL;
    }
    if (!rc) rc = write_rank_files(rt, run, partial, step);
    /* every process, even one that failed, so that none waits for it in vain */
    if (dp_runtime_barrier(rt) != DP_OK) {
        cli_error("checkpoint of step %d: waiting for the other processes: %s", step, dp_last_error());
        return CLI_EXIT_FAIL;
    }
    if (rc || !dp_runtime_is_root(rt)) return rc;
    uint64_t bytes = 0;
    if ((rc = finish_checkpoint(rt, run, dir, partial, step, &bytes)) != 0) return rc;
    int removed = keep > 0 ? remove_older(dir, step, keep) : 0;
    if (!quiet) {
        printf("checkpoint step %d written to %s/step-%08d: %d files, %llu bytes, %.1f ms", step, dir, step,
               dp_runtime_schedule(rt)->num_ranks + 1, (unsigned long long)bytes, dp_now_ms() - t0);
        if (removed) printf("; %d older removed (--keep %d)", removed, keep);
        printf("\n");
    }
    fflush(stdout);
    return 0;
}

/* ----------------------------------------------------------------------------
 * finding and reading */

/* "WHO " before a directory and "WHO: " before a message, or nothing without who */
#define WHO_DIR(who) (who) ? (who) : "", (who) ? " " : ""
#define WHO(who) (who) ? (who) : "", (who) ? ": " : ""

int checkpoint_find(const char *who, const char *dir, char *path, size_t size)
{
    struct stat sb;
    if (dir_too_long(who ? who : "the checkpoint", dir)) return CLI_EXIT_USAGE;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        cli_error("%s%s%s: %s: give the directory --save wrote, or one of its step-N directories", WHO_DIR(who), dir,
                  stat(dir, &sb) != 0 ? strerror(errno) : "not a directory");
        return CLI_EXIT_USAGE;
    }
    char p[4096];
    join(p, sizeof p, dir, "index.json");
    if (stat(p, &sb) == 0) {
        snprintf(path, size, "%s", dir);
        return 0;
    }
    /* DIR/latest, when it names a directory that is there */
    join(p, sizeof p, dir, "latest");
    unsigned char *text;
    size_t n;
    int step;
    if (read_file(p, 64, &text, &n) == 0) {
        while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ')) n--;
        text[n] = 0;
        char q[4096];
        join(q, sizeof q, dir, (char *)text);
        int named = is_step_name((char *)text, &step) && stat(q, &sb) == 0 && S_ISDIR(sb.st_mode);
        if (named) snprintf(path, size, "%s", q);
        free(text);
        if (named) return 0;
    }
    if ((step = highest_step(dir)) < 0) {
        cli_error("%s%s%s: no checkpoint there (no index.json, no step-N directory)%s; --save %s writes them",
                  WHO_DIR(who), dir, who ? ": nothing to resume from" : "", dir);
        return CLI_EXIT_USAGE;
    }
    char name[32];
    snprintf(name, sizeof name, "step-%08d", step);
    join(p, sizeof p, dir, name);
    if (stat(p, &sb) != 0) {
        snprintf(name, sizeof name, "step-%d", step);
        join(p, sizeof p, dir, name);
    }
    snprintf(path, size, "%s", p);
    return 0;
}

/* The model and optimizer of x against this run's: 0, or 2 having named the first difference. */
static int check_compatible(const char *who, const checkpoint_index *x, dp_runtime *rt, const checkpoint_run *run,
                            const char *index_path)
{
    checkpoint_index mine = {0};
    const dp_schedule *s = dp_runtime_schedule(rt);
    mine.layers = s->num_stages * dp_runtime_model(rt)->layers_per_stage;
    if (!(mine.layer_kinds = calloc((size_t)mine.layers, sizeof *mine.layer_kinds))) {
        cli_error("out of memory");
        return CLI_EXIT_FAIL;
    }
    describe_run(run, rt, 0, &mine);
    char what[256] = "";
    if (x->hidden != mine.hidden)
        snprintf(what, sizeof what, "hidden size %d, this run's --hidden is %d", x->hidden, mine.hidden);
    else if (x->ffn != mine.ffn)
        snprintf(what, sizeof what, "inner width (ffn) %d, this run's is %d", x->ffn, mine.ffn);
    else if (x->layers != mine.layers)
        snprintf(what, sizeof what, "%d layers, this run has %d (%d stages x --layers-per-stage %d)", x->layers,
                 mine.layers, s->num_stages, dp_runtime_model(rt)->layers_per_stage);
    else if (strcmp(x->dtype, mine.dtype) != 0)
        snprintf(what, sizeof what, "dtype %s, this run's --dtype is %s", x->dtype, mine.dtype);
    else if (strcmp(x->loss, mine.loss) != 0)
        snprintf(what, sizeof what, "loss %s, this run's --loss is %s", x->loss, mine.loss);
    else if (strcmp(x->optimizer, mine.optimizer) != 0)
        snprintf(what, sizeof what, "optimizer %s, this run's --optimizer is %s", x->optimizer, mine.optimizer);
    else if (!strcmp(x->optimizer, "sgd") && (x->momentum != 0) != (mine.momentum != 0))
        snprintf(what, sizeof what, "sgd with momentum %g, this run's --momentum is %g (momentum buffers are kept only "
                                    "with momentum)", x->momentum, mine.momentum);
    for (int l = 0; !what[0] && l < x->layers; l++)
        if (strcmp(x->layer_kinds[l], mine.layer_kinds[l]) != 0)
            snprintf(what, sizeof what, "layer %d of kind %s, this run's is %s (--block, --experts, --moe-layers)", l,
                     x->layer_kinds[l], mine.layer_kinds[l]);
    /* the MoE layers' shape and routing; --bias-update-speed may change, as --lr may */
    struct {
        const char *what, *option;
        int theirs, ours;
    } moe[] = {
        {"experts", "--experts", x->moe_experts, mine.moe_experts},
        {"top-k", "--topk", x->moe_topk, mine.moe_topk},
        {"expert groups", "--groups", x->moe_groups, mine.moe_groups},
        {"kept groups", "--topk-groups", x->moe_topk_groups, mine.moe_topk_groups},
        {"expert inner width", "--expert-hidden", x->moe_expert_hidden, mine.moe_expert_hidden},
        {"shared experts", "--shared-experts", x->moe_shared_experts, mine.moe_shared_experts},
    };
    for (size_t i = 0; !what[0] && mine.moe_experts > 0 && i < sizeof moe / sizeof moe[0]; i++)
        if (moe[i].theirs != moe[i].ours)
            snprintf(what, sizeof what, "%s %d in its MoE layers, this run's %s is %d", moe[i].what, moe[i].theirs,
                     moe[i].option, moe[i].ours);
    if (!what[0] && mine.moe_experts > 0 && (float)x->moe_route_scale != (float)mine.moe_route_scale)
        snprintf(what, sizeof what, "route scale %g in its MoE layers, this run's --route-scale is %g",
                 x->moe_route_scale, mine.moe_route_scale);
    checkpoint_index_free(&mine);
    if (!what[0]) return 0;
    cli_error("%s%s%s: the checkpoint's model has %s: a checkpoint resumes only the same model", WHO(who), index_path,
              what);
    return CLI_EXIT_USAGE;
}

typedef struct {
    dp_safetensors **files;
    int n;
} opened_files;

/* Every file the index names: present, of its size and checksum, with a sound header. */
static int open_files(const char *who, const checkpoint_index *x, const char *ckpt, opened_files *of)
{
    if (!(of->files = calloc((size_t)x->num_files, sizeof *of->files))) {
        cli_error("out of memory");
        return CLI_EXIT_FAIL;
    }
    for (int i = 0; i < x->num_files; i++) {
        const checkpoint_file *f = &x->files[i];
        char path[4096];
        join(path, sizeof path, ckpt, f->name);
        unsigned char *bytes;
        size_t n;
        int e = read_file(path, SIZE_MAX / 2, &bytes, &n);
        if (e) {
            cli_error("%s%s%s: %s (named by the index): a damaged or incomplete checkpoint", WHO(who), path, strerror(e));
            return e == ENOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
        }
        uint32_t crc = crc32_update(0, bytes, n);
        int rc = 0;
        if (n != f->bytes) {
            cli_error("%s%s%s: %zu bytes, the index says %llu: the file is %s", WHO(who), path, n,
                      (unsigned long long)f->bytes, n < f->bytes ? "truncated" : "longer than written");
            rc = CLI_EXIT_USAGE;
        } else if (crc != f->crc32) {
            cli_error("%s%s%s: checksum mismatch: CRC-32 %08x, the index says %08x: the file changed after it "
                      "was written (damaged)",
                      WHO(who), path, (unsigned)crc, (unsigned)f->crc32);
            rc = CLI_EXIT_USAGE;
        } else if (dp_safetensors_open_bytes(bytes, n, path, &of->files[i]) != DP_OK) {
            cli_error("%s%s%s", WHO(who), dp_last_error());
            rc = CLI_EXIT_USAGE;
        } else if (dp_safetensors_count(of->files[i]) != f->tensors) {
            cli_error("%s%s%s: holds %d tensors, the index says %d", WHO(who), path,
                      dp_safetensors_count(of->files[i]), f->tensors);
            rc = CLI_EXIT_USAGE;
        }
        of->n = i + 1;
        free(bytes);
        if (rc) return rc;
    }
    return 0;
}

static void close_files(opened_files *of)
{
    for (int i = 0; i < of->n; i++) dp_safetensors_close(of->files[i]);
    free(of->files);
}

/* The one file holding tensor `name` (NULL, having said why, when none or several do). */
static dp_safetensors *holding(const char *who, const opened_files *of, const char *ckpt, const char *name)
{
    dp_safetensors *found = NULL;
    for (int i = 0; i < of->n; i++) {
        if (!dp_safetensors_find(of->files[i], name)) continue;
        if (found) {
            cli_error("%s%stensor \"%s\" is both in %s and in %s: a checkpoint holds each tensor once", WHO(who),
                      name, dp_safetensors_path(found), dp_safetensors_path(of->files[i]));
            return NULL;
        }
        found = of->files[i];
    }
    if (!found)
        cli_error("%s%s%s: no file holds tensor \"%s\" (missing), which this model needs", WHO(who), ckpt, name);
    return found;
}

/* pass 0 checks every tensor; pass 1 writes them. */
static int restore_tensors(const char *who, dp_runtime *rt, dp_reference *ref, const checkpoint_run *run,
                           const opened_files *of, const char *ckpt, int pass, int *used)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    float *buf = NULL;
    int rc = 0;
    *used = 0;
    for (int stage = 0; stage < s->num_stages && !rc; stage++)
        for (int i = 0; i < dp_runtime_num_params(rt, stage) && !rc; i++) {
            saved_tensor t[3];
            int n;
            if (tensors_of(rt, &run->c->optimizer, stage, i, t, &n)) {
                rc = CLI_EXIT_FAIL;
                break;
            }
            for (int k = 0; k < n && !rc; k++) {
                dp_safetensors *f = holding(who, of, ckpt, t[k].name);
                if (!f) {
                    rc = CLI_EXIT_USAGE;
                    break;
                }
                (*used)++;
                float *b = realloc(buf, t[k].count * sizeof(float) + 1);
                if (!b) {
                    cli_error("out of memory for %s (%zu floats)", t[k].name, t[k].count);
                    rc = CLI_EXIT_FAIL;
                    break;
                }
                buf = b;
                if (dp_safetensors_get(f, t[k].name, DP_ST_F32, t[k].ndim, t[k].shape, buf) != DP_OK) {
                    cli_error("%s%s%s", WHO(who), dp_last_error());
                    rc = CLI_EXIT_USAGE;
                    break;
                }
                if (pass == 0) continue;
                dp_status st = DP_OK;
                for (int c = 0; c < s->num_pipes && st == DP_OK; c++) {
                    st = dp_runtime_write_tensor(rt, stage, c, i, t[k].which, buf, t[k].count);
                    if (st == DP_OK && ref) st = dp_reference_write_tensor(ref, stage, c, i, t[k].which, buf, t[k].count);
                }
                if (st != DP_OK) {
                    cli_error("%s%swriting %s: %s", WHO(who), t[k].name, dp_last_error());
                    rc = CLI_EXIT_FAIL;
                }
            }
        }
    free(buf);
    return rc;
}

/* The checkpoint's index, read and checked (its own rules): 0, or the exit code having said why. */
static int read_index(const char *who, const char *ckpt, checkpoint_index *x)
{
    char index_path[4096], err[512];
    join(index_path, sizeof index_path, ckpt, "index.json");
    unsigned char *text;
    size_t n;
    int e = read_file(index_path, CHECKPOINT_MAX_INDEX_BYTES, &text, &n);
    if (e) {
        if (e == ENOENT)
            cli_error("%s%s%s: no index.json: not a complete checkpoint (the index is written last, so a "
                      "directory without one is incomplete or damaged)",
                      WHO(who), ckpt);
        else
            cli_error("%s%s%s: %s", WHO(who), index_path,
                      e == EFBIG ? "larger than any index: not a checkpoint's" : strerror(e));
        return e == ENOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    int bad = checkpoint_index_parse((const char *)text, n, index_path, x, err, sizeof err);
    free(text);
    if (bad) {
        cli_error("%s%s%s", WHO(who), err);
        return CLI_EXIT_USAGE;
    }
    if (x->data_position != x->step) {
        /* version 1: optimizer step k trained on batch k */
        cli_error("%s%s%s: \"data.position\" is %d but \"step\" is %d: they are one count in this version",
                  WHO(who), index_path, x->data_position, x->step);
        checkpoint_index_free(x);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int checkpoint_read(const char *ckpt, checkpoint_contents *out)
{
    memset(out, 0, sizeof *out);
    int rc = read_index(NULL, ckpt, &out->index);
    if (rc) return rc;
    opened_files of = {0};
    rc = open_files(NULL, &out->index, ckpt, &of);
    out->files = of.files, out->num_files = of.n;
    /* each tensor in one file only, as a resume needs (holding() says where it is twice) */
    for (int i = 0; i < of.n && !rc; i++)
        for (int k = 0; k < dp_safetensors_count(of.files[i]) && !rc; k++)
            if (!holding(NULL, &of, ckpt, dp_safetensors_tensor(of.files[i], k)->name)) rc = CLI_EXIT_USAGE;
    if (rc) checkpoint_contents_free(out);
    return rc;
}

void checkpoint_contents_free(checkpoint_contents *c)
{
    opened_files of = {c->files, c->num_files};
    close_files(&of);
    checkpoint_index_free(&c->index);
    memset(c, 0, sizeof *c);
}

/* The model of x against rt's, then each tensor rt needs in the open files once, of its dtype and
 * shape, with none left over: 0, or the exit code having said why. */
static int check_against(const char *who, dp_runtime *rt, const checkpoint_run *run, const char *ckpt,
                         const checkpoint_index *x, const opened_files *of)
{
    char index_path[4096];
    join(index_path, sizeof index_path, ckpt, "index.json");
    int rc = check_compatible(who, x, rt, run, index_path);
    if (rc) return rc;
    int used = 0, total = 0;
    if (!rc) rc = restore_tensors(who, rt, NULL, run, of, ckpt, 0, &used);
    for (int i = 0; i < of->n && !rc; i++) total += dp_safetensors_count(of->files[i]);
    if (!rc && used != total) {
        /* name the first tensor this model has no place for */
        for (int i = 0; i < of->n && !rc; i++)
            for (int k = 0; k < dp_safetensors_count(of->files[i]) && !rc; k++) {
                const char *name = dp_safetensors_tensor(of->files[i], k)->name;
                int needed = 0;
                const dp_schedule *s = dp_runtime_schedule(rt);
                for (int stage = 0; stage < s->num_stages && !needed; stage++)
                    for (int p = 0; p < dp_runtime_num_params(rt, stage) && !needed; p++) {
                        saved_tensor t[3];
                        int nt = 0;
                        tensors_of(rt, &run->c->optimizer, stage, p, t, &nt);
                        for (int j = 0; j < nt; j++) needed |= !strcmp(t[j].name, name);
                    }
                if (!needed) {
                    cli_error("%s%s%s holds tensor \"%s\", which this model has no place for (%d tensors, the "
                              "model needs %d)",
                              WHO(who), dp_safetensors_path(of->files[i]), name, total, used);
                    rc = CLI_EXIT_USAGE;
                }
            }
        if (!rc) rc = CLI_EXIT_USAGE;
    }
    return rc;
}

int checkpoint_load(dp_runtime *rt, dp_reference *ref, const checkpoint_run *run, const char *ckpt, int *step)
{
    checkpoint_index x;
    int rc = read_index("--resume", ckpt, &x), used = 0;
    if (rc) return rc;
    opened_files of = {0};
    char index_path[4096];
    join(index_path, sizeof index_path, ckpt, "index.json");
    /* the model first: an incompatible checkpoint is refused before its files are read */
    rc = check_compatible("--resume", &x, rt, run, index_path);
    if (!rc) rc = open_files("--resume", &x, ckpt, &of);
    if (!rc) rc = check_against("--resume", rt, run, ckpt, &x, &of);
    if (!rc) rc = restore_tensors("--resume", rt, ref, run, &of, ckpt, 1, &used);
    if (!rc && (dp_runtime_set_step(rt, x.step) != DP_OK || (ref && dp_reference_set_step(ref, x.step) != DP_OK))) {
        cli_error("--resume: %s", dp_last_error());
        rc = CLI_EXIT_FAIL;
    }
    if (!rc) *step = x.step;
    close_files(&of);
    checkpoint_index_free(&x);
    return rc;
}

int checkpoint_check_model(dp_runtime *rt, const checkpoint_run *run, const checkpoint_contents *c, const char *path)
{
    opened_files of = {c->files, c->num_files};
    return check_against(NULL, rt, run, path, &c->index, &of);
}
