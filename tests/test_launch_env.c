/* test_launch_env.c: where a process stands in a job, from the launcher's environment
 * (engine/launch_env.h): every source alone, their order when several are set, each kind of
 * bad value refused naming its variable, and the choice of device. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/launch_env.h"
#include "tests/tap.h"

static const char *all_vars[] = {
    "DUALPIPE_RANK", "DUALPIPE_WORLD_SIZE", "DUALPIPE_LOCAL_RANK", "DUALPIPE_DEVICE",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID",
    "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", NULL};

static void clear_env(void)
{
    for (const char **v = all_vars; *v; v++) unsetenv(*v);
    dp_launch_env_set_mpi(NULL);
}

/* Sets NULL-terminated name/value pairs. */
static void set_env(const char *const *pairs)
{
    for (; pairs[0]; pairs += 2) setenv(pairs[0], pairs[1], 1);
}

static int same_place(const dp_launch_env *e, int rank, int size, int local_rank, int local_size, int known,
                      const char *source)
{
    int same = e->rank == rank && e->size == size && e->local_rank == local_rank && e->local_size == local_size &&
               e->local_rank_known == known && strcmp(e->source, source) == 0;
    if (!same)
        tap_diag("got rank %d size %d local %d/%d (known %d) from %s; want %d %d %d/%d (known %d) from %s", e->rank,
                 e->size, e->local_rank, e->local_size, e->local_rank_known, e->source, rank, size, local_rank,
                 local_size, known, source);
    return same;
}

/* ----------------------------------------------------------------------------
 * the MPI hook */

static dp_status mpi_answer;
static dp_status fake_mpi(int *rank, int *size, int *local_rank, int *local_size)
{
    if (mpi_answer != DP_OK) return mpi_answer == DP_ERR_NOT_FOUND ? mpi_answer : dp_fail(mpi_answer, "MPI_Init failed");
    *rank = 5, *size = 8, *local_rank = 1, *local_size = 4;
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * each source alone */

typedef struct {
    const char *name;
    const char *env[16];
    int rank, size, local_rank, local_size, known;
    const char *source;
} source_case;

static const source_case sources[] = {
    {"DUALPIPE_RANK", {"DUALPIPE_RANK", "2", "DUALPIPE_WORLD_SIZE", "4", "DUALPIPE_LOCAL_RANK", "0", NULL}, 2, 4, 0,
     0, 1, "DUALPIPE_RANK"},
    {"DUALPIPE_RANK without a local rank", {"DUALPIPE_RANK", "3", "DUALPIPE_WORLD_SIZE", "4", NULL}, 3, 4, 3, 0, 0,
     "DUALPIPE_RANK"},
    {"Open MPI", {"OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", "OMPI_COMM_WORLD_LOCAL_RANK", "1",
                  "OMPI_COMM_WORLD_LOCAL_SIZE", "2", NULL}, 3, 4, 1, 2, 1, "OMPI_COMM_WORLD_RANK"},
    {"MPICH hydra (PMI, MPI_LOCALRANKID)", {"PMI_RANK", "1", "PMI_SIZE", "2", "MPI_LOCALRANKID", "1",
                                            "MPI_LOCALNRANKS", "2", NULL}, 1, 2, 1, 2, 1, "PMI_RANK"},
    {"PMI with PMI_LOCAL_RANK", {"PMI_RANK", "4", "PMI_SIZE", "6", "PMI_LOCAL_RANK", "1", "PMI_LOCAL_SIZE", "3", NULL},
     4, 6, 1, 3, 1, "PMI_RANK"},
    {"PMI with PALS_LOCAL_RANKID", {"PMI_RANK", "4", "PMI_SIZE", "6", "PALS_LOCAL_RANKID", "0", "PALS_LOCAL_SIZE", "2",
                                    NULL}, 4, 6, 0, 2, 1, "PMI_RANK"},
    {"PMIx with PMI_SIZE", {"PMIX_RANK", "2", "PMI_SIZE", "3", "PMI_LOCAL_RANK", "2", NULL}, 2, 3, 2, 0, 1,
     "PMIX_RANK"},
    {"PMIx without a size gives way to Slurm", {"PMIX_RANK", "1", "SLURM_PROCID", "1", "SLURM_NTASKS", "2",
                                                 "SLURM_LOCALID", "0", NULL}, 1, 2, 0, 0, 1, "SLURM_PROCID"},
    {"Slurm", {"SLURM_PROCID", "7", "SLURM_NTASKS", "16", "SLURM_LOCALID", "3", NULL}, 7, 16, 3, 0, 1,
     "SLURM_PROCID"},
    {"torchrun", {"RANK", "1", "WORLD_SIZE", "2", "LOCAL_RANK", "1", "LOCAL_WORLD_SIZE", "2", NULL}, 1, 2, 1, 2, 1,
     "RANK"},
    {"nothing set: one process", {NULL}, 0, 1, 0, 0, 0, "none"},
};

static void check_sources(void)
{
    for (size_t i = 0; i < sizeof sources / sizeof *sources; i++) {
        const source_case *c = &sources[i];
        clear_env();
        set_env(c->env);
        dp_launch_env e;
        dp_status st = dp_launch_env_resolve(&e);
        if (st != DP_OK) tap_diag("%s", dp_last_error());
        tap_ok(st == DP_OK && same_place(&e, c->rank, c->size, c->local_rank, c->local_size, c->known, c->source),
               "source: %s", c->name);
    }
    clear_env();
    set_env((const char *[]){"RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "node17.example", "MASTER_PORT", "29500",
                             NULL});
    dp_launch_env e;
    dp_status st = dp_launch_env_resolve(&e);
    tap_ok(st == DP_OK && strcmp(e.master_addr, "node17.example") == 0 && strcmp(e.master_port, "29500") == 0,
           "torchrun: MASTER_ADDR and MASTER_PORT are kept");
    clear_env();
    set_env((const char *[]){"MASTER_ADDR", "::1", NULL});
    st = dp_launch_env_resolve(&e);
    tap_ok(st == DP_OK && strcmp(e.master_addr, "::1") == 0 && e.master_port[0] == '\0' && e.size == 1,
           "MASTER_ADDR alone: one process, the address kept, no port");

    clear_env();
    dp_launch_env_set_mpi(fake_mpi);
    mpi_answer = DP_OK;
    st = dp_launch_env_resolve(&e);
    tap_ok(st == DP_OK && same_place(&e, 5, 8, 1, 4, 1, "MPI"), "source: MPI itself, through the hook");
    mpi_answer = DP_ERR_NOT_FOUND;
    set_env((const char *[]){"SLURM_PROCID", "1", "SLURM_NTASKS", "2", NULL});
    st = dp_launch_env_resolve(&e);
    tap_ok(st == DP_OK && same_place(&e, 1, 2, 1, 0, 0, "SLURM_PROCID"),
           "MPI not started by a launcher (the hook says not found): the next source decides");
    mpi_answer = DP_ERR_COMM;
    st = dp_launch_env_resolve(&e);
    tap_ok(st == DP_ERR_COMM && strstr(dp_last_error(), "MPI_Init failed"), "MPI failing: its error, with context");
    tap_diag("%s", dp_last_error());

    char text[160];
    clear_env();
    set_env((const char *[]){"OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", "OMPI_COMM_WORLD_LOCAL_RANK",
                             "1", "OMPI_COMM_WORLD_LOCAL_SIZE", "2", NULL});
    dp_launch_env_resolve(&e);
    dp_launch_env_describe(&e, text, sizeof text);
    tap_is_str(text, "process 3 of 4 (local 1 of 2) from OMPI_COMM_WORLD_RANK", "describe: the tuple and its source");
}

/* ----------------------------------------------------------------------------
 * precedence: every source set at once, with different answers, then removed one by one */

static void check_order(void)
{
    clear_env();
    set_env((const char *[]){"DUALPIPE_RANK", "0", "DUALPIPE_WORLD_SIZE", "9", "OMPI_COMM_WORLD_RANK", "1",
                             "OMPI_COMM_WORLD_SIZE", "9", "PMI_RANK", "2", "PMI_SIZE", "9", "PMIX_RANK", "3",
                             "SLURM_PROCID", "4", "SLURM_NTASKS", "9", "RANK", "6", "WORLD_SIZE", "9", NULL});
    dp_launch_env_set_mpi(fake_mpi);
    mpi_answer = DP_OK;
    struct {
        const char *remove[2]; /* what to unset after this step */
        int rank, size;
        const char *source;
    } steps[] = {
        {{"DUALPIPE_RANK", "DUALPIPE_WORLD_SIZE"}, 0, 9, "DUALPIPE_RANK"},
        {{NULL}, 5, 8, "MPI"},
        {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, 1, 9, "OMPI_COMM_WORLD_RANK"},
        {{"PMI_RANK"}, 2, 9, "PMI_RANK"},
        {{"PMIX_RANK", "PMI_SIZE"}, 3, 9, "PMIX_RANK"},
        {{"SLURM_PROCID"}, 4, 9, "SLURM_PROCID"},
        {{"RANK"}, 6, 9, "RANK"},
        {{NULL}, 0, 1, "none"},
    };
    int good = 1;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        dp_launch_env e;
        dp_status st = dp_launch_env_resolve(&e);
        int ok = st == DP_OK && e.rank == steps[i].rank && e.size == steps[i].size &&
                 strcmp(e.source, steps[i].source) == 0;
        if (!ok)
            tap_diag("step %zu: %s: got rank %d of %d from %s, want %d of %d from %s", i, dp_last_error(), e.rank,
                     e.size, e.source, steps[i].rank, steps[i].size, steps[i].source);
        good &= ok;
        if (strcmp(steps[i].source, "MPI") == 0) dp_launch_env_set_mpi(NULL);
        for (int k = 0; k < 2; k++)
            if (steps[i].remove[k]) unsetenv(steps[i].remove[k]);
    }
    tap_ok(good, "order: DUALPIPE_*, MPI, OMPI_COMM_WORLD_*, PMI_*, PMIX_RANK, SLURM_*, RANK/WORLD_SIZE, none");
}

/* ----------------------------------------------------------------------------
 * bad values: each refused with its variable named */

typedef struct {
    const char *what;
    const char *env[10];
    const char *named; /* the message must name this variable */
} bad_case;

static const bad_case bad[] = {
    {"a word", {"DUALPIPE_RANK", "one", "DUALPIPE_WORLD_SIZE", "2", NULL}, "DUALPIPE_RANK"},
    {"trailing letters", {"DUALPIPE_RANK", "1", "DUALPIPE_WORLD_SIZE", "2x", NULL}, "DUALPIPE_WORLD_SIZE"},
    {"empty", {"DUALPIPE_RANK", "", "DUALPIPE_WORLD_SIZE", "2", NULL}, "DUALPIPE_RANK"},
    {"negative", {"DUALPIPE_RANK", "-1", "DUALPIPE_WORLD_SIZE", "2", NULL}, "DUALPIPE_RANK"},
    {"a sign", {"DUALPIPE_RANK", "+1", "DUALPIPE_WORLD_SIZE", "2", NULL}, "DUALPIPE_RANK"},
    {"huge", {"DUALPIPE_RANK", "0", "DUALPIPE_WORLD_SIZE", "99999999999999999999", NULL}, "DUALPIPE_WORLD_SIZE"},
    {"above the limit", {"RANK", "0", "WORLD_SIZE", "2000000", NULL}, "WORLD_SIZE"},
    {"size 0", {"SLURM_PROCID", "0", "SLURM_NTASKS", "0", NULL}, "SLURM_NTASKS"},
    {"rank = size", {"OMPI_COMM_WORLD_RANK", "4", "OMPI_COMM_WORLD_SIZE", "4", NULL}, "OMPI_COMM_WORLD_RANK"},
    {"rank without size", {"PMI_RANK", "1", NULL}, "PMI_SIZE"},
    {"torchrun rank without size", {"RANK", "1", NULL}, "WORLD_SIZE"},
    {"PMIx without any size", {"PMIX_RANK", "1", NULL}, "PMIX_RANK"},
    {"local rank a word", {"DUALPIPE_RANK", "0", "DUALPIPE_WORLD_SIZE", "2", "DUALPIPE_LOCAL_RANK", "x", NULL},
     "DUALPIPE_LOCAL_RANK"},
    {"local rank >= size", {"RANK", "0", "WORLD_SIZE", "2", "LOCAL_RANK", "2", NULL}, "LOCAL_RANK"},
    {"local rank >= local size", {"RANK", "1", "WORLD_SIZE", "4", "LOCAL_RANK", "2", "LOCAL_WORLD_SIZE", "2", NULL},
     "LOCAL_WORLD_SIZE"},
    {"local size 0", {"PMI_RANK", "0", "PMI_SIZE", "2", "MPI_LOCALNRANKS", "0", NULL}, "MPI_LOCALNRANKS"},
    {"local size > size", {"OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "OMPI_COMM_WORLD_LOCAL_SIZE",
                           "3", NULL}, "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {"negative local rank", {"SLURM_PROCID", "0", "SLURM_NTASKS", "2", "SLURM_LOCALID", "-3", NULL}, "SLURM_LOCALID"},
    {"port 0", {"MASTER_PORT", "0", NULL}, "MASTER_PORT"},
    {"port too large", {"RANK", "0", "WORLD_SIZE", "2", "MASTER_PORT", "70000", NULL}, "MASTER_PORT"},
    {"port a name", {"MASTER_PORT", "http", NULL}, "MASTER_PORT"},
};

static void check_bad(void)
{
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        clear_env();
        set_env(bad[i].env);
        dp_launch_env e;
        dp_status st = dp_launch_env_resolve(&e);
        tap_ok(st == DP_ERR_INVALID && strstr(dp_last_error(), bad[i].named) != NULL, "refused: %s, naming %s",
               bad[i].what, bad[i].named);
        tap_diag("%s", dp_last_error());
    }
    clear_env();
    char addr[400];
    memset(addr, 'a', sizeof addr - 1);
    addr[sizeof addr - 1] = '\0';
    setenv("MASTER_ADDR", addr, 1);
    dp_launch_env e;
    tap_ok(dp_launch_env_resolve(&e) == DP_ERR_INVALID && strstr(dp_last_error(), "MASTER_ADDR"),
           "refused: a MASTER_ADDR longer than a host name, naming it");
}

/* ----------------------------------------------------------------------------
 * device */

static void check_device(void)
{
    clear_env();
    set_env((const char *[]){"RANK", "5", "WORLD_SIZE", "8", "LOCAL_RANK", "5", NULL});
    dp_launch_env e;
    dp_launch_env_resolve(&e);
    int d = -1;
    const char *how = NULL;
    tap_ok(dp_launch_device(&e, 2, &d, &how) == DP_OK && d == 1 && how && strstr(how, "modulo"),
           "device: local rank 5 on 2 devices opens device 1");
    tap_ok(dp_launch_device(&e, 8, &d, NULL) == DP_OK && d == 5, "device: local rank 5 on 8 devices opens device 5");
    setenv("DUALPIPE_DEVICE", "0", 1);
    tap_ok(dp_launch_device(&e, 2, &d, &how) == DP_OK && d == 0 && how && strcmp(how, "DUALPIPE_DEVICE") == 0,
           "device: DUALPIPE_DEVICE wins over the local rank");
    setenv("DUALPIPE_DEVICE", "2", 1);
    tap_ok(dp_launch_device(&e, 2, &d, NULL) == DP_ERR_INVALID && strstr(dp_last_error(), "DUALPIPE_DEVICE") &&
               strstr(dp_last_error(), "2 devices"),
           "device: DUALPIPE_DEVICE beyond the devices is refused, naming both");
    tap_diag("%s", dp_last_error());
    setenv("DUALPIPE_DEVICE", "gpu1", 1);
    tap_ok(dp_launch_device(&e, 2, &d, NULL) == DP_ERR_INVALID && strstr(dp_last_error(), "DUALPIPE_DEVICE"),
           "device: a DUALPIPE_DEVICE that is not a number is refused");
    unsetenv("DUALPIPE_DEVICE");
    tap_ok(dp_launch_device(&e, 0, &d, NULL) == DP_ERR_NOT_FOUND && d == -1, "device: no device at all is an error");
    clear_env();
    set_env((const char *[]){"DUALPIPE_RANK", "3", "DUALPIPE_WORLD_SIZE", "4", NULL});
    dp_launch_env_resolve(&e);
    tap_ok(dp_launch_device(&e, 2, &d, NULL) == DP_OK && d == 1,
           "device: without a local rank, the rank modulo the count");
    tap_ok(dp_launch_device(NULL, 3, &d, NULL) == DP_OK && d == 0, "device: no environment at all: device 0");
}

int main(void)
{
    check_sources();
    check_order();
    check_bad();
    check_device();
    clear_env();
    return tap_done();
}
