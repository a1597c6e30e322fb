/* mpi_job.h: ranks in several processes over MPI: the `mpi` link (CPU data between processes,
 * point to point through MPI, collectives built on it in group-rank order so that results
 * are bit-equal to the in-process link), the MPI bootstrap (how ranks of a job first meet:
 * allgather, broadcast, barrier, abort across processes), and starting and ending MPI.
 * Implemented in drivers/mpi/; in a build without MPI every function here returns
 * DP_ERR_UNSUPPORTED saying so. */
#ifndef DP_MPI_JOB_H
#define DP_MPI_JOB_H

#include "engine/link.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether this build has MPI. */
int dp_mpi_built(void);

/* Starts MPI with MPI_THREAD_MULTIPLE (every rank thread calls MPI) unless it is started
 * already; *process and *processes receive this process's place in MPI_COMM_WORLD, and
 * *local_rank its rank among the processes of its host. Fails when MPI cannot give
 * MPI_THREAD_MULTIPLE. */
dp_status dp_mpi_start(int *argc, char ***argv, int *process, int *processes, int *local_rank);
/* Ends MPI. exit_code != 0: ends every process of the job with it (MPI_Abort) instead of
 * waiting for the others in MPI_Finalize, so that one failed process ends the job. */
void dp_mpi_finish(int exit_code);
/* Whether MPI is running (started and not finished). */
int dp_mpi_running(void);

/* The MPI link. Every process of MPI_COMM_WORLD hosts the same number of ranks as threads
 * (world_config.local_ranks, at most DP_MPI_MAX_LOCAL_RANKS), process p ranks
 * p x local_ranks onwards. world_create and world_destroy are collective over the processes. */
#define DP_MPI_MAX_LOCAL_RANKS 8
extern const dp_link_ops dp_mpi_link_ops;

/* The MPI bootstrap for `local_ranks` rank threads per process (world = processes x
 * local_ranks). Every call gives up after timeout_ms; abort reaches every process. */
extern const dp_bootstrap_ops dp_bootstrap_mpi;
dp_status dp_bootstrap_mpi_create(int local_ranks, int timeout_ms, void **ctx);
void dp_bootstrap_mpi_destroy(void *ctx);

#ifdef __cplusplus
}
#endif
#endif
