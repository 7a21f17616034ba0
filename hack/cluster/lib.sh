# shellcheck shell=bash
# Shared helpers for hack/cluster/*.sh. Sourced, not executed.

CLUSTER_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER_BUILD_DIR="${CLUSTER_HACK_DIR}/build"

log() { printf '%s [cluster] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  printf '%s [cluster] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
  exit 1
}

# load_env FILE [--pins]: export every KEY=VALUE line of FILE unless KEY is already set in the
# environment (so any setting can be overridden from outside). With --pins the file always wins:
# the pins live in one place and the binary cache is keyed by that file. No shell evaluation.
load_env() {
  local file="$1" force="${2:-}" line key val
  [[ -r "$file" ]] || die "cannot read ${file}"
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || die "${file}: not a KEY=VALUE line: ${line}"
    key="${BASH_REMATCH[1]}"
    val="${BASH_REMATCH[2]}"
    if [[ -z "${!key+x}" || "$force" == --pins ]]; then
      export "${key}=${val}"
    fi
  done <"$file"
}

load_env "${CLUSTER_HACK_DIR}/versions.env" --pins
load_env "${CLUSTER_HACK_DIR}/cluster.env"

# The binary cache key: the pins and the exact module files that are built. Pins are read from the
# file (not the environment) so an override cannot silently poison a cache entry.
cluster_bin_key() {
  {
    # The add-on pins at the end of versions.env have their own cache entries.
    sed '/^# --- add-ons/,$d' "${CLUSTER_HACK_DIR}/versions.env"
    cat \
      "${CLUSTER_BUILD_DIR}/kubernetes/go.mod" "${CLUSTER_BUILD_DIR}/kubernetes/go.sum" \
      "${CLUSTER_BUILD_DIR}/etcd/go.mod" "${CLUSTER_BUILD_DIR}/etcd/go.sum" "${CLUSTER_BUILD_DIR}/etcd/main.go"
  } | sha256sum | cut -c1-16
}

CLUSTER_CACHE_ROOT="${KARTFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/kartflow}/cluster-bin"

# init_bin_dir: sets CLUSTER_BIN_DIR (overridable from the environment) to the cache entry of the
# current pins.
init_bin_dir() {
  local f
  for f in kubernetes/go.mod kubernetes/go.sum etcd/go.mod etcd/go.sum etcd/main.go; do
    [[ -r "${CLUSTER_BUILD_DIR}/${f}" ]] ||
      die "missing hack/cluster/build/${f}; run hack/cluster/build/update-modules.sh"
  done
  CLUSTER_BIN_DIR="${CLUSTER_BIN_DIR:-${CLUSTER_CACHE_ROOT}/$(cluster_bin_key)}"
}

KARTFLOW_DEV_DIR="${KARTFLOW_DEV_DIR:-/tmp/kartflow-dev}"
CLUSTER_STATE_DIR="${CLUSTER_STATE_DIR:-${KARTFLOW_DEV_DIR}/cluster}"
# shellcheck disable=SC2034 # used by the scripts that source this file
CLUSTER_KUBECONFIG="${CLUSTER_STATE_DIR}/admin.kubeconfig"

# The binaries every script needs; build.sh produces exactly these.
CLUSTER_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)

cluster_bins_present() {
  local b
  [[ -f "${CLUSTER_BIN_DIR}/.complete" ]] || return 1
  for b in "${CLUSTER_BINARIES[@]}"; do
    [[ -x "${CLUSTER_BIN_DIR}/${b}" ]] || return 1
  done
}

require_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "'${c}' is not installed; install it (e.g. apt-get install ${c}) and retry"
  done
}

# The process node agent (hack/cluster/nodeagent) has its own cache entry, keyed by its sources,
# so editing it rebuilds only the agent.
init_nodeagent_dir() {
  local src="${CLUSTER_HACK_DIR}/nodeagent" key
  [[ -r "${src}/go.mod" && -r "${src}/go.sum" ]] || die "missing ${src}/go.mod or go.sum"
  key="$(cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-16)"
  NODEAGENT_BIN_DIR="${NODEAGENT_BIN_DIR:-${CLUSTER_CACHE_ROOT}/nodeagent/${key}}"
}

# metrics-server (an add-on) has its own cache entry, keyed by its pin and module files:
#   cluster-bin/metrics-server/<key>/metrics-server
init_metrics_server_dir() {
  local d="${CLUSTER_BUILD_DIR}/metrics-server" key
  [[ -r "${d}/go.mod" && -r "${d}/go.sum" ]] ||
    die "missing hack/cluster/build/metrics-server/go.mod or go.sum; run hack/cluster/build/update-modules.sh"
  key="$(
    {
      echo "METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION}"
      grep -E '^BUILD_RECIPE=' "${CLUSTER_HACK_DIR}/versions.env"
      cat "${d}/go.mod" "${d}/go.sum"
    } | sha256sum | cut -c1-16
  )"
  METRICS_SERVER_BIN_DIR="${METRICS_SERVER_BIN_DIR:-${CLUSTER_CACHE_ROOT}/metrics-server/${key}}"
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD until it succeeds; on timeout calls the sourcing
# script's `fail` (smoke.sh, e2e.sh) so the failure carries that script's context.
wait_for() {
  local limit="$1" what="$2" deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${limit} s waiting for ${what}"
    sleep 0.5
  done
}
