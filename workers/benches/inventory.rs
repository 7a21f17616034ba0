//! `make bench-inventory`: sustained exactly-once throughput of the inventory worker against a
//! raw transactional consume→produce passthrough on the same topics, same machine, same run.
//!
//! Both drain the same pre-produced backlog of order lines. The passthrough consumes with the
//! same group protocol, isolation and batch size as the worker and forwards each record to one
//! output topic inside transactions that carry the offsets; it has no logic. The worker runs as
//! the real release binary with a bootstrap file of N products, so its figure includes decoding,
//! state, four output records per line and the changelog. Results go to stdout (a Markdown table)
//! and `target/bench/inventory.json`.
//!
//! Besides throughput (at each `--batch-ms`, with the CPU time of each side), it measures the
//! worker's memory with N products in state (`--rss-products`, against a worker with none) and
//! end-to-end latency at a steady rate below saturation (`--steady-percent` of the best rate).
//! `--before-bin PATH` runs another build of the worker (e.g. the previous commit's) side by side
//! in every step, so before and after come from the same run. Every topic it creates (and the
//! worker's outputs and changelog) is deleted at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
const BATCH: usize = 2_000;

struct Args {
    products: usize,
    orders: usize,
    rounds: usize,
    batch_ms: Vec<u64>,
    rss_products: Vec<usize>,
    steady_percent: f64,
    steady_seconds: u64,
    before_bin: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(v: Option<&String>) -> Option<Vec<T>> {
    v.map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn parse_args() -> Args {
    let mut a = Args {
        products: 100_000,
        orders: 300_000,
        rounds: 2,
        batch_ms: vec![100, 1000],
        rss_products: vec![100_000, 1_000_000],
        steady_percent: 50.0,
        steady_seconds: 20,
        before_bin: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--products" => a.products = next().expect("--products N"),
            "--orders" => a.orders = next().expect("--orders N"),
            "--rounds" => a.rounds = next().expect("--rounds N"),
            "--batch-ms" => a.batch_ms = list(argv.get(i + 1)).expect("--batch-ms 100,1000"),
            "--rss-products" => {
                a.rss_products = list(argv.get(i + 1)).expect("--rss-products 100000,1000000")
            }
            "--steady-percent" => {
                a.steady_percent = argv
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .expect("--steady-percent P")
            }
            "--steady-seconds" => {
                a.steady_seconds = argv
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .expect("--steady-seconds S")
            }
            "--before-bin" => a.before_bin = argv.get(i + 1).map(PathBuf::from),
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

/// Every topic the run creates or makes the worker create, deleted at the end.
#[derive(Clone, Default)]
struct Created(Arc<Mutex<Vec<String>>>);

impl Created {
    fn add(&self, name: impl Into<String>) {
        self.0.lock().expect("lock").push(name.into());
    }

    fn pipeline(&self, run: &str) {
        for suffix in [
            "products",
            "events",
            "alerts",
            "fanout",
            "dlq",
            "inventory-changelog",
        ] {
            self.add(format!("{run}-{suffix}"));
        }
    }

    fn delete_all(&self, bootstrap: &str) {
        let mut names: Vec<String> = std::mem::take(&mut *self.0.lock().expect("lock"));
        // The broker refuses a deletion request naming a topic twice.
        names.sort();
        names.dedup();
        if names.is_empty() {
            return;
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin");
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        match rt.block_on(admin.delete_topics(&refs, &AdminOptions::new())) {
            Ok(results) => {
                let failed = results.iter().filter(|r| r.is_err()).count();
                eprintln!("deleted {} topics ({failed} did not exist)", names.len());
            }
            Err(e) => eprintln!("deleting the bench topics failed: {e}"),
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit(')').next()?.split_whitespace().collect::<Vec<_>>();
            // Fields 14 and 15 (utime, stime) are 12 and 13 after the name.
            let ticks: f64 =
                after.get(11)?.parse::<f64>().ok()? + after.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn bootstrap_servers() -> String {
    kartflow_testkit::kafka_bootstrap()
}

fn create_topics(bootstrap: &str, created: &Created, names: &[&str]) {
    for n in names {
        created.add(*n);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic created");
    }
}

fn produce_orders(bootstrap: &str, topic: &str, products: usize, orders: usize) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for i in 0..orders {
        let product = format!("P{:06}", (i * 7919) % products);
        let payload = format!(
            r#"{{"eventId":"e{i}","orderId":"o{}","productId":"{product}","quantity":{},"timestamp":1700000000000}}"#,
            i / 3,
            1 + i % 3
        );
        let mut rec = BaseRecord::to(topic).key(&product).payload(&payload);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush orders");
}

fn write_products(path: &std::path::Path, products: usize) -> u64 {
    let mut text = String::with_capacity(products * 200);
    for i in 0..products {
        text.push_str(&format!(
            r#"{{"productId":"P{i:06}","name":"Product {i}","description":"A product","category":"karts","brand":"kartflow","price":{}.99,"inventory":1000000,"imageUrl":"https://example.invalid/{i}.png","tags":["a","b"],"rating":4.5,"reviewCount":{i}}}"#,
            10 + i % 90
        ));
        text.push('\n');
    }
    std::fs::write(path, &text).expect("write products");
    text.len() as u64
}

/// Raw transactional consume→produce with no logic; returns records/s and the CPU seconds this
/// process used meanwhile (its client threads included).
fn passthrough(
    bootstrap: &str,
    input: &str,
    output: &str,
    expected: usize,
    run: &str,
    batch_ms: u64,
) -> (f64, f64) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{run}-passthrough"))
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{run}-passthrough"))
        .set("group.protocol", "consumer")
        .set("group.remote.assignor", "range")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let mut seen = 0usize;
    let mut first: Option<Instant> = None;
    let mut cpu_at_first = f64::NAN;
    let mut in_txn = 0usize;
    let mut txn_start = Instant::now();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            if in_txn == 0 {
                producer.begin_transaction().expect("begin");
                txn_start = Instant::now();
            }
            if first.is_none() {
                first = Some(Instant::now());
                cpu_at_first = cpu_seconds("self");
            }
            let mut rec = BaseRecord::to(output)
                .key(m.key().unwrap_or_default())
                .payload(m.payload().unwrap_or_default());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            offsets.insert(m.partition(), m.offset() + 1);
            in_txn += 1;
            seen += 1;
        }
        let due = in_txn >= BATCH
            || (in_txn > 0 && txn_start.elapsed() >= Duration::from_millis(batch_ms));
        if due || (in_txn > 0 && seen >= expected) {
            // As the worker does: wait for the deliveries in 1 ms steps, so the flush inside
            // commit_transaction (100 ms steps) finds nothing in flight.
            while producer.in_flight_count() > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &offsets {
                tpl.add_partition_offset(input, *p, Offset::Offset(*o))
                    .expect("offset");
            }
            let cgm = consumer.group_metadata().expect("group metadata");
            producer
                .send_offsets_to_transaction(&tpl, &cgm, Duration::from_secs(30))
                .expect("offsets");
            producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit");
            in_txn = 0;
        }
        if seen >= expected && in_txn == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "passthrough did not finish");
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    (expected as f64 / secs, cpu_seconds("self") - cpu_at_first)
}

fn http_get(port: u16, path: &str) -> Option<String> {
    match kartflow_testkit::http::request(port, "GET", path, None) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Quantile from a Prometheus histogram's cumulative buckets, interpolated linearly inside the
/// bucket it falls in (as Prometheus' histogram_quantile does).
fn quantile(text: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let rank = q * total;
    let mut below = (0.0, 0.0);
    for (le, count) in &buckets {
        if *count >= rank {
            if le.is_infinite() {
                return below.0;
            }
            let width = count - below.1;
            let frac = if width > 0.0 {
                (rank - below.1) / width
            } else {
                1.0
            };
            return below.0 + (le - below.0) * frac;
        }
        below = (*le, *count);
    }
    f64::NAN
}

/// Quantile of raw samples (nearest rank).
fn sample_quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A worker process under test.
struct Spawned {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Spawned {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn metrics(&self) -> Option<String> {
        http_get(self.port, "/metrics")
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "worker exited early with {status}; log {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// Waits until `metric{label}` reaches `at_least`; returns the metrics text then.
    fn wait_metric(&mut self, name: &str, label: &str, at_least: f64, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}; see {}",
                self.log.display()
            );
            self.check_alive();
            if let Some(text) = self.metrics()
                && metric(&text, name, label) >= at_least
            {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let _ = self.child.wait();
    }
}

struct WorkerConfig<'a> {
    bootstrap: &'a str,
    dir: &'a Path,
    run: &'a str,
    orders: &'a str,
    updates: &'a str,
    products_file: Option<&'a Path>,
    batch_ms: u64,
    bin: &'a Path,
}

fn spawn_worker(c: &WorkerConfig<'_>, created: &Created) -> Spawned {
    let port = free_port();
    let mut config = serde_json::json!({
        "pipeline": c.run,
        "kafka": {"bootstrapServers": c.bootstrap},
        "topics": {
            "productUpdates": c.updates, "orderEvents": c.orders,
            "products": format!("{}-products", c.run), "inventoryEvents": format!("{}-events", c.run),
            "inventoryAlerts": format!("{}-alerts", c.run), "websocketFanout": format!("{}-fanout", c.run),
            "dlq": format!("{}-dlq", c.run)
        },
        "savepoints": {"storageUrl": format!("file://{}/savepoints", c.dir.display())},
        "adminListen": format!("127.0.0.1:{port}"),
        "controlListen": "127.0.0.1:0",
        "processing": {"maxBatchRecords": BATCH, "maxBatchMs": c.batch_ms}
    });
    if let Some(f) = c.products_file {
        config["bootstrapProductsFile"] = serde_json::json!(f);
    }
    created.pipeline(c.run);
    let cfg_path = c.dir.join(format!("{}.json", c.run));
    std::fs::write(&cfg_path, config.to_string()).expect("config");
    let log = c.dir.join(format!("{}.log", c.run));
    let child: Child = Command::new(c.bin)
        .args(["--log-format", "text", "inventory", "--config"])
        .arg(&cfg_path)
        .args(["--instance-id", "bench"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn worker");
    Spawned { child, port, log }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct WorkerRun {
    rate: f64,
    cpu_s: f64,
    p50: f64,
    p99: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

/// Drains the backlog exactly-once; timed from the first record counted to the last.
fn worker_backlog(c: &WorkerConfig<'_>, created: &Created, expected: usize) -> WorkerRun {
    let mut w = spawn_worker(c, created);
    let label = format!("topic=\"{}\"", c.orders);
    w.wait_metric(
        "kartflow_inventory_records_in_total",
        &label,
        1.0,
        Duration::from_secs(600),
    );
    let first = Instant::now();
    let cpu_first = cpu_seconds(&w.pid());
    let text = w.wait_metric(
        "kartflow_inventory_records_in_total",
        &label,
        expected as f64,
        Duration::from_secs(600),
    );
    let secs = first.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(&w.pid()) - cpu_first;
    // Let the last batch commit before reading the latency histogram.
    std::thread::sleep(Duration::from_millis(c.batch_ms + 300));
    let last_text = w.metrics().unwrap_or(text);
    let pid = w.child.id();
    let run = WorkerRun {
        rate: expected as f64 / secs,
        cpu_s,
        p50: quantile(&last_text, "kartflow_inventory_processing_seconds", 0.5),
        p99: quantile(&last_text, "kartflow_inventory_processing_seconds", 0.99),
        rss_mib: rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        hwm_mib: rss_kib(pid, "VmHWM:") as f64 / 1024.0,
    };
    w.stop();
    run
}

struct MemoryRun {
    rss_kib: u64,
    hwm_kib: u64,
}

/// RSS of a worker once it holds `products` products (from its bootstrap file) and nothing else.
fn worker_memory(c: &WorkerConfig<'_>, created: &Created, products: usize) -> MemoryRun {
    let mut w = spawn_worker(c, created);
    w.wait_metric(
        "kartflow_inventory_state_keys",
        "",
        products as f64,
        Duration::from_secs(900),
    );
    if products == 0 {
        // Nothing to wait for but readiness.
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(w.port, "/readyz").is_none() {
            w.check_alive();
            assert!(
                Instant::now() < deadline,
                "worker not ready; see {}",
                w.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if products > 0 {
        // The bootstrap transaction committed: its records have left the producer queue.
        w.wait_metric(
            "kartflow_inventory_transactions_total",
            "result=\"committed\"",
            1.0,
            Duration::from_secs(900),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = w.child.id();
    let run = MemoryRun {
        rss_kib: rss_kib(pid, "VmRSS:"),
        hwm_kib: rss_kib(pid, "VmHWM:"),
    };
    w.stop();
    run
}

struct SteadyRun {
    rate: f64,
    sent: usize,
    received: usize,
    e2e_p50: f64,
    e2e_p99: f64,
    worker_p50: f64,
    worker_p99: f64,
    cpu_per_s: f64,
}

/// End-to-end latency at a steady rate: order lines written every 10 ms at `rate`/s, each
/// timed from its send to the moment a `read_committed` consumer of `inventory-events` sees the
/// event it caused (matched by its order id).
fn worker_steady(
    c: &WorkerConfig<'_>,
    created: &Created,
    products: usize,
    rate: f64,
    seconds: u64,
    tag: &str,
) -> SteadyRun {
    let mut w = spawn_worker(c, created);
    w.wait_metric(
        "kartflow_inventory_state_keys",
        "",
        products as f64,
        Duration::from_secs(600),
    );
    w.wait_metric(
        "kartflow_inventory_transactions_total",
        "result=\"committed\"",
        1.0,
        Duration::from_secs(600),
    );
    std::thread::sleep(Duration::from_secs(1));
    let events = format!("{}-events", c.run);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", c.bootstrap)
        .set("group.id", format!("{}-e2e", c.run))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    // Start at the end of what the bootstrap wrote.
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(&events, p, Duration::from_secs(10))
            .expect("watermarks");
        tpl.add_partition_offset(&events, p, Offset::Offset(high))
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let sent_at: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", c.bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let total = (rate * seconds as f64) as usize;
    let per_tick = (rate / 100.0).max(1.0);
    let orders = c.orders.to_owned();
    let tag_owned = tag.to_owned();
    let sent_map = sent_at.clone();
    let cpu_start = cpu_seconds(&w.pid());
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut i = 0usize;
        let mut tick = 0u64;
        while i < total {
            tick += 1;
            let due = ((tick as f64) * per_tick) as usize;
            while i < due.min(total) {
                let product = format!("P{:06}", (i * 7919) % products);
                let order = format!("{tag_owned}{i}");
                let payload = format!(
                    r#"{{"eventId":"{order}","orderId":"{order}","productId":"{product}","quantity":1,"timestamp":1700000000000}}"#
                );
                sent_map.lock().expect("lock").insert(order, Instant::now());
                let mut rec = BaseRecord::to(&orders).key(&product).payload(&payload);
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                i += 1;
            }
            let next = started + Duration::from_millis(10 * tick);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        i
    });
    let marker = format!("for order {tag}");
    let mut latencies = Vec::with_capacity(total);
    let deadline = started + Duration::from_secs(seconds + 60);
    while latencies.len() < total && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
            continue;
        };
        let now = Instant::now();
        let Some(v) = m
            .payload()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        else {
            continue;
        };
        let Some(reason) = v["changeReason"].as_str() else {
            continue;
        };
        let Some(at) = reason.find(&marker) else {
            continue;
        };
        let order: String = reason[at + "for order ".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if let Some(t) = sent_at.lock().expect("lock").remove(&order) {
            latencies.push(now.duration_since(t).as_secs_f64());
        }
    }
    let sent = sender.join().expect("sender");
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&w.pid()) - cpu_start;
    latencies.sort_by(f64::total_cmp);
    let text = w.metrics().unwrap_or_default();
    let run = SteadyRun {
        rate,
        sent,
        received: latencies.len(),
        e2e_p50: sample_quantile(&latencies, 0.5),
        e2e_p99: sample_quantile(&latencies, 0.99),
        worker_p50: quantile(&text, "kartflow_inventory_processing_seconds", 0.5),
        worker_p99: quantile(&text, "kartflow_inventory_processing_seconds", 0.99),
        cpu_per_s: cpu / elapsed,
    };
    w.stop();
    run
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

fn per_round(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn main() {
    let args = parse_args();
    let bootstrap = bootstrap_servers();
    let created = Created::default();
    let run = kartflow_testkit::unique_name("bench").replace('_', "-");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bench(&args, &bootstrap, &created, &run, &dir)
    }));
    created.delete_all(&bootstrap);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn bench(args: &Args, bootstrap: &str, created: &Created, run: &str, dir: &Path) {
    let after_bin = PathBuf::from(env!("CARGO_BIN_EXE_kartflow-worker"));
    let mut builds: Vec<(&str, PathBuf)> = vec![("after", after_bin)];
    if let Some(b) = &args.before_bin {
        builds.insert(0, ("before", b.clone()));
    }
    let orders = format!("{run}-orders");
    let updates = format!("{run}-updates");
    eprintln!(
        "bench {run}: {} products, {} order lines, {PARTITIONS} partitions, builds {:?}",
        args.products,
        args.orders,
        builds.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    create_topics(bootstrap, created, &[&orders, &updates]);
    produce_orders(bootstrap, &orders, args.products, args.orders);
    let products_file = dir.join("products.ndjson");
    let products_bytes = write_products(&products_file, args.products);
    let mut report = String::new();
    let mut json = serde_json::json!({
        "run": run, "products": args.products, "orders": args.orders, "partitions": PARTITIONS,
    });

    // 1. Throughput, per batch time: passthrough, then each build, alternating by round.
    let mut best_worker_rate = 0.0f64;
    report.push_str("| throughput | maxBatchMs | per round | best | CPU s per 100k records | ratio to passthrough (best, per round) |\n| --- | --- | --- | --- | --- | --- |\n");
    for &batch_ms in &args.batch_ms {
        let mut pass = Vec::new();
        let mut pass_cpu = Vec::new();
        let mut work: BTreeMap<&str, Vec<WorkerRun>> = BTreeMap::new();
        for round in 0..args.rounds {
            let out = format!("{run}-pass-{batch_ms}-{round}");
            create_topics(bootstrap, created, &[&out]);
            let (r, cpu) = passthrough(
                bootstrap,
                &orders,
                &out,
                args.orders,
                &format!("{run}-{batch_ms}-{round}"),
                batch_ms,
            );
            eprintln!(
                "batch {batch_ms} ms round {round}: passthrough {r:.0} records/s, {cpu:.1} CPU s"
            );
            pass.push(r);
            pass_cpu.push(cpu);
            for (name, bin) in &builds {
                let wrun = format!("{run}-{name}-{batch_ms}-{round}");
                let c = WorkerConfig {
                    bootstrap,
                    dir,
                    run: &wrun,
                    orders: &orders,
                    updates: &updates,
                    products_file: Some(&products_file),
                    batch_ms,
                    bin,
                };
                let w = worker_backlog(&c, created, args.orders);
                eprintln!(
                    "batch {batch_ms} ms round {round}: {name} {:.0} order lines/s, {:.1} CPU s, latency p50 {} p99 {}, RSS {:.0} MiB",
                    w.rate,
                    w.cpu_s,
                    ms(w.p50),
                    ms(w.p99),
                    w.rss_mib
                );
                work.entry(name).or_default().push(w);
            }
        }
        let best_pass = pass.iter().cloned().fold(0.0, f64::max);
        let pass_cpu_best = pass_cpu.iter().cloned().fold(f64::INFINITY, f64::min);
        report.push_str(&format!(
            "| passthrough | {batch_ms} | {} | {best_pass:.0} records/s | {:.2} | — |\n",
            per_round(&pass),
            pass_cpu_best / args.orders as f64 * 100_000.0
        ));
        let mut jb =
            serde_json::json!({"passthroughPerRound": pass, "passthroughCpuSeconds": pass_cpu});
        for (name, runs) in &work {
            let rates: Vec<f64> = runs.iter().map(|w| w.rate).collect();
            let best = runs
                .iter()
                .max_by(|a, b| a.rate.total_cmp(&b.rate))
                .expect("a round");
            let ratios: Vec<String> = rates
                .iter()
                .zip(&pass)
                .map(|(w, p)| format!("{:.0} %", w / p * 100.0))
                .collect();
            let cpu_best = runs.iter().map(|w| w.cpu_s).fold(f64::INFINITY, f64::min);
            report.push_str(&format!(
                "| worker {name} | {batch_ms} | {} | {:.0} lines/s ({:.0} per CPU s) | {:.2} | **{:.0} %** ({}) |\n",
                per_round(&rates),
                best.rate,
                args.orders as f64 / best.cpu_s,
                cpu_best / args.orders as f64 * 100_000.0,
                best.rate / best_pass * 100.0,
                ratios.join(" / ")
            ));
            if *name == "after" && batch_ms == args.batch_ms[0] {
                best_worker_rate = best_worker_rate.max(best.rate);
            }
            jb[*name] = serde_json::json!({
                "perRound": rates, "cpuSeconds": runs.iter().map(|w| w.cpu_s).collect::<Vec<_>>(),
                "backlogP50Seconds": best.p50, "backlogP99Seconds": best.p99,
                "rssMiB": best.rss_mib, "peakRssMiB": best.hwm_mib,
            });
        }
        json[format!("batch{batch_ms}ms")] = jb;
        for (name, runs) in &work {
            let best = runs
                .iter()
                .max_by(|a, b| a.rate.total_cmp(&b.rate))
                .expect("a round");
            report.push_str(&format!(
                "| worker {name}: backlog latency p50 / p99, RSS end / peak | {batch_ms} | | {} / {} | {:.0} / {:.0} MiB | |\n",
                ms(best.p50), ms(best.p99), best.rss_mib, best.hwm_mib
            ));
        }
    }

    // 2. Steady-rate latency below saturation.
    if best_worker_rate > 0.0 && args.steady_seconds > 0 {
        let rate = best_worker_rate * args.steady_percent / 100.0;
        report.push_str(&format!(
            "\n| steady rate {:.0} lines/s ({:.0} % of the best backlog rate) | maxBatchMs | end-to-end p50 / p99 | worker consume→commit p50 / p99 | received / sent | worker CPU |\n| --- | --- | --- | --- | --- | --- |\n",
            rate, args.steady_percent
        ));
        let mut js = Vec::new();
        for &batch_ms in &args.batch_ms {
            for (name, bin) in &builds {
                let wrun = format!("{run}-steady-{name}-{batch_ms}");
                let sorders = format!("{wrun}-orders");
                let supdates = format!("{wrun}-updates");
                create_topics(bootstrap, created, &[&sorders, &supdates]);
                let c = WorkerConfig {
                    bootstrap,
                    dir,
                    run: &wrun,
                    orders: &sorders,
                    updates: &supdates,
                    products_file: Some(&products_file),
                    batch_ms,
                    bin,
                };
                let s = worker_steady(&c, created, args.products, rate, args.steady_seconds, "s");
                eprintln!(
                    "steady {name} {batch_ms} ms: {:.0}/s e2e p50 {} p99 {}, worker p50 {} p99 {}, {}/{} received",
                    s.rate,
                    ms(s.e2e_p50),
                    ms(s.e2e_p99),
                    ms(s.worker_p50),
                    ms(s.worker_p99),
                    s.received,
                    s.sent
                );
                report.push_str(&format!(
                    "| worker {name} | {batch_ms} | {} / {} | {} / {} | {} / {} | {:.2} cores |\n",
                    ms(s.e2e_p50),
                    ms(s.e2e_p99),
                    ms(s.worker_p50),
                    ms(s.worker_p99),
                    s.received,
                    s.sent,
                    s.cpu_per_s
                ));
                js.push(serde_json::json!({
                    "build": name, "batchMs": batch_ms, "rate": s.rate, "sent": s.sent, "received": s.received,
                    "e2eP50Seconds": s.e2e_p50, "e2eP99Seconds": s.e2e_p99,
                    "workerP50Seconds": s.worker_p50, "workerP99Seconds": s.worker_p99, "cpuCores": s.cpu_per_s,
                }));
            }
        }
        json["steady"] = serde_json::json!(js);
    }

    // 3. Memory per product: N products in state against none, same build, same run.
    if !args.rss_products.is_empty() {
        report.push_str("\n| memory | products | bootstrap JSON per product | RSS (peak) | RSS per product beyond an empty worker | of which beyond the JSON |\n| --- | --- | --- | --- | --- | --- |\n");
        let mut jm = Vec::new();
        for (name, bin) in &builds {
            let empty_run = format!("{run}-mem-{name}-0");
            let (eo, eu) = (
                format!("{empty_run}-orders"),
                format!("{empty_run}-updates"),
            );
            create_topics(bootstrap, created, &[&eo, &eu]);
            let c = WorkerConfig {
                bootstrap,
                dir,
                run: &empty_run,
                orders: &eo,
                updates: &eu,
                products_file: None,
                batch_ms: 100,
                bin,
            };
            let empty = worker_memory(&c, created, 0);
            report.push_str(&format!(
                "| worker {name} | 0 | — | {:.0} MiB ({:.0}) | — | — |\n",
                empty.rss_kib as f64 / 1024.0,
                empty.hwm_kib as f64 / 1024.0
            ));
            for (i, &n) in args.rss_products.iter().enumerate() {
                let file = dir.join(format!("products-{n}.ndjson"));
                let bytes = write_products(&file, n);
                let mrun = format!("{run}-mem-{name}-{n}-{i}");
                let (mo, mu) = (format!("{mrun}-orders"), format!("{mrun}-updates"));
                create_topics(bootstrap, created, &[&mo, &mu]);
                let c = WorkerConfig {
                    bootstrap,
                    dir,
                    run: &mrun,
                    orders: &mo,
                    updates: &mu,
                    products_file: Some(&file),
                    batch_ms: 100,
                    bin,
                };
                let m = worker_memory(&c, created, n);
                let _ = std::fs::remove_file(&file);
                let per = (m.rss_kib.saturating_sub(empty.rss_kib) * 1024) as f64 / n as f64;
                let json_per = bytes as f64 / n as f64;
                eprintln!(
                    "memory {name} {n} products: RSS {} KiB (peak {}), {per:.0} B per product, JSON {json_per:.0} B",
                    m.rss_kib, m.hwm_kib
                );
                report.push_str(&format!(
                    "| worker {name} | {n} | {json_per:.0} B | {:.0} MiB ({:.0}) | {per:.0} B | **{:.0} B** |\n",
                    m.rss_kib as f64 / 1024.0,
                    m.hwm_kib as f64 / 1024.0,
                    per - json_per
                ));
                jm.push(serde_json::json!({
                    "build": name, "products": n, "rssKiB": m.rss_kib, "peakRssKiB": m.hwm_kib,
                    "emptyRssKiB": empty.rss_kib, "bytesPerProduct": per, "jsonBytesPerProduct": json_per,
                }));
            }
        }
        json["memory"] = serde_json::json!(jm);
    }
    report.push_str(&format!(
        "\nbootstrap file of the throughput runs: {:.1} MiB\n",
        products_bytes as f64 / 1048576.0
    ));
    println!("{report}");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    std::fs::write(
        out_dir.join("inventory.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write results");
    std::fs::write(out_dir.join("inventory.md"), &report).expect("write table");
}
