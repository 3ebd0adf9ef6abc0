# Shared by the cluster-launching tools (sourced, not run): PIDS holds the
# processes of the nodes a tool started.
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
