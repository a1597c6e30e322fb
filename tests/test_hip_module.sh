#!/bin/sh
# test_hip_module.sh: the HIP driver module on any machine with hipcc, GPU or not. It exports
# only the driver symbol (its hipBLAS and RCCL stand-ins and the shared CUDA code stay inside),
# it alone needs the HIP runtime (the core library and the dualpipe command do not), and without
# an AMD GPU the registry refuses it with the reason: `dualpipe verify --driver hip` prints
# "no HIP device" and exits 2.
top_builddir=${top_builddir:-.}
module="$top_builddir/drivers/hip/.libs/dualpipe_hip.so"
if [ ! -f "$module" ]; then echo "1..0 # SKIP the HIP driver is not built (configure found no hipcc)"; exit 0; fi
for t in nm readelf; do
  command -v $t > /dev/null 2>&1 || { echo "1..0 # SKIP $t (binutils) is not installed"; exit 0; }
done
echo "1..5"
n=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi; }

# 1: the only dualpipe, NCCL or hipBLAS name it exports is the driver
exported=$(nm -D --defined-only "$module" | awk '{print $3}' | grep -E '^(dp_|dualpipe|nccl|pnccl|hipblas|_Z)' )
[ "$exported" = dualpipe_driver ]
ok $? "the module exports dualpipe_driver and nothing else of its own"
[ "$exported" = dualpipe_driver ] || printf '%s\n' "$exported" | sed 's/^/#   /'

# 2: the module needs the HIP runtime; hipBLAS and RCCL are linked or loaded, never both
needed=$(readelf -d "$module" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
printf '%s\n' "$needed" | grep -q '^libamdhip64\.so'
ok $? "the module links the HIP runtime"
printf '%s\n' "$needed" | sed 's/^/#   needs /'

# 3: the core does not: libdualpipe and the dualpipe command need no HIP library
core_bad=""
for f in "$top_builddir/engine/.libs/libdualpipe.so" "$top_builddir/tools/.libs/dualpipe" "$top_builddir/tools/dualpipe"; do
  [ -f "$f" ] || continue
  head -c 4 "$f" | grep -q ELF || continue
  readelf -d "$f" | grep -Eq 'Shared library: \[lib(amdhip64|hipblas|rccl|hsa-runtime64)' && core_bad="$core_bad $f"
done
[ -z "$core_bad" ]
ok $? "libdualpipe and the dualpipe command do not link the HIP runtime${core_bad:+ (they do:$core_bad)}"

# 4, 5: without an AMD GPU the registry refuses the module with the reason, verify exits 2
if [ -e /dev/kfd ]; then
  ok 0 "verify --driver hip without a GPU # SKIP this machine has /dev/kfd"
  ok 0 "train --driver hip without a GPU # SKIP this machine has /dev/kfd"
  exit 0
fi
out=$(DUALPIPE_DRIVER_PATH="$top_builddir/drivers/hip/.libs" "$top_builddir/tools/dualpipe" verify --driver hip -q 2>&1)
status=$?
[ $status -eq 2 ] && printf '%s\n' "$out" | grep -q 'no HIP device'
ok $? "verify --driver hip says 'no HIP device' and exits 2 (exit $status)"
printf '%s\n' "$out" | sed 's/^/#   /'
out=$(DUALPIPE_DRIVER_PATH="$top_builddir/drivers/hip/.libs" "$top_builddir/tools/dualpipe" train --driver hip --steps 1 2>&1)
status=$?
[ $status -eq 2 ] && printf '%s\n' "$out" | grep -q 'no HIP device'
ok $? "train --driver hip says 'no HIP device' and exits 2 (exit $status)"
