#!/bin/sh
# test_cli_grammar.sh: every command of dualpipe and eplb speaks one command-line grammar, and
# its man page says what it takes: -h/--help and -V/--version everywhere; each long option of a
# command's --help is in the man page's section for that command, and each one that section
# names is accepted; --opt=value means --opt value; an unknown option is named unknown, and an
# option without its value says so.
dp="${top_builddir:-.}/tools/dualpipe"
eplb="${top_builddir:-.}/tools/eplb"
src="${top_srcdir:-.}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cli-grammar.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }

# The text of a man page (or of one of its sections) with the roff escapes of options undone.
man_text() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' "$1"; }
# dualpipe(1)'s section for a command: from ".SS name" to the next .SS or .SH
man_section() {
  man_text "$src/doc/dualpipe.1" | awk -v cmd="$1" '
    /^\.S[SH]/ { inside = ($0 == ".SS " cmd) ; next } inside'
}
long_options() { grep -oE -- '--[a-z][a-z0-9-]*' | sort -u; }
# the long options listed in a --help (the lines that start with an option)
help_options() { grep -oE '^ +(-[a-zA-Z0-9], )?--[a-z][a-z0-9-]*' | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u; }

man_text "$src/doc/dualpipe.1" > "$tmp/dualpipe.man"
man_text "$src/doc/eplb.1" > "$tmp/eplb.man"
version=$("$dp" --version)

# every command of `dualpipe --help`, then eplb
commands=$("$dp" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }')
[ "$(echo $commands | wc -w)" -ge 5 ]; ok $? "dualpipe --help lists its commands: $(echo $commands)"
for cmd in $commands eplb; do
  if [ "$cmd" = eplb ]; then run="$eplb"; sub=""; label=eplb
    awk '/^\.SH/ { inside = ($0 == ".SH OPTIONS"); next } inside' "$tmp/eplb.man" > "$tmp/section"
    cp "$tmp/eplb.man" "$tmp/page"
  else run="$dp"; sub=$cmd; label="dualpipe $cmd"
    man_section "$cmd" > "$tmp/section"
    cp "$tmp/dualpipe.man" "$tmp/page"
  fi
  [ -s "$tmp/section" ]; ok $? "$label: the man page has a section for it"

  # -h and --help: the usage on standard output, exit 0, the same text
  "$run" $sub --help > "$tmp/help" 2> "$tmp/err"; rc=$?
  "$run" $sub -h > "$tmp/h" 2>> "$tmp/err"; rc_h=$?
  [ $rc = 0 ] && [ $rc_h = 0 ] && head -n 1 "$tmp/help" | grep -q '^Usage: ' && cmp -s "$tmp/help" "$tmp/h" && [ ! -s "$tmp/err" ]
  ok $? "$label: -h and --help print the usage on standard output with exit status 0"

  # -V and --version
  "$run" $sub --version > "$tmp/v" 2>&1; rc=$?
  "$run" $sub -V > "$tmp/V" 2>&1; rc_v=$?
  [ $rc = 0 ] && [ $rc_v = 0 ] && cmp -s "$tmp/v" "$tmp/V" && grep -qF "${version#dualpipe }" "$tmp/v"
  ok $? "$label: -V and --version print the version ($(cat "$tmp/v"))"

  # each long option of --help is in the man page's section for the command (--help and
  # --version, common to all, in the page)
  missing=""
  for o in $(help_options < "$tmp/help"); do
    case $o in --help|--version) where="$tmp/page" ;; *) where="$tmp/section" ;; esac
    grep -qE -- "$o([^a-z0-9-]|\$)" "$where" || missing="$missing $o"
  done
  [ -z "$missing" ]; ok $? "$label: the man page describes every option of --help${missing:+ (missing:$missing)}"

  # each long option the man page's section names is accepted, --help after them making it a
  # dry run that checks only the grammar: all at once, as --opt=1 or, where --help shows it
  # without a value, --opt (one command line: each run costs seconds on a loaded machine)
  args=""
  for o in $(long_options < "$tmp/section"); do
    # (--driver=cpu: bench hands any other driver's command line to bench-cuda)
    if grep -qE "^ +(-[a-zA-Z0-9], )?$o  " "$tmp/help"; then args="$args $o"
    elif [ "$o" = --driver ]; then args="$args $o=cpu"; else args="$args $o=1"; fi
  done
  refused=""; tries=0
  while [ $tries -lt 40 ]; do
    tries=$((tries + 1))
    "$run" $sub $args --help > "$tmp/out" 2> "$tmp/err" && head -n 1 "$tmp/out" | grep -q '^Usage: ' && break
    bad=$(sed -n "s/.*option '\(--[a-z0-9-]*\)[='].*/\1/p" "$tmp/err" | head -n 1)
    if [ -z "$bad" ]; then refused="$refused ($(head -n 1 "$tmp/err"))"; break; fi
    if grep -q 'takes no value' "$tmp/err"; then args=$(echo " $args " | sed "s/ $bad=1 / $bad /")
    else refused="$refused $bad ($(head -n 1 "$tmp/err"))"; args=$(echo " $args " | sed "s/ $bad=1 / /; s/ $bad / /"); fi
  done
  [ -z "$refused" ] && [ $tries -lt 40 ]
  ok $? "$label: accepts every option its man page section names${refused:+; refused:$refused}"

  # an unknown option, first or last, is called unknown (not a missing value)
  for where in first last; do
    if [ $where = first ]; then "$run" $sub --no-such-option --help > "$tmp/out" 2> "$tmp/err"; rc=$?
    else "$run" $sub --help --no-such-option > "$tmp/out" 2> "$tmp/err"; rc=$?; fi
    [ $rc = 2 ] && grep -q "unknown option '--no-such-option'" "$tmp/err" && ! grep -q 'value' "$tmp/err"
    ok $? "$label: an unknown option $where is reported as unknown, exit 2 ($(head -n 1 "$tmp/err"))"
  done
  "$run" $sub -Z > "$tmp/out" 2> "$tmp/err"; rc=$?
  [ $rc = 2 ] && grep -q "unknown option '-Z'" "$tmp/err"
  ok $? "$label: an unknown short option is reported as unknown"

  # the first option of --help that takes a value, given none at the end, says so
  opt=$(grep -oE '^ +(-[a-zA-Z0-9], )?--[a-z][a-z0-9-]* [A-Z]' "$tmp/help" | head -n 1 | grep -oE -- '--[a-z][a-z0-9-]*')
  if [ -z "$opt" ]; then
    echo "ok $((n = n + 1)) - $label: an option without its value # SKIP none of its options takes a value"
  else
    "$run" $sub "$opt" > "$tmp/out" 2> "$tmp/err"; rc=$?
    [ $rc = 2 ] && grep -q "'$opt' needs a value" "$tmp/err"
    ok $? "$label: $opt without its value says it needs one ($(head -n 1 "$tmp/err"))"
  fi
  # and a flag given a value says it takes none
  flag=$(grep -E '^ +(-[a-zA-Z0-9], )?--[a-z][a-z0-9-]*  ' "$tmp/help" | grep -vE -- '--(help|version)' | head -n 1 |
         grep -oE -- '--[a-z][a-z0-9-]*')
  if [ -n "$flag" ]; then
    "$run" $sub "$flag=yes" > "$tmp/out" 2> "$tmp/err"; rc=$?
    [ $rc = 2 ] && grep -q "'$flag' takes no value" "$tmp/err"
    ok $? "$label: $flag=yes says $flag takes no value ($(head -n 1 "$tmp/err"))"
  fi
done

# --opt=value is --opt value, in a real run of each command
small="--pp=2 --chunks=4 --hidden=8 --tokens=4 --steps=1"
"$dp" schedule --schedule=zb1p --pp=4 --chunks=8 --format=trace --cost=F=1,B=3 > "$tmp/eq" 2>&1
"$dp" schedule --schedule zb1p --pp 4 --chunks 8 --format trace --cost F=1,B=3 > "$tmp/sp" 2>&1
[ -s "$tmp/eq" ] && cmp -s "$tmp/eq" "$tmp/sp"
ok $? "schedule: --opt=value gives what --opt value gives"
"$dp" train $small --threads=1 --seed=3 --quiet > "$tmp/out" 2>&1
grep -q 'on 2 ranks.*4 micro-batches x 4 tokens, hidden 8' "$tmp/out"
ok $? "train: --opt=value ($(head -n 1 "$tmp/out" | cut -c 1-80))"
"$dp" verify --driver=cpu $small --timeout-ms=60000 -q > "$tmp/out" 2>&1
grep -q 'pp 2, chunks 4, hidden 8' "$tmp/out" && grep -q '^PASS' "$tmp/out"
ok $? "verify: --opt=value ($(grep -E '^(PASS|FAIL)|error' "$tmp/out" | head -n 1))"
"$dp" bench --steps-only --schedule=gpipe $small > "$tmp/out" 2>&1
grep -qE '^ +gpipe +2 +2 +8 +4 +4 ' "$tmp/out"
ok $? "bench: --opt=value ($(tail -n 1 "$tmp/out"))"
"$dp" bench-cuda --driver=cpu --hidden=16 --tokens=8 --steps=2 --schedule=dualpipev --pp=1 --chunks=4 --no-idle \
  > "$tmp/out" 2>&1
grep -q '^hidden 16, tokens 8' "$tmp/out" && grep -q 'dualpipev pp 1, 4 chunks' "$tmp/out"
ok $? "bench-cuda: --opt=value ($(grep -E 'error|chunks' "$tmp/out" | head -n 1))"
printf '1 2 3 4\n' > "$tmp/loads"
"$eplb" --replicas=4 --gpus=2 --policy=deepseek --output=- --quiet "$tmp/loads" > "$tmp/out" 2>&1
grep -q '"phy2log"' "$tmp/out"
ok $? "eplb: --opt=value"

# bench --driver hands the command line on to bench-cuda wherever --driver stands
"$dp" bench --steps=2 --hidden 16 --driver no-such-driver > "$tmp/out" 2> "$tmp/err"; rc=$?
[ $rc = 1 ] && grep -q 'no-such-driver' "$tmp/err"
ok $? "bench --driver NAME anywhere on the line is bench-cuda's ($(head -n 1 "$tmp/err"))"
"$dp" bench --gemm-only -d cuda --help > "$tmp/out" 2>&1
grep -q -- '--host-inputs' "$tmp/out"
ok $? "bench ... -d cuda --help shows bench-cuda's options"

# a deprecated spelling still works, says so, and is not in --help
"$dp" train $small --threads=1 -q --timeout 5000 > "$tmp/out" 2> "$tmp/err"; rc=$?
[ $rc = 0 ] && grep -q -- '--timeout is deprecated: use --timeout-ms' "$tmp/err" &&
  ! "$dp" train --help | grep -qE -- '--timeout( |$)'
ok $? "train --timeout still works, warns that it is deprecated and is left out of --help"

echo "1..$n"
exit $failed
