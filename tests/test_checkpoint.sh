#!/bin/sh
# test_checkpoint.sh: `dualpipe train --save DIR --save-every N` and `--resume DIR`. For every
# schedule a run is killed in the middle of step 5 (tests/driver_fault.c ends the process) after
# its checkpoint of step 4, resumed, and must end with parameters and a last checkpoint
# byte-identical to a run that never stopped; the same across rank counts holding the same
# layers, with bf16 and with sgd; --keep N leaves the N latest. Then the option values and
# models a resume must refuse, each exit 2 with the reason, and nothing written.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
DUALPIPE_DRIVER_PATH=$top_builddir/tests/.libs
export DUALPIPE_DRIVER_PATH
tmp=$(mktemp -d) || exit 1
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
show() { sed 's/^/# /' "$@" | head -n 20; }
small="--hidden 16 --tokens 4 --chunks 8 --threads 1 --steps 6"

# crash_resume NAME "RUN OPTIONS" "RESUME OPTIONS": uninterrupted, killed at step 5, resumed
crash_resume() {
  name=$1 run=$2 again=$3 d="$tmp/$1"
  mkdir "$d"
  "$tool" train $small $run --save "$d/whole" --save-every 2 --save-params "$d/whole.st" > "$d/whole.out" 2>&1 || {
    ok 1 "$name: the uninterrupted run"; show "$d/whole.out"; return; }
  DUALPIPE_FAULT=exit:0:5 "$tool" train $small $run --driver fault --save "$d/ck" --save-every 2 > "$d/crash.out" 2>&1
  status=$?
  [ $status -eq 3 ] && [ "$(cat "$d/ck/latest")" = step-00000004 ] && [ ! -d "$d/ck/step-00000006" ]
  ok $? "$name: killed in step 5 (exit $status), the checkpoint of step 4 is the latest"
  [ $status -eq 3 ] || show "$d/crash.out"
  "$tool" train $small $again --resume "$d/ck" --save "$d/ck" --save-every 2 --save-params "$d/resumed.st" \
    > "$d/resume.out" 2>&1
  status=$?
  # the last checkpoint holds the tensors the uninterrupted run's does: laid out as the first
  # run's ranks hold them (regrouped through a resume that runs no step), byte for byte
  last="$d/ck/step-00000006"
  if [ "$run" != "$again" ]; then
    "$tool" train $small $run --resume "$last" --save "$d/regrouped" > "$d/regroup.out" 2>&1
    last="$d/regrouped/step-00000006"
  fi
  same=0
  for f in "$d/whole/step-00000006/"*.safetensors; do cmp -s "$f" "$last/${f##*/}" || same=1; done
  [ $status -eq 0 ] && grep -q "resumed from $d/ck/step-00000004 after step 4 of 6" "$d/resume.out" &&
    ! grep -q '^step    [1-4]/' "$d/resume.out" && grep -q '^step    6/6' "$d/resume.out" &&
    cmp -s "$d/whole.st" "$d/resumed.st" && [ $same = 0 ]
  ok $? "$name: resumed at step 5, final parameters and last checkpoint byte-identical to the uninterrupted run's"
  [ $status -eq 0 ] || show "$d/resume.out"
}

crash_resume dualpipe "--schedule dualpipe --pp 4" "--schedule dualpipe --pp 4"
crash_resume dualpipev "--schedule dualpipev --pp 2" "--schedule dualpipev --pp 2"
crash_resume 1f1b "--schedule 1f1b --pp 4" "--schedule 1f1b --pp 4"
crash_resume zb1p "--schedule zb1p --pp 4" "--schedule zb1p --pp 4"
crash_resume gpipe "--schedule gpipe --pp 2 --layers-per-stage 2" "--schedule gpipe --pp 2 --layers-per-stage 2"
crash_resume interleaved "--schedule interleaved-1f1b --pp 2" "--schedule interleaved-1f1b --pp 2"
# other rank counts holding the same 4 layers (the single-pipe schedules sum gradients alike)
crash_resume zb1p-to-dualpipev "--schedule zb1p --pp 4" "--schedule dualpipev --pp 2"
crash_resume 1f1b-to-gpipe-2x2 "--schedule 1f1b --pp 4" "--schedule gpipe --pp 2 --layers-per-stage 2"
crash_resume dualpipe-4-to-2x2 "--schedule dualpipe --pp 4" "--schedule dualpipe --pp 2 --layers-per-stage 2"
crash_resume bf16-xent "--schedule dualpipev --pp 2 --dtype bf16 --loss xent" "--schedule zb1p --pp 4 --dtype bf16 --loss xent"
crash_resume sgd-mlp "--schedule 1f1b --pp 2 --optimizer sgd --block mlp" "--schedule 1f1b --pp 2 --optimizer sgd --block mlp"
# MoE layers: expert weights, the gate, and the balancing bias that moves without a gradient
moe="--experts 4 --topk 2 --groups 2 --topk-groups 1 --shared-experts 1 --bias-update-speed 0.01"
crash_resume moe "--schedule dualpipe --pp 4 $moe" "--schedule dualpipe --pp 4 $moe"
crash_resume moe-zb1p-to-dualpipev "--schedule zb1p --pp 4 $moe" "--schedule dualpipev --pp 2 $moe"
# expert parallelism: each rank holds half of a stage's experts, gathered into the checkpoint
crash_resume moe-ep2 "--schedule dualpipev --pp 2 --ep 2 $moe" "--schedule dualpipev --pp 2 --ep 2 $moe"

# what a checkpoint holds: the tensors by layer, the optimizer's state, the index
d="$tmp/dualpipe/ck/step-00000004"
grep -q '"step": 4' "$d/index.json" && grep -q '"position": 4' "$d/index.json" &&
  grep -q 'layers.2.linear1.weight' "$d/rank-2.safetensors" &&
  grep -q 'optimizer.layers.2.linear1.weight.exp_avg_sq' "$d/rank-2.safetensors" &&
  grep -q 'momentum_buffer' "$tmp/sgd-mlp/ck/step-00000004/rank-1.safetensors"
ok $? "a checkpoint names its tensors as a state_dict by global layer, with AdamW's and SGD's state"
# a resume with the fault switch off and --steps equal to the checkpoint's: nothing to run
"$tool" train $small --schedule dualpipe --pp 4 --resume "$tmp/dualpipe/ck" --save-params "$tmp/same.st" > "$tmp/out" 2>&1 &&
  cmp -s "$tmp/same.st" "$tmp/dualpipe/whole.st" && ! grep -q '^step' "$tmp/out"
ok $? "resuming the last checkpoint with the same --steps runs no step and gives its parameters"
# --steps 0 --save: the initial state as a checkpoint of step 0, which resumes into the whole run
"$tool" train $small --steps 0 --save "$tmp/zero" > "$tmp/out" 2>&1 &&
  "$tool" train $small --resume "$tmp/zero" --save-params "$tmp/from0.st" > "$tmp/out" 2>&1 &&
  cmp -s "$tmp/from0.st" "$tmp/dualpipe/whole.st"
ok $? "a checkpoint of step 0 (--steps 0 --save) resumed gives the whole run"
# a crash while a checkpoint is written leaves DIR/step-N.partial: never taken for a checkpoint
cp -r "$tmp/dualpipe/ck" "$tmp/partial"
mkdir "$tmp/partial/step-00000008.partial" && echo junk > "$tmp/partial/step-00000008.partial/rank-0.safetensors"
"$tool" train $small --steps 8 --resume "$tmp/partial" --save "$tmp/partial" > "$tmp/out" 2>&1 &&
  grep -q "resumed from $tmp/partial/step-00000006" "$tmp/out" && [ ! -e "$tmp/partial/step-00000008.partial" ] &&
  [ "$(ls "$tmp/partial/step-00000008")" = "index.json
rank-0.safetensors
rank-1.safetensors
rank-2.safetensors
rank-3.safetensors" ]
ok $? "a partial checkpoint left by a crash is passed over, and replaced whole by the next"
grep -q '^checkpoint step 8 written to .*/step-00000008: 5 files, [0-9]* bytes, [0-9.]* ms$' "$tmp/out"
ok $? "a line per checkpoint written: $(grep '^checkpoint' "$tmp/out")"
"$tool" train $small --steps 8 --resume "$tmp/partial" --save "$tmp/partial" -q > "$tmp/out" 2>&1 && ! grep -q '^checkpoint' "$tmp/out"
ok $? "--quiet prints no checkpoint line"

# --keep N: the N latest checkpoints stay, and each resumes to the uninterrupted run
"$tool" train $small --schedule dualpipe --pp 4 --save "$tmp/keep" --save-every 1 --keep 2 > "$tmp/keep.out" 2>&1 &&
  [ "$(ls "$tmp/keep")" = "latest
step-00000005
step-00000006" ] && [ "$(grep -c 'older removed (--keep 2)$' "$tmp/keep.out")" = 4 ] &&
  grep -q '^checkpoint step 6 written to .*; 1 older removed (--keep 2)$' "$tmp/keep.out" &&
  "$tool" train $small --schedule dualpipe --pp 4 --resume "$tmp/keep/step-00000005" --save-params "$tmp/keep.st" \
    > "$tmp/out" 2>&1 && cmp -s "$tmp/keep.st" "$tmp/dualpipe/whole.st"
status=$?
ok $status "--keep 2 --save-every 1: steps 5 and 6 stay (4 lines say what was removed), step 5 resumes to the same parameters"
[ $status -eq 0 ] || show "$tmp/keep.out"
# resumed from an earlier step: later steps' checkpoints (the abandoned run's) are not counted nor removed
cp -r "$tmp/dualpipe/ck" "$tmp/keep-later"
"$tool" train $small --schedule dualpipe --pp 4 --steps 5 --resume "$tmp/keep-later/step-00000002" \
  --save "$tmp/keep-later" --save-every 1 --keep 1 > "$tmp/out" 2>&1 &&
  [ "$(ls "$tmp/keep-later")" = "latest
step-00000005
step-00000006" ] && [ "$(cat "$tmp/keep-later/latest")" = step-00000005 ]
ok $? "--keep 1 after a resume from step 2: steps 3 and 4 go, step 6 of the earlier run stays, latest is step 5"
# a checkpoint that cannot be removed is warned of; training goes on and its checkpoints are written
cp -r "$tmp/dualpipe/ck" "$tmp/keep-stuck"
mkdir "$tmp/keep-stuck/step-00000002/not-mine" "$tmp/precious" && echo keep > "$tmp/precious/file" &&
  ln -s "$tmp/precious" "$tmp/keep-stuck/step-00000001"
"$tool" train $small --schedule dualpipe --pp 4 --steps 7 --resume "$tmp/keep-stuck" --save "$tmp/keep-stuck" \
  --keep 1 > "$tmp/out" 2>&1
status=$?
[ $status -eq 0 ] && grep -q "warning: --keep: cannot remove the checkpoint $tmp/keep-stuck/step-00000002: .*; what is left of it is $tmp/keep-stuck/step-00000002.removing" "$tmp/out" &&
  [ "$(cat "$tmp/keep-stuck/latest")" = step-00000007 ] && [ ! -e "$tmp/keep-stuck/step-00000004" ] &&
  [ ! -e "$tmp/keep-stuck/step-00000006" ] && [ ! -e "$tmp/keep-stuck/step-00000002" ] &&
  [ -L "$tmp/keep-stuck/step-00000001" ] && [ "$(cat "$tmp/precious/file")" = keep ]
ok $? "--keep 1 with an old checkpoint it cannot remove: warned (exit $status), the others removed, step 7 written; a link named step-00000001 left alone, and what it points to"
[ $status -eq 0 ] || show "$tmp/out"

# dualpipe checkpoint: the checkpoint --resume would take, checked and described
"$tool" checkpoint "$tmp/dualpipe/ck" > "$tmp/out" 2>&1
status=$?
[ $status -eq 0 ] &&
  grep -q "^$tmp/dualpipe/ck/step-00000006: whole: step 6, 4 tensor files and the index, [0-9]* tensors, [0-9]* bytes" "$tmp/out" &&
  grep -q "^$tmp/dualpipe/ck holds 3 checkpoints: 2 4 6 (checked here)$" "$tmp/out" &&
  grep -q '^model:     4 layers (0-3 residual), hidden 16, ffn 64, 4 tokens a micro-batch, fp32, mse loss' "$tmp/out" &&
  grep -q '^optimizer: adamw, lr ' "$tmp/out" &&
  grep -q '^run:       dualpipe on 4 pipeline ranks, dp 1, ep 1, 8 micro-batches a pipeline' "$tmp/out" &&
  grep -q '^data:      teacher, 6 batches consumed: resuming trains step 7 next' "$tmp/out" &&
  [ "$(grep -c '^  rank-[0-3].safetensors .* bytes  CRC-32 [0-9a-f]\{8\}  [0-9]* tensors$' "$tmp/out")" = 4 ] &&
  ! grep -q '^    layers' "$tmp/out"
ok $? "dualpipe checkpoint DIR: the latest checkpoint whole, its model, optimizer, run, data and 4 files (exit $status)"
[ $status -eq 0 ] || show "$tmp/out"
# every checkpoint of the runs above (every schedule, dense and MoE layers, expert parallelism,
# bf16, SGD with momentum) checks whole against the model its index describes, whose parameter
# count (from the layers' shapes, nothing built) is what the files' parameter tensors hold
mkdir "$tmp/deep" && "$tool" train --schedule 1f1b --pp 2 --layers-per-stage 40 --hidden 8 --tokens 2 --chunks 2 \
  --steps 1 --save "$tmp/deep/ck" > "$tmp/out" 2>&1 # 80 layers: more than a stage may hold
ok $? "a run of 80 layers (2 stages of 40) writes a checkpoint"
params_held() { # the elements of the tensors --tensors lists that are not optimizer state
  awk '/^    / && $1 !~ /^optimizer\./ { s = substr($0, index($0, "[")); gsub(/[^0-9]+/, " ", s);
       n = split(s, d, " "); p = 1; for (i = 1; i <= n; i++) p *= d[i]; t += p } END { print t + 0 }' "$1"
}
bad_ones=""
for ck in "$tmp"/*/ck; do
  "$tool" checkpoint --tensors "$ck" > "$tmp/out" 2>&1 && grep -q 'each one the model needs' "$tmp/out" &&
    grep -q "; $(params_held "$tmp/out") parameters\$" "$tmp/out" || bad_ones="$bad_ones ${ck#$tmp/}"
done
[ -z "$bad_ones" ]
ok $? "dualpipe checkpoint: the last checkpoint of each of the $(ls -d "$tmp"/*/ck | wc -l) runs above (80 layers among them) is whole against its model, of the parameters its files hold${bad_ones:+ (not:$bad_ones)}"
# --tensors: every tensor a file holds, as many as the index counts
"$tool" checkpoint --tensors "$tmp/moe-ep2/ck/step-00000004" > "$tmp/out" 2>&1 &&
  grep -q '^moe:       4 experts, top 2, 2 groups (top 1), expert hidden [0-9]*, 1 shared' "$tmp/out" &&
  grep -q '^run:       dualpipev on 2 pipeline ranks, dp 1, ep 2, 8 micro-batches a pipeline (a step.s global batch: 16)' "$tmp/out" &&
  grep -q '^    layers.1.gate.bias  *F32  \[4\]$' "$tmp/out" &&
  [ "$(grep -c '^    ' "$tmp/out")" = "$(grep '^  rank-' "$tmp/out" | awk '{ n += $(NF - 1) } END { print n }')" ] &&
  ! grep -q ' holds .* checkpoints' "$tmp/out"
ok $? "--tensors lists each tensor with its dtype and shape, as many as the files hold; a step directory given, no list of others"
"$tool" checkpoint -q "$tmp/dualpipe/ck" > "$tmp/out" 2>&1 && [ ! -s "$tmp/out" ]
ok $? "-q prints nothing for a whole checkpoint (exit 0)"
# what is not a checkpoint: exit 2, saying what to give
check_refused() {
  what=$1 pattern=$2; shift 2
  "$tool" checkpoint "$@" > "$tmp/out" 2>&1
  status=$?
  [ $status -eq 2 ] && grep -q -- "$pattern" "$tmp/out" && ! grep -q ': whole: ' "$tmp/out"
  ok $? "dualpipe checkpoint, $what: exit $status, $(grep -m1 error "$tmp/out" | sed "s|$tmp/||g" | cut -c1-160)"
}
check_refused "no directory" "no checkpoint named"
check_refused "two directories" "more than one operand" "$tmp/dualpipe/ck" "$tmp/moe/ck"
check_refused "a missing path" "No such file or directory" "$tmp/nothing"
check_refused "a regular file" "not a directory" "$tmp/dualpipe/whole.st"
check_refused "a device" "not a directory" /dev/null
mkdir "$tmp/empty"
check_refused "a directory without checkpoints" "no checkpoint there" "$tmp/empty"
check_refused "--tensors given a value" "takes no value" --tensors=yes "$tmp/dualpipe/ck"

# ---------------------------------------------------------------------------- refusals
# refuse WHAT PATTERN ARGS...: exit 2, the message matching PATTERN, nothing created in $tmp/out.d
refuse() {
  what=$1 pattern=$2; shift 2
  rm -rf "$tmp/out.d"; mkdir "$tmp/out.d"
  "$tool" train $small "$@" > "$tmp/out" 2>&1
  status=$?
  [ $status -eq 2 ] && grep -q -- "$pattern" "$tmp/out" && [ -z "$(ls -A "$tmp/out.d")" ] && ! grep -q '^step' "$tmp/out"
  ok $? "$what: exit $status, $(grep -m1 error "$tmp/out" | cut -c1-150)"
}
refuse "--save-every 0" "--save-every" --save "$tmp/out.d" --save-every 0
refuse "--save-every -3" "--save-every" --save "$tmp/out.d" --save-every -3
refuse "--save-every huge" "--save-every" --save "$tmp/out.d" --save-every 99999999999
refuse "--save-every not a number" "--save-every" --save "$tmp/out.d" --save-every 2x
refuse "--save-every without --save" "needs --save" --save-every 2
refuse "--keep 0" "--keep must be between 1" --save "$tmp/out.d" --keep 0
refuse "--keep -1" "--keep must be between 1" --save "$tmp/out.d" --keep -1
refuse "--keep huge" "--keep must be between 1" --save "$tmp/out.d" --keep 99999999999
refuse "--keep not a number" "--keep expects a whole number" --save "$tmp/out.d" --keep 1.5
refuse "--keep without --save" "--keep needs --save" --keep 2
echo data > "$tmp/regular"
refuse "--save to a regular file" "not a directory (a regular file)" --save "$tmp/regular"
if mknod "$tmp/null" c 1 3 2>/dev/null; then
  refuse "--save to a character device node" "not a directory (a device)" --save "$tmp/null"
else ok 0 "# SKIP mknod not permitted here"; fi
mkfifo "$tmp/fifo" && refuse "--save to a FIFO" "not a directory (a FIFO)" --save "$tmp/fifo"
mkdir "$tmp/ro" && chmod 555 "$tmp/ro"
if [ "$(id -u)" != 0 ]; then refuse "--save to an unwritable directory" "cannot write in this directory" --save "$tmp/ro"
elif [ -d /proc/self ]; then refuse "--save to a directory no one may write in (/proc/self)" "cannot write in this directory" --save /proc/self
else ok 0 "# SKIP no unwritable directory for root"; fi
refuse "--save under a missing directory" "its parent directory must exist" --save "$tmp/no/such"
refuse "--save to a directory of an earlier run, without --resume" "already holds checkpoints" --save "$tmp/dualpipe/ck"
refuse "--resume of a directory with no checkpoint" "no checkpoint there" --resume "$tmp/out.d"
refuse "--resume of a missing directory" "No such file" --resume "$tmp/nothing"
refuse "--resume and --init" "name one of them" --resume "$tmp/dualpipe/ck" --init "$tmp/dualpipe/whole.st"
refuse "--resume past --steps" "past --steps 3" --resume "$tmp/dualpipe/ck" --steps 3
ck="$tmp/dualpipe/ck"
refuse "resume with another hidden size" "hidden size 16, this run's --hidden is 32" --resume "$ck" --hidden 32
refuse "resume with other layers" "4 layers, this run has 8" --resume "$ck" --layers-per-stage 2
refuse "resume with another block kind" "layer 0 of kind residual, this run's is mlp" --resume "$ck" --block mlp
refuse "resume with another dtype" "dtype fp32, this run's --dtype is bf16" --resume "$ck" --dtype bf16
refuse "resume with another loss" "loss mse, this run's --loss is xent" --resume "$ck" --loss xent
mck="$tmp/moe/ck"
grep -q '"moe": {"experts": 4, "topk": 2, "groups": 2, "topk_groups": 1' "$mck/step-00000004/index.json" &&
  grep -q 'layers.1.gate.bias' "$mck/step-00000004/rank-1.safetensors"
ok $? "an MoE checkpoint's index records the routing; its files hold the balancing bias"
grep -q '"run": {"schedule": "dualpipev", "pp": 2, "dp": 1, "ep": 2, "chunks": 8}' "$tmp/moe-ep2/ck/step-00000004/index.json"
ok $? "the index of a run with --ep 2 records dp 1 and ep 2"
refuse "resume an MoE model with another top-k" "top-k 2 in its MoE layers, this run's --topk is 1" --resume "$mck" $moe --topk 1 --expert-hidden 32
refuse "resume an MoE model with other groups" "expert groups 2 in its MoE layers, this run's --groups is 1" --resume "$mck" $moe --groups 1
refuse "resume an MoE model with another route scale" "route scale 1 in its MoE layers, this run's --route-scale is 2.5" --resume "$mck" $moe --route-scale 2.5
refuse "resume an MoE model as a dense one" "layer 1 of kind moe, this run's is residual" --resume "$mck"
refuse "resume with another optimizer" "optimizer adamw, this run's --optimizer is sgd" --resume "$ck" --optimizer sgd
refuse "resume sgd without its momentum" "momentum buffers are kept only with momentum" \
  --resume "$tmp/sgd-mlp/ck" --schedule 1f1b --pp 2 --optimizer sgd --block mlp --momentum 0

echo "1..$n"
exit $failed
