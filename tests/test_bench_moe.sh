#!/bin/sh
# test_bench_moe.sh: `dualpipe bench --moe-only --quick`: one row per ep (1, 2, 4) with tokens/s;
# nothing moved at ep 1; at ep 2 and 4 the combine's bytes are whole rows (hidden 64 x 4 bytes),
# the dispatch's the same rows plus the counts' exchange (each of the 2 x ep micro-batches tells
# the ep - 1 other ranks the 8 / ep counts of their experts), a pre-summed combine moves between
# 1 / topk of the rows and all of them, and the kept share is what the moved rows leave of the
# tokens x topk rows; the recomputed layout agrees with the run's loads (no warning).
tool="${top_builddir:-.}/tools/dualpipe"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }

"$tool" bench --moe-only --quick -n 2 > "$tmp/out" 2> "$tmp/err"
rc=$?
[ $rc -eq 0 ] && [ ! -s "$tmp/err" ]; ok $? "bench --moe-only --quick: exit 0 ($rc), nothing on stderr $(cat "$tmp/err")"
sed 's/^/# /' "$tmp/out"
# the rows: ep tokens/s ms dispatch combine fast kept%
grep -E '^ +[124] +[0-9]+ ' "$tmp/out" > "$tmp/rows"
[ "$(cut -c1-5 "$tmp/rows" | tr -d ' ' | tr '\n' ' ')" = "1 2 4 " ]; ok $? "a row for ep 1, 2 and 4"
awk '$1 == 1 { exit !($2 > 0 && $4 == 0 && $5 == 0 && $6 == 0 && $7 == "100.0%") }' "$tmp/rows"
ok $? "ep 1: tokens/s > 0, nothing moved, every row kept: $(grep -E '^ +1 ' "$tmp/rows")"
for ep in 2 4; do
  awk -v ep=$ep '$1 == ep {
      row = 64 * 4; rows = ep * 2 * 64 * 2; counts = 2 * ep * (ep - 1) * (8 / ep) * 4
      moved = $5 / row; kept = 100 * (rows - moved) / rows; sub(/%/, "", $7)
      exit !($2 > 0 && $5 % row == 0 && $4 == $5 + counts && $6 % row == 0 && $6 <= $5 && 2 * $6 >= $5 &&
             moved > 0 && (kept - $7) < 0.06 && ($7 - kept) < 0.06) }' "$tmp/rows"
  ok $? "ep $ep: dispatch = combine + counts, whole rows, fast between 1/topk and all, kept share agrees: $(grep -E "^ +$ep " "$tmp/rows")"
done
"$tool" bench --help | grep -q -- '--moe-only'; ok $? "bench --help lists --moe-only"

echo "1..$n"
exit $failed
