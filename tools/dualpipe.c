/* dualpipe.c: the `dualpipe` command: dispatches to a subcommand (schedule, ...). */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/commands.h"
#include "tools/log_stderr.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: dualpipe COMMAND [OPTIONS]\n"
            "Bidirectional pipeline parallelism (DualPipe) on CPU threads and GPUs.\n\n"
            "Commands:\n");
    for (const dp_command *c = dp_commands; c->name; c++)
        fprintf(out, "  %-10s %s\n", c->name, c->summary);
    fprintf(out,
            "\nRun 'dualpipe COMMAND --help' for a command's options; 'man dualpipe' for more.\n"
            "Options:\n"
            "  -h, --help     show this help\n"
            "  -V, --version  show the version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "-V") == 0 || strcmp(name, "--version") == 0) {
        printf("dualpipe %s\n", DP_VERSION);
        return CLI_EXIT_OK;
    }
    for (const dp_command *c = dp_commands; c->name; c++) {
        if (strcmp(c->name, name) == 0) {
            static char prog[64];
            snprintf(prog, sizeof prog, "dualpipe %s", c->name);
            cli_program = prog;
            log_stderr_install();
            return c->run(argc - 1, argv + 1);
        }
    }
    cli_error("unknown command '%s'; run 'dualpipe --help' for the list", name);
    return CLI_EXIT_USAGE;
}
