#!/usr/bin/env bash
# Builds metrics-server (sigs.k8s.io/metrics-server at METRICS_SERVER_VERSION in versions.env, through
# the module hack/cluster/build/metrics-server) into a cache outside the work tree, keyed by that pin
# and the module files:
#   ${KARTFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/kartflow}/cluster-bin/metrics-server/<key>/
# Does nothing when that entry is complete. Prints the directory on stdout; progress goes to stderr.
#
# Usage: hack/cluster/build-metrics-server.sh [--print-dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_metrics_server_dir

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$METRICS_SERVER_BIN_DIR"
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1'; usage: hack/cluster/build-metrics-server.sh [--print-dir]"
present() { [[ -f "${METRICS_SERVER_BIN_DIR}/.complete" && -x "${METRICS_SERVER_BIN_DIR}/metrics-server" ]]; }
if present; then
  log "metrics-server ${METRICS_SERVER_VERSION} is cached in ${METRICS_SERVER_BIN_DIR}"
  echo "$METRICS_SERVER_BIN_DIR"
  exit 0
fi

require_cmd go sha256sum flock
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0
mod_dir="${CLUSTER_BUILD_DIR}/metrics-server"
grep -q -E "^(require)?[[:space:]]+sigs\.k8s\.io/metrics-server ${METRICS_SERVER_VERSION}( // indirect)?\$" "${mod_dir}/go.mod" ||
  die "hack/cluster/build/metrics-server/go.mod does not require sigs.k8s.io/metrics-server ${METRICS_SERVER_VERSION} (versions.env); run hack/cluster/build/update-modules.sh"
root="$(dirname "$METRICS_SERVER_BIN_DIR")"
mkdir -p "$root"
exec 9>"${root}/.build.lock"
if ! flock -n 9; then
  log "another metrics-server build is running (lock ${root}/.build.lock); waiting for it"
  flock 9
fi
if present; then
  echo "$METRICS_SERVER_BIN_DIR"
  exit 0
fi
out="${METRICS_SERVER_BIN_DIR}.tmp.$$"
rm -rf "$out"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
t0=$SECONDS
log "building metrics-server ${METRICS_SERVER_VERSION} into ${METRICS_SERVER_BIN_DIR} (cold: several minutes on 2 cores)"
cd "$mod_dir"
# Upstream's Makefile: client-go's version variables carry the release; buildDate is the release's
# publish time from the module proxy (deterministic, not "now").
info="$(go mod download -json "sigs.k8s.io/metrics-server@${METRICS_SERVER_VERSION}")" ||
  die "cannot download sigs.k8s.io/metrics-server@${METRICS_SERVER_VERSION} from the module proxy"
info_file="$(sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p' <<<"$info")"
build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info_file")"
pkg=k8s.io/client-go/pkg/version
ldflags="-s -w -X ${pkg}.gitVersion=${METRICS_SERVER_VERSION} -X ${pkg}.gitCommit= -X ${pkg}.buildDate=${build_date:-1970-01-01T00:00:00Z}"
go build -mod=readonly -trimpath -ldflags "$ldflags" -o "${out}/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server ||
  die "building metrics-server failed (see above); the module proxy must be reachable for a first build"
"${out}/metrics-server" --version >/dev/null 2>&1 || die "the built metrics-server does not run (${out}/metrics-server --version)"
{
  echo "METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION}"
  echo "GO_VERSION=$(go version | cut -d' ' -f3)"
  echo "BUILD_SECONDS=$((SECONDS - t0))"
} >"${out}/BUILDINFO"
touch "${out}/.complete"
rm -rf "$METRICS_SERVER_BIN_DIR"
mv "$out" "$METRICS_SERVER_BIN_DIR"
trap - EXIT
# Keep only the newest two entries (a pin change makes a new one).
find "$root" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp.*' -printf '%T@ %p\n' | sort -rn | tail -n +3 | cut -d' ' -f2- |
  xargs -r rm -rf
log "metrics-server ${METRICS_SERVER_VERSION} built in $((SECONDS - t0)) s: ${METRICS_SERVER_BIN_DIR}"
echo "$METRICS_SERVER_BIN_DIR"
