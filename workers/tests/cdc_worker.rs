//! Acceptance tests of `kartflow-worker cdc` against the local PostgreSQL and Kafka: exactly
//! once across SIGKILLs, connection loss, the snapshot lined up with the stream, idle slots
//! releasing WAL, the DLQ, and a missing slot reported on /readyz.
//!
//! Needs the stack: `make test` starts it; alone, run `make dev-up` then
//! `cargo test -p kartflow-worker --test cdc_worker -- --include-ignored`.

mod cdc_support;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cdc_support::{
    CdcWorker, Fixture, by_event_id, current_wal_lsn, not_ready_because, slot_facts, wait_for,
};
use serde_json::json;
use support::Rng;

const IGNORE: &str = "needs the local Kafka and PostgreSQL";

/// Inserts order rows in small transactions until stopped; returns how many rows committed.
fn start_inserter(
    table: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let db = kartflow_testkit::postgres().await;
        let mut n = 0u64;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let rows = 1 + i % 3;
            let values: Vec<String> = (0..rows)
                .map(|k| format!("('o-{i}', 'P-{}', {})", (i + k) % 17, 1 + k))
                .collect();
            db.batch_execute(&format!(
                "INSERT INTO {table} (order_id, product_id, quantity) VALUES {}",
                values.join(",")
            ))
            .await
            .expect("insert");
            n += rows;
            i += 1;
            tokio::time::sleep(every).await;
        }
        n
    })
}

async fn all_rows_arrive(f: &Fixture, expected: u64, worker: &CdcWorker) -> Vec<support::Rec> {
    wait_for(
        &format!("{expected} distinct order lines in {}", f.topic),
        Duration::from_secs(90),
        Some(worker),
        || async {
            let recs = tokio::task::block_in_place(|| f.order_lines());
            (by_event_id(&recs).len() as u64 >= expected).then_some(recs)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn exactly_once_across_sigkills_while_rows_are_inserted() {
    let _ = IGNORE;
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_kill", &db).await;
    f.create_slot(&db).await;
    let config = f.config(json!({"maxBatchRecords": 50}));
    let log = f.dir.path.join("worker.log");
    let mut rng = Rng::from_env("exactly_once_across_sigkills");

    let stop = Arc::new(AtomicBool::new(false));
    let inserter = start_inserter(f.table.clone(), Duration::from_millis(8), stop.clone());
    let mut worker = CdcWorker::start(config.clone(), log.clone());
    for kill in 0..6 {
        let after = rng.range(300, 2_500);
        tokio::time::sleep(Duration::from_millis(after)).await;
        assert!(
            worker.is_running(),
            "worker exited before kill {kill}:\n{}",
            worker.log_tail()
        );
        worker.kill();
        eprintln!("SIGKILL {kill} after {after} ms");
        worker = CdcWorker::start(config.clone(), log.clone());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let inserted = inserter.await.expect("inserter");
    let last = current_wal_lsn(&db).await;

    let recs = all_rows_arrive(&f, inserted, &worker).await;
    let ids = by_event_id(&recs);
    let dupes: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        dupes.is_empty(),
        "{} rows twice in {} (read_committed): {:?}",
        dupes.len(),
        f.topic,
        dupes.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(ids.len() as u64, inserted, "every committed row once");
    let db_ids: BTreeSet<String> = db
        .query(&format!("SELECT id::text FROM {}", f.table), &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| format!("public.{}:{}", f.table, r.get::<_, String>(0)))
        .collect();
    assert_eq!(ids.keys().cloned().collect::<BTreeSet<_>>(), db_ids);
    // Keyed by productId with the Java partitioner (the inventory worker's co-partitioning).
    for r in &recs {
        let key = r.key.clone().unwrap_or_default();
        assert_eq!(
            r.partition,
            kartflow_worker::kafka::partitioner::partition_for_key(key.as_bytes(), 3)
        );
        assert_eq!(r.json()["productId"], key);
    }
    let slot = f.slot.clone();
    wait_for(
        "the slot's confirmed LSN past the last row",
        Duration::from_secs(30),
        Some(&worker),
        || {
            let db = &db;
            let slot = slot.clone();
            async move { (slot_facts(db, &slot).await.0 >= last).then_some(()) }
        },
    )
    .await;
    let status = worker.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGTERM:\n{}",
        worker.log_tail()
    );
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn connection_loss_mid_stream_loses_nothing() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_conn", &db).await;
    f.create_slot(&db).await;
    let worker = CdcWorker::start(f.config(json!({})), f.dir.path.join("worker.log"));
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = start_inserter(f.table.clone(), Duration::from_millis(5), stop.clone());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // Every backend of the worker: the replication connection and the SQL one.
        let n = db
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'kartflow-cdc' AND pid <> pg_backend_pid() \
                 AND (query ILIKE '%' || $1 || '%' OR backend_type = 'walsender')",
                &[&f.slot],
            )
            .await
            .expect("terminate");
        eprintln!("terminated {n} backends");
    }
    stop.store(true, Ordering::Relaxed);
    let inserted = inserter.await.expect("inserter");
    let recs = all_rows_arrive(&f, inserted, &worker).await;
    let ids = by_event_id(&recs);
    assert_eq!(ids.len() as u64, inserted);
    assert!(ids.values().all(|v| v.len() == 1), "no duplicates");
    let metrics = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kartflow_cdc_reconnects_total") && !l.ends_with(" 0")),
        "reconnects counted:\n{metrics}"
    );
    drop(worker);
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn snapshot_then_stream_without_gap_or_duplicate() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_snap", &db).await;
    db.batch_execute(&format!(
        "INSERT INTO {} (order_id, product_id, quantity) \
         SELECT 'pre-' || g, 'P-' || (g % 23), 1 + g % 5 FROM generate_series(1, 20000) g",
        f.table
    ))
    .await
    .expect("rows before the slot");
    f.create_slot(&db).await;
    db.batch_execute(&format!(
        "INSERT INTO {} (order_id, product_id, quantity) \
         SELECT 'between-' || g, 'P-1', 1 FROM generate_series(1, 500) g",
        f.table
    ))
    .await
    .expect("rows after the slot, before the snapshot");
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = start_inserter(f.table.clone(), Duration::from_millis(3), stop.clone());
    let worker = CdcWorker::start(
        f.config(json!({"snapshotMode": "initial", "snapshotChunkRows": 500})),
        f.dir.path.join("worker.log"),
    );
    // Inserts run during the snapshot (40+ chunks) and after it.
    let metrics_seen = Arc::new(AtomicU64::new(0));
    wait_for(
        "the snapshot to finish",
        Duration::from_secs(90),
        Some(&worker),
        || {
            let seen = metrics_seen.clone();
            let body = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
            async move {
                let rows = body
                    .lines()
                    .find(|l| l.starts_with("kartflow_cdc_snapshot_rows_total"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .unwrap_or(0);
                seen.store(rows, Ordering::Relaxed);
                let running = body.lines().any(|l| l == "kartflow_cdc_snapshot_running 1");
                (rows >= 20_500 && !running).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let streamed = inserter.await.expect("inserter");
    let expected = 20_500 + streamed;
    let recs = all_rows_arrive(&f, expected, &worker).await;
    let ids = by_event_id(&recs);
    assert_eq!(
        ids.len() as u64,
        expected,
        "every row: before, between, during, after"
    );
    let twice: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} rows twice (snapshot and stream overlapped): {:?}",
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>()
    );
    drop(worker);
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn an_idle_slot_does_not_retain_wal_written_elsewhere() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_idle", &db).await;
    f.create_slot(&db).await;
    let worker = CdcWorker::start(f.config(json!({})), f.dir.path.join("worker.log"));
    let other = format!("{}_noise", f.table);
    db.batch_execute(&format!("CREATE TABLE {other} (id int, pad text)"))
        .await
        .expect("noise table");
    let start = current_wal_lsn(&db).await;
    // ~100 MB of WAL in a table the publication does not contain.
    for chunk in 0..10 {
        db.batch_execute(&format!(
            "INSERT INTO {other} SELECT g, repeat(md5(g::text), 30) \
             FROM generate_series({}, {}) g",
            chunk * 10_000,
            chunk * 10_000 + 9_999
        ))
        .await
        .expect("noise");
    }
    let written = current_wal_lsn(&db).await - start;
    eprintln!("wrote {} MB of WAL elsewhere", written / 1_000_000);
    assert!(
        written >= 100_000_000,
        "only {written} bytes of WAL written"
    );
    let slot = f.slot.clone();
    // restart_lsn moves at the next running-transactions record (every 15 s or a checkpoint).
    let retained = wait_for(
        "the idle slot's retained WAL to drop under 4 MB",
        Duration::from_secs(60),
        Some(&worker),
        || {
            let db = &db;
            let slot = slot.clone();
            async move {
                let (_, retained) = slot_facts(db, &slot).await;
                (retained < 4_000_000).then_some(retained)
            }
        },
    )
    .await;
    eprintln!("retained {retained} bytes");
    drop(worker);
    let _ = db.batch_execute(&format!("DROP TABLE {other}")).await;
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn unmappable_rows_go_to_the_dlq_and_capture_goes_on() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_dlq", &db).await;
    f.create_slot(&db).await;
    let worker = CdcWorker::start(f.config(json!({})), f.dir.path.join("worker.log"));
    db.batch_execute(&format!(
        "INSERT INTO {t} (order_id, product_id, quantity) VALUES ('o1', 'P-1', 2);
         INSERT INTO {t} (order_id, product_id, quantity) VALUES ('o2', NULL, 1);
         INSERT INTO {t} (order_id, product_id, quantity) VALUES ('o3', 'P-3', -4);
         INSERT INTO {t} (order_id, product_id, quantity) VALUES ('o4', 'P-4', 1);",
        t = f.table
    ))
    .await
    .expect("rows");
    let recs = all_rows_arrive(&f, 2, &worker).await;
    let orders: BTreeSet<String> = recs
        .iter()
        .map(|r| r.json()["orderId"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(orders, BTreeSet::from(["o1".into(), "o4".into()]));
    let dlq = wait_for(
        "two DLQ records",
        Duration::from_secs(30),
        Some(&worker),
        || async {
            let d = tokio::task::block_in_place(|| f.kafka.read_all(&f.dlq));
            (d.len() >= 2).then_some(d)
        },
    )
    .await;
    let reasons: BTreeSet<String> = dlq
        .iter()
        .map(|r| r.json()["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["null_column".into(), "negative_quantity".into()])
    );
    for r in &dlq {
        let v = r.json();
        assert_eq!(v["table"], format!("public.{}", f.table));
        assert!(v["lsn"].as_str().is_some_and(|l| l.contains('/')), "{v}");
    }
    let metrics = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.contains("kartflow_cdc_dlq_total{reason=\"negative_quantity\"} 1"),
        "{metrics}"
    );
    drop(worker);
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn a_missing_slot_is_reported_and_never_created() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_noslot", &db).await;
    let mut worker = CdcWorker::start(f.config(json!({})), f.dir.path.join("worker.log"));
    let body = not_ready_because(&worker, "does not exist", Duration::from_secs(30)).await;
    assert!(body.contains(&f.slot), "{body}");
    let metrics = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.contains("kartflow_cdc_problem{problem=\"slot_missing\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(worker.is_running(), "backs off instead of exiting");
    let exists = db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&f.slot],
        )
        .await
        .expect("query");
    assert!(exists.is_none(), "the worker must never create the slot");
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    let attempts = log.matches("capture stopped; retrying").count();
    assert!(
        (1..=5).contains(&attempts),
        "backs off (1 s, 2 s, 4 s…) rather than hot-looping: {attempts} attempts"
    );
    // The slot appears (the operator created it): the worker starts streaming on its own.
    f.create_slot(&db).await;
    wait_for(
        "ready once the slot exists",
        Duration::from_secs(60),
        Some(&worker),
        || {
            let r = worker.get("/readyz");
            async move { r.filter(|(s, _)| *s == 200).map(|_| ()) }
        },
    )
    .await;
    worker.kill();
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn outbox_rows_are_routed_keyed_and_cleaned_up() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_outbox", &db).await;
    let outbox = format!("{}_outbox", f.table);
    db.batch_execute(&format!(
        "CREATE TABLE {outbox} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
         aggregatetype text NOT NULL, aggregateid text NOT NULL, type text, payload jsonb);
         ALTER PUBLICATION {} ADD TABLE {outbox};",
        f.publication
    ))
    .await
    .expect("outbox table");
    f.create_slot(&db).await;
    let prefix = format!("{}-", f.name);
    let (orders, shipments) = (format!("{prefix}Order"), format!("{prefix}Shipment"));
    std::thread::scope(|s| {
        s.spawn(|| f.kafka.create_topics(&[&orders, &shipments], 3));
    });
    let worker = CdcWorker::start(
        f.config(json!({"capture": {
            "mode": "outbox",
            "outboxTable": format!("public.{outbox}"),
            "outbox": {"topicPrefix": prefix, "deleteAfterCapture": true}
        }})),
        f.dir.path.join("worker.log"),
    );
    db.batch_execute(&format!(
        "BEGIN;
         INSERT INTO {outbox} (aggregatetype, aggregateid, type, payload) VALUES
           ('Order', 'o-1', 'OrderCreated', '{{\"total\": 12.50}}'),
           ('Shipment', 's-1', 'Shipped', '{{\"carrier\": \"x\"}}'),
           ('Order', 'o-1', 'OrderPaid', NULL),
           ('Nowhere', 'n-1', 'Lost', '{{}}');
         COMMIT;"
    ))
    .await
    .expect("outbox rows");
    let got = wait_for(
        "outbox events on their topics",
        Duration::from_secs(30),
        Some(&worker),
        || async {
            let (o, s) = tokio::task::block_in_place(|| {
                (f.kafka.read_all(&orders), f.kafka.read_all(&shipments))
            });
            (o.len() >= 2 && !s.is_empty()).then_some((o, s))
        },
    )
    .await;
    let (o, s) = got;
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|r| r.key.as_deref() == Some("o-1")));
    assert_eq!(o[0].json(), json!({"total": 12.50}));
    assert_eq!(
        o[0].headers.get("eventType").map(String::as_str),
        Some("OrderCreated")
    );
    assert!(o[1].payload.is_empty(), "a NULL payload is a tombstone");
    assert_eq!(s[0].key.as_deref(), Some("s-1"));
    // The row routed to a topic that does not exist went to the DLQ.
    let dlq = wait_for(
        "the unroutable row in the DLQ",
        Duration::from_secs(30),
        Some(&worker),
        || async {
            let d = tokio::task::block_in_place(|| f.kafka.read_all(&f.dlq));
            (!d.is_empty()).then_some(d)
        },
    )
    .await;
    assert_eq!(dlq[0].json()["reason"], "bad_topic");
    wait_for(
        "captured outbox rows deleted",
        Duration::from_secs(15),
        Some(&worker),
        || {
            let db = &db;
            let outbox = outbox.clone();
            async move {
                let n: i64 = db
                    .query_one(&format!("SELECT count(*) FROM {outbox}"), &[])
                    .await
                    .expect("count")
                    .get(0);
                // The unroutable row was not captured into a topic, so it stays.
                (n == 1).then_some(())
            }
        },
    )
    .await;
    drop(worker);
    let _ = db.batch_execute(&format!("DROP TABLE {outbox}")).await;
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn a_snapshot_killed_half_way_resumes_without_gap() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_snapkill", &db).await;
    db.batch_execute(&format!(
        "INSERT INTO {} (order_id, product_id, quantity) \
         SELECT 'pre-' || g, 'P-' || (g % 13), 1 FROM generate_series(1, 30000) g",
        f.table
    ))
    .await
    .expect("rows before the slot");
    f.create_slot(&db).await;
    let config = f.config(json!({"snapshotMode": "initial", "snapshotChunkRows": 200}));
    let log = f.dir.path.join("worker.log");
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = start_inserter(f.table.clone(), Duration::from_millis(5), stop.clone());
    let mut worker = CdcWorker::start(config.clone(), log.clone());
    wait_for(
        "the snapshot part-way",
        Duration::from_secs(60),
        Some(&worker),
        || {
            let body = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
            async move {
                let rows = body
                    .lines()
                    .find(|l| l.starts_with("kartflow_cdc_snapshot_rows_total"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .unwrap_or(0);
                (rows >= 5_000).then_some(())
            }
        },
    )
    .await;
    worker.kill();
    let worker = CdcWorker::start(config, log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let streamed = inserter.await.expect("inserter");
    let expected = 30_000 + streamed;
    let recs = all_rows_arrive(&f, expected, &worker).await;
    let ids = by_event_id(&recs);
    assert_eq!(
        ids.len() as u64,
        expected,
        "no gap after resuming the snapshot"
    );
    // A resumed snapshot may overlap the stream, but only with identical eventIds; the ids
    // the killed attempt had written are never written again.
    let resumed = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert!(
        resumed.contains("resume_after=Some"),
        "the second attempt resumed after the last written id:\n{}",
        worker.log_tail()
    );
    drop(worker);
    f.drop_all(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn without_kafka_nothing_is_confirmed_and_everything_arrives_once_it_is_back() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_nokafka", &db).await;
    f.create_slot(&db).await;
    let (before, _) = slot_facts(&db, &f.slot).await;
    db.batch_execute(&format!(
        "INSERT INTO {} (order_id, product_id, quantity) \
         SELECT 'o-' || g, 'P-' || (g % 7), 1 FROM generate_series(1, 500) g",
        f.table
    ))
    .await
    .expect("rows");
    // Nothing listens on this port: Kafka is unavailable.
    let mut worker = CdcWorker::start(
        f.config(json!({"kafka": {"bootstrapServers": "127.0.0.1:1"}})),
        f.dir.path.join("worker-no-kafka.log"),
    );
    let body = not_ready_because(&worker, "cannot reach Kafka", Duration::from_secs(60)).await;
    eprintln!("readyz: {body}");
    let metrics = worker.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.contains("kartflow_cdc_problem{problem=\"kafka\"} 1"),
        "{metrics}"
    );
    assert!(worker.is_running(), "retries instead of exiting");
    let (during, _) = slot_facts(&db, &f.slot).await;
    assert_eq!(during, before, "nothing confirmed while Kafka is away");
    worker.kill();

    // Kafka is back (the real address): every row once.
    let worker = CdcWorker::start(f.config(json!({})), f.dir.path.join("worker.log"));
    let recs = all_rows_arrive(&f, 500, &worker).await;
    let ids = by_event_id(&recs);
    assert_eq!(ids.len(), 500);
    assert!(ids.values().all(|v| v.len() == 1));
    drop(worker);
    f.drop_all(&db).await;
}

/// The local server's TLS material (hack/postgres/postgres.sh): its CA signed a certificate for
/// "localhost" only.
fn local_ca_file() -> String {
    let dir = std::env::var("KARTFLOW_DEV_DIR").unwrap_or_else(|_| "/tmp/kartflow-dev".into());
    let path = format!("{dir}/postgres/tls/ca.crt");
    assert!(
        std::path::Path::new(&path).is_file(),
        "{path} is missing: hack/postgres/postgres.sh up creates it (make dev-up)"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kafka and PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn rows_stream_over_tls_verified_against_the_ca() {
    let db = kartflow_testkit::postgres().await;
    let f = Fixture::new("cdc_tls", &db).await;
    f.create_slot(&db).await;
    let settings = kartflow_testkit::settings();
    let url = url::Url::parse(&settings.database_url).expect("DATABASE_URL");
    let worker = CdcWorker::start(
        f.config(json!({"postgres": {
            "host": "localhost",
            "port": url.port().unwrap_or(5432),
            "database": url.path().trim_start_matches('/'),
            "sslMode": "verify-full",
            "caFile": local_ca_file()
        }})),
        f.dir.path.join("worker.log"),
    );
    db.batch_execute(&format!(
        "INSERT INTO {} (order_id, product_id, quantity) \
         SELECT 'o-' || g, 'P-' || (g % 5), 1 FROM generate_series(1, 10) g",
        f.table
    ))
    .await
    .expect("insert");
    let recs = all_rows_arrive(&f, 10, &worker).await;
    assert_eq!(by_event_id(&recs).len(), 10);
    let encrypted: bool = db
        .query_one(
            "SELECT coalesce(bool_and(s.ssl), false) FROM pg_replication_slots r \
             JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1",
            &[&f.slot],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(encrypted, "the replication connection is TLS");
    drop(worker);
    f.drop_all(&db).await;
}
