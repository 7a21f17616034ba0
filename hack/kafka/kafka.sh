#!/usr/bin/env bash
# Single-node Apache Kafka in KRaft mode (no ZooKeeper), run from jars resolved from Maven Central.
#   hack/kafka/kafka.sh up|down|status   start, stop (by pid file) or report the broker
#   hack/kafka/kafka.sh fetch            resolve the jars into the cache only
#   hack/kafka/kafka.sh cli CLASS ARGS   run a Kafka tool, e.g. cli TopicCommand --list
set -euo pipefail
COMPONENT=kafka
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

KAFKA_DIR=$KARTFLOW_DEV_DIR/kafka
PIDFILE=$KAFKA_DIR/kafka.pid
KAFKA_HOST=${KAFKA_BOOTSTRAP%:*}
KAFKA_PORT=${KAFKA_BOOTSTRAP##*:}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}

# The jar cache is keyed by the version and the pom's content, so a changed pin refetches and
# an unchanged one never downloads again.
jar_dir() {
  local pom_hash
  pom_hash=$(sha256sum "$HACK_DIR/kafka/pom.xml" | cut -c1-12)
  echo "$KARTFLOW_CACHE_DIR/kafka-$KAFKA_VERSION-$pom_hash"
}

need_java() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = //p')
  [ "${major:-0}" -ge 17 ] || die "Kafka $KAFKA_VERSION needs Java 17 or later, found ${major:-none}: apt-get install openjdk-17-jre-headless"
}

fetch() {
  local dir
  dir=$(jar_dir)
  if [ -f "$dir/.complete" ]; then echo "$dir"; return; fi
  command -v mvn >/dev/null || apt_install maven
  log "resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $dir"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$HACK_DIR/kafka" && mvn -q -B -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$dir.tmp" >&2) \
    || die "could not resolve the Kafka jars (see the Maven output above); is Maven Central reachable?"
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  log "cached $(ls "$dir" | wc -l) jars"
  echo "$dir"
}

BROKER_OPTS=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$HACK_DIR/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs")

# Runs a Kafka tool class (storage format, topic admin, console clients) with quiet logging.
java_cmd() {
  local jars=$1
  shift
  java -Xmx512m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HACK_DIR/kafka/log4j2-tools.properties" -cp "$jars/*" "$@"
}

write_config() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  # Single node, so every internal topic has replication factor 1; few internal partitions keep
  # the first consumer group and the first transaction fast on a small machine.
  cat > "$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# KIP-848 consumer groups: detect a killed member in 10 s instead of 45 s (tests kill workers).
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
PROPS
}

running() { pid_alive "$PIDFILE" "$KAFKA_DIR/server.properties"; }

answers_metadata() {
  java_cmd "$1" org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --list \
    >/dev/null 2>&1
}

up() {
  if running; then log "already running (pid $(cat "$PIDFILE")) at $KAFKA_BOOTSTRAP"; return; fi
  if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    die "port $KAFKA_PORT is taken by a process this script did not start; stop it or set KAFKA_BOOTSTRAP to another address in hack/stack.env"
  fi
  need_java
  local jars
  jars=$(fetch)
  write_config
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java_cmd "$jars" kafka.tools.StorageTool random-uuid)
    log "formatting KRaft storage (cluster id $cluster_id)"
    java_cmd "$jars" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/logs/format.log" 2>&1 \
      || { tail -n 20 "$KAFKA_DIR/logs/format.log" >&2; die "formatting KRaft storage failed"; }
  fi
  log "starting Apache Kafka $KAFKA_VERSION at $KAFKA_BOOTSTRAP (logs: $KAFKA_DIR/logs)"
  spawn_daemon "$KAFKA_DIR" "$PIDFILE" "$KAFKA_DIR/logs/stdout.log" \
    java "${BROKER_OPTS[@]}" -cp "$jars/*" kafka.Kafka "$KAFKA_DIR/server.properties"
  # broker_ready sees up()'s local $jars (bash scopes dynamically).
  await_daemon "$PIDFILE" "$START_TIMEOUT" "the broker" \
    "$KAFKA_DIR/logs/stdout.log $KAFKA_DIR/logs/server.log" broker_ready
}

broker_ready() { port_open "$KAFKA_HOST" "$KAFKA_PORT" && answers_metadata "$jars"; }

down() {
  if ! running; then log "not running"; rm -f "$PIDFILE"; return; fi
  # A controlled shutdown takes a few seconds; force it only if it hangs.
  stop_pid "$PIDFILE" 30
}

status() {
  if running; then
    echo "kafka: running (pid $(cat "$PIDFILE")), Apache Kafka $KAFKA_VERSION, KRaft, at $KAFKA_BOOTSTRAP"
  else
    echo "kafka: stopped"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  fetch) fetch >/dev/null ;;
  cli)
    shift
    [ $# -ge 1 ] || die "usage: kafka.sh cli CLASS [ARGS...], e.g. cli TopicCommand --list"
    class=$1; shift
    case "$class" in *.*) ;; *) class=org.apache.kafka.tools.$class ;; esac
    java_cmd "$(fetch)" "$class" "$@"
    ;;
  *) die "usage: $0 up|down|status|fetch|cli CLASS [ARGS...]" ;;
esac
