# tools/local.mk: the `dualpipe` command and the benchmarks. Each subcommand is one file
# (tools/cmd_*.c) and one row in tools/commands.c; add its files to dualpipe_command_sources.
dualpipe_command_sources = \
	tools/commands.c \
	tools/commands.h \
	tools/cli.c \
	tools/cli.h \
	tools/cli_options.c \
	tools/cli_options.h \
	tools/output_file.c \
	tools/output_file.h \
	tools/cli_engine.c \
	tools/cli_engine.h \
	tools/cli_moe.c \
	tools/cli_moe.h \
	tools/moe_plan.c \
	tools/moe_plan.h \
	tools/log_stderr.c \
	tools/log_stderr.h \
	tools/compare.c \
	tools/compare.h \
	tools/cmd_schedule.c \
	tools/cmd_train.c \
	tools/train_teacher.c \
	tools/train_teacher.h \
	tools/train_trace.c \
	tools/train_trace.h \
	tools/train_data.c \
	tools/train_data.h \
	tools/checkpoint.c \
	tools/cmd_checkpoint.c \
	tools/checkpoint.h \
	tools/expert_load.c \
	tools/expert_load.h \
	tools/eplb_train.c \
	tools/eplb_train.h \
	tools/checkpoint_index.c \
	tools/checkpoint_index.h \
	tools/crc32.c \
	tools/crc32.h \
	tools/eplb_input.c \
	tools/eplb_input.h \
	tools/eplb_json.c \
	tools/eplb_json.h \
	tools/launch.c \
	tools/launch.h \
	tools/cmd_bench.c \
	tools/bench_moe.c \
	tools/bench_moe.h \
	tools/bench_overlap.c \
	tools/bench_overlap.h \
	tools/cmd_verify.c \
	tools/verify_check.c \
	tools/verify_check.h \
	tools/verify_tolerance.c \
	tools/verify_tolerance.h \
	tools/cmd_bench_cuda.c \
	tools/cmd_bench_link.c \
	tools/step_timing.c \
	tools/step_timing.h \
	tools/model_flops.c \
	tools/model_flops.h \
	tools/gemm_floor.c \
	tools/gemm_floor.h
bin_PROGRAMS += tools/dualpipe
tools_dualpipe_SOURCES = tools/dualpipe.c $(dualpipe_command_sources)
tools_dualpipe_LDADD = engine/libdualpipe.la eplb/libeplb.la

# the operations train's GFLOP/s counts, dense and MoE layers, against hand-worked numbers
check_PROGRAMS += tests/test_model_flops
TESTS += tests/test_model_flops
tests_test_model_flops_SOURCES = tests/test_model_flops.c tools/model_flops.c
tests_test_model_flops_LDADD = engine/libdualpipe.la

check_PROGRAMS += tests/test_gemm_floor
TESTS += tests/test_gemm_floor
tests_test_gemm_floor_SOURCES = tests/test_gemm_floor.c tools/gemm_floor.c tools/cli.c
tests_test_gemm_floor_LDADD = engine/libdualpipe.la

# Benchmarks (`make bench`; `make bench-quick` runs each for seconds). `make check` builds them.
# The CPU driver's GEMM rates and step times: `dualpipe bench` as a program of its own.
check_PROGRAMS += tools/bench_cpu
bench_targets += tools/bench_cpu
tools_bench_cpu_SOURCES = tools/bench_cpu.c $(dualpipe_command_sources)
tools_bench_cpu_LDADD = engine/libdualpipe.la eplb/libeplb.la
# EPLB: planning time and balance on real loads; links the balancer and the eplb tool's input
# reader, not the engine.
check_PROGRAMS += tools/bench_eplb
bench_targets += tools/bench_eplb
tools_bench_eplb_SOURCES = tools/bench_eplb.c tools/eplb_input.c tools/eplb_json.c tools/cli.c
tools_bench_eplb_LDADD = eplb/libeplb.la
tools_bench_eplb_CPPFLAGS = $(AM_CPPFLAGS) -DEPLB_SRCDIR='"$(abs_top_srcdir)"'

# How every tool writes its outputs: modes, links, devices, FIFOs, same-file refusals, signals.
check_PROGRAMS += tests/test_output_file
TESTS += tests/test_output_file
tests_test_output_file_SOURCES = tests/test_output_file.c tools/output_file.c tools/cli.c

# The library's log on the tools' stderr, as DUALPIPE_DEBUG asks.
TESTS += tests/test_tool_log.sh
EXTRA_DIST += tests/test_tool_log.sh

# The schedules named in usage strings, the man page and README are the generators' table's.
TESTS += tests/test_schedule_lists.sh
EXTRA_DIST += tests/test_schedule_lists.sh

# One command-line grammar: every command's --help, its man page section and its parser agree.
TESTS += tests/test_cli_grammar.sh
EXTRA_DIST += tests/test_cli_grammar.sh

# Every DUALPIPE_* variable the sources read is in dualpipe(1)'s ENVIRONMENT, and no other.
TESTS += tests/test_environment.sh
EXTRA_DIST += tests/test_environment.sh

# train --init, --data and --save-params: safetensors in and out, a split run equal to a whole
# one; tests/make_train_data writes the data files it feeds
check_PROGRAMS += tests/make_train_data
tests_make_train_data_LDADD = engine/libdualpipe.la
TESTS += tests/test_train_data.sh
EXTRA_DIST += tests/test_train_data.sh tools/torch_compare.py
# train --eplb-every: experts rebalanced while training, bit-equal to not moving them; a skewed
# router balanced better after a move; a rank failing in a move (tests/driver_fault.c) ends the
# job cleanly; bad values refused
TESTS += tests/test_train_eplb.sh
EXTRA_DIST += tests/test_train_eplb.sh
# train --save and --resume: killed and resumed bit-equal for every schedule and across rank
# counts; bad option values and incompatible models refused (tests/driver_fault.c kills the run)
TESTS += tests/test_checkpoint.sh
EXTRA_DIST += tests/test_checkpoint.sh
# damaged checkpoints refused, naming the file, the tensor and the rule
TESTS += tests/test_checkpoint_bad.sh
EXTRA_DIST += tests/test_checkpoint_bad.sh
# a checkpoint in PyTorch: tools/checkpoint_to_torch.py's forward against dualpipe's (skipped without torch)
TESTS += tests/test_checkpoint_torch.sh
EXTRA_DIST += tests/test_checkpoint_torch.sh tools/checkpoint_to_torch.py
# the same under mpirun: each process writes its ranks' files (skipped without MPI)
TESTS += tests/test_mpi_checkpoint.sh
EXTRA_DIST += tests/test_mpi_checkpoint.sh
# dualpipe's arithmetic against the same maths written out in float64 (tools/torch_compare.py)
TESTS += tests/test_torch_compare.sh
EXTRA_DIST += tests/test_torch_compare.sh
# bench-link over the cpu link and the mpi link, checked element by element
TESTS += tests/test_bench_link.sh
EXTRA_DIST += tests/test_bench_link.sh
# bench's MoE stage: a row per ep, the bytes consistent with the layout
TESTS += tests/test_bench_moe.sh
EXTRA_DIST += tests/test_bench_moe.sh
# bench's overlap table: the rows, the ratios, 1F1B's simulation equal to its measurement
TESTS += tests/test_bench_overlap.sh
EXTRA_DIST += tests/test_bench_overlap.sh
