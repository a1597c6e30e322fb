/* driver_fault.c: the cpu driver with one fault that `dualpipe verify --driver fault` must
 * catch, chosen by $DUALPIPE_FAULT (test_verify_faults.sh): a wrong gradient element, a wrong
 * parameter element where the gradient is smallest (where AdamW's direction is least defined),
 * or an optimizer whose every result is one ulp high. Unset: the cpu driver unchanged. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine/driver.h"

static dp_device_runtime_ops runtime;
static dp_device_kernel_ops kernels;
static dp_link_ops link_ops;

/* grad:F   the largest gradient element of one tensor times (1 + F), before the optimizer reads it
 * param:F  after one optimizer step, the parameter whose gradient is smallest moved by F x lr
 * ulp      every parameter the optimizer writes, one ulp toward +infinity */
enum { NONE, GRAD, PARAM, ULP };
static int fault;
static double size;
static atomic_int claimed; /* the one-element faults hit the first optimizer call of the run only */

static size_t arg_extreme(const float *g, size_t n, int largest)
{
    size_t at = 0;
    for (size_t i = 1; i < n; i++)
        if (largest ? fabsf(g[i]) > fabsf(g[at]) : fabsf(g[i]) < fabsf(g[at])) at = i;
    return at;
}

static void before(int first, size_t n, const float *grad)
{
    if (fault == GRAD && first && n) {
        size_t i = arg_extreme(grad, n, 1);
        ((float *)grad)[i] *= (float)(1.0 + size); /* cpu device memory is host memory */
    }
}

static void after(int first, size_t n, float *param, const float *grad, float lr)
{
    if (fault == PARAM && first && n) param[arg_extreme(grad, n, 0)] += (float)(size * lr);
    if (fault == ULP)
        for (size_t i = 0; i < n; i++) param[i] = nextafterf(param[i], INFINITY);
}

static dp_status adamw(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *m, float *v,
                       const dp_adamw_args *a)
{
    int first = !atomic_exchange(&claimed, 1);
    before(first, n, grad);
    DP_CHECK(dp_cpu_driver.kernels->adamw_update(dev, s, n, param, grad, m, v, a));
    after(first, n, param, grad, a->lr);
    return DP_OK;
}

static dp_status sgd(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *momentum,
                     const dp_sgd_args *a)
{
    int first = !atomic_exchange(&claimed, 1);
    before(first, n, grad);
    DP_CHECK(dp_cpu_driver.kernels->sgd_update(dev, s, n, param, grad, momentum, a));
    after(first, n, param, grad, a->lr);
    return DP_OK;
}

/* at load time, before the registry reads the tables */
__attribute__((constructor)) static void fill_tables(void)
{
    runtime = *dp_cpu_driver.runtime;
    runtime.name = "fault";
    kernels = *dp_cpu_driver.kernels;
    kernels.adamw_update = adamw;
    kernels.sgd_update = sgd;
    link_ops = *dp_cpu_driver.link;
    const char *f = getenv("DUALPIPE_FAULT");
    if (!f) return;
    const char *colon = strchr(f, ':');
    if (!strncmp(f, "grad", 4)) fault = GRAD, size = 0.1;
    else if (!strncmp(f, "param", 5)) fault = PARAM, size = 0.5;
    else if (!strcmp(f, "ulp")) fault = ULP;
    if (colon) size = atof(colon + 1);
}

const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "fault",
    .description = "the cpu driver with one fault named by $DUALPIPE_FAULT",
    .runtime = &runtime,
    .kernels = &kernels,
    .link = &link_ops,
};
