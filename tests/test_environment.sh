#!/bin/sh
# test_environment.sh: the man page's ENVIRONMENT section is the one place that lists every
# DUALPIPE_* variable: each one the sources (engine, drivers, tools, eplb) name is there, and
# each one there is still named in the sources.
src="${top_srcdir:-.}"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }

find "$src/engine" "$src/drivers" "$src/tools" "$src/eplb" -type f \
  \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' \) \
  -exec grep -hoE 'DUALPIPE_[A-Z0-9_]+' {} + | sort -u > "$tmp/sources"
sed -n '/^\.SH ENVIRONMENT/,/^\.SH /p' "$src/doc/dualpipe.1" | sed -n 's/^\.B \(DUALPIPE_[A-Z0-9_]*\)$/\1/p' \
  | sort -u > "$tmp/man"
[ -s "$tmp/sources" ] && [ -s "$tmp/man" ]
ok $? "the sources name $(wc -l < "$tmp/sources") DUALPIPE_ variables, the man page $(wc -l < "$tmp/man")"
for v in $(cat "$tmp/sources"); do
  grep -qx "$v" "$tmp/man"; ok $? "$v (named in the sources) is in dualpipe(1)'s ENVIRONMENT"
done
for v in $(cat "$tmp/man"); do
  grep -qx "$v" "$tmp/sources"; ok $? "$v (in dualpipe(1)'s ENVIRONMENT) is read by the sources"
done

echo "1..$n"
exit $failed
