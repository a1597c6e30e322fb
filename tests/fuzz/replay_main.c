/* replay_main.c: a main for the fuzz targets without libFuzzer. It runs LLVMFuzzerTestOneInput on
 * every file named, or on every file in a directory named, so that `make check` builds the
 * targets with any compiler and replays their seeds: a target cannot rot unseen between fuzz runs. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return 1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got = 1; buf && got;) {
        if (n == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (!b) free(buf);
            buf = b;
            if (!buf) break;
        }
        got = fread(buf + n, 1, cap - n, fp);
        n += got;
    }
    fclose(fp);
    if (!buf) {
        fprintf(stderr, "replay: out of memory reading %s\n", path);
        return 1;
    }
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int files = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "replay: no such file or directory: %s\n", argv[i]);
            return 1;
        }
        if (!S_ISDIR(sb.st_mode)) {
            bad |= replay_file(argv[i]), files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        for (struct dirent *e; d && (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            size_t len = strlen(argv[i]) + strlen(e->d_name) + 2;
            char *path = malloc(len);
            if (!path) return 1;
            snprintf(path, len, "%s/%s", argv[i], e->d_name);
            bad |= replay_file(path), files++;
            free(path);
        }
        if (d) closedir(d);
    }
    printf("replayed %d inputs\n", files);
    return bad || files == 0;
}
