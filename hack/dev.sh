#!/usr/bin/env bash
# The local data stack on loopback: Apache Kafka (KRaft), PostgreSQL (wal_level=logical), an
# S3-compatible object store for savepoints (s3s-fs) and an OCI image registry for the images.
#   hack/dev.sh up       start all four (idempotent: running parts are left alone)
#   hack/dev.sh down     stop what these scripts started (by pid file, never by process name)
#   hack/dev.sh status   report each; exits non-zero unless all run
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  up)
    "$HERE/postgres/postgres.sh" up
    "$HERE/kafka/kafka.sh" up
    "$HERE/s3/s3.sh" up
    "$HERE/registry/registry.sh" up
    "$HERE/env.sh"
    ;;
  down)
    rc=0
    "$HERE/registry/registry.sh" down || rc=1
    "$HERE/s3/s3.sh" down || rc=1
    "$HERE/kafka/kafka.sh" down || rc=1
    "$HERE/postgres/postgres.sh" down || rc=1
    exit $rc
    ;;
  status)
    rc=0
    "$HERE/kafka/kafka.sh" status || rc=1
    "$HERE/postgres/postgres.sh" status || rc=1
    "$HERE/s3/s3.sh" status || rc=1
    "$HERE/registry/registry.sh" status || rc=1
    exit $rc
    ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
