/* cpu_bf16.c: bf16 storage for the CPU driver: widening bf16 to fp32 (exact), rounding fp32
 * to bf16 (nearest even) and the device's scratch that holds the fp32 copies while an fp32
 * kernel runs on them. The scratch lives with the device: one device serves one thread. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdint.h>
#include <stdlib.h>

#include "drivers/cpu/cpu_internal.h"

void dp_cpu_widen_bf16(const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    for (size_t i = 0; i < n; i++) dst[i] = dp_cpu_bf16_to_f32(h[i]);
}

void dp_cpu_round_bf16(const float *src, void *dst, size_t n)
{
    uint16_t *h = dst;
    for (size_t i = 0; i < n; i++) h[i] = dp_cpu_f32_to_bf16(src[i]);
}

dp_status dp_cpu_scratch(dp_device *dev, size_t n, size_t parts, const char *what, float **out)
{
    *out = NULL;
    if (parts && n > SIZE_MAX / sizeof(float) / parts)
        return dp_fail(DP_ERR_NOMEM,
                       "cpu driver: %s on bf16 needs fp32 copies of %zu x %zu elements, more than memory can address",
                       what, parts, n);
    size_t need = n * parts;
    if (need == 0) need = 1;
    if (dev->bf16_scratch_n < need) {
        free(dev->bf16_scratch);
        dev->bf16_scratch = malloc(sizeof(float) * need);
        dev->bf16_scratch_n = dev->bf16_scratch ? need : 0;
        if (!dev->bf16_scratch)
            return dp_fail(DP_ERR_NOMEM,
                           "cpu driver: out of memory for %s on bf16 (%zu bytes of fp32 copies); "
                           "use smaller tensors or fp32",
                           what, sizeof(float) * need);
    }
    *out = dev->bf16_scratch;
    return DP_OK;
}

void dp_cpu_scratch_free(dp_device *dev)
{
    free(dev->bf16_scratch);
    dev->bf16_scratch = NULL;
    dev->bf16_scratch_n = 0;
}
