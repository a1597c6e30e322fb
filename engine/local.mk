# engine/local.mk: the dualpipe library (libdualpipe): status, schedules (generate,
# validate, simulate, write). The model, executor and runtime live in engine/runtime.mk.
lib_LTLIBRARIES += engine/libdualpipe.la
engine_libdualpipe_la_CFLAGS = $(AM_CFLAGS) $(OPENMP_CFLAGS)
engine_libdualpipe_la_LDFLAGS = $(AM_LDFLAGS) -version-info 0:0:0 $(OPENMP_CFLAGS)
engine_libdualpipe_la_LIBADD = $(BLAS_LIBS)
engine_libdualpipe_la_SOURCES = \
	engine/status.c \
	engine/schedule.c \
	engine/schedule_dualpipe.c \
	engine/schedule_dualpipev.c \
	engine/schedule_1f1b.c \
	engine/schedule_zb1p.c \
	engine/schedule_gpipe.c \
	engine/schedule_interleaved.c \
	engine/schedule_validate.c \
	engine/schedule_simulate.c \
	engine/schedule_write.c \
	engine/schedule_write_text.c \
	engine/schedule_write_trace.c \
	engine/schedule_write_json.c \
	engine/schedule_write_svg.c \
	engine/schedule_write_chrome.c \
	engine/safetensors.c
dualpipe_includedir = $(includedir)/dualpipe/engine
dualpipe_include_HEADERS = engine/status.h engine/schedule.h engine/safetensors.h
noinst_HEADERS += engine/schedule_internal.h engine/schedule_replay.h

check_PROGRAMS += tests/test_schedule_exact tests/test_schedule_formulas tests/test_schedule_errors tests/test_schedule_comm \
	tests/test_safetensors
TESTS += tests/test_schedule_exact tests/test_schedule_formulas tests/test_schedule_errors tests/test_schedule_comm \
	tests/test_safetensors tests/test_schedule_tool.sh
EXTRA_DIST += tests/test_schedule_tool.sh tests/data/dualpipe_reference_orders.txt tests/data/torch_pipelining_orders.txt \
	tools/record_torch_orders.py
tests_test_schedule_exact_LDADD = engine/libdualpipe.la
tests_test_schedule_formulas_LDADD = engine/libdualpipe.la
tests_test_schedule_errors_LDADD = engine/libdualpipe.la
tests_test_schedule_comm_LDADD = engine/libdualpipe.la
tests_test_safetensors_LDADD = engine/libdualpipe.la

include engine/runtime.mk
