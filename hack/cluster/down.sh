#!/usr/bin/env bash
# Stops the cluster started by up.sh (the node agent, which stops its pods, then the control
# plane): only the processes named by the pid files in $KARTFLOW_DEV_DIR/cluster/run (and only
# while that pid still runs the binary that was started, per NAME.exe or else a binary called
# NAME), never anything found by name. SIGTERM, then SIGKILL after a grace period. Then pod
# processes a hard-killed agent left behind (marked in their environment) and pod addresses on lo.
# Keeps the state (etcd data, certificates) for a warm start unless --purge.
#
# Usage: hack/cluster/down.sh [--purge]
#   --purge  also delete ${KARTFLOW_DEV_DIR:-/tmp/kartflow-dev}/cluster (etcd data, PKI, logs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  *) die "unknown argument '$1'; usage: hack/cluster/down.sh [--purge]" ;;
esac

S="$CLUSTER_STATE_DIR"
RUN="${S}/run"
GRACE="${CLUSTER_STOP_GRACE:-20}"

# exe_of PID: the binary PID runs, without a " (deleted)" suffix; fails if PID is gone.
exe_of() {
  local exe
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  echo "${exe% (deleted)}"
}

# stop NAME: stop the process of NAME's pid file, if it is still the binary we started.
stop() {
  local name="$1" pidf="${RUN}/$1.pid" pid exe deadline want ok
  [[ -s "$pidf" ]] || return 0
  pid="$(<"$pidf")"
  if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
    log "ignoring malformed pid file ${pidf}"
    rm -f "$pidf" "${RUN}/${name}.exe" "${RUN}/${name}.args"
    return 0
  fi
  if ! exe="$(exe_of "$pid")"; then
    log "${name} (pid ${pid}) is not running"
    rm -f "$pidf" "${RUN}/${name}.exe" "${RUN}/${name}.args"
    return 0
  fi
  # The pid must still run the binary that was started: the full path recorded in NAME.exe by the
  # starter when present, else a binary called NAME. Otherwise the pid was reused: leave it alone.
  if [[ -s "${RUN}/${name}.exe" ]]; then
    want="$(<"${RUN}/${name}.exe")"
    ok=$([[ "$exe" == "$want" ]] && echo 1 || echo 0)
  else
    want="*/${name}"
    ok=$([[ "$(basename "$exe")" == "$name" ]] && echo 1 || echo 0)
  fi
  if [[ "$ok" != 1 ]]; then
    log "pid ${pid} from ${pidf} now runs ${exe}, not ${want}; leaving it alone"
    rm -f "$pidf" "${RUN}/${name}.exe" "${RUN}/${name}.args"
    return 0
  fi
  log "stopping ${name} (pid ${pid})"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + GRACE))
  while exe_of "$pid" >/dev/null && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if exe_of "$pid" >/dev/null; then
    log "${name} (pid ${pid}) did not stop within ${GRACE} s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while exe_of "$pid" >/dev/null; do sleep 0.1; done
  fi
  rm -f "$pidf" "${RUN}/${name}.exe" "${RUN}/${name}.args"
}

if [[ -d "$RUN" ]]; then
  # Reverse start order: clients first, etcd last. Pid files of other components (e.g. a node
  # agent that also keeps its pid file here) are stopped first of all.
  for f in "$RUN"/*.pid; do
    [[ -e "$f" ]] || continue
    n="$(basename "$f" .pid)"
    case "$n" in etcd | kube-apiserver | kube-controller-manager | kube-scheduler) ;; *) stop "$n" ;; esac
  done
  for n in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop "$n"
  done
else
  log "nothing to stop: ${RUN} does not exist"
fi

# The node agent stops its pods when it exits. Should it have died hard, its pod processes are
# found by the variable it puts in every pod process's environment (never by name) and killed,
# and the pod addresses it put on lo are removed.
orphans=0
for envf in /proc/[0-9]*/environ; do
  pid="${envf#/proc/}"
  pid="${pid%/environ}"
  [[ "$pid" != "$$" ]] || continue
  if { tr '\0' '\n' <"$envf"; } 2>/dev/null | grep -q "^KARTFLOW_NODEAGENT_POD=${CLUSTER_NODE_NAME}/"; then
    kill -KILL "$pid" 2>/dev/null && orphans=$((orphans + 1))
  fi
done
((orphans == 0)) || log "killed ${orphans} pod process(es) left behind by the node agent"
if command -v ip >/dev/null && [[ "$CLUSTER_POD_CIDR" =~ ^([0-9]+\.[0-9]+\.[0-9]+\.)0/ ]]; then
  prefix="${BASH_REMATCH[1]}"
  for a in $(ip -o -4 addr show dev lo | awk '{print $4}'); do
    if [[ "$a" == "${prefix}"*/32 ]]; then
      ip addr del "$a" dev lo 2>/dev/null && log "removed pod address ${a} from lo"
    fi
  done
fi

if ((purge)); then
  [[ "$S" == */cluster ]] || die "refusing to purge ${S}: it does not end in /cluster"
  log "deleting ${S}"
  rm -rf "$S"
fi
log "cluster stopped"
