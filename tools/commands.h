/* commands.h: the subcommands of `dualpipe`. Each is one file (tools/cmd_NAME.c)
 * exporting cmd_NAME and one row in tools/commands.c. */
#ifndef DP_TOOLS_COMMANDS_H
#define DP_TOOLS_COMMANDS_H

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
} dp_command;

extern const dp_command dp_commands[]; /* ends with a NULL name */

int cmd_schedule(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_bench_cuda(int argc, char **argv);

#endif
