/* test_cpu_kernels_fp64.c: every kernel of the CPU driver, every output element, fp32 and bf16,
 * against double-precision references with derived error bounds (tests/kernel_fp64_checks.h);
 * the GEMM through both of its backends (CBLAS where built in, and the portable GEMM); and the
 * mixture-of-experts kernels with the router's golden cases (tests/kernel_fp64_moe_checks.h). */
#include "drivers/cpu/cpu_internal.h"
#include "engine/driver.h"
#include "tests/kernel_fp64_checks.h"
#include "tests/kernel_fp64_moe_checks.h"
#include "tests/tap.h"

int main(void)
{
    const dp_driver *d;
    if (dp_driver_load("cpu", &d) != DP_OK) {
        printf("Bail out! cpu driver: %s\n", dp_last_error());
        return 1;
    }
    dp_device_config cfg = {.threads = 2};
    kc_ops = d->device;
    kc_name = "cpu";
    kc_try(kc_ops->open(&cfg, &kc_dev), "open");
    kc_dev->use_blas = 0;
    kc_gemm_all(" portable", 1);
    if (dp_cpu_have_blas()) {
        kc_dev->use_blas = 1;
        kc_gemm_all(" cblas", 1);
    }
    kc_run_kernels();
    kc_run_moe_kernels();
    kc_ops->close(kc_dev);
    return tap_done();
}
