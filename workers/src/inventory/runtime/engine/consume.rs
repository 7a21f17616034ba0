//! Setting up the transactional producer and the group consumer, and the poll loop that drives
//! everything else: records, ticks, batch commits, lag refreshes, admin commands and shutdown.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use tracing::{info, warn};

use super::transaction::TXN_TIMEOUT;
use super::{Command, Core, Ctx, EngineError, EngineSetup};

/// Runs the loop until shutdown is requested or a savepoint with `stop` completes.
pub fn run(
    setup: EngineSetup,
    commands: std::sync::mpsc::Receiver<Command>,
) -> Result<(), EngineError> {
    let s = &setup.settings;
    let transactional_id = format!("{}-{}", s.group_id(), setup.instance);
    let mut producer_config = setup.client.clone();
    // A bounded producer queue: a batch (maxBatchRecords lines, three outputs each, plus the
    // changelog) fits many times over, and the bootstrap transaction of a large catalogue waits
    // for deliveries instead of copying up to 100,000 records (librdkafka's default) into memory
    // that the allocator keeps afterwards. A user's own setting wins.
    //
    // Delivery reports only for failures: a failed delivery already fails the transaction's
    // commit, and a report per delivered record kept the producer's polling thread at up to
    // 8 % of the process's CPU.
    for (key, value) in [
        ("queue.buffering.max.messages", "20000"),
        ("queue.buffering.max.kbytes", "16384"),
        ("delivery.report.only.error", "true"),
        ("linger.ms", "5"),
    ] {
        if producer_config.get(key).is_none() {
            producer_config.set(key, value);
        }
    }
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config
        .set("transactional.id", &transactional_id)
        .set("transaction.timeout.ms", "60000")
        .set("partitioner", "murmur2_random")
        .create()?;
    producer
        .init_transactions(TXN_TIMEOUT)
        .map_err(|e| match e {
            KafkaError::Transaction(ref r) if r.is_fatal() => EngineError::Fenced(e),
            other => EngineError::Kafka(other),
        })?;
    info!(%transactional_id, "transactional producer ready");

    let watermarks: BaseConsumer = setup.client.create()?;
    let core = Core {
        watermarks,
        rules: s.rules.clone(),
        changelog_topic: s.changelog_topic(),
        instance: setup.instance.clone(),
        partition_count: setup.partition_count,
        client: setup.client.clone(),
        producer: Arc::new(producer),
        slots: BTreeMap::new(),
        txn_open: false,
        txn_records: Vec::new(),
        txn_started: None,
        inflight: None,
        held: RefCell::default(),
        to_seek: BTreeSet::new(),
        to_bootstrap: BTreeSet::new(),
        needs_rewind: false,
        fatal: None,
        assigned_once: false,
        bootstrap: setup.bootstrap,
        dlq_log: super::DlqLogLimit::new(),
        savepoint: setup.savepoint,
        records_in: super::Counted::new(&setup.metrics.records_in),
        records_out: super::Counted::new(&setup.metrics.records_out),
        encode_buf: Vec::new(),
        dispositions: super::Counted::new(&setup.metrics.dispositions),
        metrics: setup.metrics.clone(),
        status: setup.status.clone(),
        readiness: setup.readiness.clone(),
        settings: s.clone(),
    };
    let consumer: BaseConsumer<Ctx> = setup
        .client
        .clone()
        .set("group.id", s.group_id())
        // Dynamic membership on purpose: a stopped worker leaves at once so its partitions move
        // immediately, and a restarted one is never refused as an unreleased static member.
        .set("group.protocol", "consumer")
        .set("group.remote.assignor", "range")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Ctx {
            core: Mutex::new(core),
        })?;
    consumer.subscribe(&[
        s.topics.product_updates.as_str(),
        s.topics.order_events.as_str(),
    ])?;

    let batch_records = s.processing.max_batch_records;
    let batch_time = Duration::from_millis(s.processing.max_batch_ms);
    let tick_every = Duration::from_millis(s.processing.tick_interval_ms);
    let mut last_tick = Instant::now();
    let mut last_lag = Instant::now();
    let mut stop_after_savepoint = false;

    loop {
        // While a commit is in flight, look for its end often: the batch processed meanwhile
        // gets its transaction only then.
        let inflight = consumer.context().core().inflight.is_some();
        let msg = consumer.poll(Duration::from_millis(if inflight { 2 } else { 50 }));
        // One clock read per iteration for everything below: reading it costs more than a
        // record's decode on some virtual machines.
        let now = Instant::now();
        let mut core = consumer.context().core();
        core.settle_inflight(false)?;
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        let rewound = core.needs_rewind;
        if rewound {
            core.rewind(&consumer)?;
        }
        if let Err(e) = core.seek_restored(&consumer) {
            warn!(error = %e, "seek to the restored offsets failed");
        }
        core.apply_bootstrap()?;
        match msg {
            None => {}
            // Fetched before the rewind: the seek back reads it again, in order. Applying it now
            // would skip everything between the restored offset and this one.
            Some(Ok(_)) if rewound => {}
            Some(Ok(m)) => {
                core.on_record(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.payload(),
                    now,
                )?;
            }
            Some(Err(e)) => {
                // A fatal error leaves the consumer unusable: polling on would hang unready.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    let hint = if code == RDKafkaErrorCode::UnreleasedInstanceId {
                        " (a previous process with this instance id crashed without leaving the \
                         group; the broker releases the id after group.consumer.session.timeout.ms)"
                    } else {
                        ""
                    };
                    return Err(EngineError::ConsumerFatal { code, reason, hint });
                }
                warn!(error = %e, "consumer error");
            }
        }
        if now.duration_since(last_tick) >= tick_every {
            last_tick = now;
            core.tick()?;
        }
        let batch_due = core.txn_records.len() >= batch_records
            || core
                .txn_started
                .is_some_and(|t| now.saturating_duration_since(t) >= batch_time);
        if batch_due {
            core.start_commit(&consumer);
            core.publish_status();
        }
        if now.duration_since(last_lag) >= Duration::from_secs(5) {
            last_lag = now;
            core.refresh_lag();
            core.publish_status();
        }
        if let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Savepoint { id, stop, reply } => {
                    let result = core.savepoint(&consumer, &setup.runtime, &id);
                    let ok = result.is_ok();
                    let _ = reply.send(result);
                    if ok && stop {
                        stop_after_savepoint = true;
                    }
                }
            }
        }
        if stop_after_savepoint || setup.shutdown.is_requested() {
            core.commit_or_rewind(&consumer);
            drop(core);
            info!("leaving the consumer group");
            consumer.unsubscribe();
            return Ok(());
        }
    }
}
