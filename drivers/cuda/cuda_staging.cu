/* cuda_staging.cu: copies from pageable host memory to the GPU at the bus's speed. The CUDA
 * runtime stages pageable copies through its own pinned buffer with one host thread (about
 * 7 GB/s measured on an H200 host); here several threads fill two pinned buffers of our own in
 * turn while the other one's DMA runs. Pinned sources go straight to the DMA engine. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "drivers/cuda/cuda_internal.h"

#define STAGE_BYTES ((size_t)32 << 20) /* per buffer; two buffers per device */
#define STAGE_MIN ((size_t)8 << 20)    /* smaller copies go through the runtime as they are */
#define MAX_COPY_THREADS 8

typedef struct {
    char *dst;
    const char *src;
    size_t bytes;
} memcpy_part;

static void *memcpy_part_run(void *arg)
{
    memcpy_part *p = (memcpy_part *)arg;
    memcpy(p->dst, p->src, p->bytes);
    return NULL;
}

/* memcpy split over `threads` host threads (the caller copies the last part itself). */
static void parallel_memcpy(char *dst, const char *src, size_t bytes, int threads)
{
    pthread_t th[MAX_COPY_THREADS];
    memcpy_part parts[MAX_COPY_THREADS];
    int started[MAX_COPY_THREADS] = {0};
    size_t per = (bytes / (size_t)threads + 63) & ~(size_t)63;
    for (int i = 0; i < threads; i++) {
        size_t off = per * (size_t)i;
        parts[i].dst = dst + off;
        parts[i].src = src + off;
        parts[i].bytes = off >= bytes ? 0 : (bytes - off < per ? bytes - off : per);
    }
    for (int i = 0; i + 1 < threads; i++)
        if (parts[i].bytes) started[i] = pthread_create(&th[i], NULL, memcpy_part_run, &parts[i]) == 0;
    for (int i = 0; i + 1 < threads; i++)
        if (parts[i].bytes && !started[i]) memcpy_part_run(&parts[i]); /* no thread: do it here */
    memcpy_part_run(&parts[threads - 1]);
    for (int i = 0; i + 1 < threads; i++)
        if (started[i]) pthread_join(th[i], NULL);
}

static int copy_threads(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cores > 1 ? (int)(cores / 2) : 1;
    return n > MAX_COPY_THREADS ? MAX_COPY_THREADS : n;
}

void dp_cuda_staging_fini(dp_device *dev)
{
    for (int b = 0; b < 2; b++) {
        if (dev->stage_done[b]) {
            cudaEventSynchronize(dev->stage_done[b]);
            cudaEventDestroy(dev->stage_done[b]);
        }
        if (dev->stage[b]) cudaFreeHost(dev->stage[b]);
        dev->stage[b] = NULL;
        dev->stage_done[b] = NULL;
    }
}

static dp_status staging_init(dp_device *dev)
{
    for (int b = 0; b < 2; b++) {
        if (dev->stage[b]) continue;
        CUDA_TRY(cudaHostAlloc(&dev->stage[b], STAGE_BYTES, cudaHostAllocPortable));
        CUDA_TRY(cudaEventCreateWithFlags(&dev->stage_done[b], cudaEventDisableTiming));
    }
    return DP_OK;
}

dp_status dp_cuda_copy_from_host(dp_device *dev, dp_stream *st, void *dst, const void *src, size_t bytes)
{
    cudaPointerAttributes attr;
    int pinned = cudaPointerGetAttributes(&attr, src) == cudaSuccess && attr.type == cudaMemoryTypeHost;
    cudaGetLastError(); /* an unregistered pointer may leave an error behind on older runtimes */
    if (pinned || bytes < STAGE_MIN || staging_init(dev) != DP_OK) {
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st->s));
        if (!pinned) return DP_OK; /* pageable: the runtime has taken the data */
        CUDA_TRY(cudaStreamSynchronize(st->s)); /* pinned: the caller may reuse its buffer at once */
        return DP_OK;
    }
    int threads = copy_threads();
    for (size_t off = 0, i = 0; off < bytes; off += STAGE_BYTES, i++) {
        int b = (int)(i & 1);
        size_t len = bytes - off < STAGE_BYTES ? bytes - off : STAGE_BYTES;
        CUDA_TRY(cudaEventSynchronize(dev->stage_done[b])); /* its previous DMA is done */
        parallel_memcpy((char *)dev->stage[b], (const char *)src + off, len, threads);
        CUDA_TRY(cudaMemcpyAsync((char *)dst + off, dev->stage[b], len, cudaMemcpyHostToDevice, st->s));
        CUDA_TRY(cudaEventRecord(dev->stage_done[b], st->s));
    }
    return DP_OK;
}
