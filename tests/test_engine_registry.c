/* test_engine_registry.c: finding drivers: `cpu` is built in and complete; an unknown name
 * fails plainly naming where it looked; a module from another ABI is refused saying so. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"
#include "tests/tap.h"

int main(void)
{
    const dp_driver *d = NULL;
    tap_is_int(dp_driver_load("cpu", &d), DP_OK, "the cpu driver is built in");
    tap_ok(d && strcmp(d->name, "cpu") == 0 && d->device && d->link, "it names itself and has both tables");

    /* no member of the cpu tables is NULL: unsupported operations must be stubs */
    int all = 1;
    const void *const *dev = (const void *const *)((const char *)d->device + offsetof(dp_device_ops, device_count));
    const void *const *dev_end = (const void *const *)((const char *)d->device + d->device->struct_size);
    for (const void *const *p = dev; p < dev_end; p++) all &= *p != NULL;
    const void *const *ln = (const void *const *)((const char *)d->link + offsetof(dp_link_ops, world_create));
    const void *const *ln_end = (const void *const *)((const char *)d->link + d->link->struct_size);
    for (const void *const *p = ln; p < ln_end; p++) all &= *p != NULL;
    tap_ok(all, "every member of the cpu device and link tables is set");

    setenv("DUALPIPE_DRIVER_PATH", "/nonexistent-dir", 1);
    dp_status st = dp_driver_load("nosuch", &d);
    tap_is_int(st, DP_ERR_NOT_FOUND, "an unknown driver is not found");
    tap_ok(strstr(dp_last_error(), "nosuch") && strstr(dp_last_error(), "DUALPIPE_DRIVER_PATH") &&
               strstr(dp_last_error(), "/nonexistent-dir/dualpipe_nosuch.so"),
           "the message names the driver, the variable and the file tried");
    tap_diag("%s", dp_last_error());

    const char *top = getenv("top_builddir");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/.libs", top ? top : ".");
    setenv("DUALPIPE_DRIVER_PATH", dir, 1);
    st = dp_driver_load("badabi", &d);
    tap_is_int(st, DP_ERR_NOT_FOUND, "a module from another ABI is refused");
    tap_ok(strstr(dp_last_error(), "dualpipe_badabi.so") && strstr(dp_last_error(), "ABI 42"),
           "the message names the file and its ABI");
    tap_diag("%s", dp_last_error());

    st = dp_driver_load("", &d);
    tap_is_int(st, DP_ERR_INVALID, "an empty name is refused");
    return tap_done();
}
