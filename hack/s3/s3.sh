#!/usr/bin/env bash
# An S3-compatible object store on loopback, for savepoints: s3s-fs (crates.io), which serves a
# directory as buckets. Built once with `cargo install`, cached by version outside the work tree.
#   hack/s3/s3.sh up|down|status   start, stop (by pid file) or report the server
set -euo pipefail
COMPONENT=s3
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

S3_DIR=$KARTFLOW_DEV_DIR/s3
DATA=$S3_DIR/data
PIDFILE=$S3_DIR/s3.pid
LOGFILE=$S3_DIR/s3.log
BIN_ROOT=$KARTFLOW_CACHE_DIR/s3s-fs-$S3S_FS_VERSION
BIN=$BIN_ROOT/bin/s3s-fs
HOSTPORT=${S3_ENDPOINT#http://}
S3_HOST=${HOSTPORT%:*}
S3_PORT=${HOSTPORT##*:}
START_TIMEOUT=${S3_START_TIMEOUT:-30}

fetch() {
  [ -x "$BIN" ] && return
  command -v cargo >/dev/null || die "cargo is needed to build s3s-fs: make toolchain"
  log "building s3s-fs $S3S_FS_VERSION from crates.io into $BIN_ROOT (once; a few minutes)"
  cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$BIN_ROOT" \
    >"$KARTFLOW_CACHE_DIR/s3s-fs-build.log" 2>&1 \
    || { tail -n 20 "$KARTFLOW_CACHE_DIR/s3s-fs-build.log" >&2; die "building s3s-fs failed (log tail above)"; }
}

running() { pid_alive "$PIDFILE" "$DATA"; }

up() {
  if running; then log "already running (pid $(cat "$PIDFILE")) at $S3_ENDPOINT"; return; fi
  if port_open "$S3_HOST" "$S3_PORT"; then
    die "port $S3_PORT is taken by a process this script did not start; stop it or set S3_ENDPOINT to another address in hack/stack.env"
  fi
  mkdir -p "$KARTFLOW_CACHE_DIR"
  fetch
  # A bucket is a directory of the root.
  mkdir -p "$DATA/$S3_BUCKET"
  log "starting s3s-fs $S3S_FS_VERSION at $S3_ENDPOINT, bucket $S3_BUCKET (data: $DATA)"
  # env -C: the server's working directory is its own, not the caller's work tree (s3s-fs failed
  # every PUT once the clone that started it was deleted).
  setsid nohup env -C "$S3_DIR" "$BIN" --host "$S3_HOST" --port "$S3_PORT" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$DATA" \
    >"$LOGFILE" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  local start=$SECONDS pid
  pid=$(cat "$PIDFILE")
  until port_open "$S3_HOST" "$S3_PORT"; do
    # kill -0, not running(): until the child has exec'd, its command line is still this shell's.
    if ! kill -0 "$pid" 2>/dev/null; then tail -n 20 "$LOGFILE" >&2 || true; die "s3s-fs exited during start-up (log tail above)"; fi
    if (( SECONDS - start >= START_TIMEOUT )); then die "s3s-fs did not listen within $START_TIMEOUT s (log: $LOGFILE)"; fi
    sleep 0.2
  done
  log "ready after $((SECONDS - start)) s (pid $(cat "$PIDFILE"))"
}

down() {
  if ! running; then log "not running"; rm -f "$PIDFILE"; return; fi
  stop_pid "$PIDFILE" 5
}

status() {
  if running; then
    echo "s3: running (pid $(cat "$PIDFILE")), s3s-fs $S3S_FS_VERSION, at $S3_ENDPOINT, bucket $S3_BUCKET"
  else
    echo "s3: stopped"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  fetch) fetch ;;
  *) echo "usage: $0 up|down|status|fetch" >&2; exit 2 ;;
esac
