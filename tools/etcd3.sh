#!/usr/bin/env bash
# Start or stop a 3-member etcd 3.4 cluster on loopback, the peer of the
# side-by-side benchmarks (tools/kvcompare.sh, BENCHMARKS.md).
#
# Usage: tools/etcd3.sh start DIR     start the cluster; return once healthy
#        tools/etcd3.sh stop DIR      stop it; return once its processes exit
#        tools/etcd3.sh -h            this text
#
# Members e1, e2, e3 serve clients on 127.0.0.1:23791-23793 and each other on
# 127.0.0.1:23801-23803. Each keeps its data in DIR/eN, its log in DIR/eN.log
# and its process id in DIR/eN.pid. start wipes the data of a previous cluster
# in DIR (only those files), so every start is a fresh cluster; it refuses to
# run while a cluster from DIR is still up or one of the ports is taken. etcd
# runs with its defaults, so every commit is fsynced; the backend quota is
# raised to 8 GiB so that long benchmarks do not run out of space.
#
# If etcd or etcdctl is not on PATH, start installs Debian's etcd-server and
# etcd-client (3.4) with apt-get, which needs root.
#
# Environment: ETCD3_START_WAIT [30] seconds to wait for a healthy cluster;
# ETCD3_STOP_WAIT [15] seconds to wait for the members to exit on SIGTERM
# before they are killed; ETCD3_CERTS_DIR [none]: run with TLS (below).
#
# TLS: with ETCD3_CERTS_DIR=CERTS, start serves clients on https and requires
# a client certificate of the CA (--client-cert-auth), and the members talk to
# each other over mutual TLS. CERTS is laid out as `flotilla cert` writes it:
# ca.crt, and node-N.crt and node-N.key for member eN (N = 1, 2, 3), used as
# both its server and its client certificate (they hold ServerAuth and
# ClientAuth). Every node-N.crt must name the IP address 127.0.0.1, where all
# members listen: a member checks the certificate of the member it dials
# against the address it dials, and a member's peer listener checks the
# certificate of a member dialing in against that member's source address,
# which is 127.0.0.1 on loopback. So make them with, for example,
#   flotilla cert create-node 2 127.0.0.2 127.0.0.1 --certs-dir CERTS
# (start checks this with openssl, if it is on PATH). Clients then need
# --cacert CERTS/ca.crt and a certificate and key of the CA (etcdctl --cert,
# --key; tools/etcdbench the same flags). stop needs no certificates.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
short_usage() { echo "usage: $0 start DIR | stop DIR | -h" >&2; }
die() { echo "etcd3.sh: $*" >&2; exit 1; }

MEMBERS=(1 2 3)
CLIENT_HOST=127.0.0.1
client_port() { echo $((23790 + $1)); }
peer_port() { echo $((23800 + $1)); }
ENDPOINTS=$CLIENT_HOST:23791,$CLIENT_HOST:23792,$CLIENT_HOST:23793
CERTS_DIR=${ETCD3_CERTS_DIR:-}
START_WAIT=${ETCD3_START_WAIT:-30}
STOP_WAIT=${ETCD3_STOP_WAIT:-15}
[[ $START_WAIT =~ ^[1-9][0-9]*$ ]] || die "ETCD3_START_WAIT=$START_WAIT: want a positive number of seconds"
[[ $STOP_WAIT =~ ^[1-9][0-9]*$ ]] || die "ETCD3_STOP_WAIT=$STOP_WAIT: want a positive number of seconds"

# --- processes ------------------------------------------------------------------

# alive PID: true if PID runs (a zombie that nobody reaps does not count).
alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# member_pid DIR N: the pid recorded for member N, if it is still an etcd
# process (a stale file may name a pid that has been reused since).
member_pid() {
  local f=$1/e$2.pid pid comm
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == etcd ]] || return 1
  echo "$pid"
}

# exists PID: true while /proc has an entry for PID, zombie or not.
exists() { [[ -e /proc/$1 ]]; }

# wait_while SECONDS TEST PID...: poll until TEST fails for every PID, or
# SECONDS pass. True if every PID got there.
wait_while() {
  local limit=$1 test=$2 t pid left; shift 2
  for ((t = 0; ; t++)); do
    left=0
    for pid in "$@"; do "$test" "$pid" && left=1; done
    ((left)) || return 0
    ((t < limit * 10)) || return 1
    sleep 0.1
  done
}

# stop_pids PID...: SIGTERM the processes, wait for them to exit (SIGKILL
# after STOP_WAIT seconds) and, for a moment, for them to be reaped.
stop_pids() {
  local pid
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  if ! wait_while "$STOP_WAIT" alive "$@"; then
    for pid in "$@"; do
      if alive "$pid"; then
        echo "etcd3.sh: etcd (pid $pid) still running after ${STOP_WAIT}s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    wait_while 5 alive "$@" || die "etcd survived SIGKILL (pids $*)"
  fi
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done # reap our own children
  # An exited member stays a zombie until its parent reaps it (this script,
  # or init once start has returned), and kill -0 still finds it: give the
  # reaper a moment, so that a caller polling the pids sees them gone.
  wait_while 5 exists "$@" || true
}

# stop_members DIR: stop every running member of DIR and remove the pid files.
stop_members() {
  local dir=$1 i pid pids=()
  for i in "${MEMBERS[@]}"; do
    if pid=$(member_pid "$dir" "$i"); then pids+=("$pid"); fi
  done
  stop_pids ${pids[@]+"${pids[@]}"}
  for i in "${MEMBERS[@]}"; do rm -f "$dir/e$i.pid"; done
  echo "etcd3.sh: stopped ${#pids[@]} member(s) of $dir"
}

# --- start ----------------------------------------------------------------------

ensure_etcd() {
  command -v etcd >/dev/null && command -v etcdctl >/dev/null && return 0
  command -v apt-get >/dev/null ||
    die "etcd/etcdctl not on PATH and no apt-get to install them; install etcd 3.4 by hand"
  [[ $(id -u) == 0 ]] ||
    die "etcd/etcdctl not on PATH; installing Debian's etcd-server and etcd-client needs root (or install them by hand)"
  echo "etcd3.sh: installing etcd-server and etcd-client with apt-get" >&2
  {
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client
  } >/dev/null || die "apt-get install etcd-server etcd-client failed"
  command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
    die "etcd-server and etcd-client installed, but etcd or etcdctl is still not on PATH"
}

# port_busy PORT: true if something on 127.0.0.1 accepts connections there.
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/$CLIENT_HOST/$1" 2>/dev/null; }

# log_tails DIR: the last lines of every member's log, for an error message.
log_tails() {
  local i
  for i in "${MEMBERS[@]}"; do
    [[ -f $1/e$i.log ]] || continue
    echo "--- $1/e$i.log (last 5 lines):"
    tail -n 5 "$1/e$i.log"
  done
}

# check_certs: CERTS_DIR holds what TLS needs (header), as an absolute path.
check_certs() {
  local i f
  [[ -d $CERTS_DIR ]] || die "ETCD3_CERTS_DIR=$CERTS_DIR: not a directory"
  CERTS_DIR=$(CDPATH='' cd -- "$CERTS_DIR" && pwd)
  for f in ca.crt node-{1,2,3}.crt node-{1,2,3}.key; do
    [[ -r $CERTS_DIR/$f ]] || die "ETCD3_CERTS_DIR: $CERTS_DIR/$f is missing (make it with flotilla cert)"
  done
  command -v openssl >/dev/null || return 0
  for i in "${MEMBERS[@]}"; do
    openssl x509 -noout -in "$CERTS_DIR/node-$i.crt" -checkip "$CLIENT_HOST" 2>/dev/null |
      grep -q 'does match' ||
      die "$CERTS_DIR/node-$i.crt does not name IP $CLIENT_HOST, where every member listens; etcd would refuse it (make it with: flotilla cert create-node $i ... $CLIENT_HOST)"
  done
}

# tls_flags N: the TLS flags of member N (none without CERTS_DIR).
tls_flags() {
  [[ -n $CERTS_DIR ]] || return 0
  local c=$CERTS_DIR
  printf '%s\n' --cert-file "$c/node-$1.crt" --key-file "$c/node-$1.key" \
    --client-cert-auth --trusted-ca-file "$c/ca.crt" \
    --peer-cert-file "$c/node-$1.crt" --peer-key-file "$c/node-$1.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$c/ca.crt"
}

start() {
  local dir=$1 i p pid version cluster="" deadline ok scheme=http tls=() ctl=()
  ensure_etcd
  if [[ -n $CERTS_DIR ]]; then
    check_certs
    scheme=https
    # etcdctl's health check presents member 1's certificate (ClientAuth).
    ctl=(--cacert "$CERTS_DIR/ca.crt" --cert "$CERTS_DIR/node-1.crt" --key "$CERTS_DIR/node-1.key")
  fi
  version=$(etcd --version 2>/dev/null | awk '/^etcd Version:/ {print $3}')
  [[ $version == 3.4.* ]] ||
    echo "etcd3.sh: warning: etcd ${version:-of unknown version} is not 3.4; the benchmarks were taken on 3.4" >&2

  mkdir -p "$dir" || die "cannot create $dir"
  dir=$(CDPATH='' cd -- "$dir" && pwd)
  for i in "${MEMBERS[@]}"; do
    pid=$(member_pid "$dir" "$i") &&
      die "member e$i of $dir is still running (pid $pid); run: $0 stop $dir"
  done
  for i in "${MEMBERS[@]}"; do
    for p in "$(client_port "$i")" "$(peer_port "$i")"; do
      ! port_busy "$p" || die "$CLIENT_HOST:$p is already in use (another etcd cluster running?)"
    done
  done

  for i in "${MEMBERS[@]}"; do
    rm -rf "${dir:?}/e$i" "$dir/e$i.log" "$dir/e$i.pid"
    cluster+="${cluster:+,}e$i=$scheme://$CLIENT_HOST:$(peer_port "$i")"
  done
  # Whatever ends start before the cluster is healthy (an error, ^C) stops
  # the members it started. Until they have exec'd, the children are not yet
  # called etcd, so start tracks them by the pids it got, not by member_pid.
  STARTED=() START_DIR=$dir
  trap 'stop_pids ${STARTED[@]+"${STARTED[@]}"} 2>/dev/null || true
        for i in "${MEMBERS[@]}"; do rm -f "$START_DIR/e$i.pid"; done' EXIT
  for i in "${MEMBERS[@]}"; do
    mapfile -t tls < <(tls_flags "$i")
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "$scheme://$CLIENT_HOST:$(client_port "$i")" \
      --advertise-client-urls "$scheme://$CLIENT_HOST:$(client_port "$i")" \
      --listen-peer-urls "$scheme://$CLIENT_HOST:$(peer_port "$i")" \
      --initial-advertise-peer-urls "$scheme://$CLIENT_HOST:$(peer_port "$i")" \
      ${tls[@]+"${tls[@]}"} \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token flotilla-etcd3 \
      --quota-backend-bytes $((8 << 30)) \
      </dev/null >"$dir/e$i.log" 2>&1 &
    STARTED+=($!)
    echo $! >"$dir/e$i.pid"
  done

  deadline=$((SECONDS + START_WAIT))
  while :; do
    for i in "${MEMBERS[@]}"; do
      if ! alive "${STARTED[i - 1]}"; then
        die "member e$i exited during start-up
$(log_tails "$dir")"
      fi
    done
    ok=1
    ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" --dial-timeout=1s --command-timeout=2s \
      ${ctl[@]+"${ctl[@]}"} endpoint health >/dev/null 2>&1 || ok=0
    ((ok)) && break
    if ((SECONDS >= deadline)); then
      die "cluster not healthy after ${START_WAIT}s; stopping it
$(log_tails "$dir")"
    fi
    sleep 0.2
  done
  trap - EXIT
  echo "etcd3.sh: etcd ${version:-?} cluster healthy: clients $ENDPOINTS${CERTS_DIR:+ (TLS, certificates of $CERTS_DIR)}; data, logs and pids in $dir"
}

# --- main -------------------------------------------------------------------------

case ${1:-} in
  -h | --help) usage; exit 0 ;;
  start | stop) ;;
  "") short_usage; exit 2 ;;
  *) echo "etcd3.sh: unknown command '$1'" >&2; short_usage; exit 2 ;;
esac
(($# == 2)) || { echo "etcd3.sh: $1 takes one argument, DIR" >&2; short_usage; exit 2; }
[[ -n $2 ]] || die "DIR must not be empty"

case $1 in
  start) start "$2" ;;
  stop)
    if [[ -d $2 ]]; then
      stop_members "$2"
    else
      echo "etcd3.sh: $2 does not exist; nothing to stop"
    fi
    ;;
esac
