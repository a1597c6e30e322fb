#!/bin/sh
# test_schedule_tool.sh: `dualpipe schedule` end to end: the trace interface, every
# format, communication costs and the exposed communication they give (the SVG's comm rows
# among them), the text timeline fitted to the page width, --help/--version, and bad input
# (clear error, exit 2, no output file left).
dp="${top_builddir:-.}/tools/dualpipe"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }

# trace: DualPipe PP=4, 8 micro-batches, rank 1 is a middle rank: its first main-step F0/B1
# run apart, then the pairs; the second half of a pair starts with '&'
"$dp" schedule --schedule dualpipe --pp 4 --chunks 8 --format trace > "$tmp/t" 2> "$tmp/err"
ok $? "trace format runs"
grep '^&\?1 ' "$tmp/t" | tr '\n' ';' > "$tmp/r1"
want='1 F 0 0;1 F 1 0;1 F 0 1;1 F 1 1;1 F 0 2;1 B 1 0;1 F 1 2;&1 B 0 0;1 F 0 3;&1 B 1 1;1 F 1 3;&1 B 0 1;1 B 1 2;1 B 0 2;1 I 1 3;1 I 0 3;1 W 1 3;1 W 0 3;'
[ "$(cat "$tmp/r1")" = "$want" ]; ok $? "rank 1 trace is the reference order"
nf=$(grep -c ' F ' "$tmp/t"); nb=$(grep -c ' [BI] ' "$tmp/t"); ni=$(grep -c ' I ' "$tmp/t"); nw=$(grep -c ' W ' "$tmp/t")
[ "$nf" -eq 32 ] && [ "$nb" -eq 32 ] && [ "$nw" -eq "$ni" ] && [ "$(wc -l < "$tmp/t")" -eq $((nf + nb + nw)) ]
ok $? "trace: 4 ranks x 2 directions x 4 micro-batches of F and of B or I, a W per I ($nf F, $nb B/I, $nw W)"

# every format writes a complete file through -o
for f in text trace json svg chrome; do
  "$dp" schedule --pp 8 --chunks 20 --format $f -o "$tmp/out.$f" 2> "$tmp/err"
  ok $? "--format $f -o writes a file"
  [ -s "$tmp/out.$f" ] && ! ls "$tmp"/out.$f.tmp.* > /dev/null 2>&1; ok $? "$f: no temporary left behind"
done
grep -q '^makespan 66$' "$tmp/out.text"; ok $? "text: DualPipe PP=8, 20 micro-batches simulates to makespan 66"
grep -q '"idle": 6,' "$tmp/out.json"; ok $? "json: per-rank idle 6 = (PP/2-1)(F&B+B-3W)"
head -c 5 "$tmp/out.svg" | grep -q '<?xml' && tail -n 1 "$tmp/out.svg" | grep -q '</svg>'; ok $? "svg is a whole document"
grep -q '"traceEvents"' "$tmp/out.chrome"; ok $? "chrome trace has events"
if command -v python3 > /dev/null 2>&1; then
  python3 -m json.tool "$tmp/out.json" > /dev/null && python3 -m json.tool "$tmp/out.chrome" > /dev/null
  ok $? "json and chrome outputs parse as JSON"
else
  n=$((n+1)); echo "ok $n # SKIP python3 not installed to parse the JSON"
fi
"$dp" schedule -o "$tmp/guess.svg" && head -c 5 "$tmp/guess.svg" | grep -q '<?xml'; ok $? "format guessed from .svg"

# communication in the cost model: nothing changes without it; the exposed all-to-all and
# pipeline time per rank with it (text, JSON), and a comm track in the Chrome trace
for f in text json svg chrome; do
  "$dp" schedule --pp 4 --chunks 8 --format $f > "$tmp/nocomm.$f" &&
    "$dp" schedule --pp 4 --chunks 8 --format $f --cost A2AF=0,A2AB=0,P2P=0 > "$tmp/zero.$f" &&
    cmp -s "$tmp/nocomm.$f" "$tmp/zero.$f" && ! grep -q 'exposed\|all-to-all\|A2A' "$tmp/nocomm.$f"
  ok $? "$f: A2AF=A2AB=P2P=0 writes the same bytes as no --cost, with no exposed communication"
done
# 1F1B on 2 ranks, 2 micro-batches, F=1 B=2, P2P=2: rank 0 waits 6 then 1 for its backwards
# (2 and 1 of it the latency), rank 1 waits 3 for its first forward (2 of it)
"$dp" schedule -s 1f1b --pp 2 --chunks 2 --cost P2P=2 > "$tmp/p2p" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q '^makespan 13$' "$tmp/p2p" && grep -Eq '^0 +0 +3 +3$' "$tmp/p2p" && grep -Eq '^1 +0 +2 +2$' "$tmp/p2p"
ok $? "text, 1f1b pp 2, P2P=2: exposed pipeline time 3 and 2, makespan 13"
# DualPipe PP=4, 8 micro-batches, A2AF=A2AB=1: every rank runs 5 lone F and 5 lone B/I (1 each
# exposed) and 3 pairs (2 of all-to-all under FB=3, none exposed)
"$dp" schedule --pp 4 --chunks 8 --cost F=1,B=2,W=1,FB=3,A2AF=1,A2AB=1 > "$tmp/a2a" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q '^makespan 37$' "$tmp/a2a" && [ "$(grep -Ec '^[0-3] +10 +0 +10$' "$tmp/a2a")" -eq 4 ] &&
  grep -q 'A2AF=1 A2AB=1' "$tmp/a2a"
ok $? "text, dualpipe pp 4, A2AF=A2AB=1: 10 exposed all-to-all per rank, makespan 37"
# --no-overlap: all 8 F and 8 B/I of a rank expose their all-to-all
"$dp" schedule --pp 4 --chunks 8 --cost A2AF=1,A2AB=1 --no-overlap > "$tmp/apart" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q '^makespan 45$' "$tmp/apart" && [ "$(grep -Ec '^[0-3] +16 +0 +16$' "$tmp/apart")" -eq 4 ] &&
  grep -q 'pairs not overlapped' "$tmp/apart"
ok $? "text, --no-overlap: 16 exposed per rank, makespan 45"
"$dp" schedule --pp 4 --chunks 8 --cost A2AF=1,A2AB=1 --format json > "$tmp/a2a.json" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q '"A2AF": 1, "A2AB": 1, "overlap": true' "$tmp/a2a.json" &&
  [ "$(grep -c '"exposed_a2a": 10, "exposed_p2p": 0, "exposed_comm": 10,' "$tmp/a2a.json")" -eq 4 ]
ok $? "json: the all-to-all costs and each rank's exposed communication"
"$dp" schedule --pp 4 --chunks 8 --cost A2AF=1,A2AB=1 --format chrome > "$tmp/a2a.chrome" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q '"rank 3 comm"' "$tmp/a2a.chrome" &&
  [ "$(grep -c '"all-to-all (exposed)"' "$tmp/a2a.chrome")" -eq 40 ] &&
  [ "$(grep -c '"all-to-all (hidden)"' "$tmp/a2a.chrome")" -eq 12 ]
ok $? "chrome: a comm track per rank, 40 exposed all-to-all (10 lone actions x 4 ranks) and 12 hidden (the pairs)"
# svg: a comm row under each rank's row, as many rectangles as the Chrome trace has events,
# each rank's exposed all-to-all at its row's end; not overlapped, the pairs' exposed too
"$dp" schedule --pp 4 --chunks 8 --cost A2AF=1,A2AB=1 --format svg > "$tmp/a2a.svg" 2> "$tmp/err"
[ $? -eq 0 ] && [ "$(grep -c 'class="comm-row"' "$tmp/a2a.svg")" -eq 4 ] &&
  [ "$(grep -c 'class="a2a-exposed"' "$tmp/a2a.svg")" -eq 40 ] &&
  [ "$(grep -c 'class="a2a-hidden"' "$tmp/a2a.svg")" -eq 12 ] &&
  [ "$(grep -c '>exposed: all-to-all 10</text>' "$tmp/a2a.svg")" -eq 4 ] && grep -q 'all-to-all hidden under compute' "$tmp/a2a.svg"
ok $? "svg: 4 comm rows, 40 exposed and 12 hidden all-to-all rectangles, 10 exposed per rank, a legend"
"$dp" schedule --pp 4 --chunks 8 --cost A2AF=1,A2AB=1 --no-overlap --format svg > "$tmp/apart.svg" 2> "$tmp/err"
[ $? -eq 0 ] && [ "$(grep -c 'class="a2a-exposed"' "$tmp/apart.svg")" -eq 52 ] &&
  ! grep -q 'class="a2a-hidden"' "$tmp/apart.svg" && [ "$(grep -c '>exposed: all-to-all 16</text>' "$tmp/apart.svg")" -eq 4 ]
ok $? "svg, --no-overlap: 52 exposed rectangles (13 lone actions and pairs x 4 ranks), none hidden, 16 per rank"
if command -v python3 > /dev/null 2>&1; then
  python3 -m json.tool "$tmp/a2a.json" > /dev/null && python3 -m json.tool "$tmp/a2a.chrome" > /dev/null
  ok $? "json and chrome with communication parse as JSON"
else
  n=$((n+1)); echo "ok $n # SKIP python3 not installed to parse the JSON"
fi

# The text timeline fits the page: $COLUMNS for standard output, else the terminal's width
# (not a terminal here), else 80; -o FILE 80; --width N. A timeline wider than the page is cut
# into bands of time: the bands of each rank put back together give the one long row.
unbanded() { # FILE RANK: the rank's timeline, bands joined
  awk -v r="rank $(printf '%2d' "$2") " 'index($0, r) == 1 { s = s substr($0, length(r) + 1) } END { print s }' "$1"
}
longest() { awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }' "$1"; }
COLUMNS=400 "$dp" schedule --pp 8 --chunks 20 > "$tmp/wide" 2> "$tmp/err"
[ $? -eq 0 ] && [ "$(grep -c '^time .* (band ' "$tmp/wide")" -eq 0 ] && [ "$(longest "$tmp/wide")" -gt 200 ]
ok $? "COLUMNS=400: one band as wide as the timeline ($(longest "$tmp/wide") columns)"
for cols in 50 80 132; do
  COLUMNS=$cols "$dp" schedule --pp 8 --chunks 20 > "$tmp/w$cols" 2> "$tmp/err"
  good=$?
  [ "$(longest "$tmp/w$cols")" -le "$cols" ] || good=1
  bands=$(grep -c '^time .* (band ' "$tmp/w$cols")
  [ "$bands" -ge 2 ] && [ "$(grep -c '^rank  7 ' "$tmp/w$cols")" -eq "$bands" ] || good=1
  for r in 0 3 7; do [ "$(unbanded "$tmp/w$cols" $r)" = "$(unbanded "$tmp/wide" $r)" ] || good=1; done
  grep -q '^makespan 66$' "$tmp/w$cols" || good=1
  ok $good "COLUMNS=$cols: every line fits ($(longest "$tmp/w$cols") columns), $bands bands that join into the same rows"
done
(unset COLUMNS; "$dp" schedule --pp 8 --chunks 20 | cat > "$tmp/pipe")
[ "$(longest "$tmp/pipe")" -le 80 ] && [ "$(longest "$tmp/pipe")" -gt 60 ]
ok $? "into a pipe without COLUMNS: 80 columns ($(longest "$tmp/pipe"))"
COLUMNS=400 "$dp" schedule --pp 8 --chunks 20 -o "$tmp/file.txt" 2> "$tmp/err"
[ $? -eq 0 ] && [ "$(longest "$tmp/file.txt")" -le 80 ]; ok $? "-o FILE: 80 columns whatever COLUMNS says"
"$dp" schedule --pp 8 --chunks 20 --width 100 -o "$tmp/w100.txt" 2> "$tmp/err"
[ $? -eq 0 ] && [ "$(longest "$tmp/w100.txt")" -le 100 ] && [ "$(longest "$tmp/w100.txt")" -gt 80 ]
ok $? "--width 100: at most 100 columns ($(longest "$tmp/w100.txt"))"
"$dp" schedule --width 10 > "$tmp/out" 2> "$tmp/err"
[ $? -eq 2 ] && grep -q -- '--width' "$tmp/err"; ok $? "--width below 50 is refused"

"$dp" schedule --help | grep -q -- '--chunks' && "$dp" schedule --help | grep -q -- '--no-overlap'
ok $? "--help lists the options"
"$dp" --version | grep -q '^dualpipe [0-9]'; ok $? "--version"

# bad input: exit status 2, a message naming the rule, no output file
bad() { # expected-words args...
  words=$1; shift
  rm -f "$tmp/bad.svg"
  "$dp" schedule "$@" -o "$tmp/bad.svg" > /dev/null 2> "$tmp/err"; rc=$?
  [ $rc -eq 2 ] && grep -q -- "$words" "$tmp/err" && [ ! -e "$tmp/bad.svg" ]
  ok $? "rejects $* ($(head -n 1 "$tmp/err"))"
}
bad "even number of pipeline ranks" --pp 3
bad ">= 2 x PP" --pp 4 --chunks 6
bad "known schedules" --schedule pipedream
bad "negative" --cost F=-1
bad "cost A2AF is negative" --cost A2AF=-1
bad "unknown cost 'A2A'" --cost A2A=1
# non-finite and overflowing costs: refused before anything is drawn (an infinite makespan once
# made the SVG writer loop for ever and the text writer allocate a negative size)
for f in svg text json chrome; do
  bad "finite number" --cost F=inf --format $f
done
bad "finite number" --cost F=1e400
bad "finite number" --cost A2AB=inf
bad "not a number" --cost B=nan
bad "between 1e-09 and 1e+09" --cost F=1e300,B=1e300,FB=1e300,P2P=1e300
bad "between 1e-09 and 1e+09" --cost P2P=1e-400
bad "whole number" --pp four
bad "known formats" --format png
bad "unknown option" --frobnicate
"$dp" schedule -o "$tmp/no/such/dir/x.svg" > /dev/null 2> "$tmp/err"; rc=$?
[ $rc -eq 1 ] && grep -q "cannot create" "$tmp/err"; ok $? "unwritable output is reported"

# outputs that are not plain new files (tools/output_file.c): a directory is refused with exit 2;
# a link's target is replaced and the link kept; modes follow the umask or are kept; a FIFO and
# a device node are written through. Device nodes are made inside $tmp, never taken from /dev.
"$dp" schedule -o "$tmp" > /dev/null 2> "$tmp/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "-o '$tmp' is a directory" "$tmp/err" && [ -d "$tmp" ]
ok $? "-o a directory: exit 2 ($(head -n 1 "$tmp/err"))"
"$dp" schedule --pp 4 --chunks 8 > "$tmp/expected"
echo old > "$tmp/target"; chmod 640 "$tmp/target"; ln -s target "$tmp/link"
(umask 077 && "$dp" schedule --pp 4 --chunks 8 -o "$tmp/link")
[ -L "$tmp/link" ] && cmp -s "$tmp/target" "$tmp/expected"; ok $? "-o through a link writes its target, the link kept"
cmp -s "$tmp/target" "$tmp/expected" && [ "$(stat -c %a "$tmp/target")" = 640 ]; ok $? "the replaced file keeps mode 640 under umask 077"
(umask 022 && "$dp" schedule --pp 4 --chunks 8 -o "$tmp/fresh")
[ "$(stat -c %a "$tmp/fresh")" = 644 ]; ok $? "a new file under umask 022 is 644"
mkfifo "$tmp/fifo"
cat "$tmp/fifo" > "$tmp/from-fifo" &
reader=$!
"$dp" schedule --pp 4 --chunks 8 -o "$tmp/fifo"; rc=$?
tries=0 # the reader ends with the data; if the FIFO was replaced instead, nothing ever comes
while kill -0 $reader 2> /dev/null && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
kill $reader 2> /dev/null; wait $reader
[ $rc -eq 0 ] && [ -p "$tmp/fifo" ] && cmp -s "$tmp/from-fifo" "$tmp/expected"
ok $? "-o a FIFO: the timeline goes down it and it stays a FIFO"
if [ "$(id -u)" != 0 ]; then
  n=$((n+1)); echo "ok $n - -o a device node # SKIP not root: mknod needs root"
elif ! mknod "$tmp/null" c 1 3 2> /dev/null || ! : > "$tmp/null" 2> /dev/null; then
  n=$((n+1)); echo "ok $n - -o a device node # SKIP no usable device node here (mknod refused or a nodev file system)"
else
  "$dp" schedule --format svg -o "$tmp/null"; rc=$?
  [ $rc -eq 0 ] && [ -c "$tmp/null" ] && ! ls "$tmp" | grep -q '\.tmp\.'; ok $? "-o a device node: written through, still a device"
fi
echo "1..$n"
exit $failed
