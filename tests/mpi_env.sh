# mpi_env.sh: sourced by the tests that run processes under mpirun. mpi_missing prints why they
# cannot run here (nothing where they can): a build without MPI, no mpirun on PATH, or a build
# under sanitizers, which see neither MPI's own allocations nor its threads. Sourcing it also
# sets what Open MPI needs here: mpirun refuses root unless told, and the machine may have fewer
# cores than the processes.
mpi_missing() {
  if ! grep -q '^#define HAVE_MPI 1' "${top_builddir:-.}/config.h" 2>/dev/null; then
    echo "this build has no MPI (install libopenmpi-dev openmpi-bin and configure again)"
  elif ! command -v mpirun > /dev/null 2>&1; then
    echo "no mpirun on PATH"
  else
    case "${sanitizers:-no}" in
      no|"") ;;
      *) echo "MPI's own allocations and threads are not instrumented (-fsanitize=$sanitizers)" ;;
    esac
  fi
}
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMPI_MCA_rmaps_base_oversubscribe
