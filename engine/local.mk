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
	engine/schedule_gpipe.c
dualpipe_includedir = $(includedir)/dualpipe/engine
dualpipe_include_HEADERS = engine/status.h engine/schedule.h

include engine/runtime.mk
