/* cli.h: what the command-line tools share: messages and exit codes, and number parsing
 * with clear errors. Output files are tools/output_file.h's. */
#ifndef DP_TOOLS_CLI_H
#define DP_TOOLS_CLI_H

#include <stddef.h>
#include <stdio.h>

/* Exit codes: 0 success, 1 the run failed, 2 bad usage or bad input. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2 };

extern const char *cli_program; /* "dualpipe schedule", used as the message prefix */

void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parse a whole decimal integer / finite number; on failure print which option was
 * wrong and return nonzero. */
int cli_parse_int(const char *option, const char *text, long min, long max, int *out);
int cli_parse_double(const char *option, const char *text, double *out);
/* The same for a value the engine keeps as a float (a learning rate): also refused when the
 * float would be infinite or round to 0. */
int cli_parse_f32(const char *option, const char *text, double *out);
/* Which of n names `text` is (its index into *out); otherwise an error naming the option and
 * the names it takes ("--loss: expected mse or xent, got 'l1'"), and nonzero. */
int cli_parse_kind(const char *option, const char *text, const char *const *names, int n, int *out);

/* Sorts n doubles in increasing order (for medians of timings). */
void cli_sort_doubles(double *v, size_t n);

/* Whether stderr is a terminal (for progress indicators). */
int cli_stderr_is_tty(void);

#endif
