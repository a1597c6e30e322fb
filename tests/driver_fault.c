/* driver_fault.c: the cpu driver with one fault that `dualpipe verify --driver fault` must
 * catch, chosen by $DUALPIPE_FAULT (test_verify_faults.sh): a wrong gradient element, a wrong
 * parameter element where the gradient is smallest (where AdamW's direction is least defined),
 * or an optimizer whose every result is one ulp high; or a rank that, in the middle of a step,
 * ends its process, hangs or fails, which the job must survive by ending cleanly and in bounded
 * time (test_mpi_faults.sh); or a rank whose all-to-all fails in the move of experts that follows
 * a step (test_train_eplb.sh). Unset: the cpu driver unchanged. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/driver.h"

static dp_device_runtime_ops runtime;
static dp_device_kernel_ops kernels;
static dp_link_ops link_ops;

/* grad:F   the largest gradient element of one tensor times (1 + F), before the optimizer reads it
 * param:F  after one optimizer step, the parameter whose gradient is smallest moved by F x lr
 * ulp      every parameter the optimizer writes, one ulp toward +infinity */
/* exit:R:S  rank R's process exits (status 3) at its first GEMM of step S
 * hang:R:S  rank R stops there for good (a stuck kernel)
 * fail:R:S  rank R's GEMM there returns an error */
/* move:R:S  rank R's first all-to-all after its optimizer step S fails: with train --eplb-every
 *           dividing S and --ep > 1, the one moving the experts to their new placement */
/* tie:F     MoE's top-k chooses on scores each moved by up to F of themselves (near-ties flip)
 * topk      MoE's top-k chooses the (k+1)-th best expert in place of the k-th (a wrong kernel) */
enum { NONE, GRAD, PARAM, ULP, TIE, TOPK, EXIT, HANG, FAIL, MOVE };
static int fault;
static double size;
static int fault_rank = -1, fault_step;

/* the rank of each device opened here (process faults) */
#define MAX_DEVICES 64
static struct {
    dp_device *dev;
    int rank;
    int steps; /* the optimizer's last step on this device: rank threads run apart, so a
                  rank's own count says which step it is in */
    const float *first_param; /* the first parameter SGD updated here (SGD's counting) */
} opened[MAX_DEVICES];
static pthread_mutex_t opened_lock = PTHREAD_MUTEX_INITIALIZER;

static int rank_of(dp_device *dev)
{
    int r = -1;
    pthread_mutex_lock(&opened_lock);
    for (int i = 0; i < MAX_DEVICES; i++)
        if (opened[i].dev == dev) r = opened[i].rank;
    pthread_mutex_unlock(&opened_lock);
    return r;
}

static int steps_of(dp_device *dev)
{
    int n = 0;
    pthread_mutex_lock(&opened_lock);
    for (int i = 0; i < MAX_DEVICES; i++)
        if (opened[i].dev == dev) n = opened[i].steps;
    pthread_mutex_unlock(&opened_lock);
    return n;
}

/* The device's step: `step`, or with step 0 (SGD's arguments carry none) one more each time
 * its first parameter comes round again (the optimizer updates a rank's parameters in the same
 * order every step). */
static void note_step(dp_device *dev, int step, const float *param)
{
    pthread_mutex_lock(&opened_lock);
    for (int i = 0; i < MAX_DEVICES; i++) {
        if (opened[i].dev != dev) continue;
        if (step > opened[i].steps) opened[i].steps = step;
        if (!step && !opened[i].first_param) opened[i].first_param = param;
        if (!step && opened[i].first_param == param) opened[i].steps++;
    }
    pthread_mutex_unlock(&opened_lock);
}

static dp_status open_device(const dp_device_config *cfg, dp_device **out)
{
    DP_CHECK(dp_cpu_driver.runtime->open(cfg, out));
    pthread_mutex_lock(&opened_lock);
    for (int i = 0; i < MAX_DEVICES; i++)
        if (!opened[i].dev) {
            opened[i].dev = *out, opened[i].rank = cfg->rank, opened[i].steps = 0, opened[i].first_param = NULL;
            break;
        }
    pthread_mutex_unlock(&opened_lock);
    return DP_OK;
}

static dp_status close_device(dp_device *dev)
{
    pthread_mutex_lock(&opened_lock);
    for (int i = 0; i < MAX_DEVICES; i++)
        if (opened[i].dev == dev) opened[i].dev = NULL;
    pthread_mutex_unlock(&opened_lock);
    return dp_cpu_driver.runtime->close(dev);
}

/* the links opened here and split from them, with the world rank and device of each (move faults) */
static struct {
    dp_link *link;
    int rank;
    dp_device *dev;
} links[4 * MAX_DEVICES];
static atomic_int move_failed;

static void note_link(dp_link *l, int rank, dp_device *dev)
{
    pthread_mutex_lock(&opened_lock);
    for (size_t i = 0; l && i < sizeof links / sizeof links[0]; i++)
        if (!links[i].link || links[i].link == l) {
            links[i].link = l, links[i].rank = rank, links[i].dev = dev;
            break;
        }
    pthread_mutex_unlock(&opened_lock);
}

static int link_rank(dp_link *l, dp_device **dev)
{
    int r = -1;
    pthread_mutex_lock(&opened_lock);
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (links[i].link == l) r = links[i].rank, *dev = links[i].dev;
    pthread_mutex_unlock(&opened_lock);
    return r;
}

static dp_status link_open(dp_link_world *w, int rank, dp_device *dev, dp_link **out)
{
    DP_CHECK(dp_cpu_driver.link->open(w, rank, dev, out));
    note_link(*out, rank, dev);
    return DP_OK;
}

static dp_status link_split(dp_link *parent, int color, int key, dp_link **out)
{
    DP_CHECK(dp_cpu_driver.link->split(parent, color, key, out));
    dp_device *dev = NULL;
    int r = link_rank(parent, &dev);
    if (*out && r >= 0) note_link(*out, r, dev);
    return DP_OK;
}

static dp_status link_close(dp_link *l)
{
    pthread_mutex_lock(&opened_lock);
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (links[i].link == l) links[i].link = NULL;
    pthread_mutex_unlock(&opened_lock);
    return dp_cpu_driver.link->close(l);
}

static dp_status all_to_all_v(dp_link *l, const void *send, const size_t *send_counts, const size_t *send_displs,
                              void *recv, const size_t *recv_counts, const size_t *recv_displs, size_t elem_bytes,
                              dp_stream *s)
{
    dp_device *dev = NULL;
    if (fault == MOVE && link_rank(l, &dev) == fault_rank && steps_of(dev) == fault_step &&
        !atomic_exchange(&move_failed, 1)) {
        fprintf(stderr, "driver fault: rank %d's all-to-all after step %d fails\n", fault_rank, fault_step);
        return dp_fail(DP_ERR_COMM, "driver fault: rank %d's all-to-all after step %d fails", fault_rank, fault_step);
    }
    return dp_cpu_driver.link->all_to_all_v(l, send, send_counts, send_displs, recv, recv_counts, recv_displs,
                                            elem_bytes, s);
}

static dp_status gemm(dp_device *dev, dp_stream *s, const dp_gemm_args *g)
{
    if (fault >= EXIT && fault <= FAIL && rank_of(dev) == fault_rank && steps_of(dev) + 1 == fault_step) {
        if (fault == EXIT) {
            fprintf(stderr, "driver fault: rank %d exits in step %d\n", fault_rank, fault_step);
            _exit(3);
        }
        if (fault == HANG) {
            fprintf(stderr, "driver fault: rank %d hangs in step %d\n", fault_rank, fault_step);
            for (;;) pause();
        }
        return dp_fail(DP_ERR_DEVICE, "driver fault: rank %d's GEMM fails in step %d", fault_rank, fault_step);
    }
    return dp_cpu_driver.kernels->gemm(dev, s, g);
}
static atomic_int claimed; /* the one-element faults hit the first optimizer call of the run only */

static size_t arg_extreme(const float *g, size_t n, int largest)
{
    size_t at = 0;
    for (size_t i = 1; i < n; i++)
        if (largest ? fabsf(g[i]) > fabsf(g[at]) : fabsf(g[i]) < fabsf(g[at])) at = i;
    return at;
}

static void before(int first, size_t n, const float *grad)
{
    if (fault == GRAD && first && n) {
        size_t i = arg_extreme(grad, n, 1);
        ((float *)grad)[i] *= (float)(1.0 + size); /* cpu device memory is host memory */
    }
}

static void after(int first, size_t n, float *param, const float *grad, float lr)
{
    if (fault == PARAM && first && n) param[arg_extreme(grad, n, 0)] += (float)(size * lr);
    if (fault == ULP)
        for (size_t i = 0; i < n; i++) param[i] = nextafterf(param[i], INFINITY);
}

static dp_status adamw(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *m, float *v,
                       const dp_adamw_args *a)
{
    int first = !atomic_exchange(&claimed, 1);
    note_step(dev, a->step, param);
    before(first, n, grad);
    DP_CHECK(dp_cpu_driver.kernels->adamw_update(dev, s, n, param, grad, m, v, a));
    after(first, n, param, grad, a->lr);
    return DP_OK;
}

static dp_status sgd(dp_device *dev, dp_stream *s, size_t n, float *param, const float *grad, float *momentum,
                     const dp_sgd_args *a)
{
    int first = !atomic_exchange(&claimed, 1);
    note_step(dev, 0, param);
    before(first, n, grad);
    DP_CHECK(dp_cpu_driver.kernels->sgd_update(dev, s, n, param, grad, momentum, a));
    after(first, n, param, grad, a->lr);
    return DP_OK;
}

/* MoE's top-k, faulty as asked: on scores moved by up to `size` of themselves (a fixed pattern
 * over the elements), or choosing the (k+1)-th best in place of the k-th */
static dp_status moe_topk(dp_device *dev, dp_stream *s, int tokens, int experts, int groups, int topk_groups,
                          int topk, const float *scores, const float *bias, float route_scale, int32_t *expert,
                          float *weight)
{
    if (fault != TIE && fault != TOPK)
        return dp_cpu_driver.kernels->moe_topk(dev, s, tokens, experts, groups, topk_groups, topk, scores, bias,
                                               route_scale, expert, weight);
    size_t n = (size_t)tokens * (size_t)experts, R = (size_t)tokens * (size_t)(topk + 1);
    float *moved = malloc(sizeof *moved * (n ? n : 1) + sizeof(float) * R);
    int32_t *ex = malloc(sizeof *ex * R);
    if (!moved || !ex) {
        free(moved), free(ex);
        return dp_fail(DP_ERR_NOMEM, "fault driver: out of memory");
    }
    float *w = moved + n;
    for (size_t i = 0; i < n; i++)
        moved[i] = fault == TIE ? scores[i] * (float)(1.0 + size * ((double)(((i * 2654435761u) >> 7) % 2001) - 1000.0) / 1000.0)
                                : scores[i];
    int wide = fault == TOPK && topk < experts;
    dp_status st = dp_cpu_driver.kernels->moe_topk(dev, s, tokens, experts, groups, topk_groups, topk + wide, moved,
                                                   bias, route_scale, ex, w);
    for (int t = 0; st == DP_OK && t < tokens; t++) {
        const int32_t *e = ex + (size_t)t * (size_t)(topk + wide);
        float sum = 0.0f;
        for (int k = 0; k < topk; k++) {
            expert[(size_t)t * topk + k] = e[wide && k == topk - 1 ? topk : k];
            sum += scores[(size_t)t * experts + expert[(size_t)t * topk + k]];
        }
        for (int k = 0; k < topk; k++)
            weight[(size_t)t * topk + k] = scores[(size_t)t * experts + expert[(size_t)t * topk + k]] / sum * route_scale;
    }
    free(moved), free(ex);
    return st;
}

/* at load time, before the registry reads the tables */
__attribute__((constructor)) static void fill_tables(void)
{
    runtime = *dp_cpu_driver.runtime;
    runtime.name = "fault";
    runtime.open = open_device;
    runtime.close = close_device;
    kernels = *dp_cpu_driver.kernels;
    kernels.gemm = gemm;
    kernels.adamw_update = adamw;
    kernels.sgd_update = sgd;
    kernels.moe_topk = moe_topk;
    link_ops = *dp_cpu_driver.link;
    link_ops.open = link_open;
    link_ops.split = link_split;
    link_ops.close = link_close;
    link_ops.all_to_all_v = all_to_all_v;
    const char *f = getenv("DUALPIPE_FAULT");
    if (!f) return;
    const char *colon = strchr(f, ':');
    if (!strncmp(f, "grad", 4)) fault = GRAD, size = 0.1;
    else if (!strncmp(f, "param", 5)) fault = PARAM, size = 0.5;
    else if (!strcmp(f, "ulp")) fault = ULP;
    else if (!strncmp(f, "tie", 3)) fault = TIE, size = 1e-3;
    else if (!strcmp(f, "topk")) fault = TOPK;
    else if (sscanf(f, "exit:%d:%d", &fault_rank, &fault_step) == 2) fault = EXIT;
    else if (sscanf(f, "hang:%d:%d", &fault_rank, &fault_step) == 2) fault = HANG;
    else if (sscanf(f, "fail:%d:%d", &fault_rank, &fault_step) == 2) fault = FAIL;
    else if (sscanf(f, "move:%d:%d", &fault_rank, &fault_step) == 2) fault = MOVE;
    if (colon && fault < EXIT) size = atof(colon + 1);
}

const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION,
    .struct_size = sizeof(dp_driver_export),
    .name = "fault",
    .description = "the cpu driver with one fault named by $DUALPIPE_FAULT",
    .runtime = &runtime,
    .kernels = &kernels,
    .link = &link_ops,
};
