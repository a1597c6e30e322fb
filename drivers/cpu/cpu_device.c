/* cpu_device.c: the CPU driver's devices, memory, streams and events, and the driver
 * struct itself. Device memory is host memory; streams run work at once on the calling
 * thread, so every event is complete as soon as it is recorded. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "drivers/cpu/cpu_internal.h"
#include "engine/driver.h"

double dp_cpu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ----------------------------------------------------------------------------
 * devices */

dp_status dp_cpu_device_count(int *count)
{
    *count = 1;
    return DP_OK;
}

dp_status dp_cpu_open(const dp_device_config *cfg, dp_device **out)
{
    *out = NULL;
    dp_device *dev = calloc(1, sizeof *dev);
    if (!dev) return dp_fail(DP_ERR_NOMEM, "cpu driver: out of memory opening a device");
    int threads = cfg ? cfg->threads : 0;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    dev->threads = threads;
    dev->rank = cfg ? cfg->rank : 0;
    dev->use_blas = dp_cpu_have_blas();
    /* DUALPIPE_CPU_GEMM=portable selects our own GEMM even where CBLAS is built in */
    const char *gemm = getenv("DUALPIPE_CPU_GEMM");
    if (gemm && strcmp(gemm, "portable") == 0) dev->use_blas = 0;
    if (dev->use_blas) dp_cpu_blas_set_threads(threads);
    *out = dev;
    return DP_OK;
}

dp_status dp_cpu_close(dp_device *dev)
{
    if (dev) {
        dp_cpu_gemm_workspace_free(&dev->gemm_ws);
        dp_cpu_scratch_free(dev);
    }
    free(dev);
    return DP_OK;
}

dp_status dp_cpu_info(dp_device *dev, dp_device_info *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "cpu (%d thread%s, %s GEMM)", dev->threads, dev->threads == 1 ? "" : "s",
             dev->use_blas ? "CBLAS" : "portable");
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    out->total_memory = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
    out->supports_bf16 = 1; /* bf16 storage, fp32 arithmetic (cpu_bf16.c) */
    out->concurrent_streams = 0;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * memory */

dp_status dp_cpu_alloc(dp_device *dev, size_t bytes, void **ptr)
{
    (void)dev;
    *ptr = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) return dp_fail(DP_ERR_NOMEM, "cpu driver: out of memory allocating %zu bytes", bytes);
    *ptr = p;
    return DP_OK;
}

dp_status dp_cpu_free(dp_device *dev, void *ptr)
{
    (void)dev;
    free(ptr);
    return DP_OK;
}

dp_status dp_cpu_copy(dp_device *dev, void *dst, const void *src, size_t bytes, dp_copy_kind kind, dp_stream *s)
{
    (void)dev, (void)kind, (void)s;
    if (bytes && (!dst || !src)) return dp_fail(DP_ERR_INVALID, "copy: NULL pointer for %zu bytes", bytes);
    if (bytes) memmove(dst, src, bytes);
    return DP_OK;
}

dp_status dp_cpu_memset(dp_device *dev, void *dst, int byte, size_t bytes, dp_stream *s)
{
    (void)dev, (void)s;
    if (bytes) memset(dst, byte, bytes);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * streams and events */

dp_status dp_cpu_stream_create(dp_device *dev, dp_stream **out)
{
    (void)dev;
    *out = calloc(1, sizeof **out);
    return *out ? DP_OK : dp_fail(DP_ERR_NOMEM, "cpu driver: out of memory creating a stream");
}

dp_status dp_cpu_stream_destroy(dp_device *dev, dp_stream *s)
{
    (void)dev;
    free(s);
    return DP_OK;
}

dp_status dp_cpu_stream_synchronize(dp_device *dev, dp_stream *s)
{
    (void)dev, (void)s;
    return DP_OK;
}

dp_status dp_cpu_event_create(dp_device *dev, dp_event **out)
{
    (void)dev;
    *out = calloc(1, sizeof **out);
    return *out ? DP_OK : dp_fail(DP_ERR_NOMEM, "cpu driver: out of memory creating an event");
}

dp_status dp_cpu_event_destroy(dp_device *dev, dp_event *e)
{
    (void)dev;
    free(e);
    return DP_OK;
}

dp_status dp_cpu_event_record(dp_device *dev, dp_event *e, dp_stream *s)
{
    (void)dev, (void)s;
    e->time_ms = dp_cpu_now_ms();
    e->recorded = 1;
    return DP_OK;
}

dp_status dp_cpu_stream_wait_event(dp_device *dev, dp_stream *s, dp_event *e)
{
    (void)dev, (void)s, (void)e;
    return DP_OK;
}

dp_status dp_cpu_event_query(dp_device *dev, dp_event *e, int *done)
{
    (void)dev, (void)e;
    *done = 1;
    return DP_OK;
}

dp_status dp_cpu_event_synchronize(dp_device *dev, dp_event *e)
{
    (void)dev, (void)e;
    return DP_OK;
}

dp_status dp_cpu_event_elapsed(dp_device *dev, dp_event *start, dp_event *end, float *ms)
{
    (void)dev;
    if (!start->recorded || !end->recorded)
        return dp_fail(DP_ERR_INVALID, "event_elapsed: both events must be recorded first");
    *ms = (float)(end->time_ms - start->time_ms);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the runtime table and the driver (the kernel table is in cpu_kernels.c) */

const dp_device_runtime_ops dp_cpu_runtime_ops = {
    .abi_version = DP_DEVICE_RUNTIME_ABI_VERSION,
    .struct_size = sizeof(dp_device_runtime_ops),
    .name = "cpu",
    .device_count = dp_cpu_device_count,
    .open = dp_cpu_open,
    .close = dp_cpu_close,
    .info = dp_cpu_info,
    .alloc = dp_cpu_alloc,
    .free = dp_cpu_free,
    .copy = dp_cpu_copy,
    .memset = dp_cpu_memset,
    .stream_create = dp_cpu_stream_create,
    .stream_destroy = dp_cpu_stream_destroy,
    .stream_synchronize = dp_cpu_stream_synchronize,
    .event_create = dp_cpu_event_create,
    .event_destroy = dp_cpu_event_destroy,
    .event_record = dp_cpu_event_record,
    .stream_wait_event = dp_cpu_stream_wait_event,
    .event_query = dp_cpu_event_query,
    .event_synchronize = dp_cpu_event_synchronize,
    .event_elapsed = dp_cpu_event_elapsed,
};

const dp_driver_export dp_cpu_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "cpu",
    .description = "host memory and kernels, mailboxes between rank threads",
    .runtime = &dp_cpu_runtime_ops,
    .kernels = &dp_cpu_kernel_ops,
    .link = &dp_cpu_link_ops,
    .available = NULL,
};
