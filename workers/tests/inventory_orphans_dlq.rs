//! Acceptance (issue 5): order lines that arrive before their product are buffered and applied
//! once the product arrives on `product-updates`; poison pills land in the DLQ with their reason
//! and source coordinates while later valid records are still processed.
//!
//! Needs the local Kafka: `make test` runs it, or `make dev-up` then
//! `cargo test -p kartflow-worker --test inventory_orphans_dlq -- --include-ignored`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{
    Expected, Kafka, Line, PARTITIONS, PipelineConfig, TestDir, TopicNames, Worker, product_json,
};

fn line(event: &str, order: &str, product: &str, quantity: i64) -> Line {
    Line {
        event_id: event.into(),
        order_id: order.into(),
        product_id: product.into(),
        quantity,
    }
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn orphans_wait_for_their_product_and_poison_pills_go_to_the_dlq() {
    let kafka = Kafka::connect();
    let dir = TestDir::new("orphans");
    let topics = TopicNames::unique("orphans");
    kafka.create_topics(&topics.inputs(), PARTITIONS);
    let bootstrap = dir.path.join("products.json");
    let initial = BTreeMap::from([("P-A".to_owned(), 50), ("P-B".to_owned(), 30)]);
    let file: Vec<_> = initial
        .iter()
        .map(|(id, n)| product_json(id, *n, 10.0))
        .collect();
    std::fs::write(&bootstrap, serde_json::to_string(&file).expect("json")).expect("write");
    let pipeline = PipelineConfig::new("orphans", &topics, Some(bootstrap), &dir.savepoint_url());
    let _cleanup = kafka.cleanup_on_drop(&[&topics], &[&pipeline]);
    let mut worker = Worker::new(&dir, &pipeline, "orphans-0");
    worker.start_ready(Duration::from_secs(60));
    let producer = kafka.producer();

    // 1. Order lines for a product nobody has heard of yet, one of them redelivered.
    let orphans = [
        line("o1-0", "o1", "ORPH-1", 2),
        line("o2-0", "o2", "ORPH-1", 3),
        line("o3-0", "o3", "ORPH-1", 4),
    ];
    for l in orphans.iter().chain([&orphans[1]]) {
        producer.send(
            &topics.order_events,
            Some(&l.product_id),
            l.to_json().as_bytes(),
        );
    }

    // 2. Poison pills on both inputs, each followed by valid records of the same key.
    let negative = line("bad-neg", "bad", "P-A", -3).to_json();
    let mismatched = line("bad-key", "bad", "P-A", 1).to_json();
    let pills: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            &topics.order_events,
            "P-A",
            b"this is not JSON".to_vec(),
            "undecodable",
        ),
        (
            &topics.order_events,
            "P-A",
            br#"{"hello":"world"}"#.to_vec(),
            "undecodable",
        ),
        (
            &topics.order_events,
            "P-A",
            negative.into_bytes(),
            "invalid_record",
        ),
        (
            &topics.order_events,
            "P-B",
            mismatched.into_bytes(),
            "key_mismatch",
        ),
        (
            &topics.product_updates,
            "P-B",
            br#"{"productId":"P-B","pri"#.to_vec(),
            "undecodable",
        ),
        (
            &topics.product_updates,
            "P-A",
            serde_json::to_vec(&product_json("P-A", -5, 10.0)).expect("json"),
            "invalid_record",
        ),
    ];
    for (topic, key, payload, _) in &pills {
        producer.send(topic, Some(key), payload);
    }
    let valid = [line("v1-0", "v1", "P-A", 5), line("v2-0", "v2", "P-B", 7)];
    for l in &valid {
        producer.send(
            &topics.order_events,
            Some(&l.product_id),
            l.to_json().as_bytes(),
        );
    }
    producer.flush();
    kafka.wait_caught_up(
        &pipeline.group(),
        &topics.inputs(),
        Duration::from_secs(60),
        &[&worker],
    );

    // The orphans are buffered, not dropped and not applied.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = worker.status();
        if st["orphansBuffered"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected 3 buffered orphans (the redelivery deduplicated), status: {st}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // 3. The product arrives; the buffered lines apply; a later line applies directly.
    producer.send(
        &topics.product_updates,
        Some("ORPH-1"),
        product_json("ORPH-1", 100, 5.0).to_string().as_bytes(),
    );
    let after = line("o4-0", "o4", "ORPH-1", 1);
    producer.flush();
    // Sent once the product update is consumed, so it is not itself an orphan.
    kafka.wait_caught_up(
        &pipeline.group(),
        &topics.inputs(),
        Duration::from_secs(60),
        &[&worker],
    );
    producer.send(
        &topics.order_events,
        Some("ORPH-1"),
        after.to_json().as_bytes(),
    );
    producer.flush();
    kafka.wait_caught_up(
        &pipeline.group(),
        &topics.inputs(),
        Duration::from_secs(60),
        &[&worker],
    );

    let mut all_initial = initial.clone();
    all_initial.insert("ORPH-1".into(), 100);
    let sent: Vec<Line> = orphans
        .iter()
        .chain(&valid)
        .chain([&after])
        .cloned()
        .collect();
    let want: Expected = support::expected(&all_initial, &sent);
    assert_eq!(want.inventory["ORPH-1"], 100 - 2 - 3 - 4 - 1);
    support::assert_outputs(&kafka, &topics, &want, &[&worker]);
    assert_eq!(worker.status()["orphansBuffered"], 0);

    // Every pill is in the DLQ once, with its reason and a pointer to the original record.
    let dlq = kafka.read_all(&topics.dlq);
    let order_events = kafka.read_all(&topics.order_events);
    let product_updates = kafka.read_all(&topics.product_updates);
    let mut unmatched: Vec<_> = pills.iter().collect();
    for rec in &dlq {
        let h = &rec.headers;
        let source = h.get("kartflow.source.topic").expect("source topic header");
        let partition: i32 = h
            .get("kartflow.source.partition")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("source partition header missing: {h:?}"));
        let offset: i64 = h
            .get("kartflow.source.offset")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("source offset header missing: {h:?}"));
        let reason = h.get("kartflow.error.reason").expect("reason header");
        assert!(
            h.get("kartflow.error.detail")
                .is_some_and(|d| !d.is_empty()),
            "{h:?}"
        );
        let inputs = if source == &topics.order_events {
            &order_events
        } else {
            assert_eq!(source, &topics.product_updates, "{h:?}");
            &product_updates
        };
        let original = inputs
            .iter()
            .find(|r| r.partition == partition && r.offset == offset)
            .unwrap_or_else(|| {
                panic!("DLQ record points at {source}/{partition}@{offset}, which does not exist")
            });
        assert_eq!(original.payload, rec.payload, "DLQ payload is the original");
        let i = unmatched
            .iter()
            .position(|(t, k, p, r)| {
                *t == source.as_str()
                    && Some(*k) == original.key.as_deref()
                    && *p == original.payload
                    && *r == reason.as_str()
            })
            .unwrap_or_else(|| {
                panic!(
                    "unexpected DLQ record {reason} from {source}: {}",
                    String::from_utf8_lossy(&rec.payload)
                )
            });
        unmatched.remove(i);
    }
    assert!(
        unmatched.is_empty(),
        "poison pills missing from the DLQ: {:?}",
        unmatched
            .iter()
            .map(|(t, _, p, r)| (t, String::from_utf8_lossy(p), r))
            .collect::<Vec<_>>()
    );

    // The metrics count each path.
    let (code, metrics) = support::http(worker.port, "GET", "/metrics", None).expect("metrics");
    assert_eq!(code, 200);
    for reason in ["undecodable", "invalid_record", "key_mismatch"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("dlq_total") && l.contains(&format!("\"{reason}\""))),
            "no dlq_total for {reason} in:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("input_dispositions_total") && l.contains("\"duplicate\"")),
        "the redelivered orphan is counted as a duplicate:\n{metrics}"
    );
}
