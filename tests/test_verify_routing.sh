#!/bin/sh
# test_verify_routing.sh: `dualpipe verify` with MoE layers makes the cpu follow the driver's
# expert choices and judges each choice that differed: a near-tie flipped by rounding-sized
# differences passes (and is reported), a wrong top-k or a perturbation bigger than the dtype's
# rounding fails. The driver is the cpu driver with its top-k made faulty (tests/driver_fault.c:
# tie:F moves every score by up to F of itself before choosing, topk picks the (k+1)-th best).
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
DUALPIPE_DRIVER_PATH=$top_builddir/tests/.libs
export DUALPIPE_DRIVER_PATH
moe="--driver fault --experts 16 --topk 4 --groups 4 --topk-groups 2 --shared-experts 1 --hidden 64 --tokens 64 --chunks 4 --steps 2 -q"

# fault expected extra-options ('_' for spaces) what-the-report-must-say ('_' for spaces)
cases="- PASS --schedule_1f1b_--pp_2 the_cpu's_own_equal_fault's
tie:1e-3 PASS --schedule_1f1b_--pp_2_--dtype_bf16 ties_within_rounding
tie:3e-3 PASS --schedule_dualpipe_--pp_2_--ep_2_--dtype_bf16 ties_within_rounding
tie:1e-3 FAIL --schedule_1f1b_--pp_2 more_than_rounding_explains
tie:0.1 FAIL --schedule_1f1b_--pp_2_--dtype_bf16 more_than_rounding_explains
topk FAIL --schedule_1f1b_--pp_2_--dtype_bf16 more_than_rounding_explains
topk FAIL --schedule_dualpipe_--pp_2_--ep_2 more_than_rounding_explains
- PASS --schedule_zb1p_--pp_2_--dp_2_--dtype_bf16 the_cpu's_own_equal_fault's"
echo "1..$(printf '%s\n' "$cases" | wc -l)"
i=0
printf '%s\n' "$cases" | while read -r fault want extra says; do
  i=$((i + 1))
  opts=$(echo "$extra" | tr '_' ' ')
  pattern=$(echo "$says" | tr '_' ' ')
  if [ "$fault" = "-" ]; then out=$(unset DUALPIPE_FAULT; "$tool" verify $moe $opts 2>&1)
  else out=$(DUALPIPE_FAULT=$fault "$tool" verify $moe $opts 2>&1); fi
  status=$?
  verdict=$(printf '%s\n' "$out" | grep -E '^(PASS|FAIL)')
  ok=0
  if [ "$want" = PASS ]; then [ $status -eq 0 ] && [ "${verdict#PASS}" != "$verdict" ] && ok=1
  else [ $status -eq 1 ] && [ "${verdict#FAIL}" != "$verdict" ] && ok=1; fi
  printf '%s\n' "$out" | grep -q "^expert choices: .*$pattern" || ok=0
  note=$(printf '%s\n' "$out" | grep '^expert choices' | sed 's/.*routings differed/differed/; s/^expert choices: //')
  if [ $ok = 1 ]; then echo "ok $i - fault $fault $opts: $verdict ($note)"
  else
    echo "not ok $i - fault $fault $opts: expected $want saying '$pattern' (exit $status)"
    printf '%s\n' "$out" | sed 's/^/# /'
  fi
done
