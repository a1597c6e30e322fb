#!/bin/sh
# test_launch_tool.sh: what `dualpipe train` does with a launcher's environment but no MPI
# launcher: CPU ranks in several processes refused (they need MPI), a bad variable named, a
# rank outside the size refused, DUALPIPE_TIMEOUT_S read and checked; one process unchanged.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
small="--pp 2 --hidden 16 --tokens 4 --chunks 4 --steps 1"
n=0
check() { # name expected-status pattern command...
  name=$1 want=$2 pattern=$3; shift 3
  out=$("$@" 2>&1); status=$?
  n=$((n + 1))
  if [ "$status" -eq "$want" ] && printf '%s\n' "$out" | grep -Eq "$pattern"; then echo "ok $n - $name"
  else echo "not ok $n - $name (exit $status)"; printf '%s\n' "$out" | sed 's/^/# /' | head -10; fi
}
echo "1..6"
check "torchrun's RANK/WORLD_SIZE with the cpu driver: refused, saying MPI is needed" 2 "talk over MPI" \
  env RANK=0 WORLD_SIZE=2 "$tool" train $small
check "a rank outside the size is refused naming the variables" 2 "RANK is 3 but WORLD_SIZE is 2" \
  env RANK=3 WORLD_SIZE=2 "$tool" train $small
check "DUALPIPE_RANK that is not a number is refused naming it" 2 "DUALPIPE_RANK" \
  env DUALPIPE_RANK=x DUALPIPE_WORLD_SIZE=2 "$tool" train $small
check "DUALPIPE_WORLD_SIZE=1: one process, trains" 0 "loss" \
  env DUALPIPE_RANK=0 DUALPIPE_WORLD_SIZE=1 "$tool" train $small
check "DUALPIPE_TIMEOUT_S=0 is refused naming it" 2 "DUALPIPE_TIMEOUT_S" \
  env DUALPIPE_TIMEOUT_S=0 "$tool" train $small
check "DUALPIPE_TIMEOUT_S=5 is taken" 0 "loss" env DUALPIPE_TIMEOUT_S=5 "$tool" train $small
