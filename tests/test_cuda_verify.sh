#!/bin/sh
# test_cuda_verify.sh: `dualpipe verify --driver cuda` for every schedule at small sizes, on
# one GPU (all ranks share it through the copy link), in fp32 and in bf16 (against the CPU
# driver's bf16), with overlapped pairs on two streams or one, with cuBLAS's GEMM algorithms or
# tuned ones (kept in a cache that a second run reuses): each run must end in PASS. Skips
# without a GPU or without the CUDA module.
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
if [ ! -e /dev/nvidiactl ]; then echo "1..0 # SKIP no CUDA device"; exit 0; fi
if [ ! -f "$top_builddir/drivers/cuda/.libs/dualpipe_cuda.so" ]; then echo "1..0 # SKIP no CUDA device"; exit 0; fi
DUALPIPE_DRIVER_PATH=${DUALPIPE_DRIVER_PATH:-$top_builddir/drivers/cuda/.libs}
export DUALPIPE_DRIVER_PATH
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
# tuned GEMMs: no warm-up (these shapes are tiny), choices kept in a fresh cache
DUALPIPE_GEMM_TUNE_MS=0 DUALPIPE_GEMM_CACHE=$tmp/gemm-cache
export DUALPIPE_GEMM_TUNE_MS DUALPIPE_GEMM_CACHE

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
dualpipe 4 8 --serial-pairs_--dtype_bf16
dualpipe 2 4 --tune-gemm_--dtype_bf16
dualpipev 2 8 --tune-gemm_--block_residual"
n=$(printf '%s\n' "$cases" | wc -l)
echo "1..$((n + 2))"
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

# the cache: the tuned runs above kept their shapes; the same run again tunes nothing
i=$((n + 1))
lines=$(grep -vc '^#' "$DUALPIPE_GEMM_CACHE" 2>/dev/null || echo 0)
if [ "$lines" -gt 0 ]; then echo "ok $i - the tuned runs kept $lines GEMM shapes in the cache"
else echo "not ok $i - no GEMM shape was kept in $DUALPIPE_GEMM_CACHE"; fi
i=$((n + 2))
out=$("$tool" verify --driver cuda --schedule dualpipe --pp 2 --chunks 4 --hidden 64 --tokens 16 --steps 2 -q \
      --tune-gemm --dtype bf16 2>&1)
status=$?
tuned=$(printf '%s\n' "$out" | grep -c 'tuned GEMM')
if [ $status -eq 0 ] && [ "$tuned" -eq 0 ] && printf '%s\n' "$out" | grep -q '^PASS'; then
  echo "ok $i - a second tuned run takes every shape from the cache and passes"
else
  echo "not ok $i - second tuned run: exit $status, $tuned shapes tuned again"
  printf '%s\n' "$out" | sed 's/^/# /'
fi
