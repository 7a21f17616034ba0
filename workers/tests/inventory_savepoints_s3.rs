//! Durable savepoints (issue 14): a worker writes its savepoint to an S3-compatible store (the
//! local s3s-fs, through `object_store`'s S3 client in the default build) and a new pipeline
//! starts from that `s3://` location with the same state and offsets.
//!
//! Needs the local Kafka and S3 server: `make test` runs it, or `make dev-up` then
//! `cargo test -p kartflow-worker --test inventory_savepoints_s3 -- --include-ignored`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::{Kafka, PARTITIONS, PipelineConfig, Rng, TestDir, TopicNames, Worker, Workload};

const READY: Duration = Duration::from_secs(60);

/// Inventory per product and input offsets per partition, over all partitions of a savepoint.
fn contents(files: &BTreeMap<i64, Value>) -> (BTreeMap<String, i64>, BTreeMap<i64, Value>) {
    let inventory = support::savepoint_products(files)
        .into_iter()
        .map(|(id, (inv, _))| (id, inv))
        .collect();
    let offsets = files
        .iter()
        .map(|(p, v)| (*p, v["meta"]["offsets"].clone()))
        .collect();
    (inventory, offsets)
}

#[test]
#[ignore = "needs the local Kafka and S3 server: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn a_savepoint_on_s3_restores_into_a_new_pipeline() {
    let kafka = Kafka::connect();
    let s3 = kartflow_testkit::stack::s3();
    let aws = s3.aws_env();
    let dir = TestDir::new("sp-s3");
    let prefix = support::unique_name("sp-s3");
    let remote = format!("s3://{}/{prefix}", s3.bucket);
    let topics = TopicNames::unique("sps3");
    kafka.create_topics(&topics.inputs(), PARTITIONS);
    let mut rng = Rng::from_env("savepoints-s3");
    let workload = Workload::generate(&mut rng, 20, 300, 5);
    let bootstrap = workload.write_bootstrap_file(&dir);

    let p = PipelineConfig::new("sps3", &topics, Some(bootstrap.clone()), &remote);
    let mut a = Worker::new(&dir, &p, "sps3-a").with_env(&aws);
    a.start_ready(READY);
    let producer = kafka.producer();
    for l in &workload.sends {
        producer.send(
            &topics.order_events,
            Some(&l.product_id),
            l.to_json().as_bytes(),
        );
    }
    producer.flush();
    kafka.wait_caught_up(&p.group(), &topics.inputs(), Duration::from_secs(60), &[&a]);
    let written = a.savepoint("on-s3");
    let location = written["location"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        location,
        format!("{remote}/on-s3"),
        "written to the S3 store: {written}"
    );
    assert!(written["bytes"].as_u64().unwrap_or(0) > 0, "{written}");
    assert!(a.terminate(Duration::from_secs(30)).success());

    // A new pipeline (fresh group and outputs) starts from the s3:// location and holds exactly
    // what was saved: the state after every line, and the offsets the savepoint recorded.
    let t2 = topics.with_new_outputs("sps3r");
    let p2 = PipelineConfig::new("sps3r", &t2, Some(bootstrap), &dir.savepoint_url());
    let mut b = Worker::new(&dir, &p2, "sps3r-a")
        .with_args(&["--from-savepoint", &location])
        .with_env(&aws);
    b.start_ready(READY);
    assert_eq!(b.status()["savepointRestored"], "on-s3");
    let copy = b.savepoint("copy");
    let copy_at = copy["location"].as_str().unwrap_or_default();
    let (inventory, offsets) = contents(&support::savepoint_states(copy_at));
    assert_eq!(
        inventory,
        workload.expected().inventory,
        "restored from S3: the state after every line"
    );
    let consumed: i64 = offsets
        .values()
        .flat_map(|o| o.as_object().into_iter().flatten())
        .filter_map(|(_, v)| v.as_i64())
        .sum();
    assert!(
        consumed >= workload.sends.len() as i64,
        "the restored offsets are past every line sent: {offsets:?}"
    );
    assert!(b.terminate(Duration::from_secs(30)).success());
}
