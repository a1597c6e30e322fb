#!/bin/sh
# test_checkpoint_torch.sh: tools/checkpoint_to_torch.py loads dualpipe's checkpoints into a
# PyTorch model of the same architecture (parameters with load_state_dict(strict=True), the
# optimizer's moments into torch.optim's state) and its forward matches dualpipe's on the same
# inputs within the script's stated tolerance: fp32 AdamW residual blocks written by 4 ranks,
# bf16 SGD MLP blocks by 2. MoE layers (DeepSeek-V3's gate, modelled in PyTorch from its
# published definition) mixed with dense ones, with expert groups, shared experts and a
# balancing bias moved by training, in fp32 and bf16: the forward, and one SGD step taken by
# both from the checkpoint (gradients by autograd in float64, the parameters after the step, the
# bias's update), also with experts replicated by an EPLB plan on --ep 2; experts with identical
# gate rows, so that every token's routing is an exact tie decided by the tie rule. Zero
# tolerances must fail, and a damaged checkpoint be refused.
# Skipped where no python3 has torch (the one on PATH, then /usr/bin/python3).
dp="${top_builddir:-.}/tools/dualpipe"
script="${top_srcdir:-.}/tools/checkpoint_to_torch.py"
py=
for p in python3 /usr/bin/python3; do
  if command -v "$p" > /dev/null 2>&1 && "$p" -c "import torch" > /dev/null 2>&1; then py=$p; break; fi
done
[ -n "$py" ] || { echo "1..0 # SKIP no python3 with torch (import torch failed)"; exit 0; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
small="--hidden 16 --tokens 4 --chunks 8 --threads 1 --steps 3 -q"

"$dp" train $small --schedule dualpipe --pp 4 --save "$tmp/fp32" > /dev/null 2>&1 &&
  "$py" "$script" "$tmp/fp32" --dualpipe "$dp" > "$tmp/out" 2>&1 && tail -n 1 "$tmp/out" | grep -q '^PASS$' &&
  grep -q 'step 3, 4 layers, 36 tensors' "$tmp/out" && grep -q "AdamW's state" "$tmp/out"
ok $? "fp32 AdamW checkpoint of 4 ranks in PyTorch: $(grep '^forward' "$tmp/out")"
"$dp" train $small --schedule dualpipev --pp 2 --dtype bf16 --block mlp --optimizer sgd --loss xent --save "$tmp/bf16" \
  > /dev/null 2>&1 && "$py" "$script" "$tmp/bf16" --dualpipe "$dp" --reader builtin > "$tmp/out" 2>&1 &&
  tail -n 1 "$tmp/out" | grep -q '^PASS$' && grep -q "SGD's state" "$tmp/out"
ok $? "bf16 SGD checkpoint of 2 ranks, the script's own reader: $(grep '^forward' "$tmp/out")"
# MoE: layer 0 dense, 1-3 MoE, 4 groups of which 2 kept, a shared expert, the bias moved
moe="--experts 8 --topk 2 --groups 4 --topk-groups 2 --shared-experts 1 --bias-update-speed 0.01"
"$dp" train $small --schedule dualpipev --pp 2 --layers-per-stage 2 $moe --save "$tmp/moe" > /dev/null 2>&1 &&
  "$py" "$script" "$tmp/moe" --dualpipe "$dp" > "$tmp/out" 2>&1 && tail -n 1 "$tmp/out" | grep -q '^PASS$' &&
  grep -q '^moe: layers 1,2,3,4,5,6,7; 8 experts in 4 group(s), 2 kept, top 2, expert hidden 32, 1 shared' "$tmp/out" &&
  ! grep -q 'balancing bias from 0 to 0$' "$tmp/out"
ok $? "fp32 AdamW, dense and MoE layers (groups, shared expert, trained bias): $(grep '^forward' "$tmp/out"); $(grep -o 'balancing bias.*' "$tmp/out")"
# one SGD step in both: MLP and MoE layers mixed, 2 data-parallel replicas
"$dp" train $small --schedule 1f1b --pp 2 --dp 2 --layers-per-stage 2 --block mlp --moe-layers 1,2 $moe \
  --optimizer sgd --momentum 0 --save "$tmp/moesgd" > /dev/null 2>&1 &&
  "$py" "$script" "$tmp/moesgd" --dualpipe "$dp" --step > "$tmp/out" 2>&1 && tail -n 1 "$tmp/out" | grep -q '^PASS$' &&
  [ "$(grep -c 'as torch predicts$' "$tmp/out")" = 2 ] && grep -q '^loss of step 4: .*: ok$' "$tmp/out"
ok $? "fp32 SGD step, mlp and MoE layers, dp 2: $(grep -o 'largest |dualpipe - torch| / the tensor.s largest |gradient| [^ ]*' "$tmp/out"); parameters $(grep -o 'largest |value| [^ ]*' "$tmp/out"); bias updates as torch predicts"
"$py" "$script" "$tmp/moesgd" --dualpipe "$dp" --step --grad-rtol 0 --param-rtol 0 > "$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q '^FAIL: layers\..*gradient off by' "$tmp/out"
ok $? "the step with zero tolerances fails: $(grep -m1 '^FAIL: layers' "$tmp/out" | cut -c1-80)"
# the same step with the experts placed by a plan that replicates four of them, on --ep 2
phy='[0, 1, 2, 3, 4, 5, 0, 1, 6, 7, 2, 3]'
printf '{"num_replicas": 12, "num_gpus": 2, "phy2log": [%s, %s]}\n' "$phy" "$phy" > "$tmp/plan.json"
"$py" "$script" "$tmp/moesgd" --dualpipe "$dp" --step --train-options "--ep 2 --eplb-plan $tmp/plan.json" \
  > "$tmp/out" 2>&1 && tail -n 1 "$tmp/out" | grep -q '^PASS$' && grep -q -- '--ep 2 --eplb-plan' "$tmp/out" &&
  [ "$(grep -c 'as torch predicts$' "$tmp/out")" = 2 ]
ok $? "the step on --ep 2 with replicas from an EPLB plan: $(grep -o 'largest |gradient| [^ ]*' "$tmp/out")"
"$dp" train $small --schedule dualpipe --pp 2 --dtype bf16 --layers-per-stage 2 $moe --optimizer sgd --momentum 0.9 \
  --save "$tmp/moebf16" > /dev/null 2>&1 &&
  "$py" "$script" "$tmp/moebf16" --dualpipe "$dp" --step --reader builtin > "$tmp/out" 2>&1 &&
  tail -n 1 "$tmp/out" | grep -q '^PASS$' && [ "$(grep -c 'as torch predicts$' "$tmp/out")" = 3 ]
ok $? "bf16 SGD with momentum, MoE: $(grep '^forward' "$tmp/out"); step: $(grep -o 'largest |gradient| [^ ]*' "$tmp/out")"
# exact ties: experts 4-7 get experts 0-3's gate rows (bias 0), so groups 0 and 2, 1 and 3, and
# experts e and e + 4 score alike for every token: the rule (lower index) decides
tie="$small --pp 2 --layers-per-stage 2 --experts 8 --topk 3 --groups 4 --topk-groups 3 --optimizer sgd --momentum 0"
"$dp" train $tie --steps 0 --save-params "$tmp/p0.safetensors" > /dev/null 2>&1 &&
  "$py" -B - "$script" "$tmp/p0.safetensors" "$tmp/p1.safetensors" <<'EOF' &&
import os, sys
import torch
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import checkpoint_to_torch as c
t = c.read_safetensors_builtin(sys.argv[2], open(sys.argv[2], "rb").read(), torch)
for name in t:
    if name.endswith("gate.weight"):
        t[name][4:] = t[name][:4]
c.write_safetensors(sys.argv[3], t)
EOF
  "$dp" train $tie --steps 0 --init "$tmp/p1.safetensors" --save "$tmp/tie" > /dev/null 2>&1 &&
  "$py" "$script" "$tmp/tie" --dualpipe "$dp" --step > "$tmp/out" 2>&1 && tail -n 1 "$tmp/out" | grep -q '^PASS$' &&
  grep -q 'smallest margin 0, exact ties 32$' "$tmp/out"
ok $? "every token's routing an exact tie, decided by the rule on both sides: $(grep -o 'exact ties.*' "$tmp/out"), forward and step PASS"
# the comparison can fail
"$py" "$script" "$tmp/fp32" --dualpipe "$dp" --atol 0 --rtol 0 > "$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q '^FAIL' "$tmp/out"
ok $? "a zero tolerance fails: $(grep -m1 '^FAIL' "$tmp/out" | cut -c1-100)"
# a damaged file is refused by the script too
printf '\377' | dd of="$tmp/fp32/step-00000003/rank-2.safetensors" bs=1 seek=3000 conv=notrunc 2>/dev/null
"$py" "$script" "$tmp/fp32" --dualpipe "$dp" > "$tmp/out" 2>&1
[ $? -eq 2 ] && grep -q 'checksum mismatch' "$tmp/out"
ok $? "a damaged checkpoint: exit 2, $(grep -m1 checksum "$tmp/out" | sed "s|$tmp/||")"
echo "1..$n"
exit $failed
