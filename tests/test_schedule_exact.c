/* test_schedule_exact.c: dualpipe and dualpipev reproduce, rank by rank, the exact order of
 * compute of the reference DualPipe/DualPipeV step() for every configuration recorded in
 * tests/data/dualpipe_reference_orders.txt (F/B/I/W, FIFO order of W, overlapped pairs). */
#include <stdlib.h>
#include <string.h>

#include "engine/schedule.h"
#include "tests/tap.h"

/* Writes one rank's actions in the data file's token format. */
static void format_rank(const dp_schedule *s, int r, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->num_actions[r] && len < n; i++) {
        const dp_action *a = &s->actions[r][i];
        int paired = i > 0 && s->actions[r][i - 1].overlap;
        len += (size_t)snprintf(buf + len, n - len, "%s%s%c%d.%d", i ? " " : "", paired ? "&" : "",
                                dp_action_letter(a->kind), a->local_stage, a->chunk);
    }
}

int main(void)
{
    const char *srcdir = getenv("top_srcdir");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/dualpipe_reference_orders.txt", srcdir ? srcdir : ".");
    FILE *f = fopen(path, "r");
    if (!f) {
        tap_ok(0, "open %s", path);
        return tap_done();
    }
    static char line[1 << 16], mine[1 << 16];
    int configs = 0, rank_lines = 0;
    char last_key[64] = "";
    dp_schedule *s = NULL;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = '\0';
        char name[32];
        int ranks, chunks, rank, off = 0;
        if (sscanf(line, "%31s %d %d %d: %n", name, &ranks, &chunks, &rank, &off) != 4 || off == 0) {
            tap_ok(0, "parse data line '%.40s'", line);
            continue;
        }
        char key[64];
        snprintf(key, sizeof key, "%s %d %d", name, ranks, chunks);
        if (strcmp(key, last_key) != 0) {
            dp_schedule_free(s);
            s = NULL;
            dp_schedule_params p = {.ranks = ranks, .chunks = chunks};
            if (dp_schedule_generate(name, &p, &s) != DP_OK) {
                tap_ok(0, "%s: generate: %s", key, dp_last_error());
                continue;
            }
            tap_ok(dp_schedule_validate(s, NULL) == DP_OK, "%s: validates %s", key, dp_last_error());
            snprintf(last_key, sizeof last_key, "%s", key);
            configs++;
        }
        if (!s) continue;
        format_rank(s, rank, mine, sizeof mine);
        int same = strcmp(mine, line + off) == 0;
        rank_lines++;
        if (!tap_ok(same, "%s rank %d: order of compute equals the reference", key, rank)) {
            tap_diag("reference: %s", line + off);
            tap_diag("ours:      %s", mine);
        }
    }
    dp_schedule_free(s);
    fclose(f);
    tap_ok(configs >= 60 && rank_lines >= 300, "covered %d configurations, %d rank orders", configs, rank_lines);
    return tap_done();
}
