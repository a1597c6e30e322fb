# drivers/hip/local.mk: the HIP driver, a loadable libtool module (dualpipe_hip.so) built when
# configure finds hipcc and the HIP runtime. Its device, kernel and link code is the CUDA
# driver's, compiled by hipcc through drivers/cuda/gpu_compat.h (no second copy); what is HIP's
# own is here: the export, and hipBLAS and RCCL linked or loaded at run time. Only this module
# links libamdhip64.

# The CUDA driver's sources the HIP module compiles. Files with kernels are compiled for the GPU
# architectures; the others hold host code only and skip the device pass.
hip_shared_device = cuda_kernels cuda_moe
hip_shared_host = cuda_device cuda_staging cuda_link cuda_link_copy cuda_link_ipc cuda_link_nccl
hip_own = hip_blas hip_rccl
hip_objects = $(patsubst %,drivers/hip/%.lo,$(hip_shared_device) $(hip_shared_host) $(hip_own))

hip_driver_sources = \
	drivers/hip/hip_module.c \
	drivers/hip/rocm_library.c \
	drivers/hip/rocm_library.h \
	drivers/hip/hip_blas.h \
	drivers/hip/hip_rccl.h
EXTRA_DIST += drivers/hip/hip_blas.cu drivers/hip/hip_rccl.cu

# The package's hipcc flags; the user's HIPFLAGS come after them and win. -ffp-contract=off is
# nvcc's --fmad=false (no fused multiply-add: results track the CPU reference to a rounding).
# HIP marks hipError_t [[nodiscard]]; the shared sources ignore it on purpose where CUDA code
# does (clearing a sticky error, cleanup paths), hence -Wno-unused-result.
AM_HIPFLAGS = -std=c++17 -O3 -ffp-contract=off -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter \
	-Wno-unused-result

if BUILD_HIP_DRIVER
pkglib_LTLIBRARIES += drivers/hip/dualpipe_hip.la
drivers_hip_dualpipe_hip_la_SOURCES = $(hip_driver_sources)
# Only the driver symbol leaves the module: hipcc gives kernels default visibility.
drivers_hip_dualpipe_hip_la_LDFLAGS = $(AM_LDFLAGS) -module -avoid-version -export-symbols-regex '^dualpipe_driver$$' \
	$(HIP_LDFLAGS)
drivers_hip_dualpipe_hip_la_LIBADD = $(hip_objects) engine/libdualpipe.la $(HIP_LIBS) -ldl -lstdc++
else
EXTRA_DIST += $(hip_driver_sources)
endif

# .cu -> .lo through libtool with hipcc (which takes libtool's -fPIC as it is). Dependencies
# as for nvcc (drivers/cuda/local.mk): written while compiling, read back below. hipcc takes any
# argument ending in .lo for a libtool archive to unpack, so the dependency target is given as
# NAME.lo.d-target and renamed in the file afterwards.
HIPCOMPILE = $(HIPCC) -x hip -DDP_GPU_HIP $(DEFS) $(DEFAULT_INCLUDES) $(INCLUDES) $(AM_CPPFLAGS) $(HIP_CPPFLAGS) \
	$(CPPFLAGS) $(AM_HIPFLAGS) $(HIPFLAGS)
AM_V_HIPCC = $(am__v_HIPCC_$(V))
am__v_HIPCC_ = $(am__v_HIPCC_$(AM_DEFAULT_VERBOSITY))
am__v_HIPCC_0 = @echo "  HIPCC   " $@;
am__v_HIPCC_1 =
hip_pass = $(if $(filter $(1),$(hip_shared_device)),,--cuda-host-only) $(HIP_ARCH_FLAGS)
drivers/hip/cuda_%.lo: $(srcdir)/drivers/cuda/cuda_%.cu
	@$(MKDIR_P) drivers/hip/$(DEPDIR)
	$(AM_V_HIPCC)$(LIBTOOL) $(AM_V_lt) --tag=CC $(AM_LIBTOOLFLAGS) $(LIBTOOLFLAGS) --mode=compile \
	  $(HIPCOMPILE) $(call hip_pass,cuda_$*) -MMD -MP -MT $@.d-target -MF drivers/hip/$(DEPDIR)/cuda_$*.cu.d -c -o $@ $<
	@sed -i 's|\.lo\.d-target:|.lo:|' drivers/hip/$(DEPDIR)/cuda_$*.cu.d
drivers/hip/hip_%.lo: $(srcdir)/drivers/hip/hip_%.cu
	@$(MKDIR_P) drivers/hip/$(DEPDIR)
	$(AM_V_HIPCC)$(LIBTOOL) $(AM_V_lt) --tag=CC $(AM_LIBTOOLFLAGS) $(LIBTOOLFLAGS) --mode=compile \
	  $(HIPCOMPILE) --cuda-host-only $(HIP_ARCH_FLAGS) -MMD -MP -MT $@.d-target -MF drivers/hip/$(DEPDIR)/hip_$*.cu.d -c -o $@ $<
	@sed -i 's|\.lo\.d-target:|.lo:|' drivers/hip/$(DEPDIR)/hip_$*.cu.d
-include $(wildcard drivers/hip/$(DEPDIR)/*.cu.d)
distclean-local: distclean-hip-deps
distclean-hip-deps:
	-rm -f drivers/hip/$(DEPDIR)/*.cu.d
mostlyclean-local: mostlyclean-hip-objects
mostlyclean-hip-objects:
	-rm -f drivers/hip/*.lo drivers/hip/*.o drivers/hip/.libs/cuda_* drivers/hip/.libs/hip_*
.PHONY: distclean-hip-deps mostlyclean-hip-objects

dist_doc_DATA += doc/hip.md

# Tests. The GPU tests are the CUDA driver's, built for the hip driver (DP_TEST_GPU_HIP): always
# built, they skip ("1..0 # SKIP no HIP device") without an AMD GPU or the module. The host-side
# ones need only hipcc: the module's exports and libraries and its clean refusal without a GPU
# (test_hip_module.sh), and the hipBLAS/RCCL stand-ins' messages when those are missing.
check_PROGRAMS += tests/test_hip_kernels tests/test_hip_link
TESTS += tests/test_hip_kernels tests/test_hip_link tests/test_hip_verify.sh tests/test_hip_module.sh
EXTRA_DIST += tests/test_hip_verify.sh tests/test_hip_module.sh
tests_test_hip_kernels_SOURCES = tests/test_cuda_kernels.c
tests_test_hip_kernels_CPPFLAGS = $(AM_CPPFLAGS) -DDP_TEST_GPU_HIP
tests_test_hip_kernels_LDADD = engine/libdualpipe.la -lm
tests_test_hip_link_SOURCES = tests/test_cuda_link.c
tests_test_hip_link_CPPFLAGS = $(AM_CPPFLAGS) -DDP_TEST_GPU_HIP
tests_test_hip_link_LDADD = engine/libdualpipe.la
if BUILD_HIP_DRIVER
check_PROGRAMS += tests/test_hip_loaders
TESTS += tests/test_hip_loaders
tests_test_hip_loaders_SOURCES = tests/test_hip_loaders.c
tests_test_hip_loaders_LDADD = drivers/hip/hip_blas.lo drivers/hip/hip_rccl.lo drivers/hip/rocm_library.lo $(HIP_LDFLAGS) $(HIP_LIBS) -ldl -lstdc++
else
EXTRA_DIST += tests/test_hip_loaders.c
endif
