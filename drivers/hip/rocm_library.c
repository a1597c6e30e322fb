/* rocm_library.c: loading a ROCm library at run time (rocm_library.h), for the HIP driver's
 * hipBLAS and RCCL entry points when it was built without them. */
#include "drivers/hip/rocm_library.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

void *dp_rocm_dlopen(const char *const *names, int n, char *path, size_t path_size, int *which, char *err,
                     size_t err_size)
{
    const char *roots[] = {"", getenv("ROCM_PATH"), "/opt/rocm"};
    if (err_size) err[0] = '\0';
    for (size_t r = 0; r < sizeof roots / sizeof roots[0]; r++) {
        if (!roots[r]) continue;
        for (int i = 0; i < n; i++) {
            snprintf(path, path_size, "%s%s%s", roots[r], *roots[r] ? "/lib/" : "", names[i]);
            void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (lib) {
                *which = i;
                return lib;
            }
            if (err_size && !err[0]) snprintf(err, err_size, "%s", dlerror());
        }
    }
    return NULL;
}
