# drivers/cpu/local.mk: the built-in CPU driver, compiled into libdualpipe: host memory and
# kernels (OpenMP where present, CBLAS when configure found one, a portable blocked GEMM
# otherwise) and a mailbox link between rank threads. Its tests are the kernel tests (fp32,
# and bf16 against fp32) and the link conformance test (which also runs the cuda link's
# transports where there is a GPU).
engine_libdualpipe_la_SOURCES += \
	drivers/cpu/cpu_internal.h \
	drivers/cpu/cpu_device.c \
	drivers/cpu/cpu_bf16.c \
	drivers/cpu/cpu_gemm.c \
	drivers/cpu/cpu_kernels.c \
	drivers/cpu/cpu_moe.c \
	drivers/cpu/cpu_link.c

check_PROGRAMS += tests/test_cpu_kernels tests/test_link_conformance tests/test_cpu_bf16 tests/test_cpu_kernels_fp64
TESTS += tests/test_cpu_kernels tests/test_link_conformance tests/test_cpu_bf16 tests/test_cpu_kernels_fp64
# the link's network emulation ($DUALPIPE_CPU_LINK)
check_PROGRAMS += tests/test_cpu_link_emulation
TESTS += tests/test_cpu_link_emulation
tests_test_cpu_link_emulation_SOURCES = tests/test_cpu_link_emulation.c
tests_test_cpu_link_emulation_LDADD = engine/libdualpipe.la -lpthread
noinst_HEADERS += tests/kernel_fp64_checks.h tests/kernel_fp64_moe_checks.h
tests_test_cpu_kernels_fp64_SOURCES = tests/test_cpu_kernels_fp64.c
tests_test_cpu_kernels_fp64_LDADD = engine/libdualpipe.la -lm
tests_test_cpu_kernels_SOURCES = tests/test_cpu_kernels.c
tests_test_cpu_kernels_LDADD = engine/libdualpipe.la -lm
tests_test_cpu_bf16_SOURCES = tests/test_cpu_bf16.c
tests_test_cpu_bf16_LDADD = engine/libdualpipe.la -lm
tests_test_link_conformance_SOURCES = tests/test_link_conformance.c
tests_test_link_conformance_LDADD = engine/libdualpipe.la

