#!/bin/sh
# test_cuda_verify.sh: `dualpipe verify --driver cuda` for every schedule at small sizes, on
# one GPU (all ranks share it through the copy link), in fp32 and in bf16 (against the CPU
# driver's bf16), with overlapped pairs on two streams or on one: each run must end in PASS.
# Skips without a GPU or without the CUDA module.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
if [ ! -e /dev/nvidiactl ]; then echo "1..0 # SKIP no CUDA device"; exit 0; fi
if [ ! -f "$top_builddir/drivers/cuda/.libs/dualpipe_cuda.so" ]; then echo "1..0 # SKIP no CUDA device"; exit 0; fi
DUALPIPE_DRIVER_PATH=${DUALPIPE_DRIVER_PATH:-$top_builddir/drivers/cuda/.libs}
export DUALPIPE_DRIVER_PATH

# schedule pp chunks extra-options
cases="dualpipe 4 8 -
dualpipe 2 4 --block_residual
dualpipev 2 8 -
dualpipev 4 8 --loss_xent
1f1b 4 8 -
zb1p 4 8 -
gpipe 2 4 -
interleaved-1f1b 2 8 -
dualpipe 4 8 --dtype_bf16
dualpipev 2 8 --block_residual_--loss_xent_--dtype_bf16
zb1p 4 8 --block_residual_--dtype_bf16
dualpipev 2 8 --serial-pairs
dualpipe 4 8 --serial-pairs_--dtype_bf16"
n=$(printf '%s\n' "$cases" | wc -l)
echo "1..$n"
i=0
printf '%s\n' "$cases" | while read -r sched pp chunks extra; do
  i=$((i + 1))
  opts=""
  [ "$extra" != "-" ] && opts=$(echo "$extra" | tr '_' ' ')
  out=$("$tool" verify --driver cuda --schedule "$sched" --pp "$pp" --chunks "$chunks" --hidden 64 \
        --tokens 16 --steps 2 -q $opts 2>&1)
  status=$?
  if [ $status -eq 0 ] && printf '%s\n' "$out" | grep -q '^PASS'; then
    echo "ok $i - verify $sched pp $pp chunks $chunks $opts: $(printf '%s\n' "$out" | grep '^PASS')"
  else
    echo "not ok $i - verify $sched pp $pp chunks $chunks $opts (exit $status)"
    printf '%s\n' "$out" | sed 's/^/# /'
  fi
done

