#!/bin/sh
# test_bootstrap_mpi.sh: tests/test_bootstrap as two MPI processes of two rank threads each, so
# that rank 0's abort crosses from process 0 to process 1 through the MPI bootstrap: process 1's
# pending barrier, its later calls and its aborted() query all name rank 0 and its reason.
# Skipped where the build has no MPI or no mpirun, and under the sanitizers.
top_builddir=${top_builddir:-.}
if ! grep -q '^#define HAVE_MPI 1' "$top_builddir/config.h" 2>/dev/null; then
  echo "1..0 # SKIP this build has no MPI (install libopenmpi-dev openmpi-bin and configure again)"; exit 0
fi
if ! command -v mpirun >/dev/null 2>&1; then echo "1..0 # SKIP no mpirun on PATH"; exit 0; fi
case "${sanitizers:-no}" in
  no|"") ;;
  *) echo "1..0 # SKIP MPI's own allocations and threads are not instrumented (-fsanitize=$sanitizers)"; exit 0 ;;
esac
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMPI_MCA_rmaps_base_oversubscribe
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

echo "1..1"
timeout 120 mpirun -np 2 "$top_builddir/tests/test_bootstrap" > "$tmp/out" 2>&1
status=$?
good=$(grep -c '^ok [0-9]* - mpi, 2 processes of 2 rank threads' "$tmp/out")
if [ $status -eq 0 ] && [ "$good" -eq 2 ] && ! grep -q '^not ok' "$tmp/out"; then
  echo "ok 1 - 2 processes of 2 rank threads: rank 0's abort reaches process 1's barrier, later calls and aborted()"
else
  echo "not ok 1 - 2 processes of 2 rank threads (exit $status, $good of 2 processes passed)"
  sed 's/^/# /' "$tmp/out" | head -40
fi
