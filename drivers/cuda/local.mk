# drivers/cuda/local.mk: the CUDA driver, a loadable libtool module (dualpipe_cuda.so) built
# when configure finds CUDA and NCCL. Only this module links libcudart, cuBLAS and NCCL; the
# .cu files go through build-aux/nvcc-libtool so that libtool can drive nvcc.
NVCC_LIBTOOL = $(top_builddir)/build-aux/nvcc-libtool
NVCCFLAGS = -arch=$(NVCC_ARCH) -O3 -std=c++17 --fmad=false -lineinfo -Xcompiler=-fvisibility=hidden

cuda_driver_sources = \
	drivers/cuda/cuda_module.c \
	drivers/cuda/cuda_device.cu \
	drivers/cuda/cuda_kernels.cu \
	drivers/cuda/cuda_staging.cu \
	drivers/cuda/cuda_link.cu \
	drivers/cuda/cuda_internal.h

if BUILD_CUDA_DRIVER
pkglib_LTLIBRARIES += drivers/cuda/dualpipe_cuda.la
drivers_cuda_dualpipe_cuda_la_SOURCES = $(cuda_driver_sources)
drivers_cuda_dualpipe_cuda_la_LDFLAGS = $(AM_LDFLAGS) -module -avoid-version $(CUDA_LDFLAGS) $(NCCL_LDFLAGS)
drivers_cuda_dualpipe_cuda_la_LIBADD = engine/libdualpipe.la $(NCCL_LIBS) $(CUDA_LIBS) -lstdc++
else
EXTRA_DIST += $(cuda_driver_sources)
endif

SUFFIXES = .cu
.cu.lo:
	@$(MKDIR_P) $(@D)
	$(AM_V_CC)$(LIBTOOL) $(AM_V_lt) --tag=CC $(AM_LIBTOOLFLAGS) $(LIBTOOLFLAGS) --mode=compile \
	  $(NVCC_LIBTOOL) $(DEFS) -I$(top_srcdir) -I$(top_builddir) $(CPPFLAGS) $(CUDA_CPPFLAGS) $(NCCL_CPPFLAGS) \
	  $(NVCCFLAGS) -c -o $@ $<

# GPU tests: always built, they skip ("1..0 # SKIP no CUDA device") without a GPU or the module.
noinst_HEADERS += tests/cuda_test_util.h
check_PROGRAMS += tests/test_cuda_kernels tests/test_cuda_link
TESTS += tests/test_cuda_kernels tests/test_cuda_link
tests_test_cuda_kernels_SOURCES = tests/test_cuda_kernels.c
tests_test_cuda_kernels_LDADD = engine/libdualpipe.la -lm
tests_test_cuda_link_SOURCES = tests/test_cuda_link.c
tests_test_cuda_link_LDADD = engine/libdualpipe.la
TESTS += tests/test_cuda_verify.sh
EXTRA_DIST += tests/test_cuda_verify.sh
dist_doc_DATA += doc/cuda-notes.md
EXTRA_DIST += tools/bench_reference.py
