/* checkpoint_index.h: the index.json of a checkpoint directory: the step, the model and the
 * optimizer it belongs to, the data position, and each tensor file with its size and CRC-32.
 * Written and read here, as text, so that the reader can be fuzzed alone. */
#ifndef DP_TOOLS_CHECKPOINT_INDEX_H
#define DP_TOOLS_CHECKPOINT_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define CHECKPOINT_FORMAT "dualpipe-checkpoint"
#define CHECKPOINT_VERSION 1
#define CHECKPOINT_MAX_FILES 4096
#define CHECKPOINT_MAX_STEP (1 << 24) /* as --steps */
/* An index larger than this is not one dualpipe wrote (a few hundred bytes a file). */
#define CHECKPOINT_MAX_INDEX_BYTES (16u << 20)

typedef struct {
    char name[64];  /* "rank-0.safetensors": a plain name in the checkpoint's directory */
    uint64_t bytes; /* its size */
    uint32_t crc32; /* of all its bytes (tools/crc32.h) */
    int tensors;    /* how many it holds */
} checkpoint_file;

typedef struct {
    int version;
    int step; /* optimizer steps taken; the next step is step + 1 */
    /* the model: what a resumed run must match */
    int hidden, ffn, layers, tokens;
    char (*layer_kinds)[16]; /* [layers]: "residual", "mlp", ... */
    char dtype[16], loss[16];
    uint64_t seed;
    double norm_eps;
    /* the MoE layers' routing and experts (moe_experts 0: a dense model, no "moe" object) */
    int moe_experts, moe_topk, moe_groups, moe_topk_groups, moe_expert_hidden, moe_shared_experts;
    double moe_route_scale, moe_bias_update_speed;
    /* the optimizer */
    char optimizer[16]; /* "adamw", "sgd" */
    double lr, weight_decay, momentum, beta1, beta2, eps;
    /* how the run was laid out and fed (a resumed run may differ) */
    char schedule[32];
    int pp, dp, ep, chunks; /* ep: 1 where the index has none (written before it was recorded) */
    char data_source[16]; /* "teacher" or "file" */
    int data_position;    /* batches consumed: the next is batch data_position + 1 */
    int num_files;
    checkpoint_file *files;
} checkpoint_index;

/* The index as JSON text (malloc'ed, NUL-terminated; its length in *size). NULL: out of memory. */
char *checkpoint_index_format(const checkpoint_index *x, size_t *size);
/* Parses size bytes of text (named `path` in messages) into x: 0, or nonzero with err saying
 * "PATH: line N: KEY: the rule broken". Unknown keys are ignored (later versions may add some). */
int checkpoint_index_parse(const char *text, size_t size, const char *path, checkpoint_index *x, char *err,
                           size_t errlen);
void checkpoint_index_free(checkpoint_index *x);

#endif
