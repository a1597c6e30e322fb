/* test_engine_host_copy.c: fp32 host arrays to and from bf16 device tensors through the
 * staging buffer, in one piece and in many (a staging buffer smaller than the array): every
 * element comes back as the bf16 rounding of what went up (rounded here by the test's own
 * function), fp32 goes both ways unchanged, and a dtype the driver cannot cast to is an error. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "engine/host_copy.h"
#include "tests/tap.h"

static float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u; /* nearest, ties to even (no NaN here) */
    memcpy(&f, &u, 4);
    return f;
}

int main(void)
{
    const dp_driver *d;
    dp_device *dev;
    dp_device_config cfg = {.threads = 1};
    if (dp_driver_load("cpu", &d) != DP_OK || d->device->open(&cfg, &dev) != DP_OK) return 1;
    const dp_device_ops *D = d->device;
    enum { N = 1000 };
    float *host = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
    void *t16, *t32;
    D->alloc(dev, N * 2, &t16);
    D->alloc(dev, N * 4, &t32);
    int rounded = 0;
    for (int i = 0; i < N; i++) {
        /* 1 + k 2^-9: every other value lies on a tie between two bf16 neighbours */
        host[i] = (i % 2 ? -1.0f : 1.0f) * (1.0f + (float)(i % 64) * 0x1p-9f) * ldexpf(1.0f, i % 7 - 3);
        rounded += round_bf16(host[i]) != host[i];
    }
    static const size_t caps[] = {0, 64, 999, 1};
    for (int c = 0; c < 4; c++) {
        dp_cast_staging stg = {.max_elems = caps[c]};
        dp_status a = dp_upload_f32(D, dev, NULL, &stg, t16, DP_DTYPE_BF16, host, N);
        memset(back, 0xff, N * sizeof(float));
        dp_status b = dp_download_f32(D, dev, NULL, &stg, back, DP_DTYPE_BF16, t16, N);
        int bad = 0;
        for (int i = 0; i < N; i++) bad += back[i] != round_bf16(host[i]);
        tap_ok(a == DP_OK && b == DP_OK && bad == 0 && rounded > N / 4 && stg.elems <= (caps[c] ? caps[c] : N),
               "bf16 up and back with a staging buffer of at most %zu elements: %d of %d off (%d needed rounding)",
               caps[c] ? caps[c] : (size_t)N, bad, N, rounded);
        dp_cast_staging_free(D, dev, &stg);
        tap_ok(stg.buf == NULL && stg.elems == 0, "the staging buffer is freed");
    }
    dp_cast_staging stg = {0};
    dp_status a = dp_upload_f32(D, dev, NULL, &stg, t32, DP_DTYPE_F32, host, N);
    dp_status b = dp_download_f32(D, dev, NULL, &stg, back, DP_DTYPE_F32, t32, N);
    tap_ok(a == DP_OK && b == DP_OK && memcmp(back, host, N * sizeof(float)) == 0 && stg.buf == NULL,
           "fp32 goes up and back unchanged, without a staging buffer");
    a = dp_upload_f32(D, dev, NULL, &stg, t32, DP_DTYPE_I32, host, N);
    tap_ok(a != DP_OK && strstr(dp_last_error(), "cast"), "int32 is refused by the cast: %s", dp_last_error());
    dp_cast_staging_free(D, dev, &stg);
    D->free(dev, t16), D->free(dev, t32);
    D->close(dev);
    free(host), free(back);
    return tap_done();
}
