/* test_engine_phases.c: stage passes that stop at a communication point and are resumed. A
 * test-only block computes the MLP in two phases (stopping after the GELU, where an MoE block
 * would wait for its dispatch); the executor, playing DualPipeV, must resume every stopped pass,
 * let an overlapped pair's halves take turns, and give each pass the expert-parallel link of its
 * stream: losses, gradients and inference outputs bit-equal to the one-phase MLP block. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "engine/block.h"
#include "engine/driver.h"
#include "engine/executor.h"
#include "tests/tap.h"

/* ----------------------------------------------------------------------------
 * the two-phase block: dp_block_mlp's arithmetic, cut in two; every call noted */

enum { LINEAR1, LINEAR2 };

typedef struct {
    void *a1, *g1, *da;
} split_saved;

static size_t split_layout(const dp_block_layer *L, void *base, split_saved *k)
{
    size_t n = (size_t)L->cfg->tokens * (size_t)L->cfg->ffn * dp_dtype_size(L->cfg->dtype);
    dp_carver c = {base, 0};
    k->a1 = dp_carve(&c, n), k->g1 = dp_carve(&c, n), k->da = dp_carve(&c, n);
    return c.at;
}

static dp_stream *streams[2];
static dp_link *links[2]; /* stand-ins, never used as links: only compared */
static const void *stopped[16]; /* passes stopped at their communication point, by saved area */
static int nstopped, calls, interleaved, wrong_link, on_second_stream, resume_misses;

/* Notes a call: a phase-0 call stops its pass, a phase-1 call resumes it; a call made while
 * another pass is stopped is work interleaved with that pass's communication. */
static void note(const dp_block_pass *p)
{
    calls++;
    if (p->link != links[p->stream == streams[0] ? 0 : 1]) wrong_link++;
    on_second_stream += p->stream == streams[1] && streams[1] != streams[0];
    if (p->phase == 1) {
        int found = 0;
        for (int i = 0; i < nstopped; i++)
            if (stopped[i] == p->saved) stopped[i] = stopped[--nstopped], found = 1;
        resume_misses += !found;
    }
    interleaved += nstopped > 0;
    if (p->phase == 0 && nstopped < 16) stopped[nstopped++] = p->saved;
}

static int split_num_params(const dp_block_layer *L)
{
    (void)L;
    return 2;
}

static void split_param_spec(const dp_block_layer *L, int j, dp_block_param_spec *out)
{
    size_t h = (size_t)L->cfg->hidden, f = (size_t)L->cfg->ffn;
    if (j == LINEAR1) *out = (dp_block_param_spec){.name = "linear1", .rows = f, .cols = h,
                                            .init = DP_PARAM_INIT_LINEAR, .gemm_operand = 1};
    else *out = (dp_block_param_spec){.name = "linear2", .rows = h, .cols = f,
                                            .init = DP_PARAM_INIT_LINEAR, .gemm_operand = 1};
}

static size_t split_saved_bytes(const dp_block_layer *L)
{
    split_saved k;
    return split_layout(L, NULL, &k);
}

static dp_status split_forward(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    note(p);
    split_saved k;
    split_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn;
    if (p->phase == 0) {
        DP_CHECK(dp_linear_forward(L, p->stream, p->x, L->w[LINEAR1], k.a1, h, f));
        DP_CHECK(L->env->ops->gelu_forward(L->env->dev, p->stream, L->cfg->dtype, (size_t)L->cfg->tokens * f, k.a1,
                                           k.g1));
        *next = DP_PHASE_COMM;
        return DP_OK;
    }
    return dp_linear_forward(L, p->stream, k.g1, L->w[LINEAR2], p->y, f, h);
}

static dp_status split_backward_input(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    note(p);
    split_saved k;
    split_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn;
    if (p->phase == 0) {
        DP_CHECK(dp_linear_backward_input(L, p->stream, p->dy, L->w[LINEAR2], k.da, f, h));
        DP_CHECK(L->env->ops->gelu_backward(L->env->dev, p->stream, L->cfg->dtype, (size_t)L->cfg->tokens * f, k.a1,
                                            k.da, k.da));
        *next = DP_PHASE_COMM;
        return DP_OK;
    }
    return p->dx ? dp_linear_backward_input(L, p->stream, k.da, L->w[LINEAR1], p->dx, h, f) : DP_OK;
}

static dp_status split_backward_weight(const dp_block_layer *L, dp_block_pass *p, dp_phase *next)
{
    note(p);
    split_saved k;
    split_layout(L, p->saved, &k);
    int h = L->cfg->hidden, f = L->cfg->ffn;
    if (p->phase == 0) {
        DP_CHECK(dp_linear_backward_weight(L, p->stream, p->dy, k.g1, L->grad[LINEAR2], f, h));
        *next = DP_PHASE_COMM;
        return DP_OK;
    }
    return dp_linear_backward_weight(L, p->stream, k.da, p->x, L->grad[LINEAR1], h, f);
}

static const dp_block_ops split_mlp = {
    .abi_version = DP_BLOCK_ABI_VERSION,
    .struct_size = sizeof(dp_block_ops),
    .name = "mlp-in-two-phases",
    .create = dp_block_no_state_create,
    .destroy = dp_block_no_state_destroy,
    .num_params = split_num_params,
    .param_spec = split_param_spec,
    .saved_bytes = split_saved_bytes,
    .forward = split_forward,
    .backward_input = split_backward_input,
    .backward_weight = split_backward_weight,
};

/* the split block in the MLP's row, so that a config of mlp layers gets it */
static const dp_block_ops *const split_table[] = {&split_mlp};

/* ----------------------------------------------------------------------------
 * one DualPipeV step on one rank */

typedef struct {
    float loss[6];
    float out[6 * 4 * 8];
    float grads[2][2 * 2 * 8 * 32]; /* [local stage] two layers of two 8 x 32 matrices */
    size_t ngrads[2];
} results;

static int run(const dp_block_ops *const *table, int serial, results *res)
{
    const dp_driver *drv;
    dp_driver_load("cpu", &drv);
    const dp_device_ops *D = drv->device;
    dp_schedule_params sp = {.ranks = 1, .chunks = 6};
    dp_schedule *s;
    dp_schedule_generate("dualpipev", &sp, &s);
    dp_link_world *w;
    dp_link_world_config wc = {.world_size = 1, .timeout_ms = 5000};
    drv->link->world_create(&wc, &w);
    dp_model_config m = {.hidden = 8, .tokens = 4, .layers_per_stage = 2, .seed = 3};
    dp_device *dev;
    dp_link *l;
    dp_device_config dc = {.threads = 1};
    D->open(&dc, &dev);
    drv->link->open(w, 0, dev, &l);
    dp_executor_config ec = {.sched = s, .rank = 0, .dops = D, .dev = dev, .lops = drv->link, .link = l,
                             .serial_pairs = serial};
    for (int i = 0; i < 2; i++) D->stream_create(dev, &ec.streams[i]);
    streams[0] = ec.streams[0], streams[1] = serial ? ec.streams[0] : ec.streams[1];
    dp_stage_env env = {.ops = D, .dev = dev, .streams = {ec.streams[0], ec.streams[1]}, .link_ops = drv->link,
                        .ep_link = {links[0], links[1]}};
    if (table) env.block_table = table, env.block_table_size = 1;
    size_t cpp = (size_t)s->chunks_per_pipe, act = dp_model_act_bytes(&m);
    float *x = malloc(cpp * act), *t = malloc(cpp * act);
    for (size_t i = 0; i < cpp * act / sizeof(float); i++) x[i] = dp_counter_uniform(5, 0, i), t[i] = dp_counter_uniform(5, 1, i);
    dp_step_io io;
    memset(&io, 0, sizeof io);
    int ok = 1;
    for (int d = 0; d < s->num_local_stages; d++) {
        ok &= dp_stage_create(&env, &m, s->slot_stage[d][0], s->num_stages, &ec.stages[d]) == DP_OK;
        int pipe = s->slot_pipe[d][0];
        if (dp_schedule_is_first_stage(s, 0, d)) io.input[pipe] = x;
        if (dp_schedule_is_last_stage(s, 0, d)) io.target[pipe] = t, io.loss[pipe] = res->loss, io.output[pipe] = res->out;
    }
    dp_executor *ex = NULL;
    dp_status st = ok ? dp_executor_create(&ec, &ex) : DP_ERR_INTERNAL;
    if (st == DP_OK) st = dp_executor_train(ex, &io);
    for (int d = 0; d < s->num_local_stages && st == DP_OK; d++) {
        float *g = dp_stage_grads(ec.stages[d], &res->ngrads[d]);
        if (res->ngrads[d] * sizeof(float) > sizeof res->grads[d]) st = DP_ERR_INTERNAL;
        else st = D->copy(dev, res->grads[d], g, res->ngrads[d] * sizeof(float), DP_COPY_DEVICE_TO_HOST, NULL);
    }
    if (st == DP_OK) st = dp_executor_infer(ex, &io);
    if (st != DP_OK) tap_diag("%s", dp_last_error());
    dp_executor_destroy(ex);
    for (int d = 0; d < s->num_local_stages; d++) dp_stage_destroy(ec.stages[d]);
    for (int i = 0; i < 2; i++) D->stream_destroy(dev, ec.streams[i]);
    drv->link->close(l);
    D->close(dev);
    drv->link->world_destroy(w);
    dp_schedule_free(s);
    free(x), free(t);
    return st == DP_OK;
}

static int same(const results *a, const results *b)
{
    return memcmp(a->loss, b->loss, sizeof a->loss) == 0 && memcmp(a->out, b->out, sizeof a->out) == 0 &&
           a->ngrads[0] == b->ngrads[0] && a->ngrads[1] == b->ngrads[1] && a->ngrads[0] > 0 &&
           memcmp(a->grads, b->grads, sizeof a->grads) == 0;
}

static void reset_notes(void) { nstopped = calls = interleaved = wrong_link = on_second_stream = resume_misses = 0; }

/* ----------------------------------------------------------------------------
 * the stage's own rules for phases */

static void check_stage_rules(void)
{
    const dp_driver *drv;
    dp_driver_load("cpu", &drv);
    dp_device *dev;
    dp_device_config dc = {.threads = 1};
    drv->device->open(&dc, &dev);
    dp_model_config m = {.hidden = 4, .tokens = 2, .layers_per_stage = 2, .seed = 1};
    dp_stage_env env = {.ops = drv->device, .dev = dev, .block_table = split_table, .block_table_size = 1};
    dp_stage *st = NULL;
    dp_slot *slot = NULL;
    dp_status s = dp_stage_create(&env, &m, 0, 2, &st);
    if (s == DP_OK) s = dp_stage_slot_get(st, &slot);
    if (!tap_ok(s == DP_OK, "a stage of two-phase layers")) {
        tap_diag("%s", dp_last_error());
        return;
    }
    memset(slot->x, 0, dp_model_act_bytes(&m));
    dp_phase ph = DP_PHASE_DONE;
    int stops = 0;
    reset_notes();
    s = dp_stage_forward_begin(st, NULL, slot, NULL, &ph);
    tap_ok(s == DP_OK && ph == DP_PHASE_COMM, "forward_begin stops at the first layer's communication point");
    dp_status again = dp_stage_backward_input_begin(st, NULL, slot, 1, &ph);
    tap_ok(again == DP_ERR_INTERNAL && strstr(dp_last_error(), "has not finished"),
           "another pass on the same micro-batch is refused while one is stopped: %s", dp_last_error());
    ph = DP_PHASE_COMM;
    while (s == DP_OK && ph == DP_PHASE_COMM) s = dp_stage_continue(st, slot, &ph), stops++;
    tap_ok(s == DP_OK && ph == DP_PHASE_DONE && stops == 2 && calls == 4,
           "continue runs it on through both layers' phases (%d resumes, %d block calls)", stops, calls);
    s = dp_stage_continue(st, slot, &ph);
    tap_ok(s == DP_ERR_INTERNAL && strstr(dp_last_error(), "no pass"), "continue with no pass stopped is refused: %s",
           dp_last_error());
    dp_stage_slot_put(st, slot);
    dp_stage_destroy(st);
    m.layers_per_stage = 1;
    env.block_table_size = 0;
    s = dp_stage_create(&env, &m, 0, 2, &st);
    tap_ok(s == DP_ERR_INVALID && strstr(dp_last_error(), "block table"),
           "a kind the stage's block table lacks is refused: %s", dp_last_error());
    if (s == DP_OK) dp_stage_destroy(st);
    drv->device->close(dev);
}

int main(void)
{
    static int link_stand_in[2];
    links[0] = (dp_link *)&link_stand_in[0], links[1] = (dp_link *)&link_stand_in[1];
    check_stage_rules();

    results *plain = calloc(1, sizeof *plain), *split = calloc(1, sizeof *split), *serial = calloc(1, sizeof *serial);
    reset_notes();
    int ok = run(NULL, 0, plain);
    tap_ok(ok && calls == 0, "DualPipeV on one rank with one-phase mlp blocks");
    reset_notes();
    ok = run(split_table, 0, split);
    tap_ok(ok && same(split, plain),
           "the same with every layer in two phases: losses, gradients and inference outputs bit-equal");
    tap_ok(nstopped == 0 && resume_misses == 0 && calls > 0,
           "every stopped pass was resumed, each once (%d block calls)", calls);
    tap_ok(interleaved > 0, "an overlapped pair's halves took turns: %d calls ran while the other half was stopped",
           interleaved);
    tap_ok(wrong_link == 0 && on_second_stream > 0,
           "each pass got its own stream's expert-parallel link (%d calls on the second stream)", on_second_stream);
    reset_notes();
    ok = run(split_table, 1, serial);
    tap_ok(ok && same(serial, plain) && interleaved > 0 && wrong_link == 0 && nstopped == 0,
           "with serial_pairs (one stream) too: bit-equal, halves interleaved (%d), the first stream's link", interleaved);
    free(plain), free(split), free(serial);
    return tap_done();
}
