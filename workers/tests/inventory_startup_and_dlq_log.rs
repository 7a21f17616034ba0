//! Acceptance (issue 16): what a user running the worker by hand sees.
//!
//! - A wrong `bootstrapProductsFile` (missing, or not a JSON array although it starts like one)
//!   stops the worker before it touches Kafka: no changelog and no output topic is created.
//! - A record sent to the DLQ leaves a log line with its reason, topic, partition and offset.
//!
//! Needs the local Kafka: `make test` runs it, or `make dev-up` then
//! `cargo test -p kartflow-worker --test inventory_startup_and_dlq_log -- --include-ignored`.

mod support;

use std::time::{Duration, Instant};

use support::{Kafka, PARTITIONS, PipelineConfig, TestDir, TopicNames, Worker};

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn a_wrong_bootstrap_file_stops_the_worker_before_any_topic_is_created() {
    let kafka = Kafka::connect();
    let dir = TestDir::new("startup");
    let broken = dir.path.join("broken.json");
    std::fs::write(&broken, r#"[{"productId":"P1","price":1,"inventory":1}, "#).expect("write");
    let cases = [
        (
            "missing",
            dir.path.join("no-such-file.json"),
            "No such file",
        ),
        ("broken", broken, "not one"),
    ];
    for (name, path, says) in cases {
        let topics = TopicNames::unique(&format!("startup-{name}"));
        kafka.create_topics(&topics.inputs(), PARTITIONS);
        let pipeline =
            PipelineConfig::new("startup", &topics, Some(path.clone()), &dir.savepoint_url());
        let _cleanup = kafka.cleanup_on_drop(&[&topics], &[&pipeline]);
        let mut worker = Worker::new(&dir, &pipeline, &format!("startup-{name}"));
        worker.start();
        let status = worker
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| support::fail_with_logs(&[&worker], "did not stop"));
        assert!(!status.success(), "{name}: exit status {status}");
        let log = worker.log();
        assert!(
            log.contains("bootstrapProductsFile") && log.contains(&path.display().to_string()),
            "{name}: the error names the setting and the file:\n{log}"
        );
        assert!(log.contains(says), "{name}: the error says why:\n{log}");
        for topic in [
            pipeline.changelog(),
            topics.products.clone(),
            topics.inventory_events.clone(),
            topics.inventory_alerts.clone(),
            topics.websocket_fanout.clone(),
            topics.dlq.clone(),
        ] {
            assert!(
                !kafka.topic_exists(&topic),
                "{name}: {topic} was created although the bootstrap file is wrong"
            );
        }
    }
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn a_record_sent_to_the_dlq_is_logged_with_its_coordinates() {
    let kafka = Kafka::connect();
    let dir = TestDir::new("dlqlog");
    let topics = TopicNames::unique("dlqlog");
    kafka.create_topics(&topics.inputs(), PARTITIONS);
    let pipeline = PipelineConfig::new("dlqlog", &topics, None, &dir.savepoint_url());
    let _cleanup = kafka.cleanup_on_drop(&[&topics], &[&pipeline]);
    let mut worker = Worker::new(&dir, &pipeline, "dlqlog-0");
    worker.start_ready(Duration::from_secs(60));
    let producer = kafka.producer();
    producer.send(&topics.order_events, Some("P-X"), b"not json at all");
    producer.flush();

    let deadline = Instant::now() + Duration::from_secs(30);
    let rec = loop {
        if let Some(r) = kafka.read_all(&topics.dlq).into_iter().next() {
            break r;
        }
        if Instant::now() > deadline {
            support::fail_with_logs(&[&worker], "no DLQ record");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let partition = &rec.headers["kartflow.source.partition"];
    let offset = &rec.headers["kartflow.source.offset"];
    // The line is written before the transaction commits; the DLQ record is visible after.
    let log = worker.log();
    let line = log
        .lines()
        .find(|l| l.contains("record sent to the DLQ"))
        .unwrap_or_else(|| support::fail_with_logs(&[&worker], "no log line for the DLQ record"));
    for want in [
        "undecodable".to_owned(),
        topics.order_events.clone(),
        format!("partition={partition}"),
        format!("offset={offset}"),
        "P-X".to_owned(),
    ] {
        assert!(
            line.contains(&want),
            "{want:?} missing from the log line: {line}"
        );
    }
}
