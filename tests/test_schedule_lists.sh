#!/bin/sh
# test_schedule_lists.sh: the schedules named to users are the generators' table's, in its
# order: the usage strings (generated from it), the man page's list under `schedule -s` and
# README's sentence "The generators are ...". A new schedule is one row in engine/schedule.c,
# and this test says where else to name it.
dp="${top_builddir:-.}/tools/dualpipe"
src="${top_srcdir:-.}"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi; }
list() { tr '\n' ' ' < "$1" | sed 's/ $//'; }

"$dp" schedule --list | awk '{print $1}' > "$tmp/table"
[ "$(wc -l < "$tmp/table")" -ge 6 ]; ok $? "schedule --list gives the table: $(list "$tmp/table")"

# the man page: under .SS schedule, the -s entry's nested list, one ".TP / .B name" per schedule
awk '/^\.SS schedule/ { in_cmd = 1 }
     in_cmd && /^\.BR \\-s ", " \\-\\-schedule/ { in_opt = 1 }
     in_opt && /^\.RS/ { in_list = 1; next }
     in_list && /^\.RE/ { exit }
     in_list && prev == ".TP" && /^\.B / { print $2 }
     { prev = $0 }' "$src/doc/dualpipe.1" > "$tmp/man"
cmp -s "$tmp/table" "$tmp/man"
ok $? "doc/dualpipe.1 lists the table's schedules under schedule -s (it lists: $(list "$tmp/man"))"

# README: the sentence "The generators are `a`, `b`, ... and `z`;"
tr '\n' ' ' < "$src/README.md" | sed -n 's/.*The generators are \([^;]*\);.*/\1/p' | grep -o '`[^`]*`' | tr -d '`' \
  > "$tmp/readme"
cmp -s "$tmp/table" "$tmp/readme"
ok $? "README.md names the table's schedules (it names: $(list "$tmp/readme"))"

# every command that takes --schedule lists every schedule in its --help
for cmd in schedule train verify bench-cuda; do
  "$dp" $cmd --help > "$tmp/help" 2>&1
  missing=""
  for s in $(cat "$tmp/table"); do grep -qE "(^| )$s(,| |$)" "$tmp/help" || missing="$missing $s"; done
  [ -z "$missing" ]; ok $? "dualpipe $cmd --help lists every schedule${missing:+ (missing:$missing)}"
done

echo "1..$n"
exit $failed
