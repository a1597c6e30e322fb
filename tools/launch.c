/* launch.c: a tool's place in a job of one or several processes (see launch.h). */
#define _POSIX_C_SOURCE 200809L
#include "tools/launch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mpi_job.h"
#include "engine/driver.h"
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

int launch_begin(launch *l)
{
    memset(l, 0, sizeof *l);
    l->processes = 1, l->how = "one process";
    const char *var = mpi_launcher();
    if (!var) return 0;
    if (!dp_mpi_built()) {
        const char *size = getenv("OMPI_COMM_WORLD_SIZE") ? getenv("OMPI_COMM_WORLD_SIZE") : getenv("PMI_SIZE");
        if (size && strcmp(size, "1") != 0) {
            cli_error("started by an MPI launcher (%s is set) as %s processes, but this build has no MPI: install an "
                      "MPI (Debian: libopenmpi-dev openmpi-bin) and run ./configure again, or run one process",
                      var, size);
            return CLI_EXIT_USAGE;
        }
        return 0;
    }
    if (dp_mpi_start(NULL, NULL, &l->process, &l->processes, &l->local_rank) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    l->mpi = 1, l->how = "MPI";
    if (l->processes > 1) {
        snprintf(l->prefix, sizeof l->prefix, "%s [process %d/%d]", cli_program, l->process, l->processes);
        cli_program = l->prefix;
    }
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
    if (!l->bootstrap && dp_bootstrap_mpi_create(local, c->timeout_ms, &l->bootstrap) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_FAIL;
    }
    c->first_rank = l->process * local, c->local_ranks = local;
    c->bootstrap = &dp_bootstrap_mpi, c->bootstrap_ctx = l->bootstrap;
    /* drivers of host memory (they use the cpu link) cross processes through MPI; GPU drivers
     * through their own link, met through the bootstrap */
    const dp_driver *drv;
    if (dp_driver_load(c->driver ? c->driver : "cpu", &drv) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_USAGE;
    }
    if (strcmp(drv->link->name, "cpu") == 0) c->link = "mpi";
    char ranks[32], line[512];
    if (local > 1) snprintf(ranks, sizeof ranks, "ranks %d..%d", c->first_rank, c->first_rank + local - 1);
    else snprintf(ranks, sizeof ranks, "rank %d", c->first_rank);
    /* one write, so that the processes' lines do not interleave */
    snprintf(line, sizeof line, "%s: %s process %d of %d (local rank %d) hosts %s of %d, driver %s, link %s\n",
             cli_program, l->how, l->process, l->processes, l->local_rank, ranks, world_size, drv->name,
             c->link ? c->link : drv->link->name);
    fputs(line, stderr);
    fflush(stderr);
    return 0;
}

int launch_is_root(const launch *l) { return l->process == 0; }

void launch_end(launch *l, int exit_code)
{
    if (l->bootstrap) dp_bootstrap_mpi_destroy(l->bootstrap);
    l->bootstrap = NULL;
    if (l->mpi) {
        fflush(stdout), fflush(stderr);
        dp_mpi_finish(l->processes > 1 ? exit_code : 0);
    }
    l->mpi = 0;
}
