#!/bin/sh
# test_torch_compare.sh: dualpipe's arithmetic against an independent implementation:
# tools/torch_compare.py trains on the same parameters and data with the model's maths written
# out by hand in float64 (--reference python; PyTorch itself where installed), and dualpipe's
# saved parameters must agree to fp32 rounding. SGD too, as AdamW hides a gradient's scale.
dp="${top_builddir:-.}/tools/dualpipe"
script="${top_srcdir:-.}/tools/torch_compare.py"
command -v python3 > /dev/null 2>&1 || { echo "1..0 # SKIP python3 not installed"; exit 0; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
small="--dualpipe $dp --reference python --steps 2 --hidden 8 --tokens 4 --chunks 4"

check() { # what options...
  what=$1; shift
  python3 "$script" $small "$@" > "$tmp/out" 2>&1; rc=$?
  [ $rc -eq 0 ] && tail -n 1 "$tmp/out" | grep -q '^PASS$'
  ok $? "$what: $(grep '^parameters after' "$tmp/out")"
  [ $rc -eq 0 ] || sed 's/^/# /' "$tmp/out" | tail -n 20
}
check "dualpipe, residual, mse, sgd" --schedule dualpipe --pp 2 --block residual --loss mse --optimizer sgd --lr 0.05
check "dualpipe, residual, mse, adamw" --schedule dualpipe --pp 2 --block residual --loss mse --optimizer adamw
check "dualpipev, mlp, xent, sgd with weight decay" --schedule dualpipev --pp 2 --block mlp --loss xent --optimizer sgd --lr 0.5 \
  --weight-decay 0.1
check "zb1p, 2 layers per stage, residual, xent, adamw" --schedule zb1p --pp 2 --layers-per-stage 2 --loss xent
# the comparison can fail: a tolerance of 0 against float64 maths is not met by fp32
python3 "$script" $small --pp 2 --atol 0 --rtol 0 > "$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q '^FAIL' "$tmp/out"; ok $? "a zero tolerance fails: $(grep '^FAIL' "$tmp/out")"

echo "1..$n"
exit $failed
