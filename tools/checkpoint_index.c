/* checkpoint_index.c: index.json written and read (see checkpoint_index.h). The reader checks
 * every field it uses for its type and range, so that whatever it accepts can be acted on. */
#include "tools/checkpoint_index.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/eplb_json.h"

/* ----------------------------------------------------------------------------
 * writing */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *fmt, ...)
{
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n + 256;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b, t->cap = cap;
    }
}

/* The names written are dualpipe's own (kinds, dtypes, file names): JSON-escaped anyway. */
static void put_string(text *t, const char *s)
{
    put(t, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') put(t, "\\%c", c);
        else if (c < 0x20) put(t, "\\u%04x", c);
        else put(t, "%c", c);
    }
    put(t, "\"");
}

char *checkpoint_index_format(const checkpoint_index *x, size_t *size)
{
    text t = {.cap = 1024};
    if (!(t.buf = malloc(t.cap))) return NULL;
    put(&t, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n  \"step\": %d,\n", CHECKPOINT_FORMAT, x->version, x->step);
    put(&t, "  \"model\": {\"hidden\": %d, \"ffn\": %d, \"layers\": %d, \"tokens\": %d, \"layer_kinds\": [", x->hidden,
        x->ffn, x->layers, x->tokens);
    for (int l = 0; l < x->layers; l++) {
        if (l) put(&t, ", ");
        put_string(&t, x->layer_kinds[l]);
    }
    put(&t, "],\n            \"dtype\": ");
    put_string(&t, x->dtype);
    put(&t, ", \"loss\": ");
    put_string(&t, x->loss);
    put(&t, ", \"seed\": %llu, \"norm_eps\": %.9g", (unsigned long long)x->seed, x->norm_eps);
    if (x->moe_experts > 0)
        put(&t, ",\n            \"moe\": {\"experts\": %d, \"topk\": %d, \"groups\": %d, \"topk_groups\": %d, "
                "\"expert_hidden\": %d, \"shared_experts\": %d, \"route_scale\": %.9g, \"bias_update_speed\": %.9g}",
            x->moe_experts, x->moe_topk, x->moe_groups, x->moe_topk_groups, x->moe_expert_hidden, x->moe_shared_experts,
            x->moe_route_scale, x->moe_bias_update_speed);
    put(&t, "},\n");
    put(&t, "  \"optimizer\": {\"kind\": ");
    put_string(&t, x->optimizer);
    put(&t, ", \"lr\": %.9g, \"weight_decay\": %.9g, \"momentum\": %.9g, \"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g},\n",
        x->lr, x->weight_decay, x->momentum, x->beta1, x->beta2, x->eps);
    put(&t, "  \"run\": {\"schedule\": ");
    put_string(&t, x->schedule);
    put(&t, ", \"pp\": %d, \"dp\": %d, \"ep\": %d, \"chunks\": %d},\n", x->pp, x->dp, x->ep, x->chunks);
    put(&t, "  \"data\": {\"source\": ");
    put_string(&t, x->data_source);
    put(&t, ", \"position\": %d},\n  \"files\": [\n", x->data_position);
    for (int i = 0; i < x->num_files; i++) {
        const checkpoint_file *f = &x->files[i];
        put(&t, "    {\"name\": ");
        put_string(&t, f->name);
        put(&t, ", \"bytes\": %llu, \"crc32\": \"%08x\", \"tensors\": %d}%s\n", (unsigned long long)f->bytes,
            (unsigned)f->crc32, f->tensors, i + 1 < x->num_files ? "," : "");
    }
    put(&t, "  ]\n}\n");
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    *size = t.len;
    return t.buf;
}

/* ----------------------------------------------------------------------------
 * reading */

typedef struct {
    const char *path;
    char *err;
    size_t errlen;
} reader;

static int fail(reader *r, const json_value *at, const char *key, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(r->err, r->errlen, "%s: line %d: \"%s\" %s", r->path, at ? at->line : 1, key, why);
    return 1;
}

static const json_value *member(reader *r, const json_value *obj, const char *key, const char *full, json_kind kind,
                                int *bad)
{
    const json_value *v = json_member(obj, key);
    static const char *const kinds[] = {"null", "true or false", "a number", "a string", "an array", "an object"};
    if (*bad) return NULL;
    if (!v) *bad = fail(r, obj, full, "is missing");
    else if (v->kind != kind) *bad = fail(r, v, full, "must be %s", kinds[kind]);
    return *bad ? NULL : v;
}

static int get_int(reader *r, const json_value *obj, const char *key, const char *full, double lo, double hi, int *out,
                   int *bad)
{
    const json_value *v = member(r, obj, key, full, JSON_NUMBER, bad);
    if (!v) return 1;
    if (!(v->number >= lo && v->number <= hi) || v->number != floor(v->number)) {
        *bad = fail(r, v, full, "must be a whole number from %.0f to %.0f, got %.17g", lo, hi, v->number);
        return 1;
    }
    *out = (int)v->number;
    return 0;
}

static int get_number(reader *r, const json_value *obj, const char *key, const char *full, double *out, int *bad)
{
    const json_value *v = member(r, obj, key, full, JSON_NUMBER, bad);
    if (!v) return 1;
    if (!isfinite(v->number) || v->number < 0) {
        *bad = fail(r, v, full, "must be a finite number >= 0, got %.17g", v->number);
        return 1;
    }
    *out = v->number;
    return 0;
}

/* A short word: letters, digits, '-', '_', '.', as dualpipe writes them. */
static int get_word(reader *r, const json_value *v, const char *full, char *out, size_t size, int *bad)
{
    if (*bad) return 1;
    if (!v || v->kind != JSON_STRING) {
        *bad = fail(r, v, full, "must be a string");
        return 1;
    }
    size_t n = strlen(v->string);
    int plain = n > 0 && n < size;
    for (size_t i = 0; plain && i < n; i++) {
        char c = v->string[i];
        plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                c == '.';
    }
    if (!plain) {
        *bad = fail(r, v, full, "must be 1 to %zu letters, digits, '-', '_' or '.', got \"%.40s\"", size - 1, v->string);
        return 1;
    }
    memcpy(out, v->string, n + 1);
    return 0;
}

static int get_string(reader *r, const json_value *obj, const char *key, const char *full, char *out, size_t size,
                      int *bad)
{
    const json_value *v = member(r, obj, key, full, JSON_STRING, bad);
    return v ? get_word(r, v, full, out, size, bad) : 1;
}

static int parse_files(reader *r, const json_value *top, checkpoint_index *x, int *bad)
{
    const json_value *files = member(r, top, "files", "files", JSON_ARRAY, bad);
    if (!files) return 1;
    if (files->count < 1 || files->count > CHECKPOINT_MAX_FILES)
        return *bad = fail(r, files, "files", "must list 1 to %d files, it lists %d", CHECKPOINT_MAX_FILES, files->count);
    if (!(x->files = calloc((size_t)files->count, sizeof *x->files)))
        return *bad = fail(r, files, "files", "is too long for the memory left");
    x->num_files = files->count;
    for (int i = 0; i < files->count && !*bad; i++) {
        const json_value *f = &files->items[i];
        checkpoint_file *cf = &x->files[i];
        char key[64];
        snprintf(key, sizeof key, "files[%d]", i);
        if (f->kind != JSON_OBJECT) return *bad = fail(r, f, key, "must be an object {name, bytes, crc32, tensors}");
        snprintf(key, sizeof key, "files[%d].name", i);
        if (get_string(r, f, "name", key, cf->name, sizeof cf->name, bad)) return 1;
        if (cf->name[0] == '.')
            return *bad = fail(r, json_member(f, "name"), key, "must not start with '.' (\"%s\"): files lie in the "
                                                               "checkpoint's own directory", cf->name);
        for (int k = 0; k < i; k++)
            if (strcmp(x->files[k].name, cf->name) == 0)
                return *bad = fail(r, json_member(f, "name"), key, "names \"%s\" a second time", cf->name);
        snprintf(key, sizeof key, "files[%d].bytes", i);
        const json_value *b = member(r, f, "bytes", key, JSON_NUMBER, bad);
        /* a double holds every whole number up to 2^53 exactly */
        if (b && (!(b->number >= 8 && b->number <= 9007199254740992.0) || b->number != floor(b->number)))
            return *bad = fail(r, b, key, "must be a whole number of bytes from 8 (a safetensors file's first 8 "
                                          "bytes are its header's length) to 2^53, got %.17g", b->number);
        if (b) cf->bytes = (uint64_t)b->number;
        snprintf(key, sizeof key, "files[%d].crc32", i);
        const json_value *c = member(r, f, "crc32", key, JSON_STRING, bad);
        if (c) {
            char *end;
            unsigned long v = strtoul(c->string, &end, 16);
            if (strlen(c->string) != 8 || *end || strspn(c->string, "0123456789abcdefABCDEF") != 8)
                return *bad = fail(r, c, key, "must be 8 hexadecimal digits, got \"%.20s\"", c->string);
            cf->crc32 = (uint32_t)v;
        }
        snprintf(key, sizeof key, "files[%d].tensors", i);
        get_int(r, f, "tensors", key, 0, 1 << 30, &cf->tensors, bad);
    }
    return *bad;
}

int checkpoint_index_parse(const char *bytes, size_t size, const char *path, checkpoint_index *x, char *err,
                           size_t errlen)
{
    memset(x, 0, sizeof *x);
    reader r = {path, err, errlen};
    err[0] = 0;
    if (size > CHECKPOINT_MAX_INDEX_BYTES) {
        snprintf(err, errlen, "%s: %zu bytes, more than an index can be (%u): not a checkpoint's index.json", path,
                 size, CHECKPOINT_MAX_INDEX_BYTES);
        return 1;
    }
    if (memchr(bytes, 0, size)) {
        snprintf(err, errlen, "%s: holds a NUL byte at offset %zu: not JSON text", path,
                 (size_t)((const char *)memchr(bytes, 0, size) - bytes));
        return 1;
    }
    char *textz = malloc(size + 1), jerr[256];
    if (!textz) {
        snprintf(err, errlen, "%s: out of memory for %zu bytes", path, size);
        return 1;
    }
    memcpy(textz, bytes, size);
    textz[size] = 0;
    json_value *top = json_parse(textz, jerr, (int)sizeof jerr);
    free(textz);
    if (!top) {
        snprintf(err, errlen, "%s: line %s (not valid JSON)", path, jerr);
        return 1;
    }
    int bad = 0;
    char format[32];
    if (top->kind != JSON_OBJECT) bad = fail(&r, top, "(top)", "must be a JSON object");
    get_string(&r, top, "format", "format", format, sizeof format, &bad);
    if (!bad && strcmp(format, CHECKPOINT_FORMAT) != 0)
        bad = fail(&r, json_member(top, "format"), "format", "must be \"%s\", got \"%s\"", CHECKPOINT_FORMAT, format);
    get_int(&r, top, "version", "version", 1, 1e9, &x->version, &bad);
    if (!bad && x->version != CHECKPOINT_VERSION)
        bad = fail(&r, json_member(top, "version"), "version", "is %d: this dualpipe reads version %d (written by a %s "
                                                               "dualpipe)", x->version, CHECKPOINT_VERSION,
                   x->version > CHECKPOINT_VERSION ? "newer" : "different");
    get_int(&r, top, "step", "step", 0, CHECKPOINT_MAX_STEP, &x->step, &bad);
    const json_value *m = member(&r, top, "model", "model", JSON_OBJECT, &bad);
    get_int(&r, m, "hidden", "model.hidden", 1, 1 << 16, &x->hidden, &bad);
    get_int(&r, m, "ffn", "model.ffn", 1, 1 << 20, &x->ffn, &bad);
    get_int(&r, m, "layers", "model.layers", 1, 1 << 16, &x->layers, &bad);
    get_int(&r, m, "tokens", "model.tokens", 1, 1 << 20, &x->tokens, &bad);
    const json_value *kinds = member(&r, m, "layer_kinds", "model.layer_kinds", JSON_ARRAY, &bad);
    if (kinds && kinds->count != x->layers)
        bad = fail(&r, kinds, "model.layer_kinds", "lists %d kinds for %d layers", kinds->count, x->layers);
    if (!bad && !(x->layer_kinds = calloc((size_t)x->layers, sizeof *x->layer_kinds)))
        bad = fail(&r, kinds, "model.layer_kinds", "is too long for the memory left");
    for (int l = 0; !bad && l < x->layers; l++) {
        char key[48];
        snprintf(key, sizeof key, "model.layer_kinds[%d]", l);
        get_word(&r, &kinds->items[l], key, x->layer_kinds[l], sizeof x->layer_kinds[l], &bad);
    }
    get_string(&r, m, "dtype", "model.dtype", x->dtype, sizeof x->dtype, &bad);
    get_string(&r, m, "loss", "model.loss", x->loss, sizeof x->loss, &bad);
    int seed = 0;
    get_int(&r, m, "seed", "model.seed", 0, 2147483647, &seed, &bad);
    x->seed = (uint64_t)seed;
    get_number(&r, m, "norm_eps", "model.norm_eps", &x->norm_eps, &bad);
    /* "moe" is there only for a model with MoE layers */
    const json_value *moe = !bad && m ? json_member(m, "moe") : NULL;
    if (moe) {
        moe = member(&r, m, "moe", "model.moe", JSON_OBJECT, &bad);
        get_int(&r, moe, "experts", "model.moe.experts", 1, 1 << 20, &x->moe_experts, &bad);
        get_int(&r, moe, "topk", "model.moe.topk", 1, 1 << 20, &x->moe_topk, &bad);
        get_int(&r, moe, "groups", "model.moe.groups", 1, 1 << 20, &x->moe_groups, &bad);
        get_int(&r, moe, "topk_groups", "model.moe.topk_groups", 1, 1 << 20, &x->moe_topk_groups, &bad);
        get_int(&r, moe, "expert_hidden", "model.moe.expert_hidden", 1, 1 << 20, &x->moe_expert_hidden, &bad);
        get_int(&r, moe, "shared_experts", "model.moe.shared_experts", 0, 1 << 20, &x->moe_shared_experts, &bad);
        get_number(&r, moe, "route_scale", "model.moe.route_scale", &x->moe_route_scale, &bad);
        get_number(&r, moe, "bias_update_speed", "model.moe.bias_update_speed", &x->moe_bias_update_speed, &bad);
    }
    const json_value *o = member(&r, top, "optimizer", "optimizer", JSON_OBJECT, &bad);
    get_string(&r, o, "kind", "optimizer.kind", x->optimizer, sizeof x->optimizer, &bad);
    get_number(&r, o, "lr", "optimizer.lr", &x->lr, &bad);
    get_number(&r, o, "weight_decay", "optimizer.weight_decay", &x->weight_decay, &bad);
    get_number(&r, o, "momentum", "optimizer.momentum", &x->momentum, &bad);
    get_number(&r, o, "beta1", "optimizer.beta1", &x->beta1, &bad);
    get_number(&r, o, "beta2", "optimizer.beta2", &x->beta2, &bad);
    get_number(&r, o, "eps", "optimizer.eps", &x->eps, &bad);
    const json_value *run = member(&r, top, "run", "run", JSON_OBJECT, &bad);
    get_string(&r, run, "schedule", "run.schedule", x->schedule, sizeof x->schedule, &bad);
    get_int(&r, run, "pp", "run.pp", 1, 1 << 20, &x->pp, &bad);
    get_int(&r, run, "dp", "run.dp", 1, 1 << 20, &x->dp, &bad);
    /* "ep" is there in checkpoints written since expert parallelism was recorded apart from dp */
    x->ep = 1;
    if (!bad && run && json_member(run, "ep")) get_int(&r, run, "ep", "run.ep", 1, 1 << 20, &x->ep, &bad);
    get_int(&r, run, "chunks", "run.chunks", 1, 1 << 20, &x->chunks, &bad);
    const json_value *d = member(&r, top, "data", "data", JSON_OBJECT, &bad);
    get_string(&r, d, "source", "data.source", x->data_source, sizeof x->data_source, &bad);
    get_int(&r, d, "position", "data.position", 0, CHECKPOINT_MAX_STEP, &x->data_position, &bad);
    if (!bad) parse_files(&r, top, x, &bad);
    json_free(top);
    if (bad) checkpoint_index_free(x);
    return bad;
}

void checkpoint_index_free(checkpoint_index *x)
{
    free(x->layer_kinds);
    free(x->files);
    x->layer_kinds = NULL, x->files = NULL, x->num_files = 0;
}
