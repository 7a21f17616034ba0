# Shared helpers for kartflow's hack/ scripts. Source it; do not run it.
# shellcheck shell=bash

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HACK_DIR/.." && pwd)

# Pins and connection settings: hack/stack.env, each overridable from the environment.
while IFS='=' read -r key value; do
  case "$key" in ''|'#'*) continue ;; esac
  if [ -z "${!key:-}" ]; then export "$key=$value"; fi
done < "$HACK_DIR/stack.env"

# Runtime state (data, logs, pid files) lives outside the work tree so a fresh clone finds a
# running stack and reuses it; caches (jars, binaries) live under the user's cache directory.
export KARTFLOW_DEV_DIR=${KARTFLOW_DEV_DIR:-/tmp/kartflow-dev}
export KARTFLOW_CACHE_DIR=${KARTFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kartflow}

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "${COMPONENT:-hack}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive PIDFILE MARKER: true when the pid file names a live process whose command line
# contains MARKER (guards against a stale file whose pid now belongs to someone else).
pid_alive() {
  local pidfile=$1 marker=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(head -n1 "$pidfile")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# stop_pid PIDFILE GRACE_S: SIGTERM the process the pid file names, SIGKILL it if it is still
# there after GRACE_S seconds, then remove the pid file. Call it only after pid_alive said yes.
stop_pid() {
  local pidfile=$1 grace=$2 pid
  pid=$(cat "$pidfile")
  log "stopping pid $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 "$grace"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then log "still running after $grace s; killing"; kill -KILL "$pid"; fi
  rm -f "$pidfile"
}

# spawn_daemon DIR PIDFILE LOGFILE COMMAND...: starts COMMAND in a session of its own (it outlives
# this shell and a Ctrl-C in it; stopped by pid file only), with DIR as its working directory,
# never the caller's work tree (s3s-fs failed every write once the clone that started it was
# deleted), output to LOGFILE, and writes its pid to PIDFILE.
spawn_daemon() {
  local dir=$1 pidfile=$2 logfile=$3
  shift 3
  setsid nohup env -C "$dir" "$@" >"$logfile" 2>&1 </dev/null &
  echo $! > "$pidfile"
}

# await_daemon PIDFILE TIMEOUT_S WHAT LOGS READY_COMMAND...: polls READY_COMMAND until it
# succeeds; dies naming WHAT, with the tail of LOGS (space-separated files), if the process exits
# or TIMEOUT_S passes first. Uses kill -0: until the child has exec'd, its command line is still
# this shell's, so pid_alive's marker would not match yet.
await_daemon() {
  local pidfile=$1 timeout=$2 what=$3 logs=$4 start=$SECONDS pid
  shift 4
  pid=$(cat "$pidfile")
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      # shellcheck disable=SC2086
      tail -n 30 $logs >&2 2>/dev/null || true
      die "$what exited during start-up (log tail above)"
    fi
    if (( SECONDS - start >= timeout )); then
      # shellcheck disable=SC2086
      tail -n 30 $logs >&2 2>/dev/null || true
      die "$what was not ready within $timeout s (log tail above)"
    fi
    sleep 0.2
  done
  log "ready after $((SECONDS - start)) s (pid $pid)"
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: polls COMMAND once a second.
wait_until() {
  local timeout=$1 what=$2 start=$SECONDS
  shift 2
  until "$@"; do
    if (( SECONDS - start >= timeout )); then return 1; fi
    sleep 1
  done
  log "$what after $((SECONDS - start)) s"
}

# apt_install PKG...: installs Debian packages when we are root; otherwise says what to run.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    die "missing packages: $*. Install them with: sudo apt-get install -y $*"
  fi
  log "installing Debian packages: $*"
  if [ ! -f "$KARTFLOW_DEV_DIR/.apt-updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    mkdir -p "$KARTFLOW_DEV_DIR" && touch "$KARTFLOW_DEV_DIR/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
    || die "apt-get install $* failed"
}
