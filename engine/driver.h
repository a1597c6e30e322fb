/* driver.h: what a driver is (a device table and a link table under one versioned struct)
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

/* The major ABI of struct dp_driver: a module built for another major is refused. */
#define DP_DRIVER_ABI_VERSION 1

/* The symbol a module exports (a `const struct dp_driver`), and its file name: a driver
 * named NAME lives in dualpipe_NAME.so (libtool: dualpipe_NAME.la, -module -avoid-version). */
#define DP_DRIVER_SYMBOL "dualpipe_driver"
#define DP_DRIVER_FILE_PREFIX "dualpipe_"

typedef struct dp_driver {
    uint32_t abi_version; /* DP_DRIVER_ABI_VERSION */
    uint32_t struct_size; /* sizeof(struct dp_driver) as the module was built */
    const char *name;     /* "cpu", "cuda" */
    const char *description;
    const dp_device_ops *device;
    const dp_link_ops *link;
    /* Optional (may be NULL): why this driver cannot run here ("no CUDA device"), checked
     * after loading; DP_OK when it can. */
    dp_status (*available)(void);
} dp_driver;

/* The built-in CPU driver. */
extern const dp_driver dp_cpu_driver;

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
