/* fuzz_checkpoint_index.c: libFuzzer target for the reader of a checkpoint's index.json. What it
 * accepts must be usable as it stands (file names that stay in the checkpoint's directory, a
 * kind per layer, counts in range) and must survive being written out and read back: the text
 * dualpipe writes for it reads back to the same text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools/checkpoint_index.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    checkpoint_index x, y;
    char err[512];
    if (checkpoint_index_parse((const char *)data, size, "fuzz/index.json", &x, err, sizeof err)) {
        if (!err[0]) abort(); /* a refusal always says why */
        return 0;
    }
    if (x.num_files < 1 || x.num_files > CHECKPOINT_MAX_FILES || x.layers < 1 || !x.layer_kinds) abort();
    if (x.step < 0 || x.step > CHECKPOINT_MAX_STEP) abort();
    for (int i = 0; i < x.num_files; i++) {
        const char *name = x.files[i].name;
        if (!name[0] || name[0] == '.' || strchr(name, '/') || x.files[i].bytes < 8 || x.files[i].tensors < 0) abort();
        for (int k = 0; k < i; k++)
            if (!strcmp(name, x.files[k].name)) abort();
    }
    size_t n1, n2;
    char *t1 = checkpoint_index_format(&x, &n1);
    if (!t1) goto out;
    if (checkpoint_index_parse(t1, n1, "fuzz/rewritten.json", &y, err, sizeof err)) abort();
    char *t2 = checkpoint_index_format(&y, &n2);
    if (t2 && (n1 != n2 || memcmp(t1, t2, n1) != 0)) abort();
    free(t2);
    checkpoint_index_free(&y);
    free(t1);
out:
    checkpoint_index_free(&x);
    return 0;
}
