# Shared by the cluster-launching tools (sourced, not run; they define
# die): PIDS holds the processes of the nodes a tool started.
PIDS=()

# stop_nodes stops every process of PIDS: SIGTERM, up to 20 s each to exit,
# then SIGKILL; PIDS is empty after.
stop_nodes() {
  ((${#PIDS[@]})) || return 0
  kill -TERM "${PIDS[@]}" 2>/dev/null || true
  for p in "${PIDS[@]}"; do
    for ((t = 0; t < 200; t++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}

# NODE_CPU (optional): a CPU quota per node, in CPUs (e.g. 0.3). Each node
# a tool starts with launch then runs in a cgroup of its own capped at that
# share (cgroup v1 cpu.cfs_quota_us, or v2 cpu.max; needs root), as if each
# were its own machine. Without it, the nodes share this machine's CPUs, and
# a node more takes CPU from the others instead of adding its own.
#
# cap_init PREFIX: checks NODE_CPU and finds the cgroup cpu controller;
# the nodes' cgroups are PREFIX-nI. Call once, before launch; uncap (after
# the nodes stopped) removes them.
CGROUP="" CAPFILE="" CAPPREFIX=""
cap_init() {
  CAPPREFIX=$1
  [[ -n ${NODE_CPU:-} ]] || return 0
  python3 -c 'import sys; q = float(sys.argv[1]); sys.exit(0 if 0.01 <= q <= 64 else 1)' "$NODE_CPU" 2>/dev/null ||
    die "NODE_CPU=$NODE_CPU: want a number of CPUs from 0.01 to 64"
  if [[ -w /sys/fs/cgroup/cpu/cgroup.procs ]]; then
    CGROUP=/sys/fs/cgroup/cpu CAPFILE=cpu.cfs_quota_us
  elif [[ -w /sys/fs/cgroup/cgroup.procs ]] && grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    CGROUP=/sys/fs/cgroup CAPFILE=cpu.max
  else
    die "NODE_CPU: no writable cgroup cpu controller (cgroup v1 /sys/fs/cgroup/cpu, or v2 with cpu in cgroup.subtree_control; run as root)"
  fi
}

# cap I: makes node I's cgroup (with NODE_CPU) and prints its path; fails
# if it cannot (run in $(...), where set -e does not hold).
cap() {
  [[ -n $CGROUP ]] || return 0
  local g=$CGROUP/$CAPPREFIX-n$1 us
  mkdir -p "$g" || return 1
  us=$(python3 -c 'import sys; print(round(float(sys.argv[1]) * 100000))' "$NODE_CPU") || return 1 # per 100 ms
  if [[ $CAPFILE == cpu.max ]]; then
    echo "$us 100000" > "$g/cpu.max" || return 1
  else
    echo 100000 > "$g/cpu.cfs_period_us" || return 1
    echo "$us" > "$g/cpu.cfs_quota_us" || return 1
  fi
  echo "$g"
}

# uncap: removes the nodes' cgroups (their processes stopped).
uncap() {
  [[ -n $CGROUP ]] || return 0
  local g
  for g in "$CGROUP/$CAPPREFIX"-n*; do [[ ! -d $g ]] || rmdir "$g" 2>/dev/null || true; done
  return 0
}

# launch I LOG CMD...: runs CMD in the background as node I (in its cgroup,
# with NODE_CPU), its output appended to LOG; its PID joins PIDS.
launch() {
  local i=$1 log=$2 g; shift 2
  g=$(cap "$i") || die "node $i: cannot set its CPU quota (NODE_CPU=$NODE_CPU) under $CGROUP"
  ( [[ -z $g ]] || echo "$BASHPID" > "$g/cgroup.procs"; exec "$@" ) >> "$log" 2>&1 &
  PIDS+=($!)
}
