/* eplb_input.c: reading expert loads (JSON {"logical_count": [[...]]} or CSV / whitespace
 * text, one layer per line) and phy2log from a plan JSON, with every rule checked and each
 * problem reported as FILE:LINE: what is wrong. */
#define _POSIX_C_SOURCE 200809L
#include "tools/eplb_input.h"

#include "eplb/eplb.h"
#include "tools/cli.h"
#include "tools/eplb_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *name_of(const char *path) { return path && strcmp(path, "-") ? path : "<stdin>"; }

char *eplb_slurp(const char *path, long *len)
{
    FILE *fp = stdin;
    if (path && strcmp(path, "-") != 0) {
        fp = fopen(path, "rb");
        if (!fp) {
            cli_error("cannot open '%s': %s", path, strerror(errno));
            return NULL;
        }
    }
    size_t cap = 1 << 16, n = 0;
    int too_big = 0, has_nul = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, fp);
        /* stop at once on what cannot be text, or is far beyond any plan or load file (a device
         * such as /dev/zero would otherwise be read forever) */
        if (memchr(buf + n, 0, got) || n + got > EPLB_SLURP_MAX) {
            too_big = !memchr(buf + n, 0, got);
            has_nul = !too_big;
            n += got;
            break;
        }
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(fp);
    if (fp != stdin) fclose(fp);
    if (!buf) {
        cli_error("out of memory reading '%s'", name_of(path));
        return NULL;
    }
    if (bad) {
        cli_error("reading '%s' failed", name_of(path));
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (too_big) {
        cli_error("%s: larger than %d MiB: not a plan or a load file (those are JSON or text)", name_of(path),
                  (int)(EPLB_SLURP_MAX >> 20));
        free(buf);
        return NULL;
    }
    if (has_nul || memchr(buf, 0, n)) {
        cli_error("%s: the file holds a NUL byte: plans and loads are text (JSON, CSV or whitespace)",
                  name_of(path));
        free(buf);
        return NULL;
    }
    if (len) *len = (long)n;
    return buf;
}

void eplb_loads_free(eplb_loads *l)
{
    free(l->w);
    memset(l, 0, sizeof *l);
}

/* A load must be a finite number >= 0; returns nonzero after reporting otherwise. */
static int check_load(const char *file, int line, int layer, int expert, double v)
{
    if (isnan(v)) {
        cli_error("%s:%d: layer %d expert %d: load is NaN; loads are token counts (finite, >= 0)",
                  file, line, layer, expert);
        return 1;
    }
    if (!isfinite(v)) {
        cli_error("%s:%d: layer %d expert %d: load is infinite; loads must be finite", file, line,
                  layer, expert);
        return 1;
    }
    if (v < 0) {
        cli_error("%s:%d: layer %d expert %d: load %g is negative; loads must be >= 0", file,
                  line, layer, expert, v);
        return 1;
    }
    return 0;
}

/* A layer's loads must add up to at most EPLB_MAX_LAYER_LOAD (finite loads of 1e308 each
 * overflowed the balancer's sums into a balancedness of inf or NaN). */
static int check_layer_sum(const char *file, int line, int layer, const double *w, int n)
{
    double total = 0;
    for (int e = 0; e < n; e++) total += w[e];
    if (total <= EPLB_MAX_LAYER_LOAD) return 0;
    cli_error("%s:%d: layer %d: the loads add up to %g, more than %g: too large to balance; scale "
              "them down (only their ratios matter)", file, line, layer, total, EPLB_MAX_LAYER_LOAD);
    return 1;
}

static int grow(double **w, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap : 1024;
    while (ncap < need) ncap *= 2;
    double *n = realloc(*w, ncap * sizeof **w);
    if (!n) return 1;
    *w = n;
    *cap = ncap;
    return 0;
}

static int read_text(const char *file, char *text, eplb_loads *out)
{
    size_t cap = 0;
    int line = 0;
    char *save = NULL;
    for (char *ln = text; ln; ln = save) {
        line++;
        save = strchr(ln, '\n');
        if (save) *save++ = 0;
        char *hash = strchr(ln, '#');
        if (hash) *hash = 0;
        int count = 0;
        char *p = ln;
        int expect_value = 0; /* after a comma a value must follow */
        for (;;) {
            while (*p == ' ' || *p == '\t' || *p == '\r') p++;
            if (!*p) break;
            if (*p == ',') {
                if (expect_value || count == 0) {
                    cli_error("%s:%d: empty field before a comma: every field must hold a load",
                              file, line);
                    return 1;
                }
                expect_value = 1;
                p++;
                continue;
            }
            char *start = p;
            while (*p && *p != ',' && *p != ' ' && *p != '\t' && *p != '\r') p++;
            char saved = *p;
            *p = 0;
            char *end;
            errno = 0;
            double v = strtod(start, &end);
            if (end == start || *end) {
                cli_error("%s:%d: '%s' is not a number; a line holds one layer's loads, "
                          "separated by commas or spaces", file, line, start);
                return 1;
            }
            if (errno == ERANGE && fabs(v) > 1) {
                cli_error("%s:%d: layer %d expert %d: load '%s' is too large for a double; "
                          "loads must be finite", file, line, out->layers, count, start);
                return 1;
            }
            *p = saved;
            if (check_load(file, line, out->layers, count, v)) return 1;
            if (out->layers > 0 && count >= out->experts) {
                cli_error("%s:%d: ragged rows: this layer has more than %d loads, the first "
                          "layer (line %d) has %d", file, line, out->experts, out->first_line,
                          out->experts);
                return 1;
            }
            /* experts is 0 until the first layer is complete */
            size_t at = (size_t)out->layers * (size_t)out->experts + (size_t)count;
            if (grow(&out->w, &cap, at + 1)) {
                cli_error("out of memory reading %s", file);
                return 1;
            }
            out->w[at] = v;
            count++;
            expect_value = 0;
        }
        if (expect_value) {
            cli_error("%s:%d: the line ends with a comma: a load is missing", file, line);
            return 1;
        }
        if (count == 0) continue;
        if (out->layers == 0) {
            out->experts = count;
            out->first_line = line;
        } else if (count != out->experts) {
            cli_error("%s:%d: ragged rows: this layer has %d loads, the first layer (line %d) "
                      "has %d", file, line, count, out->first_line, out->experts);
            return 1;
        }
        if (check_layer_sum(file, line, out->layers, out->w + (size_t)out->layers * count, count))
            return 1;
        out->layers++;
    }
    if (out->layers == 0) {
        cli_error("%s: no loads found: the input is empty (expected one layer of loads per "
                  "line, or JSON {\"logical_count\": [[...]]})", file);
        return 1;
    }
    return 0;
}

static int read_json(const char *file, const char *text, eplb_loads *out)
{
    char err[256];
    json_value *root = json_parse(text, err, sizeof err);
    if (!root) {
        cli_error("%s:%s (not valid JSON)", file, err);
        return 1;
    }
    int rc = 1;
    const json_value *rows = root;
    if (root->kind == JSON_OBJECT) {
        rows = json_member(root, "logical_count");
        if (!rows) {
            cli_error("%s:%d: no \"logical_count\" member: expected {\"logical_count\": "
                      "[[loads of layer 0], ...]}", file, root->line);
            goto done;
        }
    }
    if (rows->kind != JSON_ARRAY) {
        cli_error("%s:%d: \"logical_count\" must be an array of layers", file, rows->line);
        goto done;
    }
    if (rows->count == 0) {
        cli_error("%s:%d: no layers: \"logical_count\" is empty", file, rows->line);
        goto done;
    }
    for (int l = 0; l < rows->count; l++) {
        const json_value *row = &rows->items[l];
        if (row->kind != JSON_ARRAY) {
            cli_error("%s:%d: layer %d is not an array of loads", file, row->line, l);
            goto done;
        }
        if (l == 0) {
            if (row->count == 0) {
                cli_error("%s:%d: layer 0 has no loads", file, row->line);
                goto done;
            }
            out->experts = row->count;
            out->first_line = row->line;
            out->w = malloc((size_t)rows->count * row->count * sizeof(double));
            if (!out->w) {
                cli_error("out of memory reading %s", file);
                goto done;
            }
        } else if (row->count != out->experts) {
            cli_error("%s:%d: ragged rows: layer %d has %d loads, layer 0 (line %d) has %d", file,
                      row->line, l, row->count, out->first_line, out->experts);
            goto done;
        }
        for (int e = 0; e < row->count; e++) {
            const json_value *v = &row->items[e];
            if (v->kind != JSON_NUMBER) {
                cli_error("%s:%d: layer %d expert %d is not a number", file, v->line, l, e);
                goto done;
            }
            if (check_load(file, v->line, l, e, v->number)) goto done;
            out->w[(size_t)l * out->experts + e] = v->number;
        }
        if (check_layer_sum(file, row->line, l, out->w + (size_t)l * out->experts, out->experts))
            goto done;
        out->layers++;
    }
    rc = 0;
done:
    json_free(root);
    return rc;
}

int eplb_parse_loads(const char *name, char *text, eplb_loads *out)
{
    memset(out, 0, sizeof *out);
    const char *p = text;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    int rc = (*p == '{' || *p == '[') ? read_json(name, text, out) : read_text(name, text, out);
    if (rc) eplb_loads_free(out);
    return rc;
}

int eplb_read_loads(const char *path, eplb_loads *out)
{
    memset(out, 0, sizeof *out);
    char *text = eplb_slurp(path, NULL);
    if (!text) return 1;
    int rc = eplb_parse_loads(name_of(path), text, out);
    free(text);
    return rc;
}

int eplb_read_phy2log(const char *path, int *layers, int *replicas, int **phy2log)
{
    char *text = eplb_slurp(path, NULL);
    if (!text) return 1;
    int rc = eplb_parse_phy2log(name_of(path), text, layers, replicas, phy2log);
    free(text);
    return rc;
}

int eplb_parse_phy2log(const char *file, const char *text, int *layers, int *replicas, int **phy2log)
{
    char err[256];
    json_value *root = json_parse(text, err, sizeof err);
    if (!root) {
        cli_error("%s:%s (the current plan must be the JSON that eplb writes)", file, err);
        return 1;
    }
    int rc = 1;
    int *out = NULL;
    const json_value *rows = json_member(root, "phy2log");
    if (!rows || rows->kind != JSON_ARRAY || rows->count == 0) {
        cli_error("%s:%d: no \"phy2log\" array of layers: the current plan must be the JSON "
                  "that eplb writes", file, root->line);
        goto done;
    }
    int R = rows->items[0].kind == JSON_ARRAY ? rows->items[0].count : 0;
    out = malloc((size_t)rows->count * (R ? R : 1) * sizeof(int));
    if (!out) {
        cli_error("out of memory reading %s", file);
        goto done;
    }
    for (int l = 0; l < rows->count; l++) {
        const json_value *row = &rows->items[l];
        if (row->kind != JSON_ARRAY || row->count != R || R == 0) {
            cli_error("%s:%d: phy2log layer %d must be an array of %d expert ids like layer 0",
                      file, row->line, l, R);
            goto done;
        }
        for (int r = 0; r < R; r++) {
            const json_value *v = &row->items[r];
            if (v->kind != JSON_NUMBER || v->number != floor(v->number) || v->number < 0 ||
                v->number > 1e9) {
                cli_error("%s:%d: phy2log[%d][%d] must be an expert id (a whole number >= 0)",
                          file, v->line, l, r);
                goto done;
            }
            out[(size_t)l * R + r] = (int)v->number;
        }
    }
    *layers = rows->count;
    *replicas = R;
    *phy2log = out;
    out = NULL;
    rc = 0;
done:
    free(out);
    json_free(root);
    return rc;
}
