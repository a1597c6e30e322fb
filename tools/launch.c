/* launch.c: a tool's place in a job of one or several processes (see launch.h). The place
 * comes from the launcher's environment (engine/launch_env.h); under an MPI launcher MPI is
 * started and is the processes' bootstrap, otherwise a TCP rendezvous at MASTER_ADDR and
 * MASTER_PORT is (GPU drivers only: CPU ranks in different processes talk over MPI). */
#define _POSIX_C_SOURCE 200809L
#include "tools/launch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bootstrap_tcp.h"
#include "engine/driver.h"
#include "engine/launch_env.h"
#include "engine/mpi_job.h"
#include "tools/cli.h"

/* The variables MPI launchers set in every process they start. */
static const char *mpi_launcher(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
                                       "MPI_LOCALNRANKS", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i])) return vars[i];
    return NULL;
}

static int mpi_process, mpi_processes, mpi_local_rank;

/* What MPI says, once it is started here. */
static dp_status mpi_query(int *rank, int *size, int *local_rank, int *local_size)
{
    *rank = mpi_process, *size = mpi_processes, *local_rank = mpi_local_rank, *local_size = 0;
    return DP_OK;
}

int launch_begin(launch *l)
{
    memset(l, 0, sizeof *l);
    l->processes = 1, l->how = "one process";
    const char *var = mpi_launcher();
    if (var && dp_mpi_built()) {
        if (dp_mpi_start(NULL, NULL, &mpi_process, &mpi_processes, &mpi_local_rank) != DP_OK) {
            cli_error("%s", dp_last_error());
            return CLI_EXIT_FAIL;
        }
        l->mpi = 1;
        dp_launch_env_set_mpi(mpi_query);
    }
    dp_launch_env env;
    dp_status st = dp_launch_env_resolve(&env);
    dp_launch_env_set_mpi(NULL);
    if (st != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_USAGE;
    }
    if (l->mpi && (env.rank != mpi_process || env.size != mpi_processes)) {
        cli_error("%s says this is process %d of %d, but MPI says %d of %d: unset it, or make it agree",
                  env.source, env.rank, env.size, mpi_process, mpi_processes);
        return CLI_EXIT_USAGE;
    }
    l->env = env;
    l->process = env.rank, l->processes = env.size, l->local_rank = env.local_rank;
    l->how = l->mpi ? "MPI" : env.source;
    if (l->processes > 1) {
        snprintf(l->prefix, sizeof l->prefix, "%s [process %d/%d]", cli_program, l->process, l->processes);
        cli_program = l->prefix;
    }
    return 0;
}

/* The bootstrap of a job of several processes, each hosting `local` ranks. */
static int start_bootstrap(launch *l, dp_runtime_config *c, int world_size, int local, const dp_driver *drv)
{
    if (l->mpi) {
        if (dp_bootstrap_mpi_create(local, c->timeout_ms, &l->bootstrap) != DP_OK) {
            cli_error("%s", dp_last_error());
            return CLI_EXIT_FAIL;
        }
        l->bootstrap_ops = &dp_bootstrap_mpi;
        return 0;
    }
    if (strcmp(drv->link->name, "cpu") == 0) {
        cli_error("%s says this is one of %d processes, but the %s driver's ranks in different processes talk "
                  "over MPI: start them with an MPI launcher (mpirun, or srun with MPI)%s",
                  l->env.source, l->processes, drv->name,
                  dp_mpi_built() ? "" : ", in a build with MPI (install libopenmpi-dev and configure again)");
        return CLI_EXIT_USAGE;
    }
    if (!l->env.master_port[0]) {
        cli_error("%s says this is one of %d processes, started without MPI: they meet at MASTER_ADDR:MASTER_PORT "
                  "(a TCP rendezvous), so set MASTER_PORT (and MASTER_ADDR, where process 0 runs)",
                  l->env.source, l->processes);
        return CLI_EXIT_USAGE;
    }
    dp_bootstrap_tcp_config tc = {.addr = l->env.master_addr[0] ? l->env.master_addr : NULL,
                                  .port = l->env.master_port, .world_size = world_size,
                                  .processes = l->processes, .process = l->process, .timeout_ms = c->timeout_ms};
    if (dp_bootstrap_tcp_create(&tc, &l->bootstrap) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    l->bootstrap_ops = &dp_bootstrap_tcp;
    return 0;
}

int launch_place(launch *l, dp_runtime_config *c, int world_size)
{
    const char *timeout = getenv("DUALPIPE_TIMEOUT_S");
    if (timeout && *timeout && c->timeout_ms == 0) { /* an option given wins */
        int s;
        if (cli_parse_int("DUALPIPE_TIMEOUT_S", timeout, 1, 86400, &s)) return CLI_EXIT_USAGE;
        c->timeout_ms = s * 1000;
    }
    if (l->processes <= 1) return 0;
    if (world_size % l->processes != 0) {
        cli_error("%d ranks cannot be shared evenly by %d processes: start a number of processes that divides the "
                  "ranks (each process hosts the same number of rank threads)",
                  world_size, l->processes);
        return CLI_EXIT_USAGE;
    }
    int local = world_size / l->processes;
    if (local > DP_MPI_MAX_LOCAL_RANKS) {
        cli_error("%d ranks on %d processes is %d rank threads per process; at most %d are supported: start more "
                  "processes", world_size, l->processes, local, DP_MPI_MAX_LOCAL_RANKS);
        return CLI_EXIT_USAGE;
    }
    /* drivers of host memory (they use the cpu link) cross processes through MPI; GPU drivers
     * through their own link, met through the bootstrap */
    const dp_driver *drv;
    if (dp_driver_load(c->driver ? c->driver : "cpu", &drv) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_USAGE;
    }
    int rc = l->bootstrap ? 0 : start_bootstrap(l, c, world_size, local, drv);
    if (rc) return rc;
    c->first_rank = l->process * local, c->local_ranks = local;
    c->bootstrap = l->bootstrap_ops, c->bootstrap_ctx = l->bootstrap;
    char device[96] = "";
    if (strcmp(drv->link->name, "cpu") == 0) {
        c->link = "mpi";
    } else {
        int count = 0;
        const char *how = "";
        if (drv->device->device_count(&count) != DP_OK || count < 1) {
            cli_error("the %s driver finds no device here: %s", drv->name, dp_last_error());
            return CLI_EXIT_FAIL;
        }
        if (dp_launch_device(&l->env, count, &c->device, &how) != DP_OK) {
            cli_error("%s", dp_last_error());
            return CLI_EXIT_USAGE;
        }
        c->pin_device = 1;
        snprintf(device, sizeof device, ", device %d of %d (%s)", c->device, count, how);
    }
    char ranks[32], line[512];
    if (local > 1) snprintf(ranks, sizeof ranks, "ranks %d..%d", c->first_rank, c->first_rank + local - 1);
    else snprintf(ranks, sizeof ranks, "rank %d", c->first_rank);
    /* one write, so that the processes' lines do not interleave */
    snprintf(line, sizeof line, "%s: process %d of %d (local rank %d, from %s) hosts %s of %d, driver %s%s, link %s\n",
             cli_program, l->process, l->processes, l->local_rank, l->how, ranks, world_size, drv->name, device,
             c->link ? c->link : drv->link->name);
    fputs(line, stderr);
    fflush(stderr);
    return 0;
}

int launch_is_root(const launch *l) { return l->process == 0; }

void launch_end(launch *l, int exit_code)
{
    if (l->bootstrap && l->bootstrap_ops == &dp_bootstrap_mpi) dp_bootstrap_mpi_destroy(l->bootstrap);
    else if (l->bootstrap) dp_bootstrap_tcp_destroy(l->bootstrap);
    l->bootstrap = NULL;
    if (l->mpi) {
        fflush(stdout), fflush(stderr);
        dp_mpi_finish(l->processes > 1 ? exit_code : 0);
    }
    l->mpi = 0;
}
