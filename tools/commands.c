/* commands.c: the table of `dualpipe` subcommands. */
#include "tools/commands.h"

#include <stddef.h>

const dp_command dp_commands[] = {
    {"schedule", "generate, validate, simulate and draw a pipeline schedule", cmd_schedule},
    {"train", "train a pipelined model on rank threads and report where the time went", cmd_train},
    {"bench", "benchmark the CPU driver: GEMM rates and step times per schedule", cmd_bench},
    {"verify", "run the same steps on the CPU and on another driver (cuda) and compare every tensor", cmd_verify},
    {"bench-cuda", "time the CUDA driver: cuBLAS floor of the stage's GEMMs, pipelined steps per GPU", cmd_bench_cuda},
    {NULL, NULL, NULL},
};
