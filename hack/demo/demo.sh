#!/usr/bin/env bash
# make demo / make demo-down: kartflow end to end on the local stack and cluster.
#   hack/demo/demo.sh up     build, start Kafka + PostgreSQL + the local cluster, helm install the
#                            operator (release kartflow-demo, watching namespace shop), apply
#                            hack/demo/shop.yaml, send order lines and show what they caused.
#                            Idempotent: a second run reuses what runs and sends new orders.
#   hack/demo/demo.sh down   delete the demo's resources (the CdcSource first, so the operator
#                            drops its replication slot), uninstall the operator, delete the
#                            namespaces the demo created. The cluster and the data stack keep
#                            running (make cluster-down dev-down stops them).
# Runs as root (the local cluster's node agent needs it). Settings: hack/stack.env.
set -euo pipefail
COMPONENT=demo
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

NS=shop
SYSTEM_NS=kartflow-system
RELEASE=kartflow-demo
LEASE=$RELEASE-leader
CHART=$REPO_DIR/charts/kartflow
MANIFEST=$HACK_DIR/demo/shop.yaml
PRODUCTS_FILE=$REPO_DIR/examples/initial-products.json
KAFKA=$HACK_DIR/kafka/kafka.sh
POSTGRES=$HACK_DIR/postgres/postgres.sh
# Namespaces the demo created carry this label; `down` deletes only those.
DEMO_LABEL=kartflow.io/demo
READY_TIMEOUT=${DEMO_READY_TIMEOUT:-180}
FIELD_MANAGER=kartflow-demo

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$REPO_DIR/$TARGET_DIR ;; esac

# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
need_root() {
  [ "$(id -u)" -eq 0 ] || die "run the demo as root: the local cluster's node agent puts pod addresses on lo and mounts volumes (sudo make demo)"
}

# Reads KUBECONFIG and CLUSTER_BIN_DIR from hack/cluster/env.sh --plain.
CLUSTER_BIN_DIR=
load_cluster_env() {
  local plain line
  plain=$("$HACK_DIR/cluster/env.sh" --plain 2>/dev/null) || die "hack/cluster/env.sh --plain failed"
  while IFS= read -r line; do
    case "$line" in
      KUBECONFIG=*) export KUBECONFIG=${line#KUBECONFIG=} ;;
      CLUSTER_BIN_DIR=*) CLUSTER_BIN_DIR=${line#CLUSTER_BIN_DIR=} ;;
    esac
  done <<<"$plain"
  [ -n "$CLUSTER_BIN_DIR" ] || die "hack/cluster/env.sh --plain printed no CLUSTER_BIN_DIR"
}

kubectl() { "$CLUSTER_BIN_DIR/kubectl" "$@"; }
helm() { "$CLUSTER_BIN_DIR/helm" "$@"; }

cluster_answers() {
  [ -s "${KUBECONFIG:-}" ] && [ -x "$CLUSTER_BIN_DIR/kubectl" ] &&
    kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

# A version stamp of a built binary (modification time): changes when cargo relinks it.
build_stamp() { stat -c %Y "$TARGET_DIR/debug/$1"; }

# ensure_namespace NAME: creates it (labelled as the demo's) unless it exists; waits out a
# previous deletion that is still in progress.
ensure_namespace() {
  local ns=$1 phase start=$SECONDS next=0
  while phase=$(kubectl get namespace "$ns" -o jsonpath='{.status.phase}' 2>/dev/null) &&
    [ "$phase" = Terminating ]; do
    if (( SECONDS - start >= 120 )); then
      die "namespace $ns has been Terminating for 120 s; see: kubectl get namespace $ns -o yaml"
    fi
    if (( SECONDS >= next )); then
      log "namespace $ns is still being deleted (a previous demo-down); waiting"
      next=$((SECONDS + 10))
    fi
    sleep 1
  done
  if [ -z "$phase" ]; then
    kubectl create namespace "$ns" >/dev/null
    kubectl label namespace "$ns" "$DEMO_LABEL=true" >/dev/null
    log "created namespace $ns"
  fi
}

apply_stdin() { kubectl apply --server-side --force-conflicts --field-manager "$FIELD_MANAGER" -f - >/dev/null; }

# Everything that helps when the pipeline does not come up, on stderr.
diagnostics() {
  {
    echo "----- kubectl get kartflow,deployments,pods -n $NS -----"
    kubectl get kartflow,deployments,pods -n "$NS" -o wide 2>&1 || true
    echo "----- conditions and events of inventorypipeline/shop -----"
    kubectl describe inventorypipeline shop -n "$NS" 2>&1 | sed -n '/^Status:/,$p' || true
    echo "----- operator pods ($SYSTEM_NS) -----"
    kubectl get pods -n "$SYSTEM_NS" -o wide 2>&1 || true
    echo "----- operator log (last 40 lines) -----"
    kubectl logs -n "$SYSTEM_NS" "deployment/$RELEASE" --tail 40 2>&1 || true
    local pod
    for pod in $(kubectl get pods -n "$NS" -l app.kubernetes.io/instance=shop -o name 2>/dev/null); do
      echo "----- $pod log (last 30 lines) -----"
      kubectl logs -n "$NS" "$pod" --tail 30 2>&1 || true
    done
    echo "-----"
  } >&2
}

pod_summary() {
  kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$1" --no-headers 2>/dev/null |
    awk '{printf "%s%s %s %s", sep, $1, $2, $3; sep=", "}' || true
}

# ------------------------------------------------------------------------------------------------
# up
# ------------------------------------------------------------------------------------------------
preflight_up() {
  need_root
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
  case "$TARGET_DIR/" in
    /tmp/*) die "CARGO_TARGET_DIR=$TARGET_DIR is under /tmp, which the pods' /tmp emptyDir hides from them (docs/local-cluster.md); build elsewhere" ;;
  esac
  command -v jq >/dev/null || apt_install jq
  [ -f "$PRODUCTS_FILE" ] || die "missing $PRODUCTS_FILE"
}

build() {
  log "building the workspace (cargo build --workspace --locked; the local cluster runs target/debug binaries)"
  (cd "$REPO_DIR" && cargo build --workspace --locked) || die "cargo build failed (see above)"
  local bin
  for bin in kartflow-operator kartflow-worker; do
    [ -x "$TARGET_DIR/debug/$bin" ] || die "cargo build succeeded but $TARGET_DIR/debug/$bin is missing"
  done
}

start_stack_and_cluster() {
  log "starting the data stack (hack/dev.sh up): Kafka $KAFKA_BOOTSTRAP, PostgreSQL 127.0.0.1:$PG_PORT"
  "$HACK_DIR/dev.sh" up >/dev/null || die "the data stack did not start (see above)"
  log "starting the local cluster (hack/cluster/up.sh)"
  "$HACK_DIR/cluster/up.sh" >/dev/null || die "the local cluster did not start (see above)"
  load_cluster_env
  cluster_answers || die "the cluster's apiserver does not answer (KUBECONFIG=$KUBECONFIG)"
}

install_operator() {
  # helm installs CRDs only on a first install; apply them so an existing cluster gets the current ones.
  kubectl apply --server-side --force-conflicts --field-manager "$FIELD_MANAGER" -f "$CHART/crds/" >/dev/null
  kubectl wait --for condition=Established --timeout 30s \
    crd/inventorypipelines.kartflow.io crd/cdcsources.kartflow.io crd/readmodels.kartflow.io >/dev/null
  # With watchNamespaces the chart puts the operator's Role in shop: it must exist first.
  ensure_namespace "$NS"
  ensure_namespace "$SYSTEM_NS"
  local status
  status=$(helm status "$RELEASE" -n "$SYSTEM_NS" -o json 2>/dev/null | jq -r '.info.status' || true)
  case "$status" in
    pending-*)
      log "release $RELEASE is stuck in $status (an interrupted run); uninstalling it first"
      helm uninstall "$RELEASE" -n "$SYSTEM_NS" --wait >/dev/null
      ;;
  esac
  log "helm upgrade --install $RELEASE charts/kartflow -n $SYSTEM_NS (watchNamespaces={$NS})"
  # The annotation rolls the operator when cargo relinked its binary.
  helm upgrade --install "$RELEASE" "$CHART" -n "$SYSTEM_NS" \
    --set "watchNamespaces={$NS}" --set image.tag=dev --set logFormat=text \
    --set-string "podAnnotations.kartflow\.io/binary-mtime=$(build_stamp kartflow-operator)" \
    --wait --timeout 180s >/dev/null || {
    kubectl get pods -n "$SYSTEM_NS" -o wide >&2 || true
    kubectl logs -n "$SYSTEM_NS" "deployment/$RELEASE" --tail 40 >&2 || true
    die "helm upgrade --install $RELEASE failed (pods and operator log above)"
  }
}

ensure_topics() {
  local described pu oe
  described=$("$KAFKA" cli TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --describe --if-exists \
    --topic 'product-updates|order-events') || die "could not describe the Kafka topics at $KAFKA_BOOTSTRAP"
  partitions() { awk -v t="$1" '$1 == "Topic:" && $2 == t { for (i = 1; i < NF; i++) if ($i == "PartitionCount:") print $(i + 1) }' <<<"$described"; }
  pu=$(partitions product-updates)
  oe=$(partitions order-events)
  local topic
  for topic in product-updates order-events; do
    if [ -z "$(partitions "$topic")" ]; then
      "$KAFKA" cli TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists \
        --topic "$topic" --partitions 3 --replication-factor 1 >/dev/null || die "could not create topic $topic"
      log "created Kafka topic $topic (3 partitions)"
    fi
  done
  pu=${pu:-3}
  oe=${oe:-3}
  [ "$pu" = "$oe" ] || die "topics product-updates ($pu partitions) and order-events ($oe) are not co-partitioned, so the inventory worker would refuse to start; give them equal partition counts"
}

prepare_namespace() {
  log "namespace $NS: Secret pg, ConfigMap initial-products; Kafka input topics; table public.order_items"
  kubectl create secret generic pg -n "$NS" --from-literal=username="$PG_USER" \
    --from-literal=password="$PG_PASSWORD" --dry-run=client -o yaml | apply_stdin
  kubectl create configmap initial-products -n "$NS" \
    --from-file=initial-products.json="$PRODUCTS_FILE" --dry-run=client -o yaml | apply_stdin
  ensure_topics
  # Owned by the application's role, so the operator (connecting as it) may publish the table.
  "$POSTGRES" psql -d "$PG_DATABASE" -c "SET ROLE $PG_USER;
    CREATE TABLE IF NOT EXISTS public.order_items (
      order_id text NOT NULL, product_id text NOT NULL, quantity int NOT NULL, id serial PRIMARY KEY);" \
    >/dev/null || die "could not create table public.order_items in database $PG_DATABASE"
}

apply_resources() {
  log "applying hack/demo/shop.yaml: InventoryPipeline shop, CdcSource orders, ReadModel view"
  sed -e "s/^  restartNonce: .*/  restartNonce: $(build_stamp kartflow-worker)/" "$MANIFEST" | apply_stdin
}

# pipeline_state: "<ok> <phase> <ready>": ok is 1 when the operator has seen the current spec,
# reports Running with 2 ready workers, and the worker Deployment finished rolling out (its
# status is fresh, every replica updated and ready), so a restart the operator just applied
# is not mistaken for the old workers being ready.
pipeline_state() {
  local ipl deploy
  ipl=$(kubectl get inventorypipeline shop -n "$NS" -o json 2>/dev/null) || ipl='{}'
  deploy=$(kubectl get deployment shop-worker -n "$NS" -o json 2>/dev/null) || deploy='{}'
  jq -rn --argjson i "$ipl" --argjson d "$deploy" '
    ($i.status.readyReplicas // 0) as $ready | ($i.status.phase // "-") as $phase
    | ($i.metadata.generation != null and $i.status.observedGeneration == $i.metadata.generation
       and $phase == "Running" and $ready >= 2
       and $d.metadata.generation != null and $d.status.observedGeneration == $d.metadata.generation
       and ($d.status.updatedReplicas // 0) == 2 and ($d.status.replicas // 0) == 2
       and ($d.status.readyReplicas // 0) == 2) as $ok
    | "\(if $ok then 1 else 0 end) \($phase) \($ready)"'
}

wait_for_pipeline() {
  local start=$SECONDS next=0 ok phase ready
  log "waiting for the pipeline to run: phase Running, 2/2 workers ready (up to $READY_TIMEOUT s)"
  while :; do
    read -r ok phase ready <<<"$(pipeline_state)"
    if [ "$ok" = 1 ]; then
      log "pipeline shop is Running with $ready/2 workers ready after $((SECONDS - start)) s"
      return
    fi
    if (( SECONDS - start >= READY_TIMEOUT )); then
      diagnostics
      die "pipeline shop not Running with 2 ready workers after $READY_TIMEOUT s (phase $phase, $ready ready; diagnostics above)"
    fi
    if (( SECONDS >= next )); then
      log "  phase ${phase}, ${ready}/2 ready; pods: $(pod_summary shop)"
      next=$((SECONDS + 10))
    fi
    sleep 2
  done
}

# wait_for_read_model: both replicas Ready, which they are only once caught up with the topics.
wait_for_read_model() {
  local start=$SECONDS ready
  log "waiting for the read replicas: 2/2 Ready once caught up (up to $READY_TIMEOUT s)"
  while :; do
    ready=$(kubectl get deployment view-read -n "$NS" -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)
    if [ "${ready:-0}" -ge 2 ]; then
      log "read model view: 2/2 replicas ready after $((SECONDS - start)) s"
      return
    fi
    if (( SECONDS - start >= READY_TIMEOUT )); then
      kubectl describe readmodel view -n "$NS" >&2 || true
      die "read model view not 2/2 ready after $READY_TIMEOUT s (pods: $(pod_summary view); ReadModel above)"
    fi
    sleep 2
  done
}

# replica_urls: the page of each read replica (pods of the local node have their own address on
# lo, reachable from this machine).
replica_urls() {
  kubectl get pods -n "$NS" -l app.kubernetes.io/instance=view,app.kubernetes.io/component=read-model \
    -o jsonpath='{range .items[*]}{.metadata.name} http://{.status.podIP}:8000/{"\n"}{end}' 2>/dev/null || true
}

wait_for_slot() {
  local start=$SECONDS
  until [ "$(kubectl get cdcsource orders -n "$NS" -o jsonpath='{.status.slot.exists}' 2>/dev/null)" = true ]; do
    if (( SECONDS - start >= 60 )); then
      kubectl describe cdcsource orders -n "$NS" >&2 || true
      kubectl logs -n "$SYSTEM_NS" "deployment/$RELEASE" --tail 40 >&2 || true
      die "the operator has not reported replication slot kartflow_demo after 60 s (CdcSource and operator log above)"
    fi
    sleep 1
  done
}

CONSUMER_PID=
stop_consumer() {
  if [ -n "$CONSUMER_PID" ]; then
    kill -TERM -- "-$CONSUMER_PID" 2>/dev/null || true
    wait "$CONSUMER_PID" 2>/dev/null || true
    CONSUMER_PID=
  fi
}

# Sends order lines to order-events and shows the inventory events and alerts they caused.
send_orders() {
  local run start_ms out lines=() n=0 i want spec order product qty
  run=demo-$(date -u +%H%M%S)-$RANDOM
  start_ms=$(date +%s%3N)
  # orderId productId quantity: five order lines in three orders (ids from initial-products.json).
  for spec in "A KART-001 1" "A HELM-010 1" "B KART-001 2" "C KART-001 1" "C HELM-010 1"; do
    read -r order product qty <<<"$spec"
    n=$((n + 1))
    lines+=("$product|$(jq -cn --arg e "$run-$n" --arg o "$run-$order" --arg p "$product" \
      --argjson q "$qty" --argjson t "$start_ms" \
      '{eventId: $e, orderId: $o, productId: $p, quantity: $q, timestamp: $t}')")
  done
  want=$n
  out=$(mktemp)
  trap 'stop_consumer; rm -f "$out" "$out.err"' EXIT
  # The consumer reads from the beginning (committed records only), so starting it first is safe;
  # its own session, so it can be stopped as a group once everything was seen.
  setsid "$KAFKA" cli org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$KAFKA_BOOTSTRAP" --include 'inventory-events|inventory-alerts' \
    --from-beginning --isolation-level read_committed --timeout-ms 60000 >"$out" 2>"$out.err" &
  CONSUMER_PID=$!
  log "sending $want order lines (orders $run-A, -B, -C) to order-events, keyed by productId"
  printf '%s\n' "${lines[@]}" | "$KAFKA" cli ConsoleProducer --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --topic order-events --property parse.key=true --property 'key.separator=|' \
    >/dev/null || die "producing to order-events failed"
  printf '%s\n' "${lines[@]}" | sed 's/^/    /'
  log "reading inventory-events and inventory-alerts for what they caused"
  local start=$SECONDS seen=0
  while :; do
    seen=$(grep -c "\"INVENTORY_DECREASED\".*for order $run-" "$out" || true)
    (( seen >= want )) && break
    if ! kill -0 "$CONSUMER_PID" 2>/dev/null || (( SECONDS - start >= 60 )); then
      cat "$out.err" >&2
      diagnostics
      die "saw $seen of $want INVENTORY_DECREASED events for orders $run-* within $((SECONDS - start)) s (diagnostics above)"
    fi
    sleep 0.5
  done
  # Alerts commit in the same transactions; give their partitions a moment to be read too.
  sleep 1
  stop_consumer
  log "the workers turned $want order lines into $seen INVENTORY_DECREASED events after $((SECONDS - start)) s:"
  jq -rR --arg run "$run-" 'fromjson? | select(.eventType == "INVENTORY_DECREASED" and (.changeReason | contains($run)))
    | "    \(.eventType)  \(.productId) \(.productName): \(.previousInventory) -> \(.currentInventory)  (\(.changeReason))"' "$out"
  i=$(jq -rR --argjson t "$start_ms" 'fromjson? | select(.alertType and .timestamp >= $t)
    | "    \(.severity) \(.alertType)  \(.productId): \(.message)"' "$out")
  if [ -n "$i" ]; then
    log "alerts raised since the orders were sent:"
    printf '%s\n' "$i"
  fi
  local first url answer
  first=$(jq -rR --arg run "$run-" 'fromjson? | select(.eventType == "INVENTORY_DECREASED" and (.changeReason | contains($run))) | .productId' "$out" | head -n1)
  url=$(replica_urls | awk 'NR == 1 {print $2}')
  if [ -n "$first" ] && [ -n "$url" ]; then
    # The replicas read inventory-events' products too: give them a moment after the last event.
    sleep 1
    answer=$(curl -sf --max-time 5 "${url}products/$first" | jq -c '{productId, name, inventory, lastUpdate}' || true)
    log "a read replica serves $first as: ${answer:-(no answer yet)}"
  fi
  log "stock carries over between runs: the workers' state lives in Kafka (topic $NS.shop-inventory-changelog)"
  restock "$out" "$run-"
  rm -f "$out" "$out.err"
  trap - EXIT
}

# restock FILE RUN: products this run left with less than RESTOCK_BELOW units get their stock
# from examples/initial-products.json again, as a product update, so every run of the demo
# shows orders against stock (an order beyond the stock would raise OVERSOLD instead).
RESTOCK_BELOW=5
restock() {
  local low updates
  low=$(jq -rR --arg run "$2" 'fromjson? | select(.eventType == "INVENTORY_DECREASED" and (.changeReason | contains($run)))
    | "\(.productId) \(.currentInventory)"' "$1" | awk '{last[$1] = $2} END {for (p in last) print p, last[p]}')
  updates=$(while read -r product stock; do
    if [ -z "$product" ] || [ "$stock" -ge "$RESTOCK_BELOW" ]; then continue; fi
    jq -r --arg p "$product" '.[] | select(.productId == $p) | "\(.productId)|\(tojson)"' "$PRODUCTS_FILE"
  done <<<"$low")
  [ -n "$updates" ] || return 0
  log "restocking $(cut -d'|' -f1 <<<"$updates" | paste -sd' ' -) to their stock in initial-products.json for the next run (product updates on product-updates)"
  "$KAFKA" cli ConsoleProducer --bootstrap-server "$KAFKA_BOOTSTRAP" --topic product-updates \
    --property parse.key=true --property 'key.separator=|' <<<"$updates" >/dev/null ||
    die "producing to product-updates failed"
}

show() {
  local cdc holder cdc_pods
  echo
  echo "\$ kubectl get kartflow -n $NS"
  kubectl get kartflow -n "$NS"
  cdc=$(kubectl get cdcsource orders -n "$NS" -o json | jq -r '
    (.status.conditions // [] | map(select(.type == "SlotHealthy")) | first) as $h
    | "CdcSource orders: phase \(.status.phase // "-")",
      "  slot \(.spec.slot.name): exists=\(.status.slot.exists) active=\(.status.slot.active), retains \(.status.slot.retainedWal // "?") of WAL (\(.status.slot.retainedBytes // "?") bytes), wal_status \(.status.slot.walStatus // "-"), checked \(.status.slot.lastCheck // "-")",
      "  slot guard (every \(.spec.guard.checkInterval), warn at \(.spec.guard.warnRetainedWal), drop at \(.spec.guard.dropRetainedWal)): SlotHealthy=\($h.status // "-") \($h.reason // ""): \($h.message // "")",
      (.status.lastDrop // empty | "  last drop: \(.at), \(.retainedBytes) bytes, \(.reason)")')
  cdc_pods=$(pod_summary orders)
  local pages
  pages=$(replica_urls | sed 's/^/    /')
  holder=$(kubectl get lease "$LEASE" -n "$SYSTEM_NS" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  cat <<EOF

$cdc
  The operator created publication and slot kartflow_demo in PostgreSQL; its slot guard checks
  the slot's retained WAL. The orders-cdc pod (kartflow-worker cdc) streams the slot into
  order-events: rows inserted into public.order_items become order lines.
  CDC pod: ${cdc_pods:-none yet}
Operator leader (Lease $SYSTEM_NS/$LEASE): ${holder:-none yet}
Read replicas of ReadModel view, each with the live inventory page (open one in a browser):
$pages

What next:
  eval "\$(hack/cluster/env.sh)"             # kubectl and helm of the local cluster in this shell
  kubectl get kartflow -n shop
  kubectl describe cdc orders -n shop       # the slot guard's conditions and events
  kubectl logs -n shop deploy/shop-worker   # an inventory worker's log
  make demo                                 # again: new orders into the running pipeline
  make demo-down                            # remove the demo; the cluster and stack keep running
EOF
}

up() {
  local t0=$SECONDS
  preflight_up
  build
  start_stack_and_cluster
  install_operator
  prepare_namespace
  apply_resources
  wait_for_pipeline
  wait_for_read_model
  wait_for_slot
  send_orders
  show
  log "demo up in $((SECONDS - t0)) s"
}

# ------------------------------------------------------------------------------------------------
# down
# ------------------------------------------------------------------------------------------------
down() {
  local t0=$SECONDS ns
  need_root
  load_cluster_env
  cluster_answers || die "the local cluster is not running, so there is nothing to delete now (the demo's objects are kept in its etcd): start it with make cluster-up and run make demo-down again"
  if kubectl get namespace "$NS" >/dev/null 2>&1; then
    if [ -n "$(kubectl get cdcsources -n "$NS" -o name 2>/dev/null)" ]; then
      log "deleting the CdcSources in $NS; the operator drops their replication slots and publications first"
      kubectl delete cdcsources --all -n "$NS" --wait --timeout 90s >/dev/null || {
        kubectl describe cdcsources -n "$NS" >&2 || true
        kubectl logs -n "$SYSTEM_NS" "deployment/$RELEASE" --tail 40 >&2 || true
        die "a CdcSource in $NS is still held by its finalizer after 90 s (is the operator running? log above). To let it go without the operator: kubectl patch cdc orders -n $NS --type json -p '[{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}]', then drop the slot: hack/postgres/postgres.sh psql -c \"SELECT pg_drop_replication_slot('kartflow_demo')\""
      }
    fi
    log "deleting the InventoryPipelines and ReadModels in $NS"
    kubectl delete inventorypipelines,readmodels --all -n "$NS" --wait --timeout 90s >/dev/null
  fi
  if "$POSTGRES" status >/dev/null 2>&1; then
    local left
    left=$("$POSTGRES" psql -d "$PG_DATABASE" -tAc "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'kartflow_demo'")
    if [ "$left" = 0 ]; then log "replication slot kartflow_demo is gone"; else log "WARNING: replication slot kartflow_demo still exists"; fi
  fi
  if helm status "$RELEASE" -n "$SYSTEM_NS" >/dev/null 2>&1; then
    log "helm uninstall $RELEASE -n $SYSTEM_NS"
    helm uninstall "$RELEASE" -n "$SYSTEM_NS" --wait --timeout 120s >/dev/null
  fi
  for ns in "$NS" "$SYSTEM_NS"; do
    if [ "$(kubectl get namespace "$ns" -o jsonpath="{.metadata.labels.kartflow\.io/demo}" 2>/dev/null)" != true ]; then
      continue
    fi
    if [ "$ns" = "$SYSTEM_NS" ] && [ -n "$(helm list -n "$ns" -q 2>/dev/null)" ]; then
      log "keeping namespace $ns: it holds other helm releases ($(helm list -n "$ns" -q | paste -sd, -))"
      continue
    fi
    log "deleting namespace $ns"
    kubectl delete namespace "$ns" --wait --timeout 120s >/dev/null
  done
  log "demo removed in $((SECONDS - t0)) s. Kafka topics, the pipeline's state and table public.order_items stay."
  log "the local cluster and the data stack keep running; stop them with: make cluster-down dev-down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
