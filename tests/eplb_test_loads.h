/* eplb_test_loads.h: seeded random expert loads for the eplb tests, shaped like routing counts:
 * uniform, heavy-tailed (a few hot experts), zeros and ties, and loads past 2^24 (where float32
 * no longer holds every integer). Header-only; one stream per test program. */
#ifndef EPLB_TEST_LOADS_H
#define EPLB_TEST_LOADS_H

#include <math.h>

static unsigned long long test_rng_state;

static inline void test_seed(unsigned long long seed) { test_rng_state = seed; }

static inline double test_uniform(void) /* splitmix64 */
{
    unsigned long long z = (test_rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

enum { LOADS_UNIFORM = 0, LOADS_HEAVY_TAIL = 1, LOADS_ZEROS_AND_TIES = 2, LOADS_PAST_2_24 = 3 };

static inline void test_random_loads(double *w, int n, int style)
{
    for (int k = 0; k < n; k++) {
        double u = test_uniform();
        if (style == LOADS_UNIFORM) w[k] = floor(1000 * u);
        else if (style == LOADS_HEAVY_TAIL) w[k] = floor(100.0 / (0.02 + u * u));
        else if (style == LOADS_ZEROS_AND_TIES) w[k] = test_uniform() < 0.3 ? 0 : floor(50 * u) * 3;
        else w[k] = floor(3e7 * u * u) + 0.25;
    }
}

#endif
