#!/bin/sh
# test_train_dataparallel.sh: `dualpipe train --dp N` end to end: --verify finds every
# schedule bit-equal to the single-rank reference fed the same global batch, with 2 replicas
# and with 3 (dualpipe, dualpipev), every replica compared; the layout is printed and the
# step-timing report lists every world rank; bad replica counts fail plainly (exit 2);
# verify takes --dp too.
dp="${top_builddir:-.}/tools/dualpipe"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
small="--hidden 16 --tokens 8 --threads 1 --steps 3"
exact='parameters 0 (relative 0): bit-equal'

# every schedule of the generators' table, one replica pair each, on as few ranks as it takes
"$dp" schedule --list | awk '{print $1}' > "$tmp/schedules"
[ "$(wc -l < "$tmp/schedules")" -ge 6 ]; ok $? "the schedules to run: $(tr '\n' ' ' < "$tmp/schedules")"
while read -r s; do
  "$dp" train $small --schedule "$s" --pp 2 --chunks 4 --dp 2 --verify > "$tmp/out" 2> "$tmp/err"
  [ $? -eq 0 ] && grep -q "$exact" "$tmp/out"
  ok $? "$s, dp 2 x pp 2: --verify bit-equal ($(grep -h '^verify\|error' "$tmp/out" "$tmp/err" | head -n 1))"
done < "$tmp/schedules"

for s in dualpipe dualpipev; do
  "$dp" train $small --schedule "$s" --pp 2 --chunks 4 --dp 3 --verify > "$tmp/out" 2> "$tmp/err"
  [ $? -eq 0 ] && grep -q "$exact" "$tmp/out"; ok $? "$s, dp 3 x pp 2: --verify bit-equal"
done
"$dp" train $small --schedule dualpipe --pp 4 --chunks 8 --dp 2 --dtype bf16 --loss xent --optimizer sgd --verify \
  > "$tmp/out" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q "$exact" "$tmp/out"; ok $? "dualpipe, dp 2 x pp 4, bf16, cross-entropy, sgd: --verify bit-equal"

"$dp" train $small --schedule dualpipev --pp 2 --chunks 4 --dp 3 --trace "$tmp/run.json" > "$tmp/out" 2> "$tmp/err"
ok $? "dualpipev dp 3 with a trace runs"
grep -q '^dualpipe train: dualpipev on 6 ranks (dp 3 x pp 2) (4 stages), 12 micro-batches (4 per replica)' "$tmp/out" &&
  grep -q '^layout: world rank = replica x 2 + pipeline rank; replica d holds ranks 2 d .. 2 d + 1 and runs micro-batches 4 d .. 4 d + 3' "$tmp/out"
ok $? "the header states the world, the global batch and the layout"
[ "$(grep -cE '^ +[0-5] +[0-9.]+ +[0-9.]+ ' "$tmp/out")" -eq 6 ] && grep -q 'every world rank' "$tmp/out"
ok $? "the step-timing report has a row for each of the 6 world ranks"
grep -q 'trace of [0-9]* actions (replica 0 of dp 3) written' "$tmp/out" && grep -q 'replica 0 of dp 3' "$tmp/run.json"
ok $? "the trace says it shows replica 0"

for bad in 0 -1 x 1025 99999999999; do
  "$dp" train $small --dp "$bad" > "$tmp/out" 2> "$tmp/err"
  [ $? -eq 2 ] && grep -q -- '--dp' "$tmp/err" && ! grep -q '^step' "$tmp/out"; ok $? "--dp $bad is refused ($(head -n 1 "$tmp/err"))"
done
"$dp" train $small --dp 512 --pp 4 > "$tmp/out" 2> "$tmp/err"
[ $? -eq 2 ] && grep -q '2048 ranks; one process runs at most 1024' "$tmp/err"
ok $? "dp 512 x pp 4 is refused ($(head -n 1 "$tmp/err"))"
"$dp" train --help | grep -q -- '--dp N'; ok $? "--help lists --dp"
"$dp" verify --driver cpu --dp 2 --pp 2 --chunks 4 --hidden 16 --tokens 8 --steps 2 > "$tmp/out" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q '^PASS' "$tmp/out" && grep -q 'pp 2, dp 2, chunks 4' "$tmp/out" && grep -q ': 16 loss values' "$tmp/out"
ok $? "verify --dp 2 compares all 16 losses of the global batch and passes"
"$dp" verify --driver cpu --dp 0 > "$tmp/out" 2> "$tmp/err"
[ $? -eq 2 ] && grep -q -- '--dp' "$tmp/err"; ok $? "verify --dp 0 is refused"

echo "1..$n"
exit $failed
