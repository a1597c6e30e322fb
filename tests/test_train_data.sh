#!/bin/sh
# test_train_data.sh: `dualpipe train --init`, `--data` and `--save-params`: saved parameters
# load back and save again byte for byte; a run split in two (save, then --init from the file
# and the later data) ends on the same bytes as the whole run; --verify stays bit-equal when
# the run starts from a file; data changes what is learnt; missing, extra and mis-shaped
# tensors and too few steps of data are refused with exit 2 and a message naming them.
dp="${top_builddir:-.}/tools/dualpipe"
mk="${top_builddir:-.}/tests/make_train_data"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
small="--hidden 16 --tokens 8 --threads 1 --chunks 4 --quiet"

"$mk" "$tmp/d1-4" 4 1 4 8 16 mse 7 && "$mk" "$tmp/d1-2" 2 1 4 8 16 mse 7 && "$mk" "$tmp/d3-4" 2 3 4 8 16 mse 7 \
  && "$mk" "$tmp/x1-2" 2 1 4 8 16 xent 7
ok $? "data files written"

# SGD without momentum keeps no state, so that --init of step 2's parameters continues exactly
sgd="--optimizer sgd --momentum 0 --lr 0.05"
"$dp" train $small --pp 2 --schedule dualpipe --steps 4 $sgd --data "$tmp/d1-4" --save-params "$tmp/whole" > "$tmp/out" 2>&1
ok $? "4 steps on given data, parameters saved"
"$dp" train $small --pp 2 --schedule dualpipe --steps 2 $sgd --data "$tmp/d1-2" --save-params "$tmp/half" > "$tmp/out" 2>&1 \
  && "$dp" train $small --pp 2 --schedule dualpipe --steps 2 $sgd --init "$tmp/half" --data "$tmp/d3-4" \
       --save-params "$tmp/split" >> "$tmp/out" 2>&1
ok $? "2 steps saved, then 2 more from them"
cmp -s "$tmp/whole" "$tmp/split"; ok $? "the split run ends on the whole run's bytes"
cmp -s "$tmp/half" "$tmp/whole"; [ $? -ne 0 ]; ok $? "and training changed them"

"$dp" train $small --pp 2 --steps 0 --init "$tmp/whole" --save-params "$tmp/again" > "$tmp/out" 2>&1 \
  && cmp -s "$tmp/whole" "$tmp/again"
ok $? "--init then --save-params with --steps 0 gives the file back byte for byte"
"$dp" train $small --pp 4 --schedule 1f1b --steps 0 --save-params "$tmp/p4" > "$tmp/out" 2>&1
ok $? "the seed's parameters saved (4 stages)"
for name in layers.0.linear1.weight layers.3.linear2.weight layers.3.norm.weight; do
  grep -aq "\"$name\":{\"dtype\":\"F32\"" "$tmp/p4"; ok $? "the file names $name"
done
grep -aq '"layers.0.linear1.weight":{"dtype":"F32","shape":\[64,16\]' "$tmp/p4" \
  && grep -aq '"layers.0.linear2.weight":{"dtype":"F32","shape":\[16,64\]' "$tmp/p4" \
  && grep -aq '"layers.0.norm.weight":{"dtype":"F32","shape":\[16\]' "$tmp/p4"
ok $? "shapes as PyTorch's: Linear [out, in], the norm a vector"

"$dp" train $small --pp 4 --schedule 1f1b --steps 2 --init "$tmp/p4" --data "$tmp/d1-2" --verify > "$tmp/out" 2>&1 \
  && grep -q 'bit-equal' "$tmp/out"
ok $? "--verify from --init and --data: bit-equal to the reference (which got the same parameters)"
"$dp" train $small --pp 2 --steps 2 --loss xent --data "$tmp/x1-2" --verify > "$tmp/out" 2>&1 && grep -q 'bit-equal' "$tmp/out"
ok $? "cross-entropy labels from the file"
"$dp" train $small --pp 2 --steps 2 --save-params "$tmp/teacher" > /dev/null 2>&1 \
  && "$dp" train $small --pp 2 --steps 2 --data "$tmp/d1-2" --save-params "$tmp/given" > /dev/null 2>&1 \
  && ! cmp -s "$tmp/teacher" "$tmp/given"
ok $? "given data is what is learnt from (not the teacher's)"

# refusals: exit 2, a message naming the problem, nothing written
refuse() { # what words command...
  what=$1 words=$2; shift 2
  "$@" > "$tmp/out" 2> "$tmp/err"; rc=$?
  [ $rc -eq 2 ] && grep -q -- "$words" "$tmp/err" && [ ! -e "$tmp/none" ]
  ok $? "$what: exit $rc, $(head -n 1 "$tmp/err")"
}
refuse "too few steps of data" "holds data for 2 steps" "$dp" train $small --pp 2 --steps 3 --data "$tmp/d1-2" --save-params "$tmp/none"
refuse "data of another shape" '"step1.inputs" is F32 with 3 dims, expected F32 \[4, 8, 32\]' \
  "$dp" train --hidden 32 --tokens 8 --threads 1 --chunks 4 --pp 2 --steps 1 --data "$tmp/d1-2"
refuse "mse data for xent" '"step1.targets" is F32' "$dp" train $small --pp 2 --steps 1 --loss xent --data "$tmp/d1-2"
refuse "missing tensors (2 layers' file, 4 layers' model)" 'no tensor "layers.2.linear1.weight"' \
  "$dp" train $small --pp 4 --schedule 1f1b --steps 1 --init "$tmp/whole" --save-params "$tmp/none"
refuse "extra tensors (4 layers' file, 2 layers' model)" 'holds "layers.2.linear1.weight", which this model has no parameter for' \
  "$dp" train $small --pp 2 --steps 1 --init "$tmp/p4"
refuse "mis-shaped tensors" '"layers.0.linear1.weight" is F32 \[64, 16\], expected F32 \[128, 32\]' \
  "$dp" train --hidden 32 --tokens 8 --threads 1 --chunks 4 --pp 4 --schedule 1f1b --steps 1 --init "$tmp/p4"
refuse "a data file that is not safetensors" "header too large" "$dp" train $small --pp 2 --steps 1 --data "$0"
refuse "a missing --init file" "cannot open" "$dp" train $small --pp 2 --steps 1 --init "$tmp/nothing"
refuse "--save-params to a directory" "is not a regular file" "$dp" train $small --pp 2 --steps 1 --save-params "$tmp"
mkfifo "$tmp/fifo"
refuse "--save-params to a FIFO (as to a device: a rename would replace it)" "is not a regular file" \
  "$dp" train $small --pp 2 --steps 1 --save-params "$tmp/fifo"
[ -p "$tmp/fifo" ]; ok $? "the FIFO is still a FIFO"
rm -f "$tmp/fifo"
ls "$tmp" | grep -q '\.tmp\.'; [ $? -ne 0 ]; ok $? "no temporary file left behind"

echo "1..$n"
exit $failed
