#!/bin/sh
# test_layering.sh: which headers each part of the build may reach, directly or through other
# headers. The balancer and the eplb tool stand apart from the engine; the libraries never
# reach the tools; the dualpipe command uses drivers only through the engine's interfaces.
# make check passes each part's source list in layering_* (from the automake fragments).
set -u
top="${top_srcdir:-.}"
n=0
fail=0

# check NAME FORBIDDEN SOURCES: one TAP line per source; FORBIDDEN is an extended regular
# expression on the include path ("engine/|drivers/"). Quoted includes are followed from the
# source tree (the project includes by path from the top; config.h, in the build tree, is not
# followed).
check() {
    name=$1 forbid=$2 sources=$3
    if [ -z "$sources" ]; then
        n=$((n + 1)); fail=1
        echo "not ok $n - $name: no sources given (run through make check, which passes layering_*)"
        return
    fi
    seen=" "
    for src in $sources; do
        case $src in *.c|*.h) ;; *) continue ;; esac
        case $seen in *" $src "*) continue ;; esac # a file in two programs' lists
        seen="$seen$src "
        found=$(awk -v top="$top" -v forbid="$forbid" -v root="$src" '
            function follow(f,    path, line, inc) {
                path = top "/" f
                while ((getline line < path) > 0) {
                    if (line !~ /^[ \t]*#[ \t]*include[ \t]*"/) continue
                    inc = line; sub(/^[^"]*"/, "", inc); sub(/".*$/, "", inc)
                    if (inc in from) continue
                    from[inc] = f; queue[++nq] = inc
                }
                close(path)
            }
            BEGIN {
                from[root] = ""; queue[nq = 1] = root
                for (i = 1; i <= nq; i++) {
                    f = queue[i]
                    if (i > 1 && f ~ "^(" forbid ")") {
                        chain = f
                        for (g = from[f]; g != ""; g = from[g]) chain = g " -> " chain
                        print chain
                        continue
                    }
                    follow(f)
                }
            }')
        n=$((n + 1))
        if [ -z "$found" ]; then
            echo "ok $n - $name: $src reaches no $forbid header"
        else
            fail=1
            echo "not ok $n - $name: $src reaches what it must not:"
            printf '%s\n' "$found" | sed 's/^/#   /'
        fi
    done
}

check "libeplb" "engine/|drivers/|tools/" "${layering_libeplb-}"
check "eplb tool and bench_eplb" "engine/|drivers/" "${layering_eplb_tool-}"
check "libdualpipe" "tools/|drivers/cuda/|drivers/hip/" "${layering_libdualpipe-}"
check "dualpipe tool and bench_cpu" "drivers/" "${layering_dualpipe_tool-}"
echo "1..$n"
exit $fail
