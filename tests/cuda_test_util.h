/* cuda_test_util.h: what the GPU tests share: finding the CUDA module in the build tree (or
 * skipping the whole test when there is no GPU or no module), seeded random inputs, and bf16
 * conversions done on the host the way the CPU driver does them. */
#ifndef DP_TESTS_CUDA_TEST_UTIL_H
#define DP_TESTS_CUDA_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "tests/tap.h"

/* The same tests run on the HIP driver when built with DP_TEST_GPU_HIP (drivers/hip/local.mk):
 * its module, its device node, its skip reason. */
#ifdef DP_TEST_GPU_HIP
#define GPU_TEST_DRIVER "hip"
#define GPU_TEST_DEVICE_NODE "/dev/kfd"
#define GPU_TEST_NO_DEVICE "no HIP device"
#else
#define GPU_TEST_DRIVER "cuda"
#define GPU_TEST_DEVICE_NODE "/dev/nvidiactl"
#define GPU_TEST_NO_DEVICE "no CUDA device"
#endif

/* Loads the `cuda` (or `hip`) driver from the build tree ($top_builddir/drivers/NAME/.libs
 * unless DUALPIPE_DRIVER_PATH says otherwise), or ends the test with "1..0 # SKIP no CUDA
 * device". The device node is checked first so that machines without a GPU never load the
 * GPU runtime. */
static inline const dp_driver *cuda_test_load_driver(void)
{
    if (access(GPU_TEST_DEVICE_NODE, F_OK) != 0) tap_skip_all(GPU_TEST_NO_DEVICE);
    if (!getenv("DUALPIPE_DRIVER_PATH")) {
        const char *top = getenv("top_builddir");
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/drivers/" GPU_TEST_DRIVER "/.libs", top ? top : ".");
        setenv("DUALPIPE_DRIVER_PATH", dir, 1);
    }
    const dp_driver *d = NULL;
    if (dp_driver_load(GPU_TEST_DRIVER, &d) != DP_OK) {
        tap_diag("the " GPU_TEST_DRIVER " driver did not load: %s", dp_last_error());
        tap_skip_all(GPU_TEST_NO_DEVICE);
    }
    if (d->available && d->available() != DP_OK) {
        tap_diag("%s", dp_last_error());
        tap_skip_all(GPU_TEST_NO_DEVICE);
    }
    return d;
}

static uint64_t cuda_test_rng = 0x9e3779b97f4a7c15ull;
static inline float urand(void) /* in [-1, 1) */
{
    cuda_test_rng ^= cuda_test_rng << 13, cuda_test_rng ^= cuda_test_rng >> 7, cuda_test_rng ^= cuda_test_rng << 17;
    return (float)((cuda_test_rng >> 40) / 8388608.0 - 1.0);
}

static inline float *randv(size_t n)
{
    float *v = (float *)malloc(sizeof(float) * (n ? n : 1));
    if (!v) abort();
    for (size_t i = 0; i < n; i++) v[i] = urand();
    return v;
}

static inline uint16_t f32_to_bf16_rne(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Rounds fp32 values to the nearest bf16 value, in place, so both sides see the same inputs. */
static inline void round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16_rne(x[i]));
}

static inline uint16_t *to_bf16(const float *x, size_t n)
{
    uint16_t *h = (uint16_t *)malloc(2 * (n ? n : 1));
    if (!h) abort();
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16_rne(x[i]);
    return h;
}

static inline void from_bf16(const uint16_t *h, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(h[i]);
}

#endif
