/* commands.c: the table of `dualpipe` subcommands, and what their usage strings share. */
#include "tools/commands.h"

#include <stddef.h>
#include <string.h>

#include "engine/schedule.h"

const dp_command dp_commands[] = {
    {"schedule", "generate, validate, simulate and draw a pipeline schedule", cmd_schedule},
    {"train", "train a pipelined model on rank threads and report where the time went", cmd_train},
    {"bench", "benchmark the CPU driver: GEMM rates and step times per schedule", cmd_bench},
    {"verify", "run the same steps on the CPU and on another driver (cuda) and compare every tensor", cmd_verify},
    {"bench-cuda", "time the CUDA driver: cuBLAS floor of the stage's GEMMs, pipelined steps per GPU", cmd_bench_cuda},
    {"bench-link", "time a link in nccl-tests' manner: sendrecv, alltoallv, allreduce", cmd_bench_link},
    {"checkpoint", "check a checkpoint that train --save wrote and say what it holds", cmd_checkpoint},
    {NULL, NULL, NULL},
};

void usage_schedules(FILE *out, int column, const char *default_name)
{
    const int width = 96;
    int at = column;
    for (const dp_schedule_generator *g = dp_schedule_generators; g->name; g++) {
        const char *mark = default_name && strcmp(g->name, default_name) == 0 ? " (default)" : "";
        int last = !g[1].name, len = (int)(strlen(g->name) + strlen(mark)) + !last; /* and its comma */
        if (at > column && at + 2 + len > width) {
            fprintf(out, ",\n%*s", column, "");
            at = column;
        } else if (at > column) {
            fprintf(out, ", ");
            at += 2;
        }
        at += fprintf(out, "%s%s", g->name, mark);
    }
    fprintf(out, "\n");
}

void usage_schedule_names(FILE *out, int column) { usage_schedules(out, column, "dualpipe"); }
