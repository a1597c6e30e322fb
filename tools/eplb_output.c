/* eplb_output.c: the plan JSON (rows on one line each, so that diffs stay readable) and the
 * SVG picture of per-GPU loads. */
#include "tools/eplb_output.h"

#include <stdlib.h>
#include <string.h>

static void write_ints(FILE *fp, const int *v, int n)
{
    fputc('[', fp);
    for (int k = 0; k < n; k++) fprintf(fp, k ? ", %d" : "%d", v[k]);
    fputc(']', fp);
}

void eplb_write_plan_json(FILE *fp, const eplb_plan *p, const eplb_config *cfg)
{
    const int L = p->num_layers, E = p->num_experts, R = p->num_replicas, M = p->max_count;
    fprintf(fp, "{\n  \"policy\": \"%s\",\n", cfg->policy == EPLB_POLICY_DEEPSEEK ? "deepseek"
                                                                                  : "balanced");
    fprintf(fp, "  \"num_replicas\": %d,\n  \"num_groups\": %d,\n  \"num_nodes\": %d,\n"
                "  \"num_gpus\": %d,\n  \"cross_nodes\": %s,\n",
            R, cfg->num_groups, cfg->num_nodes, cfg->num_gpus,
            cfg->cross_nodes ? "true" : "false");
    fputs("  \"phy2log\": [\n", fp);
    for (int l = 0; l < L; l++) {
        fputs("    ", fp);
        write_ints(fp, p->phy2log + (size_t)l * R, R);
        fputs(l + 1 < L ? ",\n" : "\n", fp);
    }
    fputs("  ],\n  \"log2phy\": [\n", fp);
    for (int l = 0; l < L; l++) {
        fputs("    [", fp);
        for (int e = 0; e < E; e++) {
            if (e) fputs(", ", fp);
            write_ints(fp, p->log2phy + ((size_t)l * E + e) * M, M);
        }
        fputs(l + 1 < L ? "],\n" : "]\n", fp);
    }
    fputs("  ],\n  \"logcnt\": [\n", fp);
    for (int l = 0; l < L; l++) {
        fputs("    ", fp);
        write_ints(fp, p->logcnt + (size_t)l * E, E);
        fputs(l + 1 < L ? ",\n" : "\n", fp);
    }
    fputs("  ]\n}\n", fp);
}

int eplb_write_svg(FILE *fp, const double *w, const eplb_plan *p, const eplb_config *cfg,
                   int layer)
{
    const int E = p->num_experts, R = p->num_replicas, G = p->num_gpus, per = R / G;
    double *before = calloc((size_t)G, sizeof(double)), *after = calloc((size_t)G, sizeof(double));
    if (!before || !after) {
        free(before);
        free(after);
        return 1;
    }
    const int *p2l = p->phy2log + (size_t)layer * R;
    const int *cnt = p->logcnt + (size_t)layer * E;
    double total = 0, top = 0;
    for (int e = 0; e < E; e++) {
        before[(long)e * G / E] += w[e];
        total += w[e];
    }
    for (int r = 0; r < R; r++) after[r / per] += w[p2l[r]] / cnt[p2l[r]];
    for (int g = 0; g < G; g++) {
        if (before[g] > top) top = before[g];
        if (after[g] > top) top = after[g];
    }
    double bound = 0;
    eplb_lower_bound(w, E, cfg, &bound);
    if (top <= 0) top = 1;
    const double mean = total / G;
    const int bar = G > 64 ? 6 : 12, gap = 2, left = 70, height = 300, pad = 40;
    /* As wide as the bars, and as the heading and the legend with few GPUs: 12-pixel
     * sans-serif text takes at most about 7 pixels a character. */
    char heading[160], legend[200];
    snprintf(heading, sizeof heading, "Layer %d: GPU load before (grey, one replica per expert) "
             "and after (blue) balancing", layer);
    snprintf(legend, sizeof legend, "GPU (x), load (y, top %.6g); mean %.6g, lower bound on the "
             "max %.6g", top, mean, bound);
    int width = left + G * (2 * bar + gap + 4) + pad, text = (int)strlen(heading);
    if ((int)strlen(legend) > text) text = (int)strlen(legend);
    if (left + EPLB_SVG_CHAR_PX * text + pad > width) width = left + EPLB_SVG_CHAR_PX * text + pad;
    fprintf(fp, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                "font-family=\"sans-serif\" font-size=\"12\">\n", width, height + 90);
    fprintf(fp, "<title>eplb: per-GPU load of layer %d, before and after balancing</title>\n",
            layer);
    fprintf(fp, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(fp, "<text x=\"%d\" y=\"20\">%s</text>\n", left, heading);
    for (int g = 0; g < G; g++) {
        int x = left + g * (2 * bar + gap + 4);
        double hb = before[g] / top * height, ha = after[g] / top * height;
        fprintf(fp, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"#bbbbbb\">"
                    "<title>GPU %d before: %.6g</title></rect>\n",
                x, 30 + height - hb, bar, hb, g, before[g]);
        fprintf(fp, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"#3b6fb6\">"
                    "<title>GPU %d after: %.6g</title></rect>\n",
                x + bar + gap, 30 + height - ha, bar, ha, g, after[g]);
        if (G <= 64 || g % 8 == 0)
            fprintf(fp, "<text x=\"%d\" y=\"%d\" font-size=\"9\">%d</text>\n", x, 30 + height + 12,
                    g);
    }
    double ym = 30 + height - mean / top * height, yb = 30 + height - bound / top * height;
    fprintf(fp, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" "
                "stroke-dasharray=\"4 3\"/>\n", left - 5, width - pad, ym, ym);
    fprintf(fp, "<text x=\"4\" y=\"%.1f\" fill=\"#d62728\">mean</text>\n", ym + 4);
    if (bound > mean * (1 + 1e-9)) {
        fprintf(fp, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#2ca02c\" "
                    "stroke-dasharray=\"2 2\"/>\n", left - 5, width - pad, yb, yb);
        fprintf(fp, "<text x=\"4\" y=\"%.1f\" fill=\"#2ca02c\">bound</text>\n", yb - 2);
    }
    fprintf(fp, "<text x=\"%d\" y=\"%d\">%s</text>\n</svg>\n", left, 30 + height + 40, legend);
    free(before);
    free(after);
    return 0;
}
