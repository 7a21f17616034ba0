#!/usr/bin/env bash
# The local data stack: Apache Kafka (KRaft) and PostgreSQL (wal_level=logical) on loopback.
#   hack/dev.sh up       start both (idempotent: running parts are left alone)
#   hack/dev.sh down     stop what these scripts started (by pid file, never by process name)
#   hack/dev.sh status   report both; exits non-zero unless both run
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  up)
    "$HERE/postgres/postgres.sh" up
    "$HERE/kafka/kafka.sh" up
    "$HERE/env.sh"
    ;;
  down)
    rc=0
    "$HERE/kafka/kafka.sh" down || rc=1
    "$HERE/postgres/postgres.sh" down || rc=1
    exit $rc
    ;;
  status)
    rc=0
    "$HERE/kafka/kafka.sh" status || rc=1
    "$HERE/postgres/postgres.sh" status || rc=1
    exit $rc
    ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
