#!/bin/sh
# N `line` steps into one file, applied by `plumb apply --connection local` on this machine:
# wall time of a first apply (the file does not exist; the first step creates it) and of a
# no-op apply, median of RUNS each, plus the commands the host side started (every command
# on PATH replaced by a wrapper that logs its name; a separate run, not timed).
#
#     bench/lines.sh PLUMB_BINARY [STEPS=100] [RUNS=7]
#
# Prints one line of JSON. The host side is this machine's /bin/sh (no SSH): it shows what
# the steps cost, not the connection.
set -eu
plumb=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
steps=${2:-100}
runs=${3:-7}
work=$(mktemp -d "${TMPDIR:-/tmp}/plumb-lines.XXXXXX")
trap 'rm -rf "$work"' EXIT
repo=$work/repo
target=$work/host/lines.conf
mkdir -p "$repo/environments/bench" "$repo/units" "$work/host"
printf 'name: lines\nenvironments: [bench]\n' >"$repo/plumb.yaml"
printf 'hosts:\n  - name: local\n    address: 127.0.0.1\n' >"$repo/environments/bench/hosts.yaml"
{
    echo "steps:"
    i=0
    while [ "$i" -lt "$steps" ]; do
        printf '  - id: line-%03d\n    line:\n      path: %s\n      line: "setting_%03d = %d"\n' \
            "$i" "$target" "$i" "$i"
        [ "$i" -eq 0 ] && printf '      create: true\n'
        i=$((i + 1))
    done
} >"$repo/units/lines.yaml"

apply() {
    "$plumb" apply "$repo" --env bench --connection local --output json --color never \
        >"$work/out.json" 2>"$work/err" || {
        cat "$work/err" >&2
        exit 1
    }
}

# Milliseconds of one apply (after `rm` of the file when the first argument is `first`).
timed() {
    [ "$1" = first ] && rm -f "$target"
    s=$(date +%s%N)
    apply
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

first=$(i=0; while [ "$i" -lt "$runs" ]; do timed first; i=$((i + 1)); done | median)
noop=$(i=0; while [ "$i" -lt "$runs" ]; do timed noop; i=$((i + 1)); done | median)
lines=$(wc -l <"$target")
[ "$lines" -eq "$steps" ] || { echo "lines.sh: $lines lines, not $steps" >&2; exit 1; }

# Commands started on the host side during one first apply: wrappers on PATH.
mkdir "$work/bin"
log=$work/commands.log
: >"$log"
IFS=:
for d in $PATH; do
    case $d in /*) ;; *) continue ;; esac
    for f in "$d"/*; do
        n=${f##*/}
        [ -f "$f" ] && [ -x "$f" ] && [ ! -e "$work/bin/$n" ] || continue
        case $n in *\'*) continue ;; esac
        printf "#!/bin/sh\nprintf '%%s\\\\n' '%s' >> '%s'\nexec '%s' \"\$@\"\n" "$n" "$log" "$f" >"$work/bin/$n"
        chmod 0755 "$work/bin/$n"
    done
done
unset IFS
rm -f "$target"
PATH=$work/bin apply
commands=$(wc -l <"$log")
: >"$log"
PATH=$work/bin apply
noop_commands=$(wc -l <"$log")

printf '{"steps": %s, "runs": %s, "first_apply_ms": %s, "noop_ms": %s, "first_apply_commands": %s, "noop_commands": %s, "load": "%s"}\n' \
    "$steps" "$runs" "$first" "$noop" "$commands" "$noop_commands" "$(cut -d' ' -f1-3 /proc/loadavg)"
