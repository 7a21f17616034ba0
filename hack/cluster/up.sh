#!/usr/bin/env bash
# Starts the local test cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# the process node agent (hack/cluster/nodeagent), built by build.sh / build-nodeagent.sh (run
# automatically; no-ops when cached).
# Everything listens on loopback only. State (etcd data, certificates, kubeconfigs, logs, pid files)
# lives in ${KARTFLOW_DEV_DIR:-/tmp/kartflow-dev}/cluster and survives down.sh, so the next up.sh
# is a warm start; `down.sh --purge` deletes it.
#
# Idempotent: components already running (per their pid files) are left alone, missing ones are
# started. Waits for the apiserver's /readyz, the controller-manager and scheduler /healthz and
# the `default` ServiceAccount (proof the controllers run), then prints the admin kubeconfig path.
#
# Usage: hack/cluster/up.sh        (settings: hack/cluster/cluster.env, overridable from the env)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# -eq 0 ]] || die "up.sh takes no arguments (settings come from hack/cluster/cluster.env or the environment)"
require_cmd openssl curl setsid base64 ip
t_start=$SECONDS
# The node agent needs root: pod addresses go on `lo`, each container gets a mount namespace.
[[ "$(id -u)" == 0 ]] || die "the cluster's node agent must run as root (pod IPs on lo, bind mounts); run up.sh as root"
[[ "$CLUSTER_POD_CIDR" =~ ^([0-9]+\.[0-9]+\.[0-9]+\.)0/(1[0-9]|2[0-4])$ ]] ||
  die "CLUSTER_POD_CIDR=${CLUSTER_POD_CIDR} must be an a.b.c.0/N network with N in 10..24 (pods use a.b.c.2-254)"
pod_prefix="${BASH_REMATCH[1]}"

"${CLUSTER_HACK_DIR}/build.sh" >/dev/null || die "building the cluster binaries failed (see above)"
"${CLUSTER_HACK_DIR}/build-nodeagent.sh" >/dev/null || die "building the node agent failed (see above)"
"${CLUSTER_HACK_DIR}/build-metrics-server.sh" >/dev/null || die "building metrics-server failed (see above)"
init_bin_dir
init_nodeagent_dir
init_metrics_server_dir
cluster_bins_present || die "build.sh succeeded but ${CLUSTER_BIN_DIR} is incomplete"
BIN="$CLUSTER_BIN_DIR"

S="$CLUSTER_STATE_DIR"
PKI="${S}/pki"
LOGS="${S}/logs"
RUN="${S}/run"
mkdir -p "$PKI" "$LOGS" "$RUN" "${S}/etcd"
chmod 700 "$S" "$PKI" "${S}/etcd"
# etcd reads ETCD_* environment variables as flags; keep our pin out of its environment.
export -n ETCD_VERSION
APISERVER="https://127.0.0.1:${CLUSTER_APISERVER_PORT}"
ETCD_URL="http://127.0.0.1:${CLUSTER_ETCD_CLIENT_PORT}"

# ------------------------------------------------------------------------------------------------
# PKI: one CA signs everything; created once and reused, so kubeconfigs stay valid across restarts.
# ------------------------------------------------------------------------------------------------
openssl_quiet() {
  local out
  out="$(openssl "$@" 2>&1)" || die "openssl $1 failed: ${out}"
}

# sign_cert NAME SUBJECT EXTFILE_CONTENT: PKI/NAME.{key,crt}, signed by the CA, valid 10 years.
sign_cert() {
  local name="$1" subj="$2" ext="$3"
  [[ -s "${PKI}/${name}.crt" && -s "${PKI}/${name}.key" ]] && return 0
  openssl_quiet genrsa -out "${PKI}/${name}.key" 2048
  openssl_quiet req -new -key "${PKI}/${name}.key" -subj "$subj" -out "${PKI}/${name}.csr"
  printf '%s\n' "$ext" >"${PKI}/${name}.ext"
  openssl_quiet x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "${PKI}/${name}.ext" -out "${PKI}/${name}.crt"
  rm -f "${PKI}/${name}.csr" "${PKI}/${name}.ext"
}

client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

ensure_pki() {
  if [[ ! -s "${PKI}/ca.crt" || ! -s "${PKI}/ca.key" ]]; then
    log "creating the cluster CA and certificates in ${PKI}"
    rm -f "${PKI}"/*.crt "${PKI}"/*.key
    openssl_quiet genrsa -out "${PKI}/ca.key" 2048
    openssl_quiet req -x509 -new -key "${PKI}/ca.key" -subj "/CN=kartflow-dev-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "${PKI}/ca.crt"
  fi
  sign_cert apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.${CLUSTER_DNS_DOMAIN},IP:127.0.0.1,IP:::1,IP:${CLUSTER_SERVICE_IP}"
  sign_cert admin "/O=system:masters/CN=kartflow-admin" "$client_ext"
  sign_cert controller-manager "/CN=system:kube-controller-manager" "$client_ext"
  sign_cert scheduler "/CN=system:kube-scheduler" "$client_ext"
  # For the apiserver's connections to the node agent (kubectl logs/exec/port-forward).
  sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
  # Aggregation layer (front proxy): its own CA, as upstream recommends. Besides making aggregated
  # APIs (e.g. metrics-server for HPA on CPU) possible, it keeps the controller-manager and
  # scheduler from logging "missing content for CA bundle ... requestheader-client-ca-file" forever.
  if [[ ! -s "${PKI}/front-proxy-ca.crt" || ! -s "${PKI}/front-proxy-ca.key" ]]; then
    rm -f "${PKI}"/front-proxy-client.*
    openssl_quiet genrsa -out "${PKI}/front-proxy-ca.key" 2048
    openssl_quiet req -x509 -new -key "${PKI}/front-proxy-ca.key" -subj "/CN=kartflow-dev-front-proxy-ca" -days 3650 \
      -sha256 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "${PKI}/front-proxy-ca.crt"
  fi
  if [[ ! -s "${PKI}/front-proxy-client.crt" || ! -s "${PKI}/front-proxy-client.key" ]]; then
    openssl_quiet genrsa -out "${PKI}/front-proxy-client.key" 2048
    openssl_quiet req -new -key "${PKI}/front-proxy-client.key" -subj "/CN=front-proxy-client" -out "${PKI}/front-proxy-client.csr"
    printf '%s\n' "$client_ext" >"${PKI}/front-proxy-client.ext"
    openssl_quiet x509 -req -in "${PKI}/front-proxy-client.csr" -CA "${PKI}/front-proxy-ca.crt" \
      -CAkey "${PKI}/front-proxy-ca.key" -CAcreateserial -days 3650 -sha256 -extfile "${PKI}/front-proxy-client.ext" \
      -out "${PKI}/front-proxy-client.crt"
    rm -f "${PKI}/front-proxy-client.csr" "${PKI}/front-proxy-client.ext"
  fi
  if [[ ! -s "${PKI}/sa.key" || ! -s "${PKI}/sa.pub" ]]; then
    openssl_quiet genrsa -out "${PKI}/sa.key" 2048
    openssl_quiet rsa -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub"
  fi
  chmod 600 "${PKI}"/*.key
}

# write_kubeconfig FILE USER CERTNAME: kubeconfig for the apiserver with a client certificate.
write_kubeconfig() {
  local file="$1" user="$2" cert="$3" tmp
  tmp="$(mktemp "${file}.XXXXXX")"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kartflow-dev
  cluster:
    server: ${APISERVER}
    certificate-authority-data: $(base64 -w0 <"${PKI}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 <"${PKI}/${cert}.crt")
    client-key-data: $(base64 -w0 <"${PKI}/${cert}.key")
contexts:
- name: kartflow-dev
  context:
    cluster: kartflow-dev
    user: ${user}
current-context: kartflow-dev
EOF
  chmod 600 "$tmp"
  mv "$tmp" "$file"
}

# ------------------------------------------------------------------------------------------------
# Processes: one pid file per component; a pid only counts as ours if /proc/PID/exe is our binary.
# ------------------------------------------------------------------------------------------------
# bin_of NAME: the binary of component NAME (the node agent has its own cache entry).
bin_of() {
  if [[ "$1" == nodeagent ]]; then echo "${NODEAGENT_BIN_DIR}/nodeagent"; else echo "${BIN}/$1"; fi
}

# running NAME: true if NAME's pid file names a live process running $(bin_of NAME).
running() {
  local name="$1" pid exe
  [[ -s "${RUN}/${name}.pid" ]] || return 1
  pid="$(<"${RUN}/${name}.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)" || return 1
  if [[ "$exe" != "$(bin_of "$name")" ]]; then
    if [[ "$exe" == */"${name}" || "$exe" == */"${name} (deleted)" ]]; then
      die "${name} (pid ${pid}) is running from ${exe}, not $(bin_of "$name") (the pins or the agent's sources changed?); run hack/cluster/down.sh, then up.sh again"
    fi
    return 1 # stale pid file, the pid now belongs to something else
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME PORT ARGS...: start ${BIN}/NAME detached, unless it is already running.
start() {
  local name="$1" port="$2" pid
  shift 2
  if running "$name"; then
    if [[ "$(cat "${RUN}/${name}.args" 2>/dev/null)" != "$(printf '%s\n' "$@")" ]]; then
      die "${name} (pid $(<"${RUN}/${name}.pid")) runs with other flags than up.sh would use now (settings or script changed); restart it: hack/cluster/down.sh && hack/cluster/up.sh"
    fi
    log "${name} already running (pid $(<"${RUN}/${name}.pid"))"
    return 0
  fi
  rm -f "${RUN}/${name}.pid"
  if port_in_use "$port"; then
    die "cannot start ${name}: 127.0.0.1:${port} is already in use by a process this script did not start; stop it or choose another port in hack/cluster/cluster.env (or the environment)"
  fi
  log "starting ${name} (log ${LOGS}/${name}.log)"
  {
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting: $(bin_of "$name") $*"
  } >>"${LOGS}/${name}.log"
  setsid "$(bin_of "$name")" "$@" </dev/null >>"${LOGS}/${name}.log" 2>&1 &
  pid=$!
  bin_of "$name" >"${RUN}/${name}.exe"
  printf '%s\n' "$@" >"${RUN}/${name}.args"
  echo "$pid" >"${RUN}/${name}.pid"
}

fail_with_log() {
  local name="$1" msg="$2"
  {
    echo "----- last 40 lines of ${LOGS}/${name}.log -----"
    tail -n 40 "${LOGS}/${name}.log" 2>/dev/null || true
    echo "-----"
  } >&2
  die "${msg}; full log: ${LOGS}/${name}.log (stop what started with hack/cluster/down.sh)"
}

# wait_until NAME DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds; fail with NAME's log
# tail when NAME's process died or CLUSTER_READY_TIMEOUT passes.
wait_until() {
  local name="$1" what="$2" deadline=$((SECONDS + CLUSTER_READY_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    running "$name" || fail_with_log "$name" "${name} exited while waiting for ${what}"
    ((SECONDS < deadline)) || fail_with_log "$name" "timed out after ${CLUSTER_READY_TIMEOUT} s waiting for ${what}"
    sleep 0.5
  done
}

admin_curl() {
  curl -sf --max-time 5 --cacert "${PKI}/ca.crt" --cert "${PKI}/admin.crt" --key "${PKI}/admin.key" "$@"
}

# ------------------------------------------------------------------------------------------------
# Fail before starting anything if a port we need is taken by something we did not start.
for np in "etcd:${CLUSTER_ETCD_CLIENT_PORT}" "etcd:${CLUSTER_ETCD_PEER_PORT}" \
  "kube-apiserver:${CLUSTER_APISERVER_PORT}" "kube-controller-manager:${CLUSTER_CONTROLLER_MANAGER_PORT}" \
  "kube-scheduler:${CLUSTER_SCHEDULER_PORT}"; do
  if ! running "${np%%:*}" && port_in_use "${np#*:}"; then
    die "cannot start ${np%%:*}: 127.0.0.1:${np#*:} is already in use by a process this script did not start; stop it or choose another port in hack/cluster/cluster.env (or the environment)"
  fi
done

ensure_pki
write_kubeconfig "${S}/admin.kubeconfig" kartflow-admin admin
write_kubeconfig "${S}/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
write_kubeconfig "${S}/scheduler.kubeconfig" system:kube-scheduler scheduler

# etcd: loopback only, its own data dir. fsync is off: this is a throw-away test cluster and
# fsync on a shared disk is the slowest thing it would do.
start etcd "$CLUSTER_ETCD_CLIENT_PORT" \
  --name=kartflow-dev \
  --data-dir="${S}/etcd" \
  --listen-client-urls="${ETCD_URL}" \
  --advertise-client-urls="${ETCD_URL}" \
  --listen-peer-urls="http://127.0.0.1:${CLUSTER_ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${CLUSTER_ETCD_PEER_PORT}" \
  --initial-cluster="kartflow-dev=http://127.0.0.1:${CLUSTER_ETCD_PEER_PORT}" \
  --initial-cluster-state=new \
  --unsafe-no-fsync=true \
  --quota-backend-bytes=4294967296 \
  --log-level=warn
wait_until etcd "etcd health at ${ETCD_URL}/health" \
  bash -c "curl -sf --max-time 2 '${ETCD_URL}/health' | grep -q '\"health\":\"true\"'"

start kube-apiserver "$CLUSTER_APISERVER_PORT" \
  --bind-address=127.0.0.1 \
  --secure-port="${CLUSTER_APISERVER_PORT}" \
  --etcd-servers="${ETCD_URL}" \
  --tls-cert-file="${PKI}/apiserver.crt" \
  --tls-private-key-file="${PKI}/apiserver.key" \
  --client-ca-file="${PKI}/ca.crt" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --service-account-issuer="https://kubernetes.default.svc.${CLUSTER_DNS_DOMAIN}" \
  --service-account-key-file="${PKI}/sa.pub" \
  --service-account-signing-key-file="${PKI}/sa.key" \
  --service-cluster-ip-range="${CLUSTER_SERVICE_CIDR}" \
  --allow-privileged=true \
  --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
  --kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="${PKI}/front-proxy-client.crt" \
  --proxy-client-key-file="${PKI}/front-proxy-client.key" \
  --enable-aggregator-routing=true \
  --profiling=false \
  --v=1
wait_until kube-apiserver "${APISERVER}/readyz" admin_curl "${APISERVER}/readyz"

start kube-controller-manager "$CLUSTER_CONTROLLER_MANAGER_PORT" \
  --kubeconfig="${S}/controller-manager.kubeconfig" \
  --authentication-kubeconfig="${S}/controller-manager.kubeconfig" \
  --authorization-kubeconfig="${S}/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${CLUSTER_CONTROLLER_MANAGER_PORT}" \
  --cert-dir="${RUN}/kube-controller-manager-certs" \
  --controllers='*' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="${PKI}/sa.key" \
  --root-ca-file="${PKI}/ca.crt" \
  --cluster-signing-cert-file="${PKI}/ca.crt" \
  --cluster-signing-key-file="${PKI}/ca.key" \
  --service-cluster-ip-range="${CLUSTER_SERVICE_CIDR}" \
  --cluster-name=kartflow-dev \
  --leader-elect=false \
  --profiling=false \
  --v=1
start kube-scheduler "$CLUSTER_SCHEDULER_PORT" \
  --kubeconfig="${S}/scheduler.kubeconfig" \
  --authentication-kubeconfig="${S}/scheduler.kubeconfig" \
  --authorization-kubeconfig="${S}/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${CLUSTER_SCHEDULER_PORT}" \
  --cert-dir="${RUN}/kube-scheduler-certs" \
  --leader-elect=false \
  --profiling=false \
  --v=1
wait_until kube-controller-manager "kube-controller-manager /healthz" \
  curl -skf --max-time 2 "https://127.0.0.1:${CLUSTER_CONTROLLER_MANAGER_PORT}/healthz"
wait_until kube-scheduler "kube-scheduler /healthz" \
  curl -skf --max-time 2 "https://127.0.0.1:${CLUSTER_SCHEDULER_PORT}/healthz"
# The serviceaccount controller creating `default` proves the controller-manager really works
# against the apiserver (pods cannot be created in a namespace before it exists).
wait_until kube-controller-manager "the default ServiceAccount (created by kube-controller-manager)" \
  admin_curl "${APISERVER}/api/v1/namespaces/default/serviceaccounts/default"

# ------------------------------------------------------------------------------------------------
# The process node: registers Node ${CLUSTER_NODE_NAME} and runs the pods bound to it as processes.
# ------------------------------------------------------------------------------------------------
repo_dir="$(cd "${CLUSTER_HACK_DIR}/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="${repo_dir}/${target_dir}"
start nodeagent "$CLUSTER_KUBELET_PORT" run \
  --node-name="${CLUSTER_NODE_NAME}" \
  --kubeconfig="${S}/admin.kubeconfig" \
  --state-dir="${S}/nodeagent" \
  --images="${CLUSTER_HACK_DIR}/images.yaml" \
  --repo="$repo_dir" \
  --cargo-target-dir="$target_dir" \
  --node-ip=127.0.0.1 \
  --kubelet-port="${CLUSTER_KUBELET_PORT}" \
  --pod-subnet="${pod_prefix}" \
  --apiserver-host=127.0.0.1 \
  --apiserver-port="${CLUSTER_APISERVER_PORT}" \
  --ca-cert="${PKI}/ca.crt" \
  --ca-key="${PKI}/ca.key" \
  --kubelet-version="${KUBERNETES_VERSION}" \
  --image-var=METRICS_SERVER_BIN="${METRICS_SERVER_BIN_DIR}"
node_ready() {
  "${BIN}/kubectl" --kubeconfig="${S}/admin.kubeconfig" get node "${CLUSTER_NODE_NAME}" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
wait_until nodeagent "Node ${CLUSTER_NODE_NAME} to be Ready" node_ready

# metrics-server (resource metrics API for `kubectl top` and the HPA), installed like users do: its
# release manifest, served through the aggregation layer (front-proxy flags above). It runs as a
# pod on the process node and scrapes the node agent's /metrics/resource. Not waited for here
# (its readiness probe starts after 20 s); `kubectl wait --for=condition=Available
# apiservice/v1beta1.metrics.k8s.io` does that.
sed "s/@METRICS_SERVER_VERSION@/${METRICS_SERVER_VERSION}/g" "${CLUSTER_HACK_DIR}/metrics-server.yaml" |
  "${BIN}/kubectl" --kubeconfig="${S}/admin.kubeconfig" apply --server-side --field-manager=kartflow-up -f - >/dev/null ||
  die "applying hack/cluster/metrics-server.yaml failed (see above)"

# Plain KEY=VALUE facts about the running cluster, for scripts and the Rust test kit.
cat >"${S}/env.tmp" <<EOF
KUBECONFIG=${S}/admin.kubeconfig
CLUSTER_BIN_DIR=${BIN}
CLUSTER_APISERVER=${APISERVER}
CLUSTER_CA_FILE=${PKI}/ca.crt
CLUSTER_CA_KEY_FILE=${PKI}/ca.key
CLUSTER_KUBERNETES_VERSION=${KUBERNETES_VERSION}
CLUSTER_NODE_NAME=${CLUSTER_NODE_NAME}
NODEAGENT_BIN_DIR=${NODEAGENT_BIN_DIR}
METRICS_SERVER_BIN_DIR=${METRICS_SERVER_BIN_DIR}
EOF
mv "${S}/env.tmp" "${S}/env"

log "control plane and node ${CLUSTER_NODE_NAME} ready in $((SECONDS - t_start)) s: ${APISERVER} (Kubernetes ${KUBERNETES_VERSION})"
log "use it with: eval \"\$(hack/cluster/env.sh)\"   or   KUBECONFIG=${S}/admin.kubeconfig"
echo "${S}/admin.kubeconfig"
