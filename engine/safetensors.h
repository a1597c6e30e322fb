/* safetensors.h: reading and writing the safetensors format (a little-endian u64 header
 * length, a JSON header mapping tensor names to dtype, shape and byte offsets, then the
 * bytes), so that parameters and data can be exchanged with PyTorch and other tools. */
#ifndef DP_SAFETENSORS_H
#define DP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The element types the reader knows (any of them is accepted when reading; what a caller
 * needs is checked by dp_safetensors_get). Values are little-endian, as the format says. */
typedef enum {
    DP_ST_F32 = 0,
    DP_ST_I32,
    DP_ST_F64,
    DP_ST_I64,
    DP_ST_F16,
    DP_ST_BF16,
    DP_ST_I16,
    DP_ST_I8,
    DP_ST_U8,
    DP_ST_BOOL,
    DP_ST_NUM_DTYPES
} dp_st_dtype;

/* "F32", ... as in the header, or NULL; bytes per element (0 for no dtype). */
const char *dp_st_dtype_name(dp_st_dtype t);
size_t dp_st_dtype_size(dp_st_dtype t);

#define DP_ST_MAX_DIMS 8
/* The header refuses a JSON header longer than this (the format's own limit). */
#define DP_ST_MAX_HEADER (100u * 1024u * 1024u)

typedef struct {
    const char *name;
    dp_st_dtype dtype;
    int ndim;
    int64_t shape[DP_ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets into the data that follows the header */
} dp_st_tensor;

/* ----------------------------------------------------------------------------
 * reading: the whole file is read and checked at open */

typedef struct dp_safetensors dp_safetensors;

/* Reads and checks path: DP_ERR_NOT_FOUND (no such file), DP_ERR_IO (unreadable, a
 * directory), DP_ERR_INVALID (the message names the file, the tensor and the rule broken:
 * truncated, header too large, bad JSON, unknown dtype, offsets out of range or overlapping,
 * bytes not matching the shape, a name twice). */
dp_status dp_safetensors_open(const char *path, dp_safetensors **out);
/* The same for size bytes in memory (copied), named `name` in messages (NULL: "(memory)"). */
dp_status dp_safetensors_open_bytes(const void *bytes, size_t size, const char *name, dp_safetensors **out);
void dp_safetensors_close(dp_safetensors *f);

const char *dp_safetensors_path(const dp_safetensors *f);
/* Tensors in the order of the header. */
int dp_safetensors_count(const dp_safetensors *f);
const dp_st_tensor *dp_safetensors_tensor(const dp_safetensors *f, int i);
/* The tensor called name, or NULL. */
const dp_st_tensor *dp_safetensors_find(const dp_safetensors *f, const char *name);
/* Its bytes (end - begin of them; not aligned: copy them out). */
const void *dp_safetensors_data(const dp_safetensors *f, const dp_st_tensor *t);
/* The value of __metadata__'s key, or NULL. */
const char *dp_safetensors_metadata(const dp_safetensors *f, const char *key);

/* Copies tensor name into out after checking it has this dtype and shape (ndim dims):
 * DP_ERR_NOT_FOUND when there is no such tensor, DP_ERR_INVALID when dtype or shape differ,
 * each naming the file, the tensor and what was expected. */
dp_status dp_safetensors_get(const dp_safetensors *f, const char *name, dp_st_dtype dtype, int ndim,
                             const int64_t *shape, void *out);

/* ----------------------------------------------------------------------------
 * writing: tensors are collected, then written at once */

typedef struct dp_safetensors_writer dp_safetensors_writer;

dp_status dp_safetensors_writer_create(dp_safetensors_writer **out);
void dp_safetensors_writer_destroy(dp_safetensors_writer *w);
/* Adds a tensor (its bytes are copied): names are unique, shapes have 0 to DP_ST_MAX_DIMS
 * dims, each >= 0. */
dp_status dp_safetensors_add(dp_safetensors_writer *w, const char *name, dp_st_dtype dtype, int ndim,
                             const int64_t *shape, const void *data);
/* Adds a key and value to __metadata__ (strings). */
dp_status dp_safetensors_add_metadata(dp_safetensors_writer *w, const char *key, const char *value);
/* Writes everything to path, whole or not at all: to a temporary beside it, synced, then
 * renamed over it (over a symbolic link's target, keeping a replaced file's mode). Tensors lie
 * in the order they were added. A path that is not a regular file is refused (DP_ERR_INVALID). */
dp_status dp_safetensors_write(const dp_safetensors_writer *w, const char *path);
/* Writes the same bytes to a stream the caller opened (and later closes): for a program that
 * decides itself where and how its output lands. `name` is for messages. */
dp_status dp_safetensors_write_stream(const dp_safetensors_writer *w, FILE *fp, const char *name);

#ifdef __cplusplus
}
#endif
#endif
