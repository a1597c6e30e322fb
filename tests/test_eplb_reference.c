/* test_eplb_reference.c: the deepseek policy against outputs of deepseek-ai/EPLB itself
 * (tests/data/eplb_reference.txt: random inputs, with and without equal loads), element for
 * element, and the README example of that repository. */
#include "eplb/eplb.h"
#include "tests/tap.h"

static int read_ints(FILE *fp, int *v, int n)
{
    for (int k = 0; k < n; k++)
        if (fscanf(fp, "%d", &v[k]) != 1) return 1;
    return 0;
}

static void readme_example(void)
{
    const double w[2 * 12] = {90, 132, 40,  61,  104, 165, 39,  4,   73,  56, 183, 86,
                              20, 107, 104, 64,  19,  197, 187, 157, 172, 86, 16,  27};
    const int want[2 * 16] = {5, 6,  5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                              7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3,  1};
    eplb_config c = eplb_config_default(16, 8);
    c.num_groups = 4;
    c.num_nodes = 2;
    c.policy = EPLB_POLICY_DEEPSEEK;
    eplb_plan p;
    int st = eplb_rebalance(w, 2, 12, &c, &p);
    tap_is_int(st, EPLB_OK, "README example plans (%s)", eplb_last_error());
    if (st) return;
    int same = 1;
    for (int r = 0; r < 32; r++) same &= p.phy2log[r] == want[r];
    tap_ok(same, "README example: phy2log is exactly the one printed there");
    tap_is_int(eplb_plan_check(&p), EPLB_OK, "README example: plan invariants hold");
    eplb_plan_free(&p);
}

int main(void)
{
    readme_example();
    const char *top = getenv("top_srcdir");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/eplb_reference.txt", top ? top : ".");
    FILE *fp = fopen(path, "r");
    if (!tap_ok(fp != NULL, "open %s", path)) return tap_done();
    char line[256];
    int cases = 0, ties_cases = 0;
    while (fgets(line, sizeof line, fp)) {
        int L, E, R, G, N, P, M, ties;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (strncmp(line, "end", 3) == 0) break;
        if (sscanf(line, "case %d %d %d %d %d %d %d %d", &L, &E, &R, &G, &N, &P, &M, &ties) != 8) {
            tap_ok(0, "malformed case line: %s", line);
            break;
        }
        int *wi = malloc(sizeof(int) * L * E), *p2l = malloc(sizeof(int) * L * R);
        int *l2p = malloc(sizeof(int) * L * E * M);
        double *w = malloc(sizeof(double) * L * E);
        if (read_ints(fp, wi, L * E) || read_ints(fp, p2l, L * R) || read_ints(fp, l2p, L * E * M)) {
            tap_ok(0, "case %d is truncated", cases);
            break;
        }
        for (int k = 0; k < L * E; k++) w[k] = wi[k];
        eplb_config c = eplb_config_default(R, P);
        c.num_groups = G;
        c.num_nodes = N;
        c.policy = EPLB_POLICY_DEEPSEEK;
        eplb_plan p;
        int st = eplb_rebalance(w, L, E, &c, &p);
        int same = st == EPLB_OK && p.max_count == M;
        for (int k = 0; same && k < L * R; k++) same = p.phy2log[k] == p2l[k];
        for (int k = 0; same && k < L * E * M; k++) same = p.log2phy[k] == l2p[k];
        tap_ok(same, "case %d (%d layers, %d experts, %d replicas, %d groups, %d nodes, %d GPUs%s): "
                     "phy2log and log2phy equal the reference's",
               cases, L, E, R, G, N, P, ties ? ", equal loads" : "");
        if (st == EPLB_OK) eplb_plan_free(&p);
        cases++;
        ties_cases += ties;
        free(wi);
        free(p2l);
        free(l2p);
        free(w);
    }
    fclose(fp);
    tap_ok(cases >= 40 && ties_cases >= 10, "the data file holds %d cases (%d with equal loads)",
           cases, ties_cases);
    return tap_done();
}
