#!/bin/sh
# test_mpi_train.sh: `dualpipe train` as several processes under mpirun, over the mpi link: every
# schedule bit-equal to the single-rank reference and printing the same losses as the run in one
# process, with one rank per process and with two rank threads per process; processes that
# cannot share the ranks evenly refused; and a rank that exits, hangs or fails in the middle of
# a step (tests/driver_fault.c) ends the whole job, non-zero, within the timeout and a few
# seconds, naming the rank. Skipped where the build has no MPI or no mpirun.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
. "${top_srcdir:-.}/tests/mpi_env.sh"
why=$(mpi_missing)
if [ -n "$why" ]; then echo "1..0 # SKIP $why"; exit 0; fi
DUALPIPE_DRIVER_PATH=$top_builddir/tests/.libs
export DUALPIPE_DRIVER_PATH
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
small="--hidden 32 --tokens 8 --steps 3 --threads 1"
n=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); echo "not ok $n - $*"; }

echo "1..20"
# every schedule, 2 processes x 2 rank threads, and 4 processes x 1 for the two DualPipes
for case in "2 dualpipe 4" "2 dualpipev 2" "2 1f1b 4" "2 zb1p 4" "2 gpipe 4" "4 dualpipe 4" "4 dualpipev 4" "2 interleaved-1f1b 2"; do
  set -- $case
  np=$1 sched=$2 pp=$3
  "$tool" train --schedule "$sched" --pp "$pp" $small > "$tmp/threads" 2>&1
  timeout 120 mpirun -np "$np" "$tool" train --schedule "$sched" --pp "$pp" $small --verify > "$tmp/mpi" 2> "$tmp/err"
  status=$?
  grep '^step' "$tmp/threads" | awk '{print $2, $4}' > "$tmp/a"
  grep '^step' "$tmp/mpi" | awk '{print $2, $4}' > "$tmp/b"
  if [ $status -eq 0 ] && grep -q 'bit-equal' "$tmp/mpi" && [ -s "$tmp/a" ] && cmp -s "$tmp/a" "$tmp/b" &&
     [ "$(grep -o 'hosts rank' "$tmp/err" | wc -l)" -eq "$np" ]; then
    ok "$sched on $pp ranks as $np processes: bit-equal to the reference, the losses of one process"
  else
    notok "$sched on $pp ranks as $np processes (exit $status)"
    sed 's/^/# /' "$tmp/mpi" "$tmp/err" | head -30
  fi
done

# data parallelism: 2 replicas of a 2-rank pipeline, as 4 processes and as 2 x 2 rank threads
for np in 4 2; do
  timeout 120 mpirun -np "$np" "$tool" train --schedule dualpipev --pp 2 --dp 2 $small --verify > "$tmp/mpi" 2> "$tmp/err"
  status=$?
  if [ $status -eq 0 ] && grep -q 'bit-equal' "$tmp/mpi" && [ "$(grep -o 'hosts rank' "$tmp/err" | wc -l)" -eq "$np" ]; then
    ok "--dp 2 x --pp 2 as $np processes: bit-equal to the reference"
  else
    notok "--dp 2 x --pp 2 as $np processes (exit $status)"; sed 's/^/# /' "$tmp/mpi" "$tmp/err" | head -30
  fi
done

# the mpi link's progress thread (tests/test_mpi_train.sh runs oversubscribed, so unbound: it is on
# by default): off, and calling into MPI as often as it can, the run is the same
for us in 0 1; do
  DUALPIPE_MPI_PROGRESS_US=$us timeout 120 mpirun -x DUALPIPE_MPI_PROGRESS_US -np 2 "$tool" train --schedule dualpipe \
    --pp 4 $small --hidden 256 --tokens 64 --verify > "$tmp/mpi" 2> "$tmp/err"
  status=$?
  if [ $status -eq 0 ] && grep -q 'bit-equal' "$tmp/mpi"; then
    ok "DUALPIPE_MPI_PROGRESS_US=$us, 64 KB messages: bit-equal to the reference"
  else
    notok "DUALPIPE_MPI_PROGRESS_US=$us (exit $status)"; sed 's/^/# /' "$tmp/mpi" "$tmp/err" | head -30
  fi
done
DUALPIPE_MPI_PROGRESS_US=1e3 timeout 60 mpirun -x DUALPIPE_MPI_PROGRESS_US -np 2 "$tool" train --pp 2 $small > "$tmp/out" 2>&1
status=$?
if [ $status -eq 2 ] && grep -q 'DUALPIPE_MPI_PROGRESS_US=1e3: give the microseconds' "$tmp/out"; then
  ok "DUALPIPE_MPI_PROGRESS_US=1e3 refused (exit 2), saying what it takes"
else
  notok "DUALPIPE_MPI_PROGRESS_US=1e3 (exit $status)"; sed 's/^/# /' "$tmp/out" | head -20
fi

# the time-sharing note counts the rank threads of rank 0's process against that process's cores
timeout 120 taskset -c 0 mpirun --bind-to none -np 2 "$tool" train --pp 4 $small > "$tmp/out" 2>&1
status=$?
if [ $status -eq 0 ] && grep -q "note: 2 rank threads of rank 0's process share 1 CPU core" "$tmp/out"; then
  ok "pinned to one core, 2 processes of 2 ranks: the note counts 2 rank threads of rank 0's process on 1 core"
else
  notok "the time-sharing note under mpirun (exit $status)"; sed 's/^/# /' "$tmp/out" | grep -i 'note\|error' | head -5
fi

# three processes cannot share four ranks
timeout 60 mpirun -np 3 "$tool" train --pp 4 $small > "$tmp/out" 2>&1
status=$?
if [ $status -ne 0 ] && grep -q 'cannot be shared evenly by 3 processes' "$tmp/out"; then
  ok "4 ranks on 3 processes refused, saying why"
else
  notok "4 ranks on 3 processes (exit $status)"; sed 's/^/# /' "$tmp/out" | head -20
fi

# faults: rank 1 at step 2; the job must end non-zero within the timeout (3 s) and a few seconds
for case in "exit 4 1" "hang 4 1" "fail 4 1" "fail 2 2" "hang 2 3"; do
  set -- $case
  kind=$1 np=$2 rank=$3
  start=$(date +%s)
  DUALPIPE_FAULT="$kind:$rank:2" DUALPIPE_TIMEOUT_S=3 timeout 60 mpirun -np "$np" "$tool" train --driver fault \
    --pp 4 $small > "$tmp/out" 2>&1
  status=$?
  took=$(( $(date +%s) - start ))
  case "$kind" in
    exit) says="exited|exit code|non-zero status" ;;
    hang) says="did not complete within 3000 ms|rank $rank" ;;
    fail) says="rank $rank.*GEMM fails in step 2" ;;
  esac
  if [ $status -ne 0 ] && [ $status -ne 124 ] && [ "$took" -le 20 ] && grep -Eq "$says" "$tmp/out"; then
    ok "rank $rank ${kind}s in step 2 of $np processes: the job ends (exit $status) after ${took} s, saying so"
  else
    notok "rank $rank ${kind}s in step 2 of $np processes (exit $status after ${took} s)"
    sed 's/^/# /' "$tmp/out" | head -40
  fi
done
