//! The slot guard against the real PostgreSQL of the local stack: real slots, real WAL, a real
//! logical reader (`pg_recvlogical`) that stalls or keeps reconnecting, real drops.
//!
//! Needs the stack: `make test` starts it; alone, run `make dev-up` then
//! `cargo test -p kartflow-operator --test slot_guard_postgres -- --include-ignored`.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kartflow_operator::crd::cdc_source::{GuardAction, SlotGuard, SslMode};
use kartflow_operator::slot_guard::postgres::{self, quote_ident};
use kartflow_operator::slot_guard::{
    self, Cause, Db, DropOutcome, DropStage, GuardError, GuardPolicy, SlotMemory, SlotReading,
    Verdict, decide, drop_done, drop_record, facts, track,
};
use kartflow_testkit::{settings, unique_name};
use tokio_postgres::Client;
use tokio_postgres::config::Host;

const MI: i64 = 1 << 20;

/// Where DATABASE_URL points, in the pieces `slot_guard::connect` takes.
struct Target {
    host: String,
    port: u16,
    database: String,
    user: String,
    password: String,
}

impl Target {
    fn with<'a>(&'a self, ssl_mode: SslMode, ca_pem: Option<&'a [u8]>) -> postgres::Target<'a> {
        postgres::Target {
            host: &self.host,
            port: self.port,
            database: &self.database,
            user: &self.user,
            password: &self.password,
            ssl_mode,
            ca_pem,
            application_name: "kartflow-slot-guard test",
        }
    }
}

fn target() -> Target {
    let url = settings().database_url;
    let config = tokio_postgres::Config::from_str(&url)
        .unwrap_or_else(|e| panic!("DATABASE_URL is not a PostgreSQL URL: {e}"));
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        other => panic!("DATABASE_URL needs a TCP host, not {other:?}"),
    };
    Target {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or("kartflow").to_owned(),
        user: config.get_user().unwrap_or("kartflow").to_owned(),
        password: String::from_utf8_lossy(config.get_password().unwrap_or_default()).into_owned(),
    }
}

/// The test's own client (fails the test, saying how to start the stack, when PostgreSQL is
/// down) and the guard's connection.
async fn connect() -> (Client, Db) {
    let admin = kartflow_testkit::postgres().await;
    let db = slot_guard::connect(&target().with(SslMode::Prefer, None))
        .await
        .unwrap_or_else(|e| panic!("the slot guard cannot connect: {e}"));
    (admin, db)
}

/// How long a connected reader may confirm nothing before the test policies call it stuck.
const MAX_UNCONFIRMED: &str = "2s";

fn policy(warn: &str, drop: &str, action: GuardAction, guard_unowned: bool) -> GuardPolicy {
    GuardPolicy::from_spec(&SlotGuard {
        check_interval: "1s".into(),
        warn_retained_wal: warn.into(),
        drop_retained_wal: drop.into(),
        max_inactive: None,
        max_unconfirmed: Some(MAX_UNCONFIRMED.into()),
        drop_on_retained_wal: false,
        action,
        guard_unowned,
    })
    .expect("valid test policy")
}

/// Writes at least `bytes` of WAL. `pg_switch_wal` needs superuser; non-transactional logical
/// messages only need `wal_level = logical` and are not captured by any publication.
async fn generate_wal(admin: &Client, bytes: i64) {
    let start: String = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("current WAL position")
        .get(0);
    loop {
        admin
            .execute(
                "SELECT pg_logical_emit_message(false, 'kartflow-test', repeat('x', 4194304))",
                &[],
            )
            .await
            .expect("write WAL");
        let written: i64 = admin
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
                &[&start],
            )
            .await
            .expect("WAL written")
            .get(0);
        if written >= bytes {
            return;
        }
    }
}

async fn slot_exists(admin: &Client, slot: &str) -> bool {
    admin
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("list slots")
        .is_some()
}

async fn backend_alive(admin: &Client, pid: i32) -> bool {
    admin
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("list backends")
        .is_some()
}

/// Polls until the slot has a reader other than `not_pid`.
async fn wait_active(
    db: &Db,
    slot: &str,
    not_pid: Option<i32>,
    reader: &mut Reader,
) -> SlotReading {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = slot_guard::read_slot(db, slot, None)
            .await
            .expect("read the slot");
        if r.active && r.active_pid.is_some() && r.active_pid != not_pid {
            return r;
        }
        if Instant::now() > deadline {
            panic!(
                "slot {slot} got no reader within 30 s (last reading {r:?}); pg_recvlogical: {}",
                reader.diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops what a test created even when it fails: a leaked slot would retain the shared
/// server's WAL forever, the very thing the guard exists to prevent.
#[derive(Default)]
struct Cleanup {
    /// Sessions to end first: an open transaction would block DROP TABLE and slot creation.
    backends: Vec<i32>,
    slots: Vec<String>,
    publications: Vec<String>,
    tables: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut sql = String::new();
        for pid in &self.backends {
            sql.push_str(&format!("SELECT pg_terminate_backend({pid}, 5000);"));
        }
        for slot in &self.slots {
            sql.push_str(&format!(
                "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
                   WHERE slot_name = {0} AND active_pid IS NOT NULL; \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                   WHERE slot_name = {0};",
                lit(slot)
            ));
        }
        for p in &self.publications {
            sql.push_str(&format!("DROP PUBLICATION IF EXISTS {};", quote_ident(p)));
        }
        for t in &self.tables {
            sql.push_str(&format!("DROP TABLE IF EXISTS {};", quote_ident(t)));
        }
        let url = settings().database_url;
        // Drop cannot await: a thread with its own runtime does the work.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await
            })
            .map_err(std::io::Error::other)
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of {:?} failed: {e}", self.slots),
            Err(_) => eprintln!("cleanup of {:?} panicked", self.slots),
        }
    }
}

/// A `pg_recvlogical` streaming the slot to /dev/null; killed and reaped on drop.
struct Reader {
    child: Option<Child>,
    log: PathBuf,
}

fn pg_recvlogical() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("pg_recvlogical"));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pg_recvlogical"))
        .max();
    from_pg_config
        .into_iter()
        .chain(debian)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "pg_recvlogical not found (pg_config --bindir, /usr/lib/postgresql/*/bin): \
                 install the PostgreSQL client tools (Debian: postgresql-client)"
            )
        })
}

impl Reader {
    /// Starts streaming; it reconnects every 5 s when its connection ends (pg_recvlogical's
    /// default), like a real CDC reader would.
    fn start(slot: &str, publication: &str) -> Reader {
        let t = target();
        let log = std::env::temp_dir().join(format!("{slot}.pg_recvlogical.log"));
        let stderr = std::fs::File::create(&log).expect("reader log file");
        let child = Command::new(pg_recvlogical())
            // Status every second: the guard sees its confirmations promptly.
            .args([
                "--start",
                "-S",
                slot,
                "-f",
                "/dev/null",
                "-F",
                "0",
                "-s",
                "1",
            ])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={publication}"))
            .arg("-d")
            .arg(format!(
                "host={} port={} dbname={} user={} application_name=kartflow-test-reader",
                t.host, t.port, t.database, t.user
            ))
            .env("PGPASSWORD", &t.password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start pg_recvlogical");
        Reader {
            child: Some(child),
            log,
        }
    }

    fn signal(&self, signal: &str) {
        let Some(child) = &self.child else { return };
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {} failed", child.id());
    }

    fn diagnostics(&mut self) -> String {
        let status = self.child.as_mut().map(|c| c.try_wait());
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("status {status:?}, stderr {log:?}")
    }

    /// Kills and reaps the process.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Table, publication and slot for a test that runs a reader.
async fn streamed_slot(
    admin: &Client,
    db: &Db,
    prefix: &str,
    cleanup: &mut Cleanup,
) -> (String, String) {
    let base = unique_name(prefix);
    let (table, publication, slot) = (format!("{base}_t"), format!("{base}_pub"), base.clone());
    cleanup.tables.push(table.clone());
    cleanup.publications.push(publication.clone());
    cleanup.slots.push(slot.clone());
    admin
        .batch_execute(&format!(
            "CREATE TABLE {} (id bigserial PRIMARY KEY, note text)",
            quote_ident(&table)
        ))
        .await
        .expect("create table");
    assert!(
        slot_guard::ensure_publication(db, &publication, &[format!("public.{table}")])
            .await
            .expect("create publication")
    );
    assert!(
        slot_guard::ensure_slot(db, &slot)
            .await
            .expect("create slot")
    );
    (slot, publication)
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn slot_without_reader_past_the_drop_threshold_is_dropped() {
    let (admin, db) = connect().await;
    let slot = unique_name("guard_idle");
    let mut cleanup = Cleanup::default();
    cleanup.slots.push(slot.clone());
    assert!(
        slot_guard::ensure_slot(&db, &slot)
            .await
            .expect("create slot")
    );

    let first = slot_guard::read_slot(&db, &slot, None).await.expect("read");
    assert!(
        first.exists && !first.active && first.active_pid.is_none(),
        "{first:?}"
    );
    assert_eq!(first.wal_status.as_deref(), Some("reserved"));
    assert!(first.confirmed_flush_lsn.is_some(), "{first:?}");
    let since = first
        .inactive_since
        .expect("an inactive slot is timed from the first reading");
    let roomy = policy("1Gi", "2Gi", GuardAction::Drop, false);
    assert_eq!(
        decide(&roomy, &first, true, Timestamp::now()),
        Verdict::Healthy
    );

    generate_wal(&admin, 33 * MI).await;
    let reading = slot_guard::read_slot(&db, &slot, Some(since))
        .await
        .expect("read");
    assert_eq!(
        reading.inactive_since,
        Some(since),
        "inactivity carries over between readings"
    );
    let retained = reading.retained_bytes.expect("retained WAL");
    assert!(retained > 32 * MI, "retained {retained}");
    let now = Timestamp::now();
    let status = facts(&reading, None, now);
    assert_eq!(status.retained_bytes, Some(retained));
    assert!(
        status
            .retained_wal
            .as_deref()
            .is_some_and(|w| w.ends_with("Mi")),
        "{status:?}"
    );

    let tight = policy("16Mi", "32Mi", GuardAction::Drop, false);
    let verdict = decide(&tight, &reading, true, now);
    let Verdict::Drop {
        cause,
        reason,
        terminate_pid,
    } = &verdict
    else {
        panic!("expected Drop, got {verdict:?}");
    };
    assert_eq!((cause, *terminate_pid), (&Cause::ReaderGone, None));
    assert!(
        reason.starts_with(&format!("slot {slot} has no reader and retains "))
            && reason.ends_with("above dropRetainedWal 32Mi"),
        "{reason}"
    );

    let outcome = slot_guard::drop_slot(&db, &slot, *terminate_pid)
        .await
        .expect("drop");
    assert!(
        outcome.dropped && outcome.terminated == 0 && outcome.attempts == 1,
        "{outcome:?}"
    );
    assert!(
        outcome.retained_bytes.is_some_and(|b| b >= retained),
        "{outcome:?}"
    );
    let record = drop_record(cause, reason, reading.retained_bytes, now, None, Some(1));
    let record = drop_done(record, DropStage::Dropped, outcome.retained_bytes);
    assert!(record.retained_bytes >= retained, "{record:?}");
    assert!(!slot_exists(&admin, &slot).await, "slot {slot} is gone");

    let after = slot_guard::read_slot(&db, &slot, Some(since))
        .await
        .expect("read");
    assert_eq!(after, SlotReading::missing(&slot));
    assert_eq!(decide(&tight, &after, true, now), Verdict::Missing);
    assert!(!facts(&after, None, now).exists);
    let again = slot_guard::drop_slot(&db, &slot, None)
        .await
        .expect("dropping a missing slot");
    assert_eq!(
        again,
        DropOutcome {
            dropped: false,
            retained_bytes: None,
            terminated: 0,
            attempts: 1
        }
    );
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn stalled_reader_is_terminated_and_its_slot_dropped() {
    let (admin, db) = connect().await;
    let mut cleanup = Cleanup::default();
    let (slot, publication) = streamed_slot(&admin, &db, "guard_stall", &mut cleanup).await;
    let mut reader = Reader::start(&slot, &publication);
    let attached = wait_active(&db, &slot, None, &mut reader).await;
    let pid = attached.active_pid.expect("reader pid");
    assert_eq!(attached.inactive_since, None);

    // Stopped, it confirms nothing while its walsender stays connected: WAL piles up.
    reader.signal("STOP");
    let tight = policy("16Mi", "32Mi", GuardAction::Drop, false);
    let first = slot_guard::read_slot(&db, &slot, None).await.expect("read");
    let (_, memory) = track(first, &SlotMemory::default(), Timestamp::now());
    generate_wal(&admin, 33 * MI).await;
    let reading = slot_guard::read_slot(&db, &slot, None).await.expect("read");
    assert!(
        reading.active && reading.active_pid == Some(pid),
        "{reading:?}"
    );
    assert!(
        reading.retained_bytes.is_some_and(|b| b > 32 * MI),
        "{reading:?}"
    );
    // Connected: size alone is not enough, and it has not been silent for long yet.
    let (early, memory) = track(reading, &memory, Timestamp::now());
    let verdict = decide(&tight, &early, true, Timestamp::now());
    assert!(
        matches!(verdict, Verdict::Warn { .. } | Verdict::Healthy),
        "a connected reader is not dropped before maxUnconfirmed: {verdict:?}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let reading = slot_guard::read_slot(&db, &slot, None).await.expect("read");
    let (reading, _) = track(reading, &memory, Timestamp::now());
    let verdict = decide(&tight, &reading, true, Timestamp::now());
    let Verdict::Drop {
        cause,
        terminate_pid,
        reason,
    } = verdict
    else {
        panic!("expected Drop, got {verdict:?}");
    };
    assert_eq!(
        (cause, terminate_pid),
        (Cause::ReaderStuck, Some(pid)),
        "{reason}"
    );
    assert!(reason.contains("maxUnconfirmed 2s"), "{reason}");
    let outcome = slot_guard::drop_slot(&db, &slot, terminate_pid)
        .await
        .expect("drop");
    assert!(
        outcome.dropped && outcome.terminated == 1 && outcome.attempts == 1,
        "{outcome:?}"
    );
    assert!(
        outcome.retained_bytes.is_some_and(|b| b > 32 * MI),
        "{outcome:?}"
    );
    assert!(!slot_exists(&admin, &slot).await, "slot {slot} is gone");
    assert!(
        !backend_alive(&admin, pid).await,
        "walsender {pid} was terminated"
    );

    reader.signal("CONT");
    assert!(reader.stop().is_some(), "pg_recvlogical reaped");
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn reader_that_reconnects_before_the_drop_is_terminated_and_the_drop_retried() {
    let (admin, db) = connect().await;
    let mut cleanup = Cleanup::default();
    let (slot, publication) = streamed_slot(&admin, &db, "guard_retry", &mut cleanup).await;
    let mut reader = Reader::start(&slot, &publication);
    let old_pid = wait_active(&db, &slot, None, &mut reader)
        .await
        .active_pid
        .expect("reader pid");

    // The race the retry exists for: the guard read `old_pid`, someone ended that connection,
    // and the reader came back (pg_recvlogical retries after 5 s) before the guard's drop.
    let ended: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&old_pid])
        .await
        .expect("terminate the first walsender")
        .get(0);
    assert!(ended);
    let new_pid = wait_active(&db, &slot, Some(old_pid), &mut reader)
        .await
        .active_pid
        .expect("reconnected reader pid");

    let outcome = slot_guard::drop_slot(&db, &slot, Some(old_pid))
        .await
        .expect("drop");
    assert!(
        outcome.dropped && outcome.terminated == 1 && outcome.attempts == 2,
        "the stale pid is skipped, the drop meets the new reader, ends it and retries: {outcome:?}"
    );
    assert!(!slot_exists(&admin, &slot).await, "slot {slot} is gone");
    assert!(
        !backend_alive(&admin, new_pid).await,
        "walsender {new_pid} was terminated"
    );
    assert!(reader.stop().is_some(), "pg_recvlogical reaped");
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn a_reader_held_back_by_an_open_transaction_is_warned_about_never_dropped() {
    let (admin, db) = connect().await;
    let mut cleanup = Cleanup::default();
    let (slot, publication) = streamed_slot(&admin, &db, "guard_held", &mut cleanup).await;
    let mut reader = Reader::start(&slot, &publication);
    let pid = wait_active(&db, &slot, None, &mut reader)
        .await
        .active_pid
        .expect("reader pid");

    // A session that wrote and stays open: decoding must keep WAL from its start.
    let (holder, conn) = tokio_postgres::connect(&settings().database_url, tokio_postgres::NoTls)
        .await
        .expect("holder session");
    tokio::spawn(conn);
    let table = &cleanup.tables[0];
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {} (note) VALUES ('held');",
            quote_ident(table)
        ))
        .await
        .expect("open a writing transaction");
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("holder pid")
        .get(0);
    cleanup.backends.push(holder_pid);
    generate_wal(&admin, 33 * MI).await;

    // The reader confirms what it received (status every second) while retained WAL stays.
    let tight = policy("16Mi", "32Mi", GuardAction::Drop, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut memory = SlotMemory::default();
    let verdict = loop {
        let reading = slot_guard::read_slot(&db, &slot, None).await.expect("read");
        let (reading, next) = track(reading, &memory, Timestamp::now());
        memory = next;
        let verdict = decide(&tight, &reading, true, Timestamp::now());
        if matches!(verdict.cause(), Some(Cause::HeldBackByTransaction(_))) {
            assert!(
                reading.retained_bytes.is_some_and(|b| b > 32 * MI),
                "{reading:?}"
            );
            break verdict;
        }
        assert!(
            Instant::now() < deadline,
            "the reader never caught up past the open transaction: {verdict:?} {reading:?}; \
             pg_recvlogical: {}",
            reader.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let Verdict::Warn {
        cause: Cause::HeldBackByTransaction(Some(blocker)),
        reason,
    } = &verdict
    else {
        panic!("a reader that keeps up is only warned about: {verdict:?}");
    };
    assert_eq!(blocker.pid, holder_pid, "{reason}");
    assert!(
        reason.contains(&format!("backend {holder_pid}")),
        "the warning names the blocking session: {reason}"
    );
    assert!(
        slot_exists(&admin, &slot).await && backend_alive(&admin, pid).await,
        "slot and reader are untouched"
    );

    // Past maxUnconfirmed it is still not stuck: it keeps confirming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reading = slot_guard::read_slot(&db, &slot, None).await.expect("read");
    let (reading, _) = track(reading, &memory, Timestamp::now());
    let verdict = decide(&tight, &reading, true, Timestamp::now());
    assert!(
        !matches!(verdict, Verdict::Drop { .. }),
        "{verdict:?} {reading:?}"
    );
    holder.batch_execute("ROLLBACK").await.expect("end it");
    assert!(reader.stop().is_some(), "pg_recvlogical reaped");
}

/// A slot past the drop threshold, for the verdicts that must not drop.
async fn bloated_slot(admin: &Client, db: &Db, prefix: &str, cleanup: &mut Cleanup) -> SlotReading {
    let slot = unique_name(prefix);
    cleanup.slots.push(slot.clone());
    assert!(
        slot_guard::ensure_slot(db, &slot)
            .await
            .expect("create slot")
    );
    generate_wal(admin, 3 * MI).await;
    let reading = slot_guard::read_slot(db, &slot, None).await.expect("read");
    assert!(
        reading.retained_bytes.is_some_and(|b| b > 2 * MI),
        "{reading:?}"
    );
    reading
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn action_alert_reports_but_keeps_the_slot() {
    let (admin, db) = connect().await;
    let mut cleanup = Cleanup::default();
    let reading = bloated_slot(&admin, &db, "guard_alert", &mut cleanup).await;
    let verdict = decide(
        &policy("1Mi", "2Mi", GuardAction::Alert, false),
        &reading,
        true,
        Timestamp::now(),
    );
    let Verdict::WouldDropButAlertOnly { reason, .. } = &verdict else {
        panic!("expected WouldDropButAlertOnly, got {verdict:?}");
    };
    assert!(reason.ends_with("above dropRetainedWal 2Mi"), "{reason}");
    assert!(
        verdict
            .message()
            .is_some_and(|m| m.contains("spec.guard.action is alert"))
    );
    assert!(
        slot_exists(&admin, &reading.slot_name).await,
        "the slot is kept"
    );
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn unowned_slot_is_left_alone_unless_guarded() {
    let (admin, db) = connect().await;
    let mut cleanup = Cleanup::default();
    let reading = bloated_slot(&admin, &db, "guard_unowned", &mut cleanup).await;
    let now = Timestamp::now();
    let verdict = decide(
        &policy("1Mi", "2Mi", GuardAction::Drop, false),
        &reading,
        false,
        now,
    );
    assert!(
        matches!(verdict, Verdict::WouldDropButUnowned { .. }),
        "{verdict:?}"
    );
    assert!(
        verdict
            .message()
            .is_some_and(|m| m.contains("spec.guard.guardUnowned"))
    );
    assert!(
        slot_exists(&admin, &reading.slot_name).await,
        "the slot is untouched"
    );

    let guarded = decide(
        &policy("1Mi", "2Mi", GuardAction::Drop, true),
        &reading,
        false,
        now,
    );
    assert!(
        matches!(
            guarded,
            Verdict::Drop {
                terminate_pid: None,
                ..
            }
        ),
        "{guarded:?}"
    );
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn publication_and_slot_are_created_once_and_dropped() {
    let (admin, db) = connect().await;
    let base = unique_name("guard_ensure");
    // Upper case, a space and a quote: identifiers must be quoted, not folded or injected.
    let table = format!("{base}_Order \"Lines\"");
    let (publication, slot) = (format!("{base}_Pub"), base.clone());
    let mut cleanup = Cleanup {
        backends: Vec::new(),
        slots: vec![slot.clone()],
        publications: vec![publication.clone()],
        tables: vec![table.clone()],
    };
    admin
        .batch_execute(&format!(
            "CREATE TABLE {} (id int PRIMARY KEY)",
            quote_ident(&table)
        ))
        .await
        .expect("create table");

    let tables = [format!("public.{table}")];
    assert!(
        slot_guard::ensure_publication(&db, &publication, &tables)
            .await
            .expect("create")
    );
    assert!(
        !slot_guard::ensure_publication(&db, &publication, &tables)
            .await
            .expect("exists")
    );
    let published: Vec<String> = admin
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .expect("publication tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, vec![table.clone()]);

    assert!(
        slot_guard::ensure_slot(&db, &slot)
            .await
            .expect("create slot")
    );
    assert!(
        !slot_guard::ensure_slot(&db, &slot)
            .await
            .expect("slot exists")
    );
    let plugin: String = admin
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot listed")
        .get(0);
    assert_eq!(plugin, "pgoutput");

    assert!(
        slot_guard::drop_publication(&db, &publication)
            .await
            .expect("drop")
    );
    assert!(
        !slot_guard::drop_publication(&db, &publication)
            .await
            .expect("drop again")
    );
    let left = admin
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .expect("publications");
    assert!(left.is_none(), "publication {publication} is gone");

    let empty: [&str; 0] = [];
    let err = slot_guard::ensure_publication(&db, &publication, &empty)
        .await
        .expect_err("no tables");
    assert!(
        err.to_string()
            .starts_with("spec.publication.tables is empty"),
        "{err}"
    );
    let err =
        slot_guard::ensure_publication(&db, &publication, &[format!("public.{base}_missing")])
            .await
            .expect_err("missing table");
    assert!(
        err.to_string().contains("does not exist")
            && err.to_string().contains("spec.publication.tables"),
        "{err}"
    );

    // A same-named slot of another plugin is never adopted.
    let foreign = format!("{base}_td");
    cleanup.slots.push(foreign.clone());
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&foreign],
        )
        .await
        .expect("create a test_decoding slot");
    let err = slot_guard::ensure_slot(&db, &foreign)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, GuardError::SlotMismatch { .. }), "{err}");
    assert!(err.to_string().contains("plugin test_decoding"), "{err}");
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn a_stale_pid_is_never_signalled() {
    let (admin, db) = connect().await;
    let slot = unique_name("guard_stale");
    let mut cleanup = Cleanup::default();
    cleanup.slots.push(slot.clone());
    assert!(
        slot_guard::ensure_slot(&db, &slot)
            .await
            .expect("create slot")
    );
    // An older reading's pid now belongs to an unrelated session (here: the test's own).
    let bystander: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let outcome = slot_guard::drop_slot(&db, &slot, Some(bystander))
        .await
        .expect("drop");
    assert!(outcome.dropped && outcome.terminated == 0, "{outcome:?}");
    admin
        .execute("SELECT 1", &[])
        .await
        .expect("the bystander session is alive");
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn connection_errors_say_where_and_what_to_check() {
    let _ = kartflow_testkit::postgres().await;
    let t = target();
    let err = slot_guard::connect(&postgres::Target {
        password: "wrong",
        ..t.with(SslMode::Disable, None)
    })
    .await
    .expect_err("wrong password");
    let msg = err.to_string();
    let endpoint = format!("{}:{}/{}", t.host, t.port, t.database);
    assert!(
        msg.contains(&endpoint) && msg.contains("spec.postgres.credentialsSecretRef"),
        "{msg}"
    );

    let err = slot_guard::connect(&postgres::Target {
        port: 1,
        ..t.with(SslMode::Prefer, None)
    })
    .await
    .expect_err("nothing listens on port 1");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}:1/{}", t.host, t.database))
            && msg.contains("check spec.postgres.host and port"),
        "{msg}"
    );
    assert!(err.is_connection_closed());
}

/// The local server's TLS material (hack/postgres/postgres.sh): its CA, an unrelated CA, and a
/// server certificate for "localhost" only.
fn tls_file(name: &str) -> Vec<u8> {
    let dir = std::env::var("KARTFLOW_DEV_DIR").unwrap_or_else(|_| "/tmp/kartflow-dev".into());
    let path = PathBuf::from(dir).join("postgres/tls").join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; hack/postgres/postgres.sh up creates it (make dev-up)",
            path.display()
        )
    })
}

/// Whether the guard's own connection is encrypted, as the server sees it.
async fn encrypted(db: &Db) -> bool {
    db.client()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
#[ignore = "needs the local PostgreSQL: `make test` runs it (or `make dev-up` + --include-ignored)"]
async fn tls_modes_mean_what_libpq_means() {
    let _ = kartflow_testkit::postgres().await;
    let t = target();
    let ca = tls_file("ca.crt");
    let other = tls_file("other-ca.crt");
    let (ca, other) = (ca.as_slice(), other.as_slice());
    let at = |host, mode, ca| (host, mode, ca);
    // (host, mode, CA, Ok(encrypted) or Err(part of the message))
    type Case<'a> = ((&'a str, SslMode, Option<&'a [u8]>), Result<bool, &'a str>);
    let cases: Vec<Case<'_>> = vec![
        (at("127.0.0.1", SslMode::Disable, None), Ok(false)),
        (at("127.0.0.1", SslMode::Prefer, None), Ok(true)),
        (at("127.0.0.1", SslMode::Require, None), Ok(true)),
        (at("127.0.0.1", SslMode::Require, Some(ca)), Ok(true)),
        (at("127.0.0.1", SslMode::VerifyCa, Some(ca)), Ok(true)),
        (at("localhost", SslMode::VerifyFull, Some(ca)), Ok(true)),
        // The certificate names localhost only.
        (
            at("127.0.0.1", SslMode::VerifyFull, Some(ca)),
            Err("certificate"),
        ),
        (
            at("localhost", SslMode::VerifyCa, Some(other)),
            Err("certificate"),
        ),
        (
            at("localhost", SslMode::VerifyFull, Some(other)),
            Err("certificate"),
        ),
        (
            at("localhost", SslMode::Require, Some(other)),
            Err("certificate"),
        ),
    ];
    for ((host, mode, ca_pem), want) in cases {
        let target = postgres::Target {
            host,
            ..t.with(mode, ca_pem)
        };
        let got = slot_guard::connect(&target).await;
        let name = format!("{host} {mode:?} ca={}", ca_pem.is_some());
        match (got, want) {
            (Ok(db), Ok(tls)) => assert_eq!(encrypted(&db).await, tls, "{name}"),
            (Err(e), Err(says)) => {
                let msg = e.to_string();
                assert!(msg.contains(says) && msg.contains(host), "{name}: {msg}");
            }
            (got, want) => panic!("{name}: got {:?}, want {want:?}", got.map(|_| "connected")),
        }
    }
}
