#!/bin/sh
# test_tool_log.sh: the library's log reaches the tools' stderr as DUALPIPE_DEBUG asks: silent
# by default, the driver module's path at 1 (info), and a warning naming the variable when its
# value means nothing.
dp="${top_builddir:-.}/tools/dualpipe"
modules="${top_builddir:-.}/tests/.libs"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
# the failopen test driver loads (its rank 1 then fails to open its device: exit 1 expected)
run="train --driver failopen --hidden 8 --tokens 4 --pp 2 --chunks 4 --steps 1 --threads 1"

DUALPIPE_DEBUG=1 DUALPIPE_DRIVER_PATH="$modules" "$dp" $run > "$tmp/out" 2> "$tmp/err"
grep -q "^dualpipe train: info: driver 'failopen' (.*) loaded from $modules/dualpipe_failopen.so\$" "$tmp/err"
ok $? "DUALPIPE_DEBUG=1 names the driver module loaded and its path ($(grep info: "$tmp/err" | head -n 1))"
grep -q 'rank 1 is out of order' "$tmp/err"; ok $? "and the run's own error still follows"

DUALPIPE_DEBUG=info DUALPIPE_DRIVER_PATH="$modules" "$dp" $run > "$tmp/out" 2> "$tmp/err"
grep -q "info: driver 'failopen'" "$tmp/err"; ok $? "DUALPIPE_DEBUG=info does the same"

unset DUALPIPE_DEBUG
DUALPIPE_DRIVER_PATH="$modules" "$dp" $run > "$tmp/out" 2> "$tmp/err"
! grep -q 'info:' "$tmp/err" && grep -q 'out of order' "$tmp/err"; ok $? "without DUALPIPE_DEBUG: no info lines"
DUALPIPE_DEBUG=0 DUALPIPE_DRIVER_PATH="$modules" "$dp" $run > "$tmp/out" 2> "$tmp/err"
! grep -q 'info:' "$tmp/err"; ok $? "DUALPIPE_DEBUG=0: no info lines"

DUALPIPE_DEBUG=yes "$dp" train --hidden 8 --tokens 4 --pp 2 --chunks 4 --steps 1 --threads 1 > "$tmp/out" 2> "$tmp/err"
[ $? -eq 0 ] && grep -q "warning: DUALPIPE_DEBUG is 'yes'; use 1" "$tmp/err"
ok $? "an unknown DUALPIPE_DEBUG value is named in a warning, and the run goes on"

echo "1..$n"
exit $failed
