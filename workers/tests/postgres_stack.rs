//! Proves the local PostgreSQL is set up for CDC: logical replication with pgoutput, a publication,
//! a slot that captures committed rows, and the slot facts the slot guard reads.
//!
//! Needs the stack: `make test` starts it; alone, run `make dev-up` then
//! `cargo test -p kartflow-worker --test postgres_stack -- --include-ignored`.

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn pgoutput_slot_captures_rows_and_reports_its_lsns() {
    let db = kartflow_testkit::postgres().await;
    let wal_level: String = db
        .query_one("SHOW wal_level", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(wal_level, "logical", "CDC needs wal_level=logical");

    let table = kartflow_testkit::unique_name("orders");
    let publication = format!("{table}_pub");
    let slot = format!("{table}_slot");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, product_id text NOT NULL, quantity int NOT NULL);
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ))
    .await
    .expect("table and publication");

    let created = db
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .expect("create the pgoutput slot");
    let created_lsn: String = created.get(0);

    db.batch_execute(&format!(
        "INSERT INTO {table} (product_id, quantity) VALUES ('P1', 2), ('P2', 5), ('P1', 1);"
    ))
    .await
    .expect("insert rows");

    // Peek (not consume) the pgoutput stream: one Begin, three Inserts, one Commit at least.
    let changes = db
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await
        .expect("peek the slot");
    let kinds: Vec<u8> = changes.iter().map(|r| r.get::<_, Vec<u8>>(0)[0]).collect();
    let inserts = kinds.iter().filter(|k| **k == b'I').count();
    assert_eq!(
        inserts, 3,
        "three inserted rows in the stream, message kinds {kinds:?}"
    );
    assert!(
        kinds.contains(&b'B') && kinds.contains(&b'C'),
        "begin and commit: {kinds:?}"
    );

    let facts = db
        .query_one(
            "SELECT plugin, active, wal_status, restart_lsn::text, confirmed_flush_lsn::text, \
                    (pg_current_wal_lsn() - restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("the slot is listed");
    let plugin: String = facts.get(0);
    let active: bool = facts.get(1);
    let wal_status: String = facts.get(2);
    let restart_lsn: String = facts.get(3);
    let confirmed: String = facts.get(4);
    let retained: i64 = facts.get(5);
    assert_eq!(plugin, "pgoutput");
    assert!(!active, "no reader is attached");
    assert_eq!(wal_status, "reserved");
    assert!(
        !restart_lsn.is_empty() && confirmed == created_lsn,
        "confirmed {confirmed}, created {created_lsn}"
    );
    assert!(
        retained > 0,
        "the inserts are WAL the slot retains, got {retained} bytes"
    );

    // Consuming advances confirmed_flush_lsn past the inserts.
    db.query(
        "SELECT 1 FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
         'proto_version', '1', 'publication_names', $2)",
        &[&slot, &publication],
    )
    .await
    .expect("consume the slot");
    let advanced: bool = db
        .query_one(
            "SELECT confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &created_lsn],
        )
        .await
        .expect("slot facts after consuming")
        .get(0);
    assert!(
        advanced,
        "confirmed_flush_lsn advances once the changes are consumed"
    );

    db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("drop the slot");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("count slots")
        .get(0);
    assert_eq!(left, 0, "the slot is gone");
    db.batch_execute(&format!(
        "DROP PUBLICATION {publication}; DROP TABLE {table};"
    ))
    .await
    .expect("clean up");
}
