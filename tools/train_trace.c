/* train_trace.c: the measured Chrome trace of `dualpipe train --trace` (see train_trace.h). */
#include "tools/train_trace.h"

#include <stdlib.h>
#include <string.h>

struct train_trace_event {
    int rank, step;
    dp_action a, b; /* b.kind == 0xff: not a pair */
    double start, ready, end; /* ms from the run's start */
};

int train_trace_open(train_trace *t, const char *path)
{
    *t = (train_trace){0};
    return cli_output_open(&t->out, path);
}

static int add_event(train_trace *t, const train_trace_event *e)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 1024;
        train_trace_event *n = realloc(t->ev, sizeof *n * cap);
        if (!n) return 1;
        t->ev = n, t->cap = cap;
    }
    t->ev[t->n++] = *e;
    return 0;
}

int train_trace_add_step(train_trace *t, dp_runtime *rt, int step, double offset)
{
    const dp_schedule *s = dp_runtime_schedule(rt);
    for (int r = 0; r < s->num_ranks; r++) {
        const dp_action_time *at = dp_runtime_times(rt, r);
        if (!at) return 0; /* the runtime records no times */
        for (int i = 0; i < s->num_actions[r];) {
            const dp_action *a = &s->actions[r][i];
            int pair = a->overlap && i + 1 < s->num_actions[r];
            train_trace_event e = {r, step, *a, {.kind = 0xff}, offset + at[i].start, offset + at[i].ready,
                                   offset + at[i].end};
            if (pair) e.b = a[1];
            if (add_event(t, &e)) {
                cli_error("out of memory for a trace of %zu actions", t->n + 1);
                return 1;
            }
            i += pair ? 2 : 1;
        }
    }
    return 0;
}

size_t train_trace_actions(const train_trace *t) { return t->n; }

static void action_name(char *buf, size_t n, const dp_action *a)
{
    snprintf(buf, n, "%c%d%s", dp_action_letter(a->kind), a->chunk, a->local_stage ? "'" : "");
}

int train_trace_write(train_trace *t, const char *title)
{
    FILE *fp = t->out.fp;
    fprintf(fp, "{\"displayTimeUnit\": \"ms\", \"otherData\": {\"run\": \"%s\"}, \"traceEvents\": [\n", title);
    int ranks = 0;
    for (size_t i = 0; i < t->n; i++) ranks = t->ev[i].rank + 1 > ranks ? t->ev[i].rank + 1 : ranks;
    for (int r = 0; r < ranks; r++)
        fprintf(fp, "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": %d, \"args\": {\"name\": \"rank %d\"}},\n",
                r, r);
    for (size_t i = 0; i < t->n; i++) {
        const train_trace_event *e = &t->ev[i];
        char name[64], n2[32];
        action_name(name, sizeof name, &e->a);
        if (e->b.kind != 0xff) {
            action_name(n2, sizeof n2, &e->b);
            strncat(name, "&", sizeof name - strlen(name) - 1);
            strncat(name, n2, sizeof name - strlen(name) - 1);
        }
        if (e->ready - e->start > 1e-3)
            fprintf(fp,
                    "{\"name\": \"wait\", \"cat\": \"wait\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.3f, "
                    "\"dur\": %.3f, \"args\": {\"for\": \"%s\", \"step\": %d}},\n",
                    e->rank, e->start * 1e3, (e->ready - e->start) * 1e3, name, e->step);
        fprintf(fp,
                "{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, "
                "\"args\": {\"step\": %d, \"local_stage\": %d, \"micro_batch\": %d}}%s\n",
                name, e->b.kind != 0xff ? "F&B" : (char[]){dp_action_letter(e->a.kind), 0}, e->rank, e->ready * 1e3,
                (e->end - e->ready) * 1e3, e->step, e->a.local_stage, e->a.chunk, i + 1 < t->n ? "," : "");
    }
    fprintf(fp, "]}\n");
    return cli_output_commit(&t->out);
}

void train_trace_close(train_trace *t)
{
    cli_output_abort(&t->out);
    free(t->ev);
    t->ev = NULL, t->n = t->cap = 0;
}
