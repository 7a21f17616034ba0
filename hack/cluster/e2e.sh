#!/usr/bin/env bash
# End-to-end check of the process node (hack/cluster/nodeagent) on a running cluster (up.sh):
#   - the Node is Ready and its Lease is renewed
#   - a Deployment of 3 testhttp replicas becomes 3/3 Ready; each pod has its own address; each
#     pod IP and each EndpointSlice endpoint of its Service answers
#   - a failing readiness probe keeps a pod un-Ready; a failing liveness probe restarts it; an
#     unknown image shows ErrImagePull
#   - a ConfigMap and a Secret reach the process as volumes and as env; downward API; kubectl
#     logs, exec and port-forward
#   - a pod's service account is real RBAC: allowed to list ConfigMaps, Forbidden on Secrets
#   - deletion runs the preStop hook and honours terminationGracePeriodSeconds (SIGTERM ignored ->
#     SIGKILL after it)
#   - helm install --wait of testdata/testhttp-chart (pods must be Ready), helm uninstall
#   - scaling to 0 stops the processes; deleting the namespace leaves no process, no address and
#     no mount point directory
# Everything happens in a fresh namespace (deleted at the end, also on failure).
#
# Usage: hack/cluster/e2e.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
init_bin_dir
cluster_bins_present || die "binaries not built; run hack/cluster/up.sh first"
[[ -s "$CLUSTER_KUBECONFIG" ]] || die "${CLUSTER_KUBECONFIG} missing; run hack/cluster/up.sh first"
export KUBECONFIG="$CLUSTER_KUBECONFIG" PATH="${CLUSTER_BIN_DIR}:${PATH}"
require_cmd curl ip timeout
# Pod processes run as root; finding them (their environment) needs root too.
[[ "$(id -u)" == 0 ]] || die "e2e.sh must run as root (it inspects the pod processes)"

ns="kf-e2e-$$"
node="$CLUSTER_NODE_NAME"
t0=$SECONDS
fail() {
  echo "----- pods in ${ns} -----" >&2
  kubectl -n "$ns" get pods -o wide >&2 2>&1 || true
  echo "----- last lines of the node agent log -----" >&2
  grep -v '^[[:space:]]' "${CLUSTER_STATE_DIR}/logs/nodeagent.log" 2>/dev/null | tail -n 15 >&2 || true
  die "e2e: $*"
}
ok() { log "ok: $*"; }
cleanup() {
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

jp() { kubectl -n "$ns" get "$1" -o "jsonpath=$2"; }
# procs_of UID...: number of live processes of those pods (the agent marks each pod process).
procs_of() {
  local n=0 f want
  want="$(printf "KARTFLOW_NODEAGENT_POD=${node}/%s\n" "$@")"
  for f in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qxF "$want"; then n=$((n + 1)); fi
  done
  echo "$n"
}

# 1. node and lease
[[ "$(kubectl get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]] ||
  fail "node ${node} is not Ready"
lease0="$(kubectl -n kube-node-lease get lease "$node" -o 'jsonpath={.spec.renewTime}')"
[[ -n "$lease0" ]] || fail "node ${node} has no Lease in kube-node-lease"
ok "node ${node} Ready, lease renewed at ${lease0}"

litter=0
[[ -e /etc/kf-e2e ]] || litter=1 # mount points the agent creates must go with the pods
kubectl create namespace "$ns" >/dev/null
wait_for 30 "ServiceAccount ${ns}/default" kubectl -n "$ns" get serviceaccount default
kubectl -n "$ns" create configmap cfg --from-literal=greeting=hello --from-literal=mode=fast >/dev/null
kubectl -n "$ns" create secret generic sec --from-literal=password=s3cret >/dev/null

# 2. Deployment of 3, Service, endpoints
kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: kartflow/testhttp:e2e
        ports: [{name: http, containerPort: 8080}]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: LISTEN, value: "\$(MY_IP):8080"}
        readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
YAML
kubectl -n "$ns" rollout status deployment/web --timeout=60s >/dev/null || fail "deployment web did not become 3/3 Ready"
read -r -a ips <<<"$(jp pods '{.items[*].status.podIP}')"
((${#ips[@]} == 3)) || fail "expected 3 pod IPs, got '${ips[*]}'"
[[ "$(printf '%s\n' "${ips[@]}" | sort -u | wc -l)" == 3 ]] || fail "pod IPs are not distinct: ${ips[*]}"
for ip in "${ips[@]}"; do
  got="$(curl -sf --max-time 3 "http://${ip}:8080/")" || fail "no answer from pod IP ${ip}"
  [[ "$got" == "web-"*" ${ip}" ]] || fail "pod ${ip} answered '${got}'"
  [[ "$(curl -sf --max-time 3 "http://${ip}:8080/env?name=LISTEN")" == "${ip}:8080" ]] || fail "\$(MY_IP) expansion wrong on ${ip}"
done
eps_ready() {
  [[ "$(jp endpointslices "{range .items[?(@.metadata.labels.kubernetes\.io/service-name==\"web\")].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\n\"}{end}" | grep -c .)" == 3 ]]
}
wait_for 30 "3 ready endpoints in the EndpointSlice of service web" eps_ready
for ip in $(jp endpointslices '{.items[*].endpoints[*].addresses[0]}'); do
  port="$(jp endpointslices '{.items[0].ports[0].port}')"
  curl -sf --max-time 3 "http://${ip}:${port}/" >/dev/null || fail "endpoint ${ip}:${port} does not answer"
done
ok "deployment web 3/3 Ready on ${ips[*]}; each pod IP and each Service endpoint answers"

# 3. probes, unknown image
kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: unready}
spec:
  containers:
  - name: web
    image: kartflow/testhttp:e2e
    env: [{name: FAIL_READINESS, value: "1"}]
    readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: unlive}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: kartflow/testhttp:e2e
    env: [{name: FAIL_LIVENESS, value: "1"}]
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers: [{name: x, image: example.invalid/no-such-image:1}]
YAML
wait_for 20 "pod unready to be Running" bash -c "[[ \$(kubectl -n $ns get pod unready -o jsonpath='{.status.phase}') == Running ]]"
sleep 3
[[ "$(jp pod/unready '{.status.conditions[?(@.type=="Ready")].status}')" == False ]] || fail "pod unready is Ready despite its failing readiness probe"
restarted() { (($(jp pod/unlive '{.status.containerStatuses[0].restartCount}') >= 1)); }
wait_for 30 "pod unlive to be restarted by its liveness probe" restarted
errimagepull() { [[ "$(jp pod/noimage '{.status.containerStatuses[0].state.waiting.reason}')" == ErrImagePull ]]; }
wait_for 20 "pod noimage to show ErrImagePull" errimagepull
ok "readiness failure keeps a pod un-Ready; liveness failure restarts (restartCount $(jp pod/unlive '{.status.containerStatuses[0].restartCount}')); unknown image -> ErrImagePull"

# 4. ConfigMap / Secret / downward API as volumes and env; kubectl logs
kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: config, labels: {role: config}}
spec:
  containers:
  - name: web
    image: kartflow/testhttp:e2e
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: sec, key: password}}}
    - {name: MY_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    envFrom: [{prefix: CFG_, configMapRef: {name: cfg}}]
    volumeMounts:
    - {name: c, mountPath: /etc/kf-e2e/cfg}
    - {name: s, mountPath: /etc/kf-e2e/sec, readOnly: true}
    - {name: d, mountPath: /etc/kf-e2e/podinfo}
    - {name: e, mountPath: /kf-e2e-scratch}
    startupProbe: {exec: {command: [cat, /etc/kf-e2e/cfg/greeting]}, periodSeconds: 1}
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  volumes:
  - {name: c, configMap: {name: cfg}}
  - {name: s, secret: {secretName: sec}}
  - {name: d, downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}}
  - {name: e, emptyDir: {}}
YAML
kubectl -n "$ns" wait --for=condition=Ready pod/config --timeout=30s >/dev/null || fail "pod config did not become Ready"
ip="$(jp pod/config '{.status.podIP}')"
q() { curl -sf --max-time 3 "http://${ip}:8080/$1"; }
[[ "$(q 'env?name=GREETING')|$(q 'env?name=PASSWORD')|$(q 'env?name=CFG_mode')|$(q 'env?name=MY_NS')" == "hello|s3cret|fast|${ns}" ]] ||
  fail "env from ConfigMap/Secret/fieldRef wrong: $(q 'env?name=GREETING')|$(q 'env?name=PASSWORD')|$(q 'env?name=CFG_mode')|$(q 'env?name=MY_NS')"
[[ "$(q 'file?path=/etc/kf-e2e/cfg/greeting')|$(q 'file?path=/etc/kf-e2e/sec/password')|$(q 'file?path=/etc/kf-e2e/podinfo/name')" == "hello|s3cret|config" ]] ||
  fail "ConfigMap/Secret/downwardAPI volumes not visible at their mountPath"
[[ "$(q 'file?path=/var/run/secrets/kubernetes.io/serviceaccount/namespace')" == "$ns" ]] ||
  fail "service-account volume not mounted at /var/run/secrets/kubernetes.io/serviceaccount"
kubectl -n "$ns" logs config | grep -q "listening on ${ip}:8080" || fail "kubectl logs does not show the container's output"
[[ "$(kubectl -n "$ns" exec config -- cat /etc/kf-e2e/cfg/greeting)" == hello ]] || fail "kubectl exec does not see the pod's volumes"
rc=0
kubectl -n "$ns" exec config -- sh -c 'exit 3' >/dev/null 2>&1 || rc=$?
((rc == 3)) || fail "kubectl exec returned ${rc}, expected the command's exit code 3"
pf_log="$(mktemp)"
kubectl -n "$ns" port-forward pod/config :8080 >"$pf_log" 2>&1 &
pf_pid=$!
pf_port() { sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$pf_log" | grep .; }
wait_for 15 "kubectl port-forward to start" pf_port
got="$(curl -sf --max-time 3 "http://127.0.0.1:$(pf_port)/")" || got="no answer"
kill "$pf_pid" 2>/dev/null || true
wait "$pf_pid" 2>/dev/null || true
rm -f "$pf_log"
[[ "$got" == "config ${ip}" ]] || fail "kubectl port-forward to pod config: got '${got}'"
ok "ConfigMap, Secret, downward API reach the process as env and volumes; service-account volume mounted; kubectl logs, exec and port-forward work"

# 5. RBAC: the pod acts as its service account (KUBECONFIG with a TokenRequest token)
kubectl -n "$ns" create serviceaccount reader >/dev/null
kubectl -n "$ns" create role cm-reader --verb=get,list --resource=configmaps >/dev/null
kubectl -n "$ns" create rolebinding cm-reader --role=cm-reader --serviceaccount="${ns}:reader" >/dev/null
for what in configmaps secrets; do
  kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: list-${what}}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
  - name: kubectl
    image: kartflow/host:e2e
    command: ["${CLUSTER_BIN_DIR}/kubectl", get, ${what}]
YAML
done
phase_of() { jp "pod/$1" '{.status.phase}'; }
wait_for 30 "pods list-configmaps and list-secrets to finish" bash -c \
  "[[ \$(kubectl -n $ns get pod list-configmaps -o jsonpath='{.status.phase}') =~ Succeeded|Failed && \$(kubectl -n $ns get pod list-secrets -o jsonpath='{.status.phase}') =~ Succeeded|Failed ]]"
[[ "$(phase_of list-configmaps)" == Succeeded ]] || fail "service account reader could not list configmaps from its pod: $(kubectl -n "$ns" logs list-configmaps 2>&1 | tail -2)"
[[ "$(phase_of list-secrets)" == Failed ]] || fail "service account reader could list secrets from its pod"
# -f on a finished container must end, not hang
timeout 15 kubectl -n "$ns" logs -f list-secrets | grep -q Forbidden ||
  fail "listing secrets failed, but not as Forbidden (or kubectl logs -f hung): $(kubectl -n "$ns" logs list-secrets 2>&1 | tail -2)"
[[ "$(jp pod/list-secrets '{.status.containerStatuses[0].state.terminated.exitCode}')" == 1 ]] || fail "exit code of list-secrets not recorded"
done_ip="$(jp pod/list-configmaps '{.status.podIP}')"
[[ -n "$done_ip" ]] || fail "finished pod list-configmaps has no status.podIP"
! ip -o -4 addr show dev lo | grep -q " ${done_ip}/32 " || fail "finished pod list-configmaps still holds ${done_ip} on lo"
ok "RBAC from a pod: its service account lists configmaps, is Forbidden secrets (exit code 1 recorded); finished pods free their address"

# 6. graceful deletion: preStop hook, SIGTERM ignored -> SIGKILL after terminationGracePeriodSeconds
hookdir="$(mktemp -d)"
kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: sh
    image: kartflow/host:e2e
    command: [sh, -c, 'trap "" TERM; echo started; sleep 1000']
    lifecycle: {preStop: {exec: {command: [sh, -c, 'echo bye > /hook/prestop']}}}
    volumeMounts: [{name: hook, mountPath: /hook}]
  volumes: [{name: hook, hostPath: {path: "${hookdir}"}}]
YAML
kubectl -n "$ns" wait --for=condition=Ready pod/stubborn --timeout=30s >/dev/null || fail "pod stubborn did not start"
uid="$(jp pod/stubborn '{.metadata.uid}')"
[[ "$(procs_of "$uid")" -ge 1 ]] || fail "no process found for pod stubborn"
t_del=$SECONDS
kubectl -n "$ns" delete pod stubborn --wait=true --timeout=30s >/dev/null || fail "pod stubborn was not deleted"
took=$((SECONDS - t_del))
((took >= 2 && took <= 20)) || fail "deleting pod stubborn took ${took} s; expected about its 3 s grace period"
[[ "$(procs_of "$uid")" == 0 ]] || fail "processes of pod stubborn survive its deletion"
[[ "$(cat "${hookdir}/prestop" 2>/dev/null)" == bye ]] || fail "the preStop hook of pod stubborn did not run"
rm -rf "$hookdir"
ok "preStop hook ran; pod ignoring SIGTERM killed after its grace period (deleted in ${took} s), no process left"

# 7. helm: a chart whose Deployment must become Ready (helm --wait), then uninstall
export HELM_CACHE_HOME="${CLUSTER_STATE_DIR}/helm/cache" HELM_CONFIG_HOME="${CLUSTER_STATE_DIR}/helm/config" \
  HELM_DATA_HOME="${CLUSTER_STATE_DIR}/helm/data"
chart="${CLUSTER_HACK_DIR}/testdata/testhttp-chart"
helm install e2e "$chart" -n "$ns" --wait --timeout 60s >/dev/null || fail "helm install --wait of ${chart##*/} failed"
read -r -a uids_chart <<<"$(jp pods '{.items[?(@.metadata.labels.app=="e2e-testhttp")].metadata.uid}')"
((${#uids_chart[@]} == 2)) || fail "expected 2 pods of the chart, got ${#uids_chart[@]}"
for ip in $(jp pods '{.items[?(@.metadata.labels.app=="e2e-testhttp")].status.podIP}'); do
  curl -sf --max-time 3 "http://${ip}:8080/" >/dev/null || fail "chart pod ${ip} does not answer"
done
helm uninstall e2e -n "$ns" --wait --timeout 60s >/dev/null || fail "helm uninstall failed"
chart_gone() { [[ -z "$(kubectl -n "$ns" get pods -l app=e2e-testhttp -o name)" ]]; }
wait_for 30 "the chart's pods to go" chart_gone
[[ "$(procs_of "${uids_chart[@]}")" == 0 ]] || fail "processes of the chart's pods survive helm uninstall"
ok "helm install --wait of ${chart##*/} (2 Ready pods answering), helm uninstall stopped them"

# 8. scale to 0, namespace deletion
read -r -a uids <<<"$(jp pods '{.items[?(@.metadata.labels.app=="web")].metadata.uid}')"
[[ "$(procs_of "${uids[@]}")" == 3 ]] || fail "expected 3 processes for deployment web, found $(procs_of "${uids[@]}")"
kubectl -n "$ns" scale deployment web --replicas=0 >/dev/null
web_gone() { [[ -z "$(kubectl -n "$ns" get pods -l app=web -o name)" ]]; }
wait_for 30 "the pods of deployment web to go" web_gone
[[ "$(procs_of "${uids[@]}")" == 0 ]] || fail "processes of deployment web survive scaling to 0"
ok "scaling web to 0 stopped its processes"
read -r -a uids <<<"$(jp pods '{.items[*].metadata.uid}')"
read -r -a ips <<<"$(jp pods '{.items[*].status.podIP}')"
kubectl delete namespace "$ns" --wait=false >/dev/null
ns_gone() { ! kubectl get namespace "$ns" >/dev/null 2>&1; }
wait_for 90 "namespace ${ns} to be deleted" ns_gone
trap - EXIT
[[ "$(procs_of "${uids[@]}")" == 0 ]] || fail "processes survive the deletion of namespace ${ns}"
for ip in "${ips[@]}"; do
  ! ip -o -4 addr show dev lo | grep -q " ${ip}/32 " || fail "pod address ${ip} still on lo after its pod is gone"
done
((litter == 0)) || [[ ! -e /etc/kf-e2e ]] || fail "mount point /etc/kf-e2e created for the pods is left on the host"
lease1="$(kubectl -n kube-node-lease get lease "$node" -o 'jsonpath={.spec.renewTime}')"
[[ "$lease1" != "$lease0" ]] || fail "the Lease of ${node} was not renewed during the test (${lease0})"
ok "namespace ${ns} deleted: no process, no address left; lease renewed (${lease1}); e2e passed in $((SECONDS - t0)) s"
