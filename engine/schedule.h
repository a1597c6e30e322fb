/* schedule.h: pipeline schedules as data. A schedule is, for each rank, an ordered
 * array of actions (F, B, I, W); generators only produce these arrays, and the
 * validator, the simulator, the writers and the executor all read the same ones. */
#ifndef DP_SCHEDULE_H
#define DP_SCHEDULE_H

#include <stdint.h>
#include <stdio.h>

#include "engine/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * Actions */

typedef enum {
    DP_ACT_F = 0, /* forward */
    DP_ACT_B = 1, /* full backward (input and weight gradients) */
    DP_ACT_I = 2, /* input-gradient backward; its weight gradient is deferred to a W */
    DP_ACT_W = 3, /* deferred weight gradient of an earlier I */
} dp_action_kind;

typedef struct {
    uint8_t kind;    /* dp_action_kind */
    uint8_t local_stage;     /* local stage of the rank: DualPipe direction, DualPipeV first/second stage */
    uint8_t overlap; /* 1: this action and the next form one overlapped F&B pair */
    uint8_t reserved;
    int32_t chunk;   /* micro-batch index within its pipe, from 0 */
} dp_action;

/* "F", "B", "I", "W". */
char dp_action_letter(int kind);

/* ----------------------------------------------------------------------------
 * Schedules
 *
 * Micro-batches travel through one or two *pipes*. A pipe is a chain of stages
 * 0..num_stages-1; each stage lives on one (rank, local_stage) slot. DualPipe has two pipes
 * (pipe 0 enters at rank 0, pipe 1 at the last rank) of PP stages each; DualPipeV has
 * one pipe of 2R stages folded in a V; the classic schedules have one pipe of PP
 * stages, one per rank. Micro-batch `chunk` of pipe p is batch element
 * p * chunks_per_pipe + chunk of the step's input. */

#define DP_MAX_LOCAL_STAGES 2

typedef struct dp_schedule {
    char name[32];        /* generator name: "dualpipe", "1f1b", ... */
    int num_ranks;        /* pipeline ranks */
    int num_local_stages;         /* local stages per rank (1 or 2) */
    int num_pipes;        /* 1 or 2 */
    int num_stages;       /* stages per pipe */
    int num_chunks;       /* micro-batches in a step, over all pipes */
    int chunks_per_pipe;  /* num_chunks / num_pipes */
    int *num_actions;     /* [num_ranks] */
    dp_action **actions;  /* [num_ranks][num_actions[r]] */
    /* placement: stage s of pipe p runs on rank stage_rank[p][s], local stage stage_local[p][s] */
    int *stage_rank[DP_MAX_LOCAL_STAGES];
    int *stage_local[DP_MAX_LOCAL_STAGES];
    /* and the inverse: (rank, local_stage) holds stage slot_stage[local_stage][rank] of pipe slot_pipe[local_stage][rank] */
    int *slot_pipe[DP_MAX_LOCAL_STAGES];
    int *slot_stage[DP_MAX_LOCAL_STAGES];
} dp_schedule;

/* Parameters of a generator. */
typedef struct {
    int ranks;  /* pipeline ranks (--pp) */
    int chunks; /* micro-batches per step */
} dp_schedule_params;

/* A generator fills `s` (already sized by dp_schedule_alloc) or fails naming the rule. */
typedef struct {
    const char *name;
    const char *summary;
    dp_status (*check)(const dp_schedule_params *p);
    dp_status (*generate)(const dp_schedule_params *p, dp_schedule **out);
} dp_schedule_generator;

/* The table of generators, ending with a NULL name. */
extern const dp_schedule_generator dp_schedule_generators[];
const dp_schedule_generator *dp_schedule_find(const char *name);

/* Largest ranks x chunks a generator accepts (about 12 million actions). */
#define DP_SCHEDULE_MAX_RANK_CHUNKS (1 << 22)

/* Builds the named schedule. Errors: DP_ERR_NOT_FOUND (unknown name, the message lists
 * the known ones), DP_ERR_INVALID (the message names the rule broken). */
dp_status dp_schedule_generate(const char *name, const dp_schedule_params *p, dp_schedule **out);
void dp_schedule_free(dp_schedule *s);

/* Helpers for generators. */
dp_status dp_schedule_alloc(const char *name, int ranks, int local_stages, int pipes, int stages, int chunks,
                            dp_schedule **out);
/* Sets where stage `stage` of pipe `pipe` lives. */
void dp_schedule_place(dp_schedule *s, int pipe, int stage, int rank, int local_stage);
/* Appends an action to a rank's list. */
dp_status dp_schedule_push(dp_schedule *s, int rank, int kind, int local_stage, int chunk, int overlap);

/* Neighbours of (rank, local_stage) along its pipe: the rank and local_stage of the previous / next stage,
 * or -1 for the first / last stage. */
int dp_schedule_prev(const dp_schedule *s, int rank, int local_stage, int *prev_local);
int dp_schedule_next(const dp_schedule *s, int rank, int local_stage, int *next_local);
/* Whether (rank, local_stage) is the first / last stage of its pipe. */
int dp_schedule_is_first_stage(const dp_schedule *s, int rank, int local_stage);
int dp_schedule_is_last_stage(const dp_schedule *s, int rank, int local_stage);

/* ----------------------------------------------------------------------------
 * Validation */

typedef struct {
    int *peak_activations; /* [num_ranks]: most micro-batch-stages alive at once (F until B or I) */
    int *param_copies;     /* [num_ranks]: stage parameter sets held (1 or 2) */
    int max_peak_activations;
} dp_schedule_report;

/* Checks that every micro-batch runs F then B (or I then W) on every stage, in pipeline
 * order across stages, that every W follows its I, and that the ranks cannot deadlock
 * when each action first posts the receives it needs and waits for them. On success fills
 * `report` (may be NULL; free with dp_schedule_report_free). */
dp_status dp_schedule_validate(const dp_schedule *s, dp_schedule_report *report);
void dp_schedule_report_free(dp_schedule_report *r);

/* ----------------------------------------------------------------------------
 * Simulation: a cost model gives each action's start and end. */

typedef struct {
    double f;       /* forward */
    double b;       /* full backward */
    double w;       /* deferred weight gradient (an I costs b - w) */
    double fb;      /* overlapped F&B pair (its compute: the all-to-all below comes on top) */
    double p2p;     /* latency of a point-to-point transfer between ranks */
    /* Expert-parallel all-to-all (MoE layers), all the dispatches and combines of one stage's
     * pass together: a lone F costs f + a2a_f, a B b + a2a_b, an I (b - w) + a2a_b, a W w. An
     * overlapped pair lasts max(fb, c0 + x0, c1 + x1), x0 and x1 its halves' all-to-alls and c0
     * and c1 their shares of fb (in proportion to their lone compute): each half is a chain of
     * its compute and its exchanges, the two chains sharing the compute, each half's exchanges in
     * flight under the other's compute; the duration beyond fb is exposed. */
    double a2a_f;   /* all-to-all of one forward of one stage */
    double a2a_b;   /* all-to-all of one input-backward (B or I) of one stage */
    int no_overlap; /* nonzero: a pair's halves run one after the other, fb + a2a_f + a2a_b, all
                     * of its all-to-all exposed */
} dp_cost;

/* F=1, B=2, W=1, F&B=3, no latency, no all-to-all: the DualPipe README's setting. */
dp_cost dp_cost_default(void);

/* Parses "F=1,B=2,W=1,FB=3,P2P=0,A2AF=0,A2AB=0" (any subset, case-insensitive). Each cost must
 * be 0 or between DP_COST_MIN and DP_COST_MAX, so that every simulated time and every picture's
 * scale stays finite for any schedule the generators make; W must not exceed B. (no_overlap is
 * not a cost: set it in the struct; `dualpipe schedule --no-overlap`.) */
dp_status dp_cost_parse(const char *text, dp_cost *cost);
#define DP_COST_MIN 1e-9
#define DP_COST_MAX 1e9

typedef struct {
    double **start; /* [rank][action] */
    double **end;   /* [rank][action]; both actions of an overlapped pair share start and end */
    double *busy;   /* [rank] */
    double *idle;   /* [rank]: makespan - busy */
    double makespan;
    int num_ranks;
    /* Exposed communication per rank, 0 without communication costs. exposed_a2a is part of
     * busy (the all-to-all an action's duration holds beyond its compute: a lone action's
     * whole all-to-all, a pair's duration - fb); exposed_p2p is part of idle (of each wait
     * before an action, what the latency of the transfer that gated it adds: with the gating
     * input from another rank, min(wait, p2p); a latency upstream that made the sender late
     * is not counted again here). */
    double *exposed_a2a;  /* [rank] */
    double *exposed_p2p;  /* [rank] */
    double *exposed_comm; /* [rank]: exposed_a2a + exposed_p2p */
    dp_cost cost;         /* the costs simulated (the Chrome writer draws the all-to-all from them) */
} dp_simulation;

/* Costs: any finite numbers >= 0 with W <= B. DP_ERR_INVALID, naming the rank and action,
 * when a simulated time is not finite (costs so large that their sums overflow). */
dp_status dp_schedule_simulate(const dp_schedule *s, const dp_cost *cost, dp_simulation *out);
void dp_simulation_free(dp_simulation *sim);

/* When one action (or an overlapped pair, both halves alike) ran when measured, in ms (the
 * executor's times count from the step's start). */
#define DP_ACTION_EXCHANGES 12
typedef struct {
    double start; /* began posting its communication */
    double ready; /* its inputs had arrived */
    double end;   /* its compute had finished */
    /* of start .. end, the time its passes waited for expert exchanges they had left in flight
     * (exposed communication; an overlapped pair: both halves', recorded on each) */
    double comm;
    /* the exchanges its passes left in flight, in the order they were waited for (an overlapped
     * pair: both halves', recorded on each), up to DP_ACTION_EXCHANGES of them (later ones folded
     * into the last): each [0] started, [1] waited for from, [2] done, on the clock of start */
    int exchanges;
    float exchange[DP_ACTION_EXCHANGES][3];
} dp_action_time;

/* ----------------------------------------------------------------------------
 * Writers: text timeline, the `trace` interface, JSON, SVG and Chrome trace events. */

typedef enum {
    DP_FORMAT_TEXT = 0,
    DP_FORMAT_TRACE,
    DP_FORMAT_JSON,
    DP_FORMAT_SVG,
    DP_FORMAT_CHROME,
} dp_schedule_format;

dp_status dp_schedule_format_parse(const char *name, dp_schedule_format *fmt);
/* Writes one format. DP_ERR_INVALID, before writing anything, when a time of `sim` is not a
 * finite number >= 0 or an action ends before it starts, or when a picture's scale would not
 * be finite. */
dp_status dp_schedule_write(FILE *out, dp_schedule_format fmt, const dp_schedule *s, const dp_cost *cost,
                            const dp_simulation *sim, const dp_schedule_report *report);

/* The `text` timeline at most page_width columns wide (>= DP_TEXT_MIN_WIDTH): the legend is
 * broken at spaces, time is drawn at 4 columns per F (rows of at most 240 columns), and a row
 * wider than the page is cut into bands of time printed one under the other, each headed
 * "time T0 to T1 (band k of n)".
 * dp_schedule_write draws text DP_TEXT_DEFAULT_WIDTH wide. */
enum { DP_TEXT_MIN_WIDTH = 50, DP_TEXT_DEFAULT_WIDTH = 80 };
dp_status dp_schedule_write_text(FILE *out, const dp_schedule *s, const dp_cost *cost, const dp_simulation *sim,
                                 const dp_schedule_report *report, int page_width);

/* Measured steps of a schedule for the Chrome writer: for each of num_steps steps (numbered from
 * 1), every rank's action times in the order of its actions, rank 0's first, all on one clock
 * (a pair's times at its first action, as the executor records them). */
typedef struct {
    const char *title;           /* the trace's process name; NULL: "NAME schedule" */
    int num_steps;
    const dp_action_time *times; /* [num_steps][actions of all ranks] */
} dp_measured_steps;

/* Chrome trace events (Perfetto, chrome://tracing), one track per rank, an overlapped pair one
 * event named "F0.3 & B1.2" (kind, local stage, micro-batch). Without `measured` (NULL): the
 * `chrome` format, at the simulator's times, one cost unit drawn as 1 ms; when sim->cost has an
 * all-to-all, a second track per rank, "rank R comm", holds each action's all-to-all as
 * "all-to-all (hidden)" (under compute) and "all-to-all (exposed)" events. With it: every measured
 * step, each event's args naming its step, and the time an action waited for its inputs drawn
 * as a "wait" event before it. */
dp_status dp_schedule_write_chrome(FILE *out, const dp_schedule *s, const dp_simulation *sim,
                                   const dp_measured_steps *measured);

#ifdef __cplusplus
}
#endif
#endif
