#!/usr/bin/env bash
# Runs every fuzz target of the module (each FuzzXxx of any package's tests:
# the decoders of what a node reads from the network or its disk) under Go's
# fuzzer for FUZZTIME, one target at a time, and stops at the first that
# fails. The fuzzer saves a failing input under the package's
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cache=$(go env GOCACHE)/fuzz

# The packages whose tests define a target. Each is built once, with the
# fuzzer's instrumentation (go test -c -fuzz), and its test binary lists
# its targets (as go test -list '^Fuzz' would) and runs them: go test
# -fuzz would link the binary again for every target.
mapfile -t dirs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u)
(( ${#dirs[@]} > 0 )) || die "no fuzz targets found"
targets=()
for dir in "${dirs[@]}"; do
	bin=$work/$(echo "${dir#./}" | tr / _).test
	go test -c -fuzz=. -o "$bin" "$dir"
	pkg=$(go list -f '{{.ImportPath}}' "$dir")
	for name in $("$bin" -test.list '^Fuzz'); do
		targets+=("$dir $pkg $name")
	done
done
(( ${#targets[@]} > 0 )) || die "no fuzz targets listed in ${dirs[*]}"

log=$work/log
start=$SECONDS
for i in "${!targets[@]}"; do
	read -r dir pkg name <<<"${targets[$i]}"
	bin=$work/$(echo "${dir#./}" | tr / _).test
	echo "fuzz: [$((i + 1))/${#targets[@]}] $name ($dir) for $FUZZTIME"
	status=0
	# From the package's directory, where its testdata is; with go test's
	# cache of interesting inputs.
	(cd "$dir" && "$bin" -test.run='^$' -test.fuzz="^$name\$" -test.fuzztime="$FUZZTIME" \
		-test.parallel="$PARALLEL" -test.paniconexit0 \
		-test.fuzzcachedir="$cache/$pkg") 2>&1 | tee "$log" || status=$?
	(( status == 0 )) && continue
	# Go's fuzzing coordinator (up to 1.26) may fail a target whose time
	# ran out while a worker was busy, with nothing but "context deadline
	# exceeded" and no failing input (go.dev/issue/75804): not a failure
	# of the target. Anything else is.
	if grep -q '^    context deadline exceeded$' "$log" && ! grep -q -e 'Failing input written' -e '^    --- FAIL' -e 'panic' "$log"; then
		echo "fuzz: $name: Go's fuzztime deadline race (go.dev/issue/75804), no failing input; counted as passed"
		continue
	fi
	die "$name ($dir) failed; a failing input found is in $dir/testdata/fuzz/$name/"
done
echo "fuzz: ${#targets[@]} targets passed, $FUZZTIME each, in $((SECONDS - start))s"
