/* registry.c: finds drivers by name. `cpu` is built in; any other NAME is a module
 * dualpipe_NAME.so searched in $DUALPIPE_DRIVER_PATH, then in the install's module directory;
 * each candidate is opened, its ABI and tables checked, and a refusal says which file and why.
 * A driver that passes gets the engine's complete view of its device tables (stubs for what
 * it lacks). */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdio.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"

#ifndef DP_PKGLIBDIR
#define DP_PKGLIBDIR "/usr/local/lib/dualpipe"
#endif

const char *dp_driver_default_dir(void) { return DP_PKGLIBDIR; }

/* Modules stay loaded: their tables are referenced for the life of the process. Each loaded
 * driver keeps the engine's view of its device tables next to it. */
#define MAX_LOADED 16
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[64];
    dp_driver driver;
    dp_device_ops device;
} loaded[MAX_LOADED];
static int num_loaded;

/* Appends to a bounded report of what was tried. */
static void note(char *buf, size_t n, const char *fmt, const char *a, const char *b)
{
    size_t len = strlen(buf);
    if (len + 1 >= n) return;
    snprintf(buf + len, n - len, fmt, a, b);
}

/* Checks a driver's two device tables; on refusal writes why into `why`. */
static int device_tables_acceptable(const dp_device_runtime_ops *rt, const dp_device_kernel_ops *k, char *why,
                                    size_t n)
{
    if (rt->abi_version != DP_DEVICE_RUNTIME_ABI_VERSION) {
        snprintf(why, n,
                 "its device runtime table has ABI %u; this dualpipe reads ABI %d (rebuild the driver against "
                 "this version's engine/device.h)",
                 rt->abi_version, DP_DEVICE_RUNTIME_ABI_VERSION);
        return 0;
    }
    if (rt->struct_size < DP_DEVICE_RUNTIME_OPS_MIN_SIZE) {
        snprintf(why, n,
                 "its device runtime table has %u bytes; this dualpipe needs at least %zu (devices, memory, streams "
                 "and events up to event_elapsed)",
                 rt->struct_size, (size_t)DP_DEVICE_RUNTIME_OPS_MIN_SIZE);
        return 0;
    }
    /* What the minimum size covers must also be set: there is no running without it. */
#define REQUIRE(member, params)                                                                                \
    if (offsetof(dp_device_runtime_ops, member) < DP_DEVICE_RUNTIME_OPS_MIN_SIZE && !rt->member) {            \
        snprintf(why, n, "its device runtime table leaves '%s' unset (every runtime operation is required)",   \
                 #member);                                                                                     \
        return 0;                                                                                              \
    }
    DP_DEVICE_RUNTIME_OPS(REQUIRE)
#undef REQUIRE
    if (k->abi_version != DP_DEVICE_KERNEL_ABI_VERSION) {
        snprintf(why, n,
                 "its device kernel table has ABI %u; this dualpipe reads ABI %d (rebuild the driver against "
                 "this version's engine/device.h)",
                 k->abi_version, DP_DEVICE_KERNEL_ABI_VERSION);
        return 0;
    }
    if (k->struct_size < DP_DEVICE_KERNEL_OPS_MIN_SIZE) {
        snprintf(why, n, "its device kernel table has %u bytes, fewer than its own header (%zu)", k->struct_size,
                 (size_t)DP_DEVICE_KERNEL_OPS_MIN_SIZE);
        return 0;
    }
    return 1; /* kernels it lacks become stubs */
}

/* Checks a driver's export; on refusal writes why into `why`. */
static int driver_acceptable(const dp_driver_export *d, char *why, size_t n)
{
    if (d->abi_version != DP_DRIVER_ABI_VERSION) {
        snprintf(why, n,
                 "built for driver ABI %u, this dualpipe needs ABI %d (rebuild the driver against this version)",
                 d->abi_version, DP_DRIVER_ABI_VERSION);
        return 0;
    }
    if (d->struct_size < offsetof(dp_driver_export, available) + sizeof(void *)) {
        snprintf(why, n, "its driver struct is too small (%u bytes)", d->struct_size);
        return 0;
    }
    if (!d->name || !d->runtime || !d->kernels || !d->link) {
        snprintf(why, n,
                 "its driver struct lacks a name, a device runtime table, a device kernel table or a link table");
        return 0;
    }
    if (!device_tables_acceptable(d->runtime, d->kernels, why, n)) return 0;
    if (d->link->abi_version != DP_LINK_ABI_VERSION || d->link->struct_size < DP_LINK_OPS_MIN_SIZE) {
        snprintf(why, n, "its link table has ABI %u and %u bytes; this dualpipe needs ABI %d and %zu bytes",
                 d->link->abi_version, d->link->struct_size, DP_LINK_ABI_VERSION, (size_t)DP_LINK_OPS_MIN_SIZE);
        return 0;
    }
    return 1;
}

/* Tries one file. Returns the driver's export or NULL, noting why in `tried`. */
static const dp_driver_export *try_file(const char *path, char *tried, size_t n)
{
    if (access(path, F_OK) != 0) {
        note(tried, n, "\n  %s: %s", path, "no such file");
        return NULL;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        note(tried, n, "\n  %s: cannot be loaded: %s", path, e ? e : "unknown error");
        return NULL;
    }
    const dp_driver_export *d = (const dp_driver_export *)dlsym(h, DP_DRIVER_SYMBOL);
    if (!d) {
        note(tried, n, "\n  %s: %s", path, "exports no '" DP_DRIVER_SYMBOL "' symbol (not a dualpipe driver)");
        dlclose(h);
        return NULL;
    }
    char why[256];
    if (!driver_acceptable(d, why, sizeof why)) {
        note(tried, n, "\n  %s: refused: %s", path, why);
        dlclose(h);
        return NULL;
    }
    dp_log(DP_LOG_INFO, "driver '%s' (%s) loaded from %s", d->name, d->description ? d->description : "", path);
    return d;
}

/* Files a driver that passed its checks, with the engine's view of its device tables. Called
 * with the lock held; NULL when the registry is full. */
static const dp_driver *keep(const char *name, const dp_driver_export *d)
{
    if (num_loaded == MAX_LOADED) return NULL;
    snprintf(loaded[num_loaded].name, sizeof loaded[num_loaded].name, "%s", name);
    dp_device_ops_resolve(d->runtime, d->kernels, &loaded[num_loaded].device);
    loaded[num_loaded].driver = (dp_driver){
        .name = d->name,
        .description = d->description,
        .device = &loaded[num_loaded].device,
        .link = d->link,
        .available = d->available,
        .runtime = d->runtime,
        .kernels = d->kernels,
    };
    return &loaded[num_loaded++].driver;
}

dp_status dp_driver_load(const char *name, const dp_driver **out)
{
    *out = NULL;
    if (!name || !*name) return dp_fail(DP_ERR_INVALID, "no driver name given (try --driver cpu)");
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < num_loaded; i++)
        if (strcmp(loaded[i].name, name) == 0) {
            *out = &loaded[i].driver;
            pthread_mutex_unlock(&registry_lock);
            return DP_OK;
        }

    char tried[2048] = "";
    const dp_driver_export *d = NULL;
    char path[4096];
    if (strcmp(name, "cpu") == 0) {
        char why[256];
        if (driver_acceptable(&dp_cpu_driver, why, sizeof why)) d = &dp_cpu_driver;
        else note(tried, sizeof tried, "\n  %s: refused: %s", "the built-in cpu driver", why);
    } else if (strchr(name, '/')) {
        d = try_file(name, tried, sizeof tried);
    } else {
        const char *env = getenv("DUALPIPE_DRIVER_PATH");
        char *dirs = env ? strdup(env) : NULL;
        for (char *save = NULL, *dir = dirs ? strtok_r(dirs, ":", &save) : NULL; dir && !d;
             dir = strtok_r(NULL, ":", &save)) {
            if (!*dir) continue;
            snprintf(path, sizeof path, "%s/" DP_DRIVER_FILE_PREFIX "%s.so", dir, name);
            d = try_file(path, tried, sizeof tried);
        }
        free(dirs);
        if (!d) {
            snprintf(path, sizeof path, "%s/" DP_DRIVER_FILE_PREFIX "%s.so", DP_PKGLIBDIR, name);
            d = try_file(path, tried, sizeof tried);
        }
    }
    const dp_driver *kept = d ? keep(name, d) : NULL;
    pthread_mutex_unlock(&registry_lock);
    if (!d)
        return dp_fail(DP_ERR_NOT_FOUND,
                       "driver '%s' could not be loaded; tried:%s\nThe built-in driver is 'cpu'; others are modules "
                       "named " DP_DRIVER_FILE_PREFIX "NAME.so found through $DUALPIPE_DRIVER_PATH (colon-separated "
                       "directories) or installed in %s",
                       name, tried, DP_PKGLIBDIR);
    if (!kept)
        return dp_fail(DP_ERR_INVALID, "driver '%s' not loaded: this process already holds %d drivers, the most it can",
                       name, MAX_LOADED);
    if (kept->available) {
        dp_status st = kept->available();
        if (st != DP_OK) return st; /* the driver's own message says why */
    }
    *out = kept;
    return DP_OK;
}
