#!/usr/bin/env bash
# Runs every fuzz target of the module (each FuzzXxx of any package's tests:
# the decoders of what a node reads from the network or its disk) with
# `go test -fuzz` for FUZZTIME, one target at a time, and stops at the first
# that fails. go test saves the failing input under the package's
# testdata/fuzz/FuzzXxx/; fix the bug and commit the input there, so that
# every plain `go test` runs it from then on. CI runs this with a short
# FUZZTIME (.ci/run); run it longer by hand to search further.
#
# Usage: tools/fuzz.sh [FUZZTIME]      (default: 10s; any go test -fuzztime)
#
# Environment overrides (defaults in brackets):
#   PARALLEL [2]  fuzzing processes per target (go test -parallel)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "fuzz: $*" >&2; exit 1; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 1 )) || { usage >&2; exit 2; }

FUZZTIME=${1:-10s}
PARALLEL=${PARALLEL:-2}
cd "$(dirname "$0")/.."

# go test -list names the targets; it is asked only about the packages
# whose tests mention one, so that it builds a few test binaries, not all.
mapfile -t dirs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u)
(( ${#dirs[@]} > 0 )) || die "no fuzz targets found"
# -list prints a package's matching names, then "ok <package> <time>".
mapfile -t targets < <(go test -list '^Fuzz' "${dirs[@]}" |
	awk '/^Fuzz/ { names[n++] = $1; next } /^ok/ { for (i = 0; i < n; i++) print $2, names[i]; n = 0 }')
(( ${#targets[@]} > 0 )) || die "go test -list found no fuzz targets in ${dirs[*]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
for i in "${!targets[@]}"; do
	pkg=${targets[$i]% *}
	name=${targets[$i]#* }
	echo "fuzz: [$((i + 1))/${#targets[@]}] $name ($pkg) for $FUZZTIME"
	status=0
	go test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" -parallel "$PARALLEL" "$pkg" 2>&1 | tee "$log" || status=$?
	(( status == 0 )) && continue
	# Go's fuzzing coordinator (up to 1.26) may fail a target whose time
	# ran out while a worker was busy, with nothing but "context deadline
	# exceeded" and no failing input (go.dev/issue/75804): not a failure
	# of the target. Anything else is.
	if grep -q '^    context deadline exceeded$' "$log" && ! grep -q -e 'Failing input written' -e '^    --- FAIL' -e 'panic' "$log"; then
		echo "fuzz: $name: Go's fuzztime deadline race (go.dev/issue/75804), no failing input; counted as passed"
		continue
	fi
	die "$name ($pkg) failed; a failing input found is in the package's testdata/fuzz/$name/"
done
echo "fuzz: ${#targets[@]} targets passed, $FUZZTIME each, in $((SECONDS - start))s"
