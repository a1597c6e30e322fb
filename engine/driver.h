/* driver.h: what a driver is (two device tables and a link table under one versioned struct)
 * and how the engine finds one: `cpu` is built in, other drivers are loadable modules that
 * export one symbol, DP_DRIVER_SYMBOL, found through $DUALPIPE_DRIVER_PATH, then pkglibdir. */
#ifndef DP_DRIVER_H
#define DP_DRIVER_H

#include <stdint.h>

#include "engine/device.h"
#include "engine/link.h"
#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The major ABI of struct dp_driver_export: a module built for another major is refused.
 * 2: the device table split into a runtime table and a kernel table. */
#define DP_DRIVER_ABI_VERSION 2

/* The symbol a module exports (a `const struct dp_driver_export`), and its file name: a driver
 * named NAME lives in dualpipe_NAME.so (libtool: dualpipe_NAME.la, -module -avoid-version). */
#define DP_DRIVER_SYMBOL "dualpipe_driver"
#define DP_DRIVER_FILE_PREFIX "dualpipe_"

/* What a driver exports: its name, its two device tables and its link table. */
typedef struct dp_driver_export {
    uint32_t abi_version; /* DP_DRIVER_ABI_VERSION */
    uint32_t struct_size; /* sizeof(struct dp_driver_export) as the module was built */
    const char *name;     /* "cpu", "cuda" */
    const char *description;
    const dp_device_runtime_ops *runtime; /* memory, streams, events */
    const dp_device_kernel_ops *kernels;  /* GEMM, element-wise, norms, losses, optimizers, ... */
    const dp_link_ops *link;
    /* Optional (may be NULL): why this driver cannot run here ("no CUDA device"), checked
     * after loading; DP_OK when it can. */
    dp_status (*available)(void);
} dp_driver_export;

/* A loaded driver, as dp_driver_load hands it out. `device` is complete: the engine calls
 * every member without checking, and members the driver lacks answer DP_ERR_UNSUPPORTED
 * naming themselves. `runtime` and `kernels` are the driver's own tables, for asking with
 * DP_HAS whether the driver was built with a member at all. Owned by the registry. */
typedef struct dp_driver {
    const char *name;
    const char *description;
    const dp_device_ops *device;
    const dp_link_ops *link;
    dp_status (*available)(void); /* as exported; may be NULL */
    const dp_device_runtime_ops *runtime;
    const dp_device_kernel_ops *kernels;
} dp_driver;

/* The built-in CPU driver's export (dp_driver_load("cpu") gives the loaded driver). */
extern const dp_driver_export dp_cpu_driver;

/* Finds a driver by name: `cpu`, or a module dualpipe_NAME.so in each directory of
 * $DUALPIPE_DRIVER_PATH (colon-separated), then in the install's module directory. NAME may
 * also be a path to a module file. Checks the ABI and the tables' sizes; on failure says
 * which files were tried and why each was refused. Loaded modules stay loaded for the life
 * of the process. Thread-safe. */
dp_status dp_driver_load(const char *name, const dp_driver **out);

/* The install's module directory searched after $DUALPIPE_DRIVER_PATH. */
const char *dp_driver_default_dir(void);

#ifdef __cplusplus
}
#endif
#endif
