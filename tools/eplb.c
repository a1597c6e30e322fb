/* eplb.c: the eplb command: reads expert loads, plans replicas and their GPUs with the
 * balancer library, writes the plan as JSON, a summary for people, and optionally an SVG of
 * one layer and the migration from the plan running now. */
#define _POSIX_C_SOURCE 200809L
#include "config.h"
#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/cli_options.h"
#include "tools/eplb_input.h"
#include "tools/eplb_output.h"
#include "tools/output_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

typedef struct {
    const char *loads_path, *output, *current, *svg;
    int layer, brief, quiet;
    double keep_within;
    eplb_config cfg;
} options;

enum { O_GROUPS = CLI_LONG_ONLY, O_NODES, O_CROSS_NODES, O_CURRENT, O_KEEP_WITHIN, O_SVG, O_LAYER, O_BRIEF };

static const cli_option option_table[] = {
    {'r', 'r', "replicas", "R", .help = "physical expert slots per layer (a multiple of G, >= experts)"},
    {'g', 'g', "gpus", "G", .help = "GPUs in the expert-parallel group"},
    {O_GROUPS, 0, "groups", "N", .help = "expert groups (default 1; experts must divide evenly)"},
    {O_NODES, 0, "nodes", "N", .help = "server nodes (default 1; G must be a multiple). Groups are\n"
                                       "kept on nodes when groups % nodes == 0 and nodes > 1"},
    {'p', 'p', "policy", "NAME", .help = "balanced (default): duplicate-free, never less balanced than\n"
                                         "deepseek; deepseek: deepseek-ai/EPLB exactly"},
    {O_CROSS_NODES, 0, "cross-nodes", NULL, .help = "balanced, groups on nodes: let redundant replicas leave\n"
                                                    "their group's node (more inter-node traffic, better balance)"},
    {'o', 'o', "output", "FILE", .help = "write the plan JSON to FILE (- for standard output; the\n"
                                         "summary then goes to standard error)"},
    {O_CURRENT, 0, "current", "PLAN", .help = "the plan running now (JSON with phy2log): start from it, keep\n"
                                              "experts in place and report the expert weights to move"},
    {O_KEEP_WITHIN, 0, "keep-within", "D", .help = "with --current: keep (an improved) current placement when its\n"
                                                   "balancedness is within D of a fresh plan's (default 0.0005)"},
    {O_SVG, 0, "svg", "FILE", .help = "draw per-GPU load before/after of one layer (see --layer)"},
    {O_LAYER, 0, "layer", "L", .help = "the layer for --svg (default: the least balanced before)"},
    {O_BRIEF, 0, "brief", NULL, .help = "summary without the per-layer table"},
    {'q', 'q', "quiet", NULL, .help = "no summary"},
    {0},
};

static const cli_spec spec = {
    .synopsis = "--replicas R --gpus G [OPTION]... [LOADS]",
    .about = "Plan expert replicas and their GPUs for every MoE layer from measured expert loads.\n"
             "\n"
             "LOADS is a file (or - / nothing for standard input) holding either JSON\n"
             "{\"logical_count\": [[loads of layer 0], ...]} or text with one layer per line,\n"
             "loads separated by commas or spaces ('#' starts a comment).",
    .options = option_table,
    .epilogue = "Exit status: 0 success, 1 failure, 2 bad usage or bad input (nothing written).\n",
};

/* CLI_GO_ON, or the exit status (after --help, --version or an error). */
static int parse_options(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->cfg = eplb_config_default(0, 0);
    o->layer = -1;
    o->keep_within = 0.0005;
    int have_r = 0, have_g = 0, c;
    const long big = 1 << 20;
    cli_parser p;
    if ((c = cli_parse_start(&p, &spec, argc, argv)) != CLI_GO_ON) return c;
    while ((c = cli_next(&p))) {
        const char *value = p.value;
        switch (c) {
        case 'r':
            if (cli_parse_int("--replicas", value, 1, big, &o->cfg.num_replicas)) return 2;
            have_r = 1;
            break;
        case 'g':
            if (cli_parse_int("--gpus", value, 1, big, &o->cfg.num_gpus)) return 2;
            have_g = 1;
            break;
        case O_GROUPS:
            if (cli_parse_int("--groups", value, 1, big, &o->cfg.num_groups)) return 2;
            break;
        case O_NODES:
            if (cli_parse_int("--nodes", value, 1, big, &o->cfg.num_nodes)) return 2;
            break;
        case 'p':
            if (strcmp(value, "balanced") == 0) o->cfg.policy = EPLB_POLICY_BALANCED;
            else if (strcmp(value, "deepseek") == 0) o->cfg.policy = EPLB_POLICY_DEEPSEEK;
            else {
                cli_error("--policy must be 'balanced' or 'deepseek', got '%s'", value);
                return 2;
            }
            break;
        case O_CROSS_NODES: o->cfg.cross_nodes = 1; break;
        case 'o': o->output = value; break;
        case O_CURRENT: o->current = value; break;
        case O_SVG: o->svg = value; break;
        case O_LAYER:
            if (cli_parse_int("--layer", value, 0, big, &o->layer)) return 2;
            break;
        case O_KEEP_WITHIN:
            if (cli_parse_double("--keep-within", value, &o->keep_within)) return 2;
            if (o->keep_within < 0 || o->keep_within > 1) {
                cli_error("--keep-within must be between 0 and 1, got %g", o->keep_within);
                return 2;
            }
            break;
        case O_BRIEF: o->brief = 1; break;
        case 'q': o->quiet = 1; break;
        }
    }
    if (!have_r || !have_g) {
        cli_error("--replicas and --gpus are required (see --help)");
        return 2;
    }
    char **operands;
    int n = cli_operands(&p, &operands);
    if (n > 0) o->loads_path = operands[0];
    if (n > 1) {
        cli_error("one loads file at most, got also '%s'", operands[1]);
        return 2;
    }
    return CLI_GO_ON;
}

/* The layer drawn by default: the least balanced one before balancing. */
static int worst_layer(const double *w, const eplb_plan *plan, const eplb_config *cfg)
{
    int worst = 0;
    double lowest = 2;
    for (int l = 0; l < plan->num_layers; l++) {
        eplb_layer_stats st;
        if (eplb_layer_evaluate(w + (size_t)l * plan->num_experts, plan, l, cfg, &st) != EPLB_OK)
            continue;
        if (st.total > 0 && st.before < lowest) {
            lowest = st.before;
            worst = l;
        }
    }
    return worst;
}

static int summarise(FILE *fp, const options *o, const eplb_loads *in, const eplb_plan *plan,
                     double ms, int migrating, long moved, const long *traffic, int kept)
{
    const eplb_config *c = &o->cfg;
    int hier = eplb_config_hierarchical(c);
    fprintf(fp, "eplb: %d layers x %d experts -> %d replicas on %d GPUs (%d nodes, %d groups), "
                "policy %s, %s\n",
            in->layers, in->experts, c->num_replicas, c->num_gpus, c->num_nodes, c->num_groups,
            c->policy == EPLB_POLICY_DEEPSEEK ? "deepseek" : "balanced",
            !hier ? "global packing"
            : (c->policy == EPLB_POLICY_BALANCED && c->cross_nodes)
                ? "groups on nodes, redundant replicas may cross nodes"
                : "groups kept on nodes");
    fprintf(fp, "planned in %.3f ms\n", ms);
    if (!o->brief)
        fprintf(fp, "%5s %8s %8s %8s %6s\n", "layer", "before", "after", "best", "dups");
    double sb = 0, sa = 0, sp = 0;
    long dups = 0;
    int loaded = 0;
    for (int l = 0; l < plan->num_layers; l++) {
        eplb_layer_stats st;
        if (eplb_layer_evaluate(in->w + (size_t)l * in->experts, plan, l, c, &st) != EPLB_OK) {
            cli_error("%s", eplb_last_error());
            return 1;
        }
        dups += st.duplicates;
        if (st.total <= 0) {
            if (!o->brief) fprintf(fp, "%5d %8s %8s %8s %6d   (no load)\n", l, "-", "-", "-",
                                   st.duplicates);
            continue;
        }
        loaded++;
        sb += st.before;
        sa += st.balancedness;
        sp += st.best_possible;
        if (!o->brief)
            fprintf(fp, "%5d %8.5f %8.5f %8.5f %6d\n", l, st.before, st.balancedness,
                    st.best_possible, st.duplicates);
    }
    if (loaded)
        fprintf(fp, "balancedness (mean GPU load / max, mean over %d loaded layers): before %.5f, "
                    "after %.5f, best possible %.5f (from the lower bound)\n",
                loaded, sb / loaded, sa / loaded, sp / loaded);
    else
        fprintf(fp, "no layer carries any load\n");
    fprintf(fp, "same-GPU duplicates: %ld\n", dups);
    if (plan->layers_cut_short)
        fprintf(fp, "refinement stopped at its work limit on %d of %d layers: those plans are "
                    "valid and at least as balanced as deepseek's, but more exchanges might "
                    "balance them better\n",
                plan->layers_cut_short, plan->num_layers);
    if (migrating) {
        const int G = c->num_gpus, per_node = G / c->num_nodes;
        long cross = 0;
        for (int s = 0; s < G; s++)
            for (int d = 0; d < G; d++)
                if (s / per_node != d / per_node) cross += traffic[(size_t)s * G + d];
        fprintf(fp, "migration: %d of %d layers improved the current placement (within %g of a "
                    "fresh plan), the others were planned afresh\n",
                kept, plan->num_layers, o->keep_within);
        fprintf(fp, "migration: %ld of %ld slots change expert (%.1f%%), %ld of those copies "
                    "cross nodes\n",
                moved, (long)plan->num_layers * plan->num_replicas,
                100.0 * moved / ((double)plan->num_layers * plan->num_replicas), cross);
        if (!o->brief && moved) {
            fprintf(fp, "copies per GPU (in / out):");
            for (int g = 0; g < G; g++) {
                long in_c = 0, out_c = 0;
                for (int k = 0; k < G; k++) {
                    in_c += traffic[(size_t)k * G + g];
                    out_c += traffic[(size_t)g * G + k];
                }
                fprintf(fp, "%s %d:%ld/%ld", g % 8 ? "" : "\n ", g, in_c, out_c);
            }
            fputc('\n', fp);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    cli_program = "eplb";
    options o;
    int rc = parse_options(argc, argv, &o);
    if (rc != CLI_GO_ON) return rc;
    const named_path outputs[] = {{"-o", o.output}, {"--svg", o.svg}};
    const named_path inputs[] = {{"LOADS", o.loads_path}, {"--current", o.current}};
    if ((rc = output_files_check(outputs, 2, inputs, 2)) != 0) return rc;

    eplb_loads in;
    if (eplb_read_loads(o.loads_path, &in)) return CLI_EXIT_USAGE;
    const char *file = o.loads_path && strcmp(o.loads_path, "-") ? o.loads_path : "<stdin>";
    if (eplb_config_check(&o.cfg, in.experts) != EPLB_OK) {
        cli_error("%s:%d: %s", file, in.first_line, eplb_last_error());
        eplb_loads_free(&in);
        return CLI_EXIT_USAGE;
    }
    if (o.layer >= in.layers) {
        cli_error("--layer %d: the input has layers 0..%d", o.layer, in.layers - 1);
        eplb_loads_free(&in);
        return CLI_EXIT_USAGE;
    }

    eplb_plan current = {0}, plan = {0};
    long moved = 0, *traffic = NULL;
    rc = CLI_EXIT_USAGE;
    if (o.current) {
        int L = 0, R = 0, *p2l = NULL;
        if (eplb_read_phy2log(o.current, &L, &R, &p2l)) goto done;
        if (L != in.layers || R != o.cfg.num_replicas) {
            cli_error("%s: the current plan has %d layers x %d replicas, the new one %d x %d: "
                      "they must match", o.current, L, R, in.layers, o.cfg.num_replicas);
            free(p2l);
            goto done;
        }
        eplb_status st = eplb_plan_from_phy2log(p2l, L, in.experts, R, o.cfg.num_gpus, &current);
        free(p2l);
        if (st != EPLB_OK) {
            cli_error("%s: %s", o.current, eplb_last_error());
            goto done;
        }
    }

    rc = CLI_EXIT_FAIL;
    int kept = 0;
    double t0 = now_ms();
    if (o.current) {
        traffic = calloc((size_t)o.cfg.num_gpus * o.cfg.num_gpus, sizeof *traffic);
        if (!traffic) {
            cli_error("out of memory");
            goto done;
        }
        if (eplb_rebalance_from(in.w, in.layers, in.experts, &o.cfg, &current, o.keep_within,
                                &plan, &moved, traffic, &kept) != EPLB_OK) {
            cli_error("%s", eplb_last_error());
            goto done;
        }
    } else if (eplb_rebalance(in.w, in.layers, in.experts, &o.cfg, &plan) != EPLB_OK) {
        cli_error("%s", eplb_last_error());
        goto done;
    }
    double ms = now_ms() - t0;

    output_file out_plan = {0}, out_svg = {0};
    int plan_to_stdout = o.output && strcmp(o.output, "-") == 0;
    if (o.output && output_file_open(&out_plan, o.output)) goto done;
    if (o.svg && output_file_open(&out_svg, o.svg)) {
        if (o.output) output_file_abort(&out_plan);
        goto done;
    }
    if (o.output) eplb_write_plan_json(out_plan.fp, &plan, &o.cfg);
    if (o.svg) {
        int layer = o.layer >= 0 ? o.layer : worst_layer(in.w, &plan, &o.cfg);
        eplb_write_svg(out_svg.fp, in.w + (size_t)layer * in.experts, &plan, &o.cfg, layer);
    }
    int bad = 0;
    if (!o.quiet)
        bad = summarise(plan_to_stdout ? stderr : stdout, &o, &in, &plan, ms, o.current != NULL,
                        moved, traffic, kept);
    if (bad) {
        if (o.output) output_file_abort(&out_plan);
        if (o.svg) output_file_abort(&out_svg);
        goto done;
    }
    if (o.output && output_file_commit(&out_plan)) {
        if (o.svg) output_file_abort(&out_svg);
        goto done;
    }
    if (o.svg && output_file_commit(&out_svg)) goto done;
    rc = CLI_EXIT_OK;
done:
    free(traffic);
    eplb_plan_free(&plan);
    eplb_plan_free(&current);
    eplb_loads_free(&in);
    return rc;
}
