/* test_safetensors.c: the safetensors reader and writer: a written file reads back (from its
 * path or from memory) with its names, dtypes, shapes, bytes and metadata (and matches a header
 * written by hand), and each kind of malformed file is refused with a message naming what is
 * wrong. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "tests/tap.h"

static char dir[64];

static const char *path_of(const char *name)
{
    static char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* A file of a u64 length (header_len, or strlen(header) when ~0), the header and data bytes. */
static const char *raw_file(const char *name, uint64_t header_len, const char *header, const void *data, size_t n)
{
    const char *p = path_of(name);
    FILE *fp = fopen(p, "wb");
    if (!fp) return p;
    uint64_t len = header_len == ~UINT64_C(0) ? strlen(header) : header_len;
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(len >> (8 * i));
    fwrite(b, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    if (n) fwrite(data, 1, n, fp);
    fclose(fp);
    return p;
}

static void expect_refused(const char *what, const char *path, dp_status want, const char *words)
{
    dp_safetensors *f = (dp_safetensors *)1;
    dp_status st = dp_safetensors_open(path, &f);
    tap_ok(st == want && f == NULL && strstr(dp_last_error(), words) != NULL, "%s refused: %s", what, dp_last_error());
    if (st == DP_OK) dp_safetensors_close(f);
}

static void round_trip(void)
{
    float a[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    int32_t b[3] = {7, -1, 2147483647};
    int64_t sa[2] = {2, 3}, sb[1] = {3};
    dp_safetensors_writer *w;
    tap_ok(dp_safetensors_writer_create(&w) == DP_OK, "writer created");
    tap_ok(dp_safetensors_add(w, "layers.0.w\"1\\", DP_ST_F32, 2, sa, a) == DP_OK, "F32 [2, 3] added (a name to escape)");
    tap_ok(dp_safetensors_add(w, "labels", DP_ST_I32, 1, sb, b) == DP_OK, "I32 [3] added");
    tap_ok(dp_safetensors_add(w, "scalar", DP_ST_F32, 0, NULL, a) == DP_OK, "F32 scalar added");
    tap_ok(dp_safetensors_add(w, "labels", DP_ST_I32, 1, sb, b) == DP_ERR_INVALID && strstr(dp_last_error(), "twice"),
           "a name added twice is refused: %s", dp_last_error());
    tap_ok(dp_safetensors_add_metadata(w, "format", "pt") == DP_OK, "metadata added");
    const char *p = path_of("good.safetensors");
    tap_ok(dp_safetensors_write(w, p) == DP_OK, "written: %s", dp_last_error());
    dp_safetensors_writer_destroy(w);

    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    tap_ok(access(tmp, F_OK) != 0, "no temporary file is left");

    dp_safetensors *f = NULL;
    tap_ok(dp_safetensors_open(p, &f) == DP_OK, "read back: %s", dp_last_error());
    if (!f) return;
    tap_is_int(dp_safetensors_count(f), 3, "three tensors");
    const dp_st_tensor *t = dp_safetensors_tensor(f, 0);
    tap_is_str(t->name, "layers.0.w\"1\\", "the first name unescaped");
    tap_ok(t->dtype == DP_ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->begin == 0 && t->end == 24,
           "its dtype, shape and offsets");
    tap_ok(memcmp(dp_safetensors_data(f, t), a, sizeof a) == 0, "its bytes");
    t = dp_safetensors_tensor(f, 2);
    tap_ok(t->ndim == 0 && t->end - t->begin == 4, "a scalar has no dims and one element");
    int32_t got[3] = {0};
    tap_ok(dp_safetensors_get(f, "labels", DP_ST_I32, 1, sb, got) == DP_OK && memcmp(got, b, sizeof b) == 0,
           "get copies an I32 tensor");
    int64_t wrong[1] = {4};
    tap_ok(dp_safetensors_get(f, "labels", DP_ST_I32, 1, wrong, got) == DP_ERR_INVALID &&
               strstr(dp_last_error(), "\"labels\" is I32 [3], expected I32 [4]"),
           "get with the wrong shape says both: %s", dp_last_error());
    tap_ok(dp_safetensors_get(f, "labels", DP_ST_F32, 1, sb, got) == DP_ERR_INVALID && strstr(dp_last_error(), "F32"),
           "get with the wrong dtype: %s", dp_last_error());
    tap_ok(dp_safetensors_get(f, "nothing", DP_ST_F32, 1, sb, got) == DP_ERR_NOT_FOUND && strstr(dp_last_error(), "nothing"),
           "get of a missing tensor: %s", dp_last_error());
    tap_ok(dp_safetensors_metadata(f, "format") && strcmp(dp_safetensors_metadata(f, "format"), "pt") == 0,
           "metadata read back");
    dp_safetensors_close(f);

    /* the exact bytes: the header as written by hand, padded to 8 with spaces */
    FILE *fp = fopen(p, "rb");
    unsigned char buf[512];
    size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
    if (fp) fclose(fp);
    const char *want = "{\"__metadata__\":{\"format\":\"pt\"},\"layers.0.w\\\"1\\\\\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                       "\"data_offsets\":[0,24]},\"labels\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[24,36]},"
                       "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[36,40]}}";
    uint64_t hl = 0;
    for (int i = 7; i >= 0 && n >= 8; i--) hl = hl << 8 | buf[i];
    size_t wl = strlen(want);
    int same = n >= 8 + hl && hl % 8 == 0 && hl >= wl && hl < wl + 8 && memcmp(buf + 8, want, wl) == 0;
    for (size_t i = wl; same && i < hl; i++) same = buf[8 + i] == ' ';
    tap_ok(same && n == 8 + hl + 40, "the file is the expected header (%llu bytes, padded) and 40 data bytes",
           (unsigned long long)hl);

    /* a header written elsewhere: spaces, keys in another order, unknown keys skipped */
    float v[2] = {4.0f, 5.0f};
    const char *other = raw_file("other.safetensors", ~UINT64_C(0),
                                 " { \"x\" : { \"data_offsets\" : [ 0 , 8 ], \"extra\": {\"a\": [1, 2.5e3, true, null]},"
                                 " \"shape\" : [ 2 ] , \"dtype\" : \"F32\" } , \"__metadata__\" : { } } ",
                                 v, sizeof v);
    tap_ok(dp_safetensors_open(other, &f) == DP_OK, "a header from elsewhere reads: %s", dp_last_error());
    if (f) {
        float g[2];
        int64_t s2[1] = {2};
        tap_ok(dp_safetensors_get(f, "x", DP_ST_F32, 1, s2, g) == DP_OK && g[0] == 4.0f && g[1] == 5.0f, "and its bytes");
        dp_safetensors_close(f);
    }
}

static void malformed(void)
{
    char data[64] = {0};
    expect_refused("a missing file", path_of("none.safetensors"), DP_ERR_NOT_FOUND, "none.safetensors");
    expect_refused("a directory", dir, DP_ERR_IO, "not a regular file");
    FILE *fp = fopen(path_of("short"), "wb");
    if (fp) fwrite("abc", 1, 3, fp), fclose(fp);
    expect_refused("a 3-byte file", path_of("short"), DP_ERR_INVALID, "truncated");
    expect_refused("a huge header length", raw_file("huge", UINT64_C(1) << 40, "{}", NULL, 0), DP_ERR_INVALID,
                   "header too large");
    expect_refused("a header longer than the file", raw_file("long", 4096, "{}", NULL, 0), DP_ERR_INVALID, "truncated");
    expect_refused("bad JSON", raw_file("badjson", ~UINT64_C(0), "{\"x\": {\"dtype\": \"F32\",", NULL, 0),
                   DP_ERR_INVALID, "bad JSON");
    expect_refused("text after the object", raw_file("trailing", ~UINT64_C(0), "{} x", NULL, 0), DP_ERR_INVALID,
                   "after the header");
    expect_refused("an unknown dtype",
                   raw_file("dtype", ~UINT64_C(0), "{\"x\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4),
                   DP_ERR_INVALID, "unknown dtype \"F12\"");
    expect_refused("offsets past the end",
                   raw_file("past", ~UINT64_C(0), "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 8),
                   DP_ERR_INVALID, "out of range");
    expect_refused("offsets reversed",
                   raw_file("reversed", ~UINT64_C(0), "{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", data, 8),
                   DP_ERR_INVALID, "out of range");
    expect_refused("a shape not matching the bytes",
                   raw_file("shape", ~UINT64_C(0), "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, 8),
                   DP_ERR_INVALID, "need 12 bytes");
    expect_refused("overlapping tensors",
                   raw_file("overlap", ~UINT64_C(0),
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                            data, 12),
                   DP_ERR_INVALID, "overlap");
    expect_refused("a name twice",
                   raw_file("twice", ~UINT64_C(0),
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                            data, 8),
                   DP_ERR_INVALID, "twice");
    expect_refused("an entry without data_offsets",
                   raw_file("nooffsets", ~UINT64_C(0), "{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", data, 4),
                   DP_ERR_INVALID, "tensor \"x\": an entry has no data_offsets");
    expect_refused("a negative dim", raw_file("negative", ~UINT64_C(0),
                                              "{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data, 4),
                   DP_ERR_INVALID, "non-negative integer");
    expect_refused("an overflowing shape",
                   raw_file("overflow", ~UINT64_C(0),
                            "{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", data, 4),
                   DP_ERR_INVALID, "overflows");
    expect_refused("metadata that is not strings",
                   raw_file("meta", ~UINT64_C(0), "{\"__metadata__\":{\"a\":1}}", NULL, 0), DP_ERR_INVALID,
                   "__metadata__ must map strings");
    /* every prefix of a good file is refused, never read past */
    const char *good = path_of("good.safetensors");
    fp = fopen(good, "rb");
    unsigned char buf[512];
    size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
    if (fp) fclose(fp);
    int all = n > 0;
    for (size_t k = 0; k + 1 < n; k++) {
        FILE *o = fopen(path_of("prefix"), "wb");
        if (!o) break;
        fwrite(buf, 1, k, o);
        fclose(o);
        dp_safetensors *f = NULL;
        if (dp_safetensors_open(path_of("prefix"), &f) != DP_ERR_INVALID) all = 0, dp_safetensors_close(f);
    }
    tap_ok(all, "each of the %zu shorter prefixes of a good file is refused", n ? n - 1 : 0);

    /* the same bytes from memory: the same tensors, and the same refusals, named as asked */
    dp_safetensors *f = NULL, *g = NULL;
    int same = n > 0 && dp_safetensors_open_bytes(buf, n, "in memory", &f) == DP_OK &&
               dp_safetensors_open(path_of("good.safetensors"), &g) == DP_OK &&
               dp_safetensors_count(f) == dp_safetensors_count(g) &&
               dp_safetensors_count(f) == 3;
    for (int i = 0; same && i < dp_safetensors_count(f); i++) {
        const dp_st_tensor *a = dp_safetensors_tensor(f, i), *b = dp_safetensors_tensor(g, i);
        same = strcmp(a->name, b->name) == 0 && a->end - a->begin == b->end - b->begin &&
               memcmp(dp_safetensors_data(f, a), dp_safetensors_data(g, b), a->end - a->begin) == 0;
    }
    tap_ok(same, "a good file's bytes open from memory with the same tensors and bytes");
    dp_safetensors_close(f), dp_safetensors_close(g);
    f = (dp_safetensors *)1;
    dp_status st = dp_safetensors_open_bytes(buf, n / 2, "half.bin", &f);
    tap_ok(st == DP_ERR_INVALID && f == NULL && strstr(dp_last_error(), "half.bin: "),
           "half of it is refused from memory too: %s", dp_last_error());
}

/* Where the writer's bytes land: through a link into its target (the link and the target's
 * mode kept), never over a FIFO, and into a stream a program opened itself. */
static void writer_paths(void)
{
    int64_t shape[1] = {2};
    float v[2] = {1.0f, 2.0f};
    dp_safetensors_writer *w;
    if (dp_safetensors_writer_create(&w) != DP_OK || dp_safetensors_add(w, "v", DP_ST_F32, 1, shape, v) != DP_OK) {
        tap_ok(0, "writer for the path tests: %s", dp_last_error());
        return;
    }
    FILE *fp = fopen(path_of("target"), "w");
    if (fp) fputs("old", fp), fclose(fp);
    chmod(path_of("target"), 0640);
    unlink(path_of("link"));
    int linked = symlink("target", path_of("link")) == 0;
    struct stat st;
    dp_status rc = dp_safetensors_write(w, path_of("link"));
    dp_safetensors *f = NULL;
    tap_ok(linked && rc == DP_OK && lstat(path_of("link"), &st) == 0 && S_ISLNK(st.st_mode) &&
               stat(path_of("target"), &st) == 0 && (st.st_mode & 07777) == 0640 &&
               dp_safetensors_open(path_of("target"), &f) == DP_OK,
           "written through a link: the link kept, its 0640 target replaced");
    dp_safetensors_close(f);

    unlink(path_of("fifo"));
    mkfifo(path_of("fifo"), 0600);
    tap_ok(dp_safetensors_write(w, path_of("fifo")) == DP_ERR_INVALID && strstr(dp_last_error(), "not a regular file") &&
               lstat(path_of("fifo"), &st) == 0 && S_ISFIFO(st.st_mode),
           "a FIFO path is refused and left a FIFO: %s", dp_last_error());

    /* the stream gets the bytes the path got */
    fp = fopen(path_of("stream"), "wb");
    rc = fp ? dp_safetensors_write_stream(w, fp, "stream") : DP_ERR_IO;
    if (fp) fclose(fp);
    char a[256] = {0}, b[256] = {0};
    FILE *fa = fopen(path_of("target"), "rb"), *fb = fopen(path_of("stream"), "rb");
    size_t na = fa ? fread(a, 1, sizeof a, fa) : 0, nb = fb ? fread(b, 1, sizeof b, fb) : 0;
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    tap_ok(rc == DP_OK && na > 0 && na == nb && memcmp(a, b, na) == 0, "a stream gets the same %zu bytes", na);
    dp_safetensors_writer_destroy(w);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/dp-safetensors-XXXXXX");
    const char *tmpdir = getenv("TMPDIR");
    if (tmpdir && strlen(tmpdir) < 30) snprintf(dir, sizeof dir, "%s/dp-safetensors-XXXXXX", tmpdir);
    if (!mkdtemp(dir)) tap_skip_all("cannot create a temporary directory");
    round_trip();
    malformed();
    writer_paths();
    int rc = tap_done();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) tap_diag("could not remove %s", dir);
    return rc;
}
