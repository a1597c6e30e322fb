# eplb/local.mk: the expert-parallel load balancer library (libeplb), its tool, tests and
# benchmark.
lib_LTLIBRARIES += eplb/libeplb.la
eplb_libeplb_la_LDFLAGS = $(AM_LDFLAGS) -version-info 0:0:0
eplb_libeplb_la_LIBADD = -lm
eplb_libeplb_la_SOURCES = \
	eplb/eplb.h \
	eplb/eplb_internal.h \
	eplb/eplb_status.c \
	eplb/eplb_sort.c \
	eplb/eplb_deepseek.c \
	eplb/eplb_balanced.c \
	eplb/eplb_bound.c \
	eplb/eplb_plan.c \
	eplb/eplb_migrate.c \
	eplb/eplb_rebalance.c
eplb_includedir = $(includedir)/eplb
eplb_include_HEADERS = eplb/eplb.h
