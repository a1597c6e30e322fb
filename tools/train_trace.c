/* train_trace.c: the measured Chrome trace of `dualpipe train --trace` (see train_trace.h). */
#include "tools/train_trace.h"

#include <stdlib.h>

int train_trace_open(train_trace *t, const char *path)
{
    *t = (train_trace){0};
    return output_file_open(&t->out, path);
}

int train_trace_add_step(train_trace *t, dp_runtime *rt, double offset)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    if (!t->per_step) {
        for (int r = 0; r < s->num_ranks; r++) {
            t->per_step += (size_t)s->num_actions[r];
            for (int i = 0; i < s->num_actions[r]; i++) t->actions += !(i > 0 && s->actions[r][i - 1].overlap);
        }
    }
    if ((size_t)(t->steps + 1) * t->per_step > t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16 * t->per_step;
        dp_action_time *n = realloc(t->times, sizeof *n * cap);
        if (!n) {
            cli_error("out of memory for a trace of %d steps of %zu actions", t->steps + 1, t->actions);
            return 1;
        }
        t->times = n, t->cap = cap;
    }
    dp_action_time *to = t->times + (size_t)t->steps * t->per_step;
    for (int r = 0; r < s->num_ranks; r++) {
        const dp_action_time *at = dp_runtime_times(rt, r);
        if (!at) return 0; /* the runtime records no times */
        for (int i = 0; i < s->num_actions[r]; i++) {
            dp_action_time t = at[i];
            t.start += offset, t.ready += offset, t.end += offset;
            for (int x = 0; x < t.exchanges; x++)
                for (int k = 0; k < 3; k++) t.exchange[x][k] += (float)offset;
            *to++ = t;
        }
    }
    t->steps++;
    return 0;
}

size_t train_trace_actions(const train_trace *t) { return (size_t)t->steps * t->actions; }

int train_trace_write(train_trace *t, const dp_schedule *s, const char *title)
{
    dp_measured_steps m = {.title = title, .num_steps = t->steps, .times = t->times};
    if (dp_schedule_write_chrome(t->out.fp, s, NULL, &m) != DP_OK) {
        cli_error("%s", dp_last_error());
        output_file_abort(&t->out);
        return 1;
    }
    return output_file_commit(&t->out);
}

void train_trace_close(train_trace *t)
{
    output_file_abort(&t->out);
    free(t->times);
    *t = (train_trace){0};
}
