# tests/fuzz/local.mk: libFuzzer targets for the readers of what users hand the tools (EPLB load
# files in text and JSON, EPLB plans, --cost, safetensors files, checkpoints' index.json). configure --enable-fuzzing (with a
# compiler taking -fsanitize=fuzzer, such as clang) turns them on; `make fuzz` builds them and runs
# each for FUZZ_SECONDS over the seeds in tests/fuzz/seeds/NAME, keeping what it finds in the
# build tree's tests/fuzz/corpus/NAME. Each target compiles the code it reads with the fuzzer's
# instrumentation rather than linking the installed libraries, so that coverage guides it.
fuzz_names = eplb_loads eplb_plan cost safetensors checkpoint_index
fuzz_programs = tests/fuzz/fuzz_eplb_loads tests/fuzz/fuzz_eplb_plan tests/fuzz/fuzz_cost tests/fuzz/fuzz_safetensors \
	tests/fuzz/fuzz_checkpoint_index
EXTRA_PROGRAMS += $(fuzz_programs)
CLEANFILES += $(fuzz_programs) tests/fuzz/*.log
EXTRA_DIST += tests/fuzz/seeds

fuzz_eplb_reader_sources = tools/eplb_input.c tools/eplb_json.c tools/cli.c $(eplb_libeplb_la_SOURCES)
tests_fuzz_fuzz_eplb_loads_SOURCES = tests/fuzz/fuzz_eplb_loads.c $(fuzz_eplb_reader_sources)
tests_fuzz_fuzz_eplb_loads_CFLAGS = $(AM_CFLAGS) $(FUZZ_CFLAGS)
tests_fuzz_fuzz_eplb_loads_LDFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_eplb_loads_LDADD = -lm
tests_fuzz_fuzz_eplb_plan_SOURCES = tests/fuzz/fuzz_eplb_plan.c $(fuzz_eplb_reader_sources)
tests_fuzz_fuzz_eplb_plan_CFLAGS = $(AM_CFLAGS) $(FUZZ_CFLAGS)
tests_fuzz_fuzz_eplb_plan_LDFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_eplb_plan_LDADD = -lm
tests_fuzz_fuzz_cost_SOURCES = tests/fuzz/fuzz_cost.c engine/status.c engine/schedule.c engine/schedule_dualpipe.c \
	engine/schedule_dualpipev.c engine/schedule_1f1b.c engine/schedule_zb1p.c engine/schedule_gpipe.c \
	engine/schedule_interleaved.c engine/schedule_validate.c engine/schedule_simulate.c engine/schedule_write.c \
	engine/schedule_write_text.c engine/schedule_write_trace.c engine/schedule_write_json.c \
	engine/schedule_write_svg.c engine/schedule_write_chrome.c
tests_fuzz_fuzz_cost_CFLAGS = $(AM_CFLAGS) $(FUZZ_CFLAGS)
tests_fuzz_fuzz_cost_LDFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_cost_LDADD = -lm
tests_fuzz_fuzz_safetensors_SOURCES = tests/fuzz/fuzz_safetensors.c engine/status.c engine/safetensors.c
tests_fuzz_fuzz_safetensors_CFLAGS = $(AM_CFLAGS) $(FUZZ_CFLAGS)
tests_fuzz_fuzz_safetensors_LDFLAGS = $(FUZZ_CFLAGS)
fuzz_checkpoint_index_sources = tools/checkpoint_index.c tools/eplb_json.c
tests_fuzz_fuzz_checkpoint_index_SOURCES = tests/fuzz/fuzz_checkpoint_index.c $(fuzz_checkpoint_index_sources)
tests_fuzz_fuzz_checkpoint_index_CFLAGS = $(AM_CFLAGS) $(FUZZ_CFLAGS)
tests_fuzz_fuzz_checkpoint_index_LDFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_fuzz_checkpoint_index_LDADD = -lm

FUZZ_SECONDS = 30
if BUILD_FUZZ
# -close_fd_mask=3 silences the readers' own error messages (the fuzzer's reports still go to
# tests/fuzz/NAME.log). A crash leaves its input as tests/fuzz/crash-*: run the target on that
# file to reproduce it.
fuzz: $(fuzz_programs)
	@for t in $(fuzz_names); do \
	  $(MKDIR_P) tests/fuzz/corpus/$$t || exit 1; \
	  if tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -close_fd_mask=3 -print_final_stats=1 \
	       -artifact_prefix=tests/fuzz/ tests/fuzz/corpus/$$t $(srcdir)/tests/fuzz/seeds/$$t > tests/fuzz/$$t.log 2>&1; then \
	    echo "fuzz_$$t: $(FUZZ_SECONDS) s, $$(sed -n 's/^stat::number_of_executed_units: *//p' tests/fuzz/$$t.log) inputs, no failure"; \
	  else \
	    tail -n 60 tests/fuzz/$$t.log; echo "fuzz_$$t FAILED: see tests/fuzz/$$t.log and tests/fuzz/crash-*" >&2; exit 1; \
	  fi; \
	done
else
fuzz:
	@echo "make fuzz: fuzzing is not configured: run configure --enable-fuzzing with a compiler taking -fsanitize=fuzzer (CC=clang)" >&2; exit 1
endif
.PHONY: fuzz

# The same targets without libFuzzer, replaying their seeds in `make check` with any compiler.
check_PROGRAMS += tests/fuzz/replay_eplb_loads tests/fuzz/replay_eplb_plan tests/fuzz/replay_cost \
	tests/fuzz/replay_safetensors tests/fuzz/replay_checkpoint_index
fuzz_replay_eplb_sources = tests/fuzz/replay_main.c tools/eplb_input.c tools/eplb_json.c tools/cli.c
tests_fuzz_replay_eplb_loads_SOURCES = tests/fuzz/fuzz_eplb_loads.c $(fuzz_replay_eplb_sources)
tests_fuzz_replay_eplb_loads_LDADD = eplb/libeplb.la -lm
tests_fuzz_replay_eplb_plan_SOURCES = tests/fuzz/fuzz_eplb_plan.c $(fuzz_replay_eplb_sources)
tests_fuzz_replay_eplb_plan_LDADD = eplb/libeplb.la -lm
tests_fuzz_replay_cost_SOURCES = tests/fuzz/fuzz_cost.c tests/fuzz/replay_main.c
tests_fuzz_replay_cost_LDADD = engine/libdualpipe.la
tests_fuzz_replay_safetensors_SOURCES = tests/fuzz/fuzz_safetensors.c tests/fuzz/replay_main.c
tests_fuzz_replay_safetensors_LDADD = engine/libdualpipe.la
tests_fuzz_replay_checkpoint_index_SOURCES = tests/fuzz/fuzz_checkpoint_index.c tests/fuzz/replay_main.c \
	$(fuzz_checkpoint_index_sources)
tests_fuzz_replay_checkpoint_index_LDADD = -lm
TESTS += tests/test_fuzz_seeds.sh
EXTRA_DIST += tests/test_fuzz_seeds.sh
