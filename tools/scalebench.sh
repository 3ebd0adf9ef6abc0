#!/usr/bin/env bash
# More nodes, same replication factor, measured (BENCHMARKS.md, "More
# nodes, the same replication factor"): for ROUNDS alternating rounds, each on fresh clusters and data
# directories, it runs `flotilla bench put` for DURATION against 3 local
# nodes started with --replicas 3, then against 5 started with --replicas 3
# (the same workload, the same number of ranges), and reports for each
# cluster its throughput and errors, and per node the bytes of its data
# directory after the run, its replicas and the leaders it holds.
#
# All nodes share this machine, so 5 nodes do not add CPU here: what the
# comparison shows is the cost per node (each holds 3/5 of the replicas)
# and how the ranges and their leaders spread, not the speedup of more
# machines.
#
# Usage: tools/scalebench.sh [ROUNDS] [DURATION]      (defaults: 3 20s)
#
# Environment overrides (defaults in brackets):
#   RANGES [60]  CLIENTS [64]  VALUE_SIZE [256]  KEYS [100000]
#   WORKDIR [/tmp/scalebench]
#   NODE_CPU [""]  a CPU quota per node, in CPUs (e.g. 0.2), as if each
#                node were its own machine (tools/lib.sh, cap_init; needs
#                root): then 5 nodes do add CPU
#   START_FLAGS [""]  more `flotilla start` flags for every node
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "scalebench: $*" >&2; exit 1; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 2 )) || { usage >&2; exit 2; }

ROUNDS=${1:-3}
DURATION=${2:-20s}
RANGES=${RANGES:-60}
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=${VALUE_SIZE:-256}
KEYS=${KEYS:-100000}
WORKDIR=${WORKDIR:-/tmp/scalebench}
for v in ROUNDS RANGES CLIENTS KEYS VALUE_SIZE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done
for c in go curl python3 du; do command -v "$c" >/dev/null || die "$c is required but not on PATH"; done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$WORKDIR/flotilla
# shellcheck source=tools/lib.sh
source "$SCRIPT_DIR/lib.sh"
stop() { stop_nodes; }
trap 'stop; uncap' EXIT
cap_init scalebench
read -r -a EXTRA <<< "${START_FLAGS:-}"

mkdir -p "$WORKDIR"
echo "scalebench: building flotilla" >&2
(cd "$REPO" && go build -o "$BIN" ./cmd/flotilla)

# gauge NODE NAME: the value of gauge NAME (with its labels) on node NODE.
gauge() {
  curl -sf --max-time 5 "http://127.0.0.$1:50381/metrics" | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }' ||
    die "node $1: no /metrics"
}

# run NODES TAG: one cluster of NODES nodes, one bench; leaves
# $WORKDIR/TAG.json (the bench) and $WORKDIR/TAG.nodes (one line per node:
# id bytes replicas leaders).
run() {
  local n=$1 tag=$2 d=$WORKDIR/$2 i ok cluster="" eps=""
  rm -rf "$d"; mkdir -p "$d"
  for ((i = 1; i <= n; i++)); do
    cluster+="${cluster:+,}$i=127.0.0.$i:50380"
    eps+="${eps:+,}127.0.0.$i:50379"
  done
  for ((i = 1; i <= n; i++)); do
    launch $i "$d/n$i.log" "$BIN" start --id $i --data-dir "$d/n$i" --groups "$RANGES" --replicas 3 --initial-cluster "$cluster" \
      --peer-addr 127.0.0.$i:50380 --client-addr 127.0.0.$i:50379 --http-addr 127.0.0.$i:50381 \
      --insecure ${EXTRA[@]+"${EXTRA[@]}"}
  done
  for ((t = 0; t < 120; t++)); do
    ok=0
    for ((i = 1; i <= n; i++)); do curl -sf -o /dev/null --max-time 1 http://127.0.0.$i:50381/readyz && ok=$((ok + 1)); done
    ((ok == n)) && break
    sleep 0.5
  done
  ((ok == n)) || die "$tag: the cluster did not become ready (logs in $d)"
  echo "scalebench: $tag: bench put for $DURATION" >&2
  "$BIN" bench put --endpoints "$eps" --clients "$CLIENTS" --duration "$DURATION" --value-size "$VALUE_SIZE" \
    --keys "$KEYS" -w json 2>/dev/null > "$WORKDIR/$tag.json" || die "$tag: bench failed"
  local f l held=()
  for ((i = 1; i <= n; i++)); do
    f=$(gauge $i 'flotilla_raft_groups{role="follower"}'); l=$(gauge $i 'flotilla_raft_groups{role="leader"}')
    held+=("$(( ${f%.*} + ${l%.*} )) ${l%.*}")
  done
  stop # then the sizes: a stopped node compacts and flushes no more
  : > "$WORKDIR/$tag.nodes"
  for ((i = 1; i <= n; i++)); do
    echo "$i $(du -sb "$d/n$i" | cut -f1) ${held[i-1]}" >> "$WORKDIR/$tag.nodes"
  done
}

for ((r = 1; r <= ROUNDS; r++)); do
  run 3 "r$r-3"
  run 5 "r$r-5"
  python3 - "$WORKDIR" "$r" <<'PY'
import json, os, sys
w, r = sys.argv[1], sys.argv[2]
out = {"round": int(r), "node_cpu": os.environ.get("NODE_CPU") or None}
for n in (3, 5):
    b = json.load(open(f"{w}/r{r}-{n}.json"))
    nodes = [list(map(int, l.split())) for l in open(f"{w}/r{r}-{n}.nodes")]
    out[f"nodes{n}"] = {
        "ops_per_sec": round(b["ops_per_sec"]), "errors": b["errors"],
        "mib_per_node": [round(x[1] / 2**20, 1) for x in nodes],
        "replicas_per_node": [x[2] for x in nodes],
        "leaders_per_node": [x[3] for x in nodes],
    }
print(json.dumps(out))
PY
done
