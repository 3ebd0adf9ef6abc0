#!/usr/bin/env bash
# A node drained, decommissioned, or killed for good, under load, measured
# (BENCHMARKS.md, "Draining a node under load", "Decommissioning a node"
# and "A node killed for good"): for ROUNDS
# rounds, each on a fresh cluster of 4 local nodes started with
# --replicas 3 (every range on 3 of the 4), it writes with one `flotilla
# bench put` for the whole round (ended by SIGINT; its per_second counts are
# the round's seconds), and after WARM seconds of it:
#   MODE=drain  runs `flotilla node drain 4`, which moves every replica
#               off node 4 onto the other three;
#   MODE=decommission  runs `flotilla node decommission 4`: the leaders of
#               node 4's ranges move its replicas off, then it is removed
#               (and exits);
#   MODE=rebalance  before the bench, drains node 4 (and clears its drain
#               mark) and restarts every node with --rebalance-interval 1s
#               (--balance-settle 20s);
#               then waits until the rebalancer evened the replica counts
#               out (within 1): an empty node filled, as after a node
#               joins;
#   MODE=grow   starts 3 nodes only (with --rebalance-interval
#               REBALANCE_INTERVAL),
#               then starts nodes 4 and 5 with --join, and waits until
#               the replica and leader counts of the 5 nodes are all
#               within 20% of their means (RANGES 50 makes that
#               reachable: 30 replicas and 10 leaders per node);
#   MODE=kill   kills node 4 (SIGKILL) and waits until no range lists it
#               and every range has 3 replicas again: the nodes up-
#               replicate once node 4 has been down for --dead-after
#               (DEAD_AFTER).
# It reports per round: the throughput of each second before (its median
# is the baseline) and during the drain or the wait, the lowest second
# against the baseline, how long the drain or the wait took (from the
# kill), the bench errors, the replicas left on node 4 (from `flotilla
# ranges -w json`: must be 0), and the bytes each node holds at the end
# (the sum of its ranges' sizes, from the same) with the widest gap from
# their mean; each node's store figures at the end (write stalls and their
# seconds, compactions, their paced pauses' seconds, L0 sublevels, from
# flotilla_storage_* in its /metrics); with MODE=rebalance or grow, the
# rebalancer's moves (of counts and of bytes) and when it made its last
# (last_rebalancing_move, from the joins or the restart).
#
# Usage: tools/drainbench.sh [ROUNDS]      (default 3)
#
# Environment overrides (defaults in brackets):
#   MODE [drain]  DEAD_AFTER [30s]  RANGES [16]  CLIENTS [32]
#   VALUE_SIZE [256]  KEYS [100000]  WARM [8]  WORKDIR [/tmp/drainbench]
#   PRELOAD [0]  seconds of `bench put` of 4 KiB values over 200,000 keys
#                before the measured runs, so that the ranges (and their
#                snapshots) are large
#   PRELOAD_PREFIX [""]  the preload's --key-prefix: with one (e.g. "3"),
#                it fills only the ranges under it (which split by size),
#                and leaves the others small: ranges of uneven sizes, for
#                the rebalancer to even out the bytes of
#   AFTER [3; 20 with MODE=grow]  seconds of the bench after the drain
#                or the wait: their median is reported as the throughput
#                after (with grow, that of the 5 nodes on this machine)
#   START_FLAGS [""]  more `flotilla start` flags for every node (e.g.
#                "--snapshot-rate 0")
#   REBALANCE_INTERVAL [500ms]  MODE=grow's --rebalance-interval on every
#                node: the rebalancer makes one move a pass and waits for
#                it, and its passes come at most this often, so a longer
#                one spaces the moves out
#   NODE_CPU [""]  a CPU quota per node, in CPUs (e.g. 0.3), as if each
#                node were its own machine (tools/lib.sh, cap_init; needs
#                root). Without it, every node shares this machine's CPUs,
#                and a node that joins takes CPU from the others instead of
#                adding its own (MODE=grow).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "drainbench: $*" >&2; exit 1; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 1 )) || { usage >&2; exit 2; }

ROUNDS=${1:-3}
MODE=${MODE:-drain}
DEAD_AFTER=${DEAD_AFTER:-30s}
RANGES=${RANGES:-16}
CLIENTS=${CLIENTS:-32}
VALUE_SIZE=${VALUE_SIZE:-256}
KEYS=${KEYS:-100000}
WARM=${WARM:-8}
PRELOAD=${PRELOAD:-0}
PRELOAD_PREFIX=${PRELOAD_PREFIX:-}
DEFAULT_AFTER=3
[[ $MODE == grow ]] && DEFAULT_AFTER=20
AFTER=${AFTER:-$DEFAULT_AFTER}
REBALANCE_INTERVAL=${REBALANCE_INTERVAL:-500ms}
read -r -a EXTRA <<< "${START_FLAGS:-}"
WORKDIR=${WORKDIR:-/tmp/drainbench}
[[ $PRELOAD =~ ^[0-9]+$ ]] || die "PRELOAD=$PRELOAD: want a number of seconds"
for v in ROUNDS RANGES CLIENTS KEYS VALUE_SIZE WARM; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done
[[ $MODE == drain || $MODE == kill || $MODE == decommission || $MODE == rebalance || $MODE == grow ]] ||
  die "MODE=$MODE: want drain, decommission, kill, rebalance or grow"
DEADFLAG=()
[[ $MODE == kill ]] && DEADFLAG=(--dead-after "$DEAD_AFTER")
for c in go curl python3; do command -v "$c" >/dev/null || die "$c is required but not on PATH"; done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$WORKDIR/flotilla
BENCH=""

# shellcheck source=tools/lib.sh
source "$SCRIPT_DIR/lib.sh"
stop() {
  [[ -n $BENCH ]] && { kill "$BENCH" 2>/dev/null || true; wait "$BENCH" 2>/dev/null || true; BENCH=""; }
  stop_nodes
}
trap 'stop; uncap' EXIT
cap_init drainbench

mkdir -p "$WORKDIR"
echo "drainbench: building flotilla" >&2
(cd "$REPO" && go build -o "$BIN" ./cmd/flotilla)

# N nodes started with --initial-cluster; with MODE=grow, JOINED more
# with --join.
N=4 JOINED=0
[[ $MODE == grow ]] && N=3 JOINED=2
CLUSTER="" EPS="" LIVE=""
for ((i = 1; i <= N; i++)); do
  CLUSTER+="${CLUSTER:+,}$i=127.0.0.$i:51380"
  EPS+="${EPS:+,}127.0.0.$i:51379"
  { ((i < N)) || [[ $MODE == grow ]]; } && LIVE+="${LIVE:+,}127.0.0.$i:51379"
done

# healed: no range lists node 4, and every range has 3 replicas.
healed() {
  "$BIN" ranges -w json --stats=false --endpoints "$LIVE" --timeout 5s 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["ranges"]
sys.exit(0 if rs and all(4 not in r["replicas"] and len(r["replicas"]) == 3 for r in rs) else 1)'
}

# bench_start OUT: one bench for the round (its JSON report to OUT, its
# progress to OUT.err), ended by bench_stop. Why one: a new process each
# second (as this did first) connected and found the leaders again each
# second, and left the cluster idle between runs: every second measured a
# cold client as well as the cluster.
bench_start() {
  "$BIN" bench put --endpoints "$LIVE" --clients "$CLIENTS" --duration 24h --value-size "$VALUE_SIZE" \
    --keys "$KEYS" -w json > "$1" 2> "$1.err" &
  BENCH=$!
  local end=$((SECONDS + 60))
  until grep -q "ops/s" "$1.err" 2>/dev/null; do
    kill -0 "$BENCH" 2>/dev/null && ((SECONDS < end)) || die "round $r: the bench did not start: $(cat "$1.err")"
    sleep 0.2
  done
}

# bench_stop: ends the bench (SIGINT: it reports the time it ran) and
# records when in $BENCH_END.
bench_stop() {
  BENCH_END=$(date +%s.%N)
  kill -INT "$BENCH" 2>/dev/null || true
  wait "$BENCH" || die "round $r: the bench failed: $(cat "$d/bench.json.err")"
  BENCH=""
}

# start_nodes DIR [FLAG...]: starts the N nodes on DIR's data (logs
# appended) with the extra flags, and waits until they are ready.
start_nodes() {
  local d=$1; shift
  for ((i = 1; i <= N; i++)); do
    launch $i "$d/n$i.log" "$BIN" start --id $i --data-dir "$d/n$i" --groups "$RANGES" --replicas 3 ${DEADFLAG[@]+"${DEADFLAG[@]}"} --initial-cluster "$CLUSTER" \
      --peer-addr 127.0.0.$i:51380 --client-addr 127.0.0.$i:51379 --http-addr 127.0.0.$i:51381 \
      --insecure ${EXTRA[@]+"${EXTRA[@]}"} "$@"
  done
  for ((t = 0; t < 120; t++)); do
    ok=0
    for ((i = 1; i <= N; i++)); do curl -sf -o /dev/null --max-time 1 http://127.0.0.$i:51381/readyz && ok=$((ok + 1)); done
    ((ok == N)) && break
    sleep 0.5
  done
  ((ok == N)) || die "round $r: the cluster did not become ready (logs in $d)"
}

# join_nodes DIR: starts the JOINED nodes with --join (IDs N+1...).
join_nodes() {
  local d=$1
  for ((i = N + 1; i <= N + JOINED; i++)); do
    launch $i "$d/n$i.log" "$BIN" start --id $i --data-dir "$d/n$i" --join 127.0.0.1:51380,127.0.0.2:51380 \
      --peer-addr 127.0.0.$i:51380 --client-addr 127.0.0.$i:51379 --http-addr 127.0.0.$i:51381 \
      --insecure --rebalance-interval "$REBALANCE_INTERVAL" ${EXTRA[@]+"${EXTRA[@]}"}
  done
}

# grown: every range has 3 replicas and no learner, and each of the N +
# JOINED nodes holds a replica count and a leader count within 20% of
# their means.
grown() {
  "$BIN" ranges -w json --stats=false --endpoints "$EPS" --timeout 5s 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["ranges"]
n = '"$((N + JOINED))"'
c = {i: 0 for i in range(1, n + 1)}
l = {i: 0 for i in range(1, n + 1)}
for r in rs:
    for x in r["replicas"]:
        c[x] += 1
    if r.get("leader"):
        l[r["leader"]] += 1
def even(m):
    mean = sum(m.values()) / len(m)
    return all(abs(v - mean) <= 0.2 * mean for v in m.values())
sys.exit(0 if rs and all(len(r["replicas"]) == 3 and not r.get("learners") for r in rs) and even(c) and even(l) else 1)'
}

# wait_until CHECK: runs CHECK every second until it succeeds (then
# returns 0), for 600 s at most.
wait_until() {
  local end=$((SECONDS + 600))
  while ((SECONDS < end)); do "$1" && return 0; sleep 1; done
  return 1
}

# balanced: every range has 3 replicas and no learner, and the nodes'
# replica counts differ by at most 1.
balanced() {
  "$BIN" ranges -w json --stats=false --endpoints "$EPS" --timeout 5s 2>/dev/null | python3 -c '
import json, sys
rs = json.load(sys.stdin)["ranges"]
c = {n: 0 for n in range(1, '"$N"' + 1)}
for r in rs:
    for n in r["replicas"]:
        c[n] += 1
sys.exit(0 if rs and all(len(r["replicas"]) == 3 and not r.get("learners") for r in rs) and max(c.values()) - min(c.values()) <= 1 else 1)'
}

for ((r = 1; r <= ROUNDS; r++)); do
  d=$WORKDIR/r$r
  rm -rf "$d"; mkdir -p "$d"
  if [[ $MODE == grow ]]; then start_nodes "$d" --rebalance-interval "$REBALANCE_INTERVAL"; else start_nodes "$d"; fi
  if [[ $MODE == rebalance ]]; then
    # Node 4 emptied, then every node restarted with the rebalancer on
    # (settling for 20 s, so that the bench's warm-up comes first).
    "$BIN" node drain 4 --endpoints "$EPS" > "$d/emptied.out" 2>&1 || die "round $r: drain failed: $(cat "$d/emptied.out")"
    "$BIN" node undrain 4 --endpoints "$EPS" >> "$d/emptied.out" 2>&1 || die "round $r: undrain failed: $(cat "$d/emptied.out")"
    stop
    start_nodes "$d" --rebalance-interval 1s --balance-settle 20s
  fi
  echo "drainbench: round $r: bench put; $MODE of node 4 after $WARM s of it" >&2
  if ((PRELOAD > 0)); then
    "$BIN" bench put --endpoints "$LIVE" --clients "$CLIENTS" --duration "${PRELOAD}s" --value-size 4096 \
      --keys 200000 --key-prefix "$PRELOAD_PREFIX" -w json > "$d/preload.json" 2>&1 || die "round $r: preload failed: $(cat "$d/preload.json")"
  fi
  bench_start "$d/bench.json"
  sleep "$WARM"
  t0=$(date +%s.%N)
  if [[ $MODE == drain ]]; then
    "$BIN" node drain 4 --endpoints "$EPS" > "$d/drain.out" 2>&1 || die "round $r: drain failed: $(cat "$d/drain.out")"
  elif [[ $MODE == rebalance ]]; then
    : > "$d/drain.out"
    wait_until balanced || die "round $r: not balanced 600 s after the restart (logs in $d)"
  elif [[ $MODE == grow ]]; then
    : > "$d/drain.out"
    join_nodes "$d"
    wait_until grown || die "round $r: replicas and leaders not within 20% of their means 600 s after the joins (logs in $d)"
  elif [[ $MODE == decommission ]]; then
    "$BIN" node decommission 4 --endpoints "$EPS" > "$d/drain.out" 2>&1 || die "round $r: decommission failed: $(cat "$d/drain.out")"
    grep -q "removed from the cluster" "$d/n4.log" || { sleep 3; grep -q "removed from the cluster" "$d/n4.log"; } ||
      die "round $r: node 4 did not stop after its removal (logs in $d)"
  else
    kill -KILL "${PIDS[3]}"
    : > "$d/drain.out"
    wait_until healed || die "round $r: not healed 600 s after the kill (logs in $d)"
  fi
  t1=$(date +%s.%N)
  sleep "$AFTER" # seconds after the drain
  bench_stop
  "$BIN" ranges -w json --endpoints "$LIVE" > "$d/ranges.json" || die "round $r: ranges failed"
  # Each node's store figures (flotilla_storage_*), "node N" before each
  # node's lines; a node that does not answer (killed) has none.
  for ((i = 1; i <= N + JOINED; i++)); do
    echo "node $i"
    curl -sf --max-time 5 "http://127.0.0.$i:51381/metrics" | grep '^flotilla_storage_' || true
  done > "$d/storage.txt"
  stop
  python3 - "$d" "$r" "$t0" "$t1" "$MODE" "$((N + JOINED))" "$BENCH_END" <<'PY'
import datetime, glob, json, os, re, statistics, sys
d, r, t0, t1, mode, nodes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
bench_end = float(sys.argv[7])
# The first move off node 4, from the nodes' logs; and the last move of
# the rebalancer (counts or bytes: "rebalancing a replica", "rebalancing
# bytes" and a swap's move back), and how many it made.
tm = tlast = None
rebalanced = 0
for f in glob.glob(f"{d}/n*.log"):
    for l in open(f, errors="replace"):
        first = "moving a replica off a leaving node" in l or 'msg="rebalancing a replica" ' in l
        rebal = 'msg="rebalancing a replica" ' in l or 'msg="rebalancing bytes' in l
        rebalanced += rebal
        if first or rebal:
            m = re.match(r"time=(\S+)", l)
            if m:
                t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                if first:
                    tm = t if tm is None else min(tm, t)
                if rebal:
                    tlast = t if tlast is None else max(tlast, t)
bench = json.load(open(f"{d}/bench.json"))
# The bench ran for bench["seconds"] until it was stopped at bench_end;
# its second i (per_second[i]) is [start + i, start + i + 1). The last,
# cut short, is left out.
start = bench_end - bench["seconds"]
secs = [(start + i, start + i + 1, s["ops"]) for i, s in enumerate(bench["per_second"]) if start + i + 1 <= bench_end]
before = [n for a, b, n in secs if b <= t0][1:]  # the first warms the cluster up
during = [n for a, b, n in secs if a < t1 and b > t0]
moving = [n for a, b, n in secs if tm is not None and a < t1 and b > tm]
after = [n for a, b, n in secs if a >= t1]
base = statistics.median(before)
left = None if mode == "grow" else sum(4 in rg["replicas"] for rg in json.load(open(f"{d}/ranges.json"))["ranges"])
moves = sum(1 for l in open(f"{d}/drain.out") if l.startswith("moved range"))
m = re.search(r"it held (\d+) replicas when", open(f"{d}/drain.out").read())
if m:
    moves = int(m.group(1))
# With rebalance or grow, every node, one that holds nothing too (a node
# never filled); else the nodes that hold replicas (not node 4, emptied).
every = range(1, nodes + 1) if mode in ("rebalance", "grow") else []
counts, leads, held = {n: 0 for n in every}, {}, {n: 0 for n in every}
for rg in json.load(open(f"{d}/ranges.json"))["ranges"]:
    for n in rg["replicas"]:
        counts[n] = counts.get(n, 0) + 1
        held[n] = held.get(n, 0) + rg.get("bytes", 0)
    if rg.get("leader"):
        leads[rg["leader"]] = leads.get(rg["leader"], 0) + 1
if mode in ("rebalance", "grow"):
    moves = rebalanced
# The store figures of each node that answered, at the end of the round.
storage, node = {}, None
for l in open(f"{d}/storage.txt"):
    if l.startswith("node "):
        node = int(l.split()[1])
        continue
    name, value = l.split()
    storage.setdefault(node, {})[name.removeprefix("flotilla_storage_")] = float(value)
def per_node(name, digits=0):
    return [round(storage[n].get(name, 0), digits) if n in storage else None for n in range(1, nodes + 1)]
print(json.dumps({
    "round": r, "mode": mode, "node_cpu": os.environ.get("NODE_CPU") or None,
    "rebalance_interval": os.environ.get("REBALANCE_INTERVAL", "500ms") if mode == "grow" else None, "seconds": round(t1 - t0, 2), "moves": moves, "replicas_left_on_node4": left,
    "replicas_per_node": [counts.get(n, 0) for n in sorted(counts)],
    "leaders_per_node": [leads.get(n, 0) for n in sorted(counts)],
    "mib_per_node": [round(held.get(n, 0) / 2**20) for n in sorted(counts)],
    "widest_bytes_gap_from_mean": round(max(abs(v / (sum(held.values()) / len(held)) - 1) for v in held.values()), 2) if held and sum(held.values()) else None,
    "baseline_ops_per_sec": round(base), "during_ops_per_sec": [round(x) for x in during],
    "lowest_second_vs_baseline": round(min(during) / base, 2) if during else None,
    "first_move": round(tm - t0, 2) if tm is not None else None,
    "last_rebalancing_move": round(tlast - t0, 2) if tlast is not None else None,
    "moving_ops_per_sec": [round(x) for x in moving],
    "lowest_moving_second_vs_baseline": round(min(moving) / base, 2) if moving else None,
    "after_ops_per_sec": round(statistics.median(after)) if after else None,
    "lowest_moving_second_vs_after": round(min(moving) / statistics.median(after), 2) if moving and after else None,
    "bench_errors": bench["errors"],
    "write_stalls_per_node": per_node("write_stalls_total"),
    "write_stall_seconds_per_node": per_node("write_stall_seconds_total", 2),
    "compactions_per_node": per_node("compactions_total"),
    "compaction_pause_seconds_per_node": per_node("compaction_pause_seconds_total", 1),
    "l0_sublevels_per_node": per_node("l0_sublevels"),
}))
PY
done
