/* make_train_data.c: writes a `dualpipe train --data` file for the tests: steps steps of
 * pseudo-random inputs and targets, the file's step k holding step first + k - 1 of one
 * fixed sequence, so that a run split in two can be fed the same data as one that is not.
 * Usage: make_train_data OUT STEPS FIRST CHUNKS TOKENS HIDDEN mse|xent SEED */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "engine/safetensors.h"

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: make_train_data OUT STEPS FIRST CHUNKS TOKENS HIDDEN mse|xent SEED\n");
        return 2;
    }
    int steps = atoi(argv[2]), first = atoi(argv[3]), chunks = atoi(argv[4]), tokens = atoi(argv[5]);
    int hidden = atoi(argv[6]), xent = strcmp(argv[7], "xent") == 0;
    uint64_t seed = strtoull(argv[8], NULL, 10);
    size_t n = (size_t)chunks * tokens * hidden, rows = (size_t)chunks * tokens;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    int32_t *labels = malloc(rows * sizeof(int32_t));
    dp_safetensors_writer *w;
    if (!x || !y || !labels || dp_safetensors_writer_create(&w) != DP_OK) return 1;
    dp_status st = DP_OK;
    for (int k = 1; k <= steps && st == DP_OK; k++) {
        uint64_t step = (uint64_t)(first + k - 1);
        for (size_t i = 0; i < n; i++) {
            x[i] = dp_counter_uniform(seed, 0xda7a0000ull + step, i);
            y[i] = 0.5f * dp_counter_uniform(seed, 0x7a460000ull + step, i);
        }
        for (size_t r = 0; r < rows; r++)
            labels[r] = (int32_t)((dp_counter_uniform(seed, 0x1abe0000ull + step, r) + 1.0f) * 0.5f * hidden) % hidden;
        char name[64];
        int64_t shape[3] = {chunks, tokens, hidden};
        snprintf(name, sizeof name, "step%d.inputs", k);
        st = dp_safetensors_add(w, name, DP_ST_F32, 3, shape, x);
        snprintf(name, sizeof name, "step%d.targets", k);
        if (st == DP_OK)
            st = xent ? dp_safetensors_add(w, name, DP_ST_I32, 2, shape, labels)
                      : dp_safetensors_add(w, name, DP_ST_F32, 3, shape, y);
    }
    if (st == DP_OK) st = dp_safetensors_write(w, argv[1]);
    if (st != DP_OK) fprintf(stderr, "make_train_data: %s\n", dp_last_error());
    dp_safetensors_writer_destroy(w);
    free(x), free(y), free(labels);
    return st == DP_OK ? 0 : 1;
}
