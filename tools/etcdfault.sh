#!/usr/bin/env bash
# etcd through a frozen member, driven the way tools/faultbench drives
# Flotilla: a 3-member etcd 3.4 on loopback (tools/etcd3.sh), a closed-loop
# put load from tools/etcdbench (the same loop, 64 clients, 256 B values,
# 100,000 keys, requests spread over all members), and SIGSTOP of one member
# for HOLD after BEFORE, then SIGCONT. Prints the per-second throughput
# through the freeze, the errors by kind, and the throughput in the freeze
# against before it (BENCHMARKS.md, "Faults at the client").
#
# Usage: tools/etcdfault.sh [leader|follower] [ROUNDS]      (defaults: leader 1)
#
# Environment overrides (defaults in brackets):
#   CLIENTS [64]  VALUE_SIZE [256]  KEYS [100000]  BEFORE [6]  HOLD [8]
#   AFTER [6] (seconds)  WORKDIR [/tmp/etcdfault]  ETCD3_SH [tools/etcd3.sh]
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "etcdfault: $*" >&2; exit 1; }

case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 2 )) || { usage >&2; exit 2; }
WHO=${1:-leader}
ROUNDS=${2:-1}
[[ $WHO == leader || $WHO == follower ]] || die "first argument: leader or follower, not $WHO"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=${VALUE_SIZE:-256}
KEYS=${KEYS:-100000}
BEFORE=${BEFORE:-6}
HOLD=${HOLD:-8}
AFTER=${AFTER:-6}
WORKDIR=${WORKDIR:-/tmp/etcdfault}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ETCD3_SH=${ETCD3_SH:-$SCRIPT_DIR/etcd3.sh}
for v in CLIENTS KEYS BEFORE HOLD AFTER; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done
for c in go python3; do
  command -v "$c" >/dev/null || die "$c is required but not on PATH"
done
[[ -x $ETCD3_SH ]] || die "etcd3.sh not found or not executable at $ETCD3_SH"

mkdir -p "$WORKDIR"
BENCH=$WORKDIR/etcdbench
(cd "$SCRIPT_DIR/etcdbench" && go build -o "$BENCH" .) || die "building tools/etcdbench failed"
EPS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793

cleanup() { "$ETCD3_SH" stop "$WORKDIR/etcd" >/dev/null 2>&1 || true; }
trap cleanup EXIT

for round in $(seq "$ROUNDS"); do
  "$ETCD3_SH" start "$WORKDIR/etcd" >&2
  # The leader's member ID, then which member (1..3) to freeze.
  status=$(ETCDCTL_API=3 etcdctl --endpoints=$EPS endpoint status -w json)
  victim=$(python3 - "$WHO" "$status" <<'PY'
import json, sys
who, st = sys.argv[1], json.loads(sys.argv[2])
leader = st[0]["Status"]["leader"]
for s in st:
    me = s["Status"]["header"]["member_id"]
    n = int(s["Endpoint"].rsplit(":", 1)[1]) - 23790
    if (me == leader) == (who == "leader"):
        print(n)
        break
PY
)
  pid=$(cat "$WORKDIR/etcd/e$victim.pid")
  "$BENCH" --endpoints $EPS --clients "$CLIENTS" --conns 3 --value-size "$VALUE_SIZE" --keys "$KEYS" \
    --duration "$((BEFORE + HOLD + AFTER))s" -w json >"$WORKDIR/round.json" 2>/dev/null &
  bench=$!
  sleep "$BEFORE"
  kill -STOP "$pid"
  sleep "$HOLD"
  kill -CONT "$pid"
  wait "$bench" || die "etcdbench failed"
  python3 - "$WORKDIR/round.json" "$WHO" "$victim" "$BEFORE" "$HOLD" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
who, victim, before, hold = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ps = r["per_second"]
healthy = [s["ops"] for s in ps if 1 < s["t"] <= before]
frozen = [s["ops"] for s in ps if before < s["t"] <= before + hold]
h = sum(healthy) / len(healthy)
f = sum(frozen) / len(frozen)
print(json.dumps({"system": "etcd 3.4", "frozen": who, "member": int(victim),
                  "per_second": [s["ops"] for s in ps], "errors": r["errors"], "errors_by_kind": r["errors_by_kind"],
                  "healthy_ops_per_sec": round(h), "fault_ops_per_sec": round(f), "ratio": round(f / h, 3)}))
PY
  "$ETCD3_SH" stop "$WORKDIR/etcd" >&2
done
