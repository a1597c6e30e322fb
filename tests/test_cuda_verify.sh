#!/bin/sh
# test_cuda_verify.sh: `dualpipe verify --driver cuda` on one GPU (all ranks share it through the
# copy link): every schedule at small sizes, then hidden 1024 to 2048 with several seeds, in fp32
# and bf16, under AdamW and SGD, with overlapped pairs on two streams or on one: each run must
# end in PASS. Skips without a GPU or without the CUDA module. GPU_TEST_DRIVER=hip runs the same
# on the HIP driver (tests/test_hip_verify.sh).
top_builddir=${top_builddir:-.}
tool="$top_builddir/tools/dualpipe"
driver=${GPU_TEST_DRIVER:-cuda}
node=/dev/nvidiactl no_device="no CUDA device"
[ "$driver" = hip ] && node=/dev/kfd no_device="no HIP device"
if [ ! -e "$node" ]; then echo "1..0 # SKIP $no_device"; exit 0; fi
if [ ! -f "$top_builddir/drivers/$driver/.libs/dualpipe_$driver.so" ]; then echo "1..0 # SKIP $no_device"; exit 0; fi
DUALPIPE_DRIVER_PATH=${DUALPIPE_DRIVER_PATH:-$top_builddir/drivers/$driver/.libs}
export DUALPIPE_DRIVER_PATH

# schedule pp chunks hidden tokens seed extra-options ('_' for spaces)
cases="dualpipe 4 8 64 16 1 -
dualpipe 2 4 64 16 1 --block_residual
dualpipev 2 8 64 16 1 -
dualpipev 4 8 64 16 1 --loss_xent
1f1b 4 8 64 16 1 -
zb1p 4 8 64 16 1 -
gpipe 2 4 64 16 1 -
interleaved-1f1b 2 8 64 16 1 -
dualpipe 4 8 64 16 1 --dtype_bf16
dualpipev 2 8 64 16 1 --block_residual_--loss_xent_--dtype_bf16
zb1p 4 8 64 16 1 --block_residual_--dtype_bf16
dualpipev 2 8 64 16 1 --serial-pairs
dualpipe 4 8 64 16 1 --serial-pairs_--dtype_bf16
zb1p 4 8 1024 128 1 -
dualpipe 4 8 1024 128 2 --dtype_bf16
dualpipev 2 8 1536 128 3 --block_residual_--optimizer_sgd
1f1b 4 8 2048 64 4 --dtype_bf16_--optimizer_sgd
zb1p 4 8 2048 64 5 --block_residual
dualpipe 2 4 2048 128 6 --block_residual_--loss_xent_--dtype_bf16
dualpipe 4 8 1536 64 7 --steps_4
zb1p 2 4 1024 256 8 --dtype_bf16_--optimizer_sgd_--block_residual"
n=$(printf '%s\n' "$cases" | wc -l)
echo "1..$n"
i=0
printf '%s\n' "$cases" | while read -r sched pp chunks hidden tokens seed extra; do
  i=$((i + 1))
  opts=""
  [ "$extra" != "-" ] && opts=$(echo "$extra" | tr '_' ' ')
  out=$("$tool" verify --driver "$driver" --schedule "$sched" --pp "$pp" --chunks "$chunks" --hidden "$hidden" \
        --tokens "$tokens" --seed "$seed" --steps 2 -q $opts 2>&1)
  status=$?
  what="verify $sched pp $pp chunks $chunks hidden $hidden tokens $tokens seed $seed $opts"
  if [ $status -eq 0 ] && printf '%s\n' "$out" | grep -q '^PASS'; then
    echo "ok $i - $what: $(printf '%s\n' "$out" | grep '^PASS')"
    # the judgement, for the log: the tolerances and how many elements under which rule
    printf '%s\n' "$out" | sed -n '/^tolerance/,/^  param/p;/^judged/,/^$/p' | sed 's/^/# /'
  else
    echo "not ok $i - $what (exit $status)"
    printf '%s\n' "$out" | sed 's/^/# /'
  fi
done
