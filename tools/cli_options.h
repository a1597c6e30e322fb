/* cli_options.h: the one command-line grammar of every command of the tools. A command's
 * options are a table; the parser (over getopt_long) and the --help text are both made from it,
 * so they cannot drift. Every command answers -h/--help and -V/--version. */
#ifndef DP_TOOLS_CLI_OPTIONS_H
#define DP_TOOLS_CLI_OPTIONS_H

#include <getopt.h>
#include <stdio.h>

/* Returned by cli_parse_start when the command should go on (any other value is an exit code). */
enum { CLI_GO_ON = -1 };
/* Ids of options without a short letter start here (a short option's id is its letter). */
enum { CLI_LONG_ONLY = 256 };

typedef struct {
    int id;               /* what cli_next returns for it: its letter, or CLI_LONG_ONLY + n; > 0 */
    char letter;          /* the short option ('p' for -p), or 0 */
    const char *name;     /* the long option without "--" */
    const char *value;    /* the value's name in --help ("N"); NULL: a flag, which takes no value */
    const char *help;     /* the description; each '\n' starts a line under the previous one.
                           * NULL (and no help_fn): left out of --help */
    void (*help_fn)(FILE *out, int column); /* prints the description instead, from column on */
    const char *deprecated; /* an old spelling kept working: the name to use instead; using it
                             * warns. Left out of --help; the man page says it is deprecated */
} cli_option;

typedef struct {
    const char *synopsis;       /* after the program's name on the Usage line: "[OPTION]..." */
    const char *about;          /* what the command does, printed before the options */
    const cli_option *options;  /* ends with an entry whose name is NULL; -h/--help and
                                 * -V/--version are added to every command */
    const char *epilogue;       /* printed after the options (notes, an example), or NULL */
} cli_spec;

enum { CLI_MAX_OPTIONS = 64 };

typedef struct {
    const char *value;  /* the value of the option cli_next returned; NULL for a flag */
    const char *name;   /* the option as messages name it: "--pp", whatever spelling was used */
    /* private: getopt_long's tables made from the spec */
    const cli_spec *spec;
    int argc;
    char **argv;
    char long_name[72];
    struct option longs[CLI_MAX_OPTIONS + 3];
    char shorts[3 * CLI_MAX_OPTIONS + 8];
} cli_parser;

/* Checks the whole command line first: an unknown option, an option without its value or a flag
 * given one is reported as such, with exit status 2; -h/--help anywhere prints the help on
 * standard output, and -V/--version the version, with exit status 0 (values are not checked:
 * that is the command's, as cli_next hands them over). Returns CLI_GO_ON or the exit status. */
int cli_parse_start(cli_parser *p, const cli_spec *spec, int argc, char **argv);
/* The next option's id, with p->value and p->name; 0 when there are no more. A deprecated
 * spelling warns here and returns its replacement's id. */
int cli_next(cli_parser *p);
/* After cli_next returned 0: the arguments that are not options (their number, and where). */
int cli_operands(const cli_parser *p, char ***operands);
/* Nonzero, having said so, when there are operands (for commands that take none). */
int cli_no_operands(const cli_parser *p);

/* The help made from the table: Usage, about, the options in the table's order, the epilogue. */
void cli_help(const cli_spec *spec, FILE *out);

/* The value given to option `id` on the command line (the last one), or NULL, read with the
 * spec's grammar while ignoring options it does not know; for a command that hands its command
 * line on to another according to one option (bench --driver). */
const char *cli_peek(const cli_spec *spec, int id, int argc, char **argv);

#endif
