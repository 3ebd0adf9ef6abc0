#!/usr/bin/env bash
# Side-by-side put benchmark: a 3-member etcd 3.4 cluster driven by
# tools/etcdbench, then a 3-node Flotilla cluster driven by `flotilla bench
# put`, with the same workload shape, for ROUNDS alternating rounds, each on a
# fresh cluster and data directory (BENCHMARKS.md, "KV service vs etcd").
#
# Usage: tools/kvcompare.sh [ROUNDS] [DURATION]      (defaults: 3 15s)
#
# Environment overrides (defaults in brackets):
#   CLIENTS [256]  VALUE_SIZE [256]  KEYS [1000]  CONNS [1]  GROUPS [16]
#   OP [put]: put, or txn: a two-key compare-and-swap (if key K holds the
#     value, put it in K and K+"/2", else the same), `flotilla bench txn`
#     and `etcdbench --op txn`. A BASELINE must know `bench txn` for OP=txn.
#     Or watch: WATCHERS [1000] watchers of one prefix while the clients put
#     under it, RATE [10000] puts/s in all (`flotilla bench watch`,
#     `etcdbench --op watch`); ops/s is then events delivered per second,
#     p50/p99 the delivery latency, CPU per op per delivered event.
#   WORKDIR [/tmp/kvcompare]  ETCD3_SH [tools/etcd3.sh]
#   BASELINE [none]: a git revision of this repository. Each round then also
#     runs Flotilla built at that revision ("baseline"), before or after the
#     working tree's (alternately), and the summary gives flotilla/baseline
#     per round: the cost or gain of a change, measured in the same spell.
#     A baseline older than --insecure (its `start --help` does not name it)
#     is started without it. BASELINE is plaintext only: refused with TLS.
#   TLS [0]: 0 runs both systems plaintext (Flotilla with --insecure). 1 runs
#     both with TLS ("etcd-tls", "flotilla-tls"): the script makes a CA, a
#     certificate for each node (IP 127.0.0.N, and 127.0.0.1, which etcd
#     needs: tools/etcd3.sh) and one for client user root in WORKDIR/certs
#     with the built `flotilla cert`; Flotilla's nodes start with --certs-dir,
#     `flotilla bench put` signs in as root with --certs-dir, etcd's members
#     (the same node certificates, ETCD3_CERTS_DIR) demand client
#     certificates and talk mutual TLS to each other, and etcdbench presents
#     root's. TLS=both runs each system plaintext and with TLS in every
#     round (etcd, etcd-tls, flotilla, flotilla-tls; each pair in the other
#     order in even rounds), and the summary gives the ratios per round: what TLS
#     costs, measured in the same spell.
# Note: bash ignores `GROUPS=32 cmd` (GROUPS is a bash special variable), so
# pass it as `env GROUPS=32 tools/kvcompare.sh`, or use FLOTILLA_GROUPS=32.
#
# Per run it reports ops/s, p50 and p99 (from the load generator's JSON), and
# CPU per op: user+sys of the three server processes (/proc/PID/stat, read
# just before they are stopped, so it includes their start-up) and of the load
# generator (cutime+cstime of a wrapper shell that waited for it), each
# divided by the run's ops.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "kvcompare: $*" >&2; exit 1; }

case ${1:-} in -h|--help) usage; exit 0 ;; esac
(( $# <= 2 )) || { usage >&2; exit 2; }

ROUNDS=${1:-3}
DURATION=${2:-15s}
CLIENTS=${CLIENTS:-256}
OP=${OP:-put}
VALUE_SIZE=${VALUE_SIZE:-256}
KEYS=${KEYS:-1000}
CONNS=${CONNS:-1}
# $GROUPS is bash's list of the user's group IDs; read the environment's.
NGROUPS=${FLOTILLA_GROUPS:-$(printenv GROUPS || true)}
NGROUPS=${NGROUPS:-16}
WORKDIR=${WORKDIR:-/tmp/kvcompare}
BASELINE=${BASELINE:-}
TLS=${TLS:-0}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
ETCD3_SH=${ETCD3_SH:-$SCRIPT_DIR/etcd3.sh}

for v in ROUNDS CLIENTS KEYS CONNS NGROUPS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "${v/#NGROUPS/GROUPS}=${!v}: want a positive integer"
done
[[ $OP == put || $OP == txn || $OP == watch ]] || die "OP=$OP: want put, txn or watch"
WATCHERS=${WATCHERS:-1000}
RATE=${RATE:-10000}
OP_ARGS=()
if [[ $OP == watch ]]; then
  [[ $WATCHERS =~ ^[1-9][0-9]*$ ]] || die "WATCHERS=$WATCHERS: want a positive integer"
  [[ $RATE =~ ^[0-9]+$ ]] || die "RATE=$RATE: want a non-negative integer"
  OP_ARGS=(--watchers "$WATCHERS" --rate "$RATE")
fi
[[ $VALUE_SIZE =~ ^[0-9]+$ ]] || die "VALUE_SIZE=$VALUE_SIZE: want a non-negative integer"
case $TLS in
  0 | 1 | both) ;;
  *) die "TLS=$TLS: want 0, 1 or both" ;;
esac
[[ -z $BASELINE || $TLS == 0 ]] ||
  die "BASELINE and TLS=$TLS exclude each other: the baseline is measured plaintext only (older builds have no --certs-dir)"
[[ -x $ETCD3_SH ]] || die "etcd3.sh not found or not executable at $ETCD3_SH (set ETCD3_SH)"
for c in go curl python3 timeout; do
  command -v "$c" >/dev/null || die "$c is required but not on PATH"
done

# Seconds in a Go duration such as 15s, 1m30s or 500ms.
DUR_SECS=$(python3 - "$DURATION" <<'PY'
import re, sys
s = sys.argv[1]
units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", s)
if not parts or "".join(n + u for n, u in parts) != s:
    sys.exit(1)
t = sum(float(n) * units[u] for n, u in parts)
if t <= 0:
    sys.exit(1)
print(t)
PY
) || die "DURATION=$DURATION: want a positive Go duration such as 15s or 1m"
# The load generator gets this long (run + connect + slack) before it is killed.
BENCH_LIMIT=$(python3 -c "import math,sys; print(math.ceil(float(sys.argv[1])) + 120)" "$DUR_SECS")

CLK_TCK=$(getconf CLK_TCK)
ETCD_EPS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
FLO_EPS=127.0.0.1:47379,127.0.0.2:47379,127.0.0.3:47379
FLO_CLUSTER=1=127.0.0.1:47380,2=127.0.0.2:47380,3=127.0.0.3:47380

NODE_PIDS=()
BENCH_PID=
ETCD_UP=

# --- clean-up -----------------------------------------------------------------

# wait_gone TIMEOUT PID...: wait until the processes have exited (SIGKILL after
# TIMEOUT seconds); reaps them when they are this shell's children.
wait_gone() {
  local limit=$1 p left; shift
  for ((t = 0; t < limit * 10; t++)); do
    left=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null; then
      echo "kvcompare: pid $p still running after ${limit}s; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
}

etcd_pids() {
  local i
  for i in 1 2 3; do
    [[ -f $WORKDIR/etcd/e$i.pid ]] && cat "$WORKDIR/etcd/e$i.pid"
  done
  return 0
}

stop_etcd() {
  local pids
  pids=$(etcd_pids)
  "$ETCD3_SH" stop "$WORKDIR/etcd" || true
  # shellcheck disable=SC2086
  [[ -z $pids ]] || wait_gone 15 $pids
  ETCD_UP=
}

stop_nodes() {
  ((${#NODE_PIDS[@]})) || return 0
  kill -TERM "${NODE_PIDS[@]}" 2>/dev/null || true
  wait_gone 20 "${NODE_PIDS[@]}"
  NODE_PIDS=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $BENCH_PID ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait_gone 5 "$BENCH_PID"
  fi
  stop_nodes
  [[ -z $ETCD_UP ]] || stop_etcd
  exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "kvcompare: interrupted" >&2; exit 130' INT
trap 'echo "kvcompare: terminated" >&2; exit 143' TERM

# --- helpers --------------------------------------------------------------------

# cpu_ticks PID...: utime+stime of the processes, in clock ticks.
cpu_ticks() {
  local p stat rest sum=0 f
  for p in "$@"; do
    stat=$(<"/proc/$p/stat") || die "process $p is gone; cannot read its CPU time"
    rest=${stat##*) }             # fields from 3 (state) on; comm may hold spaces
    read -r -a f <<<"$rest"
    sum=$((sum + f[11] + f[12])) # fields 14 (utime) and 15 (stime)
  done
  echo "$sum"
}

# port_busy HOST PORT: true if something accepts connections there.
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

check_free() {
  local hp
  for hp in "$@"; do
    ! port_busy "${hp%:*}" "${hp##*:}" ||
      die "$hp is already in use (another cluster running?); stop it first"
  done
}

# run_bench NAME OUT CPU CMD...: run the load generator in the background (so
# that signals reach the traps), its JSON to OUT and its CPU ticks (children's
# utime+stime of the wrapper shell that waited for it) to CPU.
run_bench() {
  local name=$1 out=$2 cpu=$3 rc=0; shift 3
  bash -c 'out=$1 cpu=$2 limit=$3; shift 3
    timeout --kill-after=10 "$limit" "$@" >"$out" & t=$!
    trap "kill -TERM $t 2>/dev/null; wait $t; exit 143" TERM   # pass a stop on
    rc=0; wait "$t" || rc=$?
    read -r stat </proc/$$/stat; rest=${stat##*) }; read -r -a f <<<"$rest"
    echo $((f[13] + f[14])) >"$cpu"   # fields 16 (cutime) and 17 (cstime)
    exit "$rc"' kvcompare-bench "$out" "$cpu" "$BENCH_LIMIT" "$@" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=
  ((rc == 0)) || die "$name failed (exit status $rc); its stdout is in $out"
  python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$out" 2>/dev/null ||
    die "$name did not write JSON to $out: $(head -c 300 "$out")"
}

RESULTS=$WORKDIR/results.tsv

# record SYSTEM ROUND JSON SERVER_TICKS CLIENT_TICKS: append a run, print it.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
  python3 - "$CLK_TCK" "$@" <<'PY'
import json, sys
tck, system, rnd, path, srv, cli = sys.argv[1:]
r = json.load(open(path))
ops = r["ops"]
per = lambda t: int(t) / int(tck) * 1e6 / ops if ops else float("nan")
print(f"{system:<12} round {rnd}: {r['ops_per_sec']:8.0f} ops/s  p50 {r['p50_ms']:6.2f} ms  "
      f"p99 {r['p99_ms']:7.2f} ms  CPU µs/op: servers {per(srv):5.0f}  client {per(cli):5.0f}"
      f"  ({ops} ops, {r['errors']} errors)")
PY
}

# --- build ------------------------------------------------------------------------

mkdir -p "$WORKDIR"
: >"$RESULTS"
echo "kvcompare: $ROUNDS round(s) of $DURATION; clients $CLIENTS, conns $CONNS, value size $VALUE_SIZE, keys $KEYS, flotilla groups $NGROUPS"
echo "kvcompare: workdir $WORKDIR; start load: $(uptime)"
echo "kvcompare: building flotilla and etcdbench"
for b in flotilla etcdbench; do
  [[ ! -d $WORKDIR/$b ]] || die "$WORKDIR/$b is a directory; remove it (the binary is built there)"
done
(cd "$REPO" && go build -o "$WORKDIR/flotilla" ./cmd/flotilla) || die "building flotilla failed"
(cd "$REPO/tools/etcdbench" && go build -o "$WORKDIR/etcdbench" .) || die "building etcdbench failed"
if [[ -n $BASELINE ]]; then
  rev=$(git -C "$REPO" rev-parse --verify --quiet "$BASELINE^{commit}") || die "BASELINE=$BASELINE: not a revision of $REPO"
  echo "kvcompare: building the baseline flotilla at $rev"
  rm -rf "$WORKDIR/baseline-src" && mkdir -p "$WORKDIR/baseline-src"
  git -C "$REPO" archive "$rev" | tar -x -C "$WORKDIR/baseline-src" || die "extracting $BASELINE failed"
  (cd "$WORKDIR/baseline-src" && go build -o "$WORKDIR/flotilla-baseline" ./cmd/flotilla) || die "building the baseline failed"
  rm -rf "$WORKDIR/baseline-src"
fi

# has_insecure BINARY: true if BINARY's `start` takes --insecure (builds from
# before it start plaintext without a flag, and refuse unknown flags). The
# help is read whole first: grep -q quits at its match, and under pipefail
# the help's writer dying of SIGPIPE would fail the pipe.
has_insecure() {
  local help
  help=$("$1" start --help 2>/dev/null) || true
  grep -q -- --insecure <<<"$help"
}
has_insecure "$WORKDIR/flotilla" || die "the built flotilla's start has no --insecure"

# make_certs DIR: a fresh CA, node certificates 1-3 and client root's in DIR.
# Node N's names 127.0.0.N, where Flotilla's node N listens, and 127.0.0.1,
# where all of etcd's members listen (tools/etcd3.sh says why etcd needs it).
make_certs() {
  local dir=$1 i hosts
  rm -rf "$dir"
  "$WORKDIR/flotilla" cert create-ca --certs-dir "$dir" || return
  for i in 1 2 3; do
    hosts=(127.0.0.$i)
    ((i == 1)) || hosts+=(127.0.0.1)
    "$WORKDIR/flotilla" cert create-node "$i" "${hosts[@]}" --certs-dir "$dir" || return
  done
  "$WORKDIR/flotilla" cert create-client root --certs-dir "$dir"
}

CERTS=$WORKDIR/certs
if [[ $TLS != 0 ]]; then
  echo "kvcompare: making a CA and certificates in $CERTS"
  make_certs "$CERTS" >/dev/null || die "flotilla cert failed to make the certificates in $CERTS"
fi

# --- rounds ---------------------------------------------------------------------

# run_etcd ROUND [tls]: one round of etcd, plaintext ("etcd") or with TLS
# ("etcd-tls").
run_etcd() {
  local r=$1 label=etcd pids srv sec=() cert=()
  [[ ${2:-} != tls ]] || label=etcd-tls
  local out=$WORKDIR/$label-r$1.json
  echo "== round $r/$ROUNDS: $label"
  check_free 127.0.0.1:23791 127.0.0.1:23792 127.0.0.1:23793 127.0.0.1:23801 127.0.0.1:23802 127.0.0.1:23803
  if [[ $label == etcd-tls ]]; then
    sec=(ETCD3_CERTS_DIR="$CERTS")
    cert=(--cacert "$CERTS/ca.crt" --cert "$CERTS/client-root.crt" --key "$CERTS/client-root.key")
  fi
  ETCD_UP=1
  env ${sec[@]+"${sec[@]}"} "$ETCD3_SH" start "$WORKDIR/etcd" || die "etcd3.sh start failed (logs in $WORKDIR/etcd)"
  pids=$(etcd_pids)
  [[ $(wc -w <<<"$pids") == 3 ]] || die "expected 3 etcd pid files in $WORKDIR/etcd"
  run_bench etcdbench "$out" "$WORKDIR/$label-r$r.cpu" "$WORKDIR/etcdbench" \
    --op "$OP" --endpoints "$ETCD_EPS" --clients "$CLIENTS" --conns "$CONNS" \
    --value-size "$VALUE_SIZE" --keys "$KEYS" --duration "$DURATION" -w json \
    ${OP_ARGS[@]+"${OP_ARGS[@]}"} ${cert[@]+"${cert[@]}"}
  # shellcheck disable=SC2086
  srv=$(cpu_ticks $pids)
  stop_etcd
  rm -rf "$WORKDIR/etcd"
  record "$label" "$r" "$out" "$srv" "$(<"$WORKDIR/$label-r$r.cpu")"
}

# run_flotilla ROUND [LABEL BINARY]: one round of Flotilla (default: the
# working tree's build, labelled flotilla). Label flotilla-tls runs it with
# TLS (--certs-dir), anything else plaintext (--insecure, if BINARY knows it).
run_flotilla() {
  local r=$1 label=${2:-flotilla} bin=${3:-$WORKDIR/flotilla}
  local out=$WORKDIR/$label-r$1.json data=$WORKDIR/flotilla-data i ok srv
  local sec=() cli=() scheme=http curlca=()
  echo "== round $r/$ROUNDS: $label"
  check_free 127.0.0.{1,2,3}:47379 127.0.0.{1,2,3}:47380 127.0.0.{1,2,3}:47381
  if [[ $label == flotilla-tls ]]; then
    sec=(--certs-dir "$CERTS") cli=(--certs-dir "$CERTS" --user root)
    scheme=https curlca=(--cacert "$CERTS/ca.crt")
  elif has_insecure "$bin"; then
    sec=(--insecure)
  fi
  rm -rf "$data"; mkdir -p "$data"
  for i in 1 2 3; do
    "$bin" start --id "$i" --data-dir "$data/d$i" --groups "$NGROUPS" \
      --initial-cluster "$FLO_CLUSTER" --peer-addr "127.0.0.$i:47380" \
      --client-addr "127.0.0.$i:47379" --http-addr "127.0.0.$i:47381" \
      ${sec[@]+"${sec[@]}"} --log-level warn >"$data/n$i.log" 2>&1 &
    NODE_PIDS+=($!)
  done
  for ((t = 0; ; t++)); do
    for i in 1 2 3; do
      kill -0 "${NODE_PIDS[i-1]}" 2>/dev/null ||
        die "flotilla node $i exited during start-up; $data/n$i.log ends: $(tail -n 5 "$data/n$i.log")"
    done
    ok=0
    for i in 1 2 3; do
      curl -sf -o /dev/null --max-time 1 ${curlca[@]+"${curlca[@]}"} "$scheme://127.0.0.$i:47381/readyz" && ok=$((ok + 1))
    done
    ((ok == 3)) && break
    ((t < 60)) || die "flotilla nodes not ready after 30 s (logs: $data/n{1,2,3}.log)"
    sleep 0.5
  done
  sleep 2
  run_bench "flotilla bench $OP" "$out" "$WORKDIR/$label-r$r.cpu" "$bin" bench "$OP" \
    --endpoints "$FLO_EPS" --clients "$CLIENTS" --conns "$CONNS" \
    --value-size "$VALUE_SIZE" --keys "$KEYS" --duration "$DURATION" -w json \
    ${OP_ARGS[@]+"${OP_ARGS[@]}"} ${cli[@]+"${cli[@]}"}
  srv=$(cpu_ticks "${NODE_PIDS[@]}")
  stop_nodes
  rm -rf "$data"
  record "$label" "$r" "$out" "$srv" "$(<"$WORKDIR/$label-r$r.cpu")"
}

for ((r = 1; r <= ROUNDS; r++)); do
  if [[ $TLS == 1 ]]; then
    run_etcd "$r" tls
    run_flotilla "$r" flotilla-tls
  elif [[ $TLS == both ]] && ((r % 2)); then
    run_etcd "$r"
    run_etcd "$r" tls
    run_flotilla "$r"
    run_flotilla "$r" flotilla-tls
  elif [[ $TLS == both ]]; then
    run_etcd "$r" tls
    run_etcd "$r"
    run_flotilla "$r" flotilla-tls
    run_flotilla "$r"
  elif [[ -z $BASELINE ]]; then
    run_etcd "$r"
    run_flotilla "$r"
  elif ((r % 2)); then
    run_etcd "$r"
    run_flotilla "$r" baseline "$WORKDIR/flotilla-baseline"
    run_flotilla "$r"
  else
    run_etcd "$r"
    run_flotilla "$r"
    run_flotilla "$r" baseline "$WORKDIR/flotilla-baseline"
  fi
done

# --- summary --------------------------------------------------------------------

echo
echo "kvcompare: end load: $(uptime)"
python3 - "$RESULTS" "$CLK_TCK" <<'PY'
import json, statistics, sys
path, tck = sys.argv[1], int(sys.argv[2])
runs = []
for line in open(path):
    system, rnd, out, srv, cli = line.rstrip("\n").split("\t")
    r = json.load(open(out))
    ops = r["ops"]
    us = lambda t: int(t) / tck * 1e6 / ops if ops else float("nan")
    runs.append(dict(system=system, round=int(rnd), ops_s=r["ops_per_sec"], p50=r["p50_ms"],
                     p99=r["p99_ms"], srv=us(srv), cli=us(cli), ops=ops, errors=r["errors"]))

print(f"{'system':<13}{'round':>5}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'srv µs/op':>11}{'cli µs/op':>11}{'errors':>8}")
for x in runs:
    print(f"{x['system']:<13}{x['round']:>5}{x['ops_s']:>10.0f}{x['p50']:>9.2f}{x['p99']:>9.2f}"
          f"{x['srv']:>11.0f}{x['cli']:>11.0f}{x['errors']:>8}")
print()
med = statistics.median
for system in ("etcd", "etcd-tls", "baseline", "flotilla", "flotilla-tls"):
    xs = [x for x in runs if x["system"] == system]
    if xs:
        print(f"{system:<13} median of {len(xs)}: {med(x['ops_s'] for x in xs):.0f} ops/s "
              f"(runs {', '.join('%.0f' % x['ops_s'] for x in xs)}), "
              f"p50 {med(x['p50'] for x in xs):.2f} ms, p99 {med(x['p99'] for x in xs):.2f} ms, "
              f"CPU µs/op {med(x['srv'] for x in xs):.0f} + {med(x['cli'] for x in xs):.0f}, "
              f"errors {sum(x['errors'] for x in xs)} in {sum(1 for x in xs if x['errors'])} run(s)")
by = {(x["system"], x["round"]): x for x in runs}
for num, den in (("flotilla", "etcd"), ("baseline", "etcd"), ("flotilla", "baseline"),
                 ("flotilla-tls", "etcd-tls"), ("flotilla-tls", "flotilla"), ("etcd-tls", "etcd")):
    ratios = []
    for rnd in sorted({x["round"] for x in runs}):
        a, b = by.get((num, rnd)), by.get((den, rnd))
        if a and b and b["ops_s"] > 0:
            ratios.append(a["ops_s"] / b["ops_s"])
    if ratios:
        print(f"{num}/{den} ops/s per round: {', '.join('%.2f' % q for q in ratios)} (median {med(ratios):.2f}x)")
PY
