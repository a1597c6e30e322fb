#!/bin/sh
# test_bootstrap_mpi.sh: tests/test_bootstrap as two MPI processes of two rank threads each, so
# that rank 0's abort crosses from process 0 to process 1 through the MPI bootstrap: process 1's
# pending barrier, its later calls and its aborted() query all name rank 0 and its reason.
# Skipped where the build has no MPI or no mpirun, and under the sanitizers.
top_builddir=${top_builddir:-.}
. "${top_srcdir:-.}/tests/mpi_env.sh"
why=$(mpi_missing)
if [ -n "$why" ]; then echo "1..0 # SKIP $why"; exit 0; fi
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
