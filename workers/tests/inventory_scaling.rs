//! Acceptance (issue 5): two workers share the partitions; a third joins mid-stream and one of
//! the first two leaves (SIGTERM) mid-stream; the final counts are exactly the expected ones.
//!
//! Needs the local Kafka: `make test` runs it, or `make dev-up` then
//! `cargo test -p kartflow-worker --test inventory_scaling -- --include-ignored`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{Kafka, PARTITIONS, PipelineConfig, Rng, TestDir, TopicNames, Worker, Workload};

const READY: Duration = Duration::from_secs(60);

/// Waits until the workers together own every partition exactly once.
fn wait_partitions_spread(workers: &[&Worker], min_owners: usize, timeout: Duration) {
    let started = Instant::now();
    loop {
        let owned: Vec<BTreeSet<i64>> = workers.iter().map(|w| w.owned_partitions()).collect();
        let all: Vec<i64> = owned.iter().flatten().copied().collect();
        let distinct: BTreeSet<i64> = all.iter().copied().collect();
        let owners = owned.iter().filter(|o| !o.is_empty()).count();
        if all.len() == PARTITIONS as usize
            && distinct.len() == PARTITIONS as usize
            && owners >= min_owners
        {
            return;
        }
        if started.elapsed() > timeout {
            support::fail_with_logs(
                workers,
                &format!("partitions not spread over {min_owners} workers: {owned:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn adding_and_removing_workers_mid_stream_changes_nothing_in_the_counts() {
    let started = Instant::now();
    let mut rng = Rng::from_env("scaling");
    let kafka = Kafka::connect();
    let dir = TestDir::new("scale");
    let topics = TopicNames::unique("scale");
    kafka.create_topics(&topics.inputs(), PARTITIONS);
    let workload = Workload::generate(&mut rng, 50, 3_000, 5);
    let want = workload.expected();
    let bootstrap = workload.write_bootstrap_file(&dir);
    let pipeline = PipelineConfig::new("scale", &topics, Some(bootstrap), &dir.savepoint_url());
    let _cleanup = kafka.cleanup_on_drop(&[&topics], &[&pipeline]);
    let mut a = Worker::new(&dir, &pipeline, "scale-a");
    let mut b = Worker::new(&dir, &pipeline, "scale-b");
    let mut c = Worker::new(&dir, &pipeline, "scale-c");
    a.start();
    b.start();
    a.wait_ready(READY);
    b.wait_ready(READY);
    wait_partitions_spread(&[&a, &b], 2, Duration::from_secs(30));
    eprintln!(
        "[scaling] a and b share the partitions at {:?}",
        started.elapsed()
    );

    let producer = support::spawn_order_producer(
        &kafka,
        &topics.order_events,
        workload.sends.clone(),
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_secs(2));
    c.start_ready(READY);
    wait_partitions_spread(&[&a, &b, &c], 3, Duration::from_secs(30));
    eprintln!(
        "[scaling] c joined, each worker owns one partition at {:?}",
        started.elapsed()
    );
    assert!(
        !producer.is_finished(),
        "c joined after the stream ended: slow the producer"
    );

    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "a exits cleanly on SIGTERM: {status}");
    eprintln!("[scaling] a left at {:?}", started.elapsed());
    assert!(
        !producer.is_finished(),
        "a left after the stream ended: slow the producer"
    );
    producer.join().expect("the producer thread");
    // a left as a static member: the broker keeps its partitions for it until the session
    // timeout (group.consumer.session.timeout.ms) before b and c take them over.
    wait_partitions_spread(&[&b, &c], 2, Duration::from_secs(40));
    eprintln!(
        "[scaling] b and c own a's partitions at {:?}",
        started.elapsed()
    );
    kafka.wait_caught_up(
        &pipeline.group(),
        &topics.inputs(),
        Duration::from_secs(60),
        &[&a, &b, &c],
    );
    support::assert_outputs(&kafka, &topics, &want, &[&a, &b, &c]);
    assert!(
        a.log().contains("leaving the consumer group"),
        "a left the group gracefully:\n{}",
        a.log_tail(20)
    );
    eprintln!(
        "[scaling] {} distinct lines + {} redeliveries, {} oversold products, {:?}",
        want.lines.len(),
        workload.duplicates(),
        want.oversold.len(),
        started.elapsed()
    );
}
