/* safetensors.c: the safetensors reader and writer: a small JSON parser that knows only what
 * the header holds (an object of tensor entries and an optional __metadata__ of strings), the
 * checks that make a file's offsets trustworthy, and an all-or-nothing writer. */
#define _POSIX_C_SOURCE 200809L
#define _XOPEN_SOURCE 700 /* realpath */
#include "engine/safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[DP_ST_NUM_DTYPES] = {
    [DP_ST_F32] = {"F32", 4}, [DP_ST_I32] = {"I32", 4}, [DP_ST_F64] = {"F64", 8}, [DP_ST_I64] = {"I64", 8},
    [DP_ST_F16] = {"F16", 2}, [DP_ST_BF16] = {"BF16", 2}, [DP_ST_I16] = {"I16", 2}, [DP_ST_I8] = {"I8", 1},
    [DP_ST_U8] = {"U8", 1},   [DP_ST_BOOL] = {"BOOL", 1},
};

const char *dp_st_dtype_name(dp_st_dtype t) { return (int)t >= 0 && t < DP_ST_NUM_DTYPES ? dtypes[t].name : NULL; }
size_t dp_st_dtype_size(dp_st_dtype t) { return (int)t >= 0 && t < DP_ST_NUM_DTYPES ? dtypes[t].size : 0; }

typedef struct {
    char *key, *value;
} st_meta;

struct dp_safetensors {
    char *path;
    unsigned char *bytes; /* the whole file */
    size_t size;
    const unsigned char *data; /* after the header */
    uint64_t data_size;
    dp_st_tensor *tensors;
    int count, cap;
    st_meta *meta;
    int num_meta, cap_meta;
};

/* ----------------------------------------------------------------------------
 * the header's JSON */

typedef struct {
    const char *p, *end;
    const char *start;
    char *err; /* the first error, for the message */
    size_t err_size;
} json;

static int jfail(json *j, const char *what)
{
    if (!j->err[0]) snprintf(j->err, j->err_size, "%s", what);
    return -1;
}

static void skip_ws(json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int expect(json *j, char c)
{
    skip_ws(j);
    if (j->p >= j->end || *j->p != c) {
        char m[64];
        snprintf(m, sizeof m, "bad JSON: expected '%c' at byte %td of the header", c, j->p - j->start);
        return jfail(j, m);
    }
    j->p++;
    return 0;
}

static void put_utf8(char **o, unsigned cp)
{
    char *q = *o;
    if (cp < 0x80) *q++ = (char)cp;
    else if (cp < 0x800) *q++ = (char)(0xc0 | cp >> 6), *q++ = (char)(0x80 | (cp & 0x3f));
    else *q++ = (char)(0xe0 | cp >> 12), *q++ = (char)(0x80 | ((cp >> 6) & 0x3f)), *q++ = (char)(0x80 | (cp & 0x3f));
    *o = q;
}

/* A string, unescaped into a new allocation (*out; NULL when out is NULL: skipped). */
static int parse_string(json *j, char **out)
{
    if (expect(j, '"')) return -1;
    const char *s = j->p;
    while (j->p < j->end && *j->p != '"') {
        if (*j->p == '\\') j->p++;
        j->p++;
    }
    if (j->p >= j->end) return jfail(j, "bad JSON: a string is not closed");
    size_t n = (size_t)(j->p - s);
    j->p++;
    if (!out) return 0;
    char *r = malloc(n + 1), *o = r; /* unescaping never lengthens */
    if (!r) return jfail(j, "out of memory");
    for (const char *c = s; c < s + n; c++) {
        if ((unsigned char)*c < 0x20) return free(r), jfail(j, "bad JSON: a control character in a string");
        if (*c != '\\') {
            *o++ = *c;
            continue;
        }
        c++;
        switch (*c) {
        case '"': case '\\': case '/': *o++ = *c; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp = 0;
            for (int k = 1; k <= 4; k++) {
                char h = c + k < s + n ? c[k] : 0;
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (d < 0) return free(r), jfail(j, "bad JSON: a \\u escape without four hex digits");
                cp = cp * 16 + (unsigned)d;
            }
            if (cp == 0) return free(r), jfail(j, "bad JSON: a NUL character in a string");
            c += 4;
            put_utf8(&o, cp); /* at most 3 bytes for the 6 read */
            break;
        }
        default: return free(r), jfail(j, "bad JSON: an unknown escape in a string");
        }
    }
    *o = 0;
    *out = r;
    return 0;
}

/* A non-negative integer that fits in 63 bits. */
static int parse_uint(json *j, uint64_t *out)
{
    skip_ws(j);
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return jfail(j, "bad JSON: expected a non-negative integer");
    uint64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        if (v > (UINT64_C(1) << 62) / 10) return jfail(j, "an integer in the header is too large");
        v = v * 10 + (uint64_t)(*j->p++ - '0');
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return jfail(j, "bad JSON: expected an integer, got a fraction");
    *out = v;
    return 0;
}

/* Any JSON value, skipped (unknown keys of an entry). */
static int skip_value(json *j, int depth)
{
    if (depth > 64) return jfail(j, "bad JSON: nested too deeply");
    skip_ws(j);
    if (j->p >= j->end) return jfail(j, "bad JSON: the header ends early");
    char c = *j->p;
    if (c == '"') return parse_string(j, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        skip_ws(j);
        if (j->p < j->end && *j->p == close) return j->p++, 0;
        for (;;) {
            if (c == '{' && (parse_string(j, NULL) || expect(j, ':'))) return -1;
            if (skip_value(j, depth + 1)) return -1;
            skip_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            return expect(j, close);
        }
    }
    const char *s = j->p;
    while (j->p < j->end && (strchr("+-.eE", *j->p) || (*j->p >= '0' && *j->p <= '9') || (*j->p >= 'a' && *j->p <= 'z')))
        j->p++;
    size_t n = (size_t)(j->p - s);
    if (n == 0) return jfail(j, "bad JSON: expected a value");
    if ((n == 4 && !memcmp(s, "true", 4)) || (n == 5 && !memcmp(s, "false", 5)) || (n == 4 && !memcmp(s, "null", 4)))
        return 0;
    if ((*s == '-' || (*s >= '0' && *s <= '9'))) return 0;
    return jfail(j, "bad JSON: expected a value");
}

static int add_tensor(dp_safetensors *f, json *j, dp_st_tensor **out)
{
    if (f->count == f->cap) {
        int cap = f->cap ? 2 * f->cap : 16;
        dp_st_tensor *t = realloc(f->tensors, sizeof *t * (size_t)cap);
        if (!t) return jfail(j, "out of memory");
        f->tensors = t, f->cap = cap;
    }
    *out = &f->tensors[f->count++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* {"dtype": "F32", "shape": [..], "data_offsets": [b, e]} in any order, other keys skipped. */
static int parse_entry(json *j, dp_st_tensor *t, char *msg, size_t msg_size)
{
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    if (expect(j, '{')) return -1;
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') j->p++;
    else
        for (;;) {
            char *key = NULL;
            if (parse_string(j, &key) || expect(j, ':')) return free(key), -1;
            int r = 0;
            if (strcmp(key, "dtype") == 0) {
                char *name = NULL;
                r = parse_string(j, &name);
                if (!r) {
                    int k = 0;
                    while (k < DP_ST_NUM_DTYPES && strcmp(dtypes[k].name, name) != 0) k++;
                    if (k == DP_ST_NUM_DTYPES) {
                        snprintf(msg, msg_size, "unknown dtype \"%.32s\" (known: F32, I32, F64, I64, F16, BF16, I16, I8, U8, BOOL)",
                                 name);
                        r = jfail(j, msg);
                    }
                    t->dtype = (dp_st_dtype)k;
                    have_dtype = 1;
                }
                free(name);
            } else if (strcmp(key, "shape") == 0 || strcmp(key, "data_offsets") == 0) {
                int offsets = key[0] == 'd', n = 0;
                uint64_t v[DP_ST_MAX_DIMS] = {0};
                r = expect(j, '[');
                skip_ws(j);
                if (!r && j->p < j->end && *j->p == ']') j->p++;
                else
                    while (!r) {
                        if (n == (offsets ? 2 : DP_ST_MAX_DIMS)) {
                            r = jfail(j, offsets ? "data_offsets must hold two numbers" : "a shape has too many dims (at most 8)");
                            break;
                        }
                        r = parse_uint(j, &v[n++]);
                        if (r) break;
                        skip_ws(j);
                        if (j->p < j->end && *j->p == ',') j->p++;
                        else {
                            r = expect(j, ']');
                            break;
                        }
                    }
                if (!r && offsets) {
                    if (n != 2) r = jfail(j, "data_offsets must hold two numbers");
                    t->begin = v[0], t->end = n == 2 ? v[1] : 0;
                    have_offsets = 1;
                } else if (!r) {
                    t->ndim = n;
                    for (int d = 0; d < n; d++) t->shape[d] = (int64_t)v[d];
                    have_shape = 1;
                }
            } else {
                r = skip_value(j, 1);
            }
            free(key);
            if (r) return -1;
            skip_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (expect(j, '}')) return -1;
            break;
        }
    if (!have_dtype || !have_shape || !have_offsets)
        return jfail(j, !have_dtype ? "an entry has no dtype" : !have_shape ? "an entry has no shape" : "an entry has no data_offsets");
    return 0;
}

static int parse_metadata(dp_safetensors *f, json *j)
{
    if (expect(j, '{')) return -1;
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') return j->p++, 0;
    for (;;) {
        char *k = NULL, *v = NULL;
        if (parse_string(j, &k) || expect(j, ':')) return free(k), -1;
        skip_ws(j);
        if (j->p >= j->end || *j->p != '"' || parse_string(j, &v)) {
            free(k), free(v);
            return jfail(j, "__metadata__ must map strings to strings");
        }
        if (f->num_meta == f->cap_meta) {
            int cap = f->cap_meta ? 2 * f->cap_meta : 8;
            st_meta *m = realloc(f->meta, sizeof *m * (size_t)cap);
            if (!m) return free(k), free(v), jfail(j, "out of memory");
            f->meta = m, f->cap_meta = cap;
        }
        f->meta[f->num_meta++] = (st_meta){k, v};
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        return expect(j, '}');
    }
}

/* The header: fills f's tensors and metadata; on failure, msg says what (and which tensor). */
static int parse_header(dp_safetensors *f, const char *text, size_t n, char *msg, size_t msg_size)
{
    json j = {text, text + n, text, msg, msg_size};
    char detail[160] = "";
    if (expect(&j, '{')) return -1;
    skip_ws(&j);
    if (j.p < j.end && *j.p == '}') j.p++;
    else
        for (;;) {
            char *name = NULL;
            if (parse_string(&j, &name) || expect(&j, ':')) return free(name), -1;
            if (strcmp(name, "__metadata__") == 0) {
                free(name);
                if (parse_metadata(f, &j)) return -1;
            } else {
                dp_st_tensor *t = NULL;
                if (add_tensor(f, &j, &t)) return free(name), -1;
                t->name = name;
                if (parse_entry(&j, t, detail, sizeof detail)) {
                    char m[512];
                    snprintf(m, sizeof m, "tensor \"%.200s\": %s", name, msg);
                    snprintf(msg, msg_size, "%s", m);
                    return -1;
                }
            }
            skip_ws(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                continue;
            }
            if (expect(&j, '}')) return -1;
            break;
        }
    skip_ws(&j);
    if (j.p != j.end) return jfail(&j, "bad JSON: text after the header's object");
    return 0;
}

/* ----------------------------------------------------------------------------
 * reading */

static dp_status read_whole(const char *path, unsigned char **bytes, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return dp_fail(errno == ENOENT ? DP_ERR_NOT_FOUND : DP_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        return dp_fail(DP_ERR_IO, "%s is not a regular file (a safetensors file is expected)", path);
    }
    size_t n = (size_t)sb.st_size;
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        fclose(fp);
        return dp_fail(DP_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path, n);
    }
    size_t got = fread(b, 1, n, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (got != n || bad) {
        free(b);
        return dp_fail(DP_ERR_IO, "cannot read %s: %s", path, bad ? strerror(errno) : "it shrank while being read");
    }
    *bytes = b, *size = n;
    return DP_OK;
}

static int by_begin(const void *a, const void *b)
{
    const dp_st_tensor *x = *(const dp_st_tensor *const *)a, *y = *(const dp_st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : x->end < y->end ? -1 : x->end > y->end;
}

/* Offsets within the data, bytes matching dtype x shape, no name twice, no two tensors sharing
 * bytes. */
static dp_status check_tensors(dp_safetensors *f)
{
    for (int i = 0; i < f->count; i++) {
        dp_st_tensor *t = &f->tensors[i];
        if (t->begin > t->end || t->end > f->data_size)
            return dp_fail(DP_ERR_INVALID,
                           "%s: tensor \"%s\": data_offsets [%llu, %llu] out of range (the data holds %llu bytes): the "
                           "file is truncated or its header is wrong",
                           f->path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)f->data_size);
        uint64_t elems = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] != 0 && elems > (UINT64_C(1) << 62) / (uint64_t)t->shape[d])
                return dp_fail(DP_ERR_INVALID, "%s: tensor \"%s\": the shape's element count overflows", f->path, t->name);
            elems *= (uint64_t)t->shape[d];
        }
        uint64_t want = elems * dtypes[t->dtype].size;
        if (want / dtypes[t->dtype].size != elems || want != t->end - t->begin)
            return dp_fail(DP_ERR_INVALID,
                           "%s: tensor \"%s\": its shape and dtype %s need %llu bytes, its data_offsets give %llu",
                           f->path, t->name, dtypes[t->dtype].name, (unsigned long long)want,
                           (unsigned long long)(t->end - t->begin));
        for (int k = 0; k < i; k++)
            if (strcmp(f->tensors[k].name, t->name) == 0)
                return dp_fail(DP_ERR_INVALID, "%s: tensor \"%s\" appears twice in the header", f->path, t->name);
    }
    if (f->count < 2) return DP_OK;
    const dp_st_tensor **order = malloc(sizeof *order * (size_t)f->count);
    if (!order) return dp_fail(DP_ERR_NOMEM, "out of memory checking %s", f->path);
    for (int i = 0; i < f->count; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->count, sizeof *order, by_begin);
    for (int i = 1; i < f->count; i++)
        if (order[i]->begin < order[i - 1]->end) {
            dp_status st = dp_fail(DP_ERR_INVALID, "%s: tensors \"%s\" and \"%s\" overlap (bytes [%llu, %llu) and [%llu, %llu))",
                                   f->path, order[i - 1]->name, order[i]->name, (unsigned long long)order[i - 1]->begin,
                                   (unsigned long long)order[i - 1]->end, (unsigned long long)order[i]->begin,
                                   (unsigned long long)order[i]->end);
            free(order);
            return st;
        }
    free(order);
    return DP_OK;
}

/* Checks f->bytes (f->size of them) as a safetensors file. */
static dp_status parse_checked(dp_safetensors *f)
{
    if (f->size < 8)
        return dp_fail(DP_ERR_INVALID, "%s: truncated: %zu bytes, less than the 8 of the header's length", f->path, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->bytes[i];
    if (n > DP_ST_MAX_HEADER)
        return dp_fail(DP_ERR_INVALID, "%s: header too large: %llu bytes (at most %u): not a safetensors file?", f->path,
                       (unsigned long long)n, DP_ST_MAX_HEADER);
    if (n > f->size - 8)
        return dp_fail(DP_ERR_INVALID, "%s: truncated: the header says %llu bytes, the file has %zu after the length",
                       f->path, (unsigned long long)n, f->size - 8);
    char msg[512] = "";
    if (parse_header(f, (const char *)f->bytes + 8, (size_t)n, msg, sizeof msg))
        return dp_fail(DP_ERR_INVALID, "%s: %s", f->path, msg);
    f->data = f->bytes + 8 + n;
    f->data_size = f->size - 8 - n;
    return check_tensors(f);
}

/* Opens path's bytes (bytes == NULL: the file's, read whole) as a safetensors file. */
static dp_status open_checked(const char *path, const void *bytes, size_t size, dp_safetensors **out)
{
    *out = NULL;
    dp_safetensors *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return dp_fail(DP_ERR_NOMEM, "out of memory opening %s", path);
    }
    dp_status st = DP_OK;
    if (!bytes) {
        st = read_whole(path, &f->bytes, &f->size);
    } else if (!(f->bytes = malloc(size ? size : 1))) {
        st = dp_fail(DP_ERR_NOMEM, "out of memory opening %s (%zu bytes)", path, size);
    } else {
        memcpy(f->bytes, bytes, size);
        f->size = size;
    }
    if (st == DP_OK) st = parse_checked(f);
    if (st != DP_OK) {
        dp_safetensors_close(f);
        return st;
    }
    *out = f;
    return DP_OK;
}

dp_status dp_safetensors_open(const char *path, dp_safetensors **out) { return open_checked(path, NULL, 0, out); }

dp_status dp_safetensors_open_bytes(const void *bytes, size_t size, const char *name, dp_safetensors **out)
{
    if (!bytes && size) return dp_fail(DP_ERR_INVALID, "%s: no bytes given", name ? name : "(memory)");
    return open_checked(name ? name : "(memory)", bytes ? bytes : "", size, out);
}

void dp_safetensors_close(dp_safetensors *f)
{
    if (!f) return;
    for (int i = 0; i < f->count; i++) free((char *)f->tensors[i].name);
    for (int i = 0; i < f->num_meta; i++) free(f->meta[i].key), free(f->meta[i].value);
    free(f->tensors), free(f->meta), free(f->bytes), free(f->path), free(f);
}

const char *dp_safetensors_path(const dp_safetensors *f) { return f->path; }
int dp_safetensors_count(const dp_safetensors *f) { return f->count; }

const dp_st_tensor *dp_safetensors_tensor(const dp_safetensors *f, int i)
{
    return i >= 0 && i < f->count ? &f->tensors[i] : NULL;
}

const dp_st_tensor *dp_safetensors_find(const dp_safetensors *f, const char *name)
{
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const void *dp_safetensors_data(const dp_safetensors *f, const dp_st_tensor *t) { return f->data + t->begin; }

const char *dp_safetensors_metadata(const dp_safetensors *f, const char *key)
{
    for (int i = 0; i < f->num_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

static void shape_text(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t at = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && at < size; d++)
        at += (size_t)snprintf(buf + at, size - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < size) snprintf(buf + at, size - at, "]");
}

dp_status dp_safetensors_get(const dp_safetensors *f, const char *name, dp_st_dtype dtype, int ndim,
                             const int64_t *shape, void *out)
{
    const dp_st_tensor *t = dp_safetensors_find(f, name);
    if (!t) return dp_fail(DP_ERR_NOT_FOUND, "%s: no tensor \"%s\"", f->path, name);
    int same = t->dtype == dtype && t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char want[128], got[128];
        shape_text(want, sizeof want, ndim, shape);
        shape_text(got, sizeof got, t->ndim, t->shape);
        return dp_fail(DP_ERR_INVALID, "%s: tensor \"%s\" is %s %s, expected %s %s", f->path, name,
                       dtypes[t->dtype].name, got, dp_st_dtype_name(dtype) ? dp_st_dtype_name(dtype) : "?", want);
    }
    memcpy(out, f->data + t->begin, (size_t)(t->end - t->begin));
    return DP_OK;
}

/* ----------------------------------------------------------------------------
 * writing */

typedef struct {
    char *name;
    dp_st_dtype dtype;
    int ndim;
    int64_t shape[DP_ST_MAX_DIMS];
    void *data;
    size_t bytes;
} st_entry;

struct dp_safetensors_writer {
    st_entry *e;
    int count, cap;
    st_meta *meta;
    int num_meta, cap_meta;
};

dp_status dp_safetensors_writer_create(dp_safetensors_writer **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? DP_OK : dp_fail(DP_ERR_NOMEM, "out of memory for a safetensors writer");
}

void dp_safetensors_writer_destroy(dp_safetensors_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->count; i++) free(w->e[i].name), free(w->e[i].data);
    for (int i = 0; i < w->num_meta; i++) free(w->meta[i].key), free(w->meta[i].value);
    free(w->e), free(w->meta), free(w);
}

dp_status dp_safetensors_add(dp_safetensors_writer *w, const char *name, dp_st_dtype dtype, int ndim,
                             const int64_t *shape, const void *data)
{
    if (!dp_st_dtype_name(dtype)) return dp_fail(DP_ERR_INVALID, "safetensors: tensor \"%s\": unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > DP_ST_MAX_DIMS)
        return dp_fail(DP_ERR_INVALID, "safetensors: tensor \"%s\": %d dims (0 to %d)", name, ndim, DP_ST_MAX_DIMS);
    if (!name[0] || strcmp(name, "__metadata__") == 0)
        return dp_fail(DP_ERR_INVALID, "safetensors: a tensor cannot be called \"%s\"", name);
    for (int i = 0; i < w->count; i++)
        if (strcmp(w->e[i].name, name) == 0)
            return dp_fail(DP_ERR_INVALID, "safetensors: tensor \"%s\" added twice", name);
    size_t bytes = dtypes[dtype].size;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return dp_fail(DP_ERR_INVALID, "safetensors: tensor \"%s\": negative dim", name);
        bytes *= (size_t)shape[d];
    }
    if (w->count == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        st_entry *e = realloc(w->e, sizeof *e * (size_t)cap);
        if (!e) return dp_fail(DP_ERR_NOMEM, "out of memory adding tensor \"%s\"", name);
        w->e = e, w->cap = cap;
    }
    st_entry *e = &w->e[w->count];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->data = malloc(bytes ? bytes : 1);
    if (!e->name || !e->data) {
        free(e->name), free(e->data);
        return dp_fail(DP_ERR_NOMEM, "out of memory adding tensor \"%s\" (%zu bytes)", name, bytes);
    }
    if (bytes) memcpy(e->data, data, bytes);
    e->dtype = dtype, e->ndim = ndim, e->bytes = bytes;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    w->count++;
    return DP_OK;
}

dp_status dp_safetensors_add_metadata(dp_safetensors_writer *w, const char *key, const char *value)
{
    if (w->num_meta == w->cap_meta) {
        int cap = w->cap_meta ? 2 * w->cap_meta : 8;
        st_meta *m = realloc(w->meta, sizeof *m * (size_t)cap);
        if (!m) return dp_fail(DP_ERR_NOMEM, "out of memory adding metadata \"%s\"", key);
        w->meta = m, w->cap_meta = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k), free(v);
        return dp_fail(DP_ERR_NOMEM, "out of memory adding metadata \"%s\"", key);
    }
    w->meta[w->num_meta++] = (st_meta){k, v};
    return DP_OK;
}

/* A growing text buffer for the header. */
typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->oom) return;
    if (t->n + n + 1 > t->cap) {
        size_t cap = (t->n + n + 1) * 2;
        char *r = realloc(t->s, cap);
        if (!r) {
            t->oom = 1;
            return;
        }
        t->s = r, t->cap = cap;
    }
    memcpy(t->s + t->n, s, n);
    t->n += n;
    t->s[t->n] = 0;
}

static void put_str(text *t, const char *s) { put(t, s, strlen(s)); }

static void put_json_string(text *t, const char *s)
{
    put(t, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') esc[0] = '\\', esc[1] = (char)c, put(t, esc, 2);
        else if (c < 0x20) snprintf(esc, sizeof esc, "\\u%04x", c), put(t, esc, 6);
        else put(t, s, 1);
    }
    put(t, "\"", 1);
}

/* The header: JSON of the metadata and every tensor's dtype, shape and offsets, padded with
 * spaces so that the data starts aligned, as the format recommends. */
static dp_status build_header(const dp_safetensors_writer *w, text *h, const char *name)
{
    char num[96];
    put_str(h, "{");
    if (w->num_meta) {
        put_str(h, "\"__metadata__\":{");
        for (int i = 0; i < w->num_meta; i++) {
            if (i) put_str(h, ",");
            put_json_string(h, w->meta[i].key);
            put_str(h, ":");
            put_json_string(h, w->meta[i].value);
        }
        put_str(h, "}");
    }
    uint64_t at = 0;
    for (int i = 0; i < w->count; i++) {
        const st_entry *e = &w->e[i];
        if (i || w->num_meta) put_str(h, ",");
        put_json_string(h, e->name);
        put_str(h, ":{\"dtype\":\"");
        put_str(h, dtypes[e->dtype].name);
        put_str(h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)e->shape[d]);
            put_str(h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)at,
                 (unsigned long long)(at + e->bytes));
        put_str(h, num);
        at += e->bytes;
    }
    put_str(h, "}");
    while (h->n % 8) put_str(h, " ");
    if (h->oom) {
        free(h->s);
        h->s = NULL;
        return dp_fail(DP_ERR_NOMEM, "out of memory writing the header of %s", name);
    }
    return DP_OK;
}

dp_status dp_safetensors_write_stream(const dp_safetensors_writer *w, FILE *fp, const char *name)
{
    text h = {0};
    DP_CHECK(build_header(w, &h, name));
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    int ok = fwrite(len, 1, 8, fp) == 8 && fwrite(h.s, 1, h.n, fp) == h.n;
    for (int i = 0; ok && i < w->count; i++) ok = fwrite(w->e[i].data, 1, w->e[i].bytes, fp) == w->e[i].bytes;
    ok = ok && fflush(fp) == 0;
    int err = errno;
    free(h.s);
    return ok ? DP_OK : dp_fail(DP_ERR_IO, "cannot write %s: %s", name, strerror(err));
}

/* The file at tmp, whole and on disk, with the given mode (the replaced file's). */
static dp_status write_file(const dp_safetensors_writer *w, const char *tmp, const char *path, const struct stat *old)
{
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return dp_fail(DP_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    dp_status st = dp_safetensors_write_stream(w, fp, path);
    if (st == DP_OK && old && fchmod(fileno(fp), old->st_mode & 07777) != 0)
        st = dp_fail(DP_ERR_IO, "cannot give %s the mode of %s: %s", tmp, path, strerror(errno));
    if (st == DP_OK && fsync(fileno(fp)) != 0) st = dp_fail(DP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    if (fclose(fp) != 0 && st == DP_OK) st = dp_fail(DP_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    if (st != DP_OK) remove(tmp);
    return st;
}

dp_status dp_safetensors_write(const dp_safetensors_writer *w, const char *path)
{
    struct stat sb;
    int exists = stat(path, &sb) == 0;
    if (exists && !S_ISREG(sb.st_mode))
        /* renaming the finished file into place would replace a device node or fail on a
         * directory; a program that means to write to one passes its stream to
         * dp_safetensors_write_stream */
        return dp_fail(DP_ERR_INVALID, "%s is not a regular file (a directory, device or FIFO): give the path of a file",
                       path);
    /* a symbolic link's target is replaced, not the link */
    char *target = exists ? realpath(path, NULL) : strdup(path);
    if (!target) return dp_fail(DP_ERR_IO, "cannot resolve %s: %s", path, strerror(errno));
    size_t tn = strlen(target) + 32;
    char *tmp = malloc(tn);
    if (!tmp) {
        free(target);
        return dp_fail(DP_ERR_NOMEM, "out of memory writing %s", path);
    }
    snprintf(tmp, tn, "%s.tmp.%ld", target, (long)getpid());
    dp_status st = write_file(w, tmp, path, exists ? &sb : NULL);
    if (st == DP_OK && rename(tmp, target) != 0) {
        st = dp_fail(DP_ERR_IO, "cannot rename %s to %s: %s", tmp, target, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    free(target);
    return st;
}
