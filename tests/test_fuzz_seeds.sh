#!/bin/sh
# test_fuzz_seeds.sh: every fuzz target, built without libFuzzer (tests/fuzz/replay_main.c), runs
# over its committed seeds, where each target's own checks hold (a target aborts on a broken
# property); `make fuzz` does the fuzzing itself where clang is configured.
n=0; failed=0
for t in eplb_loads eplb_plan cost safetensors checkpoint_index; do
  n=$((n+1))
  out=$("${top_builddir:-.}/tests/fuzz/replay_$t" "${top_srcdir:-.}/tests/fuzz/seeds/$t" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then echo "ok $n - fuzz_$t over its seeds: $(echo "$out" | tail -n 1)"
  else echo "not ok $n - fuzz_$t over its seeds (exit $rc): $out"; failed=1; fi
done
echo "1..$n"
exit $failed
