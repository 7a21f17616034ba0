//! Decoding of real pgoutput from the local PostgreSQL through the worker's replication client
//! (`pg_walstream`) and row view: every column type the mapping uses keeps its exact text
//! (numeric digits, timestamptz, uuid, jsonb, bigint), a TOASTed value PostgreSQL does not resend
//! is reported absent (not NULL), a column added while streaming shows up without a restart, and
//! a transaction larger than the producer queue streams row by row.
//!
//! Needs the stack: `make test` starts it; alone, run `make dev-up` then
//! `cargo test -p kartflow-worker --test cdc_decoding -- --include-ignored`.

use std::time::Duration;

use kartflow_wire::config::CdcSettings;
use kartflow_worker::cdc::row::{Cell, Row};
use kartflow_worker::cdc::source::{self, Credentials};
use pg_walstream::{ChangeEvent, EventType, LogicalReplicationStream};

fn settings(slot: &str, publication: &str) -> CdcSettings {
    let url = url::Url::parse(&kartflow_testkit::settings().database_url).expect("DATABASE_URL");
    serde_json::from_value(serde_json::json!({
        "source": "it.decoding",
        "postgres": {
            "host": url.host_str().unwrap_or("127.0.0.1"),
            "port": url.port().unwrap_or(5432),
            "database": url.path().trim_start_matches('/'),
            "sslMode": "disable"
        },
        "publication": {"name": publication},
        "slot": {"name": slot},
        "topic": "unused",
        "kafka": {"bootstrapServers": "unused:1"}
    }))
    .expect("settings")
}

fn creds() -> Credentials {
    let url = url::Url::parse(&kartflow_testkit::settings().database_url).expect("DATABASE_URL");
    Credentials {
        user: url.username().to_owned(),
        password: url.password().unwrap_or_default().to_owned(),
    }
}

/// The next `n` row changes (inserts and updates), skipping Begin/Commit/Relation.
async fn next_changes(stream: &mut LogicalReplicationStream, n: usize) -> Vec<ChangeEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} changes within 30 s",
            out.len()
        );
        let ev =
            source::next_event_until(stream, tokio::time::Instant::now() + Duration::from_secs(1))
                .await
                .expect("stream");
        if let Some(ev) = ev
            && matches!(
                ev.event_type,
                EventType::Insert { .. } | EventType::Update { .. }
            )
        {
            out.push(ev);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local PostgreSQL: make test runs it (or make dev-up + --include-ignored)"]
async fn real_pgoutput_decodes_types_toast_and_relation_changes() {
    let db = kartflow_testkit::postgres().await;
    let name = kartflow_testkit::unique_name("cdc_decode");
    let (slot, publication) = (format!("{name}_slot"), format!("{name}_pub"));
    db.batch_execute(&format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, amount numeric, at timestamptz, \
         ref uuid, doc jsonb, note text, big text);
         ALTER TABLE {name} ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE PUBLICATION {publication} FOR TABLE {name};"
    ))
    .await
    .expect("table and publication");
    db.query_one(
        "SELECT 1 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .expect("slot");
    let s = settings(&slot, &publication);
    let mut stream = source::open_stream(&s, &creds()).await.expect("stream");

    let toasted = "x".repeat(100_000);
    db.batch_execute(&format!(
        "INSERT INTO {name} VALUES (9223372036854775807, \
         123456789012345678901234567890.123456789012345678901234567890, \
         '2026-11-29 14:32:30.123456+00', '6a3c8a3e-0000-4000-8000-000000000001', \
         '{{\"b\": [1, 2.50], \"a\": null}}', 'it''s', '{toasted}');
         UPDATE {name} SET note = 'changed';"
    ))
    .await
    .expect("insert and update");
    let changes = next_changes(&mut stream, 2).await;
    let EventType::Insert { data, table, .. } = &changes[0].event_type else {
        panic!("first change is the insert: {:?}", changes[0].event_type);
    };
    assert_eq!(&**table, name.as_str());
    assert_eq!(data.cell("id"), Cell::Text("9223372036854775807"));
    assert_eq!(
        data.cell("amount"),
        Cell::Text("123456789012345678901234567890.123456789012345678901234567890"),
        "numeric digits survive exactly"
    );
    assert_eq!(data.cell("at"), Cell::Text("2026-11-29 14:32:30.123456+00"));
    assert_eq!(
        kartflow_worker::cdc::mapping::timestamp_ms("at", "2026-11-29 14:32:30.123456+00"),
        Ok(1_795_962_750_123)
    );
    assert_eq!(
        data.cell("ref"),
        Cell::Text("6a3c8a3e-0000-4000-8000-000000000001")
    );
    assert_eq!(
        data.cell("doc"),
        Cell::Text(r#"{"a": null, "b": [1, 2.50]}"#)
    );
    assert_eq!(data.cell("note"), Cell::Text("it's"));
    assert_eq!(data.cell("big"), Cell::Text(toasted.as_str()));
    let EventType::Update { new_data, .. } = &changes[1].event_type else {
        panic!("second change is the update");
    };
    assert_eq!(new_data.cell("note"), Cell::Text("changed"));
    assert_eq!(
        new_data.cell("big"),
        Cell::Absent,
        "an unchanged TOASTed value is not resent: absent, never mistaken for NULL"
    );

    // A column added while streaming: the next Relation message carries it, no restart.
    db.batch_execute(&format!(
        "ALTER TABLE {name} ADD COLUMN created_at timestamptz DEFAULT '2026-01-01 00:00:00+00';
         INSERT INTO {name} (id, note) VALUES (1, NULL);"
    ))
    .await
    .expect("alter and insert");
    let changes = next_changes(&mut stream, 1).await;
    let EventType::Insert { data, .. } = &changes[0].event_type else {
        panic!("an insert");
    };
    assert_eq!(
        data.cell("created_at"),
        Cell::Text("2026-01-01 00:00:00+00")
    );
    assert_eq!(data.cell("note"), Cell::Null);

    // A transaction of 50k rows arrives as a stream of changes, not one buffered blob.
    db.batch_execute(&format!(
        "INSERT INTO {name} (id, note) SELECT g, 'bulk' FROM generate_series(2, 50001) g"
    ))
    .await
    .expect("bulk insert");
    let bulk = next_changes(&mut stream, 50_000).await;
    assert_eq!(bulk.len(), 50_000);

    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = db
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION {publication}; \
             DROP TABLE {name};"
        ))
        .await;
}
