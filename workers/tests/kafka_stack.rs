//! Proves the local Kafka is a real broker with the features kartflow relies on: multi-partition
//! topics, idempotent producers, transactions, and `read_committed` isolation hiding aborts.
//!
//! Needs the stack: `make test` starts it; alone, run `make dev-up` then
//! `cargo test -p kartflow-worker --test kafka_stack -- --include-ignored`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const TIMEOUT: Duration = Duration::from_secs(30);

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t} failed: {e}"));
    }
}

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> ThreadedProducer<DefaultProducerContext> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("producer")
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &str) {
    p.send(BaseRecord::to(topic).key(key).payload(value))
        .unwrap_or_else(|(e, _)| panic!("enqueue to {topic} failed: {e}"));
}

/// Reads every committed record of `topic` (from the beginning) as key → values, per partition
/// count, until `expected` records arrived or the timeout passed.
fn read_committed(
    bootstrap: &str,
    topic: &str,
    expected: usize,
) -> (Vec<String>, BTreeMap<i32, usize>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", kartflow_testkit::unique_name("kafka-stack"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut values = Vec::new();
    let mut per_partition = BTreeMap::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    // Keep polling a little after reaching `expected` so a record that should be invisible
    // (an aborted one) would have had its chance to show up.
    let mut quiet_polls = 0;
    while std::time::Instant::now() < deadline && quiet_polls < 5 {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                values.push(v);
                *per_partition.entry(m.partition()).or_insert(0) += 1;
            }
            Some(Err(e)) => panic!("consume from {topic} failed: {e}"),
            None if values.len() >= expected => quiet_polls += 1,
            None => {}
        }
    }
    values.sort();
    (values, per_partition)
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn idempotent_producer_writes_each_record_once_across_partitions() {
    let bootstrap = kartflow_testkit::kafka_bootstrap();
    let topic = kartflow_testkit::unique_name("idempotent");
    create_topic(&bootstrap, &topic, 3);

    let p = producer(
        &bootstrap,
        &[("enable.idempotence", "true"), ("acks", "all")],
    );
    for i in 0..300 {
        send(
            &p,
            &topic,
            &format!("product-{}", i % 17),
            &format!("{i:03}"),
        );
    }
    p.flush(TIMEOUT).expect("flush");

    let (values, per_partition) = read_committed(&bootstrap, &topic, 300);
    let want: Vec<String> = (0..300).map(|i| format!("{i:03}")).collect();
    assert_eq!(values, want, "every record exactly once");
    assert_eq!(
        per_partition.len(),
        3,
        "keys spread over all 3 partitions: {per_partition:?}"
    );
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn read_committed_sees_committed_transactions_and_never_aborted_ones() {
    let bootstrap = kartflow_testkit::kafka_bootstrap();
    let topic = kartflow_testkit::unique_name("transactions");
    create_topic(&bootstrap, &topic, 3);

    let txn_id = kartflow_testkit::unique_name("txn");
    let p = producer(&bootstrap, &[("transactional.id", txn_id.as_str())]);
    p.init_transactions(TIMEOUT).expect("init_transactions");

    p.begin_transaction().expect("begin 1");
    for i in 0..10 {
        send(&p, &topic, &format!("k{i}"), &format!("committed-{i}"));
    }
    p.commit_transaction(TIMEOUT).expect("commit");

    p.begin_transaction().expect("begin 2");
    for i in 0..10 {
        send(&p, &topic, &format!("k{i}"), &format!("aborted-{i}"));
    }
    p.flush(TIMEOUT).expect("flush before abort");
    p.abort_transaction(TIMEOUT).expect("abort");

    p.begin_transaction().expect("begin 3");
    send(&p, &topic, "k0", "committed-after-abort");
    p.commit_transaction(TIMEOUT).expect("commit after abort");

    let (values, _) = read_committed(&bootstrap, &topic, 11);
    assert!(
        values.iter().all(|v| !v.starts_with("aborted")),
        "aborted records must be invisible to read_committed, saw {values:?}"
    );
    assert_eq!(values.len(), 11, "10 + 1 committed records, got {values:?}");
    assert!(values.contains(&"committed-after-abort".to_owned()));
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let bootstrap = kartflow_testkit::kafka_bootstrap();
    let topic = kartflow_testkit::unique_name("fencing");
    create_topic(&bootstrap, &topic, 1);
    let txn_id = kartflow_testkit::unique_name("zombie");

    let zombie = producer(&bootstrap, &[("transactional.id", txn_id.as_str())]);
    zombie.init_transactions(TIMEOUT).expect("zombie init");
    zombie.begin_transaction().expect("zombie begin");
    send(&zombie, &topic, "k", "from-zombie");

    let successor = producer(&bootstrap, &[("transactional.id", txn_id.as_str())]);
    successor
        .init_transactions(TIMEOUT)
        .expect("successor init fences the zombie");

    let err = zombie
        .commit_transaction(TIMEOUT)
        .expect_err("a fenced producer must not commit");
    assert!(
        err.to_string().to_lowercase().contains("fenced") || err.to_string().contains("Fenced"),
        "expected a fencing error, got: {err}"
    );
    successor.begin_transaction().expect("successor begin");
    send(&successor, &topic, "k", "from-successor");
    successor
        .commit_transaction(TIMEOUT)
        .expect("successor commit");

    let (values, _) = read_committed(&bootstrap, &topic, 1);
    assert_eq!(values, vec!["from-successor".to_owned()]);
}
