/* host_copy.h: moving fp32 host arrays to and from device tensors of the model's dtype. The
 * host side of the engine speaks fp32 (inputs, targets, outputs); a bf16 model keeps its
 * tensors in bf16, so the copy goes through an fp32 device buffer and a cast on the device. */
#ifndef DP_HOST_COPY_H
#define DP_HOST_COPY_H

#include <stddef.h>

#include "engine/device.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An fp32 device buffer for the casts; empty until first needed, reused after. */
typedef struct {
    float *buf;
    size_t elems;
    size_t max_elems; /* the most it grows to: a longer copy goes in pieces (0: DP_CAST_STAGING_MAX) */
} dp_cast_staging;

#define DP_CAST_STAGING_MAX ((size_t)16 << 20)

/* dst (device, n elements of t) = host (n fp32). For fp32 a plain copy; otherwise pieces of
 * the host array are copied into the staging buffer and cast on `s`. Returns with the host
 * array no longer in use. */
dp_status dp_upload_f32(const dp_device_ops *D, dp_device *dev, dp_stream *s, dp_cast_staging *stg, void *dst,
                        dp_dtype t, const float *host, size_t n);
/* host (n fp32) = src (device, n elements of t). Returns with the host array written. */
dp_status dp_download_f32(const dp_device_ops *D, dp_device *dev, dp_stream *s, dp_cast_staging *stg, float *host,
                          dp_dtype t, const void *src, size_t n);
/* Frees the staging buffer. */
void dp_cast_staging_free(const dp_device_ops *D, dp_device *dev, dp_cast_staging *stg);

#ifdef __cplusplus
}
#endif
#endif
