/* mpi_absent.c: what engine/mpi_job.h offers in a build without MPI: every call says how to get it. */
#include "config.h"

#include <stddef.h>

#include "engine/mpi_job.h"

#define NO_MPI                                                                                                    \
    dp_fail(DP_ERR_UNSUPPORTED, "this build has no MPI: install an MPI (Debian: libopenmpi-dev openmpi-bin) and "  \
                                "run ./configure again (--with-mpi)")

int dp_mpi_built(void) { return 0; }
int dp_mpi_running(void) { return 0; }

dp_status dp_mpi_start(int *argc, char ***argv, int *process, int *processes, int *local_rank)
{
    (void)argc, (void)argv;
    *process = 0, *processes = 1, *local_rank = 0;
    return NO_MPI;
}

void dp_mpi_finish(int exit_code) { (void)exit_code; }

static dp_status no_world(const dp_link_world_config *cfg, dp_link_world **out)
{
    (void)cfg;
    *out = NULL;
    return NO_MPI;
}

const dp_link_ops dp_mpi_link_ops = {
    .abi_version = DP_LINK_ABI_VERSION,
    .struct_size = offsetof(dp_link_ops, world_destroy),
    .name = "mpi",
    .world_create = no_world,
};

const dp_bootstrap_ops dp_bootstrap_mpi = {
    .abi_version = DP_BOOTSTRAP_ABI_VERSION, .struct_size = 0, .name = "mpi",
};

dp_status dp_bootstrap_mpi_create(int local_ranks, int timeout_ms, void **ctx)
{
    (void)local_ranks, (void)timeout_ms;
    *ctx = NULL;
    return NO_MPI;
}

void dp_bootstrap_mpi_destroy(void *ctx) { (void)ctx; }
