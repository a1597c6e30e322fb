/* commands.c: the table of `dualpipe` subcommands. */
#include "tools/commands.h"

#include <stddef.h>

const dp_command dp_commands[] = {
    {"schedule", "generate, validate, simulate and draw a pipeline schedule", cmd_schedule},
    {NULL, NULL, NULL},
};
