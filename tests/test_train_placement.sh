#!/bin/sh
# test_train_placement.sh: `dualpipe train --eplb-plan FILE`, experts placed as the eplb tool's
# plan says. Each rule of the file refused with exit 2, naming the file and the rule, before
# anything runs; a plan that only moves experts gives the plan-less run's parameters byte for
# byte; a plan with replicas, made by the eplb tool from a skewed load, --verify bit-equal to one
# rank running the same plan for every schedule at --ep 1, 2 and 4, and byte-identical to the
# plan-less run, with data parallelism, bf16, and as processes under mpirun;
# the header says where the experts are; a resume with a plan continues bit-equal, and a
# checkpoint's logical experts resume under another plan.
dp="${top_builddir:-.}/tools/dualpipe"
eplb="${top_builddir:-.}/tools/eplb"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
show() { sed 's/^/# /' "$@" | head -n 20; }
# two MoE layers (1 and 2) whatever the schedule's stage count
small="--hidden 16 --tokens 6 --threads 1 --pp 2 --chunks 4 --steps 3 --layers-per-stage 2"
moe="--experts 8 --topk 2 --groups 4 --topk-groups 2 --shared-experts 1 --expert-hidden 8 --route-scale 2.5 --moe-layers 1,2"

# ---- the file's rules
plan() { printf '%s\n' "$2" > "$tmp/$1.json"; }
bad() { # file, expected message, then more options
  f=$1 want=$2; shift 2
  "$dp" train $small $moe --eplb-plan "$f" "$@" > "$tmp/out" 2> "$tmp/err"
  rc=$?
  [ $rc -eq 2 ] && grep -q -- "$want" "$tmp/err" && grep -q -- "$f" "$tmp/err" && ! grep -q '^step' "$tmp/out"
  ok $? "refused with exit 2 ($rc), nothing run: $want ($(head -c 300 "$tmp/err"))"
}
ident='[0, 1, 2, 3, 4, 5, 6, 7]'
bad "$tmp/absent.json" "No such file"
mkdir "$tmp/dir.json"; bad "$tmp/dir.json" "is a directory"
[ -r /dev/zero ] && bad /dev/zero "NUL byte" # a device is refused at its first bytes, not read forever
: > "$tmp/empty.json"; bad "$tmp/empty.json" "eplb tool writes"
plan trunc '{"num_replicas": 8, "num_gpus": 2, "phy2log": [[0, 1, 2'; bad "$tmp/trunc.json" "eplb tool writes"
plan garbage 'this is not json'; bad "$tmp/garbage.json" "eplb tool writes"
plan array "[$ident]"; bad "$tmp/array.json" "a plan is a JSON object"
plan noreplicas "{\"num_gpus\": 1, \"phy2log\": [$ident, $ident]}"; bad "$tmp/noreplicas.json" '"num_replicas" must be a whole number'
plan fraction "{\"num_replicas\": 8, \"num_gpus\": 1.5, \"phy2log\": [$ident, $ident]}"; bad "$tmp/fraction.json" '"num_gpus" must be a whole number'
plan multiple "{\"num_replicas\": 8, \"num_gpus\": 3, \"phy2log\": [$ident, $ident]}"; bad "$tmp/multiple.json" "not a multiple of num_gpus 3"
plan gpus "{\"num_replicas\": 8, \"num_gpus\": 4, \"phy2log\": [$ident, $ident]}"; bad "$tmp/gpus.json" "but --ep is 2" --ep 2
plan nophy "{\"num_replicas\": 8, \"num_gpus\": 1}"; bad "$tmp/nophy.json" 'no "phy2log" array'
plan rows "{\"num_replicas\": 8, \"num_gpus\": 1, \"phy2log\": [$ident]}"; bad "$tmp/rows.json" "phy2log has 1 layer(s), but the model has 2 MoE"
plan short "{\"num_replicas\": 8, \"num_gpus\": 1, \"phy2log\": [$ident, [0, 1, 2, 3, 4, 5, 6]]}"; bad "$tmp/short.json" "phy2log\[1\] must be an array of num_replicas = 8"
plan range "{\"num_replicas\": 8, \"num_gpus\": 1, \"phy2log\": [$ident, [0, 1, 2, 3, 4, 5, 6, 8]]}"; bad "$tmp/range.json" "phy2log\[1\]\[7\] must be an expert id from 0 to 7"
plan missing "{\"num_replicas\": 8, \"num_gpus\": 1, \"phy2log\": [$ident, [0, 1, 2, 3, 4, 5, 6, 6]]}"; bad "$tmp/missing.json" "places no replica of expert 7"
plan cnt "{\"num_replicas\": 8, \"num_gpus\": 1, \"phy2log\": [$ident, $ident], \"logcnt\": [[1,1,1,1,1,1,1,1], [2,1,1,1,1,1,1,1]]}"; bad "$tmp/cnt.json" "logcnt\[1\]\[0\] must be 1"
plan l2p "{\"num_replicas\": 8, \"num_gpus\": 1, \"phy2log\": [$ident, $ident], \"log2phy\": [[[0],[1],[2],[3],[4],[5],[6],[7]], [[0],[1],[2],[3],[4],[5],[7],[6]]]}"; bad "$tmp/l2p.json" "log2phy\[1\]\[6\]\[0\] must be a slot of expert 6"
"$dp" train $small --eplb-plan "$tmp/l2p.json" > "$tmp/out" 2> "$tmp/err"
[ $? -eq 2 ] && grep -q 'need --experts' "$tmp/err"; ok $? "--eplb-plan without --experts is refused: $(cat "$tmp/err")"
"$dp" train --help | grep -q -- '--eplb-plan FILE' && "$dp" verify --help | grep -q -- '--eplb-plan FILE'
ok $? "train and verify --help list --eplb-plan"

# ---- a plan that only moves experts: the plan-less run's bits
plan move "{\"num_replicas\": 8, \"num_gpus\": 2, \"phy2log\": [[7, 6, 5, 4, 3, 2, 1, 0], [1, 3, 5, 7, 0, 2, 4, 6]]}"
for ep in 1 2; do
  "$dp" train $small $moe --ep $ep -q --save-params "$tmp/none$ep.st" > /dev/null 2>&1
  "$dp" train $small $moe --ep $ep -q --eplb-plan "$tmp/move.json" --save-params "$tmp/move$ep.st" > "$tmp/out" 2>&1
  cmp -s "$tmp/none$ep.st" "$tmp/move$ep.st"; ok $? "--ep $ep: experts moved by a plan, parameters byte-identical to no plan"
done

# ---- replicas: plans the eplb tool makes from a skewed load (expert 0 and 7 hot)
printf '40 3 1 1 5 1 1 2\n1 1 2 1 1 3 1 60\n' > "$tmp/load.txt"
for g in 1 2 4; do
  "$eplb" "$tmp/load.txt" -r 12 -g $g -o "$tmp/plan$g.json" -q || ok 1 "eplb -g $g"
done
grep -q '"logcnt"' "$tmp/plan2.json" && [ "$(grep -c ', [0-9][0-9]*\]' "$tmp/plan2.json")" -gt 0 ]
ok $? "the eplb tool's plan has replicas: $(tr -d '\n ' < "$tmp/plan2.json" | sed 's/.*"logcnt"/logcnt/' | head -c 80)"
schedules=$("$dp" train --schedule none 2>&1 | sed -n 's/.*known schedules: //p' | tr -d ',')
for s in $schedules; do
  for ep in 1 2 4; do
    "$dp" train $small $moe --schedule "$s" --ep $ep --eplb-plan "$tmp/plan$ep.json" --verify > "$tmp/out" 2> "$tmp/err"
    rc=$?
    grep -q 'parameters 0 (relative 0): bit-equal' "$tmp/out"
    ok $(( rc + $? )) "$s --ep $ep with replicas: --verify bit-equal to one rank running the plan $(cat "$tmp/err")"
  done
done
"$dp" train $small $moe --ep 4 --eplb-plan "$tmp/plan4.json" --steps 1 > "$tmp/out" 2>&1
grep -q "^placement: --eplb-plan $tmp/plan4.json: 12 physical slots per MoE layer, 3 per ep rank; experts replicated per layer [0-9],[0-9], up to [0-9] slots each" "$tmp/out"
ok $? "the header says where the plan put the experts: $(grep '^placement' "$tmp/out")"
"$dp" train $small $moe --ep 2 --dp 2 --dtype bf16 --loss xent --eplb-plan "$tmp/plan2.json" --verify > "$tmp/out" 2>&1
grep -q 'bit-equal' "$tmp/out"; ok $? "--ep 2 --dp 2, bf16 and cross-entropy with replicas: bit-equal"
"$dp" verify --driver cpu --hidden 16 --tokens 6 --pp 2 --chunks 4 --steps 2 --layers-per-stage 2 $moe --ep 2 \
  --eplb-plan "$tmp/plan2.json" > "$tmp/out" 2>&1
grep -q '^PASS' "$tmp/out"; ok $? "verify takes --eplb-plan: $(tail -n 1 "$tmp/out")"
# a plan made for 4 ranks runs on one, which then holds all of its slots
"$dp" train $small $moe --eplb-plan "$tmp/plan4.json" --verify > "$tmp/out" 2>&1
grep -q 'bit-equal' "$tmp/out"; ok $? "--ep 1 runs a plan made for 4 ranks, one rank holding all 12 slots"

# the replicas' gradients exchanged between processes: each ep rank's pipeline in its own process
. "${top_srcdir:-.}/tests/mpi_env.sh"
why=$(mpi_missing)
if [ -z "$why" ]; then
  timeout 120 mpirun -np 4 "$dp" train $small $moe --schedule dualpipev --ep 2 --eplb-plan "$tmp/plan2.json" --verify \
    > "$tmp/out" 2> "$tmp/err"
  rc=$?
  if grep -q 'link mpi' "$tmp/err"; then
    grep -q 'bit-equal' "$tmp/out"; ok $(( rc + $? )) "--ep 2 with replicas as 4 processes (mpirun): bit-equal"
  else
    n=$((n+1)); echo "ok $n # SKIP this build runs no MPI job ($(head -n 1 "$tmp/err"))"
  fi
else
  n=$((n+1)); echo "ok $n # SKIP $why"
fi

# Against the plan-less run: each source's rows of an expert run on one replica as the plan-less
# GEMMs, and every holder folds the sources in source order, so the parameters are the same bytes
for ep in 1 2 4; do
  "$dp" train $small $moe --ep $ep -q --eplb-plan "$tmp/plan$ep.json" --save-params "$tmp/rep$ep.st" > /dev/null 2>&1
  rc=$?
  "$dp" train $small $moe --ep $ep -q --save-params "$tmp/plain$ep.st" > /dev/null 2>&1
  rc=$((rc + $?)); cmp -s "$tmp/plain$ep.st" "$tmp/rep$ep.st"
  ok $((rc + $?)) "--ep $ep with replicas against no plan: parameters byte-identical"
done

# ---- checkpoints with a plan: each logical expert saved once; a resume continues bit-equal
for ep in 1 2; do
  d="$tmp/ck$ep"; mkdir "$d"
  "$dp" train $small $moe --steps 4 --ep $ep --eplb-plan "$tmp/plan$ep.json" --save "$d/whole" --save-every 2 \
    --save-params "$d/whole.st" > "$tmp/out" 2>&1 || show "$tmp/out"
  "$dp" train $small $moe --steps 4 --ep $ep --eplb-plan "$tmp/plan$ep.json" --resume "$d/whole/step-00000002" \
    --save-params "$d/resumed.st" > "$tmp/out" 2>&1
  rc=$?
  [ $rc -eq 0 ] && grep -q 'resumed from' "$tmp/out" && cmp -s "$d/whole.st" "$d/resumed.st"
  ok $? "--ep $ep with replicas: resumed at step 3, final parameters byte-identical to the uninterrupted run's"
  [ $rc -eq 0 ] || show "$tmp/out"
done
# the checkpoint's experts are logical: a resume places them under another plan, or none
"$dp" train $small $moe --steps 4 --ep 2 --resume "$tmp/ck2/whole/step-00000002" --save-params "$tmp/replanned0.st" \
  > "$tmp/out" 2>&1 && \
"$dp" train $small $moe --steps 4 --ep 2 --eplb-plan "$tmp/move.json" --resume "$tmp/ck2/whole/step-00000002" \
  --save-params "$tmp/replanned1.st" > "$tmp/out" 2>&1 && cmp -s "$tmp/replanned0.st" "$tmp/replanned1.st"
ok $? "a checkpoint of a replicated plan resumes without a plan and under a plan that moves experts, alike"
echo "1..$n"
exit $failed
