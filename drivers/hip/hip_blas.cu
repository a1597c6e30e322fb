/* hip_blas.cu: the HIP driver's GEMM entry points (hip_blas.h) on hipBLAS. With hipBLAS found
 * at configure time (DP_HIP_HAVE_HIPBLAS) they call it directly; otherwise libhipblas is loaded
 * on first use from the ROCm installation, and when it cannot be, every call answers
 * DP_HIPBLAS_STATUS_LIBRARY_MISSING and the status string names the library and what to do. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "drivers/hip/hip_blas.h"
#include "drivers/hip/rocm_library.h"

#define HIPBLAS_OP_N_ 111 /* hipblasOperation_t */
#define HIPBLAS_OP_T_ 112
#define HIPBLAS_GEMM_DEFAULT_ 160 /* hipblasGemmAlgo_t */

/* The two spellings of hipblasGemmEx's types: hipblasDatatype_t for data and compute (hipBLAS
 * before 2.0, and 2.x without HIPBLAS_V2), hipDataType and hipblasComputeType_t (hipBLAS 3.0,
 * and 2.x's hipblasGemmEx_v2). */
static int type_v1(dp_hipblas_type t) { return t == DP_HIPBLAS_R_16BF ? 168 : 151; }
static int type_v2(dp_hipblas_type t) { return t == DP_HIPBLAS_R_16BF ? 14 : 0; }
#define COMPUTE_32F_V1 151 /* HIPBLAS_R_32F */
#define COMPUTE_32F_V2 2   /* HIPBLAS_COMPUTE_32F */

#if DP_HIP_HAVE_HIPBLAS
/* ============================================================================
 * hipBLAS linked in */
#include <hipblas/hipblas.h>

#if defined(hipblasVersionMajor) && hipblasVersionMajor >= 3
#define GEMM_V2 1
#elif defined(HIPBLAS_V2)
#define GEMM_V2 1
#else
#define GEMM_V2 0
#endif

static dp_hipblas_status load(void) { return DP_HIPBLAS_STATUS_SUCCESS; }
#define CALL_CREATE(h) ((dp_hipblas_status)hipblasCreate((hipblasHandle_t *)(h)))
#define CALL_DESTROY(h) ((dp_hipblas_status)hipblasDestroy((hipblasHandle_t)(h)))
#define CALL_SET_STREAM(h, s) ((dp_hipblas_status)hipblasSetStream((hipblasHandle_t)(h), (s)))
static dp_hipblas_status call_gemm(dp_hipblas_handle h, int op1, int op2, int m, int n, int k, const float *alpha,
                                   const void *a, dp_hipblas_type at, int lda, const void *b, dp_hipblas_type bt,
                                   int ldb, const float *beta, void *c, dp_hipblas_type ct, int ldc)
{
#if GEMM_V2
    return (dp_hipblas_status)hipblasGemmEx((hipblasHandle_t)h, (hipblasOperation_t)op1, (hipblasOperation_t)op2, m,
                                            n, k, alpha, a, (hipDataType)type_v2(at), lda, b, (hipDataType)type_v2(bt),
                                            ldb, beta, c, (hipDataType)type_v2(ct), ldc,
                                            (hipblasComputeType_t)COMPUTE_32F_V2, HIPBLAS_GEMM_DEFAULT);
#else
    return (dp_hipblas_status)hipblasGemmEx(
        (hipblasHandle_t)h, (hipblasOperation_t)op1, (hipblasOperation_t)op2, m, n, k, alpha, a,
        (hipblasDatatype_t)type_v1(at), lda, b, (hipblasDatatype_t)type_v1(bt), ldb, beta, c,
        (hipblasDatatype_t)type_v1(ct), ldc, (hipblasDatatype_t)COMPUTE_32F_V1, HIPBLAS_GEMM_DEFAULT);
#endif
}
static const char *missing_message(void) { return ""; }

#else
/* ============================================================================
 * hipBLAS loaded at run time. Every enum it takes is an int in the C ABI. */
typedef int (*create_fn)(void **);
typedef int (*destroy_fn)(void *);
typedef int (*set_stream_fn)(void *, hipStream_t);
typedef int (*gemm_fn)(void *, int, int, int, int, int, const void *, const void *, int, int, const void *, int, int,
                       const void *, void *, int, int, int, int);

static struct {
    pthread_once_t once;
    void *lib;
    create_fn create;
    destroy_fn destroy;
    set_stream_fn set_stream;
    gemm_fn gemm;
    int gemm_v2; /* gemm takes hipDataType and hipblasComputeType_t */
    char missing[1024];
} hb = {PTHREAD_ONCE_INIT, NULL, NULL, NULL, NULL, NULL, 0, ""};

/* Sonames newest first, so that the major version says which types hipblasGemmEx takes; then
 * the development link, then ROCm's own directory for installs the loader is not told about. */
static void load_once(void)
{
    static const char *const names[] = {"libhipblas.so.3", "libhipblas.so.2", "libhipblas.so.1", "libhipblas.so.0",
                                        "libhipblas.so"};
    static const int majors[] = {3, 2, 1, 0, -1}; /* -1: unknown */
    char first_error[512], path[4096];
    int which = 0;
    hb.lib = dp_rocm_dlopen(names, (int)(sizeof names / sizeof names[0]), path, sizeof path, &which, first_error,
                            sizeof first_error);
    int major = hb.lib ? majors[which] : -1;
    if (!hb.lib) {
        snprintf(hb.missing, sizeof hb.missing,
                 "the hipBLAS library (libhipblas.so) could not be loaded (%s); this HIP driver was built without "
                 "hipBLAS and loads it at run time: install ROCm's hipblas package, or add the directory holding "
                 "libhipblas.so to LD_LIBRARY_PATH (or set ROCM_PATH)",
                 first_error[0] ? first_error : "not found");
        return;
    }
    hb.create = (create_fn)dlsym(hb.lib, "hipblasCreate");
    hb.destroy = (destroy_fn)dlsym(hb.lib, "hipblasDestroy");
    hb.set_stream = (set_stream_fn)dlsym(hb.lib, "hipblasSetStream");
    gemm_fn v2 = major == 2 || major < 0 ? (gemm_fn)dlsym(hb.lib, "hipblasGemmEx_v2") : NULL;
    hb.gemm = v2 ? v2 : (gemm_fn)dlsym(hb.lib, "hipblasGemmEx");
    hb.gemm_v2 = v2 != NULL || major >= 3;
    if (!hb.create || !hb.destroy || !hb.set_stream || !hb.gemm) {
        snprintf(hb.missing, sizeof hb.missing,
                 "the hipBLAS library at %s lacks hipblasCreate, hipblasDestroy, hipblasSetStream or hipblasGemmEx; "
                 "install a ROCm hipBLAS (5.x or later)",
                 path);
        dlclose(hb.lib);
        hb.lib = NULL;
    }
}

static dp_hipblas_status load(void)
{
    pthread_once(&hb.once, load_once);
    return hb.lib ? DP_HIPBLAS_STATUS_SUCCESS : DP_HIPBLAS_STATUS_LIBRARY_MISSING;
}
#define CALL_CREATE(h) ((dp_hipblas_status)hb.create((void **)(h)))
#define CALL_DESTROY(h) ((dp_hipblas_status)hb.destroy((void *)(h)))
#define CALL_SET_STREAM(h, s) ((dp_hipblas_status)hb.set_stream((void *)(h), (s)))
static dp_hipblas_status call_gemm(dp_hipblas_handle h, int op1, int op2, int m, int n, int k, const float *alpha,
                                   const void *a, dp_hipblas_type at, int lda, const void *b, dp_hipblas_type bt,
                                   int ldb, const float *beta, void *c, dp_hipblas_type ct, int ldc)
{
    int v2 = hb.gemm_v2;
    return (dp_hipblas_status)hb.gemm((void *)h, op1, op2, m, n, k, alpha, a, v2 ? type_v2(at) : type_v1(at), lda,
                                      b, v2 ? type_v2(bt) : type_v1(bt), ldb, beta, c,
                                      v2 ? type_v2(ct) : type_v1(ct), ldc, v2 ? COMPUTE_32F_V2 : COMPUTE_32F_V1,
                                      HIPBLAS_GEMM_DEFAULT_);
}
static const char *missing_message(void) { return hb.missing; }
#endif

/* ============================================================================
 * the entry points */

dp_hipblas_status dp_hipblas_create(dp_hipblas_handle *h)
{
    *h = NULL;
    dp_hipblas_status s = load();
    return s != DP_HIPBLAS_STATUS_SUCCESS ? s : CALL_CREATE(h);
}

dp_hipblas_status dp_hipblas_destroy(dp_hipblas_handle h)
{
    return h && load() == DP_HIPBLAS_STATUS_SUCCESS ? CALL_DESTROY(h) : DP_HIPBLAS_STATUS_SUCCESS;
}

dp_hipblas_status dp_hipblas_set_stream(dp_hipblas_handle h, hipStream_t s)
{
    dp_hipblas_status st = load();
    return st != DP_HIPBLAS_STATUS_SUCCESS ? st : CALL_SET_STREAM(h, s);
}

dp_hipblas_status dp_hipblas_set_math_mode(dp_hipblas_handle h, dp_hipblas_math m)
{
    (void)h;
    (void)m;
    return DP_HIPBLAS_STATUS_SUCCESS;
}

/* The interface takes cuBLAS's argument order (op of the first operand first); hipBLAS takes
 * the same order, so nothing is swapped here: op_a/a are hipBLAS's first operand. */
dp_hipblas_status dp_hipblas_gemm_ex(dp_hipblas_handle h, dp_hipblas_op op_a, dp_hipblas_op op_b, int m, int n, int k,
                                     const float *alpha, const void *a, dp_hipblas_type a_type, int lda, const void *b,
                                     dp_hipblas_type b_type, int ldb, const float *beta, void *c,
                                     dp_hipblas_type c_type, int ldc, dp_hipblas_compute compute, int algo)
{
    (void)compute; /* fp32 accumulation always: no TF32 on AMD */
    (void)algo;
    dp_hipblas_status st = load();
    if (st != DP_HIPBLAS_STATUS_SUCCESS) return st;
    return call_gemm(h, op_a == DP_HIPBLAS_OP_T ? HIPBLAS_OP_T_ : HIPBLAS_OP_N_,
                     op_b == DP_HIPBLAS_OP_T ? HIPBLAS_OP_T_ : HIPBLAS_OP_N_, m, n, k, alpha, a, a_type, lda, b, b_type,
                     ldb, beta, c, c_type, ldc);
}

const char *dp_hipblas_status_name(dp_hipblas_status s)
{
    switch ((int)s) {
    case 0: return "HIPBLAS_STATUS_SUCCESS";
    case 1: return "HIPBLAS_STATUS_NOT_INITIALIZED";
    case 2: return "HIPBLAS_STATUS_ALLOC_FAILED";
    case 3: return "HIPBLAS_STATUS_INVALID_VALUE";
    case 4: return "HIPBLAS_STATUS_MAPPING_ERROR";
    case 5: return "HIPBLAS_STATUS_EXECUTION_FAILED";
    case 6: return "HIPBLAS_STATUS_INTERNAL_ERROR";
    case 7: return "HIPBLAS_STATUS_NOT_SUPPORTED";
    case 8: return "HIPBLAS_STATUS_ARCH_MISMATCH";
    case 9: return "HIPBLAS_STATUS_HANDLE_IS_NULLPTR";
    case 10: return "HIPBLAS_STATUS_INVALID_ENUM";
    case DP_HIPBLAS_STATUS_LIBRARY_MISSING: return "hipBLAS not loaded";
    default: return "HIPBLAS_STATUS_UNKNOWN";
    }
}

const char *dp_hipblas_status_string(dp_hipblas_status s)
{
    switch ((int)s) {
    case 0: return "success";
    case 1: return "hipBLAS was not initialised";
    case 2: return "hipBLAS could not allocate memory";
    case 3: return "an argument hipBLAS was given is invalid";
    case 7: return "hipBLAS does not support this operation";
    case DP_HIPBLAS_STATUS_LIBRARY_MISSING: return missing_message();
    default: return "hipBLAS failed (see the status name)";
    }
}
