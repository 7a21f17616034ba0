//! Acceptance (issue 5): a savepoint taken with 2 workers restores into 1 and into 3 workers of a
//! new pipeline with identical state and offsets, and processing continues from there exactly
//! once; a truncated savepoint file makes the worker refuse to start, naming the file.
//!
//! Needs the local Kafka: `make test` runs it, or `make dev-up` then
//! `cargo test -p kartflow-worker --test inventory_savepoints -- --include-ignored`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    Kafka, Line, PARTITIONS, PipelineConfig, Rng, TestDir, TopicNames, Worker, Workload,
};

const READY: Duration = Duration::from_secs(60);

/// Waits until `workers` together own every partition once, each owning at least one.
fn wait_spread(workers: &[&Worker], timeout: Duration) {
    let started = Instant::now();
    loop {
        let owned: Vec<BTreeSet<i64>> = workers.iter().map(|w| w.owned_partitions()).collect();
        let total: usize = owned.iter().map(BTreeSet::len).sum();
        let distinct: BTreeSet<i64> = owned.iter().flatten().copied().collect();
        if total == PARTITIONS as usize
            && distinct.len() == PARTITIONS as usize
            && owned.iter().all(|o| !o.is_empty())
        {
            return;
        }
        if started.elapsed() > timeout {
            support::fail_with_logs(workers, &format!("partitions not spread: {owned:?}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Takes savepoint `id` on every worker; returns its location after checking the workers wrote
/// disjoint partitions covering all of them.
fn savepoint_all(workers: &[&Worker], id: &str) -> String {
    let mut location = None;
    let mut partitions = BTreeSet::new();
    for w in workers {
        let r = w.savepoint(id);
        let loc = r["location"].as_str().expect("location").to_owned();
        assert_eq!(
            location.get_or_insert(loc.clone()),
            &loc,
            "one location per id"
        );
        for p in r["partitions"].as_array().expect("partitions") {
            assert!(
                partitions.insert(p.as_i64().expect("partition")),
                "partition {p} written twice"
            );
        }
    }
    assert_eq!(partitions.len(), PARTITIONS as usize, "{partitions:?}");
    location.expect("at least one worker")
}

/// What must be equal between a savepoint and its restore: state, input offsets, file hash.
fn comparable(files: &BTreeMap<i64, Value>) -> BTreeMap<i64, (Value, Value, Value)> {
    files
        .iter()
        .map(|(p, v)| {
            (
                *p,
                (
                    v["state"].clone(),
                    v["meta"]["offsets"].clone(),
                    v["meta"]["bootstrapHash"].clone(),
                ),
            )
        })
        .collect()
}

fn assert_same_state(original: &BTreeMap<i64, Value>, restored_at: &str, what: &str) {
    let restored = support::savepoint_states(restored_at);
    let (want, got) = (comparable(original), comparable(&restored));
    for p in 0..i64::from(PARTITIONS) {
        assert!(
            want.get(&p) == got.get(&p),
            "{what}: partition {p} differs from the savepoint\nsavepoint: {:?}\nrestored: {:?}",
            want.get(&p).map(|(_, o, _)| o),
            got.get(&p).map(|(_, o, _)| o),
        );
    }
}

/// Inventory per product over all partitions of a savepoint.
fn inventories(files: &BTreeMap<i64, Value>) -> BTreeMap<String, i64> {
    support::savepoint_products(files)
        .into_iter()
        .map(|(id, (inv, _))| (id, inv))
        .collect()
}

fn send_lines(kafka: &Kafka, topic: &str, lines: &[Line]) {
    let p = kafka.producer();
    for l in lines {
        p.send(topic, Some(&l.product_id), l.to_json().as_bytes());
    }
    p.flush();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
#[ignore = "needs the local Kafka: `make test` runs it (or `make dev-up` + --include-ignored)"]
fn a_savepoint_of_two_workers_restores_into_one_and_into_three() {
    let started = Instant::now();
    let mut rng = Rng::from_env("savepoints");
    let kafka = Kafka::connect();
    let dir = TestDir::new("sp");
    let storage = dir.savepoint_url();
    let topics = TopicNames::unique("sp");
    kafka.create_topics(&topics.inputs(), PARTITIONS);
    let workload = Workload::generate(&mut rng, 40, 1_200, 5);
    let (first, second) = workload.sends.split_at(800);
    let bootstrap = workload.write_bootstrap_file(&dir);

    // Two workers process the first part of the stream, then savepoint.
    let p2 = PipelineConfig::new("sp2", &topics, Some(bootstrap.clone()), &storage);
    let mut a = Worker::new(&dir, &p2, "sp2-a");
    let mut b = Worker::new(&dir, &p2, "sp2-b");
    a.start();
    b.start();
    a.wait_ready(READY);
    b.wait_ready(READY);
    wait_spread(&[&a, &b], Duration::from_secs(30));
    send_lines(&kafka, &topics.order_events, first);
    kafka.wait_caught_up(
        &p2.group(),
        &topics.inputs(),
        Duration::from_secs(60),
        &[&a, &b],
    );
    let sp_id = support::unique_name("sp");
    let location = savepoint_all(&[&a, &b], &sp_id);
    let original = support::savepoint_states(&location);
    let want_first = support::expected(&workload.initial, first);
    assert_eq!(
        inventories(&original),
        want_first.inventory,
        "the savepoint holds the state after the first lines"
    );
    for w in [&mut a, &mut b] {
        assert!(w.terminate(Duration::from_secs(30)).success());
    }
    eprintln!(
        "[savepoints] savepoint {location} taken at {:?}",
        started.elapsed()
    );

    // Restore into 1 and into 3 workers, each a new pipeline (fresh group and changelog).
    let t1 = topics.with_new_outputs("sp1");
    let t3 = topics.with_new_outputs("sp3");
    let p1 = PipelineConfig::new("sp1", &t1, Some(bootstrap.clone()), &storage);
    let p3 = PipelineConfig::new("sp3", &t3, Some(bootstrap.clone()), &storage);
    let _cleanup = kafka.cleanup_on_drop(&[&topics, &t1, &t3], &[&p1, &p2, &p3]);
    let from = ["--from-savepoint", location.as_str()];
    let mut one = Worker::new(&dir, &p1, "sp1-a").with_args(&from);
    let mut three: Vec<Worker> = ["sp3-a", "sp3-b", "sp3-c"]
        .iter()
        .map(|i| Worker::new(&dir, &p3, i).with_args(&from))
        .collect();
    one.start();
    three.iter_mut().for_each(Worker::start);
    one.wait_ready(READY);
    three.iter_mut().for_each(|w| w.wait_ready(READY));
    let three_refs: Vec<&Worker> = three.iter().collect();
    wait_spread(&[&one], Duration::from_secs(30));
    wait_spread(&three_refs, Duration::from_secs(40));
    eprintln!(
        "[savepoints] restored into 1 and 3 workers at {:?}",
        started.elapsed()
    );
    let r1 = savepoint_all(&[&one], "restored-1");
    assert_same_state(&original, &r1, "restored into 1 worker");
    let r3 = savepoint_all(&three_refs, "restored-3");
    assert_same_state(&original, &r3, "restored into 3 workers");
    for w in std::iter::once(&one).chain(&three) {
        assert_eq!(w.status()["savepointRestored"], sp_id.as_str());
    }

    // Both continue from the savepoint's offsets: the rest of the stream applies exactly once.
    send_lines(&kafka, &topics.order_events, second);
    let want_all = workload.expected();
    // Lines of the second part that redeliver one of the first part apply no more.
    let want_second: BTreeSet<_> = want_all
        .lines
        .difference(&want_first.lines)
        .cloned()
        .collect();
    for (p, t, workers) in [(&p1, &t1, vec![&one]), (&p3, &t3, three_refs.clone())] {
        kafka.wait_caught_up(
            &p.group(),
            &topics.inputs(),
            Duration::from_secs(60),
            &workers,
        );
        let got = support::observe(&kafka, t);
        let lines: BTreeSet<_> = got.decreased.keys().cloned().collect();
        let once = got.decreased.values().all(|n| *n == 1);
        if lines != want_second || !once {
            support::fail_with_logs(
                &workers,
                &format!(
                    "{}: expected one INVENTORY_DECREASED for each of the {} lines sent after \
                     the savepoint, got {} distinct (all once: {once})",
                    p.name,
                    want_second.len(),
                    lines.len()
                ),
            );
        }
        for (id, product) in &got.products {
            assert_eq!(
                product["inventory"].as_i64(),
                want_all.inventory.get(id).copied(),
                "{}: {id}",
                p.name
            );
        }
    }
    let f1 = support::savepoint_states(&savepoint_all(&[&one], "final-1"));
    let f3 = support::savepoint_states(&savepoint_all(&three_refs, "final-3"));
    assert_eq!(
        inventories(&f1),
        want_all.inventory,
        "1 worker, final state"
    );
    assert_eq!(
        inventories(&f3),
        want_all.inventory,
        "3 workers, final state"
    );
    drop(three);

    // Rolling back: the 1-worker pipeline restarts from its first savepoint (taken before the
    // second part) although its group has committed past it; the second part applies again.
    assert!(one.terminate(Duration::from_secs(30)).success());
    let mut rolled_back = Worker::new(&dir, &p1, "sp1-a").with_args(&["--from-savepoint", &r1]);
    rolled_back.start_ready(READY);
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        let sp = savepoint_all(&[&rolled_back], &format!("rolled-back-{round}"));
        let got = inventories(&support::savepoint_states(&sp));
        if got == want_all.inventory {
            break;
        }
        if Instant::now() > deadline {
            support::fail_with_logs(
                &[&rolled_back],
                &format!(
                    "after restoring the older savepoint the second part was not re-applied: \
                     {got:?}\nexpected {:?}",
                    want_all.inventory
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(rolled_back);
    drop(one);

    // A truncated partition file: the savepoint is refused as a whole, naming the file.
    let bad_root = dir.path.join("truncated");
    copy_dir(Path::new(location.trim_start_matches("file://")), &bad_root);
    let victim = std::fs::read_dir(bad_root.join("sp2-b"))
        .expect("sp2-b's files")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("partition-"))
        .expect("a partition file");
    let bytes = std::fs::read(&victim).expect("read");
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).expect("truncate");
    let bad_location = format!("file://{}", bad_root.display());
    let t_bad = topics.with_new_outputs("spbad");
    let p_bad = PipelineConfig::new("spbad", &t_bad, Some(bootstrap), &storage);
    let _cleanup_bad = kafka.cleanup_on_drop(&[&t_bad], &[&p_bad]);
    let mut refused =
        Worker::new(&dir, &p_bad, "spbad-a").with_args(&["--from-savepoint", &bad_location]);
    refused.start();
    let status = refused
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| {
            support::fail_with_logs(&[&refused], "started from a truncated savepoint")
        });
    let log = refused.log();
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        !status.success(),
        "non-zero exit for a truncated savepoint:\n{log}"
    );
    assert!(
        log.contains(&name) && log.contains("corrupt"),
        "the error names the truncated file {name}:\n{log}"
    );
    eprintln!("[savepoints] done in {:?}", started.elapsed());
}
