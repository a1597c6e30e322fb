#!/bin/sh
# test_mpi_checkpoint.sh: checkpoints of `dualpipe train` as several processes under mpirun:
# each process writes its own ranks' files and the process of rank 0 the index, so the
# checkpoint is byte-identical to one written by a single process; a job whose rank exits in
# step 5 (tests/driver_fault.c) resumes from its checkpoint of step 4, as 2 or 4 processes or
# as one, to parameters byte-identical to a run that never stopped; --keep removes old ones in
# the process of rank 0 only. Skipped where the build has no MPI, no mpirun, or runs under
# sanitizers.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
. "${top_srcdir:-.}/tests/mpi_env.sh"
why=$(mpi_missing)
if [ -n "$why" ]; then echo "1..0 # SKIP $why"; exit 0; fi
DUALPIPE_DRIVER_PATH=$top_builddir/tests/.libs
export DUALPIPE_DRIVER_PATH
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
small="--schedule dualpipe --pp 4 --hidden 16 --tokens 4 --chunks 8 --threads 1 --steps 6"
n=0; failed=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
show() { sed 's/^/# /' "$@" | tail -n 20; }
same_files() { # DIR1 DIR2: the same rank files, byte for byte
  for f in "$1"/rank-*.safetensors; do cmp -s "$f" "$2/${f##*/}" || return 1; done
  [ "$(ls "$1")" = "$(ls "$2")" ]
}

"$tool" train $small --save "$tmp/whole" --save-every 2 --save-params "$tmp/whole.st" > "$tmp/whole.out" 2>&1
status=$?
ok $status "the uninterrupted run in one process (exit $status)"
[ $status -eq 0 ] || show "$tmp/whole.out"
DUALPIPE_FAULT=exit:2:5 timeout 120 mpirun -np 2 "$tool" train $small --driver fault --save "$tmp/ck" --save-every 2 \
  > "$tmp/crash.out" 2>&1
status=$?
[ $status -ne 0 ] && [ $status -ne 124 ] && [ "$(cat "$tmp/ck/latest" 2>/dev/null)" = step-00000004 ] &&
  grep -q 'rank 2 exits in step 5' "$tmp/crash.out"
ok $? "2 processes x 2 ranks, rank 2 (of the second process) exits in step 5 (exit $status), after the checkpoint of step 4"
[ $status -eq 0 ] && show "$tmp/crash.out"
same_files "$tmp/whole/step-00000004" "$tmp/ck/step-00000004" && grep -q '"pp": 4' "$tmp/ck/step-00000004/index.json"
ok $? "its checkpoint, each process writing its own ranks' files, is byte-identical to one process's"
timeout 120 mpirun -np 2 "$tool" train $small --resume "$tmp/ck" --save "$tmp/ck" --save-params "$tmp/resumed.st" \
  > "$tmp/resume.out" 2>&1
status=$?
[ $status -eq 0 ] && cmp -s "$tmp/whole.st" "$tmp/resumed.st" && same_files "$tmp/whole/step-00000006" "$tmp/ck/step-00000006" &&
  grep -q "resumed from $tmp/ck/step-00000004" "$tmp/resume.out"
ok $? "resumed as 2 processes: final parameters and checkpoint byte-identical to the uninterrupted run's (exit $status)"
[ $status -eq 0 ] || show "$tmp/resume.out"
timeout 120 mpirun -np 4 "$tool" train $small --resume "$tmp/ck/step-00000004" --save-params "$tmp/four.st" > "$tmp/four.out" 2>&1
status=$?
[ $status -eq 0 ] && cmp -s "$tmp/whole.st" "$tmp/four.st"
ok $? "resumed as 4 processes x 1 rank: byte-identical final parameters (exit $status)"
[ $status -eq 0 ] || show "$tmp/four.out"
[ $status -eq 0 ] && ! cmp -s "$tmp/whole.st" "$tmp/four.st" && grep loss "$tmp/whole.out" "$tmp/four.out" | sed 's/^/# /'
"$tool" train $small --resume "$tmp/ck/step-00000004" --save-params "$tmp/one.st" > "$tmp/one.out" 2>&1
status=$?
[ $status -eq 0 ] && cmp -s "$tmp/whole.st" "$tmp/one.st"
ok $? "the checkpoint of 2 processes resumed in one: byte-identical final parameters (exit $status)"
[ $status -eq 0 ] || show "$tmp/one.out"
# --keep under mpirun: the process of rank 0 removes the old checkpoints once all have written
timeout 120 mpirun -np 2 "$tool" train $small --steps 3 --save "$tmp/keep" --save-every 1 --keep 1 > "$tmp/keep.out" 2>&1
status=$?
[ $status -eq 0 ] && [ "$(ls "$tmp/keep")" = "latest
step-00000003" ] && [ "$(grep -c 'older removed (--keep 1)$' "$tmp/keep.out")" = 2 ]
ok $? "--keep 1 as 2 processes: only the checkpoint of step 3 stays, 2 lines say what was removed (exit $status)"
[ $status -eq 0 ] || show "$tmp/keep.out"
# expert parallelism across processes: refused, not written wrong
timeout 120 mpirun -np 2 "$tool" train --schedule dualpipe --pp 2 --hidden 16 --tokens 4 --threads 1 --steps 1 \
  --experts 4 --topk 2 --ep 2 --save "$tmp/ep" > "$tmp/out" 2>&1
status=$?
[ $status -eq 2 ] && grep -q "checkpoints of expert-parallel runs are written and read in one process only" "$tmp/out" &&
  [ ! -e "$tmp/ep/latest" ]
ok $? "--save with --ep 2 across 2 processes refused (exit $status), nothing written"
[ $status -eq 2 ] || show "$tmp/out"
echo "1..$n"
exit $failed
