/* mpi_skip.h: why a test cannot run MPI in this build, or NULL. MPI's own allocations and
 * threads are not instrumented: LeakSanitizer reports what Open MPI keeps until exit, and
 * ThreadSanitizer takes every hand-over through MPI's locks for a race. */
#ifndef DP_TESTS_MPI_SKIP_H
#define DP_TESTS_MPI_SKIP_H

#include "engine/mpi_job.h"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define DP_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define DP_TEST_SANITIZED 1
#endif
#endif

static inline const char *mpi_test_skip(void)
{
#ifdef DP_TEST_SANITIZED
    return "MPI's own allocations and threads are not instrumented by the sanitizers";
#else
    return dp_mpi_built() ? NULL : "this build has no MPI";
#endif
}

#endif
