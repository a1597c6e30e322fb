/* test_hip_loaders.c: the HIP driver's hipBLAS and RCCL stand-ins (drivers/hip/hip_blas.cu,
 * hip_rccl.cu) where the libraries cannot be found: every call fails with a status, never a
 * crash, and the message names the missing library and what to do. Runs without a GPU; skips
 * where the libraries are installed (nothing is missing there) or the module links them. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "tests/tap.h"

/* drivers/hip/hip_blas.h's and hip_rccl.h's C entry points, as C sees them (enums are ints) */
int dp_hipblas_create(void **h);
int dp_hipblas_gemm_ex(void *h, int op_a, int op_b, int m, int n, int k, const float *alpha, const void *a, int a_type,
                       int lda, const void *b, int b_type, int ldb, const float *beta, void *c, int c_type, int ldc,
                       int compute, int algo);
const char *dp_hipblas_status_string(int s);
const char *dp_hipblas_status_name(int s);
int ncclGetUniqueId(void *id);
int ncclGroupStart(void);
const char *ncclGetLastError(void *comm);
#define LIBRARY_MISSING 1000 /* DP_HIPBLAS_STATUS_LIBRARY_MISSING */
#define NCCL_SYSTEM_ERROR 2

static int loadable(const char *name)
{
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (h) dlclose(h);
    return h != NULL;
}

int main(void)
{
    setenv("ROCM_PATH", "/nonexistent-rocm", 1);
    if (loadable("libhipblas.so") || loadable("librccl.so") || loadable("/opt/rocm/lib/libhipblas.so") ||
        loadable("/opt/rocm/lib/librccl.so"))
        tap_skip_all("hipBLAS or RCCL is installed here: nothing is missing");
    tap_plan(7);

    void *h = (void *)1;
    int st = dp_hipblas_create(&h);
    tap_is_int(st, LIBRARY_MISSING, "hipblasCreate without hipBLAS: the library-missing status");
    tap_ok(h == NULL, "and no handle");
    const char *why = dp_hipblas_status_string(st);
    tap_ok(strstr(why, "libhipblas.so") && strstr(why, "LD_LIBRARY_PATH") && strstr(why, "hipblas package"),
           "its message names libhipblas.so and what to do");
    tap_diag("%s: %s", dp_hipblas_status_name(st), why);
    float one = 1, zero = 0, a = 1, b = 1, c = 0;
    tap_is_int(dp_hipblas_gemm_ex(NULL, 0, 0, 1, 1, 1, &one, &a, 0, 1, &b, 0, 1, &zero, &c, 0, 1, 0, 0),
               LIBRARY_MISSING, "a GEMM fails alike (the second call, after the first load failed)");

    char id[128];
    tap_is_int(ncclGetUniqueId(id), NCCL_SYSTEM_ERROR, "ncclGetUniqueId without RCCL: a system error");
    tap_is_int(ncclGroupStart(), NCCL_SYSTEM_ERROR, "ncclGroupStart alike");
    why = ncclGetLastError(NULL);
    tap_ok(strstr(why, "librccl.so") && strstr(why, "LD_LIBRARY_PATH") && strstr(why, "rccl package"),
           "ncclGetLastError names librccl.so and what to do");
    tap_diag("%s", why);
    return tap_done();
}
