# drivers/mpi/local.mk: ranks in several processes over MPI (the `mpi` link, the MPI bootstrap,
# starting MPI), compiled into libdualpipe when configure finds MPI; otherwise stubs that say
# how to get it. The tests run under mpirun where it exists and skip with the reason elsewhere.
engine_libdualpipe_la_SOURCES += engine/mpi_job.h
dualpipe_include_HEADERS += engine/mpi_job.h
if HAVE_MPI
engine_libdualpipe_la_SOURCES += \
	drivers/mpi/mpi_start.c \
	drivers/mpi/mpi_link.c \
	drivers/mpi/mpi_bootstrap.c
engine_libdualpipe_la_LIBADD += $(MPI_LIBS)
else
engine_libdualpipe_la_SOURCES += drivers/mpi/mpi_absent.c
endif
EXTRA_DIST += drivers/mpi/mpi_start.c drivers/mpi/mpi_link.c drivers/mpi/mpi_bootstrap.c drivers/mpi/mpi_absent.c

# what the tests that run under mpirun share: when they can run, and Open MPI's settings
EXTRA_DIST += tests/mpi_env.sh

# `dualpipe train` under mpirun: schedules bit-equal, processes refused, faults ending the job
TESTS += tests/test_mpi_train.sh
EXTRA_DIST += tests/test_mpi_train.sh

# the MPI bootstrap across two processes: an abort, and the aborted() query, reach the other one
TESTS += tests/test_bootstrap_mpi.sh
EXTRA_DIST += tests/test_bootstrap_mpi.sh

# `make bench`: training steps as rank threads and as MPI processes, side by side
bench_targets += tools/bench-processes
check_SCRIPTS += tools/bench-processes
CLEANFILES += tools/bench-processes
EXTRA_DIST += tools/bench_processes.sh
tools/bench-processes: $(srcdir)/tools/bench_processes.sh
	$(AM_V_GEN)cp $(srcdir)/tools/bench_processes.sh $@ && chmod +x $@
noinst_HEADERS += tests/mpi_skip.h

# the launcher's environment without MPI: refusals and one process unchanged
TESTS += tests/test_launch_tool.sh
EXTRA_DIST += tests/test_launch_tool.sh
