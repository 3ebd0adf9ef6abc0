#!/usr/bin/env bash
# Load-based splitting, measured: how fast a cluster started with one range
# spreads a uniform put workload over new ranges (BENCHMARKS.md, "Splitting
# by load"). For ROUNDS alternating rounds, each on fresh clusters and data
# directories, it runs `flotilla bench put` for DURATION against 3 local nodes
# started with --groups 16, then against 3 started with --groups 1, and
# reports, for the one-range cluster, its throughput in each second and the
# first second from which it stays (three seconds in a row) at or above 90% of
# the median per-second throughput of the 16-range cluster in the same round.
#
# Usage: tools/splitbench.sh [ROUNDS] [DURATION]      (defaults: 3 30s)
#
# Environment overrides (defaults in brackets):
#   CLIENTS [256]  VALUE_SIZE [256]  KEYS [100000]  SPLIT_LOAD [2500]
#   WORKDIR [/tmp/splitbench]
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "splitbench: $*" >&2; exit 1; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 2 )) || { usage >&2; exit 2; }

ROUNDS=${1:-3}
DURATION=${2:-30s}
CLIENTS=${CLIENTS:-256}
VALUE_SIZE=${VALUE_SIZE:-256}
KEYS=${KEYS:-100000}
SPLIT_LOAD=${SPLIT_LOAD:-2500}
WORKDIR=${WORKDIR:-/tmp/splitbench}
for v in ROUNDS CLIENTS KEYS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done
for c in go curl python3; do command -v "$c" >/dev/null || die "$c is required but not on PATH"; done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$WORKDIR/flotilla
EPS=127.0.0.1:48379,127.0.0.2:48379,127.0.0.3:48379
CLUSTER=1=127.0.0.1:48380,2=127.0.0.2:48380,3=127.0.0.3:48380
# shellcheck source=tools/lib.sh
source "$SCRIPT_DIR/lib.sh"
stop() { stop_nodes; }
trap 'stop' EXIT

mkdir -p "$WORKDIR"
echo "splitbench: building flotilla" >&2
(cd "$REPO" && go build -o "$BIN" ./cmd/flotilla)

# run GROUPS TAG: one cluster, one bench; leaves $WORKDIR/TAG.json.
run() {
  local groups=$1 tag=$2 d=$WORKDIR/$2 i ok
  rm -rf "$d"; mkdir -p "$d"
  for i in 1 2 3; do
    "$BIN" start --id $i --data-dir "$d/n$i" --groups "$groups" --initial-cluster $CLUSTER \
      --peer-addr 127.0.0.$i:48380 --client-addr 127.0.0.$i:48379 --http-addr 127.0.0.$i:48381 \
      --range-split-load "$SPLIT_LOAD" --insecure > "$d/n$i.log" 2>&1 &
    PIDS+=($!)
  done
  for ((t = 0; t < 120; t++)); do
    ok=0
    for i in 1 2 3; do curl -sf -o /dev/null --max-time 1 http://127.0.0.$i:48381/readyz && ok=$((ok + 1)); done
    ((ok == 3)) && break
    sleep 0.5
  done
  ((ok == 3)) || die "$tag: the cluster did not become ready (logs in $d)"
  echo "splitbench: $tag: bench put for $DURATION" >&2
  "$BIN" bench put --endpoints $EPS --clients "$CLIENTS" --duration "$DURATION" --value-size "$VALUE_SIZE" \
    --keys "$KEYS" -w json 2>/dev/null > "$WORKDIR/$tag.json" || die "$tag: bench failed"
  "$BIN" ranges --endpoints $EPS -w json > "$WORKDIR/$tag.ranges.json" 2>/dev/null || true
  stop
}

for ((r = 1; r <= ROUNDS; r++)); do
  run 16 "r$r-16"
  run 1 "r$r-1"
  python3 - "$WORKDIR" "$r" <<'PY'
import json, statistics, sys
w, r = sys.argv[1], sys.argv[2]
many = json.load(open(f"{w}/r{r}-16.json"))
one = json.load(open(f"{w}/r{r}-1.json"))
base = statistics.median(p["ops"] for p in many["per_second"])
series = [p["ops"] for p in one["per_second"]]
reach = None
for i in range(len(series) - 2):
    if all(x >= 0.9 * base for x in series[i:i + 3]):
        reach = i + 1
        break
try:
    nranges = len(json.load(open(f"{w}/r{r}-1.ranges.json"))["ranges"])
except Exception:
    nranges = "?"
print(f"round {r}: 16 ranges: median {base:.0f} ops/s, {many['errors']} errors | "
      f"1 range: {one['ops_per_sec']:.0f} ops/s overall, {one['errors']} errors, {nranges} ranges at the end, "
      f"90% of the 16-range median from second {reach}")
print("  1-range per second:", " ".join(str(x) for x in series))
PY
done
