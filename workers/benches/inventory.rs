//! `make bench-inventory`: sustained exactly-once throughput of the inventory worker against a
//! raw transactional consume→produce passthrough on the same topics, same machine, same run.
//!
//! Both drain the same pre-produced backlog of order lines. The passthrough consumes with the
//! same group protocol, isolation and batch size as the worker and forwards each record to one
//! output topic inside transactions that carry the offsets; it has no logic. The worker runs as
//! the real release binary with a bootstrap file of N products, so its figure includes decoding,
//! state, four output records per line and the changelog. Results go to stdout (a Markdown table)
//! and `target/bench/inventory.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
const BATCH: usize = 2_000;
const BATCH_MS: u64 = 100;

struct Args {
    products: usize,
    orders: usize,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        products: 100_000,
        orders: 300_000,
        rounds: 2,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--products" => a.products = next().expect("--products N"),
            "--orders" => a.orders = next().expect("--orders N"),
            "--rounds" => a.rounds = next().expect("--rounds N"),
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

fn bootstrap_servers() -> String {
    kartflow_testkit::kafka_bootstrap()
}

fn create_topics(bootstrap: &str, names: &[&str]) {
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

/// Raw transactional consume→produce with no logic; returns records/s.
fn passthrough(bootstrap: &str, input: &str, output: &str, expected: usize, run: &str) -> f64 {
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
            first.get_or_insert_with(Instant::now);
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
            || (in_txn > 0 && txn_start.elapsed() >= Duration::from_millis(BATCH_MS));
        if due || (in_txn > 0 && seen >= expected) {
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
    expected as f64 / secs
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

/// Quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket).
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
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
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

struct WorkerRun {
    rate: f64,
    p50: f64,
    p99: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

fn worker(
    bootstrap: &str,
    dir: &std::path::Path,
    run: &str,
    input: &str,
    updates: &str,
    expected: usize,
    products_file: &std::path::Path,
) -> WorkerRun {
    let port = 28_000 + (std::process::id() % 1000) as u16;
    let config = serde_json::json!({
        "pipeline": run,
        "kafka": {"bootstrapServers": bootstrap},
        "topics": {
            "productUpdates": updates, "orderEvents": input,
            "products": format!("{run}-products"), "inventoryEvents": format!("{run}-events"),
            "inventoryAlerts": format!("{run}-alerts"), "websocketFanout": format!("{run}-fanout"),
            "dlq": format!("{run}-dlq")
        },
        "bootstrapProductsFile": products_file,
        "savepoints": {"storageUrl": format!("file://{}/savepoints", dir.display())},
        "adminListen": format!("127.0.0.1:{port}"),
        "controlListen": "127.0.0.1:0",
        "processing": {"maxBatchRecords": BATCH, "maxBatchMs": BATCH_MS}
    });
    let cfg_path = dir.join(format!("{run}.json"));
    std::fs::write(&cfg_path, config.to_string()).expect("config");
    let log = std::fs::File::create(dir.join(format!("{run}.log"))).expect("log");
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_kartflow-worker"))
        .args(["inventory", "--config"])
        .arg(&cfg_path)
        .args(["--instance-id", "bench"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn worker");
    let label = format!("topic=\"{input}\"");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<Instant> = None;
    let last_text;
    loop {
        assert!(
            Instant::now() < deadline,
            "worker did not finish; see {}",
            dir.display()
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "worker exited early with {status}; log in {}",
                dir.display()
            );
        }
        if let Some(text) = http_get(port, "/metrics") {
            let n = metric(&text, "kartflow_inventory_records_in_total", &label);
            if n > 0.0 {
                first.get_or_insert_with(Instant::now);
            }
            if n as usize >= expected {
                // Let the last batch commit before reading the latency histogram.
                std::thread::sleep(Duration::from_millis(300));
                last_text = http_get(port, "/metrics").unwrap_or(text);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = first
        .map(|f| f.elapsed().as_secs_f64() - 0.3)
        .unwrap_or(f64::NAN);
    let pid = child.id();
    let run = WorkerRun {
        rate: expected as f64 / secs,
        p50: quantile(&last_text, "kartflow_inventory_processing_seconds", 0.5),
        p99: quantile(&last_text, "kartflow_inventory_processing_seconds", 0.99),
        rss_mib: rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        hwm_mib: rss_kib(pid, "VmHWM:") as f64 / 1024.0,
    };
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    run
}

fn main() {
    let args = parse_args();
    let bootstrap = bootstrap_servers();
    let run = kartflow_testkit::unique_name("bench").replace('_', "-");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let orders = format!("{run}-orders");
    let updates = format!("{run}-updates");
    eprintln!(
        "bench {run}: {} products, {} order lines, {PARTITIONS} partitions",
        args.products, args.orders
    );
    create_topics(&bootstrap, &[&orders, &updates]);
    produce_orders(&bootstrap, &orders, args.products, args.orders);
    let products_file = dir.join("products.ndjson");
    let products_bytes = write_products(&products_file, args.products);

    let mut pass = Vec::new();
    let mut work = Vec::new();
    for round in 0..args.rounds {
        let out = format!("{run}-pass-{round}");
        create_topics(&bootstrap, &[&out]);
        let r = passthrough(
            &bootstrap,
            &orders,
            &out,
            args.orders,
            &format!("{run}-{round}"),
        );
        eprintln!("round {round}: passthrough {r:.0} records/s");
        pass.push(r);
        let w = worker(
            &bootstrap,
            &dir,
            &format!("{run}-w{round}"),
            &orders,
            &updates,
            args.orders,
            &products_file,
        );
        eprintln!("round {round}: worker {:.0} order lines/s", w.rate);
        work.push(w);
    }
    let best_pass = pass.iter().cloned().fold(0.0, f64::max);
    let best = work
        .iter()
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
        .expect("at least one round");
    let ratio = best.rate / best_pass;
    let table = format!(
        "| measure | value |\n| --- | --- |\n\
         | products in state | {} |\n| order lines | {} |\n| partitions | {PARTITIONS} |\n\
         | passthrough (raw transactional consume→produce) | {best_pass:.0} records/s |\n\
         | inventory worker, exactly-once | {:.0} order lines/s |\n\
         | **ratio worker / passthrough** | **{:.0} %** (target ≥ 50 %) |\n\
         | processing latency p50 / p99 (consume → commit) | ≤ {:.0} ms / ≤ {:.0} ms |\n\
         | worker RSS at end / peak | {:.0} MiB / {:.0} MiB |\n\
         | bootstrap file size | {:.1} MiB |\n",
        args.products,
        args.orders,
        best.rate,
        ratio * 100.0,
        best.p50 * 1000.0,
        best.p99 * 1000.0,
        best.rss_mib,
        best.hwm_mib,
        products_bytes as f64 / 1048576.0,
    );
    println!("{table}");
    let json = serde_json::json!({
        "run": run, "products": args.products, "orders": args.orders, "partitions": PARTITIONS,
        "passthroughPerRound": pass, "workerPerRound": work.iter().map(|w| w.rate).collect::<Vec<_>>(),
        "ratio": ratio, "p50Seconds": best.p50, "p99Seconds": best.p99,
        "rssMiB": best.rss_mib, "peakRssMiB": best.hwm_mib,
    });
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    std::fs::write(
        out_dir.join("inventory.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write results");
    std::fs::write(out_dir.join("inventory.md"), &table).expect("write table");
}
