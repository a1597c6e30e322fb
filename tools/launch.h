/* launch.h: where a tool's process sits in a job: alone (every rank a thread of it), or one
 * of several processes started by an MPI launcher (mpirun, srun; MPI is then started here) or
 * a torchrun-style one (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: GPU drivers only), sharing
 * the job's ranks: the process hosting rank 0 prints and writes, the others stay quiet and
 * take part. */
#ifndef DP_TOOLS_LAUNCH_H
#define DP_TOOLS_LAUNCH_H

#include "engine/launch_env.h"
#include "engine/runtime.h"

typedef struct {
    int process, processes, local_rank;
    const char *how;  /* where the place came from: "one process", "MPI", "RANK", ... */
    dp_launch_env env;
    int mpi;          /* MPI was started here */
    const dp_bootstrap_ops *bootstrap_ops; /* once placed: MPI's or the TCP rendezvous */
    void *bootstrap;
    char prefix[96];  /* cli_program with the process in it */
} launch;

/* Finds how this process was started and, under an MPI launcher, starts MPI. 0, or the
 * exit code having said why not. */
int launch_begin(launch *l);
/* Sets c's timeout from DUALPIPE_TIMEOUT_S (seconds) unless an option set it. Shares
 * world_size ranks among the processes (each hosting world_size / processes, process
 * p from p x that): fills c's first_rank, local_ranks, link and bootstrap, and says on stderr
 * where this process sits (DUALPIPE_DEBUG=1, or always with several processes). 0, or the exit
 * code having said why not. */
int launch_place(launch *l, dp_runtime_config *c, int world_size);
/* Whether this process prints and writes the results: it hosts rank 0. */
int launch_is_root(const launch *l);
/* Ends the process's part: with a failure (exit_code != 0) in a job of several processes,
 * every process of it ends too rather than waiting for this one. */
void launch_end(launch *l, int exit_code);

#endif
