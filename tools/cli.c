/* cli.c: messages and number parsing for the tools (see cli.h). */
#define _POSIX_C_SOURCE 200809L
#include "tools/cli.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *cli_program = "dualpipe";

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", cli_program);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: warning: ", cli_program);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_parse_int(const char *option, const char *text, long min, long max, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = text ? strtol(text, &end, 10) : 0;
    if (!text || !*text || *end || errno == ERANGE) {
        cli_error("%s expects a whole number, got '%s'", option, text ? text : "");
        return 1;
    }
    if (v < min || v > max) {
        cli_error("%s must be between %ld and %ld, got %ld", option, min, max, v);
        return 1;
    }
    *out = (int)v;
    return 0;
}

int cli_parse_kind(const char *option, const char *text, const char *const *names, int n, int *out)
{
    for (int i = 0; i < n; i++)
        if (text && strcmp(text, names[i]) == 0) {
            *out = i;
            return 0;
        }
    char list[256] = "";
    for (int i = 0; i < n; i++) {
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, "%s%s", i == 0 ? "" : i + 1 < n ? ", " : " or ", names[i]);
    }
    cli_error("%s: expected %s, got '%s'", option, list, text ? text : "");
    return 1;
}

int cli_parse_double(const char *option, const char *text, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = text ? strtod(text, &end) : 0;
    if (!text || !*text || *end || errno == ERANGE || !isfinite(v)) {
        cli_error("%s expects a finite number, got '%s'", option, text ? text : "");
        return 1;
    }
    *out = v;
    return 0;
}

int cli_parse_f32(const char *option, const char *text, double *out)
{
    double v;
    if (cli_parse_double(option, text, &v)) return 1;
    if (fabs(v) > FLT_MAX || (v != 0 && (float)v == 0)) {
        cli_error("%s is '%s', outside what a 32-bit float holds (magnitudes from %g to %g)", option, text,
                  (double)FLT_TRUE_MIN, (double)FLT_MAX);
        return 1;
    }
    *out = v;
    return 0;
}

int cli_stderr_is_tty(void) { return isatty(STDERR_FILENO); }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void cli_sort_doubles(double *v, size_t n) { qsort(v, n, sizeof *v, cmp_double); }
