#!/usr/bin/env bash
# Prints how to use the local test cluster from a shell:
#   eval "$(hack/cluster/env.sh)"      -> sets KUBECONFIG and puts kubectl/helm/... on PATH
#   hack/cluster/env.sh --plain        -> KEY=VALUE lines (KUBECONFIG, CLUSTER_BIN_DIR, ...) for programs
# Works whether or not the cluster is running (it warns on stderr when it is not up).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_bin_dir

mode="${1:-shell}"
case "$mode" in shell | --plain) ;; *) die "usage: hack/cluster/env.sh [--plain]" ;; esac

cluster_bins_present || log "note: binaries not built yet (${CLUSTER_BIN_DIR}); run hack/cluster/build.sh or up.sh"
[[ -s "$CLUSTER_KUBECONFIG" ]] || log "note: ${CLUSTER_KUBECONFIG} does not exist yet; run hack/cluster/up.sh"

q() { printf '%q' "$1"; }
if [[ "$mode" == --plain ]]; then
  echo "KUBECONFIG=${CLUSTER_KUBECONFIG}"
  echo "CLUSTER_BIN_DIR=${CLUSTER_BIN_DIR}"
  echo "CLUSTER_STATE_DIR=${CLUSTER_STATE_DIR}"
  echo "CLUSTER_APISERVER=https://127.0.0.1:${CLUSTER_APISERVER_PORT}"
else
  echo "export KUBECONFIG=$(q "$CLUSTER_KUBECONFIG")"
  echo "export PATH=$(q "$CLUSTER_BIN_DIR"):\"\$PATH\""
fi
