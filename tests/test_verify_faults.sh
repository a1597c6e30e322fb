#!/bin/sh
# test_verify_faults.sh: `dualpipe verify` must catch a faulty driver at realistic widths (hidden
# 1024): the cpu driver with one fault injected (tests/driver_fault.c, $DUALPIPE_FAULT): one wrong
# gradient element, one wrong parameter where the gradient is smallest (where AdamW's direction is
# undefined and a loose allowance would hide it), an optimizer one ulp high everywhere. The same
# module without a fault must pass, so that each FAIL is the fault's.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
DUALPIPE_DRIVER_PATH=$top_builddir/tests/.libs
export DUALPIPE_DRIVER_PATH
size="--driver fault --schedule 1f1b --pp 2 --chunks 2 --hidden 1024 --ffn 1024 --tokens 4 --steps 2 -q"

# fault expected ('-': none, must pass) extra-options ('_' for spaces) what-the-report-must-say
cases="- PASS - -
grad:0.001 FAIL - linear.\.grad
param:0.5 FAIL - linear[12]
ulp FAIL - leans_one_way
grad:0.5 FAIL --dtype_bf16_--optimizer_sgd linear.\.grad
param:0.5 FAIL --dtype_bf16_--optimizer_sgd linear[12]
ulp FAIL --dtype_bf16_--optimizer_sgd leans_one_way
- PASS --dtype_bf16_--optimizer_sgd -"
echo "1..$(printf '%s\n' "$cases" | wc -l)"
i=0
printf '%s\n' "$cases" | while read -r fault want extra says; do
  i=$((i + 1))
  opts=""
  [ "$extra" != "-" ] && opts=$(echo "$extra" | tr '_' ' ')
  if [ "$fault" = "-" ]; then out=$(unset DUALPIPE_FAULT; "$tool" verify $size $opts 2>&1)
  else out=$(DUALPIPE_FAULT=$fault "$tool" verify $size $opts 2>&1); fi
  status=$?
  verdict=$(printf '%s\n' "$out" | grep -E '^(PASS|FAIL)')
  ok=0
  if [ "$want" = PASS ]; then [ $status -eq 0 ] && [ "${verdict#PASS}" != "$verdict" ] && ok=1
  else
    pattern=$(echo "$says" | tr '_' ' ')
    [ $status -eq 1 ] && [ "${verdict#FAIL}" != "$verdict" ] && printf '%s\n' "$out" | grep -q "$pattern" && ok=1
  fi
  if [ $ok = 1 ]; then echo "ok $i - fault $fault $opts: $verdict"
  else
    echo "not ok $i - fault $fault $opts: expected $want (exit $status)"
    printf '%s\n' "$out" | sed 's/^/# /'
  fi
done
