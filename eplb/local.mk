# eplb/local.mk: the expert-parallel load balancer library (libeplb), its tool and tests
# (its benchmark is with the other benchmarks, in tools/local.mk).
lib_LTLIBRARIES += eplb/libeplb.la
eplb_libeplb_la_LDFLAGS = $(AM_LDFLAGS) -version-info 0:0:0
eplb_libeplb_la_LIBADD = -lm
eplb_libeplb_la_SOURCES = \
	eplb/eplb.h \
	eplb/eplb_internal.h \
	eplb/eplb_status.c \
	eplb/eplb_loads.c \
	eplb/eplb_sort.c \
	eplb/eplb_heap.c \
	eplb/eplb_placed.c \
	eplb/eplb_deepseek.c \
	eplb/eplb_balanced.c \
	eplb/eplb_bound.c \
	eplb/eplb_plan.c \
	eplb/eplb_migrate.c \
	eplb/eplb_rebalance.c
eplb_includedir = $(includedir)/eplb
eplb_include_HEADERS = eplb/eplb.h
noinst_HEADERS += tests/eplb_test_loads.h tests/eplb_test_evaluate.h

# The eplb command.
bin_PROGRAMS += tools/eplb
tools_eplb_SOURCES = \
	tools/eplb.c \
	tools/cli_options.c \
	tools/cli_options.h \
	tools/eplb_input.c \
	tools/eplb_input.h \
	tools/eplb_json.c \
	tools/eplb_json.h \
	tools/eplb_output.c \
	tools/eplb_output.h \
	tools/output_file.c \
	tools/output_file.h \
	tools/cli.c \
	tools/cli.h
tools_eplb_LDADD = eplb/libeplb.la

# Tests.
check_PROGRAMS += tests/test_eplb_reference
tests_test_eplb_reference_SOURCES = tests/test_eplb_reference.c
tests_test_eplb_reference_LDADD = eplb/libeplb.la
TESTS += tests/test_eplb_reference
EXTRA_DIST += tests/data/eplb_reference.txt
check_PROGRAMS += tests/test_eplb_invariants
tests_test_eplb_invariants_SOURCES = tests/test_eplb_invariants.c
tests_test_eplb_invariants_LDADD = eplb/libeplb.la -lm
TESTS += tests/test_eplb_invariants
TESTS += tests/test_eplb_tool.sh
EXTRA_DIST += tests/test_eplb_tool.sh tests/data/eplb_readme.txt
dist_man_MANS += doc/eplb.1

EXTRA_DIST += tests/data/eplb_prefill_in1024.json
check_PROGRAMS += tests/test_eplb_realdata
tests_test_eplb_realdata_SOURCES = tests/test_eplb_realdata.c tools/eplb_input.c tools/eplb_json.c tools/cli.c
tests_test_eplb_realdata_LDADD = eplb/libeplb.la -lm
TESTS += tests/test_eplb_realdata
check_PROGRAMS += tests/test_eplb_floor
tests_test_eplb_floor_SOURCES = tests/test_eplb_floor.c
tests_test_eplb_floor_LDADD = eplb/libeplb.la -lm
TESTS += tests/test_eplb_floor
check_PROGRAMS += tests/test_eplb_errors
tests_test_eplb_errors_SOURCES = tests/test_eplb_errors.c
tests_test_eplb_errors_LDADD = eplb/libeplb.la -lm
TESTS += tests/test_eplb_errors
check_PROGRAMS += tests/test_eplb_scale
tests_test_eplb_scale_SOURCES = tests/test_eplb_scale.c tools/eplb_input.c tools/eplb_json.c tools/cli.c
tests_test_eplb_scale_LDADD = eplb/libeplb.la -lm
TESTS += tests/test_eplb_scale
