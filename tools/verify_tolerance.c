/* verify_tolerance.c: the error analysis behind `dualpipe verify`'s tolerances. Two correct
 * drivers run the same operations on the same inputs; they differ only where floating-point
 * arithmetic lets them (the order of a sum, one rounding of bf16), and each tolerance below is
 * the size of that difference, worked out from the model's shape rather than fitted to a test. */
#include "config.h"

#include <math.h>

#include "tools/verify_tolerance.h"

/* ----------------------------------------------------------------------------
 * losses and gradients
 *
 * fp32 (TF32 off). Both drivers round every product and sum to fp32 (unit roundoff u = 2^-24)
 * but sum in different orders (blocked on the CPU, tiled with FMA in cuBLAS). A sum of K terms
 * of either sign carries a rounding error whose standard deviation is at most about
 * u sqrt(K/2) times the root mean square of its results (each partial sum of k terms is about
 * sqrt(k) terms wide and is rounded once); blocked and tiled sums do better. The two drivers'
 * errors are independent, and a tensor carries those of every sum on its path: the forward GEMMs
 * of every block (K = hidden, then ffn), for a gradient also the backward ones and last its own
 * weight-gradient sum over chunks x tokens rows. Normwise these add in quadrature, so the
 * difference of two elements has a standard deviation of at most u sqrt(sum K) x rms, rms the
 * tensor's root mean square. An element whose value is a difference of large terms carries an
 * error at the scale of the tensor, not of itself: hence rms rather than |c| alone. Allowing
 * LAMBDA = 7 standard deviations makes a false alarm less likely than 1e-11 per element (a
 * Gaussian tail), negligible over the 1e8 elements a large run compares. The element-wise
 * kernels (GELU's erf, RMSNorm's square root) differ by an ulp or two per block, small next to
 * the sums; the loss's own sums run in double on both sides. The |c| term carries those.
 *
 * bf16. Both drivers round every activation to 8 significant bits (one ulp is up to 2^-7 of the
 * value). Where the two fp32 results fall on either side of a rounding boundary, that element
 * differs by one ulp, and the next GEMM mixes it into every output of its row. Counting every
 * rounded tensor on the path as a source whose two roundings are independent (the worst case:
 * each side's error uniform over an ulp, their difference of standard deviation 2^-7 / sqrt(6)
 * of the tensor's scale), adding in quadrature over the `roundings` on the path and allowing
 * LAMBDA standard deviations as above: 7 x 2^-7 x sqrt(roundings / 6). The fp32 term is added
 * for the sums, negligible here. */

#define U_FP32 (1.0 / 16777216.0) /* 2^-24 */
#define ULP_BF16 (1.0 / 128.0)    /* 2^-7: one bf16 ulp, relative, at its widest */
#define LAMBDA 7.0

/* the bf16 roundings in one block's forward (h, GELU, y; RMSNorm's output and the residual sum)
 * and in its backward for the input (dGELU input, dh, dx; RMSNorm's and the residual's), summed
 * over the model's layers (a kind per layer) */
static int roundings_per_pass(const dp_model_config *m, int blocks)
{
    int r = 0;
    for (int b = 0; b < blocks; b++) r += dp_model_layer_kind(m, b) == DP_BLOCK_RESIDUAL ? 5 : 3;
    return r;
}

static int ffn_of(const dp_model_config *m) { return m->ffn ? m->ffn : 4 * m->hidden; }

static verify_tolerance tolerance_of(const dp_model_config *m, double sum_k, int roundings)
{
    verify_tolerance t = {.sum_k = sum_k, .roundings = m->dtype == DP_DTYPE_BF16 ? roundings : 0};
    t.eps = LAMBDA * U_FP32 * sqrt(sum_k) + LAMBDA * ULP_BF16 * sqrt(t.roundings / 6.0);
    return t;
}

verify_tolerance verify_loss_tolerance(const dp_model_config *m, int blocks)
{
    return tolerance_of(m, (double)blocks * (m->hidden + ffn_of(m)), roundings_per_pass(m, blocks));
}

verify_tolerance verify_grad_tolerance(const dp_model_config *m, int blocks, int chunks)
{
    double k = 2.0 * blocks * (m->hidden + ffn_of(m)) + (double)chunks * m->tokens;
    return tolerance_of(m, k, 2 * roundings_per_pass(m, blocks) + 1); /* + the loss's gradient */
}

/* ----------------------------------------------------------------------------
 * parameters
 *
 * Both runs start every step from the same parameters and optimizer state (verify copies the
 * CPU's into the driver after each step), so a parameter's difference after the step comes
 * from two things only: the two gradients, already held to their own tolerance, and the
 * optimizer kernels' rounding. The driver's moments must be the CPU's moved by the gradients'
 * difference (m by (1 - b1) dg, v by (1 - b2) d(g^2)), within the rounding of their terms; its
 * parameter must be the step replayed from its own moments: p_cpu + lr (update(m_cpu, v_cpu)
 * - update(m_drv, v_drv)), within the rounding of the update. (Replaying from the CPU's moments
 * moved by dg would not do: where the driver's gradient is far smaller than the CPU's, the
 * CPU's rounding of v is larger than the driver's whole v.)
 *
 * AdamW's update m_hat / (sqrt(v_hat) + eps) is about +-1 whatever the gradient's size where the
 * gradient dominates the moments, so where the gradient is at the level of its rounding error
 * its direction is not defined by the arithmetic and a correct driver may step the other way
 * from the CPU, up to 2 x lr x verify_adamw_step_bound apart. The replay predicts that flip
 * exactly; such elements are counted in the report, not excused.
 *
 * The rounding: each side's new parameter is p x decay - lr x update rounded twice (a few u of
 * |p|), and the update is a chain of about five fp32 operations (a few u of itself, which the
 * step bound bounds). Hence 8 u |p| + 32 u lr bound for AdamW, 8 u (|p| + lr (|g| + ...)) for
 * SGD; the moments b1 m + (1 - b1) g and b2 v + (1 - b2) g^2 round each product and the sum on
 * each side: 8 u times the sum of the terms' magnitudes. */

double verify_adamw_step_bound(const dp_optimizer_config *o, int t)
{
    /* Cauchy-Schwarz on m_t = (1 - b1) sum b1^(t-k) g_k against v_t = (1 - b2) sum b2^(t-k) g_k^2,
     * with the bias corrections: an equality for g_k proportional to (b1 / b2)^(t-k) */
    double b1 = o->beta1, b2 = o->beta2, r = b1 * b1 / b2, sum = 0, rk = 1;
    for (int j = 0; j < t; j++) sum += rk, rk *= r;
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    double bound = (1 - b1) / bc1 * sqrt(bc2 / (1 - b2) * sum);
    return bound > 1 ? bound : 1;
}

static double adamw_update(const dp_optimizer_config *o, double bc1, double bc2, double m, double v)
{
    return (m / bc1) / (sqrt((v > 0 ? v : 0) / bc2) + o->eps);
}

verify_expect verify_expect_m(const dp_optimizer_config *o, float m_cpu, float g_cpu, float g_drv)
{
    double scale = fabs((double)m_cpu) + (1.0 - o->beta1) * (fabs((double)g_cpu) + fabs((double)g_drv));
    return (verify_expect){m_cpu + (1.0 - o->beta1) * ((double)g_drv - g_cpu), 8 * U_FP32 * scale};
}

verify_expect verify_expect_v(const dp_optimizer_config *o, float v_cpu, float g_cpu, float g_drv)
{
    double gc2 = (double)g_cpu * g_cpu, gd2 = (double)g_drv * g_drv;
    return (verify_expect){v_cpu + (1.0 - o->beta2) * (gd2 - gc2), 8 * U_FP32 * (v_cpu + (1.0 - o->beta2) * (gc2 + gd2))};
}

verify_expect verify_replay_adamw(const dp_optimizer_config *o, int t, float p_cpu, float m_cpu, float v_cpu,
                                  float m_drv, float v_drv)
{
    /* the bias corrections as both drivers compute them (in float) */
    double bc1 = 1.0f - powf(o->beta1, (float)t), bc2 = 1.0f - powf(o->beta2, (float)t);
    double du = adamw_update(o, bc1, bc2, m_cpu, v_cpu) - adamw_update(o, bc1, bc2, m_drv, v_drv);
    return (verify_expect){p_cpu + (double)o->lr * du,
                           8 * U_FP32 * fabs((double)p_cpu) + 32 * U_FP32 * o->lr * verify_adamw_step_bound(o, t)};
}

verify_expect verify_replay_sgd(const dp_optimizer_config *o, float p_cpu, const float *momentum, float g_cpu,
                                float g_drv)
{
    double step = fabs((double)g_cpu) + fabs((double)g_drv) + o->weight_decay * fabs((double)p_cpu) +
                  (momentum ? fabs((double)*momentum) : 0);
    /* with momentum the buffers differ by the same dg, and the parameters by lr times that */
    return (verify_expect){p_cpu - (double)o->lr * ((double)g_drv - g_cpu),
                           8 * U_FP32 * (fabs((double)p_cpu) + o->lr * step)};
}
