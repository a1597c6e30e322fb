#!/bin/sh
# test_bench_link.sh: `dualpipe bench-link` over the cpu link with 2 and 4 rank threads, every
# operation checked element by element (#wrong 0, exit 0), its bus bandwidth the algorithm
# bandwidth times nccl-tests' factor; a corrupted element (the DUALPIPE_BENCH_LINK_CORRUPT test
# hook) counted and exit 1; bad values refused with exit 2 naming the option; the mpi link in one
# process, and under mpirun 2 processes x 1 and x 2 rank threads (skipped with the reason where
# the build has no MPI or no mpirun, or under sanitizers).
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
show() { sed 's/^/# /' "$@" | head -40; }
quick="-b 4 -e 64K -f 4 -n 3 -w 1"
unset DUALPIPE_BENCH_LINK_CORRUPT

# The table's rows ("op size count type time algbw busbw wrong") are right for `ranks` ranks and
# the ops named: each op once per size from 4 to 64K by 4 (8 sizes), the count a quarter of the
# size (alltoallv's size a multiple of 4 x ranks), busbw = algbw x the op's factor (to the
# printed digits), and the wrong column as given (0 where the count is 0).
rows_right() { # file ranks wrong ops...
  file=$1 ranks=$2 wrong=$3; shift 3
  grep -v '^#' "$file" > "$tmp/rows"
  [ "$(wc -l < "$tmp/rows")" -eq $((8 * $#)) ] || return 1
  for op in "$@"; do [ "$(grep -c "^ *$op " "$tmp/rows")" -eq 8 ] || return 1; done
  awk -v n="$ranks" -v wrong="$wrong" '
    { f = $1 == "sendrecv" ? 1 : $1 == "alltoallv" ? (n - 1) / n : $1 == "allreduce" ? 2 * (n - 1) / n : -1
      w = $3 == 0 && wrong != "N/A" ? 0 : wrong  # nothing to get wrong in an empty buffer
      if (f < 0 || $4 != "fp32" || $3 * 4 != $2 || $8 != w) bad = 1
      if ($1 == "alltoallv" && $2 % (4 * n) != 0) bad = 1
      if ($1 != "alltoallv" && $2 != 4 * 4 ^ ((NR - 1) % 8)) bad = 1
      d = $7 - $6 * f; if (d < -0.002 || d > 0.002 || $5 <= 0) bad = 1 }
    END { exit bad }' "$tmp/rows"
}

for ranks in 2 4; do
  "$tool" bench-link --ranks $ranks -c 1 $quick > "$tmp/out" 2> "$tmp/err"; status=$?
  [ $status = 0 ] && rows_right "$tmp/out" $ranks 0 sendrecv alltoallv allreduce &&
    grep -q "^# ranks $ranks: 1 process x $ranks rank threads; driver cpu, link cpu" "$tmp/out" &&
    grep -q '^# wrong elements: 0 OK' "$tmp/out" &&
    grep -q '^# bus bandwidth at the largest size: sendrecv .*alltoallv .*x sendrecv.*allreduce' "$tmp/out"
  ok $? "cpu link, $ranks rank threads, every op checked: #wrong 0, busbw by nccl-tests' factors, exit 0 (exit $status)"
  [ $status = 0 ] || show "$tmp/out" "$tmp/err"
done

for op in sendrecv alltoallv allreduce; do
  "$tool" bench-link --ranks 3 -o $op -c 1 $quick > "$tmp/out" 2> "$tmp/err"; status=$?
  [ $status = 0 ] && rows_right "$tmp/out" 3 0 $op && ! grep -q 'largest size' "$tmp/out"
  ok $? "-o $op on 3 ranks: only its rows, all right (exit $status)"
  [ $status = 0 ] || show "$tmp/out" "$tmp/err"
done

# the check counts what it finds: one element flipped on rank 0 at every size
DUALPIPE_BENCH_LINK_CORRUPT=1 "$tool" bench-link --ranks 2 -c 1 $quick > "$tmp/out" 2> "$tmp/err"; status=$?
[ $status = 1 ] && rows_right "$tmp/out" 2 1 sendrecv alltoallv allreduce && grep -q '^# wrong elements: 23 FAILED' "$tmp/out"
ok $? "one corrupted element per size is counted (#wrong 1 in every row, 23 in all: not the empty alltoallv) and the exit status is 1 (exit $status)"
[ $status = 1 ] || show "$tmp/out" "$tmp/err"

"$tool" bench-link -c 0 $quick > "$tmp/out" 2> "$tmp/err"; status=$?
[ $status = 0 ] && rows_right "$tmp/out" 2 N/A sendrecv alltoallv allreduce && grep -q 'not checked' "$tmp/out"
ok $? "-c 0: nothing checked, #wrong N/A, 2 ranks by default (exit $status)"

"$tool" bench-link -o sendrecv -b 1K -e 4k -n 1 -w 0 > "$tmp/out" 2> "$tmp/err"; status=$?
[ $status = 0 ] && [ "$(grep -v '^#' "$tmp/out" | awk '{printf "%s ", $2}')" = "1024 2048 4096 " ]
ok $? "sizes take K (and k) suffixes: -b 1K -e 4k gives 1024 2048 4096 (exit $status)"

# buffers that cannot fit the device's memory (1 TB on the one cpu device): refused before any
# is allocated, every rank ending rather than waiting for the others
"$tool" bench-link --ranks 64 -b 8G -e 8G -o sendrecv -n 1 -w 0 > "$tmp/out" 2> "$tmp/err"; status=$?
[ $status = 1 ] && grep -q 'lower -e/--maxbytes' "$tmp/err" && [ ! -s "$tmp/out" ]
ok $? "buffers larger than the device's memory are refused, exit 1 ($(head -n 1 "$tmp/err"))"

# bad values: exit 2 and the option named
while IFS='|' read -r name args; do
  "$tool" bench-link $args > "$tmp/out" 2> "$tmp/err"; status=$?
  [ $status = 2 ] && grep -q -e "$name" "$tmp/err" && [ ! -s "$tmp/out" ]
  ok $? "bench-link $args: refused, exit 2, naming $name ($(head -n 1 "$tmp/err"))"
done <<EOF
--minbytes|-b 0
--minbytes|-b -8
--minbytes|-b 2
--minbytes|-b 12X
--minbytes|-b 1KB
--maxbytes|-e 9G
--maxbytes|-e 99999999999999999999
--minbytes|-b 1M -e 1K
--stepfactor|-f 1
--stepfactor|-f 0
--iters|-n 0
--iters|-n 99999999
--warmup_iters|-w -1
--check|-c 2
--op|-o broadcast
--ranks|--ranks 0
--link|--link tcp
--driver|--driver nosuchdriver
EOF

# the mpi link: in this process alone, then under mpirun
. "${top_srcdir:-.}/tests/mpi_env.sh"
why=$(mpi_missing)
if [ -n "$why" ]; then
  ok 0 "the mpi link # SKIP $why"
  echo "1..$n"
  exit $failed
fi
"$tool" bench-link --link mpi --ranks 2 -c 1 $quick > "$tmp/out" 2> "$tmp/err"; status=$?
[ $status = 0 ] && rows_right "$tmp/out" 2 0 sendrecv alltoallv allreduce &&
  grep -q '^# ranks 2: 1 process x 2 rank threads; driver cpu, link mpi' "$tmp/out"
ok $? "the mpi link in one process, 2 rank threads, every op checked: #wrong 0 (exit $status)"
[ $status = 0 ] || show "$tmp/out" "$tmp/err"
"$tool" bench-link --link mpi --ranks 9 -n 1 > "$tmp/out" 2> "$tmp/err"; status=$?
[ $status = 2 ] && grep -q 'at most 8 rank threads per process' "$tmp/err"
ok $? "the mpi link with 9 rank threads in a process: refused, exit 2 ($(head -n 1 "$tmp/err"))"

for case in "1 " "2 --link mpi"; do
  set -- $case
  per=$1; shift
  timeout 120 mpirun -np 2 "$tool" bench-link ${per:+--ranks $per} "$@" -c 1 $quick > "$tmp/out" 2> "$tmp/err"
  status=$?
  world=$((2 * per))
  [ $status = 0 ] && rows_right "$tmp/out" $world 0 sendrecv alltoallv allreduce &&
    grep -q "^# ranks $world: 2 processes x $per rank thread" "$tmp/out" && grep -q 'link mpi' "$tmp/out" &&
    [ "$(grep -c '^# wrong elements' "$tmp/out")" = 1 ] && [ "$(grep -c 'hosts rank' "$tmp/err")" = 2 ]
  ok $? "mpirun -np 2, $per rank thread(s) each${1:+ ($*)}: every op checked over $world ranks, #wrong 0, one table (exit $status)"
  [ $status = 0 ] || show "$tmp/out" "$tmp/err"
done
DUALPIPE_BENCH_LINK_CORRUPT=1 timeout 120 mpirun -np 2 "$tool" bench-link --ranks 2 -c 1 $quick > "$tmp/out" 2> "$tmp/err"
status=$?
[ $status != 0 ] && [ $status != 124 ] && rows_right "$tmp/out" 4 1 sendrecv alltoallv allreduce &&
  grep -q '^# wrong elements: 23 FAILED' "$tmp/out"
ok $? "mpirun -np 2 x 2 with a corrupted element per size: counted over the processes, non-zero exit (exit $status)"
[ $status != 0 ] || show "$tmp/out" "$tmp/err"

echo "1..$n"
exit $failed
