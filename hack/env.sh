#!/usr/bin/env bash
# Prints the local stack's connection settings as KEY=VALUE lines.
#   eval "$(hack/env.sh)"   # export them into your shell
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
for key in KAFKA_BOOTSTRAP DATABASE_URL PG_PORT PG_DATABASE PG_USER KAFKA_VERSION S3_ENDPOINT S3_BUCKET REGISTRY_ADDR KARTFLOW_DEV_DIR; do
  printf 'export %s=%q\n' "$key" "${!key}"
done
