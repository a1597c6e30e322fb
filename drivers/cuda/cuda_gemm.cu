/* cuda_gemm.cu: the CUDA driver's GEMM. fp32 GEMMs are true fp32 (TF32 only when the device
 * was opened with DP_DEVICE_ALLOW_TF32); bf16 GEMMs accumulate in fp32.
 *
 * By default cublasGemmEx runs each GEMM with the algorithm cuBLAS's heuristic picks. A device
 * opened with DP_DEVICE_TUNE_GEMM runs them through cuBLASLt with, for each shape, the
 * algorithm that was fastest when timed under sustained load: a long bf16 run holds the GPU at
 * its power limit, at lower clocks than the short bursts the heuristic ranks algorithms for, and
 * there another algorithm is often faster. A shape is tuned at its first use, once per process
 * (devices of one GPU model share the choice, so a pipelined run and its single-rank reference
 * compute the same bits), and with DUALPIPE_GEMM_CACHE=FILE once per machine: the choices are
 * kept in FILE, for the same GPU model and cuBLASLt version only. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cublasLt.h>

#include "drivers/cuda/cuda_internal.h"

#define TUNE_CANDIDATES 8   /* the heuristic's first choices timed */
#define TUNE_ROUNDS 3       /* each timed this often, interleaved; the median counts */
#define TUNE_WARM_MS 500.0  /* GPU time of GEMMs before the timed ones (default; DUALPIPE_GEMM_TUNE_MS) */
#define TUNE_SAMPLE_MS 20.0 /* GPU time of one timed sample */

/* ----------------------------------------------------------------------------
 * the row-major interface on column-major cuBLAS. A row-major matrix read as column-major is
 * its transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: cuBLAS gets B first,
 * then A, with the same transpose flags and the sizes n, m, k. */

static cudaDataType_t cuda_type(dp_dtype t)
{
    return t == DP_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static const char *cuda_type_name(int t)
{
    return t == CUDA_R_16BF ? "bf16" : "fp32";
}

static dp_status gemm_check(const dp_gemm_args *g)
{
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return dp_fail(DP_ERR_INVALID, "gemm: negative size (m %d, n %d, k %d)", g->m, g->n, g->k);
    int a_cols = g->trans_a ? g->m : g->k, b_cols = g->trans_b ? g->k : g->n;
    if (g->lda < (a_cols > 1 ? a_cols : 1) || g->ldb < (b_cols > 1 ? b_cols : 1) || g->ldc < (g->n > 1 ? g->n : 1))
        return dp_fail(DP_ERR_INVALID, "gemm: row strides too small (lda %d for %d columns, ldb %d for %d, ldc %d for %d)",
                       g->lda, a_cols, g->ldb, b_cols, g->ldc, g->n);
    int ab_f32 = g->a_type == DP_DTYPE_F32 && g->b_type == DP_DTYPE_F32;
    int ab_bf16 = g->a_type == DP_DTYPE_BF16 && g->b_type == DP_DTYPE_BF16;
    int c_ok = g->c_type == DP_DTYPE_F32 || (ab_bf16 && g->c_type == DP_DTYPE_BF16);
    if (!(ab_f32 || ab_bf16) || !c_ok)
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cuda driver: gemm with A dtype %d, B dtype %d, C dtype %d is not supported "
                       "(use fp32 x fp32 -> fp32, or bf16 x bf16 -> bf16 or fp32)",
                       (int)g->a_type, (int)g->b_type, (int)g->c_type);
    return DP_OK;
}

static cublasComputeType_t compute_type(const dp_device *dev, const dp_gemm_args *g)
{
    int ab_f32 = g->a_type == DP_DTYPE_F32 && g->b_type == DP_DTYPE_F32;
    return ab_f32 && (dev->flags & DP_DEVICE_ALLOW_TF32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

/* ----------------------------------------------------------------------------
 * plans: a shape as cuBLAS sees it (after the swap), the GPU it runs on, and its algorithm */

typedef struct {
    size_t lt_version; /* cublasLtGetVersion() */
    int sms;
    int m, n, k, ta, tb, lda, ldb, ldc;
    int at, bt, ct; /* cudaDataType_t */
    int tf32, beta0;
    int align_a, align_b, align_c; /* bytes: the largest power of two up to 256 dividing the address */
    char gpu[96];                  /* the GPU's model; last, so the rest of a cache line is its name */
} gemm_key;

typedef struct {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
    size_t workspace; /* bytes the algorithm needs */
    int fallback;     /* cuBLASLt offers no algorithm: cublasGemmEx runs it */
    int cached;       /* the algorithm came from the cache file and is yet to be checked */
    int ready;        /* descriptors made and the algorithm checked against them */
    cublasLtMatmulDescOpaque_t desc;
    cublasLtMatrixLayoutOpaque_t la, lb, lc;
} gemm_plan;

static pthread_mutex_t plans_lock = PTHREAD_MUTEX_INITIALIZER;
static gemm_plan **plans;
static int nplans, cap_plans, cache_loaded;
static cublasLtHandle_t lt_handle; /* not tied to a device; made at the first tuned GEMM */

__attribute__((destructor)) static void plans_free(void)
{
    for (int i = 0; i < nplans; i++) free(plans[i]);
    free(plans);
    plans = NULL;
    nplans = cap_plans = 0;
}

static int align_of(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 1 && v % (uintptr_t)a) a >>= 1;
    return a;
}

static dp_status make_key(dp_device *dev, const dp_gemm_args *g, gemm_key *k)
{
    memset(k, 0, sizeof *k); /* keys are compared with memcmp: padding and the name's tail are zero */
    if (!dev->gpu_name[0]) {
        cudaDeviceProp p;
        CUDA_TRY(cudaGetDeviceProperties(&p, dev->ordinal));
        snprintf(dev->gpu_name, sizeof dev->gpu_name, "%s", p.name);
        for (char *c = dev->gpu_name; *c; c++)
            if (*c == '\n' || *c == '\r') *c = ' ';
    }
    snprintf(k->gpu, sizeof k->gpu, "%s", dev->gpu_name);
    k->lt_version = cublasLtGetVersion();
    k->sms = dev->sm_count;
    k->m = g->n, k->n = g->m, k->k = g->k;
    k->ta = g->trans_b, k->tb = g->trans_a;
    k->lda = g->ldb, k->ldb = g->lda, k->ldc = g->ldc;
    k->at = cuda_type(g->b_type), k->bt = cuda_type(g->a_type), k->ct = cuda_type(g->c_type);
    k->tf32 = compute_type(dev, g) == CUBLAS_COMPUTE_32F_FAST_TF32;
    k->beta0 = g->beta == 0.0f;
    k->align_a = align_of(g->b), k->align_b = align_of(g->a), k->align_c = align_of(g->c);
    return DP_OK;
}

static void describe_key(const gemm_key *k, char *out, size_t size)
{
    snprintf(out, size, "%d x %d x %d (%s x %s -> %s%s, %c%c, beta %s)", k->m, k->n, k->k, cuda_type_name(k->at),
             cuda_type_name(k->bt), cuda_type_name(k->ct), k->tf32 ? ", TF32" : "", k->ta ? 'T' : 'N',
             k->tb ? 'T' : 'N', k->beta0 ? "0" : "1");
}

/* The plan's descriptors, in the plan itself (plain structs: any thread may read them). */
static dp_status plan_describe(gemm_plan *p)
{
    const gemm_key *k = &p->key;
    cublasOperation_t ta = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescInit(&p->desc, k->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                      CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(&p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(&p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_TRY(cublasLtMatrixLayoutInit(&p->la, (cudaDataType_t)k->at, k->ta ? k->k : k->m, k->ta ? k->m : k->k,
                                        k->lda));
    CUBLAS_TRY(cublasLtMatrixLayoutInit(&p->lb, (cudaDataType_t)k->bt, k->tb ? k->n : k->k, k->tb ? k->k : k->n,
                                        k->ldb));
    CUBLAS_TRY(cublasLtMatrixLayoutInit(&p->lc, (cudaDataType_t)k->ct, k->m, k->n, k->ldc));
    return DP_OK;
}

/* Bytes a matrix of the key spans: ld x its columns as stored. */
static size_t span_bytes(int rows_stored_ld, int cols_stored, int type)
{
    return (size_t)rows_stored_ld * (size_t)(cols_stored > 0 ? cols_stored : 1) * (type == CUDA_R_16BF ? 2 : 4);
}

/* Values like a layer's (uniform, +-0.05), not zeros: zeros draw less power and run faster. */
__global__ void k_tune_fill(size_t n, int bf16, uint32_t seed, void *p)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 16, h *= 0x85ebca6bu, h ^= h >> 13, h *= 0xc2b2ae35u, h ^= h >> 16;
        float v = ((float)(h >> 8) * (1.0f / 16777216.0f) - 0.5f) * 0.1f;
        if (bf16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
        else ((float *)p)[i] = v;
    }
}

static double tune_warm_ms(void)
{
    const char *env = getenv("DUALPIPE_GEMM_TUNE_MS");
    if (!env || !*env) return TUNE_WARM_MS;
    char *end;
    double v = strtod(env, &end);
    if (*end || v < 0 || v > 60000) {
        dp_log(DP_LOG_WARN, "cuda driver: DUALPIPE_GEMM_TUNE_MS=%s is not a number of milliseconds in [0, 60000]; "
                            "using %.0f", env, TUNE_WARM_MS);
        return TUNE_WARM_MS;
    }
    return v;
}

/* |got - want| and |want| at their largest, and whether any difference was NaN; over the m x n
 * part of two matrices of type `type` with leading dimension ld. Unsigned bits of
 * non-negative floats order as the floats do, so atomicMax on them is a float max. */
__global__ void k_tune_compare(int m, int n, int ld, int bf16, const void *got, const void *want, unsigned *out)
{
    unsigned diff = 0, big = 0, nan = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)m * n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t at = (i / (size_t)m) * (size_t)ld + i % (size_t)m;
        float g = bf16 ? __bfloat162float(((const __nv_bfloat16 *)got)[at]) : ((const float *)got)[at];
        float w = bf16 ? __bfloat162float(((const __nv_bfloat16 *)want)[at]) : ((const float *)want)[at];
        float d = fabsf(g - w);
        if (d != d) nan = 1;
        else diff = max(diff, __float_as_uint(d));
        big = max(big, __float_as_uint(fabsf(w)));
    }
    atomicMax(&out[0], diff), atomicMax(&out[1], big), atomicMax(&out[2], nan);
}

#define TUNE_MAX_SETS 16

/* What the timing runs on: its own stream, and sets of A, B and C enough to fill the L2
 * cache several times over, used in turn, so that each GEMM reads its inputs from memory as
 * in a step (where other GEMMs and kernels come between) and not from the cache. */
typedef struct {
    cudaStream_t s;
    int sets;
    void *a[TUNE_MAX_SETS], *b[TUNE_MAX_SETS], *c[TUNE_MAX_SETS];
    void *c_want, *c_got, *ws;
    unsigned *cmp; /* k_tune_compare's result, 3 words */
    cudaEvent_t ev[TUNE_ROUNDS][TUNE_CANDIDATES][2];
    int events;
} tune_bench;

static void tune_bench_free(tune_bench *t)
{
    if (t->s) {
        for (int i = 0; i < t->sets; i++) {
            void *bufs[] = {t->a[i], t->b[i], t->c[i]};
            for (int j = 0; j < 3; j++)
                if (bufs[j]) cudaFreeAsync(bufs[j], t->s);
        }
        void *more[] = {t->c_want, t->c_got, t->ws, t->cmp};
        for (int j = 0; j < 4; j++)
            if (more[j]) cudaFreeAsync(more[j], t->s);
        cudaStreamSynchronize(t->s);
        cudaStreamDestroy(t->s);
    }
    for (int i = 0; i < t->events; i++) cudaEventDestroy((&t->ev[0][0][0])[i]);
    cudaGetLastError();
}

static cublasStatus_t tune_run(gemm_plan *p, tune_bench *t, const cublasLtMatmulAlgo_t *algo, float alpha, float beta,
                               int set, void *c)
{
    return cublasLtMatmul(lt_handle, &p->desc, &alpha, t->a[set], &p->la, t->b[set], &p->lb, &beta, c, &p->lc, c,
                          &p->lc, algo, t->ws, DP_GEMM_WORKSPACE, t->s);
}

/* Times the heuristic's first choices for the plan's shape on private buffers and a private
 * stream (nothing the caller queued is waited for): each candidate must first compute what
 * the first choice computes; then all run back to back after TUNE_WARM_MS of the first,
 * interleaved over TUNE_ROUNDS, and the fastest (by its median) is kept. */
static dp_status plan_tune(dp_device *dev, gemm_plan *p, float alpha, float beta)
{
    const gemm_key *k = &p->key;
    char what[160];
    describe_key(k, what, sizeof what);
    cublasLtMatmulPreferenceOpaque_t pref;
    size_t ws_max = DP_GEMM_WORKSPACE;
    uint32_t al[4] = {(uint32_t)k->align_a, (uint32_t)k->align_b, (uint32_t)k->align_c, (uint32_t)k->align_c};
    CUBLAS_TRY(cublasLtMatmulPreferenceInit(&pref));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_max,
                                                    sizeof ws_max));
    cublasLtMatmulPreferenceAttributes_t al_attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(&pref, al_attr[i], &al[i], sizeof al[i]));
    cublasLtMatmulHeuristicResult_t res[TUNE_CANDIDATES];
    int got = 0;
    cublasStatus_t he = cublasLtMatmulAlgoGetHeuristic(lt_handle, &p->desc, &p->la, &p->lb, &p->lc, &p->lc, &pref,
                                                       TUNE_CANDIDATES, res, &got);
    if (he != CUBLAS_STATUS_SUCCESS || got == 0) {
        dp_log(DP_LOG_INFO, "cuda driver: GEMM %s: cuBLASLt offers no algorithm; cublasGemmEx runs it untuned", what);
        p->fallback = 1;
        return DP_OK;
    }

    tune_bench t;
    memset(&t, 0, sizeof t);
    dp_status st = DP_OK;
    size_t bytes_a = span_bytes(k->lda, k->ta ? k->m : k->k, k->at);
    size_t bytes_b = span_bytes(k->ldb, k->tb ? k->k : k->n, k->bt);
    size_t bytes_c = span_bytes(k->ldc, k->n, k->ct);
    int l2 = 0;
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev->ordinal);
    size_t per_set = bytes_a + bytes_b + bytes_c;
    t.sets = (int)((3 * (size_t)l2 + per_set - 1) / per_set);
    t.sets = t.sets < 1 ? 1 : t.sets > TUNE_MAX_SETS ? TUNE_MAX_SETS : t.sets;
    cudaError_t e = cudaStreamCreateWithFlags(&t.s, cudaStreamNonBlocking);
    for (int i = 0; i < t.sets && e == cudaSuccess; i++) {
        e = cudaMallocAsync(&t.a[i], bytes_a, t.s);
        if (e == cudaSuccess) e = cudaMallocAsync(&t.b[i], bytes_b, t.s);
        if (e == cudaSuccess) e = cudaMallocAsync(&t.c[i], bytes_c, t.s);
    }
    if (e == cudaSuccess) e = cudaMallocAsync(&t.c_want, bytes_c, t.s);
    if (e == cudaSuccess) e = cudaMallocAsync(&t.c_got, bytes_c, t.s);
    if (e == cudaSuccess) e = cudaMallocAsync(&t.ws, ws_max, t.s);
    if (e == cudaSuccess) e = cudaMemsetAsync(t.ws, 0, ws_max, t.s);
    if (e == cudaSuccess) e = cudaMallocAsync(&t.cmp, 3 * sizeof(unsigned), t.s);
    for (int r = 0; r < TUNE_ROUNDS && e == cudaSuccess; r++)
        for (int c = 0; c < TUNE_CANDIDATES && e == cudaSuccess; c++)
            for (int j = 0; j < 2 && e == cudaSuccess; j++)
                if ((e = cudaEventCreate(&t.ev[r][c][j])) == cudaSuccess) t.events++;
    for (int i = 0; i < t.sets && e == cudaSuccess; i++) {
        void *bufs[3] = {t.a[i], t.b[i], t.c[i]};
        size_t bytes[3] = {bytes_a, bytes_b, bytes_c};
        int types[3] = {k->at, k->bt, k->ct};
        for (int j = 0; j < 3; j++) {
            size_t es = types[j] == CUDA_R_16BF ? 2 : 4;
            k_tune_fill<<<1024, 256, 0, t.s>>>(bytes[j] / es, types[j] == CUDA_R_16BF, 77u + 3u * (unsigned)i + j,
                                               bufs[j]);
        }
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) {
        st = dp_cuda_fail(e, "setting up the GEMM tuning (stream, buffers, events)", __FILE__, __LINE__);
        tune_bench_free(&t);
        return st;
    }

    /* which candidates run, and compute what the heuristic's first choice computes (within
     * 1% of the result's largest value: a bf16 result rounds to 0.4%; a wrong algorithm is off
     * by the whole value) */
    int ok[TUNE_CANDIDATES] = {0}, nok = 0, first = -1;
    for (int c = 0; c < got && e == cudaSuccess; c++) {
        if (res[c].state != CUBLAS_STATUS_SUCCESS || res[c].workspaceSize > ws_max) continue;
        void *out = first < 0 ? t.c_want : t.c_got;
        /* beta 0 must not read C: it starts as NaN */
        e = k->beta0 ? cudaMemsetAsync(out, 0xff, bytes_c, t.s)
                     : cudaMemcpyAsync(out, t.c[0], bytes_c, cudaMemcpyDeviceToDevice, t.s);
        if (e != cudaSuccess || tune_run(p, &t, &res[c].algo, alpha, beta, 0, out) != CUBLAS_STATUS_SUCCESS) continue;
        unsigned cmp[3];
        e = cudaMemsetAsync(t.cmp, 0, sizeof cmp, t.s);
        if (e != cudaSuccess) break;
        /* the first that runs is the reference; it is compared with itself for NaN */
        k_tune_compare<<<256, 256, 0, t.s>>>(k->m, k->n, k->ldc, k->ct == CUDA_R_16BF, out, t.c_want, t.cmp);
        e = cudaMemcpyAsync(cmp, t.cmp, sizeof cmp, cudaMemcpyDeviceToHost, t.s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(t.s);
        float diff, big;
        memcpy(&diff, &cmp[0], sizeof diff), memcpy(&big, &cmp[1], sizeof big);
        if (first < 0) {
            if (e != cudaSuccess || cmp[2]) break; /* the reference itself is wrong: leave it all to cuBLAS */
            first = c, ok[c] = 1, nok++;
            continue;
        }
        ok[c] = e == cudaSuccess && !cmp[2] && diff <= 1e-2f * big + 1e-6f;
        if (e == cudaSuccess && !ok[c])
            dp_log(DP_LOG_INFO, "cuda driver: GEMM %s: cuBLASLt's algorithm %d of %d is left out: its result differs "
                                "from the first's by %g (largest value %g)%s",
                   what, c + 1, got, (double)diff, (double)big, cmp[2] ? ", with NaN" : "");
        nok += ok[c];
    }
    float one_ms = 0;
    if (e == cudaSuccess && nok > 0) {
        e = cudaEventRecord(t.ev[0][0][0], t.s);
        tune_run(p, &t, &res[first].algo, alpha, beta, 0, t.c[0]);
        if (e == cudaSuccess) e = cudaEventRecord(t.ev[0][0][1], t.s);
        if (e == cudaSuccess) e = cudaEventSynchronize(t.ev[0][0][1]);
        if (e == cudaSuccess) e = cudaEventElapsedTime(&one_ms, t.ev[0][0][0], t.ev[0][0][1]);
    }
    if (e != cudaSuccess) {
        st = dp_cuda_fail(e, "checking and timing a GEMM's algorithms to tune it", __FILE__, __LINE__);
        tune_bench_free(&t);
        return st;
    }
    if (nok == 0) {
        dp_log(DP_LOG_INFO, "cuda driver: GEMM %s: none of cuBLASLt's %d algorithms ran; cublasGemmEx runs it untuned",
               what, got);
        p->fallback = 1;
        tune_bench_free(&t);
        return DP_OK;
    }
    double per = one_ms > 1e-3 ? one_ms : 1e-3;
    long warm = (long)(tune_warm_ms() / per), reps = (long)(TUNE_SAMPLE_MS / per);
    if (warm > 200000) warm = 200000;
    if (reps < 2) reps = 2;
    if (reps > 2000) reps = 2000;
    long turn = 0;
    for (long i = 0; i < warm; i++, turn++)
        tune_run(p, &t, &res[first].algo, alpha, beta, (int)(turn % t.sets), t.c[turn % t.sets]);
    for (int r = 0; r < TUNE_ROUNDS; r++)
        for (int c = 0; c < got; c++) {
            if (!ok[c]) continue;
            cudaEventRecord(t.ev[r][c][0], t.s);
            for (long i = 0; i < reps; i++, turn++)
                tune_run(p, &t, &res[c].algo, alpha, beta, (int)(turn % t.sets), t.c[turn % t.sets]);
            cudaEventRecord(t.ev[r][c][1], t.s);
        }
    e = cudaStreamSynchronize(t.s);
    double ms[TUNE_CANDIDATES] = {0};
    int best = first;
    for (int c = 0; c < got && e == cudaSuccess; c++) {
        if (!ok[c]) continue;
        double v[TUNE_ROUNDS];
        for (int r = 0; r < TUNE_ROUNDS && e == cudaSuccess; r++) {
            float f = 0;
            e = cudaEventElapsedTime(&f, t.ev[r][c][0], t.ev[r][c][1]);
            v[r] = f / (double)reps;
        }
        for (int i = 1; i < TUNE_ROUNDS; i++) /* median of a few: insertion sort */
            for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
                double x = v[j];
                v[j] = v[j - 1], v[j - 1] = x;
            }
        ms[c] = v[TUNE_ROUNDS / 2];
        if (ms[c] < ms[best]) best = c;
    }
    if (e != cudaSuccess) {
        st = dp_cuda_fail(e, "timing a GEMM's algorithms to tune it", __FILE__, __LINE__);
        tune_bench_free(&t);
        return st;
    }
    p->algo = res[best].algo;
    p->workspace = res[best].workspaceSize;
    dp_log(DP_LOG_INFO,
           "cuda driver: tuned GEMM %s: algorithm %d of the %d cuBLASLt offers (%d agree with the first), %.3f ms "
           "against %.3f ms for the first (%+.1f%%), timed after %.0f ms of GEMMs, %d set%s of inputs in turn",
           what, best + 1, got, nok, ms[best], ms[first], 100.0 * (ms[first] / ms[best] - 1.0), (double)warm * per,
           t.sets, t.sets == 1 ? "" : "s");
    tune_bench_free(&t);
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * the cache file (DUALPIPE_GEMM_CACHE): one plan per line, the key's numbers, the workspace,
 * the algorithm's 64 bytes (cuBLASLt says they may be kept and reused with the same version)
 * and the GPU's name to the end of the line */

static const char *cache_path(void)
{
    const char *p = getenv("DUALPIPE_GEMM_CACHE");
    return p && *p ? p : NULL;
}

static gemm_plan *plan_add(const gemm_key *k)
{
    if (nplans == cap_plans) {
        int cap = cap_plans ? 2 * cap_plans : 16;
        gemm_plan **np = (gemm_plan **)realloc(plans, sizeof *np * (size_t)cap);
        if (!np) return NULL;
        plans = np, cap_plans = cap;
    }
    gemm_plan *p = (gemm_plan *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->key = *k;
    plans[nplans++] = p;
    return p;
}

static void cache_load(void)
{
    const char *path = cache_path();
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno != ENOENT)
            dp_log(DP_LOG_WARN, "cuda driver: cannot read the GEMM cache %s: %s; tuning afresh", path, strerror(errno));
        return;
    }
    char line[1024];
    int lineno = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n') continue;
        gemm_key k;
        memset(&k, 0, sizeof k);
        unsigned long long a[8];
        size_t ws = 0;
        int used = 0;
        int n = sscanf(line,
                       "%zu %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %zu "
                       "%llx %llx %llx %llx %llx %llx %llx %llx %n",
                       &k.lt_version, &k.sms, &k.m, &k.n, &k.k, &k.ta, &k.tb, &k.lda, &k.ldb, &k.ldc, &k.at, &k.bt,
                       &k.ct, &k.tf32, &k.beta0, &k.align_a, &k.align_b, &k.align_c, &ws, &a[0], &a[1], &a[2], &a[3],
                       &a[4], &a[5], &a[6], &a[7], &used);
        if (n != 27 || used == 0) {
            if (!bad++)
                dp_log(DP_LOG_WARN, "cuda driver: line %d of the GEMM cache %s is not a tuned GEMM; ignoring it "
                                    "(delete the file to start afresh)", lineno, path);
            continue;
        }
        char *name = line + used;
        name[strcspn(name, "\r\n")] = 0;
        snprintf(k.gpu, sizeof k.gpu, "%s", name);
        int dup = 0;
        for (int i = 0; i < nplans && !dup; i++) dup = !memcmp(&plans[i]->key, &k, sizeof k);
        if (dup) continue;
        gemm_plan *p = plan_add(&k);
        if (!p) break;
        memcpy(p->algo.data, a, sizeof p->algo.data);
        p->workspace = ws;
        p->cached = 1;
    }
    fclose(f);
}

/* Writes every plan (the loaded ones too, other GPUs' included) to a temporary file beside the
 * cache, then renames it over the cache: a reader never sees half a file. */
static void cache_save(void)
{
    const char *path = cache_path();
    if (!path) return;
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        dp_log(DP_LOG_WARN, "cuda driver: the GEMM cache's path is too long; not keeping the tuned algorithms");
        return;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        dp_log(DP_LOG_WARN, "cuda driver: cannot write the GEMM cache beside %s: %s; the tuned algorithms are not "
                            "kept", path, strerror(errno));
        return;
    }
    fprintf(f, "# dualpipe: GEMM algorithms tuned under sustained load (DUALPIPE_GEMM_CACHE), one shape per line:\n"
               "# cuBLASLt version, SMs, m n k, transposes, leading dimensions, A B C types, TF32, beta = 0,\n"
               "# alignments, workspace, the algorithm, the GPU. Delete the file to tune afresh.\n");
    for (int i = 0; i < nplans; i++) {
        const gemm_plan *p = plans[i];
        const gemm_key *k = &p->key;
        if (p->fallback) continue;
        fprintf(f, "%zu %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %d %zu", k->lt_version, k->sms, k->m, k->n,
                k->k, k->ta, k->tb, k->lda, k->ldb, k->ldc, k->at, k->bt, k->ct, k->tf32, k->beta0, k->align_a,
                k->align_b, k->align_c, p->workspace);
        for (int j = 0; j < 8; j++) fprintf(f, " %016llx", (unsigned long long)p->algo.data[j]);
        fprintf(f, " %s\n", k->gpu);
    }
    int err = ferror(f);
    if (fclose(f) != 0 || err || rename(tmp, path) != 0) {
        dp_log(DP_LOG_WARN, "cuda driver: cannot write the GEMM cache %s: %s; the tuned algorithms are not kept", path,
               strerror(errno));
        remove(tmp);
    }
}

/* The plan for the call's shape: found, loaded from the cache and checked, or tuned now. The
 * lock is held while tuning, so that ranks tune one at a time and never time each other. */
static dp_status plan_get(dp_device *dev, const dp_gemm_args *g, gemm_plan **out)
{
    gemm_key key;
    DP_CHECK(make_key(dev, g, &key));
    pthread_mutex_lock(&plans_lock);
    dp_status st = DP_OK;
    gemm_plan *p = NULL;
    for (int i = 0; i < nplans && !p; i++)
        if (!memcmp(&plans[i]->key, &key, sizeof key)) p = plans[i];
    if (p && p->ready) {
        pthread_mutex_unlock(&plans_lock);
        *out = p;
        return DP_OK;
    }
    if (!lt_handle) {
        cublasStatus_t e = cublasLtCreate(&lt_handle);
        if (e != CUBLAS_STATUS_SUCCESS) {
            lt_handle = NULL;
            st = dp_cublas_fail(e, "cublasLtCreate", __FILE__, __LINE__);
        }
    }
    if (st == DP_OK && !cache_loaded) {
        cache_loaded = 1;
        cache_load();
        for (int i = 0; i < nplans && !p; i++)
            if (!memcmp(&plans[i]->key, &key, sizeof key)) p = plans[i];
    }
    if (st == DP_OK && !p && !(p = plan_add(&key)))
        st = dp_fail(DP_ERR_NOMEM, "cuda driver: out of host memory for a GEMM plan");
    if (st == DP_OK) st = plan_describe(p);
    int tuned = 0;
    if (st == DP_OK) {
        int usable = 0;
        if (p->cached) { /* from the cache: does this cuBLASLt still take it for these descriptors? */
            p->cached = 0;
            cublasLtMatmulHeuristicResult_t check;
            usable = cublasLtMatmulAlgoCheck(lt_handle, &p->desc, &p->la, &p->lb, &p->lc, &p->lc, &p->algo, &check) ==
                         CUBLAS_STATUS_SUCCESS &&
                     check.workspaceSize <= DP_GEMM_WORKSPACE;
        }
        if (!usable) {
            st = plan_tune(dev, p, 1.0f, key.beta0 ? 0.0f : 1.0f);
            tuned = st == DP_OK;
        }
    }
    if (st == DP_OK) p->ready = 1;
    if (tuned && !p->fallback) cache_save();
    pthread_mutex_unlock(&plans_lock);
    *out = p;
    return st;
}

/* ----------------------------------------------------------------------------
 * the call */

dp_status dp_cuda_gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g)
{
    DP_CHECK(gemm_check(g));
    if (g->m == 0 || g->n == 0) return DP_OK;
    DP_CHECK(dp_cuda_enter(dev));
    dp_stream *st = dp_cuda_stream(dev, s);
    if ((dev->flags & DP_DEVICE_TUNE_GEMM) && g->k > 0) {
        gemm_plan *p = NULL;
        DP_CHECK(plan_get(dev, g, &p));
        if (!p->fallback) {
            if (!st->gemm_workspace) {
                CUDA_TRY(cudaMalloc(&st->gemm_workspace, DP_GEMM_WORKSPACE));
                CUDA_TRY(cudaMemsetAsync(st->gemm_workspace, 0, DP_GEMM_WORKSPACE, st->s));
            }
            CUBLAS_TRY(cublasLtMatmul(lt_handle, &p->desc, &g->alpha, g->b, &p->la, g->a, &p->lb, &g->beta, g->c,
                                      &p->lc, g->c, &p->lc, &p->algo, st->gemm_workspace, DP_GEMM_WORKSPACE, st->s));
            return DP_OK;
        }
    }
    CUBLAS_TRY(cublasGemmEx(st->blas, g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                            g->n, g->m, g->k, &g->alpha, g->b, cuda_type(g->b_type), g->ldb, g->a,
                            cuda_type(g->a_type), g->lda, &g->beta, g->c, cuda_type(g->c_type), g->ldc,
                            compute_type(dev, g), CUBLAS_GEMM_DEFAULT));
    return DP_OK;
}
