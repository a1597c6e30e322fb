#!/bin/sh
# bench_processes.sh: `make bench`'s processes benchmark: the same training step as rank threads
# of one process and as MPI processes (one rank each, then two rank threads each), side by side
# in one run, with the shapes of the reference's CPU benchmark (DualPipe's example stage: Linear
# h -> 4h, GELU, Linear 4h -> h, no bias; MSE; fp32). Prints the median step of each and the
# ratio processes / threads. Figures only: nothing here passes or fails on a time. The processes
# are left unbound, so that the mpi link's progress thread has a core (dualpipe(1), ENVIRONMENT).
# --quick: small shapes and few steps (seconds, for CI). Skips, saying why, without MPI.
dir=$(dirname "$0")
tool="$dir/dualpipe"
[ -x "$tool" ] || tool=./tools/dualpipe
quick=0
[ "${1:-}" = "--quick" ] && quick=1
if ! command -v mpirun >/dev/null 2>&1; then echo "bench_processes: no mpirun on PATH; nothing to compare"; exit 0; fi
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMPI_MCA_rmaps_base_oversubscribe
# one kernel thread per rank when the ranks fill the cores, as the reference is run
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export OPENBLAS_NUM_THREADS OMP_NUM_THREADS

if [ $quick = 1 ]; then
  shapes="dualpipe 2 64 32 4 4
dualpipev 2 64 32 4 4"
else
  shapes="dualpipe 2 256 256 8 8
dualpipe 4 256 256 8 8
dualpipev 2 256 256 8 8
dualpipe 2 512 512 8 6"
fi

median() { sed -n 's/.*median step \([0-9.]*\) ms.*/\1/p'; }

printf '%-10s %5s %6s %7s %7s | %12s %14s %16s | %9s %9s\n' schedule ranks hidden tokens chunks \
  "threads ms" "processes ms" "2 ranks/proc ms" "proc/thr" "2rpp/thr"
echo "$shapes" | while read -r sched ranks hidden tokens chunks steps; do
  common="--schedule $sched --pp $ranks --hidden $hidden --tokens $tokens --chunks $chunks --block mlp --steps $steps --threads 1 -q"
  t=$("$tool" train $common 2>&1 | median)
  p=$(mpirun --bind-to none -np "$ranks" "$tool" train $common 2>/dev/null </dev/null | median)
  h=-
  if [ $((ranks % 2)) -eq 0 ] && [ "$ranks" -gt 2 ]; then
    h=$(mpirun --bind-to none -np $((ranks / 2)) "$tool" train $common 2>/dev/null </dev/null | median)
  fi
  if [ -z "$p" ]; then
    echo "bench_processes: this build has no MPI (or mpirun failed): $("$tool" train $common 2>&1 >/dev/null | tail -1)"
    exit 0
  fi
  r1=$(awk -v a="$p" -v b="$t" 'BEGIN { printf "%.3f", a / b }')
  r2=-
  [ "$h" != "-" ] && [ -n "$h" ] && r2=$(awk -v a="$h" -v b="$t" 'BEGIN { printf "%.3f", a / b }')
  printf '%-10s %5s %6s %7s %7s | %12s %14s %16s | %9s %9s\n' "$sched" "$ranks" "$hidden" "$tokens" "$chunks" \
    "$t" "$p" "${h:--}" "$r1" "$r2"
done
