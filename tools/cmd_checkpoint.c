/* cmd_checkpoint.c: `dualpipe checkpoint DIR`: checks a checkpoint that `train --save` wrote
 * without training: its index, every file's size, CRC-32 and header, then every tensor against
 * the model the index describes, built on the CPU (what a resume checks), and says what it
 * holds: the step, the model, the optimizer, how the run was laid out, the files and, with
 * --tensors, every tensor. The exit status says whether it is whole. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/runtime.h"
#include "tools/checkpoint.h"
#include "tools/cli.h"
#include "tools/cli_options.h"
#include "tools/commands.h"

enum { O_TENSORS = CLI_LONG_ONLY, O_FILES_ONLY };

static const cli_option options[] = {
    {O_TENSORS, 0, "tensors", NULL, .help = "list every tensor of every file: name, dtype and shape"},
    {O_FILES_ONLY, 0, "files-only", NULL, .help = "check the files (sizes, CRC-32, headers) but not the tensors\n"
                                                  "against the model (which is built in memory for that)"},
    {'q', 'q', "quiet", NULL, .help = "print nothing but errors: the exit status says whether it is whole"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]... DIR",
    .about = "Check a checkpoint that `dualpipe train --save` wrote and say what it holds, without\n"
             "training. DIR is found as --resume finds it: a checkpoint directory (holding an\n"
             "index.json), else the one DIR/latest names, else DIR's step-N directory of the highest N.\n"
             "Every file the index names is read: its size, CRC-32, safetensors header and tensor\n"
             "count must be the index's, and no tensor may be in two files. Then the model the index\n"
             "describes is built on the CPU and every tensor it needs must be there, once, of\n"
             "its dtype and shape, with none left over: what a resume checks.\n"
             "Exit status: 0 whole, 2 damaged, incomplete or not a checkpoint, 1 out of memory.",
    .options = options,
    .epilogue = "Example: dualpipe checkpoint ck && dualpipe train --resume ck --steps 200\n",
};

/* The layers' kinds as runs: "0-2 residual, 3 moe" */
static void print_layer_kinds(const checkpoint_index *x)
{
    for (int l = 0; l < x->layers;) {
        int end = l;
        while (end + 1 < x->layers && !strcmp(x->layer_kinds[end + 1], x->layer_kinds[l])) end++;
        if (end > l) printf("%s%d-%d %s", l ? ", " : "", l, end, x->layer_kinds[l]);
        else printf("%s%d %s", l ? ", " : "", l, x->layer_kinds[l]);
        l = end + 1;
    }
}

/* What the --save directory holds besides: its checkpoints' steps, the one checked marked */
static void print_siblings(const char *dir, const char *path)
{
    int *steps = NULL, n = 0;
    if (!strcmp(dir, path) || checkpoint_list(dir, &steps, &n) != 0 || n == 0) {
        free(steps);
        return;
    }
    printf("%s holds %d checkpoint%s:", dir, n, n == 1 ? "" : "s");
    const char *slash = strrchr(path, '/'), *chosen = slash ? slash + 1 : path;
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "step-%08d", steps[i]);
        printf(" %d%s", steps[i], !strcmp(name, chosen) ? " (checked here)" : "");
    }
    printf("\n");
    free(steps);
}

static void print_contents(const char *dir, const char *path, const checkpoint_contents *c, int tensors,
                           int files_only, uint64_t params)
{
    const checkpoint_index *x = &c->index;
    unsigned long long bytes = 0;
    int count = 0;
    for (int i = 0; i < x->num_files; i++) bytes += x->files[i].bytes, count += x->files[i].tensors;
    printf("%s: whole: step %d, %d tensor file%s and the index, %d tensors, %llu bytes, every size and CRC-32 as "
           "the index says\n",
           path, x->step, x->num_files, x->num_files == 1 ? "" : "s", count, bytes);
    if (files_only) printf("tensors:   not checked against the model (--files-only)\n");
    else printf("tensors:   each one the model needs, once, of its dtype and shape, none left over\n");
    print_siblings(dir, path);
    printf("model:     %d layers (", x->layers);
    print_layer_kinds(x);
    printf("), hidden %d, ffn %d, %d tokens a micro-batch, %s, %s loss, seed %llu, norm eps %g", x->hidden, x->ffn,
           x->tokens, x->dtype, x->loss, (unsigned long long)x->seed, x->norm_eps);
    if (!files_only) printf("; %llu parameters", (unsigned long long)params);
    printf("\n");
    if (x->moe_experts > 0)
        printf("moe:       %d experts, top %d, %d group%s (top %d), expert hidden %d, %d shared, route scale %g, bias "
               "update speed %g\n",
               x->moe_experts, x->moe_topk, x->moe_groups, x->moe_groups == 1 ? "" : "s", x->moe_topk_groups,
               x->moe_expert_hidden, x->moe_shared_experts, x->moe_route_scale, x->moe_bias_update_speed);
    printf("optimizer: %s, lr %g, weight decay %g", x->optimizer, x->lr, x->weight_decay);
    if (!strcmp(x->optimizer, "adamw")) printf(", beta1 %g, beta2 %g, eps %g\n", x->beta1, x->beta2, x->eps);
    else printf(", momentum %g\n", x->momentum);
    printf("run:       %s on %d pipeline rank%s, dp %d, ep %d, %d micro-batches a pipeline (a step's global batch: "
           "%lld)\n",
           x->schedule, x->pp, x->pp == 1 ? "" : "s", x->dp, x->ep, x->chunks,
           (long long)x->chunks * x->dp * x->ep);
    printf("data:      %s, %d batch%s consumed: resuming trains step %d next\n", x->data_source, x->data_position,
           x->data_position == 1 ? "" : "es", x->step + 1);
    printf("files:\n");
    for (int i = 0; i < x->num_files; i++) {
        const checkpoint_file *f = &x->files[i];
        printf("  %-24s %12llu bytes  CRC-32 %08x  %d tensors\n", f->name, (unsigned long long)f->bytes,
               (unsigned)f->crc32, f->tensors);
        if (!tensors) continue;
        const dp_safetensors *sf = c->files[i];
        for (int k = 0; k < dp_safetensors_count(sf); k++) {
            const dp_st_tensor *t = dp_safetensors_tensor(sf, k);
            char shape[160];
            int at = snprintf(shape, sizeof shape, "[");
            for (int d = 0; d < t->ndim && at < (int)sizeof shape; d++)
                at += snprintf(shape + at, sizeof shape - (size_t)at, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            if (at < (int)sizeof shape) snprintf(shape + at, sizeof shape - (size_t)at, "]");
            printf("    %-56s %-4s %s\n", t->name, dp_st_dtype_name(t->dtype), shape);
        }
    }
}

/* Every tensor of c against the model its index describes, built on the CPU: 0, or the
 * exit code. */
static int check_model(const checkpoint_contents *c, const char *path, uint64_t *params)
{
    const checkpoint_index *x = &c->index;
    dp_runtime_config cfg;
    char index_path[4200];
    snprintf(index_path, sizeof index_path, "%s/index.json", path);
    int rc = checkpoint_model_run(x, index_path, &cfg);
    if (rc) return rc;
    /* the files hold every parameter's fp32 value at least: a model larger than that is not
     * theirs, and is refused before it is built (an index is not checksummed: it may lie) */
    uint64_t floats = 0, bytes = 0;
    if (dp_model_param_floats(&cfg.model, x->layers, &floats) != DP_OK) {
        cli_error("%s: the model its index describes: %s", path, dp_last_error());
        return CLI_EXIT_USAGE;
    }
    for (int i = 0; i < x->num_files; i++) bytes += x->files[i].bytes;
    if (floats > bytes / sizeof(float)) {
        cli_error("%s: its index describes a model of %llu parameters (%llu bytes in fp32), more than its files' %llu "
                  "bytes hold: the index is not these files' (damaged or edited)",
                  path, (unsigned long long)floats, (unsigned long long)floats * sizeof(float),
                  (unsigned long long)bytes);
        return CLI_EXIT_USAGE;
    }
    dp_runtime *rt = NULL;
    dp_status st = dp_runtime_create(&cfg, &rt);
    if (st != DP_OK) {
        cli_error("%s: the model its index describes cannot be built to check the tensors against: %s%s", path,
                  dp_last_error(), st == DP_ERR_NOMEM ? " (--files-only checks the files without it)" : "");
        return st == DP_ERR_NOMEM ? CLI_EXIT_FAIL : CLI_EXIT_USAGE;
    }
    checkpoint_run run = {&cfg, x->data_source};
    rc = checkpoint_check_model(rt, &run, c, path);
    dp_runtime_destroy(rt);
    *params = floats;
    return rc;
}

int cmd_checkpoint(int argc, char **argv)
{
    cli_parser p;
    int rc = cli_parse_start(&p, &spec, argc, argv);
    if (rc != CLI_GO_ON) return rc;
    int tensors = 0, quiet = 0, files_only = 0, opt;
    while ((opt = cli_next(&p))) {
        if (opt == O_TENSORS) tensors = 1;
        else if (opt == O_FILES_ONLY) files_only = 1;
        else if (opt == 'q') quiet = 1;
    }
    char **operands;
    int n = cli_operands(&p, &operands);
    if (n != 1) {
        cli_error("%s: give one directory, the one --save wrote or one of its step-N directories",
                  n ? "more than one operand" : "no checkpoint named");
        return CLI_EXIT_USAGE;
    }
    const char *dir = operands[0];
    char path[4096];
    if ((rc = checkpoint_find(NULL, dir, path, sizeof path)) != 0) return rc;
    checkpoint_contents c;
    if ((rc = checkpoint_read(path, &c)) != 0) return rc;
    uint64_t params = 0;
    if (!files_only) rc = check_model(&c, path, &params);
    if (!rc && !quiet) print_contents(dir, path, &c, tensors, files_only, params);
    checkpoint_contents_free(&c);
    if (rc) return rc;
    if (fflush(stdout) != 0) {
        cli_error("writing the report: %s", strerror(errno));
        return CLI_EXIT_FAIL;
    }
    return 0;
}
