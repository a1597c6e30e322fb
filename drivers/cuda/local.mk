# drivers/cuda/local.mk: the CUDA driver, a loadable libtool module (dualpipe_cuda.so) built
# when configure finds CUDA and NCCL. Only this module links libcudart, cuBLAS and NCCL; the
# .cu files go through build-aux/nvcc-libtool so that libtool can drive nvcc.
NVCC_LIBTOOL = $(top_builddir)/build-aux/nvcc-libtool
# The package's nvcc flags; the user's NVCCFLAGS (configure's precious variable) come after
# them and win, as CFLAGS do after AM_CFLAGS.
AM_NVCCFLAGS = -arch=$(NVCC_ARCH) -O3 -std=c++17 --fmad=false -lineinfo -Xcompiler=-fvisibility=hidden

cuda_driver_sources = \
	drivers/cuda/cuda_module.c \
	drivers/cuda/cuda_device.cu \
	drivers/cuda/cuda_kernels.cu \
	drivers/cuda/cuda_moe.cu \
	drivers/cuda/cuda_staging.cu \
	drivers/cuda/cuda_link.h \
	drivers/cuda/cuda_link.cu \
	drivers/cuda/cuda_link_copy.cu \
	drivers/cuda/cuda_link_ipc.cu \
	drivers/cuda/cuda_link_nccl.cu \
	drivers/cuda/cuda_internal.h \
	drivers/cuda/gpu_compat.h

if BUILD_CUDA_DRIVER
pkglib_LTLIBRARIES += drivers/cuda/dualpipe_cuda.la
drivers_cuda_dualpipe_cuda_la_SOURCES = $(cuda_driver_sources)
drivers_cuda_dualpipe_cuda_la_LDFLAGS = $(AM_LDFLAGS) -module -avoid-version $(CUDA_LDFLAGS) $(NCCL_LDFLAGS)
drivers_cuda_dualpipe_cuda_la_LIBADD = engine/libdualpipe.la $(NCCL_LIBS) $(CUDA_LIBS) -lstdc++
else
EXTRA_DIST += $(cuda_driver_sources)
endif

# .cu -> .lo through libtool. nvcc writes each object's header dependencies as it compiles
# (-MMD: headers outside the system directories; -MP: an empty rule per header, so a removed
# header does not stop make) into drivers/cuda/.deps/NAME.cu.d, naming the .lo as target; the
# files found there are read back below, so that editing engine/device.h, say, rebuilds the
# module (with positional ops tables, a stale object is a silent ABI mismatch).
SUFFIXES = .cu
NVCCCOMPILE = $(NVCC_LIBTOOL) $(DEFS) $(DEFAULT_INCLUDES) $(INCLUDES) $(AM_CPPFLAGS) $(CUDA_CPPFLAGS) \
	$(NCCL_CPPFLAGS) $(CPPFLAGS) $(AM_NVCCFLAGS) $(NVCCFLAGS)
AM_V_NVCC = $(am__v_NVCC_$(V))
am__v_NVCC_ = $(am__v_NVCC_$(AM_DEFAULT_VERBOSITY))
am__v_NVCC_0 = @echo "  NVCC    " $@;
am__v_NVCC_1 =
.cu.lo:
	@$(MKDIR_P) $(@D)/$(DEPDIR)
	$(AM_V_NVCC)$(LIBTOOL) $(AM_V_lt) --tag=CC $(AM_LIBTOOLFLAGS) $(LIBTOOLFLAGS) --mode=compile \
	  $(NVCCCOMPILE) -MMD -MP -MT $@ -MF $(@D)/$(DEPDIR)/$(*F).cu.d -c -o $@ $<
-include $(wildcard drivers/cuda/$(DEPDIR)/*.cu.d)
distclean-local: distclean-cuda-deps
distclean-cuda-deps:
	-rm -f drivers/cuda/$(DEPDIR)/*.cu.d
.PHONY: distclean-cuda-deps

# GPU tests: always built, they skip ("1..0 # SKIP no CUDA device") without a GPU or the module.
noinst_HEADERS += tests/cuda_test_util.h
check_PROGRAMS += tests/test_cuda_kernels tests/test_cuda_link tests/test_cuda_ipc
TESTS += tests/test_cuda_kernels tests/test_cuda_link tests/test_cuda_ipc
tests_test_cuda_kernels_SOURCES = tests/test_cuda_kernels.c
tests_test_cuda_kernels_LDADD = engine/libdualpipe.la -lm
tests_test_cuda_link_SOURCES = tests/test_cuda_link.c
tests_test_cuda_link_LDADD = engine/libdualpipe.la
# two processes (fork) sharing GPU 0 over the IPC transport
tests_test_cuda_ipc_SOURCES = tests/test_cuda_ipc.c
tests_test_cuda_ipc_LDADD = engine/libdualpipe.la
TESTS += tests/test_cuda_verify.sh
EXTRA_DIST += tests/test_cuda_verify.sh
dist_doc_DATA += doc/cuda.md doc/cuda-measurements.md
EXTRA_DIST += tools/bench_reference.py
