# drivers/mpi/local.mk: ranks in several processes over MPI (the `mpi` link, the MPI bootstrap,
# starting MPI), compiled into libdualpipe when configure finds MPI; otherwise stubs that say
# how to get it. The tests run under mpirun where it exists and skip with the reason elsewhere.
if HAVE_MPI
engine_libdualpipe_la_SOURCES += \
	drivers/mpi/dp_mpi.h \
	drivers/mpi/mpi_start.c \
	drivers/mpi/mpi_link.c \
	drivers/mpi/mpi_bootstrap.c
engine_libdualpipe_la_LIBADD += $(MPI_LIBS)
else
engine_libdualpipe_la_SOURCES += drivers/mpi/dp_mpi.h drivers/mpi/mpi_absent.c
endif
EXTRA_DIST += drivers/mpi/mpi_start.c drivers/mpi/mpi_link.c drivers/mpi/mpi_bootstrap.c drivers/mpi/mpi_absent.c

# `dualpipe train` under mpirun: schedules bit-equal, processes refused, faults ending the job
TESTS += tests/test_mpi_train.sh
EXTRA_DIST += tests/test_mpi_train.sh
