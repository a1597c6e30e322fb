# tools/local.mk: the `dualpipe` command. Each subcommand is one file (tools/cmd_*.c)
# and one row in tools/commands.c.
bin_PROGRAMS += tools/dualpipe
tools_dualpipe_SOURCES = \
	tools/dualpipe.c \
	tools/commands.c \
	tools/commands.h \
	tools/cli.c \
	tools/cli.h \
	tools/cmd_schedule.c \
	tools/step_timing.c \
	tools/step_timing.h \
	tools/gemm_floor.c \
	tools/gemm_floor.h
tools_dualpipe_LDADD = engine/libdualpipe.la
tools_dualpipe_SOURCES += tools/cmd_train.c tools/cmd_bench.c
tools_dualpipe_SOURCES += tools/cmd_verify.c
tools_dualpipe_SOURCES += tools/cmd_bench_cuda.c

check_PROGRAMS += tests/test_gemm_floor
TESTS += tests/test_gemm_floor
tests_test_gemm_floor_SOURCES = tests/test_gemm_floor.c tools/gemm_floor.c tools/cli.c
tests_test_gemm_floor_LDADD = engine/libdualpipe.la
