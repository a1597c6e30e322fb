#!/bin/sh
# test_bench_overlap.sh: `dualpipe bench --overlap-only --quick`: DualPipe and 1F1B with MoE at
# pp 2 x ep 2 over the emulated network, a row each with the overlap on and off, with the step,
# the exposed all-to-all measured and simulated and their ratio, then the on/off and
# DualPipe/1F1B ratios. Asserts the table's shape and what holds whatever the machine's load:
# 1F1B has no overlapped pair, so its simulation is fed only its lone actions' own waits and
# must equal what it measured; every figure is positive. (How close DualPipe's prediction comes
# is the benchmark's to print, not a test's to time.)
tool="${top_builddir:-.}/tools/dualpipe"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi; }

"$tool" bench --overlap-only --quick -n 2 > "$tmp/out" 2> "$tmp/err"
rc=$?
[ $rc -eq 0 ] && [ ! -s "$tmp/err" ]; ok $? "bench --overlap-only --quick: exit 0 ($rc), nothing on stderr $(cat "$tmp/err")"
sed 's/^/# /' "$tmp/out"
grep -q 'DUALPIPE_CPU_LINK=2000,10' "$tmp/out"; ok $? "the header names the emulated network"
# rows: schedule pp ep overlap step exposed simulated ratio
grep -E '^ +(dualpipe|1f1b) +2 +2 +(on|off) ' "$tmp/out" > "$tmp/rows"
[ "$(awk '{ printf "%s-%s ", $1, $4 }' "$tmp/rows")" = "dualpipe-on dualpipe-off 1f1b-on 1f1b-off " ]
ok $? "a row for dualpipe and 1f1b, overlap on and off"
awk '{ if (!($5 > 0 && $6 > 0 && $7 > 0 && $8 > 0)) bad = 1 } END { exit bad }' "$tmp/rows"
ok $? "every step, exposed and simulated figure is positive"
awk '$1 == "1f1b" { d = $6 - $7; if (d < 0) d = -d; if (d > 0.011) bad = 1 } END { exit bad }' "$tmp/rows"
ok $? "1f1b (no pairs): simulated = measured exposed all-to-all, to the printed digits"
grep -q '^ *dualpipe *2 *2 *overlap on / off: step [0-9.]*, exposed all-to-all [0-9.]*$' "$tmp/out"
ok $? "the on/off ratios of dualpipe"
grep -q '^ *dualpipe / 1f1b at pp 2 x ep 2, same model: step [0-9.]* with the overlap, [0-9.]* without$' "$tmp/out"
ok $? "dualpipe's step against 1f1b's"
DUALPIPE_CPU_LINK=1000,100 "$tool" bench --overlap-only --quick -n 1 > "$tmp/out" 2> "$tmp/err"
grep -q 'DUALPIPE_CPU_LINK=1000,100' "$tmp/out"; ok $? "a network the user sets is the one measured"
DUALPIPE_CPU_LINK=x "$tool" bench --overlap-only --quick -n 1 > "$tmp/out" 2> "$tmp/err"
rc=$?
[ $rc -ne 0 ] && grep -q 'DUALPIPE_CPU_LINK' "$tmp/err"; ok $? "a bad network is refused, naming it ($rc): $(head -n 1 "$tmp/err")"
echo "1..$n"
