#!/usr/bin/env bash
# kartflow's Prometheus alerts (charts/kartflow/files/prometheus-rules.yaml), checked with the
# Prometheus project's own tool: `promtool check rules` (syntax, PromQL, templates) and
# `promtool test rules hack/prometheus/rules.test.yaml` (each alert fires on the series it is
# about, after its `for`, with its labels and annotations, and stays quiet otherwise).
# promtool is built from the Prometheus Go module once and cached. make test runs this.
set -euo pipefail
COMPONENT=prometheus
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

PROMETHEUS_MODULE_VERSION=v0.316.0 # Prometheus 3.16's Go module version
promtool=$KARTFLOW_CACHE_DIR/promtool-$PROMETHEUS_MODULE_VERSION/promtool
if [ ! -x "$promtool" ]; then
  command -v go >/dev/null || die "go not found: promtool is built from the Prometheus Go module"
  log "building promtool ($PROMETHEUS_MODULE_VERSION) from Go modules; a few minutes, once"
  GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN=$(dirname "$promtool") \
    go install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" >&2 \
    || die "could not build promtool $PROMETHEUS_MODULE_VERSION (Go module proxy reachable?)"
fi
rules=$REPO_DIR/charts/kartflow/files/prometheus-rules.yaml
"$promtool" check rules "$rules" >&2 || die "promtool check rules $rules failed (above)"
"$promtool" test rules "$HACK_DIR/prometheus/rules.test.yaml" >&2 \
  || die "promtool test rules hack/prometheus/rules.test.yaml failed (above)"
log "alerts checked and unit-tested with promtool"
