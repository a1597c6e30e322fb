/* eplb_json.c: a small recursive-descent JSON reader (RFC 8259 values, numbers as double)
 * that remembers lines, for the eplb tool's inputs. */
#include "tools/eplb_json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p;
    int line;
    char *err;
    int errlen;
    int depth;
} reader;

enum { max_depth = 64 };

static int fail(reader *r, const char *what)
{
    if (!r->err[0]) snprintf(r->err, (size_t)r->errlen, "%d: %s", r->line, what);
    return 1;
}

static void skip_space(reader *r)
{
    for (;;) {
        char c = *r->p;
        if (c == '\n') r->line++;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') r->p++;
        else return;
    }
}

static int parse_value(reader *r, json_value *v);
static void free_contents(json_value *v);

static int parse_string(reader *r, char **out)
{
    r->p++; /* opening quote */
    const char *start = r->p;
    size_t n = 0;
    while (*r->p && *r->p != '"') {
        if (*r->p == '\n') return fail(r, "a string runs past the end of the line");
        if (*r->p == '\\' && r->p[1]) r->p++;
        r->p++;
        n++;
    }
    if (*r->p != '"') return fail(r, "a string is not closed: add the closing quote");
    char *s = malloc(n + 1), *d = s;
    if (!s) return fail(r, "out of memory");
    for (const char *q = start; q < r->p; q++) {
        if (*q == '\\') {
            q++;
            switch (*q) {
            case 'n': *d++ = '\n'; break;
            case 't': *d++ = '\t'; break;
            default: *d++ = *q; break; /* \" \\ \/ and the rest kept as their character */
            }
        } else {
            *d++ = *q;
        }
    }
    *d = 0;
    r->p++;
    *out = s;
    return 0;
}

static int push(reader *r, json_value *v, json_value *item, int *cap)
{
    if (v->count == *cap) {
        int ncap = *cap ? *cap * 2 : 8;
        json_value *n = realloc(v->items, (size_t)ncap * sizeof *n);
        if (!n) return fail(r, "out of memory");
        v->items = n;
        *cap = ncap;
    }
    v->items[v->count++] = *item;
    return 0;
}

static int parse_container(reader *r, json_value *v, char close)
{
    int cap = 0;
    if (++r->depth > max_depth) return fail(r, "values are nested too deeply");
    r->p++;
    skip_space(r);
    if (*r->p == close) {
        r->p++;
        r->depth--;
        return 0;
    }
    for (;;) {
        json_value item;
        memset(&item, 0, sizeof item);
        char *key = NULL;
        skip_space(r);
        if (close == '}') {
            if (*r->p != '"') return fail(r, "expected a quoted key in an object");
            if (parse_string(r, &key)) return 1;
            skip_space(r);
            if (*r->p != ':') {
                free(key);
                return fail(r, "expected ':' after a key");
            }
            r->p++;
        }
        if (parse_value(r, &item)) {
            free(key);
            free_contents(&item);
            return 1;
        }
        item.key = key;
        if (push(r, v, &item, &cap)) {
            free_contents(&item);
            return 1;
        }
        skip_space(r);
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p == close) {
            r->p++;
            r->depth--;
            return 0;
        }
        return fail(r, close == ']' ? "expected ',' or ']' in an array"
                                    : "expected ',' or '}' in an object");
    }
}

static int digits(const char *p)
{
    int n = 0;
    while (p[n] >= '0' && p[n] <= '9') n++;
    return n;
}

/* The length of the JSON number (RFC 8259: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?)
 * at p, or 0 when p does not start one. */
static size_t json_number_length(const char *p)
{
    const char *q = p;
    if (*q == '-') q++;
    int n = digits(q);
    if (n == 0 || (q[0] == '0' && n > 1)) return 0;
    q += n;
    if (*q == '.') {
        if (!(n = digits(q + 1))) return 0;
        q += 1 + n;
    }
    if (*q == 'e' || *q == 'E') {
        const char *e = q + 1;
        if (*e == '+' || *e == '-') e++;
        if (!(n = digits(e))) return 0;
        q = e + n;
    }
    return (size_t)(q - p);
}

static int parse_value(reader *r, json_value *v)
{
    skip_space(r);
    v->line = r->line;
    char c = *r->p;
    if (c == '{') {
        v->kind = JSON_OBJECT;
        return parse_container(r, v, '}');
    }
    if (c == '[') {
        v->kind = JSON_ARRAY;
        return parse_container(r, v, ']');
    }
    if (c == '"') {
        v->kind = JSON_STRING;
        return parse_string(r, &v->string);
    }
    if (strncmp(r->p, "true", 4) == 0 || strncmp(r->p, "false", 5) == 0) {
        v->kind = JSON_BOOL;
        v->number = c == 't';
        r->p += c == 't' ? 4 : 5;
        return 0;
    }
    if (strncmp(r->p, "null", 4) == 0) {
        v->kind = JSON_NULL;
        r->p += 4;
        return 0;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char *end;
        errno = 0;
        v->kind = JSON_NUMBER;
        v->number = strtod(r->p, &end);
        /* strtod takes more than JSON does (-inf, -nan, 0x1p3): what it read must be exactly
         * a JSON number */
        if (end == r->p || end != r->p + json_number_length(r->p))
            return fail(r, "not a number: JSON numbers look like 12, 0.5 or 1e3 (no inf, nan, hex "
                           "or leading zeros)");
        if (errno == ERANGE && (v->number > 1 || v->number < -1))
            return fail(r, "a number is too large for a double");
        r->p = end;
        return 0;
    }
    if (!c) return fail(r, "the text ends where a value was expected");
    char what[96];
    int n = 0;
    while (r->p[n] && r->p[n] != ',' && r->p[n] != ']' && r->p[n] != '}' && r->p[n] != '\n' &&
           n < 24)
        n++;
    snprintf(what, sizeof what, "'%.*s' is not a number (or any JSON value)", n, r->p);
    return fail(r, what);
}

static void free_contents(json_value *v)
{
    for (int k = 0; k < v->count; k++) free_contents(&v->items[k]);
    free(v->items);
    free(v->string);
    free(v->key);
}

void json_free(json_value *v)
{
    if (!v) return;
    free_contents(v);
    free(v);
}

json_value *json_parse(const char *text, char *err, int errlen)
{
    reader r = {text, 1, err, errlen, 0};
    err[0] = 0;
    json_value *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, (size_t)errlen, "1: out of memory");
        return NULL;
    }
    if (parse_value(&r, v)) {
        json_free(v);
        return NULL;
    }
    skip_space(&r);
    if (*r.p) {
        fail(&r, "unexpected text after the JSON value");
        json_free(v);
        return NULL;
    }
    return v;
}

const json_value *json_member(const json_value *obj, const char *key)
{
    if (!obj || obj->kind != JSON_OBJECT) return NULL;
    for (int k = 0; k < obj->count; k++)
        if (obj->items[k].key && strcmp(obj->items[k].key, key) == 0) return &obj->items[k];
    return NULL;
}
