/* schedule_write.c: picks a writer by format name; each format lives in its own file. */
#include <string.h>

#include "engine/schedule.h"

dp_status dp_schedule_write_text(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                 const dp_schedule_report *rep);
dp_status dp_schedule_write_trace(FILE *out, const dp_schedule *s);
dp_status dp_schedule_write_json(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                 const dp_schedule_report *rep);
dp_status dp_schedule_write_svg(FILE *out, const dp_schedule *s, const dp_cost *c, const dp_simulation *sim,
                                const dp_schedule_report *rep);

static const char *const format_names[] = {"text", "trace", "json", "svg", "chrome"};

dp_status dp_schedule_format_parse(const char *name, dp_schedule_format *fmt)
{
    for (int i = 0; i < (int)(sizeof format_names / sizeof *format_names); i++) {
        if (name && strcmp(name, format_names[i]) == 0) {
            *fmt = (dp_schedule_format)i;
            return DP_OK;
        }
    }
    return dp_fail(DP_ERR_INVALID, "unknown format '%s'; known formats: text, trace, json, svg, chrome",
                   name ? name : "");
}

dp_status dp_schedule_write(FILE *out, dp_schedule_format fmt, const dp_schedule *s, const dp_cost *cost,
                            const dp_simulation *sim, const dp_schedule_report *report)
{
    switch (fmt) {
    case DP_FORMAT_TEXT: return dp_schedule_write_text(out, s, cost, sim, report);
    case DP_FORMAT_TRACE: return dp_schedule_write_trace(out, s);
    case DP_FORMAT_JSON: return dp_schedule_write_json(out, s, cost, sim, report);
    case DP_FORMAT_SVG: return dp_schedule_write_svg(out, s, cost, sim, report);
    case DP_FORMAT_CHROME: return dp_schedule_write_chrome(out, s, sim, NULL);
    }
    return dp_fail(DP_ERR_INVALID, "unknown format %d", (int)fmt);
}
