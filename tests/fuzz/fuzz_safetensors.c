/* fuzz_safetensors.c: libFuzzer target for the safetensors reader. Whatever it opens must hold
 * only tensors whose bytes lie inside the file and match their dtype and shape: every tensor is
 * looked up by name and copied out through dp_safetensors_get. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dp_safetensors *f = NULL;
    if (dp_safetensors_open_bytes(data, size, "fuzz.safetensors", &f) != DP_OK) return 0;
    for (int i = 0; i < dp_safetensors_count(f); i++) {
        const dp_st_tensor *t = dp_safetensors_tensor(f, i);
        if (dp_safetensors_find(f, t->name) != t) abort();
        size_t bytes = (size_t)(t->end - t->begin);
        void *out = malloc(bytes ? bytes : 1);
        if (!out) continue;
        if (dp_safetensors_get(f, t->name, t->dtype, t->ndim, t->shape, out) != DP_OK) abort();
        if (bytes && memcmp(out, dp_safetensors_data(f, t), bytes) != 0) abort();
        free(out);
    }
    dp_safetensors_metadata(f, "format");
    dp_safetensors_close(f);
    return 0;
}
