#!/usr/bin/env bash
# Static checks of the Helm chart charts/kartflow (no cluster needed; ~2 s):
#   - helm lint --strict, with the default values and with the HA values below
#   - helm template renders exactly the expected kinds, with default values (ClusterRole) and with
#     replicaCount=2,serviceMonitor.enabled=true,watchNamespaces={foo,bar} (Roles in foo and bar, PDB,
#     ServiceMonitor); the Deployment leaves the command to the image and runs read-only; with the
#     monitoring values, the PodMonitor, the PrometheusRule with every alert of
#     files/prometheus-rules.yaml, and the dashboard ConfigMap
#   - values.schema.json refuses replicaCount=-1 and an unknown key
#   - charts/kartflow/crds/ is a copy of crds/ (make crds-check compares both with the Rust types)
#
# helm: $HELM if set, else the local cluster's pinned build (make cluster-build), else helm on PATH.
# Usage: hack/chart-check.sh
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"
REPO_DIR="$(cd "${CLUSTER_HACK_DIR}/../.." && pwd)"
CHART="${REPO_DIR}/charts/kartflow"
t0=$SECONDS

fail() {
  printf '%s [chart] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
  exit 1
}
ok() { printf '%s [chart] ok: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

init_bin_dir
if [[ -n "${HELM:-}" ]]; then
  [[ -x "$HELM" ]] || fail "HELM=${HELM} is not an executable"
elif [[ -x "${CLUSTER_BIN_DIR}/helm" ]] && cluster_bins_present; then
  HELM="${CLUSTER_BIN_DIR}/helm"
elif command -v helm >/dev/null 2>&1; then
  HELM="$(command -v helm)"
  ok "the pinned helm ${HELM_VERSION} is not built; using ${HELM} (make cluster-build builds the pinned one)"
else
  fail "helm not found: run 'make cluster-build' (builds helm ${HELM_VERSION} from Go modules, cached), or set HELM=/path/to/helm (v3)"
fi
[[ -d "$CHART" ]] || fail "${CHART} does not exist"

# Keep helm's caches and config out of the user's home.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HELM_CACHE_HOME="${work}/cache" HELM_CONFIG_HOME="${work}/config" HELM_DATA_HOME="${work}/data"
HA_VALUES="replicaCount=2,serviceMonitor.enabled=true,watchNamespaces={foo,bar}"

# 1. lint
for set in "" "$HA_VALUES"; do
  args=(lint --strict "$CHART")
  [[ -z "$set" ]] || args+=(--set "$set")
  if ! out="$("$HELM" "${args[@]}" 2>&1)"; then
    printf '%s\n' "$out" >&2
    fail "helm lint --strict ${set:+--set $set }charts/kartflow failed (above); fix the chart"
  fi
done
ok "helm lint --strict, default and HA values ($("$HELM" version --template '{{.Version}}'))"

# 2. template: the kinds rendered, as "count kind" lines
render() {
  local name="$1"
  shift
  "$HELM" template kartflow "$CHART" --namespace kartflow-system "$@" >"${work}/${name}.yaml" 2>"${work}/${name}.err" ||
    fail "helm template $* failed: $(cat "${work}/${name}.err"); fix the chart"
}
kinds() { grep -E '^kind: ' "${work}/$1.yaml" | sed 's/^kind: //' | sort | uniq -c | awk '{print $1, $2}' | paste -sd, -; }
expect_kinds() {
  local name="$1" want="$2" got
  got="$(kinds "$name")"
  [[ "$got" == "$want" ]] || fail "helm template (${name} values) renders kinds ${got}; expected ${want}: fix charts/kartflow/templates"
}
# expect_in NAME REGEX WHAT: the rendered output must match REGEX (grep -E).
expect_in() { grep -qE -- "$2" "${work}/$1.yaml" || fail "helm template (${1} values): $3 (no match for '$2')"; }

render default
expect_kinds default "1 ClusterRole,1 ClusterRoleBinding,1 Deployment,1 Role,1 RoleBinding,1 Service,1 ServiceAccount"
expect_in default '^  replicas: 1$' "the Deployment should have 1 replica"
expect_in default '^            readOnlyRootFilesystem: true$' "the operator container should have a read-only root file system"
expect_in default 'value: "\$\(POD_IP\):8080"' "KARTFLOW_METRICS_LISTEN should bind the pod IP"
if grep -qE '^ *command:' "${work}/default.yaml"; then
  fail "the Deployment sets a command; leave it to the image's entrypoint (the local cluster maps the image to the binary)"
fi
if grep -q KARTFLOW_WATCH_NAMESPACES "${work}/default.yaml"; then
  fail "KARTFLOW_WATCH_NAMESPACES is set with the default values; empty watchNamespaces must mean all namespaces"
fi
ok "helm template, default values: $(kinds default)"

render ha --set "$HA_VALUES"
# A Role per watched namespace plus the leader-election Role; nothing cluster-wide.
expect_kinds ha "1 Deployment,1 PodDisruptionBudget,3 Role,3 RoleBinding,1 Service,1 ServiceAccount,1 ServiceMonitor"
expect_in ha '^  replicas: 2$' "the Deployment should have 2 replicas"
expect_in ha '^  namespace: foo$' "a Role and RoleBinding should be in the watched namespace foo"
expect_in ha '^  namespace: bar$' "a Role and RoleBinding should be in the watched namespace bar"
expect_in ha '^ +value: "foo,bar"$' "KARTFLOW_WATCH_NAMESPACES should be foo,bar"
expect_in ha '^apiVersion: monitoring.coreos.com/v1$' "the ServiceMonitor should be monitoring.coreos.com/v1"
ok "helm template, ${HA_VALUES}: $(kinds ha)"

MON_VALUES="serviceMonitor.enabled=true,podMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true"
render monitoring --set "$MON_VALUES"
expect_kinds monitoring "1 ClusterRole,1 ClusterRoleBinding,1 ConfigMap,1 Deployment,1 PodMonitor,1 PrometheusRule,1 Role,1 RoleBinding,1 Service,1 ServiceAccount,1 ServiceMonitor"
alerts_in_file=$(grep -c '^ *- alert: ' "${CHART}/files/prometheus-rules.yaml")
alerts_rendered=$(grep -c '^ *- alert: ' "${work}/monitoring.yaml")
[[ "$alerts_in_file" == "$alerts_rendered" ]] ||
  fail "the PrometheusRule renders ${alerts_rendered} alerts, files/prometheus-rules.yaml has ${alerts_in_file}"
expect_in monitoring '"uid": "kartflow-flow"' "the dashboard ConfigMap should hold files/grafana-dashboard.json"
expect_in monitoring '^ +honorLabels: true$' "the ServiceMonitor should keep the operator's namespace label (honorLabels)"
expect_in monitoring '^ +any: true$' "the PodMonitor should select workers in every namespace by default"
ok "helm template, ${MON_VALUES}: ${alerts_rendered} alerts, PodMonitor, dashboard"

digest=sha256:$(printf '%064d' 7)
render pinned --set "image.registry=127.0.0.1:5000,image.tag=1.2.3,image.digest=${digest}"
expect_in pinned "^ +image: \"127\.0\.0\.1:5000/kartflow/operator:1\.2\.3@${digest}\"\$" \
  "image.registry, image.tag and image.digest should make the image 127.0.0.1:5000/kartflow/operator:1.2.3@${digest}"
expect_in default '^ +image: "kartflow/operator:[0-9]' "the default image should be kartflow/operator:<appVersion>"
ok "helm template, image registry, tag and digest"

# 3. values.schema.json refuses bad values: the error must come from the schema, naming the key.
expect_refused() {
  local set="$1" key="$2" err
  if "$HELM" template kartflow "$CHART" --set "$set" >/dev/null 2>"${work}/refused.err"; then
    fail "helm template --set ${set} succeeded; values.schema.json must refuse it"
  fi
  err="$(cat "${work}/refused.err")"
  if ! grep -q "don't meet the specifications of the schema" <<<"$err" || ! grep -q -- "$key" <<<"$err"; then
    fail "helm template --set ${set} failed, but not by values.schema.json naming ${key}: ${err}"
  fi
}
expect_refused replicaCount=-1 replicaCount
expect_refused bogusKey=1 bogusKey
expect_refused 'watchNamespaces={Not_A_Namespace}' watchNamespaces
expect_refused 'image.digest=latest' digest
ok "values.schema.json refuses replicaCount=-1, an unknown key, a bad namespace name and a digest that is not sha256:<hex>"

# 4. the chart's CRDs are the generated ones
if ! out="$(diff -ru "${REPO_DIR}/crds" "${CHART}/crds" 2>&1)"; then
  printf '%s\n' "$out" | head -40 >&2
  fail "charts/kartflow/crds/ differs from crds/ (above): run 'make crds' and commit both"
fi
ok "charts/kartflow/crds/ matches crds/"

ok "chart checks passed in $((SECONDS - t0)) s"
