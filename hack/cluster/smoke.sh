#!/usr/bin/env bash
# Smoke test of a running control plane (hack/cluster/up.sh); pods that run: hack/cluster/e2e.sh.
#   - kubectl version reports the pinned server version
#   - a Deployment gets a ReplicaSet and Pods, which stay Pending/Unschedulable (node selector),
#     and garbage collection removes them when the Deployment is deleted
#   - RBAC is real: kubectl auth can-i, and a ServiceAccount token (TokenRequest API) may get
#     ConfigMaps but is refused Secrets
#   - helm install / uninstall of hack/cluster/testdata/configmap-chart
# Everything happens in a fresh namespace that is deleted at the end (also on failure).
#
# Usage: hack/cluster/smoke.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_bin_dir
cluster_bins_present || die "binaries not built; run hack/cluster/up.sh first"
[[ -s "$CLUSTER_KUBECONFIG" ]] || die "${CLUSTER_KUBECONFIG} missing; run hack/cluster/up.sh first"
export KUBECONFIG="$CLUSTER_KUBECONFIG" PATH="${CLUSTER_BIN_DIR}:${PATH}"
# Keep helm's state out of the user's home.
export HELM_CACHE_HOME="${CLUSTER_STATE_DIR}/helm/cache" HELM_CONFIG_HOME="${CLUSTER_STATE_DIR}/helm/config" \
  HELM_DATA_HOME="${CLUSTER_STATE_DIR}/helm/data"

ns="kf-smoke-$$"
t0=$SECONDS
fail() { die "smoke: $*"; }
ok() { log "ok: $*"; }
cleanup() {
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT


# 1. versions
server="$(kubectl version -o json | sed -n '/"serverVersion"/,/}/s/.*"gitVersion": *"\([^"]*\)".*/\1/p')"
[[ "$server" == "$KUBERNETES_VERSION" ]] || fail "server reports '${server}', expected ${KUBERNETES_VERSION}"
client="$(kubectl version --client -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -1)"
[[ "$client" == "$KUBERNETES_VERSION" ]] || fail "kubectl reports '${client}', expected ${KUBERNETES_VERSION}"
helm_v="$(helm version --template '{{.Version}}')"
[[ "$helm_v" == "$HELM_VERSION" ]] || fail "helm reports '${helm_v}', expected ${HELM_VERSION}"
ok "versions: server ${server}, kubectl ${client}, helm ${helm_v}"

kubectl create namespace "$ns" >/dev/null
wait_for 30 "ServiceAccount ${ns}/default" kubectl -n "$ns" get serviceaccount default

# 2. Deployment -> ReplicaSet -> Pods (Pending, Unschedulable: no node); GC on delete
# The node selector matches no node (not even the process node), so the pods stay Unschedulable:
# this checks the scheduler and garbage collection; hack/cluster/e2e.sh checks pods that run.
kubectl -n "$ns" create deployment web --image=registry.k8s.io/pause:3.10 --replicas=2 --dry-run=client -o json |
  sed 's|"containers":|"nodeSelector": {"kartflow.dev/no-such-node": "true"}, "containers":|' |
  kubectl -n "$ns" apply -f - >/dev/null
pending_unschedulable() {
  local out
  out="$(kubectl -n "$ns" get pods -l app=web -o jsonpath='{range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="PodScheduled")].reason}{"\n"}{end}')"
  [[ "$(grep -c '^Pending/Unschedulable$' <<<"$out")" == 2 ]]
}
wait_for 60 "2 Pending pods marked Unschedulable by kube-scheduler" pending_unschedulable
rs="$(kubectl -n "$ns" get rs -l app=web -o jsonpath='{.items[*].metadata.name}')"
[[ -n "$rs" ]] || fail "no ReplicaSet for deployment web"
ok "deployment web -> replicaset ${rs} -> 2 pods Pending/Unschedulable (node selector matches no node)"
kubectl -n "$ns" delete deployment web --wait=false >/dev/null
gone() { [[ -z "$(kubectl -n "$ns" get rs,pods -l app=web -o name)" ]]; }
wait_for 60 "garbage collection of the ReplicaSet and Pods" gone
ok "garbage collector removed the ReplicaSet and Pods"

# 3. RBAC
[[ "$(kubectl auth can-i '*' '*' --all-namespaces)" == yes ]] || fail "admin is not cluster-admin"
kubectl -n "$ns" create serviceaccount reader >/dev/null
kubectl -n "$ns" create role cm-reader --verb=get,list --resource=configmaps >/dev/null
kubectl -n "$ns" create rolebinding cm-reader --role=cm-reader --serviceaccount="${ns}:reader" >/dev/null
sa="system:serviceaccount:${ns}:reader"
[[ "$(kubectl auth can-i list configmaps -n "$ns" --as="$sa")" == yes ]] || fail "${sa} cannot list configmaps"
[[ "$(kubectl auth can-i list secrets -n "$ns" --as="$sa" || true)" == no ]] || fail "${sa} may list secrets"
token="$(kubectl -n "$ns" create token reader --duration=10m)"
as_sa() { kubectl --kubeconfig=/dev/null --server="https://127.0.0.1:${CLUSTER_APISERVER_PORT}" \
  --certificate-authority="${CLUSTER_STATE_DIR}/pki/ca.crt" --token="$token" -n "$ns" "$@"; }
as_sa get configmaps >/dev/null || fail "token of ${sa} could not list configmaps"
if err="$(as_sa get secrets 2>&1)"; then fail "token of ${sa} could list secrets"; fi
grep -q Forbidden <<<"$err" || fail "listing secrets with the token failed, but not as Forbidden: ${err}"
ok "RBAC: can-i as admin and as ${sa}; its TokenRequest token lists configmaps, is Forbidden secrets"

# 4. helm
chart="${CLUSTER_HACK_DIR}/testdata/configmap-chart"
helm install smoke "$chart" -n "$ns" --wait --timeout 60s >/dev/null || fail "helm install failed"
got="$(kubectl -n "$ns" get configmap smoke-smoke -o jsonpath='{.data.greeting}|{.data.kubeVersion}')"
[[ "$got" == "hello from kartflow|${KUBERNETES_VERSION}" ]] || fail "chart ConfigMap has '${got}'"
[[ "$(helm list -n "$ns" -q)" == smoke ]] || fail "helm list does not show release smoke"
helm uninstall smoke -n "$ns" --wait >/dev/null || fail "helm uninstall failed"
[[ -z "$(kubectl -n "$ns" get configmap smoke-smoke --ignore-not-found -o name)" ]] || fail "ConfigMap left after uninstall"
ok "helm install/uninstall of ${chart#"${CLUSTER_HACK_DIR}/"}"

# 5. namespace deletion (namespace controller)
kubectl delete namespace "$ns" --wait=false >/dev/null
ns_gone() { ! kubectl get namespace "$ns" >/dev/null 2>&1; }
wait_for 90 "namespace ${ns} to be deleted" ns_gone
trap - EXIT
ok "namespace ${ns} deleted; smoke test passed in $((SECONDS - t0)) s"
