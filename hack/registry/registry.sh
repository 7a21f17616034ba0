#!/usr/bin/env bash
# An OCI image registry on loopback, holding the images make images builds (make test pushes them
# here): go-containerregistry's registry (`crane registry serve`, from Go modules, built once and
# cached by hack/images/push.sh), storing blobs on disk under the stack's directory.
#   hack/registry/registry.sh up|down|status   start, stop (by pid file) or report the registry
set -euo pipefail
COMPONENT=registry
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

REG_DIR=$KARTFLOW_DEV_DIR/registry
DATA=$REG_DIR/data
PIDFILE=$REG_DIR/registry.pid
LOGFILE=$REG_DIR/registry.log
REG_HOST=${REGISTRY_ADDR%:*}
REG_PORT=${REGISTRY_ADDR##*:}
START_TIMEOUT=${REGISTRY_START_TIMEOUT:-30}

running() { pid_alive "$PIDFILE" "$DATA"; }

up() {
  if running; then log "already running (pid $(cat "$PIDFILE")) at $REGISTRY_ADDR"; return; fi
  if port_open "$REG_HOST" "$REG_PORT"; then
    die "port $REG_PORT is taken by a process this script did not start; stop it or set REGISTRY_ADDR to another address in hack/stack.env"
  fi
  local crane
  crane=$("$HACK_DIR/images/push.sh" --crane-path) || die "could not build crane (see above)"
  mkdir -p "$DATA"
  log "starting the image registry at $REGISTRY_ADDR (crane registry serve; blobs: $DATA)"
  spawn_daemon "$REG_DIR" "$PIDFILE" "$LOGFILE" \
    "$crane" registry serve --address "$REGISTRY_ADDR" --disk "$DATA"
  await_daemon "$PIDFILE" "$START_TIMEOUT" "the registry" "$LOGFILE" port_open "$REG_HOST" "$REG_PORT"
}

down() {
  if ! running; then log "not running"; rm -f "$PIDFILE"; return; fi
  stop_pid "$PIDFILE" 5
}

status() {
  if running; then
    echo "registry: running (pid $(cat "$PIDFILE")), crane registry serve, at $REGISTRY_ADDR"
  else
    echo "registry: stopped"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
