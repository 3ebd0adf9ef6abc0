#!/usr/bin/env bash
# rejoin.sh: how fast a node that was down rejoins its groups.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: tools/rejoin.sh [-h] [DOWNTIME_SECONDS...]

Builds ./cmd/flotilla (or uses $BIN), starts a 3-node cluster of
`flotilla start` processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (free ports,
--groups 16, data in a temporary directory that is removed on exit), waits
until `flotilla status -w json` shows every group led, then for each downtime
D (default: 1 4 30 seconds): kill -9 node 3, wait D, restart it with the same
flags and data directory, and measure from the restart

  healthz   the time until node 3's /healthz answers
  led       the time until node 3's own /debug/raft shows a leader for every
            one of its groups
  led-after-healthz   led minus healthz

One line per downtime and round.

Environment:
  BIN     flotilla binary to run instead of building ./cmd/flotilla
          (e.g. one built from another tree, for a before/after comparison)
  ROUNDS  rounds per downtime (default 1)
  RAFT_GROUPS  raft groups (default 16)
  KEEP    set to keep the temporary directory (node logs) on exit

Run from the repository root. Needs curl and jq.
EOF
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	usage
	exit 0
fi
for d in "$@"; do
	if ! [[ $d =~ ^[0-9]+$ ]]; then
		usage >&2
		exit 2
	fi
done
DOWNTIMES=("$@")
if [[ ${#DOWNTIMES[@]} -eq 0 ]]; then
	DOWNTIMES=(1 4 30)
fi
ROUNDS=${ROUNDS:-1}
RAFT_GROUPS=${RAFT_GROUPS:-16}
for tool in curl jq; do
	command -v "$tool" >/dev/null || { echo "rejoin.sh: $tool is required" >&2; exit 2; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/rejoin.XXXXXX")
declare -a PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do
		if [[ -n $pid ]]; then kill -9 "$pid" 2>/dev/null || true; fi
	done
	for pid in "${PIDS[@]}"; do
		if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
	done
	if [[ -n ${KEEP:-} ]]; then
		echo "rejoin.sh: kept $TMP" >&2
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT

if [[ -z ${BIN:-} ]]; then
	BIN=$TMP/flotilla
	go build -o "$BIN" ./cmd/flotilla
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# freeport HOST: a port on which nothing listens at HOST (and that no
# earlier call returned).
declare -A TAKEN=()
freeport() {
	local host=$1 port
	for _ in $(seq 200); do
		port=$((20000 + RANDOM % 40000))
		if [[ -n ${TAKEN[$port]:-} ]]; then continue; fi
		if ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
			TAKEN[$port]=1
			echo "$port"
			return
		fi
	done
	echo "rejoin.sh: no free port on $host" >&2
	exit 1
}

declare -a PEER CLIENT HTTP
for i in 1 2 3; do
	PEER[i]=127.0.0.$i:$(freeport 127.0.0.$i)
	CLIENT[i]=127.0.0.$i:$(freeport 127.0.0.$i)
	HTTP[i]=127.0.0.$i:$(freeport 127.0.0.$i)
done
CLUSTER=1=${PEER[1]},2=${PEER[2]},3=${PEER[3]}
ENDPOINTS=${CLIENT[1]},${CLIENT[2]},${CLIENT[3]}

start_node() {
	local i=$1
	"$BIN" start --id "$i" --data-dir "$TMP/data/$i" --groups "$RAFT_GROUPS" --initial-cluster "$CLUSTER" \
		--peer-addr "${PEER[i]}" --client-addr "${CLIENT[i]}" --http-addr "${HTTP[i]}" --insecure \
		>>"$TMP/node$i.log" 2>&1 &
	PIDS[i]=$!
}

# wait_for SECONDS WHAT CMD...: runs CMD every 20ms until it succeeds; fails
# the script after SECONDS.
wait_for() {
	local limit=$1 what=$2 t0
	shift 2
	t0=$(now)
	until "$@"; do
		if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
			echo "rejoin.sh: $what: not within ${limit}s" >&2
			for i in 1 2 3; do
				echo "--- node $i log (tail)" >&2
				tail -n 20 "$TMP/node$i.log" >&2 || true
			done
			exit 1
		fi
		sleep 0.02
	done
}

cluster_led() {
	"$BIN" status --endpoints "$ENDPOINTS" -w json 2>/dev/null |
		jq -e --argjson n "$RAFT_GROUPS" '(.groups | length) == $n and all(.groups[]; .leader != 0)' >/dev/null
}
healthz() { curl -fsS -m 1 "http://${HTTP[3]}/healthz" >/dev/null 2>&1; }
node3_led() {
	curl -fsS -m 1 "http://${HTTP[3]}/debug/raft" 2>/dev/null |
		jq -e --argjson n "$RAFT_GROUPS" '(.groups | length) == $n and all(.groups[]; .leader != 0)' >/dev/null
}

mkdir -p "$TMP/data"
for i in 1 2 3; do start_node "$i"; done
wait_for 60 "every group led" cluster_led
echo "# binary $BIN, $RAFT_GROUPS groups, nodes ${PEER[*]}"
printf '%-10s %-6s %-10s %-8s %s\n' downtime round healthz led led-after-healthz

for d in "${DOWNTIMES[@]}"; do
	for r in $(seq "$ROUNDS"); do
		wait_for 60 "every group led before the kill" cluster_led
		kill -9 "${PIDS[3]}"
		wait "${PIDS[3]}" 2>/dev/null || true
		PIDS[3]=
		sleep "$d"
		t0=$(now)
		start_node 3
		wait_for 60 "node 3 /healthz" healthz
		h=$(since "$t0")
		wait_for 120 "node 3 knows every leader" node3_led
		l=$(since "$t0")
		printf '%-10s %-6s %-10s %-8s %s\n' "${d}s" "$r" "${h}s" "${l}s" \
			"$(awk -v a="$h" -v b="$l" 'BEGIN { printf "%.2fs", b - a }')"
	done
done
