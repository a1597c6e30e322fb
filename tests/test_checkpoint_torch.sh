#!/bin/sh
# test_checkpoint_torch.sh: tools/checkpoint_to_torch.py loads dualpipe's checkpoints into a
# PyTorch model of the same architecture (parameters with load_state_dict(strict=True), the
# optimizer's moments into torch.optim's state) and its forward matches dualpipe's on the same
# inputs within the script's stated tolerance: fp32 AdamW residual blocks written by 4 ranks,
# bf16 SGD MLP blocks by 2. A zero tolerance must fail, and a damaged checkpoint be refused.
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
# the comparison can fail
"$py" "$script" "$tmp/fp32" --dualpipe "$dp" --atol 0 --rtol 0 > "$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q '^FAIL' "$tmp/out"
ok $? "a zero tolerance fails: $(grep '^FAIL' "$tmp/out" | cut -c1-100)"
# a damaged file is refused by the script too
printf '\377' | dd of="$tmp/fp32/step-00000003/rank-2.safetensors" bs=1 seek=3000 conv=notrunc 2>/dev/null
"$py" "$script" "$tmp/fp32" --dualpipe "$dp" > "$tmp/out" 2>&1
[ $? -eq 2 ] && grep -q 'checksum mismatch' "$tmp/out"
ok $? "a damaged checkpoint: exit 2, $(grep -m1 checksum "$tmp/out" | sed "s|$tmp/||")"
echo "1..$n"
exit $failed
