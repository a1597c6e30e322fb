/* test_schedule_exact.c: every schedule held to an order recorded from an independent
 * implementation, rank by rank. dualpipe and dualpipev: deepseek-ai/DualPipe's step()
 * (tests/data/dualpipe_reference_orders.txt: F/B/I/W, FIFO order of W, overlapped pairs), equal
 * action for action. gpipe, 1f1b and interleaved-1f1b: torch.distributed.pipelining's
 * schedules (tests/data/torch_pipelining_orders.txt), equal action for action. zb1p: torch's
 * zero-bubble schedule places its W actions by another rule (the data file's header says how),
 * so there the same F and I order, the same W order, and the same bubble are required. */
#include <stdlib.h>
#include <string.h>

#include "engine/schedule.h"
#include "tests/tap.h"

/* Writes one rank's actions in the data files' token format; `skip_w`: without the W actions,
 * `only_w`: the W actions alone. */
static void format_rank(const dp_schedule *s, int r, char *buf, size_t n, int skip_w, int only_w)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->num_actions[r] && len < n; i++) {
        const dp_action *a = &s->actions[r][i];
        if ((skip_w && a->kind == DP_ACT_W) || (only_w && a->kind != DP_ACT_W)) continue;
        int paired = i > 0 && s->actions[r][i - 1].overlap;
        len += (size_t)snprintf(buf + len, n - len, "%s%s%c%d.%d", len ? " " : "", paired ? "&" : "",
                                dp_action_letter(a->kind), a->local_stage, a->chunk);
    }
}

/* A schedule built from recorded lines, on the placement our generator of the same name uses
 * (one pipe: stage s on rank s mod R, local stage s / R). Returns NULL when a line does not parse. */
static dp_schedule *from_lines(const dp_schedule *ours, char lines[][1 << 14])
{
    dp_schedule *s;
    int R = ours->num_ranks;
    if (dp_schedule_alloc(ours->name, R, ours->num_local_stages, 1, ours->num_stages, ours->num_chunks, &s) != DP_OK)
        return NULL;
    for (int st = 0; st < ours->num_stages; st++) dp_schedule_place(s, 0, st, st % R, st / R);
    for (int r = 0; r < R; r++) {
        char *p = lines[r], *tok;
        while ((tok = strtok(p, " ")) != NULL) {
            p = NULL;
            int local, chunk;
            char kind;
            if (sscanf(tok, "%c%d.%d", &kind, &local, &chunk) != 3 || !strchr("FBIW", kind)) {
                dp_schedule_free(s);
                return NULL;
            }
            int k = kind == 'F' ? DP_ACT_F : kind == 'B' ? DP_ACT_B : kind == 'I' ? DP_ACT_I : DP_ACT_W;
            if (dp_schedule_push(s, r, k, local, chunk, 0) != DP_OK) {
                dp_schedule_free(s);
                return NULL;
            }
        }
    }
    return s;
}

/* The most micro-batches past their F and before their W at once on rank r. */
static int max_awaiting_w(const dp_schedule *s, int r)
{
    int now = 0, most = 0;
    for (int i = 0; i < s->num_actions[r]; i++) {
        int k = s->actions[r][i].kind;
        now += k == DP_ACT_F ? 1 : k == DP_ACT_W || k == DP_ACT_B ? -1 : 0;
        most = now > most ? now : most;
    }
    return most;
}

/* zb1p against torch's zero-bubble order: F and I the same, W the same and in the same order
 * (oldest first), the recorded order valid here too, and the same idle per rank under the
 * default costs (F=1, B=2, W=1): the ZB1P bubble (PP-1)(F+B-2W) for both */
static void compare_zero_bubble(const dp_schedule *ours, char lines[][1 << 14], const char *key)
{
    static char mine[1 << 14], theirs[1 << 14];
    int R = ours->num_ranks, ok = 1;
    dp_schedule *t = from_lines(ours, lines);
    if (!t) {
        tap_ok(0, "%s: the recorded lines parse", key);
        return;
    }
    for (int r = 0; r < R && ok; r++)
        for (int w = 0; w < 2 && ok; w++) {
            format_rank(ours, r, mine, sizeof mine, !w, w);
            format_rank(t, r, theirs, sizeof theirs, !w, w);
            if (strcmp(mine, theirs) != 0) {
                tap_diag("%s rank %d, %s: torch %s", key, r, w ? "W alone" : "F and I", theirs);
                tap_diag("%s rank %d, %s: ours  %s", key, r, w ? "W alone" : "F and I", mine);
                ok = 0;
            }
        }
    tap_ok(ok, "%s: on every rank the same F and I as torch in the same order, and the same W in the same order", key);
    /* where the Ws may sit: from its F to its W a micro-batch holds what W needs; torch's ZB-H1
     * keeps at most R of them on any rank, ours (by its generator's rule) at most 2R-1-r on rank r,
     * and reaches that on rank 0 when there are micro-batches enough */
    int held_ok = 1;
    for (int r = 0; r < R; r++) {
        int h_ours = max_awaiting_w(ours, r), h_torch = max_awaiting_w(t, r);
        int want0 = ours->num_chunks < 2 * R - 1 ? ours->num_chunks : 2 * R - 1;
        if (h_ours > 2 * R - 1 - r || h_torch > R || (r == 0 && h_ours != want0)) {
            tap_diag("%s rank %d: at most %d micro-batches await their W in ours, %d in torch's", key, r, h_ours, h_torch);
            held_ok = 0;
        }
    }
    tap_ok(held_ok, "%s: micro-batches awaiting their W: at most 2R-1-r on rank r in ours (2R-1 reached on rank 0), "
                    "at most R in torch's", key);
    dp_cost cost = dp_cost_default();
    dp_simulation a, b;
    int valid = dp_schedule_validate(t, NULL) == DP_OK;
    tap_ok(valid, "%s: torch's order is a valid schedule here too %s", key, valid ? "" : dp_last_error());
    if (valid && dp_schedule_simulate(ours, &cost, &a) == DP_OK) {
        if (dp_schedule_simulate(t, &cost, &b) == DP_OK) {
            int same = a.makespan == b.makespan;
            double bubble = (R - 1) * (cost.f + cost.b - 2 * cost.w);
            for (int r = 0; r < R; r++) same = same && a.idle[r] == b.idle[r] && a.idle[r] == bubble;
            tap_ok(same, "%s: both idle exactly (PP-1)(F+B-2W) = %g on every rank (makespan %g and %g)", key, bubble,
                   a.makespan, b.makespan);
            dp_simulation_free(&b);
        }
        dp_simulation_free(&a);
    }
    dp_schedule_free(t);
}

/* Reads one data file; returns the configurations seen, adds to *rank_lines. */
static int check_file(const char *file, int *rank_lines)
{
    const char *srcdir = getenv("top_srcdir");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/%s", srcdir ? srcdir : ".", file);
    FILE *f = fopen(path, "r");
    if (!f) {
        tap_ok(0, "open %s", path);
        return 0;
    }
    static char line[1 << 16], mine[1 << 16];
    static char held[64][1 << 14]; /* a zero-bubble configuration's rank lines */
    int configs = 0;
    char last_key[64] = "";
    dp_schedule *s = NULL;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = '\0';
        char name[32];
        int ranks, chunks, rank, off = 0;
        if (sscanf(line, "%31s %d %d %d: %n", name, &ranks, &chunks, &rank, &off) != 4 || off == 0 || rank < 0 ||
            rank >= ranks || ranks > 64) {
            tap_ok(0, "%s: parse data line '%.40s'", file, line);
            continue;
        }
        char key[64];
        snprintf(key, sizeof key, "%s %d %d", name, ranks, chunks);
        if (strcmp(key, last_key) != 0) {
            dp_schedule_free(s);
            s = NULL;
            dp_schedule_params p = {.ranks = ranks, .chunks = chunks};
            snprintf(last_key, sizeof last_key, "%s", key);
            if (dp_schedule_generate(name, &p, &s) != DP_OK) {
                tap_ok(0, "%s: generate: %s", key, dp_last_error());
                continue;
            }
            tap_ok(dp_schedule_validate(s, NULL) == DP_OK, "%s: validates %s", key, dp_last_error());
            configs++;
        }
        if (!s) continue;
        (*rank_lines)++;
        if (strcmp(name, "zb1p") == 0) {
            snprintf(held[rank], sizeof held[rank], "%s", line + off);
            if (rank == ranks - 1) compare_zero_bubble(s, held, key);
            continue;
        }
        format_rank(s, rank, mine, sizeof mine, 0, 0);
        if (!tap_ok(strcmp(mine, line + off) == 0, "%s rank %d: order of compute equals the reference", key, rank)) {
            tap_diag("reference: %s", line + off);
            tap_diag("ours:      %s", mine);
        }
    }
    dp_schedule_free(s);
    fclose(f);
    return configs;
}

int main(void)
{
    int lines = 0;
    int dual = check_file("dualpipe_reference_orders.txt", &lines);
    tap_ok(dual >= 60 && lines >= 300, "DualPipe's reference: %d configurations, %d rank orders", dual, lines);
    lines = 0;
    int torch = check_file("torch_pipelining_orders.txt", &lines);
    tap_ok(torch >= 50 && lines >= 180, "torch.distributed.pipelining: %d configurations, %d rank orders", torch, lines);
    return tap_done();
}
