# dp_accelerators.m4: detection of CUDA, NCCL, HIP and MPI for dualpipe.
# Each check auto-detects; it is a hard error only when the user asked for the
# package explicitly (--with-X or --with-X=DIR) and it cannot be found.

# DP_CHECK_CUDA: sets have_cuda, CUDA_HOME, NVCC, CUDA_CPPFLAGS, CUDA_LDFLAGS, CUDA_LIBS, NVCC_ARCH.
AC_DEFUN([DP_CHECK_CUDA], [
  AC_ARG_WITH([cuda],
    [AS_HELP_STRING([--with-cuda[=DIR]], [CUDA toolkit root (default: auto, $CUDA_HOME or /usr/local/cuda)])],
    [], [with_cuda=check])
  AC_ARG_WITH([cuda-arch],
    [AS_HELP_STRING([--with-cuda-arch=ARCH], [nvcc GPU architecture (default: sm_90, Hopper)])],
    [NVCC_ARCH=$withval], [NVCC_ARCH=sm_90])
  AC_ARG_VAR([NVCCFLAGS], [nvcc flags for the CUDA driver, after the package's own (which they override)])
  have_cuda=no
  CUDA_HOME_GUESS=""
  AS_CASE([$with_cuda],
    [no], [],
    [yes|check], [CUDA_HOME_GUESS="${CUDA_HOME:-} /usr/local/cuda /usr"],
    [CUDA_HOME_GUESS="$with_cuda"])
  for dir in $CUDA_HOME_GUESS; do
    AS_IF([test -x "$dir/bin/nvcc" && test -f "$dir/include/cuda_runtime.h"], [
      save_LIBS=$LIBS; save_LDFLAGS=$LDFLAGS; save_CPPFLAGS=$CPPFLAGS
      dp_libdir="$dir/lib64"; test -d "$dp_libdir" || dp_libdir="$dir/lib"
      LDFLAGS="-L$dp_libdir $LDFLAGS"; CPPFLAGS="-I$dir/include $CPPFLAGS"
      LIBS=""
      AC_CHECK_LIB([cudart], [cudaGetDeviceCount], [
        AC_CHECK_LIB([cublas], [cublasCreate_v2], [
          have_cuda=yes
          CUDA_HOME=$dir
          NVCC="$dir/bin/nvcc"
          CUDA_CPPFLAGS="-I$dir/include"
          CUDA_LDFLAGS="-L$dp_libdir -Wl,-rpath,$dp_libdir"
          CUDA_LIBS="-lcublasLt -lcublas -lcudart"
        ])
      ])
      LIBS=$save_LIBS; LDFLAGS=$save_LDFLAGS; CPPFLAGS=$save_CPPFLAGS
    ])
    test "x$have_cuda" = xyes && break
    AS_UNSET([ac_cv_lib_cudart_cudaGetDeviceCount])
    AS_UNSET([ac_cv_lib_cublas_cublasCreate_v2])
  done
  AS_IF([test "x$have_cuda" = xno && test "x$with_cuda" != xcheck && test "x$with_cuda" != xno],
    [AC_MSG_ERROR([--with-cuda was given but no CUDA toolkit (bin/nvcc, include/cuda_runtime.h, libcudart, libcublas) was found in: $CUDA_HOME_GUESS. Pass --with-cuda=DIR pointing at the toolkit root, or --without-cuda])])
  AC_SUBST([CUDA_HOME]) AC_SUBST([NVCC]) AC_SUBST([NVCC_ARCH])
  AC_SUBST([CUDA_CPPFLAGS]) AC_SUBST([CUDA_LDFLAGS]) AC_SUBST([CUDA_LIBS])
])

# DP_CHECK_NCCL: sets have_nccl, NCCL_HOME, NCCL_CPPFLAGS, NCCL_LDFLAGS, NCCL_LIBS.
AC_DEFUN([DP_CHECK_NCCL], [
  AC_ARG_WITH([nccl],
    [AS_HELP_STRING([--with-nccl[=DIR]], [NCCL root (default: auto, the CUDA root, then the system)])],
    [], [with_nccl=check])
  have_nccl=no
  NCCL_GUESS=""
  AS_CASE([$with_nccl],
    [no], [],
    [yes|check], [NCCL_GUESS="${NCCL_HOME:-} ${CUDA_HOME:-} /usr/local/cuda system"],
    [NCCL_GUESS="$with_nccl"])
  AS_IF([test "x$have_cuda" != xyes], [NCCL_GUESS=""])
  for dir in $NCCL_GUESS; do
    AS_IF([test "x$dir" = xsystem], [inc=""; lib=""], [
      inc="-I$dir/include"
      dp_libdir="$dir/lib64"; test -f "$dp_libdir/libnccl.so" || dp_libdir="$dir/lib"
      lib="-L$dp_libdir -Wl,-rpath,$dp_libdir"
    ])
    save_LIBS=$LIBS; save_LDFLAGS=$LDFLAGS; save_CPPFLAGS=$CPPFLAGS
    CPPFLAGS="$inc $CUDA_CPPFLAGS $CPPFLAGS"; LDFLAGS="$lib $CUDA_LDFLAGS $LDFLAGS"
    LIBS="-lnccl $CUDA_LIBS"
    AC_MSG_CHECKING([for NCCL in $dir])
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <nccl.h>]], [[int v; ncclGetVersion(&v);]])],
      [have_nccl=yes; NCCL_HOME=$dir; NCCL_CPPFLAGS="$inc"; NCCL_LDFLAGS="$lib"; NCCL_LIBS="-lnccl"])
    AC_MSG_RESULT([$have_nccl])
    LIBS=$save_LIBS; LDFLAGS=$save_LDFLAGS; CPPFLAGS=$save_CPPFLAGS
    test "x$have_nccl" = xyes && break
  done
  AS_IF([test "x$have_nccl" = xno && test "x$with_nccl" != xcheck && test "x$with_nccl" != xno],
    [AC_MSG_ERROR([--with-nccl was given but NCCL (nccl.h and libnccl) was not found (CUDA found: $have_cuda). Pass --with-nccl=DIR with include/nccl.h and lib/libnccl.so, or --without-nccl])])
  AC_SUBST([NCCL_HOME]) AC_SUBST([NCCL_CPPFLAGS]) AC_SUBST([NCCL_LDFLAGS]) AC_SUBST([NCCL_LIBS])
])

# DP_CHECK_HIP: sets have_hip, HIP_HOME, HIPCC, HIP_ARCH_FLAGS, HIP_CPPFLAGS, HIP_LDFLAGS,
# HIP_LIBS, and have_hipblas / have_rccl (linked when found; otherwise the module loads them at
# run time). The HIP driver (drivers/hip) is built when hipcc, hip_runtime.h and libamdhip64 are
# found and hipcc compiles for the GPU architectures.
AC_DEFUN([DP_CHECK_HIP], [
  AC_ARG_WITH([hip],
    [AS_HELP_STRING([--with-hip[=DIR]], [ROCm/HIP root (default: auto, $ROCM_PATH, /opt/rocm, then /usr); builds the hip driver])],
    [], [with_hip=check])
  AC_ARG_WITH([hip-arch],
    [AS_HELP_STRING([--with-hip-arch=LIST], [AMD GPU architectures, comma-separated (default: those of gfx90a,gfx942 that hipcc accepts: MI200, MI300)])],
    [HIP_ARCH=$withval], [HIP_ARCH=auto])
  AC_ARG_VAR([HIPFLAGS], [hipcc flags for the HIP driver, after the package's own (which they override)])
  have_hip=no
  have_hipblas=no
  have_rccl=no
  HIP_GUESS=""
  AS_CASE([$with_hip],
    [no], [],
    [yes|check], [HIP_GUESS="${ROCM_PATH:-} /opt/rocm /usr"],
    [HIP_GUESS="$with_hip"])
  for dir in $HIP_GUESS; do
    AS_IF([test -x "$dir/bin/hipcc" && test -f "$dir/include/hip/hip_runtime.h"], [
      dp_hip_libdir=""
      for d in "$dir/lib" "$dir/lib64" "$dir/lib/$host_cpu-$host_os" "$dir/lib/x86_64-linux-gnu"; do
        AS_IF([test -f "$d/libamdhip64.so"], [dp_hip_libdir=$d; break])
      done
      AS_IF([test -n "$dp_hip_libdir"], [
        have_hip=yes; HIP_HOME=$dir; HIPCC="$dir/bin/hipcc"
        HIP_LDFLAGS="-L$dp_hip_libdir"
        AS_IF([test "x$dir" != x/usr], [HIP_LDFLAGS="$HIP_LDFLAGS -Wl,-rpath,$dp_hip_libdir"])
        HIP_LIBS="-lamdhip64"
        break])
    ])
  done
  AS_IF([test "x$have_hip" = xyes], [
    # The architectures: each one asked for (or, by default, each of gfx90a and gfx942) that this
    # hipcc compiles a kernel for; hipcc without one would ask the machine's GPU.
    AS_IF([test "x$HIP_ARCH" = xauto], [dp_hip_try="gfx90a gfx942"], [dp_hip_try=$(echo "$HIP_ARCH" | tr ',' ' ')])
    HIP_ARCH_FLAGS=""
    HIP_ARCH_LIST=""
    cat > conftest.hip <<'_DP_EOF'
#include <hip/hip_runtime.h>
__global__ void dp_k(float *x) { x@<:@threadIdx.x@:>@ += 1.0f; }
_DP_EOF
    for a in $dp_hip_try; do
      AC_MSG_CHECKING([whether hipcc compiles for $a])
      AS_IF([$HIPCC -x hip --offload-arch=$a -c conftest.hip -o conftest.$OBJEXT >&AS_MESSAGE_LOG_FD 2>&1],
        [HIP_ARCH_FLAGS="$HIP_ARCH_FLAGS --offload-arch=$a"; HIP_ARCH_LIST="$HIP_ARCH_LIST,$a"; AC_MSG_RESULT([yes])],
        [AC_MSG_RESULT([no])
         AS_IF([test "x$HIP_ARCH" != xauto], [AC_MSG_ERROR([--with-hip-arch: $HIPCC cannot compile for $a (see config.log)])])])
    done
    rm -f conftest.hip conftest.$OBJEXT
    HIP_ARCH_LIST=${HIP_ARCH_LIST#,}
    AS_IF([test -z "$HIP_ARCH_FLAGS"], [have_hip=no; hip_why="$HIPCC compiles for none of: $dp_hip_try"])
  ], [hip_why="no hipcc with include/hip/hip_runtime.h and libamdhip64 in: $HIP_GUESS"])
  AS_IF([test "x$have_hip" = xyes], [
    HIP_CPPFLAGS=""
    AS_IF([test "x$HIP_HOME" != x/usr], [HIP_CPPFLAGS="-I$HIP_HOME/include"])
    # hipBLAS and RCCL: linked when present, else loaded by the module at run time.
    AS_IF([test -f "$HIP_HOME/include/hipblas/hipblas.h" && ls "$dp_hip_libdir"/libhipblas.so >/dev/null 2>&1],
      [have_hipblas=yes; HIP_CPPFLAGS="$HIP_CPPFLAGS -DDP_HIP_HAVE_HIPBLAS=1 -DHIPBLAS_V2"; HIP_LIBS="-lhipblas $HIP_LIBS"])
    AS_IF([test -f "$HIP_HOME/include/rccl/rccl.h" && ls "$dp_hip_libdir"/librccl.so >/dev/null 2>&1],
      [have_rccl=yes; HIP_CPPFLAGS="$HIP_CPPFLAGS -DDP_HIP_HAVE_RCCL=1"; HIP_LIBS="-lrccl $HIP_LIBS"])
  ])
  AS_IF([test "x$have_hip" = xno && test "x$with_hip" != xcheck && test "x$with_hip" != xno],
    [AC_MSG_ERROR([--with-hip was given but the HIP driver cannot be built: $hip_why. Install hipcc and libamdhip64-dev (Debian) or ROCm, pass --with-hip=DIR (the root holding bin/hipcc), or --without-hip])])
  AC_SUBST([HIP_HOME]) AC_SUBST([HIPCC]) AC_SUBST([HIP_ARCH_FLAGS])
  AC_SUBST([HIP_CPPFLAGS]) AC_SUBST([HIP_LDFLAGS]) AC_SUBST([HIP_LIBS])
])

# DP_CHECK_MPI: sets have_mpi, MPICC, MPI_CFLAGS, MPI_LIBS, HAVE_MPI. Detected and reported
# the mpi link, the MPI bootstrap and dp_mpi_start (drivers/mpi) are built when found.
AC_DEFUN([DP_CHECK_MPI], [
  AC_ARG_WITH([mpi],
    [AS_HELP_STRING([--with-mpi[=MPICC]], [MPI compiler wrapper (default: auto, mpicc on PATH); the mpi link and bootstrap, for ranks in several processes])],
    [], [with_mpi=check])
  have_mpi=no
  AS_CASE([$with_mpi],
    [no], [],
    [yes|check], [AC_PATH_PROGS([MPICC], [mpicc], [])],
    [MPICC=$with_mpi])
  AS_IF([test "x$with_mpi" != xno && test -n "$MPICC" && test -x "$MPICC"], [
    MPI_CFLAGS=$($MPICC --showme:compile 2>/dev/null || $MPICC -show 2>/dev/null | sed 's/^[[^ ]]* //')
    MPI_LIBS=$($MPICC --showme:link 2>/dev/null || echo "")
    save_CPPFLAGS=$CPPFLAGS; save_LIBS=$LIBS
    CPPFLAGS="$MPI_CFLAGS $CPPFLAGS"; LIBS="$MPI_LIBS $LIBS"
    AC_MSG_CHECKING([whether MPI programs link])
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <mpi.h>]], [[MPI_Init(0, 0); MPI_Finalize();]])],
      [have_mpi=yes], [have_mpi=no])
    AC_MSG_RESULT([$have_mpi])
    CPPFLAGS=$save_CPPFLAGS; LIBS=$save_LIBS
  ])
  AS_IF([test "x$have_mpi" = xno && test "x$with_mpi" != xcheck && test "x$with_mpi" != xno],
    [AC_MSG_ERROR([--with-mpi was given but no working MPI compiler wrapper was found: install libopenmpi-dev (mpicc), pass --with-mpi=/path/to/mpicc, or --without-mpi])])
  AS_IF([test "x$have_mpi" = xyes], [AC_DEFINE([HAVE_MPI], [1], [MPI is available])])
  AC_SUBST([MPI_CFLAGS]) AC_SUBST([MPI_LIBS])
  AM_CONDITIONAL([HAVE_MPI], [test "x$have_mpi" = xyes])
])
