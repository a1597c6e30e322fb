/* commands.h: the subcommands of `dualpipe`. Each is one file (tools/cmd_NAME.c)
 * exporting cmd_NAME and one row in tools/commands.c. */
#ifndef DP_TOOLS_COMMANDS_H
#define DP_TOOLS_COMMANDS_H

#include <stdio.h>

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
} dp_command;

extern const dp_command dp_commands[]; /* ends with a NULL name */

/* The usage strings' list of schedules, from the generators' table (engine/schedule.c), so
 * that a new schedule shows in every --help: "dualpipe (default), dualpipev, ...", the default
 * marked, wrapped before column 96 with continuation lines indented to `column` (the caller has
 * printed that far), and a newline. */
void usage_schedules(FILE *out, int column, const char *default_name);
/* The same with dualpipe as the default: the description of every command's --schedule. */
void usage_schedule_names(FILE *out, int column);

int cmd_schedule(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_bench_cuda(int argc, char **argv);
int cmd_bench_link(int argc, char **argv);
int cmd_checkpoint(int argc, char **argv);

#endif
