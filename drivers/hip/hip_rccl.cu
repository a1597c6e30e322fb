/* hip_rccl.cu: the NCCL calls of hip_rccl.h, for a HIP driver built without RCCL: librccl.so is
 * loaded from the ROCm installation on first use. When it cannot be, every call answers
 * ncclSystemError and ncclGetLastError names the missing library and what to do, which the
 * link's error message passes on. The module's hidden symbols: nothing outside it sees them. */
#if !DP_HIP_HAVE_RCCL
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "drivers/hip/hip_rccl.h"
#include "drivers/hip/rocm_library.h"

/* X(name, return type, parameters, arguments) for every call forwarded. */
#define RCCL_CALLS(X)                                                                                              \
    X(ncclGetUniqueId, (ncclUniqueId * id), (id))                                                                  \
    X(ncclCommInitRankConfig, (ncclComm_t * comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config),     \
      (comm, nranks, id, rank, config))                                                                            \
    X(ncclCommSplit, (ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config),              \
      (comm, color, key, newcomm, config))                                                                         \
    X(ncclCommFinalize, (ncclComm_t comm), (comm))                                                                 \
    X(ncclCommDestroy, (ncclComm_t comm), (comm))                                                                  \
    X(ncclCommAbort, (ncclComm_t comm), (comm))                                                                    \
    X(ncclCommGetAsyncError, (ncclComm_t comm, ncclResult_t *state), (comm, state))                                \
    X(ncclGroupStart, (void), ())                                                                                  \
    X(ncclGroupEnd, (void), ())                                                                                    \
    X(ncclSend, (const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t comm, hipStream_t s),        \
      (buf, count, t, peer, comm, s))                                                                              \
    X(ncclRecv, (void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t comm, hipStream_t s),              \
      (buf, count, t, peer, comm, s))                                                                              \
    X(ncclAllReduce,                                                                                               \
      (const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op, ncclComm_t comm, hipStream_t s), \
      (send, recv, count, t, op, comm, s))

#define POINTER(name, params, args) ncclResult_t(*name) params;
static pthread_once_t rc_once = PTHREAD_ONCE_INIT;
static struct {
    void *lib;
    const char *(*ncclGetErrorString)(ncclResult_t);
    const char *(*ncclGetLastError)(ncclComm_t);
    RCCL_CALLS(POINTER)
    char missing[1024];
} rc;
#undef POINTER

static void load_once(void)
{
    static const char *const names[] = {"librccl.so.1", "librccl.so"};
    char first_error[512], path[4096];
    int which = 0;
    rc.lib = dp_rocm_dlopen(names, (int)(sizeof names / sizeof names[0]), path, sizeof path, &which, first_error,
                            sizeof first_error);
    if (!rc.lib) {
        snprintf(rc.missing, sizeof rc.missing,
                 "the RCCL library (librccl.so) could not be loaded (%s); this HIP driver was built without RCCL and "
                 "loads it at run time for ranks on different GPUs: install ROCm's rccl package, or add the "
                 "directory holding librccl.so to LD_LIBRARY_PATH (or set ROCM_PATH)",
                 first_error[0] ? first_error : "not found");
        return;
    }
    const char *lacking = NULL;
#define FIND(name, params, args) \
    if (!(rc.name = (ncclResult_t(*) params)dlsym(rc.lib, #name)) && !lacking) lacking = #name;
    RCCL_CALLS(FIND)
#undef FIND
    rc.ncclGetErrorString = (const char *(*)(ncclResult_t))dlsym(rc.lib, "ncclGetErrorString");
    rc.ncclGetLastError = (const char *(*)(ncclComm_t))dlsym(rc.lib, "ncclGetLastError");
    if (!rc.ncclGetErrorString && !lacking) lacking = "ncclGetErrorString";
    if (lacking) {
        snprintf(rc.missing, sizeof rc.missing,
                 "the RCCL library at %s lacks %s: it is older than this driver needs (NCCL 2.18's API: RCCL from "
                 "ROCm 6.0 on)",
                 path, lacking);
        dlclose(rc.lib);
        rc.lib = NULL;
    }
}

static int loaded(void)
{
    pthread_once(&rc_once, load_once);
    return rc.lib != NULL;
}

#define FORWARD(name, params, args) \
    extern "C" ncclResult_t name params { return loaded() ? rc.name args : ncclSystemError; }
RCCL_CALLS(FORWARD)
#undef FORWARD

extern "C" const char *ncclGetErrorString(ncclResult_t r)
{
    if (!loaded()) return "RCCL is not loaded";
    return rc.ncclGetErrorString(r);
}

extern "C" const char *ncclGetLastError(ncclComm_t comm)
{
    if (!loaded()) return rc.missing;
    return rc.ncclGetLastError ? rc.ncclGetLastError(comm) : "";
}
#endif
