#!/usr/bin/env bash
# Builds the process node agent (hack/cluster/nodeagent: `nodeagent` and the test image program
# `testhttp`) into a cache outside the work tree, keyed by a hash of the agent's sources:
#   ${KARTFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/kartflow}/cluster-bin/nodeagent/<key>/
# Does nothing when that entry exists. Prints the directory on stdout; progress goes to stderr.
#
# Usage: hack/cluster/build-nodeagent.sh [--print-dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_nodeagent_dir

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$NODEAGENT_BIN_DIR"
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1'; usage: hack/cluster/build-nodeagent.sh [--print-dir]"
nodeagent_present() { [[ -f "${NODEAGENT_BIN_DIR}/.complete" && -x "${NODEAGENT_BIN_DIR}/nodeagent" && -x "${NODEAGENT_BIN_DIR}/testhttp" ]]; }
if nodeagent_present; then
  log "node agent for the current sources is cached in ${NODEAGENT_BIN_DIR}"
  echo "$NODEAGENT_BIN_DIR"
  exit 0
fi

require_cmd go sha256sum flock
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0
root="$(dirname "$NODEAGENT_BIN_DIR")"
mkdir -p "$root"
exec 9>"${root}/.build.lock"
if ! flock -n 9; then
  log "another node agent build is running (lock ${root}/.build.lock); waiting for it"
  flock 9
fi
if nodeagent_present; then
  echo "$NODEAGENT_BIN_DIR"
  exit 0
fi
out="${NODEAGENT_BIN_DIR}.tmp.$$"
rm -rf "$out"
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
t0=$SECONDS
log "building the node agent into ${NODEAGENT_BIN_DIR} (cold: a few minutes on 2 cores)"
cd "${CLUSTER_HACK_DIR}/nodeagent"
# The agent's unit tests run once per source hash, with the build they guard.
go test ./... >&2 || die "the node agent's unit tests failed (go test in hack/cluster/nodeagent, see above)"
go build -trimpath -ldflags "-s -w" -o "${out}/" . ./testhttp ||
  die "building hack/cluster/nodeagent failed (see above); the module proxy must be reachable for a first build"
[[ -x "${out}/nodeagent" && -x "${out}/testhttp" ]] || die "go build finished but ${out} lacks nodeagent or testhttp"
echo "BUILD_SECONDS=$((SECONDS - t0))" >"${out}/BUILDINFO"
touch "${out}/.complete"
rm -rf "$NODEAGENT_BIN_DIR"
mv "$out" "$NODEAGENT_BIN_DIR"
trap - EXIT
# Keep only the newest few entries: every source edit makes a new one.
find "$root" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- |
  xargs -r rm -rf
log "node agent built in $((SECONDS - t0)) s: ${NODEAGENT_BIN_DIR}"
echo "$NODEAGENT_BIN_DIR"
