#!/usr/bin/env bash
# Idle ranges, measured (BENCHMARKS.md, "Quiescence"): starts 3 local nodes
# with --groups RANGES and reports, as one JSON object on stdout:
#   start_s          seconds from the start until every range is led
#   quiesced_s       seconds from the start until every replica is quiesced
#                    (null with --no-quiesce)
#   cpu_pct          CPU of each node over SECONDS of idleness, in % of one core
#   rss_mib          RSS of each node, MiB; rss_per_replica_kib: RSS / replicas
#   heap_mib         Go heap in use of each node (go_memstats_heap_inuse_bytes)
#   live_kib_per_replica  the live heap after a forced collection
#                    (go_memstats_heap_alloc_bytes after two /debug/pprof/heap?gc=1)
#                    over the node's replicas, in KiB
#   failover_kill_s  seconds from kill -9 of node 1 until nodes 2 and 3 lead
#                    every range (node 1 led a third of them)
#   failover_stop_s  the same with node 1 SIGSTOPped instead (a fresh cluster)
#   down_kill_s, down_stop_s  seconds from the kill -9 (the SIGSTOP) of node 1
#                    until node 2 counts it down (node 2's /debug/raft: the
#                    gossip membership's failure detection, --gossip-interval 1s)
#   light            under LIGHT_RATE puts/s over all the ranges (flotilla
#                    bench put --rate) for SECONDS: node 1's heartbeat
#                    batches per peer per second, and heartbeats per batch
# Progress goes to stderr.
#
# Usage: tools/idlebench.sh [RANGES] [SECONDS]     (defaults: 10000 30)
#
# Environment overrides (defaults in brackets):
#   QUIESCE [1]   0 starts the nodes with --no-quiesce (the baseline)
#   FAILOVER [1]  0 skips the two failover measurements
#   LIGHT_RATE [100]  puts/s of the light load (0 skips it)
#   WORKDIR [/tmp/idlebench]
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "idlebench: $*" >&2; exit 1; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 2 )) || { usage >&2; exit 2; }

RANGES=${1:-10000}
SECONDS_IDLE=${2:-30}
QUIESCE=${QUIESCE:-1}
FAILOVER=${FAILOVER:-1}
LIGHT_RATE=${LIGHT_RATE:-100}
WORKDIR=${WORKDIR:-/tmp/idlebench}
for v in RANGES SECONDS_IDLE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a positive integer"
done
((RANGES <= 100000)) || die "RANGES=$RANGES: at most 100000"
for c in go curl python3; do command -v "$c" >/dev/null || die "$c is required but not on PATH"; done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$WORKDIR/flotilla
CLUSTER=1=127.0.0.1:49380,2=127.0.0.2:49380,3=127.0.0.3:49380
TICKS=$(getconf CLK_TCK)
declare -A PID
EXTRA=()
((QUIESCE)) || EXTRA=(--no-quiesce)

stop() {
  for i in "${!PID[@]}"; do kill -CONT "${PID[$i]}" 2>/dev/null || true; kill -KILL "${PID[$i]}" 2>/dev/null || true; done
  for i in "${!PID[@]}"; do wait "${PID[$i]}" 2>/dev/null || true; done
  PID=()
}
trap 'stop' EXIT

mkdir -p "$WORKDIR"
echo "idlebench: building flotilla" >&2
(cd "$REPO" && go build -o "$BIN" ./cmd/flotilla)

# metric NODE NAME: the sum of the samples of metric NAME on node NODE.
metric() {
  curl -sf --max-time 2 "http://127.0.0.$1:49381/metrics" |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s }'
}

# leaders NODES...: the ranges the given nodes lead, summed.
leaders() {
  local s=0 i v
  for i in "$@"; do
    v=$(curl -sf --max-time 2 "http://127.0.0.$i:49381/metrics" | awk '$1 == "flotilla_raft_groups{role=\"leader\"}" { print $2 }') || v=0
    s=$((s + ${v:-0}))
  done
  echo "$s"
}

# state: per node, the ranges led, the replicas quiesced and the new ranges
# waiting for their turn to campaign (for a run that did not settle).
state() {
  local i
  for i in 1 2 3; do
    printf 'node %d: led %d quiesced %d waiting %d; ' "$i" "$(leaders "$i")" \
      "$(metric "$i" flotilla_raft_quiesced_groups)" "$(metric "$i" flotilla_raft_start_campaigns_waiting)"
  done
}

now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 2))"; }

# start_cluster TAG: fresh data, three nodes; sets PID.
start_cluster() {
  local d=$WORKDIR/$1 i
  rm -rf "$d"; mkdir -p "$d"
  for i in 1 2 3; do
    "$BIN" start --id "$i" --data-dir "$d/n$i" --groups "$RANGES" --initial-cluster "$CLUSTER" \
      --peer-addr "127.0.0.$i:49380" --client-addr "127.0.0.$i:49379" --http-addr "127.0.0.$i:49381" \
      --insecure --log-level warn "${EXTRA[@]}" >"$d/n$i.log" 2>&1 &
    PID[$i]=$!
  done
}

# wait_led NODES...: until the given nodes lead every range; prints the
# seconds it took from T0, or dies after 600 s.
wait_led() {
  local t0=$1; shift
  while :; do
    (($(leaders "$@") >= RANGES)) && { since "$t0"; return; }
    (($(python3 -c "print(int($(now) - $t0))") < 600)) || die "ranges not all led after 600 s: $(state)"
    sleep 0.1
  done
}

cpu() { awk -v t="$TICKS" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

echo "idlebench: $RANGES ranges on 3 nodes (quiesce=$QUIESCE)" >&2
t0=$(now)
start_cluster idle
start_s=$(wait_led "$t0" 1 2 3)
echo "idlebench: every range led after ${start_s}s" >&2
quiesced_s=null
if ((QUIESCE)); then
  while :; do
    q=0
    for i in 1 2 3; do q=$((q + $(metric "$i" flotilla_raft_quiesced_groups))); done
    ((q >= 3 * RANGES)) && break
    (($(python3 -c "print(int($(now) - $t0))") < 900)) || die "only $q of $((3 * RANGES)) replicas quiesced after 900 s"
    sleep 0.5
  done
  quiesced_s=$(since "$t0")
  echo "idlebench: every replica quiesced after ${quiesced_s}s" >&2
fi
sleep 5 # let the start's garbage collection settle
declare -A c0
for i in 1 2 3; do c0[$i]=$(cpu "${PID[$i]}"); done
sleep "$SECONDS_IDLE"
cpu_pct=() rss_mib=() heap_mib=() per=() live=()
for i in 1 2 3; do
  c1=$(cpu "${PID[$i]}")
  cpu_pct+=("$(python3 -c "print(round(100 * ($c1 - ${c0[$i]}) / $SECONDS_IDLE, 2))")")
  r=$(rss "${PID[$i]}")
  rss_mib+=("$(python3 -c "print(round($r / 1024, 1))")")
  per+=("$(python3 -c "print(round($r / $RANGES, 2))")")
  heap_mib+=("$(python3 -c "print(round($(metric "$i" go_memstats_heap_inuse_bytes) / 1048576, 1))")")
  # Two collections: what sync.Pools hold survives the first (their
  # victim caches), and a fresh node's pools still hold its bootstrap's
  # batches (about 0.4 KiB per replica at 10,000 ranges).
  curl -sf --max-time 10 "http://127.0.0.$i:49381/debug/pprof/heap?gc=1" >/dev/null
  curl -sf --max-time 10 "http://127.0.0.$i:49381/debug/pprof/heap?gc=1" >/dev/null
  live+=("$(python3 -c "print(round($(metric "$i" go_memstats_heap_alloc_bytes) / 1024 / $RANGES, 2))")")
done
echo "idlebench: idle for ${SECONDS_IDLE}s: CPU % of a core ${cpu_pct[*]}; RSS MiB ${rss_mib[*]}" >&2

# hb: node 1's heartbeat batches and coalesced heartbeats sent, all peers.
hb() { echo "$(metric 1 flotilla_transport_heartbeat_batches_sent_total) $(metric 1 flotilla_transport_heartbeats_coalesced_total)"; }
light=null
if [[ $LIGHT_RATE != 0 ]]; then
  read -r b0 h0 <<<"$(hb)"
  "$BIN" bench put --endpoints 127.0.0.1:49379,127.0.0.2:49379,127.0.0.3:49379 --insecure --rate "$LIGHT_RATE" \
    --clients 8 --keys 100000 --duration "${SECONDS_IDLE}s" -w json >"$WORKDIR/light.json" 2>"$WORKDIR/light.log"
  read -r b1 h1 <<<"$(hb)"
  light=$(python3 -c "
import json
r = json.load(open('$WORKDIR/light.json'))
b, h = $b1 - $b0, $h1 - $h0
print(json.dumps({'rate': $LIGHT_RATE, 'ops': r['ops'], 'errors': r['errors'], 'p99_ms': r['p99_ms'],
  'batches_per_peer_per_s': round(b / 2 / $SECONDS_IDLE, 1), 'heartbeats_per_batch': round(h / b, 2) if b else 0}))")
  echo "idlebench: light load: $light" >&2
fi

# down1: whether node 2 counts node 1 down (its gossip: not alive in its
# status document, /debug/raft, which is what `node list` shows when node
# 2 answers it; read directly, as `node list` would also wait for node 1).
down1() {
  curl -sf --max-time 2 "http://127.0.0.2:49381/debug/raft" |
    python3 -c "import json,sys; n=[x for x in json.load(sys.stdin)['nodes'] if x['id']==1]; sys.exit(0 if n and not n[0]['alive'] else 1)"
}

failover() { # SIGNAL: seconds until nodes 2 and 3 lead every range, and until node 2 lists node 1 down
  local sig=$1 t led=null down=null
  t=$(now)
  kill "-$sig" "${PID[1]}"
  while [[ $led == null || $down == null ]]; do
    [[ $led == null ]] && (($(leaders 2 3) >= RANGES)) && led=$(since "$t")
    [[ $down == null ]] && down1 && down=$(since "$t")
    (($(python3 -c "print(int($(now) - $t))") < 600)) || die "after the $sig of node 1: led=$led down=$down after 600 s: $(state)"
    sleep 0.1
  done
  echo "$led $down"
}
kill_s=null stop_s=null down_kill_s=null down_stop_s=null
if ((FAILOVER)); then
  read -r kill_s down_kill_s <<<"$(failover KILL)"
  echo "idlebench: kill -9 of node 1: every range led by 2 and 3 after ${kill_s}s; node 2 counts node 1 down after ${down_kill_s}s" >&2
  stop
  t0=$(now)
  start_cluster stop
  wait_led "$t0" 1 2 3 >/dev/null
  if ((QUIESCE)); then
    while :; do
      q=0
      for i in 1 2 3; do q=$((q + $(metric "$i" flotilla_raft_quiesced_groups))); done
      ((q >= 3 * RANGES)) && break
      sleep 0.5
    done
  fi
  read -r stop_s down_stop_s <<<"$(failover STOP)"
  echo "idlebench: SIGSTOP of node 1: every range led by 2 and 3 after ${stop_s}s; node 2 counts node 1 down after ${down_stop_s}s" >&2
fi
join() { local IFS=,; echo "$*"; }
cat <<EOF
{"ranges":$RANGES,"quiesce":$([ "$QUIESCE" = 1 ] && echo true || echo false),"start_s":$start_s,"quiesced_s":$quiesced_s,"idle_seconds":$SECONDS_IDLE,"cpu_pct":[$(join "${cpu_pct[@]}")],"rss_mib":[$(join "${rss_mib[@]}")],"rss_per_replica_kib":[$(join "${per[@]}")],"heap_mib":[$(join "${heap_mib[@]}")],"live_kib_per_replica":[$(join "${live[@]}")],"failover_kill_s":$kill_s,"failover_stop_s":$stop_s,"down_kill_s":$down_kill_s,"down_stop_s":$down_stop_s,"light":$light}
EOF
