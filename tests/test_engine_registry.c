/* test_engine_registry.c: finding drivers: `cpu` is built in and complete; an unknown name
 * fails plainly naming where it looked; a module from another ABI, or with a broken device
 * table, is refused saying why; a module built against an older device.h loads, and the
 * kernels it lacks answer DP_ERR_UNSUPPORTED naming themselves. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/driver.h"
#include "tests/tap.h"

static char module_dir[4096];

static void bail(const char *what, const char *why)
{
    printf("Bail out! %s: %s\n", what, why);
    exit(1);
}

/* Every member of a driver's own tables is within its size, set, and not a stub; the engine's
 * view calls exactly those functions. */
static void check_complete(const dp_driver *d)
{
    int all = 1, same = 1;
    const dp_device_runtime_ops *rt = d->runtime;
    const dp_device_kernel_ops *k = d->kernels;
#define CHECK_RUNTIME(member, params)                                                                         \
    if (!DP_HAS(rt, member) || !rt->member || rt->member == dp_unsupported_##member) {                        \
        tap_diag("%s: runtime member '%s' missing", d->name, #member);                                        \
        all = 0;                                                                                              \
    } else if (d->device->member != rt->member)                                                               \
        same = 0;
#define CHECK_KERNEL(member, params)                                                                          \
    if (!DP_HAS(k, member) || !k->member || k->member == dp_unsupported_##member) {                           \
        tap_diag("%s: kernel member '%s' missing", d->name, #member);                                         \
        all = 0;                                                                                              \
    } else if (d->device->member != k->member)                                                                \
        same = 0;
    DP_DEVICE_RUNTIME_OPS(CHECK_RUNTIME)
    DP_DEVICE_KERNEL_OPS(CHECK_KERNEL)
    tap_ok(all, "every member of the %s runtime and kernel tables is set to a real function", d->name);
    tap_ok(same, "the engine's view of %s calls the driver's own functions", d->name);

    const void *const *ln = (const void *const *)((const char *)d->link + offsetof(dp_link_ops, world_create));
    const void *const *ln_end = (const void *const *)((const char *)d->link + d->link->struct_size);
    all = 1;
    for (const void *const *p = ln; p < ln_end; p++) all &= *p != NULL;
    tap_ok(all, "every member of the %s link table is set", d->name);
}

/* A module built against an older device.h: it loads, DP_HAS tells what it has, and what it
 * lacks is a stub that says so, not NULL and not whatever lies past its table. */
static void test_older_kernel_table(void)
{
    const dp_driver *d = NULL;
    tap_is_int(dp_driver_load("oldkernels", &d), DP_OK, "a module with a shorter kernel table loads");
    if (!d) {
        tap_diag("%s", dp_last_error());
        return;
    }
    tap_ok(DP_HAS(d->kernels, scatter_add_rows) == 0 && DP_HAS(d->kernels, sum_squares) == 0 &&
               DP_HAS(d->kernels, xent_backward) && DP_HAS(d->kernels, gemm) && DP_HAS(d->runtime, event_elapsed),
           "DP_HAS: members up to xent_backward, none from gather_rows on");
    tap_ok(!DP_SUPPORTS(d->device, gather_rows) && !DP_SUPPORTS(d->device, sum_squares) &&
               DP_SUPPORTS(d->device, fill) && DP_SUPPORTS(d->device, gemm) && DP_SUPPORTS(d->device, alloc),
           "DP_SUPPORTS: the missing members are stubs, the others are the driver's");

    dp_device_config cfg = {.threads = 1};
    dp_device *dev = NULL;
    float *x = NULL, host[4] = {0}, *sum = NULL;
    if (d->device->open(&cfg, &dev) != DP_OK || d->device->alloc(dev, sizeof host, (void **)&x) != DP_OK ||
        d->device->alloc(dev, sizeof(float), (void **)&sum) != DP_OK)
        bail("cannot open a device of oldkernels", dp_last_error());
    tap_is_int(d->device->fill(dev, NULL, DP_DTYPE_F32, 4, 3.0f, x), DP_OK, "a kernel it has runs");
    d->device->copy(dev, host, x, sizeof host, DP_COPY_DEVICE_TO_HOST, NULL);
    tap_ok(host[0] == 3.0f && host[3] == 3.0f, "and computes");
    dp_status st = d->device->sum_squares(dev, NULL, DP_DTYPE_F32, 4, x, sum);
    tap_is_int(st, DP_ERR_UNSUPPORTED, "a kernel it lacks answers DP_ERR_UNSUPPORTED");
    tap_ok(strstr(dp_last_error(), "'sum_squares'") != NULL, "naming the operation");
    tap_diag("%s", dp_last_error());
    int32_t index[1] = {0};
    st = d->device->gather_rows(dev, NULL, DP_DTYPE_F32, 1, 1, x, index, x);
    tap_ok(st == DP_ERR_UNSUPPORTED && strstr(dp_last_error(), "'gather_rows'"),
           "the first member past its table is a stub too");
    d->device->free(dev, x);
    d->device->free(dev, sum);
    d->device->close(dev);
}

/* A driver whose tables the test breaks one way at a time: each is refused with a message
 * naming the file and what is wrong. */
static void expect_refusal(const char *what, const char *says)
{
    const dp_driver *d = NULL;
    dp_status st = dp_driver_load("badtables", &d);
    tap_ok(st == DP_ERR_NOT_FOUND && d == NULL && strstr(dp_last_error(), "dualpipe_badtables.so: refused") &&
               strstr(dp_last_error(), says),
           "%s: refused, saying \"%s\"", what, says);
    tap_diag("%s", dp_last_error());
}

static void test_broken_tables(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/dualpipe_badtables.so", module_dir);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL); /* held open: the registry sees the edits */
    dp_driver_export *e = h ? (dp_driver_export *)dlsym(h, DP_DRIVER_SYMBOL) : NULL;
    if (!e) bail(path, dlerror());
    dp_device_runtime_ops *rt = (dp_device_runtime_ops *)e->runtime, rt_good = *rt;
    dp_device_kernel_ops *k = (dp_device_kernel_ops *)e->kernels, k_good = *k;
    char says[128];

    rt->abi_version = DP_DEVICE_RUNTIME_ABI_VERSION + 5;
    snprintf(says, sizeof says, "device runtime table has ABI %d", DP_DEVICE_RUNTIME_ABI_VERSION + 5);
    expect_refusal("a runtime table of another ABI", says);
    *rt = rt_good;

    k->abi_version = DP_DEVICE_KERNEL_ABI_VERSION + 6;
    snprintf(says, sizeof says, "device kernel table has ABI %d", DP_DEVICE_KERNEL_ABI_VERSION + 6);
    expect_refusal("a kernel table of another ABI", says);
    *k = k_good;

    rt->struct_size = (uint32_t)offsetof(dp_device_runtime_ops, event_elapsed);
    snprintf(says, sizeof says, "device runtime table has %u bytes", rt->struct_size);
    expect_refusal("a runtime table without event_elapsed", says);
    *rt = rt_good;

    rt->stream_wait_event = NULL;
    expect_refusal("a runtime table with a member unset", "leaves 'stream_wait_event' unset");
    *rt = rt_good;

    k->struct_size = 4;
    expect_refusal("a kernel table shorter than its header", "fewer than its own header");
    *k = k_good;

    const dp_device_kernel_ops *kernels = e->kernels;
    e->kernels = NULL;
    expect_refusal("a driver without a kernel table", "lacks a name, a device runtime table, a device kernel table");
    e->kernels = kernels;

    /* mended, except a kernel left NULL: it loads, and that kernel is a stub, not NULL */
    k->gemm = NULL;
    const dp_driver *d = NULL;
    tap_is_int(dp_driver_load("badtables", &d), DP_OK, "mended, it loads");
    tap_ok(d && d->device->gemm == dp_unsupported_gemm && d->device->fill == k_good.fill &&
               strcmp(d->device->name, "badtables") == 0,
           "a kernel it leaves NULL becomes the stub");
    dlclose(h);
}

/* The CUDA module's tables, where there is a GPU to load it for (its build also refuses a table
 * with a member unset, at compile time). */
static void test_cuda_tables(const char *top)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/drivers/cuda/.libs/dualpipe_cuda.so", top);
    const dp_driver *d = NULL;
    if (access("/dev/nvidiactl", F_OK) != 0 || access(path, F_OK) != 0 || dp_driver_load(path, &d) != DP_OK) {
        tap_ok(1, "the cuda tables # SKIP no CUDA device or no CUDA module");
        return;
    }
    check_complete(d);
}

int main(void)
{
    const dp_driver *d = NULL;
    tap_is_int(dp_driver_load("cpu", &d), DP_OK, "the cpu driver is built in");
    tap_ok(d && strcmp(d->name, "cpu") == 0 && d->device && d->link && d->runtime && d->kernels,
           "it names itself and has its tables and the engine's view");
    const dp_driver *again = NULL;
    dp_driver_load("cpu", &again);
    tap_ok(again == d, "loading it twice gives the same driver");
    check_complete(d);

    setenv("DUALPIPE_DRIVER_PATH", "/nonexistent-dir", 1);
    dp_status st = dp_driver_load("nosuch", &d);
    tap_is_int(st, DP_ERR_NOT_FOUND, "an unknown driver is not found");
    tap_ok(strstr(dp_last_error(), "nosuch") && strstr(dp_last_error(), "DUALPIPE_DRIVER_PATH") &&
               strstr(dp_last_error(), "/nonexistent-dir/dualpipe_nosuch.so"),
           "the message names the driver, the variable and the file tried");
    tap_diag("%s", dp_last_error());

    const char *top = getenv("top_builddir");
    snprintf(module_dir, sizeof module_dir, "%s/tests/.libs", top ? top : ".");
    setenv("DUALPIPE_DRIVER_PATH", module_dir, 1);
    st = dp_driver_load("badabi", &d);
    tap_is_int(st, DP_ERR_NOT_FOUND, "a module from another ABI is refused");
    char abi[64];
    snprintf(abi, sizeof abi, "built for driver ABI %d", DP_DRIVER_ABI_VERSION + 41);
    tap_ok(strstr(dp_last_error(), "dualpipe_badabi.so") && strstr(dp_last_error(), abi),
           "the message names the file and its ABI");
    tap_diag("%s", dp_last_error());

    test_older_kernel_table();
    test_broken_tables();
    test_cuda_tables(top ? top : ".");

    st = dp_driver_load("", &d);
    tap_is_int(st, DP_ERR_INVALID, "an empty name is refused");
    return tap_done();
}
