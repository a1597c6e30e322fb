/* cli_options.c: the tools' command-line grammar (see cli_options.h): a layer over getopt_long
 * that builds its tables from a command's option table, checks the whole line before the
 * command sees any of it, names each kind of mistake, and writes --help from the same table. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include "tools/cli_options.h"

#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"

/* getopt_long returns this plus the entry's index for a long option, apart from any letter */
enum { LONG_BASE = 0x10000 };

static const cli_option builtin[] = {
    {.id = 'h', .letter = 'h', .name = "help", .help = "show this help and exit"},
    {.id = 'V', .letter = 'V', .name = "version", .help = "show the version and exit"},
};
enum { NUM_BUILTIN = sizeof builtin / sizeof *builtin };

static int count_options(const cli_spec *spec)
{
    int n = 0;
    while (spec->options[n].name) n++;
    return n;
}

/* The i-th option of the command line's grammar: the spec's, then the built-in ones. */
static const cli_option *option_at(const cli_spec *spec, int i)
{
    int n = count_options(spec);
    return i < n ? &spec->options[i] : i < n + NUM_BUILTIN ? &builtin[i - n] : NULL;
}

static const cli_option *by_letter(const cli_spec *spec, int letter)
{
    for (int i = 0; option_at(spec, i); i++)
        if (option_at(spec, i)->letter && option_at(spec, i)->letter == letter) return option_at(spec, i);
    return NULL;
}

/* What getopt_long returned for an option (a letter or LONG_BASE + index) as its entry. */
static const cli_option *by_return(const cli_spec *spec, int c)
{
    return c >= LONG_BASE ? option_at(spec, c - LONG_BASE) : by_letter(spec, c);
}

/* getopt_long's long options and option string from the spec; restarts getopt's scan. */
static void build_tables(cli_parser *p, const cli_spec *spec, int argc, char **argv)
{
    memset(p, 0, sizeof *p);
    p->spec = spec, p->argc = argc, p->argv = argv;
    char *s = p->shorts;
    *s++ = ':'; /* a missing value returns ':', told apart from an unknown option */
    int i = 0;
    for (const cli_option *o; (o = option_at(spec, i)) && i < CLI_MAX_OPTIONS + NUM_BUILTIN; i++) {
        p->longs[i] = (struct option){o->name, o->value ? required_argument : no_argument, NULL, LONG_BASE + i};
        if (o->letter) {
            *s++ = o->letter;
            if (o->value) *s++ = ':';
        }
    }
    *s = 0;
    if (option_at(spec, i)) {
        /* a programming error, found by the first run of the command's tests */
        cli_error("internal: more than %d options; raise CLI_MAX_OPTIONS", CLI_MAX_OPTIONS);
        abort();
    }
    opterr = 0;
    optind = 0; /* 0, not 1: glibc and musl then start a fresh scan */
}

/* "--name" of an entry, in p's buffer. */
static const char *long_name(cli_parser *p, const cli_option *o)
{
    snprintf(p->long_name, sizeof p->long_name, "--%s", o->name);
    return p->long_name;
}

/* What is wrong with argv[optind - 1], getopt_long having returned '?' or ':'. */
static int report(cli_parser *p, int c)
{
    const cli_option *o = optopt ? by_return(p->spec, optopt) : NULL;
    const char *word = optind > 0 && optind <= p->argc ? p->argv[optind - 1] : "";
    if (c == ':' && o) {
        char letter[3] = {'-', o->letter, 0};
        const char *as = strncmp(word, "--", 2) != 0 && o->letter ? letter : long_name(p, o);
        cli_error("option '%s' needs a value: %s %s; see --help", as, long_name(p, o), o->value);
        return CLI_EXIT_USAGE;
    }
    if (o && optopt >= LONG_BASE) { /* a flag given a value */
        cli_error("option '%s' takes no value, got '%s'; see --help", long_name(p, o), word);
        return CLI_EXIT_USAGE;
    }
    if (optopt) {
        cli_error("unknown option '-%c'; see --help", optopt);
        return CLI_EXIT_USAGE;
    }
    /* a long option that is no option's name or the start of several */
    size_t len = strcspn(word + 2, "=");
    char list[256] = "";
    int matches = 0;
    for (int i = 0; option_at(p->spec, i); i++) {
        const cli_option *m = option_at(p->spec, i);
        if (strncmp(m->name, word + 2, len) != 0) continue;
        size_t at = strlen(list);
        snprintf(list + at, sizeof list - at, "%s--%s", matches++ ? ", " : "", m->name);
    }
    if (strncmp(word, "--", 2) == 0 && len > 0 && matches > 1)
        cli_error("option '%.*s' is ambiguous: %s; see --help", (int)len + 2, word, list);
    else cli_error("unknown option '%s'; see --help", word);
    return CLI_EXIT_USAGE;
}

static void print_version(void)
{
    /* "dualpipe 0.1.0" for dualpipe's commands, "eplb (dualpipe) 0.1.0" for another tool */
    size_t n = strcspn(cli_program, " ");
    if (strncmp(cli_program, "dualpipe", n) == 0 && n == 8) printf("dualpipe %s\n", DP_VERSION);
    else printf("%.*s (dualpipe) %s\n", (int)n, cli_program, DP_VERSION);
}

int cli_parse_start(cli_parser *p, const cli_spec *spec, int argc, char **argv)
{
    build_tables(p, spec, argc, argv);
    int c, help = 0, version = 0;
    while ((c = getopt_long(argc, argv, p->shorts, p->longs, NULL)) != -1) {
        if (c == '?' || c == ':') return report(p, c);
        const cli_option *o = by_return(spec, c);
        if (o == &builtin[0]) help = 1;
        if (o == &builtin[1]) version = 1;
    }
    if (help || version) {
        if (help) cli_help(spec, stdout);
        else print_version();
        return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
    }
    optind = 0;
    return CLI_GO_ON;
}

int cli_next(cli_parser *p)
{
    int c = getopt_long(p->argc, p->argv, p->shorts, p->longs, NULL);
    if (c == -1) return 0;
    const cli_option *o = by_return(p->spec, c); /* never NULL: cli_parse_start saw every one */
    p->value = o->value ? optarg : NULL;
    if (o->deprecated) {
        cli_warn("--%s is deprecated: use --%s", o->name, o->deprecated);
        const char *now = o->deprecated;
        for (int i = 0; option_at(p->spec, i); i++)
            if (strcmp(option_at(p->spec, i)->name, now) == 0) o = option_at(p->spec, i);
    }
    p->name = long_name(p, o);
    return o->id;
}

int cli_operands(const cli_parser *p, char ***operands)
{
    *operands = p->argv + optind;
    return optind < p->argc ? p->argc - optind : 0;
}

int cli_no_operands(const cli_parser *p)
{
    char **rest;
    if (!cli_operands(p, &rest)) return 0;
    cli_error("unexpected argument '%s': this command takes options only; see --help", rest[0]);
    return 1;
}

const char *cli_peek(const cli_spec *spec, int id, int argc, char **argv)
{
    cli_parser p;
    build_tables(&p, spec, argc, argv);
    const char *value = NULL;
    int c;
    while ((c = getopt_long(argc, argv, p.shorts, p.longs, NULL)) != -1) {
        const cli_option *o = c == '?' || c == ':' ? NULL : by_return(spec, c);
        if (o && o->id == id) value = optarg;
    }
    optind = 0;
    return value;
}

/* ----------------------------------------------------------------------------
 * --help */

/* "  -p, --pp N" or "      --hidden H": an option's left column; its width. */
static int left_column(FILE *out, const cli_option *o)
{
    char buf[96];
    int n = snprintf(buf, sizeof buf, "  %s%c%s--%s%s%s", o->letter ? "-" : " ", o->letter ? o->letter : ' ',
                     o->letter ? ", " : "  ", o->name, o->value ? " " : "", o->value ? o->value : "");
    if (out) fputs(buf, out);
    return n;
}

static int shown(const cli_option *o) { return (o->help || o->help_fn) && !o->deprecated; }

void cli_help(const cli_spec *spec, FILE *out)
{
    /* descriptions start two columns after the widest option, unless it is very wide */
    int column = 0;
    for (int i = 0; option_at(spec, i); i++) {
        const cli_option *o = option_at(spec, i);
        int w = shown(o) ? left_column(NULL, o) + 2 : 0;
        if (w <= 30 && w > column) column = w;
    }
    fprintf(out, "Usage: %s %s\n%s\n\nOptions:\n", cli_program, spec->synopsis, spec->about);
    for (int i = 0; option_at(spec, i); i++) {
        const cli_option *o = option_at(spec, i);
        if (!shown(o)) continue;
        int w = left_column(out, o);
        if (w + 1 > column) fprintf(out, "\n%*s", column, "");
        else fprintf(out, "%*s", column - w, "");
        if (o->help_fn) {
            o->help_fn(out, column);
            continue;
        }
        for (const char *line = o->help; *line;) {
            size_t n = strcspn(line, "\n");
            fprintf(out, "%.*s\n", (int)n, line);
            line += n;
            if (*line == '\n' && *++line) fprintf(out, "%*s", column, "");
        }
    }
    if (spec->epilogue) fprintf(out, "\n%s", spec->epilogue);
}
