/* launch_env.c: this process's rank, size and local rank from the launcher's environment
 * (see launch_env.h for the order), and the device it opens. Only reads the environment; the
 * MPI build adds MPI's own answer through a query it installs. */
#define _POSIX_C_SOURCE 200809L
#include "engine/launch_env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dp_launch_mpi_query mpi_query;

void dp_launch_env_set_mpi(dp_launch_mpi_query query) { mpi_query = query; }

/* ----------------------------------------------------------------------------
 * values */

/* A whole number from 0 to max in variable `name`. */
static dp_status parse_count(const char *name, const char *text, long max, int *out)
{
    const char *p = text;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p)
        return dp_fail(DP_ERR_INVALID, "%s is empty: it must be a whole number (or unset)", name);
    if (*p == '-')
        return dp_fail(DP_ERR_INVALID, "%s is \"%s\": it must not be negative", name, text);
    char *end = NULL;
    errno = 0;
    long v = strtol(p, &end, 10);
    while (end && (*end == ' ' || *end == '\t' || *end == '\n')) end++;
    if (end == p || *end != '\0' || *p == '+')
        return dp_fail(DP_ERR_INVALID, "%s is \"%s\": it must be a whole number", name, text);
    if (errno == ERANGE || v > max)
        return dp_fail(DP_ERR_INVALID, "%s is \"%s\": that is more than %ld, surely a mistake", name, text, max);
    *out = (int)v;
    return DP_OK;
}

/* The first of `names` (NULL-terminated) that is set, parsed; *which NULL when none is. */
static dp_status first_count(const char *const *names, long max, int *out, const char **which)
{
    *which = NULL;
    for (; *names; names++) {
        const char *text = getenv(*names);
        if (!text) continue;
        *which = *names;
        return parse_count(*names, text, max, out);
    }
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * sources */

typedef struct {
    const char *rank, *size;       /* the source is chosen when its rank variable is set */
    const char *local_rank[4];     /* the first set gives the local rank (NULL-terminated) */
    const char *local_size[4];
    int size_optional;             /* without its size the source gives way to the next (PMIx) */
} env_source;

static const env_source sources_before_mpi[] = {
    {"DUALPIPE_RANK", "DUALPIPE_WORLD_SIZE", {"DUALPIPE_LOCAL_RANK"}, {NULL}, 0},
};

static const env_source sources_after_mpi[] = {
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", {"OMPI_COMM_WORLD_LOCAL_RANK"},
     {"OMPI_COMM_WORLD_LOCAL_SIZE"}, 0},
    {"PMI_RANK", "PMI_SIZE", {"MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID"},
     {"MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE"}, 0},
    {"PMIX_RANK", "PMI_SIZE", {"MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID"},
     {"MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE"}, 1},
    {"SLURM_PROCID", "SLURM_NTASKS", {"SLURM_LOCALID"}, {NULL}, 0},
    {"RANK", "WORLD_SIZE", {"LOCAL_RANK"}, {"LOCAL_WORLD_SIZE"}, 0},
};

/* Checks a resolved place; names are the variables (or "MPI") it came from. */
static dp_status check_place(const dp_launch_env *e, const char *rank, const char *size, const char *local_rank,
                             const char *local_size)
{
    if (e->size < 1)
        return dp_fail(DP_ERR_INVALID, "%s is %d: a job has at least one process", size, e->size);
    if (e->rank >= e->size)
        return dp_fail(DP_ERR_INVALID, "%s is %d but %s is %d: the rank must be below the size", rank, e->rank, size,
                       e->size);
    if (e->local_rank_known && e->local_rank >= e->size)
        return dp_fail(DP_ERR_INVALID, "%s is %d but %s is %d: a local rank must be below the job's size",
                       local_rank, e->local_rank, size, e->size);
    if (e->local_size > e->size)
        return dp_fail(DP_ERR_INVALID, "%s is %d but %s is %d: a host cannot hold more processes than the job",
                       local_size, e->local_size, size, e->size);
    if (local_size && e->local_size < 1)
        return dp_fail(DP_ERR_INVALID, "%s is %d: a host holding this process holds at least one", local_size,
                       e->local_size);
    if (e->local_rank_known && e->local_size && e->local_rank >= e->local_size)
        return dp_fail(DP_ERR_INVALID, "%s is %d but %s is %d: the local rank must be below the local size",
                       local_rank, e->local_rank, local_size, e->local_size);
    return DP_OK;
}

/* *found = 1 when the source is set and *e is filled; 0 when it is not set, or gives way (then
 * *gave_way names it, for the message when no later source is set either). */
static dp_status try_source(const env_source *s, dp_launch_env *e, int *found, const char **gave_way)
{
    *found = 0;
    const char *rank_text = getenv(s->rank);
    if (!rank_text) return DP_OK;
    const char *size_text = getenv(s->size);
    if (!size_text) {
        if (s->size_optional) {
            *gave_way = s->rank;
            return DP_OK;
        }
        return dp_fail(DP_ERR_INVALID, "%s is set but %s is not: a launcher sets both; set both or neither",
                       s->rank, s->size);
    }
    DP_CHECK(parse_count(s->rank, rank_text, DP_LAUNCH_MAX_PROCESSES - 1, &e->rank));
    DP_CHECK(parse_count(s->size, size_text, DP_LAUNCH_MAX_PROCESSES, &e->size));
    const char *lr = NULL, *ls = NULL;
    DP_CHECK(first_count(s->local_rank, DP_LAUNCH_MAX_PROCESSES - 1, &e->local_rank, &lr));
    DP_CHECK(first_count(s->local_size, DP_LAUNCH_MAX_PROCESSES, &e->local_size, &ls));
    e->local_rank_known = lr != NULL;
    if (!lr) e->local_rank = e->rank;
    if (!ls) e->local_size = 0;
    e->source = s->rank;
    DP_CHECK(check_place(e, s->rank, s->size, lr ? lr : "the local rank", ls));
    *found = 1;
    return DP_OK;
}

static dp_status try_sources(const env_source *s, size_t n, dp_launch_env *e, int *found, const char **gave_way)
{
    for (size_t i = 0; i < n; i++) {
        DP_CHECK(try_source(&s[i], e, found, gave_way));
        if (*found) return DP_OK;
    }
    return DP_OK;
}

static dp_status try_mpi(dp_launch_env *e, int *found)
{
    *found = 0;
    if (!mpi_query) return DP_OK;
    int rank = -1, size = 0, local_rank = -1, local_size = 0;
    dp_status st = mpi_query(&rank, &size, &local_rank, &local_size);
    if (st == DP_ERR_NOT_FOUND) return DP_OK;
    if (st != DP_OK) return dp_fail(st, "asking MPI for this process's rank: %s", dp_last_error());
    if (rank < 0 || local_size < 0)
        return dp_fail(DP_ERR_INVALID, "MPI gives rank %d and local size %d", rank, local_size);
    e->rank = rank, e->size = size, e->local_size = local_size;
    e->local_rank_known = local_rank >= 0;
    e->local_rank = local_rank >= 0 ? local_rank : rank;
    e->source = "MPI";
    DP_CHECK(check_place(e, "MPI's rank", "MPI's size", "MPI's local rank", local_size ? "MPI's local size" : NULL));
    *found = 1;
    return DP_OK;
}

static dp_status read_master(dp_launch_env *e)
{
    const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
    if (addr) {
        if (strlen(addr) >= sizeof e->master_addr)
            return dp_fail(DP_ERR_INVALID, "MASTER_ADDR has %zu characters: a host name has at most %zu",
                           strlen(addr), sizeof e->master_addr - 1);
        snprintf(e->master_addr, sizeof e->master_addr, "%s", addr);
    }
    if (port) {
        int p = 0;
        DP_CHECK(parse_count("MASTER_PORT", port, 65535, &p));
        if (p == 0) return dp_fail(DP_ERR_INVALID, "MASTER_PORT is 0: give the port process 0 listens on (1-65535)");
        snprintf(e->master_port, sizeof e->master_port, "%d", p);
    }
    return DP_OK;
}

dp_status dp_launch_env_resolve(dp_launch_env *e)
{
    memset(e, 0, sizeof *e);
    e->size = 1;
    e->source = "none";
    int found = 0;
    const char *gave_way = NULL;
    DP_CHECK(try_sources(sources_before_mpi, sizeof sources_before_mpi / sizeof *sources_before_mpi, e, &found,
                         &gave_way));
    if (!found) DP_CHECK(try_mpi(e, &found));
    if (!found)
        DP_CHECK(try_sources(sources_after_mpi, sizeof sources_after_mpi / sizeof *sources_after_mpi, e, &found,
                             &gave_way));
    if (!found && gave_way)
        return dp_fail(DP_ERR_INVALID,
                       "%s is set but no variable gives the job's size (PMI_SIZE, SLURM_NTASKS, WORLD_SIZE): set "
                       "DUALPIPE_RANK and DUALPIPE_WORLD_SIZE",
                       gave_way);
    if (!found) {
        memset(e, 0, sizeof *e);
        e->size = 1, e->source = "none";
    }
    return read_master(e);
}

void dp_launch_env_describe(const dp_launch_env *e, char *buf, size_t n)
{
    char local[64] = "";
    if (e->local_rank_known && e->local_size)
        snprintf(local, sizeof local, " (local %d of %d)", e->local_rank, e->local_size);
    else if (e->local_rank_known)
        snprintf(local, sizeof local, " (local %d)", e->local_rank);
    if (strcmp(e->source, "none") == 0)
        snprintf(buf, n, "process %d of %d%s: no launcher variable is set", e->rank, e->size, local);
    else
        snprintf(buf, n, "process %d of %d%s from %s", e->rank, e->size, local, e->source);
}

/* ----------------------------------------------------------------------------
 * device */

dp_status dp_launch_device(const dp_launch_env *e, int device_count, int *device, const char **how)
{
    *device = -1;
    if (how) *how = NULL;
    if (device_count < 1)
        return dp_fail(DP_ERR_NOT_FOUND, "there is no device to open (the driver counts %d)", device_count);
    const char *text = getenv("DUALPIPE_DEVICE");
    if (text) {
        int d = 0;
        DP_CHECK(parse_count("DUALPIPE_DEVICE", text, DP_LAUNCH_MAX_PROCESSES, &d));
        if (d >= device_count)
            return dp_fail(DP_ERR_INVALID, "DUALPIPE_DEVICE is %d but this host has %d device%s (0 to %d)", d,
                           device_count, device_count == 1 ? "" : "s", device_count - 1);
        *device = d;
        if (how) *how = "DUALPIPE_DEVICE";
        return DP_OK;
    }
    *device = (e ? e->local_rank : 0) % device_count;
    if (how) *how = "local rank modulo the device count";
    return DP_OK;
}
