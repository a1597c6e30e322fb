/* cpu_gemm.c: the CPU driver's GEMM: CBLAS when configure found one, and a portable GEMM
 * of our own blocked for cache (packed panels, a register-tiled micro-kernel). Both give the
 * same bits whatever the thread count: threads split the output, never the k dimension. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>

#include <stdlib.h>
#include <string.h>

#ifdef HAVE_CBLAS
#include <cblas.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "drivers/cpu/cpu_internal.h"

/* ----------------------------------------------------------------------------
 * blocking: an MR x NR tile of C lives in registers; KC x NR panels of B stay in L1, MC x KC
 * blocks of A in L2, KC x NC blocks of B in L3 */

#define MR 6
#define NR 16
#define MC 96
#define KC 256
#define NC 2048

/* Packs op(A)[i0 .. i0+mc, k0 .. k0+kc] as panels of MR rows, k-major, zero-padded. The
 * loops follow A's memory order (contiguous reads; the scattered writes stay in one panel). */
static void pack_a(int trans, const float *a, int lda, int i0, int k0, int mc, int kc, float *dst)
{
    for (int ip = 0; ip < mc; ip += MR) {
        int rows = mc - ip < MR ? mc - ip : MR;
        float *panel = dst + (size_t)ip * kc;
        if (rows < MR) memset(panel, 0, sizeof(float) * (size_t)MR * kc);
        if (!trans) {
            for (int i = 0; i < rows; i++) {
                const float *src = a + (size_t)(i0 + ip + i) * lda + k0;
                for (int p = 0; p < kc; p++) panel[(size_t)p * MR + i] = src[p];
            }
        } else {
            for (int p = 0; p < kc; p++) {
                const float *src = a + (size_t)(k0 + p) * lda + i0 + ip;
                for (int i = 0; i < rows; i++) panel[(size_t)p * MR + i] = src[i];
            }
        }
    }
}

/* Packs op(B)[k0 .. k0+kc, j0 .. j0+nc] as panels of NR columns, k-major, zero-padded, in
 * B's memory order. */
static void pack_b(int trans, const float *b, int ldb, int k0, int j0, int kc, int nc, float *dst)
{
    for (int jp = 0; jp < nc; jp += NR) {
        int cols = nc - jp < NR ? nc - jp : NR;
        float *panel = dst + (size_t)jp * kc;
        if (cols < NR) memset(panel, 0, sizeof(float) * (size_t)NR * kc);
        if (!trans) {
            for (int p = 0; p < kc; p++)
                memcpy(panel + (size_t)p * NR, b + (size_t)(k0 + p) * ldb + j0 + jp, sizeof(float) * (size_t)cols);
        } else {
            for (int j = 0; j < cols; j++) {
                const float *src = b + (size_t)(j0 + jp + j) * ldb + k0;
                for (int p = 0; p < kc; p++) panel[(size_t)p * NR + j] = src[p];
            }
        }
    }
}

#if defined(__GNUC__)
/* GCC/Clang vector extensions: one NR-wide row of the tile per vector, lowered to whatever
 * the target has (SSE halves, AVX2, one AVX-512 register) */
typedef float vrow __attribute__((vector_size(NR * sizeof(float))));

/* C[MR x NR] (rows x cols valid) += alpha * Apanel * Bpanel over kc. Compiled for the wider
 * vector units where the machine has them; each clone does the same operations in the same
 * order (no FMA contraction differences: fp-contract is off for this file's clones). */
DP_CLONES
static void micro_kernel(int kc, const float *restrict ap, const float *restrict bp, float alpha, float *restrict c,
                         int ldc, int rows, int cols)
{
    /* six named accumulators, so that they stay in registers (MR is 6) */
    vrow c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
    for (int p = 0; p < kc; p++) {
        vrow bv;
        memcpy(&bv, bp + (size_t)p * NR, sizeof bv);
        const float *av = ap + (size_t)p * MR;
        c0 += av[0] * bv;
        c1 += av[1] * bv;
        c2 += av[2] * bv;
        c3 += av[3] * bv;
        c4 += av[4] * bv;
        c5 += av[5] * bv;
    }
    vrow acc[MR] = {c0, c1, c2, c3, c4, c5};
    for (int i = 0; i < rows; i++) {
        float out[NR];
        memcpy(out, &acc[i], sizeof out);
        for (int j = 0; j < cols; j++) c[(size_t)i * ldc + j] += alpha * out[j];
    }
}
#else
static void micro_kernel(int kc, const float *restrict ap, const float *restrict bp, float alpha, float *restrict c,
                         int ldc, int rows, int cols)
{
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = 0.0f;
    for (int p = 0; p < kc; p++) {
        const float *bv = bp + (size_t)p * NR;
        const float *av = ap + (size_t)p * MR;
        for (int i = 0; i < MR; i++) {
            float ai = av[i];
            for (int j = 0; j < NR; j++) acc[i][j] += ai * bv[j];
        }
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) c[(size_t)i * ldc + j] += alpha * acc[i][j];
}
#endif

/* Grows a packing buffer kept between calls (fresh large allocations fault in every page). */
static float *workspace(float **buf, size_t *have, size_t need)
{
    if (*have >= need) return *buf;
    free(*buf);
    *buf = malloc(sizeof(float) * need);
    *have = *buf ? need : 0;
    return *buf;
}

void dp_cpu_gemm_workspace_free(dp_gemm_workspace *ws)
{
    free(ws->a), free(ws->b);
    ws->a = ws->b = NULL;
    ws->na = ws->nb = 0;
}

void dp_cpu_gemm_portable(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc, int threads)
{
    dp_gemm_workspace ws = {0};
    dp_cpu_gemm_portable_ws(&ws, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
    dp_cpu_gemm_workspace_free(&ws);
}

void dp_cpu_gemm_portable_ws(dp_gemm_workspace *ws, int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                             int threads)
{
    if (threads < 1) threads = 1;
    /* C = beta C first; beta = 0 must clear NaN, as BLAS does */
    for (int i = 0; i < m; i++) {
        float *row = c + (size_t)i * ldc;
        if (beta == 0.0f) memset(row, 0, sizeof(float) * (size_t)n);
        else if (beta != 1.0f)
            for (int j = 0; j < n; j++) row[j] *= beta;
    }
    if (k == 0 || alpha == 0.0f || m == 0 || n == 0) return;

    int ncmax = n < NC ? n : NC;
    float *bpack = workspace(&ws->b, &ws->nb, (size_t)KC * (size_t)((ncmax + NR - 1) / NR * NR));
    float *apack_all = workspace(&ws->a, &ws->na, (size_t)MC * KC * (size_t)threads);
    if (!bpack || !apack_all) {
        /* out of memory for the packing buffers: a plain loop still gives a correct result */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float s = 0.0f;
                for (int p = 0; p < k; p++)
                    s += (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) *
                         (trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
                c[(size_t)i * ldc + j] += alpha * s;
            }
        return;
    }

    for (int j0 = 0; j0 < n; j0 += NC) {
        int nc = n - j0 < NC ? n - j0 : NC;
        for (int k0 = 0; k0 < k; k0 += KC) {
            int kc = k - k0 < KC ? k - k0 : KC;
            pack_b(trans_b, b, ldb, k0, j0, kc, nc, bpack);
            int mblocks = (m + MC - 1) / MC;
            int npanels = (nc + NR - 1) / NR;
            /* each thread owns whole MC blocks of rows of C: the k order per element is fixed */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && mblocks > 1)
#endif
            for (int mb = 0; mb < mblocks; mb++) {
                int tid = 0;
#ifdef _OPENMP
                tid = omp_get_thread_num();
#endif
                float *apack = apack_all + (size_t)tid * MC * KC;
                int i0 = mb * MC;
                int mc = m - i0 < MC ? m - i0 : MC;
                pack_a(trans_a, a, lda, i0, k0, mc, kc, apack);
                for (int jp = 0; jp < npanels; jp++) {
                    int cols = nc - jp * NR < NR ? nc - jp * NR : NR;
                    for (int ip = 0; ip < mc; ip += MR) {
                        int rows = mc - ip < MR ? mc - ip : MR;
                        micro_kernel(kc, apack + (size_t)ip * kc, bpack + (size_t)jp * NR * kc, alpha,
                                     c + (size_t)(i0 + ip) * ldc + j0 + jp * NR, ldc, rows, cols);
                    }
                }
            }
        }
    }
}

/* ----------------------------------------------------------------------------
 * CBLAS and its thread count */

int dp_cpu_have_blas(void)
{
#ifdef HAVE_CBLAS
    return 1;
#else
    return 0;
#endif
}

/* Weak references: present when the BLAS library has them, NULL otherwise. */
#if defined(HAVE_CBLAS) && defined(__GNUC__)
extern void openblas_set_num_threads(int) __attribute__((weak));
extern void bli_thread_set_num_threads(long) __attribute__((weak));
#endif

/* ThreadSanitizer cannot see how OpenBLAS hands work to its threads and back (they spin on
 * flags), so under it the BLAS runs on the calling thread: its results do not depend on that. */
#if defined(__SANITIZE_THREAD__)
#define DP_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DP_UNDER_TSAN 1
#endif
#endif

void dp_cpu_blas_set_threads(int threads)
{
#if defined(HAVE_CBLAS) && defined(__GNUC__)
    if (threads < 1) threads = 1;
#ifdef DP_UNDER_TSAN
    threads = 1;
#endif
    if (openblas_set_num_threads) openblas_set_num_threads(threads);
    if (bli_thread_set_num_threads) bli_thread_set_num_threads(threads);
#else
    (void)threads;
#endif
}

/* The fp32 GEMM both dtypes run: CBLAS or the portable GEMM, as the device chose. */
static void gemm_f32(dp_device *dev, const dp_gemm_args *g, const float *a, const float *b, float *c)
{
#ifdef HAVE_CBLAS
    if (dev->use_blas && g->k > 0) {
        cblas_sgemm(CblasRowMajor, g->trans_a ? CblasTrans : CblasNoTrans, g->trans_b ? CblasTrans : CblasNoTrans,
                    g->m, g->n, g->k, g->alpha, a, g->lda, b, g->ldb, g->beta, c, g->ldc);
        return;
    }
#endif
    dp_cpu_gemm_portable_ws(&dev->gemm_ws, g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, a, g->lda, b, g->ldb,
                            g->beta, c, g->ldc, dev->threads);
}

/* Elements a row-major matrix of rows x cols with row stride ld spans (its last row ends at cols). */
static size_t span(int rows, int cols, int ld)
{
    return rows > 0 && cols > 0 ? (size_t)(rows - 1) * (size_t)ld + (size_t)cols : 0;
}

/* Widens a bf16 matrix into fp32 with the same stride; the gaps between rows become zeros. */
static void widen_matrix(const uint16_t *src, int rows, int cols, int ld, float *dst)
{
    if (rows <= 0 || cols <= 0) return;
    for (int r = 0; r < rows; r++) {
        dp_cpu_widen_bf16(src + (size_t)r * ld, dst + (size_t)r * ld, (size_t)cols);
        if (r + 1 < rows && ld > cols) memset(dst + (size_t)r * ld + cols, 0, sizeof(float) * (size_t)(ld - cols));
    }
}

/* bf16 A and B (C fp32 or bf16): the fp32 GEMM on exact fp32 copies, with the same strides so
 * that it is the very call an fp32 caller makes; a bf16 C is widened (when beta reads it),
 * and rounded once at the end. bf16 products are exact in fp32: the accumulation is fp32. */
static dp_status gemm_bf16(dp_device *dev, const dp_gemm_args *g)
{
    int a_rows = g->trans_a ? g->k : g->m, a_cols = g->trans_a ? g->m : g->k;
    int b_rows = g->trans_b ? g->n : g->k, b_cols = g->trans_b ? g->k : g->n;
    size_t na = span(a_rows, a_cols, g->lda), nb = span(b_rows, b_cols, g->ldb);
    size_t nc = g->c_type == DP_DTYPE_BF16 ? span(g->m, g->n, g->ldc) : 0;
    float *ws;
    DP_CHECK(dp_cpu_scratch(dev, na + nb + nc, 1, "gemm", &ws));
    float *a = ws, *b = ws + na, *c = ws + na + nb;
    widen_matrix(g->a, a_rows, a_cols, g->lda, a);
    widen_matrix(g->b, b_rows, b_cols, g->ldb, b);
    if (g->c_type == DP_DTYPE_F32) {
        gemm_f32(dev, g, a, b, g->c);
        return DP_OK;
    }
    if (g->beta != 0.0f) widen_matrix(g->c, g->m, g->n, g->ldc, c);
    else memset(c, 0, sizeof(float) * nc); /* beta = 0 never reads C: its old bits (NaN included) do not count */
    gemm_f32(dev, g, a, b, c);
    for (int i = 0; i < g->m; i++)
        dp_cpu_round_bf16(c + (size_t)i * g->ldc, (uint16_t *)g->c + (size_t)i * g->ldc, (size_t)g->n);
    return DP_OK;
}

dp_status dp_cpu_gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g)
{
    (void)s;
    int ab_f32 = g->a_type == DP_DTYPE_F32 && g->b_type == DP_DTYPE_F32;
    int ab_bf16 = g->a_type == DP_DTYPE_BF16 && g->b_type == DP_DTYPE_BF16;
    if (!ab_f32 && !ab_bf16)
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cpu driver: gemm needs A and B of one type, both fp32 or both bf16 (A %s, B %s given); "
                       "cast one of them first",
                       dp_dtype_name(g->a_type), dp_dtype_name(g->b_type));
    if (g->c_type != DP_DTYPE_F32 && !(ab_bf16 && g->c_type == DP_DTYPE_BF16))
        return dp_fail(DP_ERR_UNSUPPORTED,
                       "cpu driver: gemm writes C in fp32, or in bf16 from bf16 inputs (A and B %s, C %s given)",
                       dp_dtype_name(g->a_type), dp_dtype_name(g->c_type));
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return dp_fail(DP_ERR_INVALID, "gemm: negative size m %d n %d k %d", g->m, g->n, g->k);
    int a_cols = g->trans_a ? g->m : g->k, b_cols = g->trans_b ? g->k : g->n;
    if ((a_cols > 0 && g->lda < a_cols) || (b_cols > 0 && g->ldb < b_cols) || (g->n > 0 && g->ldc < g->n))
        return dp_fail(DP_ERR_INVALID, "gemm: a leading dimension is smaller than its row (lda %d ldb %d ldc %d)",
                       g->lda, g->ldb, g->ldc);
    if (g->m == 0 || g->n == 0) return DP_OK;
    if (ab_bf16) return gemm_bf16(dev, g);
    gemm_f32(dev, g, g->a, g->b, g->c);
    return DP_OK;
}
