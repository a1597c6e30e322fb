/* rocm_library.h: loading a ROCm library that the HIP driver was built without (hipBLAS, RCCL)
 * at run time: from the loader's path, then $ROCM_PATH/lib, then /opt/rocm/lib. */
#ifndef DP_DRIVERS_HIP_ROCM_LIBRARY_H
#define DP_DRIVERS_HIP_ROCM_LIBRARY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dlopen (RTLD_NOW | RTLD_LOCAL) of the first of names[0 .. n) that loads, each tried under
 * every root in turn. The handle, with the path that loaded in path and its name's index in
 * *which; NULL when none did, with the first dlerror in err (dlerror's string would not last). */
void *dp_rocm_dlopen(const char *const *names, int n, char *path, size_t path_size, int *which, char *err,
                     size_t err_size);

#ifdef __cplusplus
}
#endif

#endif
