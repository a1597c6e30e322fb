/* eplb_output.h: what the eplb tool writes: the plan as JSON, the human summary and an SVG
 * picture of per-GPU loads before and after balancing. */
#ifndef EPLB_TOOLS_OUTPUT_H
#define EPLB_TOOLS_OUTPUT_H

#include "eplb/eplb.h"

#include <stdio.h>

void eplb_write_plan_json(FILE *fp, const eplb_plan *plan, const eplb_config *cfg);

/* Per-GPU loads before (expert e alone on GPU e*G/E) and after, for one layer. */
/* Pixels a character of the SVG's 12-pixel sans-serif text takes at most, on average: the
 * picture is at least as wide as its heading and legend at this rate. */
enum { EPLB_SVG_CHAR_PX = 7 };
int eplb_write_svg(FILE *fp, const double *w, const eplb_plan *plan, const eplb_config *cfg,
                   int layer);

#endif
