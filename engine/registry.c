/* registry.c: finds drivers by name. `cpu` is built in; any other NAME is a module
 * dualpipe_NAME.so searched in $DUALPIPE_DRIVER_PATH, then in the install's module directory;
 * each candidate is opened, its ABI checked, and a refusal says which file and why. */
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

/* Modules stay loaded: their tables are referenced for the life of the process. */
#define MAX_LOADED 16
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[64];
    const dp_driver *driver;
} loaded[MAX_LOADED];
static int num_loaded;

/* Appends to a bounded report of what was tried. */
static void note(char *buf, size_t n, const char *fmt, const char *a, const char *b)
{
    size_t len = strlen(buf);
    if (len + 1 >= n) return;
    snprintf(buf + len, n - len, fmt, a, b);
}

/* Checks a driver struct; on refusal writes why into `why`. */
static int driver_acceptable(const dp_driver *d, char *why, size_t n)
{
    if (d->abi_version != DP_DRIVER_ABI_VERSION) {
        snprintf(why, n, "built for driver ABI %u, this dualpipe needs ABI %d (rebuild the driver against this version)",
                 d->abi_version, DP_DRIVER_ABI_VERSION);
        return 0;
    }
    if (d->struct_size < offsetof(dp_driver, available) + sizeof(void *)) {
        snprintf(why, n, "its driver struct is too small (%u bytes)", d->struct_size);
        return 0;
    }
    if (!d->name || !d->device || !d->link) {
        snprintf(why, n, "its driver struct lacks a name, a device table or a link table");
        return 0;
    }
    if (d->device->abi_version != DP_DEVICE_ABI_VERSION || d->device->struct_size < DP_DEVICE_OPS_MIN_SIZE) {
        snprintf(why, n, "its device table has ABI %u and %u bytes; this dualpipe needs ABI %d and %zu bytes",
                 d->device->abi_version, d->device->struct_size, DP_DEVICE_ABI_VERSION,
                 (size_t)DP_DEVICE_OPS_MIN_SIZE);
        return 0;
    }
    if (d->link->abi_version != DP_LINK_ABI_VERSION || d->link->struct_size < DP_LINK_OPS_MIN_SIZE) {
        snprintf(why, n, "its link table has ABI %u and %u bytes; this dualpipe needs ABI %d and %zu bytes",
                 d->link->abi_version, d->link->struct_size, DP_LINK_ABI_VERSION, (size_t)DP_LINK_OPS_MIN_SIZE);
        return 0;
    }
    return 1;
}

/* Tries one file. Returns the driver or NULL, noting why in `tried`. */
static const dp_driver *try_file(const char *path, char *tried, size_t n)
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
    const dp_driver *d = (const dp_driver *)dlsym(h, DP_DRIVER_SYMBOL);
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

dp_status dp_driver_load(const char *name, const dp_driver **out)
{
    *out = NULL;
    if (!name || !*name) return dp_fail(DP_ERR_INVALID, "no driver name given (try --driver cpu)");
    if (strcmp(name, "cpu") == 0) {
        *out = &dp_cpu_driver;
        return DP_OK;
    }
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < num_loaded; i++)
        if (strcmp(loaded[i].name, name) == 0) {
            *out = loaded[i].driver;
            pthread_mutex_unlock(&registry_lock);
            return DP_OK;
        }

    char tried[2048] = "";
    const dp_driver *d = NULL;
    char path[4096];
    if (strchr(name, '/')) {
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
    if (d && num_loaded < MAX_LOADED) {
        snprintf(loaded[num_loaded].name, sizeof loaded[num_loaded].name, "%s", name);
        loaded[num_loaded].driver = d;
        num_loaded++;
    }
    pthread_mutex_unlock(&registry_lock);
    if (!d)
        return dp_fail(DP_ERR_NOT_FOUND,
                       "driver '%s' could not be loaded; tried:%s\nThe built-in driver is 'cpu'; others are modules "
                       "named " DP_DRIVER_FILE_PREFIX "NAME.so found through $DUALPIPE_DRIVER_PATH (colon-separated "
                       "directories) or installed in %s",
                       name, tried, DP_PKGLIBDIR);
    if (d->available) {
        dp_status st = d->available();
        if (st != DP_OK) return st; /* the driver's own message says why */
    }
    *out = d;
    return DP_OK;
}
