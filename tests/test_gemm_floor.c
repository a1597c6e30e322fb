/* test_gemm_floor.c: the floor of `dualpipe bench-cuda` counts, per GPU, the GEMMs its ranks
 * run as the schedule gives them: F runs two, B four (three on a first stage, which computes no
 * input gradient), I the input-gradient half, W the weight-gradient half; ranks sharing a GPU
 * add up and the busiest GPU counts. GEMM times are powers of two, so every sum is exact. */
#include "tests/tap.h"
#include "tools/gemm_floor.h"

static const gemm_floor times = {.ms = {1, 2, 4, 8, 16, 32}}; /* F1 F2 B2 B1 W2 W1 */

/* F = 3, B2 = 4, B1 = 8, W = 48: a visit is 63, or 55 on a first stage */
static void expect(const char *name, int ranks, int chunks, int gpus, double want)
{
    dp_schedule_params p = {.ranks = ranks, .chunks = chunks};
    dp_schedule *s = NULL;
    if (!tap_ok(dp_schedule_generate(name, &p, &s) == DP_OK, "%s pp %d chunks %d generates %s", name, ranks, chunks,
                dp_last_error()))
        return;
    tap_near(gemm_floor_per_gpu(s, gpus, &times), want, 0, 0, "%s pp %d chunks %d on %d GPU(s): floor %g", name, ranks,
             chunks, gpus, want);
    dp_schedule_free(s);
}

int main(void)
{
    tap_plan(18);
    /* one rank: every visit is on the first stage */
    expect("1f1b", 1, 4, 1, 4 * 55.0);
    /* two ranks: rank 1 computes dx, so it is the busier GPU; on one GPU both add up */
    expect("1f1b", 2, 4, 2, 4 * 63.0);
    expect("1f1b", 2, 4, 1, 4 * 55.0 + 4 * 63.0);
    /* DualPipe, PP 2: each rank holds the first stage of one direction and the second of the
     * other: 20 visits, 10 of them without dx; its I and W halves add up to whole backwards */
    expect("dualpipe", 2, 20, 2, 20 * 55.0 + 10 * 8.0);
    expect("dualpipe", 2, 20, 1, 2 * (20 * 55.0 + 10 * 8.0));
    /* DualPipeV on one rank with half the micro-batches does one DualPipe PP 2 rank's GEMMs */
    expect("dualpipev", 1, 10, 1, 20 * 55.0 + 10 * 8.0);
    /* ZB1P, PP 4: ranks 1 to 3 are busiest; two GPUs hold ranks {0, 2} and {1, 3} */
    expect("zb1p", 4, 8, 4, 8 * 63.0);
    expect("zb1p", 4, 8, 2, 2 * 8 * 63.0);
    /* DualPipe, PP 4 on 4 GPUs: ranks 0 and 3 hold a first stage, ranks 1 and 2 do not */
    expect("dualpipe", 4, 8, 4, 8 * 63.0);
    return tap_done();
}
