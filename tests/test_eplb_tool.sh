#!/bin/sh
# test_eplb_tool.sh: the eplb command: every kind of bad input is reported with its line and
# the rule broken, exits with status 2 and writes no output file; good input writes the plan,
# the summary, the SVG and the migration report.
set -u
EPLB="${top_builddir:-.}/tools/eplb"
DATA="${top_srcdir:-.}/tests/data"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/eplb-tool.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0
fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; }

# bad NAME ARGS... with the input on stdin of file $tmp/in; expects exit 2, no output file, and
# each of the patterns in $want (separated by |) in the message.
bad() {
    name=$1; shift
    rm -f "$tmp/out.json" "$tmp/out.svg"
    "$EPLB" "$@" -o "$tmp/out.json" --svg "$tmp/out.svg" >"$tmp/stdout" 2>"$tmp/stderr"
    rc=$?
    msg=$(cat "$tmp/stderr")
    good=1
    [ "$rc" -eq 2 ] || good=0
    [ -e "$tmp/out.json" ] && good=0
    [ -e "$tmp/out.svg" ] && good=0
    ls "$tmp" | grep -q 'out.json.tmp' && good=0
    old_ifs=$IFS; IFS='|'
    for pat in $want; do
        printf '%s' "$msg" | grep -q -- "$pat" || good=0
    done
    IFS=$old_ifs
    if [ $good -eq 1 ]; then ok "$name: exit 2, nothing written ($msg)"
    else not_ok "$name: rc=$rc, message: $msg"; fi
}

printf '1 2 3 4\n5 6 x 8\n' >"$tmp/in"
want='in:2:|'"'"'x'"'"' is not a number'; bad "text: not a number" -r 4 -g 2 "$tmp/in"
# a device as the loads or the current plan: refused at its first bytes, not read forever
want='/dev/zero|NUL byte'; bad "loads from /dev/zero" -r 4 -g 2 /dev/zero
printf '1 2 3 4\n' >"$tmp/in"
want='/dev/zero|NUL byte'; bad "--current /dev/zero" -r 4 -g 2 --current /dev/zero "$tmp/in"
printf '1,2,3,4\n5,6,7\n' >"$tmp/in"
want='in:2:|ragged rows'; bad "text: ragged rows" -r 4 -g 2 "$tmp/in"
printf '1 2 3 4\n1 2 3 4 5\n' >"$tmp/in"
want='in:2:|ragged rows'; bad "text: a longer row" -r 4 -g 2 "$tmp/in"
printf '1 2 3 4\n5 -6 7 8\n' >"$tmp/in"
want='in:2:|negative'; bad "text: negative load" -r 4 -g 2 "$tmp/in"
printf '# loads\n1 2 nan 4\n' >"$tmp/in"
want='in:2:|NaN'; bad "text: NaN load" -r 4 -g 2 "$tmp/in"
printf '1 2 inf 4\n' >"$tmp/in"
want='in:1:|infinite'; bad "text: infinite load" -r 4 -g 2 "$tmp/in"
printf '1 2 1e400 4\n' >"$tmp/in"
want='in:1:|too large for a double'; bad "text: a load beyond a double" -r 4 -g 2 "$tmp/in"
# finite loads whose sum overflows a double (the summary said -nan and inf, exit 0)
printf '1 2 3 4\n1e308 1e308 1 1\n' >"$tmp/in"
want='in:2:|layer 1|add up to'; bad "text: loads whose sum overflows" -r 4 -g 2 "$tmp/in"
printf '1e38,1e37,1,1\n' >"$tmp/in"
want='in:1:|more than 1e+38'; bad "text: loads summing above the limit" -r 4 -g 2 "$tmp/in"
printf '{"logical_count": [[1, 2, 3, 4],\n\n [1e308, 1e308, 1, 1]]}\n' >"$tmp/in"
want='in:3:|layer 1|add up to'; bad "JSON: loads whose sum overflows" -r 4 -g 2 "$tmp/in"
for v in -inf -nan 0x10 1e400; do
  printf '{"logical_count": [[1, 2, 3, 4],\n [1, %s, 1, 1]]}\n' "$v" >"$tmp/in"
  want='in:2:'; bad "JSON: $v is refused" -r 4 -g 2 "$tmp/in"
done
printf '1,,2,4\n' >"$tmp/in"
want='in:1:|empty field'; bad "text: empty field" -r 4 -g 2 "$tmp/in"
printf '1 2 3 4 5 6\n' >"$tmp/in"
want='in:1:|multiple of GPUs'; bad "replicas not a multiple of GPUs" -r 10 -g 4 "$tmp/in"
want='in:1:|at least the number of experts'; bad "fewer replicas than experts" -r 4 -g 2 "$tmp/in"
want='in:1:|divisible by groups'; bad "experts not divisible by groups" -r 8 -g 2 --groups 4 "$tmp/in"
want='in:1:|multiple of nodes'; bad "GPUs not a multiple of nodes" -r 8 -g 2 --nodes 3 "$tmp/in"
: >"$tmp/in"
want='empty'; bad "empty file" -r 4 -g 2 "$tmp/in"
printf '\n# nothing\n\n' >"$tmp/in"
want='empty'; bad "only comments and blank lines" -r 4 -g 2 "$tmp/in"
want='<stdin>|empty'; bad "empty stdin" -r 4 -g 2 - </dev/null
printf '{"logical_count": [[1, 2, 3, 4],\n [5, 6, 7]]}\n' >"$tmp/in"
want='in:2:|ragged rows'; bad "JSON: ragged rows" -r 4 -g 2 "$tmp/in"
printf '{"logical_count": [[1, 2, 3, 4],\n [5, "6", 7, 8]]}\n' >"$tmp/in"
want='in:2:|not a number'; bad "JSON: a string load" -r 4 -g 2 "$tmp/in"
printf '{"logical_count": [[1, 2, 3, 4],\n [5, NaN, 7, 8]]}\n' >"$tmp/in"
want='in:2: |not a number'; bad "JSON: NaN" -r 4 -g 2 "$tmp/in"
printf '{"logical_count": [[1, 2, 3, 4],\n\n [5, -1, 7, 8]]}\n' >"$tmp/in"
want='in:3:|negative'; bad "JSON: negative load" -r 4 -g 2 "$tmp/in"
printf '{"counts": [[1, 2, 3, 4]]}\n' >"$tmp/in"
want='in:1:|logical_count'; bad "JSON: no logical_count" -r 4 -g 2 "$tmp/in"
printf '{"logical_count": [[1, 2, 3, 4]\n' >"$tmp/in"
want='in:2: |not valid JSON'; bad "JSON: not closed" -r 4 -g 2 "$tmp/in"
printf '{"logical_count": []}\n' >"$tmp/in"
want='no layers'; bad "JSON: no layers" -r 4 -g 2 "$tmp/in"
printf '1 2 3 4\n' >"$tmp/in"
want='--replicas'; bad "replicas not a number" -r four -g 2 "$tmp/in"
want='--policy'; bad "unknown policy" -r 4 -g 2 -p best "$tmp/in"
want='unknown option'; bad "unknown option" -r 4 -g 2 --frobnicate "$tmp/in"
want='required'; bad "missing --gpus" -r 4 "$tmp/in"
want='--layer'; bad "layer out of range" -r 4 -g 2 --layer 3 "$tmp/in"
want='cannot open'; bad "missing input file" -r 4 -g 2 "$tmp/does-not-exist"
printf '{"phy2log": [[0, 1, 2]]}\n' >"$tmp/cur.json"
want='must match'; bad "current plan of another shape" -r 4 -g 2 --current "$tmp/cur.json" "$tmp/in"
printf '{"phy2log": [[0, 1, 2, 2]]}\n' >"$tmp/cur.json"
want='no replica of expert 3'; bad "current plan missing an expert" -r 4 -g 2 --current "$tmp/cur.json" "$tmp/in"

# --help and --version
if "$EPLB" --help | grep -q '^Usage: eplb'; then ok "--help prints usage"; else not_ok "--help"; fi
if "$EPLB" --version | grep -q '^eplb '; then ok "--version"; else not_ok "--version"; fi

# A good run: the README example of deepseek-ai/EPLB through the tool, from stdin.
printf '90 132 40 61 104 165 39 4 73 56 183 86\n20 107 104 64 19 197 187 157 172 86 16 27\n' |
    "$EPLB" -r 16 -g 8 --groups 4 --nodes 2 -p deepseek -o "$tmp/plan.json" --svg "$tmp/l0.svg" \
        --layer 0 >"$tmp/summary"
rc=$?
if [ $rc -eq 0 ] && tr -d ' \n' <"$tmp/plan.json" |
    grep -q '"phy2log":\[\[5,6,5,7,8,4,3,4,10,9,10,2,0,1,11,1\],\[7,10,6,8,6,11,8,9,2,4,5,1,5,0,3,1\]\]'
then ok "README example through the tool: exact phy2log"; else not_ok "README example through the tool (rc $rc)"; fi
if grep -q 'same-GPU duplicates: 0' "$tmp/summary" && grep -q 'best possible' "$tmp/summary"
then ok "summary reports duplicates and the bound"; else not_ok "summary"; fi
if grep -q '<svg' "$tmp/l0.svg" && grep -q '</svg>' "$tmp/l0.svg"; then ok "SVG written"; else not_ok "SVG"; fi

# Migration: the same loads against their own plan move nothing.
"$EPLB" -r 16 -g 8 --groups 4 --nodes 2 --brief --current "$tmp/plan.json" -p deepseek \
    -o "$tmp/plan2.json" "$DATA/eplb_readme.txt" >"$tmp/summary2"
if grep -q 'migration: 0 of 32 slots' "$tmp/summary2"; then ok "migration onto the same plan moves nothing"
else not_ok "migration: $(cat "$tmp/summary2")"; fi

"$EPLB" -r 16 -g 8 --groups 4 --nodes 2 -q -o "$tmp/bal.json" "$DATA/eplb_readme.txt"
"$EPLB" -r 16 -g 8 --groups 4 --nodes 2 --brief --current "$tmp/bal.json" -o "$tmp/bal2.json" \
    "$DATA/eplb_readme.txt" >"$tmp/summary3"
if grep -q 'migration: 0 of 32 slots' "$tmp/summary3" && grep -q '2 of 2 layers improved' "$tmp/summary3"
then ok "balanced: re-planning from its own plan keeps it"; else not_ok "balanced re-plan: $(cat "$tmp/summary3")"; fi
want='--keep-within'; bad "keep-within out of range" -r 16 -g 8 --keep-within 2 "$DATA/eplb_readme.txt"


# Output files (tools/output_file.c): the same file as an input, or as the other output, is
# refused before anything is written; links, modes, FIFOs and devices are honoured. Device
# nodes are made inside $tmp, never taken from /dev.
run="-r 16 -g 8 --groups 4 --nodes 2 -q"
cp "$DATA/eplb_readme.txt" "$tmp/loads.txt"
# same NAME WORDS ARGS...: exit 2, each of WORDS (|-separated) in the message, loads.txt intact
same() {
    name=$1 words=$2; shift 2
    cp "$DATA/eplb_readme.txt" "$tmp/loads.txt"
    "$EPLB" $run "$@" >"$tmp/stdout" 2>"$tmp/stderr"
    rc=$?
    msg=$(cat "$tmp/stderr")
    good=1
    [ "$rc" -eq 2 ] || good=0
    cmp -s "$DATA/eplb_readme.txt" "$tmp/loads.txt" || good=0
    old_ifs=$IFS; IFS='|'
    for pat in $words; do printf '%s' "$msg" | grep -q -- "$pat" || good=0; done
    IFS=$old_ifs
    ls "$tmp" | grep -q '\.tmp\.' && good=0
    if [ $good -eq 1 ]; then ok "$name: exit 2, input intact ($msg)"; else not_ok "$name: rc=$rc, $msg"; fi
}
same "-o over its own input" "-o|LOADS|same file" -o "$tmp/loads.txt" "$tmp/loads.txt"
ln -s loads.txt "$tmp/loads-link"
same "-o through a link to the input" "-o|same file" -o "$tmp/loads-link" "$tmp/loads.txt"
"$EPLB" $run -o "$tmp/cur.json" "$tmp/loads.txt"
cp "$tmp/cur.json" "$tmp/cur.saved"
same "--svg over the --current plan" "--svg|--current|same file" --current "$tmp/cur.json" --svg "$tmp/cur.json" \
    "$tmp/loads.txt"
if cmp -s "$tmp/cur.json" "$tmp/cur.saved"; then ok "the --current plan intact"; else not_ok "--current overwritten"; fi
rm -f "$tmp/both"
same "-o and --svg to one file" "-o|--svg|same file" -o "$tmp/both" --svg "$tmp/./both" "$tmp/loads.txt"
[ -e "$tmp/both" ] && not_ok "-o and --svg to one file: it was written" || ok "and nothing was written"
same "-o a directory" "-o|is a directory" -o "$tmp" "$tmp/loads.txt"
cp "$DATA/eplb_readme.txt" "$tmp/loads.txt"

# a link's target is replaced, the link kept; a new file follows the umask, a replaced one
# keeps its mode
printf 'old\n' >"$tmp/plan-target"
chmod 640 "$tmp/plan-target"
ln -s plan-target "$tmp/plan-link"
(umask 077 && "$EPLB" $run -o "$tmp/plan-link" --svg "$tmp/new.svg" "$tmp/loads.txt")
if [ -L "$tmp/plan-link" ] && grep -q phy2log "$tmp/plan-target"; then ok "-o through a link writes its target"
else not_ok "-o through a link: $(ls -l "$tmp/plan-link")"; fi
if grep -q phy2log "$tmp/plan-target" && [ "$(stat -c %a "$tmp/plan-target")" = 640 ]; then
    ok "the replaced plan keeps mode 640 (umask 077)"
else not_ok "replaced plan's mode: $(stat -c %a "$tmp/plan-target")"; fi
if [ "$(stat -c %a "$tmp/new.svg")" = 600 ]; then ok "a new SVG under umask 077 is 600"
else not_ok "new SVG under umask 077: $(stat -c %a "$tmp/new.svg")"; fi
rm -f "$tmp/new.json"
(umask 022 && "$EPLB" $run -o "$tmp/new.json" "$tmp/loads.txt")
if [ "$(stat -c %a "$tmp/new.json")" = 644 ]; then ok "a new plan under umask 022 is 644"
else not_ok "new plan under umask 022: $(stat -c %a "$tmp/new.json")"; fi

# a FIFO is written through (a reader started first)
mkfifo "$tmp/fifo"
cat "$tmp/fifo" >"$tmp/from-fifo" &
reader=$!
"$EPLB" $run -o "$tmp/fifo" "$tmp/loads.txt"
rc=$?
# the reader ends at the end of the data; if the FIFO was replaced instead, nothing ever comes
tries=0
while kill -0 $reader 2>/dev/null && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
kill $reader 2>/dev/null
wait $reader
if [ $rc -eq 0 ] && [ -p "$tmp/fifo" ] && cmp -s "$tmp/from-fifo" "$tmp/new.json"; then
    ok "-o a FIFO: the plan goes down it and it stays a FIFO"
else not_ok "-o a FIFO: rc=$rc"; fi

# a device node is written through, not replaced by a file
if [ "$(id -u)" != 0 ]; then
    ok "-o a device node # SKIP not root: mknod needs root"
elif ! mknod "$tmp/null" c 1 3 2>/dev/null || ! : >"$tmp/null" 2>/dev/null; then
    ok "-o a device node # SKIP no usable device node here (mknod refused or a nodev file system)"
else
    "$EPLB" $run -o "$tmp/null" --svg "$tmp/null2.svg" "$tmp/loads.txt"
    rc=$?
    if [ $rc -eq 0 ] && [ -c "$tmp/null" ] && ! ls "$tmp" | grep -q '\.tmp\.'; then ok "-o a device node: still a device"
    else not_ok "-o a device node: rc=$rc, $(ls -l "$tmp/null")"; fi
fi

# With few GPUs the SVG is still as wide as its heading and legend: their x (70) plus an
# estimated 7 pixels a character of 12-pixel sans-serif, whichever line is longer.
for g in 1 2; do
    printf '90 132 40 61\n' | "$EPLB" -r 4 -g $g -q --svg "$tmp/few$g.svg"
    width=$(sed -n 's/^<svg .* width="\([0-9]*\)".*/\1/p' "$tmp/few$g.svg")
    longest=$(sed -n 's/^<text x="70" y="[0-9]*">\(.*\)<\/text>.*/\1/p' "$tmp/few$g.svg" |
        awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }')
    if [ -n "$width" ] && [ "$longest" -gt 60 ] && [ "$width" -gt $((70 + 7 * longest)) ]
    then ok "--svg with $g GPU(s): width $width > 70 + 7 x $longest characters of text"
    else not_ok "--svg with $g GPU(s): width ${width:-none} for text of $longest characters"; fi
done

echo "1..$n"
exit $fail
