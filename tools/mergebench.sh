#!/usr/bin/env bash
# Merges once a hot cluster cools, measured (BENCHMARKS.md, "Merging
# neighbours on different nodes"): for ROUNDS rounds, and in each for every
# git revision of REVS in turn (alternating builds), it starts 5 local nodes
# with --initial-cluster, --groups 1, --replicas 3, --range-split-load
# SPLIT_LOAD and --rebalance-interval 500ms, runs `flotilla bench put` for
# HOT seconds (the range splits by load, and the rebalancer spreads the new
# ranges over the 5 nodes, on different sets of 3), then stops the load and
# lists the ranges (`flotilla ranges -w json`) every 5 s for COOL seconds.
# The merge queue merges neighbours that are small and cold. It reports per
# round and revision: the bench's throughput and errors, the ranges when the
# load stopped and at the end, how many of the neighbouring pairs at the end
# are on different nodes, and the time of the last change of the range
# count.
#
# Usage: tools/mergebench.sh [ROUNDS]      (default 2)
#
# Environment overrides (defaults in brackets):
#   REVS [HEAD]  git revisions to build and alternate, e.g. "4cbc21c HEAD"
#   HOT [30]  COOL [120]  seconds
#   SPLIT_LOAD [300]  CLIENTS [64]  VALUE_SIZE [256]  KEYS [100000]
#   WORKDIR [/tmp/mergebench]
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "mergebench: $*" >&2; exit 1; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 1 )) || { usage >&2; exit 2; }

ROUNDS=${1:-2}
read -r -a REVS <<< "${REVS:-HEAD}"
HOT=${HOT:-30}
COOL=${COOL:-120}
SPLIT_LOAD=${SPLIT_LOAD:-300}
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=${VALUE_SIZE:-256}
KEYS=${KEYS:-100000}
WORKDIR=${WORKDIR:-/tmp/mergebench}
for v in ROUNDS HOT COOL CLIENTS KEYS VALUE_SIZE SPLIT_LOAD; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done
((${#REVS[@]})) || die "REVS is empty"
for c in go git curl python3; do command -v "$c" >/dev/null || die "$c is required but not on PATH"; done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
NODES=5
EPS=$(for i in $(seq 1 $NODES); do printf '127.0.0.%d:47379,' "$i"; done)
EPS=${EPS%,}
CLUSTER=$(for i in $(seq 1 $NODES); do printf '%d=127.0.0.%d:47380,' "$i" "$i"; done)
CLUSTER=${CLUSTER%,}
# shellcheck source=tools/lib.sh
source "$SCRIPT_DIR/lib.sh"
stop() { stop_nodes; }
trap 'stop' EXIT

mkdir -p "$WORKDIR"
# One binary per revision, built from that revision's tree.
declare -A BIN
for rev in "${REVS[@]}"; do
  sha=$(git -C "$REPO" rev-parse --short "$rev") || die "$rev: not a revision"
  src=$WORKDIR/src-$sha
  if [[ ! -x $WORKDIR/flotilla-$sha ]]; then
    echo "mergebench: building $rev ($sha)" >&2
    rm -rf "$src"; mkdir -p "$src"
    git -C "$REPO" archive "$sha" | tar -x -C "$src"
    (cd "$src" && go build -o "$WORKDIR/flotilla-$sha" ./cmd/flotilla) || die "$rev: build failed"
  fi
  BIN[$rev]=$WORKDIR/flotilla-$sha
done

# run REV TAG: one cluster, hot then cool; leaves $WORKDIR/TAG.*.
run() {
  local rev=$1 tag=$2 bin=${BIN[$1]} d=$WORKDIR/$2 i ok t
  rm -rf "$d"; mkdir -p "$d"
  for i in $(seq 1 $NODES); do
    "$bin" start --id "$i" --data-dir "$d/n$i" --groups 1 --replicas 3 --initial-cluster "$CLUSTER" \
      --peer-addr "127.0.0.$i:47380" --client-addr "127.0.0.$i:47379" --http-addr "127.0.0.$i:47381" \
      --range-split-load "$SPLIT_LOAD" --rebalance-interval 500ms --insecure > "$d/n$i.log" 2>&1 &
    PIDS+=($!)
  done
  for ((t = 0; t < 120; t++)); do
    ok=0
    for i in $(seq 1 $NODES); do curl -sf -o /dev/null --max-time 1 "http://127.0.0.$i:47381/readyz" && ok=$((ok + 1)); done
    ((ok == NODES)) && break
    sleep 0.5
  done
  ((ok == NODES)) || die "$tag: the cluster did not become ready (logs in $d)"
  echo "mergebench: $tag ($rev): bench put for ${HOT}s" >&2
  "$bin" bench put --endpoints "$EPS" --clients "$CLIENTS" --duration "${HOT}s" --value-size "$VALUE_SIZE" \
    --keys "$KEYS" -w json 2>/dev/null > "$d/bench.json" || die "$tag: bench failed"
  echo "mergebench: $tag: cooling for ${COOL}s" >&2
  for ((t = 0; t <= COOL; t += 5)); do
    "$bin" ranges --endpoints "$EPS" -w json > "$d/ranges.$t.json" 2>/dev/null || echo '{}' > "$d/ranges.$t.json"
    ((t < COOL)) && sleep 5
  done
  stop
  python3 - "$d" "$COOL" "$tag" "$rev" <<'PY'
import json, sys
d, cool, tag, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
bench = json.load(open(f"{d}/bench.json"))
counts = []
for t in range(0, cool + 1, 5):
    try:
        rs = json.load(open(f"{d}/ranges.{t}.json"))["ranges"]
    except Exception:
        rs = None
    counts.append((t, rs))
known = [(t, rs) for t, rs in counts if rs is not None]
if not known:
    print(f"{tag} {rev}: no range listing answered")
    sys.exit(0)
first, last = known[0][1], known[-1][1]
apart = sum(1 for a, b in zip(last, last[1:]) if sorted(a["replicas"]) != sorted(b["replicas"]))
last_change = 0
for (t0, a), (t1, b) in zip(known, known[1:]):
    if len(a) != len(b):
        last_change = t1
print(f"{tag} {rev}: bench {bench['ops_per_sec']:.0f} ops/s, {bench['errors']} errors | "
      f"ranges when the load stopped {len(first)}, after {known[-1][0]} s cool {len(last)} "
      f"({apart} of {max(len(last) - 1, 0)} neighbouring pairs on different nodes), last count change at {last_change} s")
print("  ranges every 5 s:", " ".join(str(len(rs)) if rs is not None else "?" for _, rs in counts))
PY
}

for ((r = 1; r <= ROUNDS; r++)); do
  for rev in "${REVS[@]}"; do
    run "$rev" "r$r-$(git -C "$REPO" rev-parse --short "$rev")"
  done
done
