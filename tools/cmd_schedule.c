/* cmd_schedule.c: `dualpipe schedule`: generate a pipeline schedule, validate it, simulate
 * it under a cost model (compute, pipeline latency, expert all-to-all) and write it as a
 * timeline, trace, JSON, SVG or Chrome trace. */
#define _DEFAULT_SOURCE /* TIOCGWINSZ: the terminal's width */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "engine/schedule.h"
#include "tools/cli.h"
#include "tools/cli_options.h"
#include "tools/commands.h"
#include "tools/output_file.h"

enum { O_COST = CLI_LONG_ONLY, O_WIDTH, O_NO_OVERLAP };

static const cli_option options[] = {
    {'s', 's', "schedule", "NAME", .help_fn = usage_schedule_names},
    {'p', 'p', "pp", "N", .help = "pipeline ranks (dualpipev: ranks, holding 2N stages); default 8"},
    {'c', 'c', "chunks", "M", .help = "micro-batches per step; default 20"},
    {O_COST, 0, "cost", "LIST", .help = "costs as F=1,B=2,W=1,FB=3,P2P=0,A2AF=0,A2AB=0 (the default); B is\n"
                                        "a full backward, an I costs B-W, FB an overlapped F&B pair's\n"
                                        "compute, P2P a transfer's latency, A2AF and A2AB the expert\n"
                                        "all-to-all of a stage's forward and input-backward"},
    {O_NO_OVERLAP, 0, "no-overlap", NULL, .help = "simulate pairs run one half after the other: FB+A2AF+A2AB,\n"
                                                  "every all-to-all exposed"},
    {'f', 'f', "format", "FMT", .help = "text (default), trace, json, svg, chrome; guessed from the\n"
                                        "extension of -o (.svg, .json, .trace) when not given"},
    {'o', 'o', "output", "FILE", .help = "write there instead of standard output"},
    {O_WIDTH, 0, "width", "N", .help = "text: columns of the timeline (default: $COLUMNS, else the\n"
                                       "terminal's width, else 80); wider timelines wrap in bands"},
    {'l', 'l', "list", NULL, .help = "list the schedules and exit"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "[OPTION]...",
    .about = "Generate a pipeline schedule, check it and simulate it under a cost model.",
    .options = options,
    .epilogue = "Example: dualpipe schedule --pp 8 --chunks 20 -o dualpipe.svg\n",
};

/* The page width of a text timeline: --width, else for standard output $COLUMNS, else the
 * terminal's width when it is a terminal, else DP_TEXT_DEFAULT_WIDTH. */
static int page_width(int asked, const char *path)
{
    if (asked) return asked;
    if (path && strcmp(path, "-") != 0) return DP_TEXT_DEFAULT_WIDTH;
    const char *env = getenv("COLUMNS");
    char *end;
    long n = env ? strtol(env, &end, 10) : 0;
    if (env && *env && !*end && n > 0) return n < DP_TEXT_MIN_WIDTH ? DP_TEXT_MIN_WIDTH : n > 100000 ? 100000 : (int)n;
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col < DP_TEXT_MIN_WIDTH ? DP_TEXT_MIN_WIDTH : ws.ws_col;
    return DP_TEXT_DEFAULT_WIDTH;
}

static int guess_format(const char *path, dp_schedule_format *fmt)
{
    const char *dot = path ? strrchr(path, '.') : NULL;
    if (!dot) return 0;
    if (strcmp(dot, ".svg") == 0) *fmt = DP_FORMAT_SVG;
    else if (strcmp(dot, ".json") == 0) *fmt = DP_FORMAT_JSON;
    else if (strcmp(dot, ".trace") == 0) *fmt = DP_FORMAT_TRACE;
    else return 0;
    return 1;
}

int cmd_schedule(int argc, char **argv)
{
    const char *name = "dualpipe", *format = NULL, *path = NULL;
    dp_schedule_params params = {.ranks = 8, .chunks = 20};
    dp_cost cost = dp_cost_default();
    int width = 0;
    cli_parser p;
    int opt = cli_parse_start(&p, &spec, argc, argv);
    if (opt != CLI_GO_ON) return opt;
    while ((opt = cli_next(&p))) {
        switch (opt) {
        case 's': name = p.value; break;
        case 'p':
            if (cli_parse_int("--pp", p.value, 1, 4096, &params.ranks)) return CLI_EXIT_USAGE;
            break;
        case 'c':
            if (cli_parse_int("--chunks", p.value, 1, 1 << 20, &params.chunks)) return CLI_EXIT_USAGE;
            break;
        case O_COST:
            if (dp_cost_parse(p.value, &cost) != DP_OK) {
                cli_error("--cost: %s", dp_last_error());
                return CLI_EXIT_USAGE;
            }
            break;
        case O_NO_OVERLAP: cost.no_overlap = 1; break;
        case O_WIDTH:
            if (cli_parse_int("--width", p.value, DP_TEXT_MIN_WIDTH, 100000, &width)) return CLI_EXIT_USAGE;
            break;
        case 'f': format = p.value; break;
        case 'o': path = p.value; break;
        case 'l':
            for (const dp_schedule_generator *g = dp_schedule_generators; g->name; g++)
                printf("%-10s %s\n", g->name, g->summary);
            return CLI_EXIT_OK;
        }
    }
    if (cli_no_operands(&p)) return CLI_EXIT_USAGE;
    const named_path output = {"-o", path};
    int checked = output_files_check(&output, 1, NULL, 0);
    if (checked) return checked;
    dp_schedule_format fmt = DP_FORMAT_TEXT;
    if (format) {
        if (dp_schedule_format_parse(format, &fmt) != DP_OK) {
            cli_error("--format: %s", dp_last_error());
            return CLI_EXIT_USAGE;
        }
    } else {
        guess_format(path, &fmt);
    }

    dp_schedule *s = NULL;
    if (dp_schedule_generate(name, &params, &s) != DP_OK) {
        cli_error("%s", dp_last_error());
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_FAIL;
    dp_schedule_report rep = {0};
    dp_simulation sim = {0};
    if (dp_schedule_validate(s, &rep) != DP_OK) {
        cli_error("the generated schedule is invalid (a bug, please report it): %s", dp_last_error());
        goto out;
    }
    if (dp_schedule_simulate(s, &cost, &sim) != DP_OK) {
        cli_error("%s", dp_last_error());
        goto out;
    }
    output_file o;
    if (output_file_open(&o, path)) goto out;
    dp_status st = fmt == DP_FORMAT_TEXT
                       ? dp_schedule_write_text(o.fp, s, &cost, &sim, &rep, page_width(width, path))
                       : dp_schedule_write(o.fp, fmt, s, &cost, &sim, &rep);
    if (st != DP_OK) {
        cli_error("%s", dp_last_error());
        output_file_abort(&o);
        goto out;
    }
    if (output_file_commit(&o)) goto out;
    rc = CLI_EXIT_OK;
out:
    dp_simulation_free(&sim);
    dp_schedule_report_free(&rep);
    dp_schedule_free(s);
    return rc;
}
