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
  spawn_daemon "$S3_DIR" "$PIDFILE" "$LOGFILE" "$BIN" --host "$S3_HOST" --port "$S3_PORT" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$DATA"
  await_daemon "$PIDFILE" "$START_TIMEOUT" s3s-fs "$LOGFILE" port_open "$S3_HOST" "$S3_PORT"
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
