//! Harness of the inventory worker's acceptance tests: real `kartflow-worker inventory` child
//! processes against the local Kafka, a workload model with its expected end state, and readers
//! of the output topics.
//!
//! Every child process is killed when its [`Worker`] handle drops (a failing test leaks nothing);
//! a test's temporary directory (configs, bootstrap files, savepoints, worker logs) is removed
//! after a passing test and kept, with its path printed, after a failing one.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

pub use kartflow_testkit::unique_name;

/// The worker binary built for this test run.
pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_kartflow-worker");
pub const PARTITIONS: i32 = 3;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Randomness (seeded and printed, so a failing run can be replayed with KARTFLOW_TEST_SEED).

/// xorshift64*: enough randomness for workloads and kill points, no dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `KARTFLOW_TEST_SEED` or the clock; prints the seed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("KARTFLOW_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            });
        eprintln!("[{test}] seed {seed} (replay with KARTFLOW_TEST_SEED={seed})");
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (`hi` exclusive).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directory.

/// A per-test directory, removed when the test passes and kept when it fails.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir()
            .join("kartflow-it")
            .join(unique_name(prefix));
        std::fs::create_dir_all(&path).expect("create the test directory");
        Self { path }
    }

    /// `file://` URL of a savepoint storage directory inside this one.
    pub fn savepoint_url(&self) -> String {
        let dir = self.path.join("savepoints");
        std::fs::create_dir_all(&dir).expect("create the savepoint directory");
        format!("file://{}", dir.display())
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "keeping {} (configs, worker logs, savepoints) for inspection",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline configuration.

/// Topic names of one test pipeline, unique per test run.
#[derive(Debug, Clone)]
pub struct TopicNames {
    pub product_updates: String,
    pub order_events: String,
    pub products: String,
    pub inventory_events: String,
    pub inventory_alerts: String,
    pub websocket_fanout: String,
    pub dlq: String,
}

impl TopicNames {
    pub fn unique(prefix: &str) -> Self {
        let base = unique_name(prefix);
        let t = |name: &str| format!("{base}.{name}");
        Self {
            product_updates: t("product-updates"),
            order_events: t("order-events"),
            products: t("products"),
            inventory_events: t("inventory-events"),
            inventory_alerts: t("inventory-alerts"),
            websocket_fanout: t("websocket-fanout"),
            dlq: t("dlq"),
        }
    }

    /// The same inputs with fresh output topics: a second pipeline reading the same stream.
    pub fn with_new_outputs(&self, prefix: &str) -> Self {
        Self {
            product_updates: self.product_updates.clone(),
            order_events: self.order_events.clone(),
            ..Self::unique(prefix)
        }
    }

    pub fn inputs(&self) -> [&str; 2] {
        [&self.product_updates, &self.order_events]
    }
}

/// What a worker's configuration file says.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: String,
    pub topics: TopicNames,
    pub bootstrap_file: Option<PathBuf>,
    pub savepoint_url: String,
    /// Merged into the `rules` object.
    pub rules: Value,
}

impl PipelineConfig {
    pub fn new(
        prefix: &str,
        topics: &TopicNames,
        bootstrap_file: Option<PathBuf>,
        savepoint_url: &str,
    ) -> Self {
        // Pipeline names end up in group and transactional ids: keep them short and safe.
        let name = unique_name(prefix).replace('_', "-");
        Self {
            name,
            topics: topics.clone(),
            bootstrap_file,
            savepoint_url: savepoint_url.to_owned(),
            rules: json!({}),
        }
    }

    /// The consumer group of the pipeline (see `InventorySettings::group_id`).
    pub fn group(&self) -> String {
        format!("kartflow-{}", self.name)
    }

    pub fn changelog(&self) -> String {
        format!("{}-inventory-changelog", self.name)
    }

    fn to_json(&self, bootstrap_servers: &str, admin_port: u16, control_port: u16) -> Value {
        let t = &self.topics;
        let mut v = json!({
            "pipeline": self.name,
            "kafka": {"bootstrapServers": bootstrap_servers},
            "topics": {
                "productUpdates": t.product_updates,
                "orderEvents": t.order_events,
                "products": t.products,
                "inventoryEvents": t.inventory_events,
                "inventoryAlerts": t.inventory_alerts,
                "websocketFanout": t.websocket_fanout,
                "dlq": t.dlq,
            },
            "rules": self.rules,
            "savepoints": {"storageUrl": self.savepoint_url},
            "processing": {"maxBatchMs": 50},
            "adminListen": format!("127.0.0.1:{admin_port}"),
            // No token: the control API answers loopback clients.
            "controlListen": format!("127.0.0.1:{control_port}"),
        });
        if let Some(f) = &self.bootstrap_file {
            v["bootstrapProductsFile"] = json!(f);
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Worker processes.

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// One `kartflow-worker inventory` process (and its restarts under the same instance id).
pub struct Worker {
    pub instance: String,
    pub port: u16,
    /// The control API (savepoints).
    pub control_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    pub starts: u32,
}

impl Worker {
    /// Writes the configuration file; does not start the process.
    pub fn new(dir: &TestDir, pipeline: &PipelineConfig, instance: &str) -> Self {
        let port = free_port();
        let control_port = free_port();
        let bootstrap = kartflow_testkit::settings().kafka_bootstrap;
        let config_path = dir.path.join(format!("{instance}.json"));
        let text = serde_json::to_string_pretty(&pipeline.to_json(&bootstrap, port, control_port))
            .expect("serialize the worker configuration");
        std::fs::write(&config_path, text).expect("write the worker configuration");
        Self {
            instance: instance.to_owned(),
            port,
            control_port,
            config_path,
            log_path: dir.path.join(format!("{instance}.log")),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    /// Extra arguments of `kartflow-worker inventory` (e.g. `--from-savepoint URL`).
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Extra environment of the process (e.g. the `AWS_*` settings of an `s3://` store).
    pub fn with_env(mut self, vars: &[(String, String)]) -> Self {
        self.extra_env = vars.to_vec();
        self
    }

    /// Starts the process; its stdout and stderr append to `<instance>.log`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.instance);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the worker log");
        writeln!(
            log,
            "===== start #{} of {} =====",
            self.starts, self.instance
        )
        .expect("write the worker log");
        let stderr = log.try_clone().expect("clone the log handle");
        let child = Command::new(WORKER_BIN)
            .args(["--log-format", "text", "inventory", "--config"])
            .arg(&self.config_path)
            .args(["--instance-id", &self.instance])
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("KARTFLOW_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {WORKER_BIN} failed: {e}"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The last `lines` lines of the worker's log (all its starts).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "worker {}: {what}\n----- last lines of {} -----\n{}\n-----",
            self.instance,
            self.log_path.display(),
            self.log_tail(40)
        )
    }

    /// Waits until `/readyz` answers 200; fails with the log tail if the process exits or the
    /// timeout passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                self.fail(&format!("exited ({status}) before becoming ready"));
            }
            if self.child.is_none() {
                self.fail("is not running");
            }
            if let Ok((200, _)) = http(self.port, "GET", "/readyz", None) {
                return;
            }
            if started.elapsed() > timeout {
                self.fail(&format!("not ready within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`Worker::wait_ready`], but restarts the process whenever it exits, as Kubernetes
    /// would. A worker restarted right after a SIGKILL exits with `UnreleasedInstanceId` until
    /// the broker expires its previous incarnation (group.consumer.session.timeout.ms). Returns
    /// how many restarts it took.
    pub fn wait_ready_supervised(&mut self, timeout: Duration) -> u32 {
        let started = Instant::now();
        let mut restarts = 0;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
            }
            if self.child.is_none() {
                restarts += 1;
                std::thread::sleep(Duration::from_millis(1_000));
                self.start();
            }
            if let Ok((200, _)) = http(self.port, "GET", "/readyz", None) {
                return restarts;
            }
            if started.elapsed() > timeout {
                self.fail(&format!(
                    "not ready within {timeout:?} ({restarts} restarts after exits)"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn start_ready(&mut self, timeout: Duration) {
        self.start();
        self.wait_ready(timeout);
    }

    /// SIGKILL: no transaction commit, no group leave. Returns whether the process was still
    /// running (and so was killed).
    pub fn kill(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let running = matches!(c.try_wait(), Ok(None));
        let _ = c.kill();
        let _ = c.wait();
        running
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid().unwrap_or_else(|| self.fail("is not running"));
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit(timeout)
            .unwrap_or_else(|| self.fail(&format!("did not exit within {timeout:?} of SIGTERM")))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `/v1/status` as JSON.
    pub fn status(&self) -> Value {
        match http(self.port, "GET", "/v1/status", None) {
            Ok((200, body)) => serde_json::from_str(&body).expect("status is JSON"),
            other => self.fail(&format!("GET /v1/status: {other:?}")),
        }
    }

    /// Partitions the worker owns, from `/v1/status`.
    pub fn owned_partitions(&self) -> BTreeSet<i64> {
        self.status()["partitions"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["partition"].as_i64()).collect())
            .unwrap_or_default()
    }

    /// POST `/v1/savepoints {id}`; returns the `result` object of a completed savepoint.
    pub fn savepoint(&self, id: &str) -> Value {
        let body = json!({"id": id}).to_string();
        match http(self.control_port, "POST", "/v1/savepoints", Some(&body)) {
            Ok((201, text)) => {
                let v: Value = serde_json::from_str(&text).expect("savepoint reply is JSON");
                assert_eq!(v["state"], "Completed", "{v}");
                v["result"].clone()
            }
            other => self.fail(&format!("POST /v1/savepoints: {other:?}")),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

pub use kartflow_testkit::http::request as http;

/// Fails with every worker's log tail: for assertions about the system as a whole.
pub fn fail_with_logs(workers: &[&Worker], msg: &str) -> ! {
    let mut text = msg.to_owned();
    for w in workers {
        text.push_str(&format!(
            "\n----- last lines of worker {} -----\n{}",
            w.instance,
            w.log_tail(25)
        ));
    }
    panic!("{text}")
}

// ---------------------------------------------------------------------------------------------
// Kafka.

/// Deletes a test's topics when dropped (see [`Kafka::cleanup_on_drop`]).
pub struct TopicCleanup {
    bootstrap: String,
    names: Vec<String>,
}

impl Drop for TopicCleanup {
    fn drop(&mut self) {
        Kafka {
            bootstrap: self.bootstrap.clone(),
        }
        .delete_topics(&self.names);
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Rec {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

pub struct Kafka {
    pub bootstrap: String,
}

impl Kafka {
    /// The local Kafka; fails clearly when it is down.
    pub fn connect() -> Self {
        Self {
            bootstrap: kartflow_testkit::kafka_bootstrap(),
        }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    pub fn create_topics(&self, topics: &[&str], partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = rt
            .block_on(admin.create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
            ))
            .expect("create_topics request");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t} failed: {e}"));
        }
    }

    /// Whether `topic` exists (from the full topic list, so asking never creates it).
    pub fn topic_exists(&self, topic: &str) -> bool {
        let consumer: BaseConsumer = self.config().create().expect("metadata client");
        let md = consumer
            .fetch_metadata(None, KAFKA_TIMEOUT)
            .expect("cluster metadata");
        md.topics().iter().any(|t| t.name() == topic)
    }

    /// Deletes `topics` (those that exist); failures are reported, not fatal.
    pub fn delete_topics(&self, topics: &[String]) {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        if let Err(e) = rt.block_on(admin.delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
        )) {
            eprintln!("deleting test topics failed: {e}");
        }
    }

    /// Deletes the inputs and outputs of `topics` and the changelogs of `pipelines` when the
    /// guard drops (declare it before the workers, so they stop first).
    pub fn cleanup_on_drop(
        &self,
        topics: &[&TopicNames],
        pipelines: &[&PipelineConfig],
    ) -> TopicCleanup {
        let mut names = Vec::new();
        for t in topics {
            names.extend([
                t.product_updates.clone(),
                t.order_events.clone(),
                t.products.clone(),
                t.inventory_events.clone(),
                t.inventory_alerts.clone(),
                t.websocket_fanout.clone(),
                t.dlq.clone(),
            ]);
        }
        names.extend(pipelines.iter().map(|p| p.changelog()));
        names.sort();
        names.dedup();
        TopicCleanup {
            bootstrap: self.bootstrap.clone(),
            names,
        }
    }

    /// A producer partitioning like Java clients and the worker (murmur2 of the key).
    pub fn producer(&self) -> TestProducer {
        let p = self
            .config()
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        TestProducer(p)
    }

    fn partition_count(&self, consumer: &BaseConsumer, topic: &str) -> i32 {
        let md = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        assert!(n > 0, "topic {topic} does not exist");
        i32::try_from(n).expect("partition count")
    }

    /// Every committed record of `topic` (`read_committed`), in partition and offset order.
    pub fn read_all(&self, topic: &str) -> Vec<Rec> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", unique_name("it-reader"))
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let n = self.partition_count(&consumer, topic);
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition list");
        }
        consumer.assign(&tpl).expect("assign");
        let mut at_eof = BTreeSet::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        while at_eof.len() < n as usize {
            assert!(
                Instant::now() < deadline,
                "reading {topic} did not reach the end of partitions {:?} within {KAFKA_TIMEOUT:?}",
                (0..n).filter(|p| !at_eof.contains(p)).collect::<Vec<_>>()
            );
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_eof.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic} failed: {e}"),
                Some(Ok(m)) => {
                    at_eof.remove(&m.partition());
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    let v = h.value.map(String::from_utf8_lossy);
                                    (h.key.to_owned(), v.unwrap_or_default().into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Rec {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// High watermarks of every partition of `topic`.
    pub fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = self.config().create().expect("metadata client");
        let n = self.partition_count(&consumer, topic);
        (0..n)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                    .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
                (p, high)
            })
            .collect()
    }

    /// Stable committed offsets of `group` for `topics` (absent: nothing committed).
    pub fn committed(&self, group: &str, topics: &[&str]) -> BTreeMap<(String, i32), i64> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets client");
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..self.partition_count(&consumer, t) {
                tpl.add_partition(t, p);
            }
        }
        let got = consumer
            .committed_offsets(tpl, KAFKA_TIMEOUT)
            .unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"));
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect()
    }

    /// Waits until `group` has committed every input record (committed offset = end offset on
    /// every partition of `inputs`), i.e. all of it is processed and its outputs committed.
    pub fn wait_caught_up(
        &self,
        group: &str,
        inputs: &[&str],
        timeout: Duration,
        workers: &[&Worker],
    ) {
        let started = Instant::now();
        loop {
            let committed = self.committed(group, inputs);
            let mut behind = Vec::new();
            for t in inputs {
                for (p, end) in self.end_offsets(t) {
                    let at = committed.get(&((*t).to_owned(), p)).copied().unwrap_or(0);
                    if at < end {
                        behind.push(format!("{t}/{p}: committed {at} of {end}"));
                    }
                }
            }
            if behind.is_empty() {
                // The offsets are visible once the transaction's marker reached the offsets
                // topic; give the markers of the output partitions a moment too.
                std::thread::sleep(Duration::from_millis(1_000));
                return;
            }
            if started.elapsed() > timeout {
                fail_with_logs(
                    workers,
                    &format!("group {group} did not catch up within {timeout:?}: {behind:?}"),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A test producer; `send` waits while the local queue is full.
pub struct TestProducer(ThreadedProducer<DefaultProducerContext>);

impl TestProducer {
    pub fn send(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.0.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(_), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("enqueue to {topic} failed: {e}"),
            }
        }
    }

    pub fn flush(&self) {
        self.0
            .flush(KAFKA_TIMEOUT)
            .expect("flush the test producer");
    }
}

// ---------------------------------------------------------------------------------------------
// Workload model.

pub fn product_json(id: &str, inventory: i64, price: f64) -> Value {
    json!({
        "productId": id,
        "name": format!("Kart part {id}"),
        "description": "test product",
        "category": "parts",
        "brand": "kartflow",
        "price": price,
        "inventory": inventory,
        "imageUrl": "",
        "tags": ["test"],
        "rating": 4.5,
        "reviewCount": 3,
    })
}

/// One order line as the workload sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub event_id: String,
    pub order_id: String,
    pub product_id: String,
    pub quantity: i64,
}

impl Line {
    pub fn to_json(&self) -> String {
        json!({
            "eventId": self.event_id,
            "orderId": self.order_id,
            "productId": self.product_id,
            "quantity": self.quantity,
            "timestamp": 1_700_000_000_000i64,
        })
        .to_string()
    }
}

/// Initial products and a stream of order lines (with redeliveries), plus its expected outcome.
#[derive(Debug, Clone)]
pub struct Workload {
    pub initial: BTreeMap<String, i64>,
    /// In send order; a redelivered line appears again with the same `eventId`.
    pub sends: Vec<Line>,
}

impl Workload {
    /// `products` products (every fifth with little stock, so some are oversold) and about
    /// `lines` distinct order lines in orders of 1-3 lines, `dup_percent` % of them redelivered
    /// later in the stream.
    pub fn generate(rng: &mut Rng, products: usize, lines: usize, dup_percent: u64) -> Self {
        let ids: Vec<String> = (0..products).map(|i| format!("P-{i:03}")).collect();
        let initial: BTreeMap<String, i64> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let stock = if i % 5 == 0 {
                    rng.range(5, 40)
                } else {
                    rng.range(150, 400)
                };
                (id.clone(), stock as i64)
            })
            .collect();
        let mut distinct = Vec::new();
        let mut order = 0;
        while distinct.len() < lines {
            order += 1;
            let n = rng.range(1, 4);
            let mut used = BTreeSet::new();
            for line_no in 0..n {
                let pid = &ids[rng.range(0, products as u64) as usize];
                if !used.insert(pid.clone()) {
                    continue;
                }
                distinct.push(Line {
                    event_id: format!("ord-{order}-{line_no}"),
                    order_id: format!("ord-{order}"),
                    product_id: pid.clone(),
                    quantity: rng.range(1, 6) as i64,
                });
            }
        }
        let mut sends = distinct.clone();
        for line in &distinct {
            if rng.chance(dup_percent) {
                // Redeliver somewhere later: right after, or much later.
                let at = sends
                    .iter()
                    .position(|l| l.event_id == line.event_id)
                    .unwrap_or(0);
                let later = rng.range(at as u64 + 1, sends.len() as u64 + 1) as usize;
                sends.insert(later, line.clone());
            }
        }
        Self { initial, sends }
    }

    /// Writes the initial products as a bootstrap file (JSON array).
    pub fn write_bootstrap_file(&self, dir: &TestDir) -> PathBuf {
        let products: Vec<Value> = self
            .initial
            .iter()
            .map(|(id, stock)| product_json(id, *stock, 19.99))
            .collect();
        let path = dir.path.join("products.json");
        std::fs::write(&path, Value::Array(products).to_string()).expect("write bootstrap file");
        path
    }

    pub fn expected(&self) -> Expected {
        expected(&self.initial, &self.sends)
    }

    pub fn duplicates(&self) -> usize {
        self.sends.len() - self.expected().lines.len()
    }
}

/// What the pipeline must end with.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub inventory: BTreeMap<String, i64>,
    /// Products whose distinct lines ask for more than the initial stock.
    pub oversold: BTreeSet<String>,
    /// Units asked beyond the stock per oversold product (the shortfall the state records).
    pub oversold_units: BTreeMap<String, i64>,
    /// `(productId, orderId)` of every distinct line.
    pub lines: BTreeSet<(String, String)>,
}

/// Inventory = initial − sum of distinct lines, floored at 0 (deductions only ever decrease, so
/// clamping each step equals clamping the total).
pub fn expected(initial: &BTreeMap<String, i64>, sends: &[Line]) -> Expected {
    let mut seen = BTreeSet::new();
    let mut demand: BTreeMap<String, i64> = BTreeMap::new();
    let mut lines = BTreeSet::new();
    for l in sends {
        if seen.insert(l.event_id.clone()) {
            *demand.entry(l.product_id.clone()).or_default() += l.quantity;
            lines.insert((l.product_id.clone(), l.order_id.clone()));
        }
    }
    let mut out = Expected {
        lines,
        ..Expected::default()
    };
    for (id, stock) in initial {
        let d = demand.get(id).copied().unwrap_or(0);
        out.inventory.insert(id.clone(), (stock - d).max(0));
        if d > *stock {
            out.oversold.insert(id.clone());
            out.oversold_units.insert(id.clone(), d - stock);
        }
    }
    out
}

/// What the output topics hold.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Last `products` record per key.
    pub products: BTreeMap<String, Value>,
    /// INVENTORY_DECREASED events from order lines per `(productId, orderId)`.
    pub decreased: BTreeMap<(String, String), usize>,
    /// OVERSOLD alerts per product.
    pub oversold_alerts: BTreeMap<String, usize>,
    pub events_total: usize,
}

/// The `orderId` of an order line's INVENTORY_DECREASED (`Deducted 3 for order ord-7 ...`).
fn order_of(change_reason: &str) -> Option<String> {
    let rest = change_reason.split_once(" for order ")?.1;
    Some(rest.split_whitespace().next()?.to_owned())
}

pub fn observe(kafka: &Kafka, topics: &TopicNames) -> Observed {
    let mut o = Observed::default();
    for r in kafka.read_all(&topics.products) {
        let v = r.json();
        if let Some(id) = v["productId"].as_str() {
            o.products.insert(id.to_owned(), v.clone());
        }
    }
    for r in kafka.read_all(&topics.inventory_events) {
        o.events_total += 1;
        let v = r.json();
        if v["eventType"] != "INVENTORY_DECREASED" {
            continue;
        }
        let (Some(pid), Some(order)) = (
            v["productId"].as_str(),
            v["changeReason"].as_str().and_then(order_of),
        ) else {
            continue;
        };
        *o.decreased.entry((pid.to_owned(), order)).or_default() += 1;
    }
    for r in kafka.read_all(&topics.inventory_alerts) {
        let v = r.json();
        if v["alertType"] == "OVERSOLD"
            && let Some(pid) = v["productId"].as_str()
        {
            *o.oversold_alerts.entry(pid.to_owned()).or_default() += 1;
        }
    }
    o
}

/// Every difference between what was expected and what the topics hold (empty: all good).
pub fn differences(want: &Expected, got: &Observed) -> Vec<String> {
    let mut d = Vec::new();
    for (id, inv) in &want.inventory {
        match got.products.get(id).and_then(|p| p["inventory"].as_i64()) {
            Some(have) if have == *inv => {}
            have => d.push(format!("{id}: inventory {have:?}, expected {inv}")),
        }
    }
    for id in &want.oversold {
        if !got.oversold_alerts.contains_key(id) {
            d.push(format!("{id}: oversold but no OVERSOLD alert"));
        }
    }
    for id in got.oversold_alerts.keys() {
        if !want.oversold.contains(id) {
            d.push(format!(
                "{id}: OVERSOLD alert but demand never exceeded stock"
            ));
        }
    }
    for line in &want.lines {
        match got.decreased.get(line) {
            Some(1) => {}
            None => d.push(format!("{line:?}: no INVENTORY_DECREASED")),
            Some(n) => d.push(format!("{line:?}: {n} INVENTORY_DECREASED events")),
        }
    }
    for line in got.decreased.keys() {
        if !want.lines.contains(line) {
            d.push(format!(
                "{line:?}: INVENTORY_DECREASED for a line never sent"
            ));
        }
    }
    d
}

/// Asserts the outputs match the model, listing the first differences.
pub fn assert_outputs(kafka: &Kafka, topics: &TopicNames, want: &Expected, workers: &[&Worker]) {
    let got = observe(kafka, topics);
    let diff = differences(want, &got);
    if !diff.is_empty() {
        let shown: Vec<&String> = diff.iter().take(25).collect();
        fail_with_logs(
            workers,
            &format!(
                "{} differences between the expected and the committed outputs, first ones: {shown:#?}",
                diff.len()
            ),
        );
    }
}

/// Sends `lines` to `topic` keyed by productId, spread evenly over `over`, on a thread.
pub fn spawn_order_producer(
    kafka: &Kafka,
    topic: &str,
    lines: Vec<Line>,
    over: Duration,
) -> std::thread::JoinHandle<()> {
    let producer = kafka.producer();
    let topic = topic.to_owned();
    std::thread::spawn(move || {
        let started = Instant::now();
        let n = lines.len().max(1);
        for (i, line) in lines.iter().enumerate() {
            let due = over.mul_f64(i as f64 / n as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            producer.send(&topic, Some(&line.product_id), line.to_json().as_bytes());
        }
        producer.flush();
    })
}

/// Inventory and recorded oversold units per product over all partitions of a savepoint.
pub fn savepoint_products(files: &BTreeMap<i64, Value>) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for v in files.values() {
        for (id, key) in v["state"]["keys"].as_object().expect("state keys") {
            if let Some(inv) = key["product"]["inventory"].as_i64() {
                let units = key["oversold"]["units"].as_i64().unwrap_or(0);
                out.insert(id.clone(), (inv, units));
            }
        }
    }
    out
}

/// Reads every file of a savepoint written by this harness's workers: partition → state JSON.
pub fn savepoint_states(location: &str) -> BTreeMap<i64, Value> {
    let root = Path::new(location.trim_start_matches("file://"));
    let mut out = BTreeMap::new();
    for instance in std::fs::read_dir(root).expect("savepoint directory") {
        let dir = instance.expect("savepoint entry").path();
        for f in std::fs::read_dir(&dir).expect("instance directory") {
            let path = f.expect("file").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.starts_with("partition-")) {
                continue;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read"))
                .expect("partition file is JSON");
            let p = v["partition"].as_i64().expect("partition number");
            assert!(
                out.insert(p, v).is_none(),
                "partition {p} written twice in {location}"
            );
        }
    }
    out
}
