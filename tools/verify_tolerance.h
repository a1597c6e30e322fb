/* verify_tolerance.h: how far apart `dualpipe verify` lets a correct driver and the CPU driver be,
 * derived from where their arithmetic may legitimately differ (the analysis is in
 * verify_tolerance.c and the man page), and the optimizer step replayed from the driver's own
 * gradient, against which the driver's parameters are judged. */
#ifndef DP_TOOLS_VERIFY_TOLERANCE_H
#define DP_TOOLS_VERIFY_TOLERANCE_H

#include <stddef.h>

#include "engine/model.h"

/* The tolerance of losses and gradients: an element c of the CPU's tensor may differ by
 * eps * (rms + |c|), rms the tensor's root mean square. The terms, for the header. */
typedef struct {
    double eps;
    double sum_k;  /* reduction lengths of the fp32 sums on the longest path */
    int roundings; /* bf16 roundings of a tensor on that path (0 in fp32) */
} verify_tolerance;

/* Losses: the forward path through `blocks` blocks (stages x layers per stage). */
verify_tolerance verify_loss_tolerance(const dp_model_config *m, int blocks);
/* Gradients: forward and backward through every block, then the weight gradient's sum over
 * chunks x tokens rows. */
verify_tolerance verify_grad_tolerance(const dp_model_config *m, int blocks, int chunks);

/* The largest |m_hat| / sqrt(v_hat) AdamW can reach at step t (1-based), for any gradients:
 * 1 at step 1, a little above 1 after, (1 - b1) / sqrt(1 - b2) in the limit. Two runs that
 * start a step from the same state cannot move an element further apart than 2 x lr x this. */
double verify_adamw_step_bound(const dp_optimizer_config *o, int t);

/* What the driver should hold after one optimizer step that both runs began from the same
 * parameters and optimizer state, and the rounding the two fp32 kernels may add. */
typedef struct {
    double value, tol;
} verify_expect;

/* The driver's moments: the CPU's (after the step) moved by the gradients' difference. m is also
 * SGD's momentum buffer. */
verify_expect verify_expect_m(const dp_optimizer_config *o, float m_cpu, float g_cpu, float g_drv);
verify_expect verify_expect_v(const dp_optimizer_config *o, float v_cpu, float g_cpu, float g_drv);
/* The driver's parameter: the CPU's moved by what the driver's own moments change in the update
 * (AdamW at step t, 1-based), or by its gradient (SGD; momentum: the CPU's buffer, or NULL). */
verify_expect verify_replay_adamw(const dp_optimizer_config *o, int t, float p_cpu, float m_cpu, float v_cpu,
                                  float m_drv, float v_drv);
verify_expect verify_replay_sgd(const dp_optimizer_config *o, float p_cpu, const float *momentum, float g_cpu,
                                float g_drv);

#endif
