# engine/runtime.mk: the device, link and driver interfaces, the driver registry, and the
# model, executor and runtime that play a schedule on a driver. Appends to libdualpipe.
engine_libdualpipe_la_CPPFLAGS = $(AM_CPPFLAGS) $(MPI_CFLAGS) -DDP_PKGLIBDIR='"$(pkglibdir)"'
engine_libdualpipe_la_SOURCES += \
	engine/device.h \
	engine/link.h \
	engine/link_common.h engine/link_common.c \
	engine/bootstrap_meeting.h engine/bootstrap_meeting.c \
	engine/bootstrap_threads.c \
	engine/bootstrap_tcp.h engine/bootstrap_tcp.c \
	engine/launch_env.h engine/launch_env.c \
	engine/driver.h \
	engine/device_stubs.c \
	engine/registry.c
dualpipe_include_HEADERS += engine/device.h engine/link.h engine/link_common.h engine/driver.h \
	engine/bootstrap_tcp.h engine/launch_env.h
noinst_HEADERS += engine/bootstrap_meeting.h

# where a process stands in a job (the launcher's environment), the TCP rendezvous, and the
# bootstraps of one process (threads, MPI)
check_PROGRAMS += tests/test_launch_env tests/test_bootstrap_tcp tests/test_bootstrap
TESTS += tests/test_launch_env tests/test_bootstrap_tcp tests/test_bootstrap
tests_test_launch_env_SOURCES = tests/test_launch_env.c
tests_test_launch_env_LDADD = engine/libdualpipe.la
tests_test_bootstrap_tcp_SOURCES = tests/test_bootstrap_tcp.c
tests_test_bootstrap_tcp_LDADD = engine/libdualpipe.la
tests_test_bootstrap_SOURCES = tests/test_bootstrap.c
tests_test_bootstrap_LDADD = engine/libdualpipe.la

# A module with the wrong ABI, for the registry's refusal test (never installed).
check_LTLIBRARIES += tests/dualpipe_badabi.la
tests_dualpipe_badabi_la_SOURCES = tests/driver_badabi.c
tests_dualpipe_badabi_la_LDFLAGS = -module -avoid-version -rpath /nowhere

# The cpu driver built against an older device.h (a shorter kernel table), and one whose tables
# the registry test breaks one way at a time.
check_LTLIBRARIES += tests/dualpipe_oldkernels.la tests/dualpipe_badtables.la
tests_dualpipe_oldkernels_la_SOURCES = tests/driver_oldkernels.c
tests_dualpipe_oldkernels_la_LDFLAGS = -module -avoid-version -rpath /nowhere
tests_dualpipe_badtables_la_SOURCES = tests/driver_badtables.c
tests_dualpipe_badtables_la_LDFLAGS = -module -avoid-version -rpath /nowhere

# The cpu driver with one rank's device out of order, for the set-up failure test.
check_LTLIBRARIES += tests/dualpipe_failopen.la
tests_dualpipe_failopen_la_SOURCES = tests/driver_failopen.c
tests_dualpipe_failopen_la_LDFLAGS = -module -avoid-version -rpath /nowhere

# The cpu driver with one fault named by DUALPIPE_FAULT, that `dualpipe verify` must catch.
check_LTLIBRARIES += tests/dualpipe_fault.la
tests_dualpipe_fault_la_SOURCES = tests/driver_fault.c
tests_dualpipe_fault_la_LDFLAGS = -module -avoid-version -rpath /nowhere

check_PROGRAMS += tests/test_engine_host_copy
TESTS += tests/test_engine_host_copy
tests_test_engine_host_copy_SOURCES = tests/test_engine_host_copy.c
tests_test_engine_host_copy_LDADD = engine/libdualpipe.la

check_PROGRAMS += tests/test_engine_setup
TESTS += tests/test_engine_setup
tests_test_engine_setup_SOURCES = tests/test_engine_setup.c
tests_test_engine_setup_LDADD = engine/libdualpipe.la

check_PROGRAMS += tests/test_engine_registry
TESTS += tests/test_engine_registry
tests_test_engine_registry_SOURCES = tests/test_engine_registry.c
tests_test_engine_registry_LDADD = engine/libdualpipe.la

engine_libdualpipe_la_SOURCES += \
	engine/model.h engine/model.c \
	engine/block.h engine/block_table.c engine/block_linear.c \
	engine/block_mlp.c engine/block_residual.c engine/block_moe.c \
	engine/moe_routing_tape.h engine/moe_routing_tape.c \
	engine/host_copy.h engine/host_copy.c \
	engine/param_io.h engine/param_io.c \
	engine/executor.h engine/executor.c \
	engine/groups.h engine/groups.c \
	engine/rank.h engine/rank.c \
	engine/runtime.h engine/runtime.c \
	engine/reference.h engine/reference.c
dualpipe_include_HEADERS += engine/model.h engine/block.h engine/executor.h engine/runtime.h engine/reference.h \
	engine/moe_routing_tape.h

check_PROGRAMS += tests/test_engine_phases
TESTS += tests/test_engine_phases
tests_test_engine_phases_SOURCES = tests/test_engine_phases.c
tests_test_engine_phases_LDADD = engine/libdualpipe.la

check_PROGRAMS += tests/test_engine_pipeline
TESTS += tests/test_engine_pipeline
tests_test_engine_pipeline_SOURCES = tests/test_engine_pipeline.c tools/compare.c tools/compare.h
tests_test_engine_pipeline_LDADD = engine/libdualpipe.la

check_PROGRAMS += tests/test_engine_state
TESTS += tests/test_engine_state
tests_test_engine_state_SOURCES = tests/test_engine_state.c
tests_test_engine_state_LDADD = engine/libdualpipe.la

check_PROGRAMS += tests/test_engine_dataparallel
TESTS += tests/test_engine_dataparallel
tests_test_engine_dataparallel_SOURCES = tests/test_engine_dataparallel.c
tests_test_engine_dataparallel_LDADD = engine/libdualpipe.la -lm

check_PROGRAMS += tests/test_engine_moe
TESTS += tests/test_engine_moe
tests_test_engine_moe_SOURCES = tests/test_engine_moe.c
tests_test_engine_moe_LDADD = engine/libdualpipe.la -lm

# dp_runtime_read_expert_load: each MoE layer's loads per step, in layer order, exact
check_PROGRAMS += tests/test_engine_expert_load
TESTS += tests/test_engine_expert_load
tests_test_engine_expert_load_SOURCES = tests/test_engine_expert_load.c
tests_test_engine_expert_load_LDADD = engine/libdualpipe.la

# dp_runtime_move_experts: experts moved between steps keep every logical tensor's bits, count
# what moved, train on as if never moved; bad placements refused
check_PROGRAMS += tests/test_engine_move_experts
TESTS += tests/test_engine_move_experts
tests_test_engine_move_experts_SOURCES = tests/test_engine_move_experts.c
tests_test_engine_move_experts_LDADD = engine/libdualpipe.la

TESTS += tests/test_train_moe.sh
EXTRA_DIST += tests/test_train_moe.sh
# the overlap of an F&B pair's all-to-alls: bit-equal to --no-overlap, exposed waits reported
TESTS += tests/test_train_overlap.sh
EXTRA_DIST += tests/test_train_overlap.sh
TESTS += tests/test_train_placement.sh
EXTRA_DIST += tests/test_train_placement.sh
# train --dump-expert-load: the counts, SGLang's format, eplb reading it, bad paths
TESTS += tests/test_train_expert_load.sh
EXTRA_DIST += tests/test_train_expert_load.sh

TESTS += tests/test_engine_train.sh
EXTRA_DIST += tests/test_engine_train.sh

TESTS += tests/test_train_dataparallel.sh
EXTRA_DIST += tests/test_train_dataparallel.sh

# the stage's gradients against finite differences, every block kind and loss
check_PROGRAMS += tests/test_gradcheck
TESTS += tests/test_gradcheck
tests_test_gradcheck_SOURCES = tests/test_gradcheck.c
tests_test_gradcheck_LDADD = engine/libdualpipe.la -lm

# `dualpipe verify` against the cpu driver with one fault (tests/driver_fault.c), also in MoE routing
TESTS += tests/test_verify_faults.sh tests/test_verify_routing.sh
EXTRA_DIST += tests/test_verify_faults.sh tests/test_verify_routing.sh

# Experts placed by an EPLB plan: the replica each row goes to, the replicas' gradient sum.
check_PROGRAMS += tests/test_engine_placement
TESTS += tests/test_engine_placement
tests_test_engine_placement_SOURCES = tests/test_engine_placement.c
tests_test_engine_placement_LDADD = engine/libdualpipe.la -lm
