//! `make bench-cdc`: the CDC worker draining a backlog of committed rows from its slot into Kafka
//! (exactly-once transactions, every row acknowledged), against `pg_recvlogical` reading the same
//! backlog with pgoutput to `/dev/null`, same machine, same run.
//!
//! Before the backlog is written, one slot per run is created at the same point, so every run
//! reads exactly the same WAL. Runs alternate baseline and worker. The worker runs as the release
//! binary; it is timed from process start until the LSN it confirmed to PostgreSQL (which it
//! confirms only after Kafka committed) reaches the end of the backlog. Results go to stdout (a
//! Markdown table), `target/bench/cdc.json` and `target/bench/cdc.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kartflow_worker::cdc::position::{format_lsn, parse_lsn};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

const PARTITIONS: i32 = 3;

struct Args {
    rows: u64,
    rows_per_txn: u64,
    rounds: usize,
    batch: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        rows: 500_000,
        rows_per_txn: 5,
        rounds: 2,
        batch: 10_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = || -> u64 {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", argv[i]))
        };
        match argv[i].as_str() {
            "--rows" => a.rows = next(),
            "--rows-per-txn" => a.rows_per_txn = next().max(1),
            "--rounds" => a.rounds = usize::try_from(next()).unwrap_or(1).max(1),
            "--max-batch-records" => a.batch = next().max(1),
            _ => {}
        }
        i += 1;
    }
    a
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in rt
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .expect("create")
    {
        r.expect("topic created");
    }
}

fn sum_high_watermarks(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, h)| h)
                .unwrap_or(0)
        })
        .sum()
}

fn proc_stat_cpu_s(pid: u32) -> f64 {
    // utime + stime, fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

struct Run {
    seconds: f64,
    cpu_s: f64,
    rss_mib: f64,
    /// Process start to the first row in Kafka (connections, fencing, reading the position).
    startup: f64,
    /// Time in Kafka commit calls, and how many.
    commit_s: f64,
    commits: f64,
}

fn main() {
    let args = parse_args();
    let bootstrap = kartflow_testkit::kafka_bootstrap();
    let url = kartflow_testkit::settings().database_url;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let db = rt.block_on(kartflow_testkit::postgres());
    let name = kartflow_testkit::unique_name("bench_cdc");
    let publication = format!("{name}_pub");
    rt.block_on(db.batch_execute(&format!(
        "CREATE TABLE {name} (id bigserial PRIMARY KEY, order_id text NOT NULL, \
         product_id text NOT NULL, quantity int NOT NULL);
         CREATE PUBLICATION {publication} FOR TABLE {name};"
    )))
    .expect("table");
    let slots: Vec<(String, String)> = (0..args.rounds)
        .map(|r| (format!("{name}_base{r}"), format!("{name}_cdc{r}")))
        .collect();
    for (b, w) in &slots {
        for s in [b, w] {
            rt.block_on(db.query_one(
                "SELECT 1 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[s],
            ))
            .expect("slot");
        }
    }
    eprintln!(
        "writing {} rows in transactions of {} …",
        args.rows, args.rows_per_txn
    );
    let t = Instant::now();
    rt.block_on(db.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 0..{txns} - 1 LOOP
           INSERT INTO {name} (order_id, product_id, quantity)
           SELECT 'o-' || i, 'P-' || ((i * {k} + g) % 1000), 1 + g % 3
           FROM generate_series(1, {k}) g;
           COMMIT;
         END LOOP; END $$;",
        txns = args.rows / args.rows_per_txn,
        k = args.rows_per_txn
    )))
    .expect("backlog");
    let txns = args.rows / args.rows_per_txn;
    let rows = txns * args.rows_per_txn;
    let end_row = rt
        .block_on(db.query_one("SELECT pg_current_wal_lsn()::text", &[]))
        .expect("lsn");
    let end = parse_lsn(&end_row.get::<_, String>(0)).expect("lsn");
    let wal_bytes: i64 = rt
        .block_on(db.query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slots[0].0],
        ))
        .expect("wal")
        .get(0);
    eprintln!(
        "backlog: {rows} rows, {:.0} MiB of WAL, written in {:.1}s",
        wal_bytes as f64 / 1_048_576.0,
        t.elapsed().as_secs_f64()
    );

    let worker_bin = env!("CARGO_BIN_EXE_kartflow-worker");
    let pg = url::Url::parse(&url).expect("url");
    let mut baseline = Vec::new();
    let mut worker = Vec::new();
    for (r, (base_slot, cdc_slot)) in slots.iter().enumerate() {
        // Baseline: pg_recvlogical, pgoutput, to /dev/null, stopping at the backlog's end.
        let t = Instant::now();
        let out = Command::new("/usr/bin/time")
            .args([
                "-f",
                "%U %S %M",
                "pg_recvlogical",
                "-d",
                &url,
                "--slot",
                base_slot,
            ])
            .args(["--start", "--no-loop", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={publication}"))
            .arg(format!("--endpos={}", format_lsn(end)))
            .stderr(Stdio::piped())
            .output()
            .expect("pg_recvlogical");
        let seconds = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stderr);
        let nums: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert!(out.status.success(), "pg_recvlogical failed: {text}");
        let b = Run {
            seconds,
            cpu_s: nums.first().unwrap_or(&0.0) + nums.get(1).unwrap_or(&0.0),
            rss_mib: nums.get(2).unwrap_or(&0.0) / 1024.0,
            startup: 0.0,
            commit_s: 0.0,
            commits: 0.0,
        };
        eprintln!(
            "round {r}: pg_recvlogical {:.2}s ({:.0} rows/s)",
            b.seconds,
            rows as f64 / b.seconds
        );
        baseline.push(b);

        // The worker: exactly-once into a fresh topic.
        let topic = format!("{name}-orders-{r}");
        create_topic(&bootstrap, &topic, PARTITIONS);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join(format!("cdc-{r}.json"));
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        std::fs::write(
            &config,
            serde_json::json!({
                "source": format!("bench.{name}-{r}"),
                "postgres": {"host": pg.host_str().unwrap_or("127.0.0.1"),
                             "port": pg.port().unwrap_or(5432),
                             "database": pg.path().trim_start_matches('/'), "sslMode": "disable"},
                "publication": {"name": publication},
                "slot": {"name": cdc_slot},
                "capture": {"table": format!("public.{name}")},
                "topic": topic,
                "dlqTopic": format!("{name}-dlq"),
                "positionsTopic": format!("{name}-positions"),
                "snapshotMode": "never",
                "maxBatchRecords": args.batch,
                "kafka": {"bootstrapServers": bootstrap},
                "adminListen": format!("127.0.0.1:{admin_port}")
            })
            .to_string(),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join(format!("worker-{r}.log"))).expect("log");
        let t = Instant::now();
        let mut child = Command::new(worker_bin)
            .args(["--log-format", "text", "cdc", "--config"])
            .arg(&config)
            .env("PGUSER", pg.username())
            .env("PGPASSWORD", pg.password().unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{worker_bin}: {e} (build it: cargo build --release)"));
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut cpu = 0.0;
        let mut rss = 0.0;
        let mut first_row: Option<f64> = None;
        let mut commit_s = 0.0;
        let mut commits = 0.0;
        loop {
            assert!(Instant::now() < deadline, "worker did not finish in 15 min");
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "worker exited; see its log in {}",
                dir.display()
            );
            cpu = proc_stat_cpu_s(pid).max(cpu);
            rss = rss_mib(pid).max(rss);
            let body = kartflow_testkit::http::request(admin_port, "GET", "/metrics", None)
                .map(|(_, b)| b)
                .unwrap_or_default();
            if first_row.is_none() && metric(&body, "kartflow_cdc_rows_total").is_some() {
                first_row = Some(t.elapsed().as_secs_f64());
            }
            // Every PostgreSQL transaction of the backlog committed in Kafka (the worker counts
            // a transaction only once its Kafka transaction committed).
            commit_s = metric(&body, "kartflow_cdc_kafka_commit_seconds_sum").unwrap_or(commit_s);
            commits = metric(&body, "kartflow_cdc_kafka_commit_seconds_count").unwrap_or(commits);
            if metric(&body, "kartflow_cdc_transactions_total").is_some_and(|n| n as u64 >= txns) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = t.elapsed().as_secs_f64();
        let startup = first_row.unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        let in_kafka = sum_high_watermarks(&bootstrap, &topic);
        assert!(
            in_kafka >= rows as i64,
            "only {in_kafka} offsets in {topic} for {rows} rows"
        );
        eprintln!(
            "round {r}: worker {seconds:.2}s ({:.0} rows/s; first row after {startup:.2}s), \
             {cpu:.1} CPU s, {rss:.0} MiB, {commits} Kafka commits taking {commit_s:.2}s",
            rows as f64 / seconds
        );
        worker.push(Run {
            seconds,
            cpu_s: cpu,
            rss_mib: rss,
            startup,
            commit_s,
            commits,
        });
    }
    for (b, w) in &slots {
        for s in [b, w] {
            let _ = rt.block_on(db.execute("SELECT pg_drop_replication_slot($1)", &[s]));
        }
    }
    let _ = rt.block_on(db.batch_execute(&format!(
        "DROP PUBLICATION {publication}; DROP TABLE {name};"
    )));

    let best = |runs: &[Run]| {
        runs.iter()
            .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .map(|r| (r.seconds, r.cpu_s, r.rss_mib))
            .unwrap_or_default()
    };
    let (bs, bcpu, brss) = best(&baseline);
    let (ws, wcpu, wrss) = best(&worker);
    let fastest = worker.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let startup = fastest.map(|r| r.startup).unwrap_or_default();
    let (commit_s, commits) = fastest.map(|r| (r.commit_s, r.commits)).unwrap_or_default();
    let rate = |s: f64| rows as f64 / s;
    let per_100k = |cpu: f64| cpu / (rows as f64 / 100_000.0);
    let rounds = |runs: &[Run]| {
        runs.iter()
            .map(|r| format!("{:.0}", rate(r.seconds)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let md = format!(
        "| measure | value |\n| --- | --- |\n\
         | backlog | {rows} rows in transactions of {k}, {wal:.0} MiB of WAL |\n\
         | pg_recvlogical (pgoutput → /dev/null) | {br:.0} rows/s (rounds: {brs}); {bcpu100:.2} CPU s / 100k rows; {brss:.0} MiB RSS |\n\
         | CDC worker, exactly-once into Kafka | {wr:.0} rows/s (rounds: {wrs}); {wcpu100:.2} CPU s / 100k rows; {wrss:.0} MiB RSS |\n\
         | **ratio worker / pg_recvlogical** | **{ratio:.0} %** (target ≥ 50 %) |\n\
         | worker start-up included above (process start → first row in Kafka) | {startup:.2} s |\n\
         | worker time in Kafka commit calls (stream not read meanwhile) | {commit_s:.2} s in {commits} commits |\n",
        k = args.rows_per_txn,
        wal = wal_bytes as f64 / 1_048_576.0,
        br = rate(bs),
        brs = rounds(&baseline),
        bcpu100 = per_100k(bcpu),
        wr = rate(ws),
        wrs = rounds(&worker),
        wcpu100 = per_100k(wcpu),
        ratio = 100.0 * bs / ws,
    );
    println!("{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    std::fs::write(out.join("cdc.md"), &md).expect("md");
    std::fs::write(
        out.join("cdc.json"),
        serde_json::json!({
            "rows": rows, "rowsPerTxn": args.rows_per_txn, "walBytes": wal_bytes,
            "baseline": {"rowsPerSecond": rate(bs), "cpuSeconds": bcpu, "rssMiB": brss,
                         "rounds": baseline.iter().map(|r| rate(r.seconds)).collect::<Vec<_>>()},
            "worker": {"rowsPerSecond": rate(ws), "cpuSeconds": wcpu, "rssMiB": wrss,
                       "rounds": worker.iter().map(|r| rate(r.seconds)).collect::<Vec<_>>()},
            "ratio": bs / ws,
            "workerStartupSeconds": startup,
            "workerCommitSeconds": commit_s,
            "workerCommits": commits
        })
        .to_string(),
    )
    .expect("json");
}
