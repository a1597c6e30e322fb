/* mpi_start.c: starting and ending MPI for a job whose rank threads all call it
 * (MPI_THREAD_MULTIPLE), and where this process sits among the processes of its host. */
#include "config.h"

#include <mpi.h>
#include <stdlib.h>

#include "engine/mpi_job.h"

int dp_mpi_built(void) { return 1; }

int dp_mpi_running(void)
{
    int started = 0, finished = 0;
    MPI_Initialized(&started);
    if (started) MPI_Finalized(&finished);
    return started && !finished;
}

dp_status dp_mpi_start(int *argc, char ***argv, int *process, int *processes, int *local_rank)
{
    int started = 0, finished = 0, level = 0;
    MPI_Initialized(&started);
    if (started) MPI_Finalized(&finished);
    if (finished) return dp_fail(DP_ERR_INVALID, "MPI was already finished in this process; it cannot start again");
    if (!started && MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &level) != MPI_SUCCESS)
        return dp_fail(DP_ERR_COMM, "MPI_Init_thread failed: is this process started by an MPI launcher (mpirun, "
                                    "srun) of the MPI this program was built with?");
    MPI_Query_thread(&level);
    if (level < MPI_THREAD_MULTIPLE)
        return dp_fail(DP_ERR_UNSUPPORTED, "this MPI gives thread level %d, not MPI_THREAD_MULTIPLE (%d), which rank "
                                           "threads need; use an MPI built with thread support",
                                           level, MPI_THREAD_MULTIPLE);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, process);
    MPI_Comm_size(MPI_COMM_WORLD, processes);
    /* the processes sharing this host: their order is the local rank */
    MPI_Comm host;
    *local_rank = 0;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, *process, MPI_INFO_NULL, &host) == MPI_SUCCESS) {
        MPI_Comm_rank(host, local_rank);
        MPI_Comm_free(&host);
    }
    return DP_OK;
}

void dp_mpi_finish(int exit_code)
{
    if (!dp_mpi_running()) return;
    if (exit_code) MPI_Abort(MPI_COMM_WORLD, exit_code);
    MPI_Finalize();
}
