/* launch_env.h: this process's place in a job, read from what the launcher (mpirun, srun,
 * torchrun or a user) put in the environment, and the device it should open. The sources and
 * their order are listed at dp_launch_env_resolve and in dualpipe(1)'s ENVIRONMENT. */
#ifndef DP_LAUNCH_ENV_H
#define DP_LAUNCH_ENV_H

#include <stddef.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most processes (and devices) a value may name: anything larger is a typo. */
#define DP_LAUNCH_MAX_PROCESSES (1 << 20)

typedef struct {
    int rank;            /* this process among the job's processes, 0 .. size-1 */
    int size;            /* processes in the job (1 when no launcher said anything) */
    int local_rank;      /* this process among those on its host (the rank when no source says) */
    int local_size;      /* processes on this host; 0: not known */
    int local_rank_known; /* 0: no variable gave the local rank, so local_rank is the rank */
    const char *source;  /* where it came from, for printing: "DUALPIPE_RANK", "MPI", "OMPI_COMM_WORLD_RANK",
                          * "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "RANK" or "none" (one process) */
    char master_addr[256]; /* MASTER_ADDR ("" when unset): where process 0 listens for a TCP rendezvous */
    char master_port[8];   /* MASTER_PORT ("" when unset) */
} dp_launch_env;

/* What MPI itself says, for builds with MPI: fills rank, size, local rank and local size
 * (local_size 0: not known) and returns DP_OK, or DP_ERR_NOT_FOUND when this process was not
 * started by an MPI launcher (a singleton: the other sources then decide). */
typedef dp_status (*dp_launch_mpi_query)(int *rank, int *size, int *local_rank, int *local_size);

/* Installs (or, with NULL, removes) the MPI query: the MPI build does this before resolving. */
void dp_launch_env_set_mpi(dp_launch_mpi_query query);

/* Resolves this process's place from the first source that is set, in this order:
 *   DUALPIPE_RANK, DUALPIPE_WORLD_SIZE, DUALPIPE_LOCAL_RANK (the user's word);
 *   MPI itself (the query above, when installed);
 *   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE (Open MPI's mpirun);
 *   PMI_RANK, PMI_SIZE (MPICH's hydra), then PMIX_RANK with PMI_SIZE (PMIx; without a size
 *     PMIx gives way to the sources below, and when none follows the job size is missing),
 *     the local rank from MPI_LOCALRANKID, PMI_LOCAL_RANK or PALS_LOCAL_RANKID and the local
 *     size from MPI_LOCALNRANKS, PMI_LOCAL_SIZE or PALS_LOCAL_SIZE;
 *   SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (srun);
 *   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (torchrun and its kin).
 * MASTER_ADDR and MASTER_PORT are read whatever the source. None set: one process, rank 0.
 * A value that is not a number, negative, too large, a size of 0, a rank outside the size,
 * or a rank without its size is DP_ERR_INVALID naming the variable. */
dp_status dp_launch_env_resolve(dp_launch_env *env);

/* "process 1 of 4 (local 1 of 2) from OMPI_COMM_WORLD_RANK". */
void dp_launch_env_describe(const dp_launch_env *env, char *buf, size_t n);

/* The device this process opens among device_count: DUALPIPE_DEVICE when set (it must be
 * below the count), else the local rank modulo the count. *how (may be NULL) says which, for
 * printing: "DUALPIPE_DEVICE" or "local rank modulo the device count". */
dp_status dp_launch_device(const dp_launch_env *env, int device_count, int *device, const char **how);

#ifdef __cplusplus
}
#endif
#endif
