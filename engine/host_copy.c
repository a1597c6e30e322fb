/* host_copy.c: fp32 host arrays to and from device tensors of any float dtype (see
 * host_copy.h), through one reusable fp32 device buffer and the driver's cast. */
#include "engine/host_copy.h"

static dp_status staging_get(const dp_device_ops *D, dp_device *dev, dp_cast_staging *stg, size_t n)
{
    size_t cap = stg->max_elems ? stg->max_elems : DP_CAST_STAGING_MAX;
    size_t want = n < cap ? n : cap;
    if (stg->elems >= want) return DP_OK;
    D->free(dev, stg->buf);
    stg->buf = NULL, stg->elems = 0;
    void *p;
    DP_CHECK(D->alloc(dev, want * sizeof(float), &p));
    stg->buf = p, stg->elems = want;
    return DP_OK;
}

dp_status dp_upload_f32(const dp_device_ops *D, dp_device *dev, dp_stream *s, dp_cast_staging *stg, void *dst,
                        dp_dtype t, const float *host, size_t n)
{
    if (t == DP_DTYPE_F32) {
        DP_CHECK(D->copy(dev, dst, host, n * sizeof(float), DP_COPY_HOST_TO_DEVICE, s));
        return D->stream_synchronize(dev, s);
    }
    size_t es = dp_dtype_size(t);
    if (!es) return dp_fail(DP_ERR_INVALID, "upload: unknown dtype %d", (int)t);
    DP_CHECK(staging_get(D, dev, stg, n));
    for (size_t at = 0; at < n; at += stg->elems) {
        size_t m = n - at < stg->elems ? n - at : stg->elems;
        DP_CHECK(D->copy(dev, stg->buf, host + at, m * sizeof(float), DP_COPY_HOST_TO_DEVICE, s));
        DP_CHECK(D->cast(dev, s, m, DP_DTYPE_F32, stg->buf, t, (char *)dst + at * es));
    }
    return D->stream_synchronize(dev, s);
}

dp_status dp_download_f32(const dp_device_ops *D, dp_device *dev, dp_stream *s, dp_cast_staging *stg, float *host,
                          dp_dtype t, const void *src, size_t n)
{
    if (t == DP_DTYPE_F32) {
        DP_CHECK(D->copy(dev, host, src, n * sizeof(float), DP_COPY_DEVICE_TO_HOST, s));
        return D->stream_synchronize(dev, s);
    }
    size_t es = dp_dtype_size(t);
    if (!es) return dp_fail(DP_ERR_INVALID, "download: unknown dtype %d", (int)t);
    DP_CHECK(staging_get(D, dev, stg, n));
    for (size_t at = 0; at < n; at += stg->elems) {
        size_t m = n - at < stg->elems ? n - at : stg->elems;
        DP_CHECK(D->cast(dev, s, m, t, (const char *)src + at * es, DP_DTYPE_F32, stg->buf));
        DP_CHECK(D->copy(dev, host + at, stg->buf, m * sizeof(float), DP_COPY_DEVICE_TO_HOST, s));
    }
    return D->stream_synchronize(dev, s);
}

void dp_cast_staging_free(const dp_device_ops *D, dp_device *dev, dp_cast_staging *stg)
{
    if (stg->buf) D->free(dev, stg->buf);
    stg->buf = NULL, stg->elems = 0;
}
