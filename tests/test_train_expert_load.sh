#!/bin/sh
# test_train_expert_load.sh: `dualpipe train --dump-expert-load FILE`: one row per MoE layer of
# per-expert token counts summed over the run, each row summing to steps x tokens x topk x the
# global batch's micro-batches (data-parallel and expert-parallel copies included); a router
# skewed through --init (expert 0 biased to take every token, the last none) shows in its layer's
# row and only there; `eplb -r R -g G FILE` reads the file as it is, and a run placed by the plan
# it makes counts logical experts alike; the same counts as one
# process and as processes under mpirun; bad paths and models without MoE layers refused with
# exit 2 before any step runs.
dp="${top_builddir:-.}/tools/dualpipe"
eplb="${top_builddir:-.}/tools/eplb"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
skip() { n=$((n+1)); echo "ok $n # SKIP $1"; }
small="--hidden 16 --tokens 6 --threads 1 --pp 2 --chunks 4 --layers-per-stage 2"
moe="--experts 8 --topk 2 --groups 4 --topk-groups 2 --shared-experts 1 --expert-hidden 8"

# rows: the number of rows; sums: each row's sum, one a line
rows() { tr -d ' \n' < "$1" | sed 's/^{"logical_count":\[//; s/\]}$//' | sed 's/\],\[/]\n[/g' | grep -c '^\['; }
sums() { tr -d ' \n' < "$1" | sed 's/^{"logical_count":\[//; s/\]}$//' | sed 's/\],\[/]\n[/g' |
         tr -d '[]' | awk -F, '{ s = 0; for (i = 1; i <= NF; i++) s += $i; print s }'; }
# every row sums to $2
all_sum() { [ "$(sums "$1" | sort -u)" = "$2" ]; }

# the sums for each layout: steps x tokens 6 x topk 2 x chunks 4 x copies
check_sums() { # steps copies label, then options
  steps=$1 copies=$2 label=$3; shift 3
  "$dp" train $small $moe --steps "$steps" "$@" --dump-expert-load "$tmp/load.json" > "$tmp/out" 2> "$tmp/err"
  rc=$?
  want=$((steps * 6 * 2 * 4 * copies))
  all_sum "$tmp/load.json" $want && [ "$(rows "$tmp/load.json")" -eq 3 ]
  ok $(( rc + $? )) "$label: 3 rows (MoE layers 1-3), each summing to $want ($(sums "$tmp/load.json" | tr '\n' ' ')) $(cat "$tmp/err")"
}
check_sums 1 1 "one step, dualpipe"
check_sums 3 1 "three steps summed, dualpipe"
check_sums 2 2 "dp 2, gpipe" --schedule gpipe --dp 2
check_sums 2 2 "ep 2, 1f1b" --schedule 1f1b --ep 2
check_sums 1 8 "dp 2 x ep 4, zb1p" --schedule zb1p --dp 2 --ep 4
cp "$tmp/load.json" "$tmp/dp2ep4.json"
grep -q '^tokens per expert of 3 MoE layers over 1 step written to' "$tmp/out"
ok $? "the run says what it wrote: $(grep '^tokens per expert' "$tmp/out")"
head -c 20 "$tmp/load.json" | grep -q '^{"logical_count": \['
ok $? "SGLang's format: $(head -c 40 "$tmp/load.json")"

# --moe-layers: rows are the MoE layers only, in layer order
"$dp" train $small $moe --steps 1 --moe-layers 0,3 --dump-expert-load "$tmp/load.json" > /dev/null 2> "$tmp/err"
rc=$?; [ "$(rows "$tmp/load.json")" -eq 2 ]; ok $(( rc + $? )) "--moe-layers 0,3: two rows $(cat "$tmp/err")"

# the eplb tool plans from the file as it is
"$eplb" -r 8 -g 2 "$tmp/dp2ep4.json" > "$tmp/plan" 2> "$tmp/err"
rc=$?; grep -q '3 layers x 8 experts -> 8 replicas on 2 GPUs' "$tmp/plan"
ok $(( rc + $? )) "eplb -r 8 -g 2 FILE reads it: $(head -n 1 "$tmp/plan") $(cat "$tmp/err")"
"$eplb" -r 12 -g 4 -q -o "$tmp/plan.json" "$tmp/dp2ep4.json" 2> "$tmp/err"
rc=$?; grep -q phy2log "$tmp/plan.json"; ok $(( rc + $? )) "eplb -r 12 -g 4 writes a plan from it $(cat "$tmp/err")"
# and the run goes on from that plan (replicas over --ep 4), its loads still one per logical expert
check_sums 2 4 "--ep 4 --eplb-plan from the dumped loads" --ep 4 --eplb-plan "$tmp/plan.json" --verify
grep -q 'bit-equal' "$tmp/out"; ok $? "... --verify bit-equal to one rank running the plan"

# a skewed router: MoE layer 1 (model layer 2) biased so that expert 0 takes every token and expert
# 7 none, through --init; the bias stays (--bias-update-speed 0)
if command -v python3 > /dev/null 2>&1; then
  "$dp" train $small $moe --steps 0 --save-params "$tmp/p.st" > /dev/null 2>&1
  python3 - "$tmp/p.st" <<'EOF'
import json, struct, sys
path = sys.argv[1]
b = bytearray(open(path, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
t = json.loads(b[8:8 + n])['layers.2.gate.bias']
at = 8 + n + t['data_offsets'][0]
b[at:at + 32] = struct.pack('<8f', 10, 0, 0, 0, 0, 0, 0, -10)
open(path, 'wb').write(b)
EOF
  "$dp" train $small $moe --steps 2 --bias-update-speed 0 --init "$tmp/p.st" --dump-expert-load "$tmp/load.json" \
    > /dev/null 2> "$tmp/err"
  rc=$?
  row=$(tr -d ' \n' < "$tmp/load.json" | sed 's/^{"logical_count":\[//; s/\]}$//' | sed 's/\],\[/]\n[/g' | sed -n 2p)
  other=$(tr -d ' \n' < "$tmp/load.json" | sed 's/^{"logical_count":\[//; s/\]}$//' | sed 's/\],\[/]\n[/g' | sed -n 1p)
  # every token of 2 steps x 4 micro-batches x 6 tokens chose expert 0
  case "$row" in "[48,"*",0]") r=0 ;; *) r=1 ;; esac
  ok $(( rc + r )) "skewed: MoE layer 1's row starts with every token (48) and ends with none: $row $(cat "$tmp/err")"
  case "$other" in "[48,"*) r=1 ;; *) r=0 ;; esac
  ok $r "the other layers are not skewed: MoE layer 0 $other"
else
  skip "no python3 to write the skewed bias"
  skip "no python3 to write the skewed bias"
fi

# refused before any step runs, nothing written
bad() { # label, expected message, then the options
  label=$1 want=$2; shift 2
  "$dp" train $small $moe --steps 1 "$@" > "$tmp/out" 2> "$tmp/err"
  rc=$?
  [ $rc -eq 2 ] && grep -q -- "$want" "$tmp/err" && ! grep -q '^step' "$tmp/out"
  ok $? "$label: exit 2 ($rc) before training: $(cat "$tmp/err")"
}
mkdir "$tmp/dir"
bad "a directory" "dir" --dump-expert-load "$tmp/dir"
bad "a directory that is not there" "no-such-dir" --dump-expert-load "$tmp/no-such-dir/load.json"
bad "the same file as --save-params" "same file" --dump-expert-load "$tmp/x.json" --save-params "$tmp/x.json"
"$dp" train $small --steps 1 --dump-expert-load "$tmp/dense.json" > "$tmp/out" 2> "$tmp/err"
rc=$?; [ $rc -eq 2 ] && grep -q -- '--dump-expert-load needs MoE layers' "$tmp/err" && [ ! -e "$tmp/dense.json" ]
ok $? "a dense model: exit 2 ($rc), nothing written: $(cat "$tmp/err")"
"$dp" train --hidden 16 --pp 1 --schedule 1f1b --chunks 2 --experts 4 --steps 1 --dump-expert-load "$tmp/none.json" \
  > "$tmp/out" 2> "$tmp/err"
rc=$?; [ $rc -eq 2 ] && grep -q 'no MoE layer' "$tmp/err" && ! grep -q '^step' "$tmp/out"
ok $? "experts but no MoE layer (one layer, kept dense): exit 2 ($rc): $(cat "$tmp/err")"
"$dp" train --hidden 4 --tokens 1048576 --chunks 32 --pp 1 --schedule 1f1b --experts 4 --steps 1 \
  --dump-expert-load "$tmp/big.json" > "$tmp/out" 2> "$tmp/err"
rc=$?; [ $rc -eq 2 ] && grep -q 'past the 16777216' "$tmp/err"
ok $? "a step of more than 2^24 tokens: exit 2 ($rc): $(cat "$tmp/err")"

# under mpirun: the same counts as in one process, written by rank 0's process
. "${top_srcdir:-.}/tests/mpi_env.sh"
why=$(mpi_missing)
if [ -z "$why" ]; then
  "$dp" train $small $moe --steps 2 --schedule dualpipev --ep 2 --dump-expert-load "$tmp/one.json" > /dev/null 2>&1
  timeout 120 mpirun -np 2 "$dp" train $small $moe --steps 2 --schedule dualpipev --ep 2 \
    --dump-expert-load "$tmp/mpi.json" > "$tmp/out" 2> "$tmp/err"
  rc=$?
  if grep -q 'link mpi' "$tmp/err"; then
    cmp -s "$tmp/one.json" "$tmp/mpi.json"
    ok $(( rc + $? )) "--ep 2 as 2 processes (mpirun): the file equals the one-process run's"
  else
    skip "this build runs no MPI job ($(head -n 1 "$tmp/err"))"
  fi
else
  skip "$why"
fi

echo "1..$n"
exit $failed
