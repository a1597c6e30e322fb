/* moe_plan.c: `--eplb-plan FILE` read with the eplb tool's JSON reader and checked rule by rule
 * against the model before anything runs (see moe_plan.h). The replicas' order is the plan's
 * log2phy when it has one (the order vLLM picks replicas in), else slot order. */
#include "tools/moe_plan.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/schedule.h"
#include "tools/cli.h"
#include "tools/eplb_input.h"
#include "tools/eplb_json.h"

/* The whole file, NUL-terminated; NULL having said why not. */
static char *read_text(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        cli_error("--eplb-plan %s: %s", path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(sb.st_mode)) {
        cli_error("--eplb-plan %s is a directory: give the plan JSON file that `eplb -o FILE` writes", path);
        return NULL;
    }
    /* the eplb tool's own reader: bounded, text only */
    return eplb_slurp(path, NULL);
}

/* A member that must be a whole number in lo..hi; 0, or nonzero having said why not. */
static int whole_member(const char *path, const json_value *root, const char *key, int lo, int hi, int *out)
{
    const json_value *v = json_member(root, key);
    if (!v || v->kind != JSON_NUMBER || v->number != floor(v->number) || v->number < lo || v->number > hi) {
        cli_error("%s:%d: \"%s\" must be a whole number from %d to %d (the eplb tool writes it)", path,
                  v ? v->line : root->line, key, lo, hi);
        return 1;
    }
    *out = (int)v->number;
    return 0;
}

/* The model's MoE layers, counted over every stage the schedule makes (-1: the schedule is not
 * one, which the runtime reports). */
static int moe_layers(const dp_runtime_config *c)
{
    dp_schedule_params sp = {.ranks = c->ranks, .chunks = c->chunks};
    dp_schedule *s;
    if (dp_schedule_generate(c->schedule, &sp, &s) != DP_OK) return -1;
    dp_model_config m = c->model;
    int layers = s->num_stages * (m.layers_per_stage > 0 ? m.layers_per_stage : 1), n = 0;
    dp_schedule_free(s);
    for (int i = 0; i < layers; i++) n += dp_model_layer_kind(&m, i) == DP_BLOCK_MOE;
    return n;
}

/* log2phy[l] and logcnt[l], when the plan has them, must list each expert's slots: replica r of
 * expert e is slot log2phy[l][e][r], r < logcnt[l][e] (the slots phy2log gives e), the rest -1.
 * Fills replica[p] with slot p's replica rank (slot order without log2phy). */
static int replica_order(const char *path, const json_value *root, int l, int E, int P, const int32_t *row,
                         int32_t *replica)
{
    int *count = calloc((size_t)E, sizeof *count);
    if (!count) {
        cli_error("out of memory reading %s", path);
        return 1;
    }
    for (int p = 0; p < P; p++) replica[p] = count[row[p]]++;
    const json_value *l2p = json_member(root, "log2phy"), *cnt = json_member(root, "logcnt");
    int rc = 0;
    if (cnt) {
        const json_value *c = cnt->kind == JSON_ARRAY && l < cnt->count ? &cnt->items[l] : NULL;
        if (!c || c->kind != JSON_ARRAY || c->count != E) {
            cli_error("%s:%d: logcnt[%d] must be an array of %d counts, one per expert", path, c ? c->line : cnt->line,
                      l, E);
            rc = 1;
        }
        for (int e = 0; !rc && e < E; e++)
            if (c->items[e].kind != JSON_NUMBER || c->items[e].number != count[e]) {
                cli_error("%s:%d: logcnt[%d][%d] must be %d, the slots phy2log[%d] gives expert %d", path,
                          c->items[e].line, l, e, count[e], l, e);
                rc = 1;
            }
    }
    if (!rc && l2p) {
        const json_value *x = l2p->kind == JSON_ARRAY && l < l2p->count ? &l2p->items[l] : NULL;
        if (!x || x->kind != JSON_ARRAY || x->count != E) {
            cli_error("%s:%d: log2phy[%d] must be an array of %d lists of slots, one per expert", path,
                      x ? x->line : l2p->line, l, E);
            rc = 1;
        }
        for (int p = 0; !rc && p < P; p++) replica[p] = -1;
        for (int e = 0; !rc && e < E; e++) {
            const json_value *slots = &x->items[e];
            if (slots->kind != JSON_ARRAY || slots->count < count[e]) {
                cli_error("%s:%d: log2phy[%d][%d] must list the %d slot(s) of expert %d", path, slots->line, l, e,
                          count[e], e);
                rc = 1;
                break;
            }
            for (int r = 0; !rc && r < slots->count; r++) {
                const json_value *v = &slots->items[r];
                double want_lo = r < count[e] ? 0 : -1, want_hi = r < count[e] ? P - 1 : -1;
                int ok = v->kind == JSON_NUMBER && v->number == floor(v->number) && v->number >= want_lo &&
                         v->number <= want_hi;
                int p = ok && r < count[e] ? (int)v->number : -1;
                if (ok && p >= 0 && (row[p] != e || replica[p] >= 0)) ok = 0;
                if (!ok) {
                    if (r < count[e])
                        cli_error("%s:%d: log2phy[%d][%d][%d] must be a slot of expert %d not listed before it "
                                  "(phy2log[%d] gives it %d)", path, v->line, l, e, r, e, l, count[e]);
                    else
                        cli_error("%s:%d: log2phy[%d][%d][%d] must be -1: expert %d has %d replica(s)", path, v->line,
                                  l, e, r, e, count[e]);
                    rc = 1;
                } else if (p >= 0) {
                    replica[p] = r;
                }
            }
        }
    }
    free(count);
    return rc;
}

static int check_plan(const char *path, const json_value *root, dp_runtime_config *c, int32_t **storage)
{
    dp_moe_config *m = &c->model.moe;
    int E = m->experts, P, G, ep = c->ep > 1 ? c->ep : 1;
    if (root->kind != JSON_OBJECT) {
        cli_error("%s:%d: a plan is a JSON object with \"num_replicas\", \"num_gpus\" and \"phy2log\", as the eplb "
                  "tool writes it", path, root->line);
        return 1;
    }
    if (whole_member(path, root, "num_replicas", 1, 1 << 20, &P) || whole_member(path, root, "num_gpus", 1, 1 << 16, &G))
        return 1;
    if (P % G) {
        cli_error("%s: num_replicas %d is not a multiple of num_gpus %d: each rank holds num_replicas / num_gpus "
                  "slots", path, P, G);
        return 1;
    }
    if (ep > 1 && G != ep) {
        cli_error("%s: the plan is for num_gpus %d expert-parallel ranks, but --ep is %d: make it with eplb -g %d "
                  "(with --ep 1 any num_gpus runs, one rank holding every slot)", path, G, ep, ep);
        return 1;
    }
    const json_value *rows = json_member(root, "phy2log");
    if (!rows || rows->kind != JSON_ARRAY || rows->count < 1) {
        cli_error("%s:%d: no \"phy2log\" array of layers (each layer's expert on each physical slot)", path,
                  rows ? rows->line : root->line);
        return 1;
    }
    int want = moe_layers(c), L = rows->count;
    if (want >= 0 && L != want) {
        cli_error("%s: phy2log has %d layer(s), but the model has %d MoE layer(s): a plan needs one row per MoE "
                  "layer, in layer order (--moe-layers, --pp, --layers-per-stage)", path, L, want);
        return 1;
    }
    int32_t *all = malloc(sizeof *all * 2 * (size_t)L * (size_t)P);
    unsigned char *seen = malloc((size_t)E);
    int rc = all && seen ? 0 : 1;
    if (rc) cli_error("out of memory reading %s", path);
    for (int l = 0; !rc && l < L; l++) {
        const json_value *row = &rows->items[l];
        int32_t *p2l = all + (size_t)l * P;
        if (row->kind != JSON_ARRAY || row->count != P) {
            cli_error("%s:%d: phy2log[%d] must be an array of num_replicas = %d expert ids", path, row->line, l, P);
            rc = 1;
            break;
        }
        memset(seen, 0, (size_t)E);
        for (int p = 0; !rc && p < P; p++) {
            const json_value *v = &row->items[p];
            if (v->kind != JSON_NUMBER || v->number != floor(v->number) || v->number < 0 || v->number >= E) {
                cli_error("%s:%d: phy2log[%d][%d] must be an expert id from 0 to %d (the model has --experts %d)", path,
                          v->line, l, p, E - 1, E);
                rc = 1;
            } else {
                p2l[p] = (int32_t)v->number, seen[p2l[p]] = 1;
            }
        }
        for (int e = 0; !rc && e < E; e++)
            if (!seen[e]) {
                cli_error("%s:%d: phy2log[%d] places no replica of expert %d: every expert needs a slot in every "
                          "layer", path, row->line, l, e);
                rc = 1;
            }
        if (!rc) rc = replica_order(path, root, l, E, P, p2l, all + (size_t)L * P + (size_t)l * P);
    }
    free(seen);
    if (rc) {
        free(all);
        return rc;
    }
    m->plan_layers = L, m->plan_slots = P, m->plan_ranks = G;
    m->plan_phy2log = all, m->plan_replica = all + (size_t)L * P;
    *storage = all;
    return 0;
}

int moe_plan_load(const char *path, dp_runtime_config *c, int32_t **storage)
{
    *storage = NULL;
    if (c->model.moe.experts < 1) {
        cli_error("--eplb-plan places the experts of MoE layers, which need --experts N (N > 0)");
        return 1;
    }
    char *text = read_text(path);
    if (!text) return 1;
    char err[256];
    json_value *root = json_parse(text, err, sizeof err);
    free(text);
    if (!root) {
        cli_error("%s:%s (--eplb-plan wants the JSON plan the eplb tool writes)", path, err);
        return 1;
    }
    int rc = check_plan(path, root, c, storage);
    json_free(root);
    return rc;
}

int moe_plan_identity(dp_runtime_config *c, int32_t **storage)
{
    *storage = NULL;
    dp_moe_config *m = &c->model.moe;
    int L = moe_layers(c), E = m->experts, ep = c->ep > 1 ? c->ep : 1;
    if (L < 0) return 0; /* the schedule is not one: the runtime says so */
    if (E < 1 || L == 0) {
        cli_error("--eplb-every places the experts of MoE layers, and the model has none: give --experts N (and "
                  "layers for them: by default every layer but the first is one)");
        return 1;
    }
    if (E % ep) {
        cli_error("%d experts do not spread evenly over %d expert-parallel ranks (--ep must divide --experts)", E, ep);
        return 1;
    }
    int32_t *all = malloc(sizeof *all * 2 * (size_t)L * (size_t)E);
    if (!all) {
        cli_error("out of memory for the placement of %d layers x %d experts", L, E);
        return 1;
    }
    for (size_t i = 0; i < (size_t)L * (size_t)E; i++) all[i] = (int32_t)(i % (size_t)E);
    m->plan_layers = L, m->plan_slots = E, m->plan_ranks = ep;
    m->plan_phy2log = all, m->plan_replica = NULL;
    *storage = all;
    return 0;
}
