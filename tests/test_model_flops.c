/* test_model_flops.c: the operations `dualpipe train` divides by its step time, against numbers
 * worked out by hand: a dense model (12 T h f per layer and micro-batch, as before MoE layers
 * were counted) and a model mixing a dense layer with MoE layers (gate, routed experts on
 * tokens x topk rows, shared experts). */
#include <string.h>

#include "tests/tap.h"
#include "tools/model_flops.h"

int main(void)
{
    dp_model_config m;
    memset(&m, 0, sizeof m);
    m.hidden = 16, m.tokens = 6, m.layers_per_stage = 2, m.block = DP_BLOCK_RESIDUAL;
    dp_status st = dp_model_config_check(&m);
    tap_ok(st == DP_OK && m.ffn == 64, "a dense model, ffn 4h = %d", m.ffn);
    /* 4 layers x 4 micro-batches x 12 x 6 x 16 x 64 */
    tap_ok(model_train_step_flops(&m, 4, 4) == 1179648.0, "dense: 12 T h f per layer and micro-batch: %.0f of 1179648",
           model_train_step_flops(&m, 4, 4));

    m.moe = (dp_moe_config){.experts = 8, .topk = 2, .expert_hidden = 8, .shared_experts = 1};
    tap_ok(dp_model_config_check(&m) == DP_OK, "an MoE model: layers 1 to 3 MoE");
    /* layer 0 (dense) forward: 2 GEMMs 6 x 16 x 64 = 4 x 6144 = 24576; an MoE layer's: the gate
     * 2 x 6 x 16 x 8 = 1536, the routed experts 3 GEMMs on 12 rows 2 x 12 x 16 x 8 = 3 x 3072 =
     * 9216, the shared expert 3 x 2 x 6 x 16 x 8 = 4608: 15360 */
    tap_ok(model_layer_forward_flops(&m, 0) == 24576.0, "the dense layer's forward: %.0f of 24576",
           model_layer_forward_flops(&m, 0));
    tap_ok(model_layer_forward_flops(&m, 1) == 15360.0, "an MoE layer's forward: %.0f of 15360 (gate 1536, routed 9216, "
           "shared 4608)", model_layer_forward_flops(&m, 1));
    /* (24576 + 3 x 15360) x 3 (forward and backward) x 4 micro-batches */
    tap_ok(model_train_step_flops(&m, 4, 4) == 847872.0, "the step: %.0f of 847872",
           model_train_step_flops(&m, 4, 4));
    m.moe.shared_experts = 0, m.moe.topk = 4;
    /* gate 1536 + routed 3 x 2 x 24 x 16 x 8 = 18432 */
    tap_ok(model_layer_forward_flops(&m, 2) == 19968.0, "top 4 without shared experts: %.0f of 19968",
           model_layer_forward_flops(&m, 2));
    return tap_done();
}
