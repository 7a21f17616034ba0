#!/usr/bin/env bash
# Builds the local test cluster's binaries from Go modules, at the pins in hack/cluster/versions.env:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm
# into a cache outside the work tree, keyed by the pins and module files:
#   ${KARTFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/kartflow}/cluster-bin/<key>/
# Does nothing when that entry is complete. Prints the directory on stdout; progress goes to stderr.
#
# Usage: hack/cluster/build.sh [--print-dir]
#   --print-dir  only print the cache directory for the current pins (built or not) and exit.
# Env:   CLUSTER_BUILD_FORCE=1 rebuilds even if the cache entry exists.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_bin_dir

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$CLUSTER_BIN_DIR"
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1'; usage: hack/cluster/build.sh [--print-dir]"

if [[ "${CLUSTER_BUILD_FORCE:-0}" != 1 ]] && cluster_bins_present; then
  log "binaries for the current pins are cached in ${CLUSTER_BIN_DIR}"
  echo "$CLUSTER_BIN_DIR"
  exit 0
fi

require_cmd go sha256sum flock
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0

mkdir -p "$CLUSTER_CACHE_ROOT"
# One build per cache root at a time (tests and a user may call this together).
exec 9>"${CLUSTER_CACHE_ROOT}/.build.lock"
if ! flock -n 9; then
  log "another build is running (lock ${CLUSTER_CACHE_ROOT}/.build.lock); waiting for it"
  flock 9
fi
if [[ "${CLUSTER_BUILD_FORCE:-0}" != 1 ]] && cluster_bins_present; then
  log "binaries were built by the other run: ${CLUSTER_BIN_DIR}"
  echo "$CLUSTER_BIN_DIR"
  exit 0
fi

k8s_ver="${KUBERNETES_VERSION}"
[[ "$k8s_ver" =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "KUBERNETES_VERSION=${k8s_ver} is not vX.Y.Z"
k8s_major="${BASH_REMATCH[1]}" k8s_minor="${BASH_REMATCH[2]}"
grep -q -E "^(require)?[[:space:]]+k8s\.io/kubernetes ${k8s_ver}( // indirect)?\$" "${CLUSTER_BUILD_DIR}/kubernetes/go.mod" ||
  die "hack/cluster/build/kubernetes/go.mod does not require k8s.io/kubernetes ${k8s_ver} (versions.env); run hack/cluster/build/update-modules.sh"
grep -q -E "^(require)?[[:space:]]+go\.etcd\.io/etcd/server/v3 ${ETCD_VERSION}( // indirect)?\$" "${CLUSTER_BUILD_DIR}/etcd/go.mod" ||
  die "hack/cluster/build/etcd/go.mod does not require go.etcd.io/etcd/server/v3 ${ETCD_VERSION} (versions.env); run hack/cluster/build/update-modules.sh"

out="${CLUSTER_BIN_DIR}.tmp.$$"
logs="${CLUSTER_CACHE_ROOT}/build-logs"
rm -rf "$out"
mkdir -p "$out" "$logs"
trap 'rm -rf "$out"' EXIT

t_all=$SECONDS
log "cold build into ${CLUSTER_BIN_DIR} with $(go version | cut -d' ' -f3); this takes a long while on few cores"

# go_build_progress NAME LOGFILE TOTAL -- CMD...: runs CMD (a `go build -v ...`) with its package list
# in LOGFILE and reports how far it got every 30 s, so a long build is visibly alive.
go_build_progress() {
  local name="$1" logf="$2" total="$3" t0=$SECONDS pid rc
  shift 4
  "$@" 2>"$logf" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do
      sleep 1
      kill -0 "$pid" 2>/dev/null || break
    done
    kill -0 "$pid" 2>/dev/null &&
      log "${name}: $(grep -c -v '^#' "$logf" || true)/${total} packages compiled, $((SECONDS - t0)) s"
  done
  rc=0
  wait "$pid" || rc=$?
  if ((rc != 0)); then
    grep -v -E '^[a-zA-Z0-9._/-]+$' "$logf" | tail -40 >&2 || true
    die "${name}: go build failed (exit ${rc}); full log: ${logf}"
  fi
  log "${name}: built in $((SECONDS - t0)) s"
}

# --- Kubernetes (one `go build` for all four so shared packages compile once) -----------------
# Same version variables, tags and flags as upstream's hack/lib/version.sh + hack/lib/golang.sh.
# The module zip has no git metadata: gitCommit stays empty, buildDate is the release's publish
# time from the module proxy (deterministic, not "now").
k8s_info="$(go mod download -json "k8s.io/kubernetes@${k8s_ver}")" ||
  die "cannot download k8s.io/kubernetes@${k8s_ver} from the module proxy"
k8s_info_file="$(sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p' <<<"$k8s_info")"
build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$k8s_info_file")"
build_date="${build_date:-1970-01-01T00:00:00Z}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X ${pkg}.gitVersion=${k8s_ver}"
  k8s_ldflags+=" -X ${pkg}.gitMajor=${k8s_major} -X ${pkg}.gitMinor=${k8s_minor}"
  k8s_ldflags+=" -X ${pkg}.gitCommit= -X ${pkg}.gitTreeState=clean"
  k8s_ldflags+=" -X ${pkg}.buildDate=${build_date}"
done
k8s_tags="selinux,notest,grpcnotrace"
k8s_cmds=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
cd "${CLUSTER_BUILD_DIR}/kubernetes"
log "kubernetes ${k8s_ver}: downloading modules"
go mod download || die "go mod download failed in hack/cluster/build/kubernetes (module proxy reachable?)"
k8s_total="$(go list -tags "$k8s_tags" -deps "${k8s_cmds[@]}" | grep -c .)"
log "kubernetes ${k8s_ver}: compiling ${k8s_total} packages for ${k8s_cmds[*]##*/}"
go_build_progress "kubernetes ${k8s_ver}" "${logs}/kubernetes.log" "$k8s_total" -- \
  go build -v -trimpath -tags "$k8s_tags" -ldflags "all=${k8s_ldflags}" -o "${out}/" "${k8s_cmds[@]}"

# --- etcd --------------------------------------------------------------------------------------
cd "${CLUSTER_BUILD_DIR}/etcd"
log "etcd ${ETCD_VERSION}: downloading modules"
go mod download || die "go mod download failed in hack/cluster/build/etcd"
etcd_total="$(go list -deps . | grep -c .)"
go_build_progress "etcd ${ETCD_VERSION}" "${logs}/etcd.log" "$etcd_total" -- \
  go build -v -trimpath -ldflags "-s -w" -o "${out}/etcd" .

# --- helm --------------------------------------------------------------------------------------
# Upstream's Makefile: version vars in internal/version, and the default Kubernetes version (used by
# `helm template`/`lint` without a cluster) derived from the k8s.io/client-go helm is built with.
cd "$CLUSTER_HACK_DIR"
helm_mod="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[[ -r "$helm_mod" ]] || die "cannot download helm.sh/helm/v3@${HELM_VERSION} from the module proxy"
helm_cg="$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$helm_mod" | head -1)"
[[ -n "$helm_cg" ]] || die "cannot find k8s.io/client-go in ${helm_mod}"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${helm_cg}"
done
go_build_progress "helm ${HELM_VERSION}" "${logs}/helm.log" "?" -- \
  env GOBIN="$out" go install -v -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

# --- check and publish ---------------------------------------------------------------------------
for b in "${CLUSTER_BINARIES[@]}"; do
  [[ -x "${out}/${b}" ]] || die "build finished but ${b} is missing from ${out}"
done
# Captured first: `grep -q` stops reading at the match, and under pipefail kubectl's SIGPIPE on
# its next line would fail the check at random.
kubectl_version="$("${out}/kubectl" version --client 2>&1)" || die "built kubectl does not run: ${kubectl_version}"
grep -qF "${k8s_ver}" <<<"$kubectl_version" || die "built kubectl does not report ${k8s_ver}: ${kubectl_version}"
{
  echo "KUBERNETES_VERSION=${k8s_ver}"
  echo "ETCD_VERSION=${ETCD_VERSION}"
  echo "HELM_VERSION=${HELM_VERSION}"
  echo "GO_VERSION=$(go version | cut -d' ' -f3)"
  echo "BUILT_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "BUILD_SECONDS=$((SECONDS - t_all))"
} >"${out}/BUILDINFO"
touch "${out}/.complete"
rm -rf "$CLUSTER_BIN_DIR"
mv "$out" "$CLUSTER_BIN_DIR"
trap - EXIT
log "all binaries built in $((SECONDS - t_all)) s: ${CLUSTER_BIN_DIR}"
echo "$CLUSTER_BIN_DIR"
