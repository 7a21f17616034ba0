//! Harness of the CDC worker's acceptance tests: a captured table with its own publication,
//! slot (created with SQL, as the operator does) and topics, `kartflow-worker cdc` child
//! processes, and readers of what reached Kafka and what the slot confirmed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::{Kafka, Rec, TestDir, WORKER_BIN, unique_name};

pub const PG_USER: &str = "kartflow";
pub const PG_PASSWORD: &str = "kartflow";

/// A table captured into its own topics, cleaned up on drop (slot, publication, table).
pub struct Fixture {
    pub name: String,
    pub table: String,
    pub slot: String,
    pub publication: String,
    pub topic: String,
    pub dlq: String,
    pub positions: String,
    pub dir: TestDir,
    pub kafka: Kafka,
    pub extra: Value,
}

impl Fixture {
    /// Table `<name>` (id bigserial, order_id, product_id, quantity), its publication and
    /// topic; the slot is created by [`Fixture::create_slot`] (so rows can predate it).
    pub async fn new(prefix: &str, db: &tokio_postgres::Client) -> Self {
        let name = unique_name(prefix);
        let f = Self {
            table: name.clone(),
            slot: format!("{name}_slot"),
            publication: format!("{name}_pub"),
            topic: format!("{name}-orders"),
            dlq: format!("{name}-dlq"),
            positions: format!("{name}-positions"),
            dir: TestDir::new(prefix),
            kafka: Kafka::connect(),
            extra: json!({}),
            name,
        };
        db.batch_execute(&format!(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, order_id text, product_id text, \
             quantity int);
             CREATE PUBLICATION {p} FOR TABLE {t};",
            t = f.table,
            p = f.publication
        ))
        .await
        .expect("table and publication");
        // The helper runs its own runtime: off this one's threads.
        std::thread::scope(|s| {
            s.spawn(|| f.kafka.create_topics(&[&f.topic], 3));
        });
        f
    }

    pub async fn create_slot(&self, db: &tokio_postgres::Client) {
        db.query_one(
            "SELECT 1 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&self.slot],
        )
        .await
        .expect("create the slot");
    }

    /// The worker's config file; `patch` replaces top-level keys.
    pub fn config(&self, patch: Value) -> PathBuf {
        let settings = kartflow_testkit::settings();
        let url = url::Url::parse(&settings.database_url).expect("DATABASE_URL");
        let mut v = json!({
            "source": format!("it.{}", self.name),
            "postgres": {
                "host": url.host_str().unwrap_or("127.0.0.1"),
                "port": url.port().unwrap_or(5432),
                "database": url.path().trim_start_matches('/'),
                "sslMode": "disable"
            },
            "publication": {"name": self.publication},
            "slot": {"name": self.slot},
            "capture": {"table": format!("public.{}", self.table)},
            "topic": self.topic,
            "dlqTopic": self.dlq,
            "positionsTopic": self.positions,
            "snapshotMode": "never",
            "heartbeatInterval": "1s",
            "kafka": {"bootstrapServers": self.kafka.bootstrap},
            "adminListen": "127.0.0.1:0"
        });
        for (k, val) in patch.as_object().into_iter().flatten() {
            v[k] = val.clone();
        }
        let path = self
            .dir
            .path
            .join(format!("cdc-{}.json", unique_name("cfg")));
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
        path
    }

    /// Order lines in the topic (read_committed), by eventId.
    pub fn order_lines(&self) -> Vec<Rec> {
        self.kafka.read_all(&self.topic)
    }

    pub async fn drop_all(&self, db: &tokio_postgres::Client) {
        // A killed worker's walsender takes a moment to go; an active slot cannot be dropped.
        for _ in 0..50 {
            let active = db
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&self.slot],
                )
                .await
                .ok()
                .flatten()
                .is_some();
            if !active {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let _ = db
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&self.slot],
            )
            .await;
        let _ = db
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}; DROP TABLE IF EXISTS {};",
                self.publication, self.table
            ))
            .await;
    }
}

/// The slot's confirmed flush LSN and retained WAL (bytes behind the current WAL end).
pub async fn slot_facts(db: &tokio_postgres::Client, slot: &str) -> (u64, i64) {
    let row = db
        .query_one(
            "SELECT confirmed_flush_lsn::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot facts");
    let lsn: String = row.get(0);
    (
        kartflow_worker::cdc::position::parse_lsn(&lsn).expect("lsn"),
        row.get(1),
    )
}

pub async fn current_wal_lsn(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn");
    kartflow_worker::cdc::position::parse_lsn(&row.get::<_, String>(0)).expect("lsn")
}

/// A `kartflow-worker cdc` child process, killed on drop.
pub struct CdcWorker {
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub admin: Option<u16>,
}

impl CdcWorker {
    pub fn start(config: PathBuf, log: PathBuf) -> Self {
        let admin = free_port();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(WORKER_BIN)
            .args(["--log-format", "text", "cdc", "--config"])
            .arg(&config)
            .env("PGUSER", PG_USER)
            .env("PGPASSWORD", PG_PASSWORD)
            .env("KARTFLOW_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn kartflow-worker cdc");
        Self {
            config,
            log,
            child: Some(child),
            admin: Some(admin),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET path` on the admin port: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let port = self.admin?;
        kartflow_testkit::http::request(port, "GET", path, None).ok()
    }
}

impl Drop for CdcWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Order-line records by eventId (several when duplicated).
pub fn by_event_id(records: &[Rec]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        let v = r.json();
        let id = v["eventId"].as_str().unwrap_or_default().to_owned();
        out.entry(id).or_default().push(v);
    }
    out
}

/// Polls `check` until it returns `Some`, or fails with `what` and the worker's log.
/// Waits until the worker's `/readyz` answers 503 with a body containing `says`; the body.
pub async fn not_ready_because(worker: &CdcWorker, says: &str, timeout: Duration) -> String {
    wait_for(
        &format!("/readyz to say {says:?}"),
        timeout,
        Some(worker),
        || {
            let r = worker.get("/readyz");
            async move {
                r.filter(|(s, b)| *s == 503 && b.contains(says))
                    .map(|(_, b)| b)
            }
        },
    )
    .await
}

pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    worker: Option<&CdcWorker>,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; worker log:\n{}",
                worker.map(CdcWorker::log_tail).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
