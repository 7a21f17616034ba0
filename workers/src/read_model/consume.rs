//! Broadcast consumption: one reader thread per topic, each with its own consumer that
//! `assign()`s every partition (no consumer group: no membership, no committed offsets, nothing
//! a rebalance can stall), `isolation.level=read_committed`.
//!
//! One consumer per topic keeps the three topics restoring in parallel and makes librdkafka's
//! end-of-partition signal unambiguous (it names the partition, not the topic). `products` is
//! read from the beginning; `inventory-events` and `inventory-alerts` from `historyWindow` ago
//! (by record timestamp), so start-up time depends on the product count and the window, never on
//! the age of those topics. Partitions added later are found by a periodic metadata check and
//! read from their beginning.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use thiserror::Error;
use tracing::{info, info_span, warn};

use super::record::{self, Change, Input, RecordError};
use super::shared::Shared;
use crate::process::Shutdown;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);
/// Records applied under one write lock: large enough to amortise the lock during restore,
/// small enough that readers wait at most a few milliseconds.
const BATCH: usize = 2_048;
const POSITION_REFRESH: Duration = Duration::from_secs(1);
const PROGRESS_LOG: Duration = Duration::from_secs(5);
const MISSING_TOPIC_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum ConsumeError {
    #[error("Kafka consumer for topic {topic}: {source}")]
    Client { topic: String, source: KafkaError },
    #[error(
        "cannot read metadata of topic {topic}: {source} (check kafka.bootstrapServers and this client's ACLs)"
    )]
    Metadata { topic: String, source: KafkaError },
    #[error(
        "cannot read the end offsets of {topic} partition {partition}: {source} (the replica cannot tell when it has caught up)"
    )]
    Watermarks {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
}

/// Counts the readers still restoring; the last one to catch up makes the replica Ready.
/// Readiness is latched: once caught up, a burst of writes never makes the replica unready.
pub struct CatchUp {
    pending: AtomicUsize,
}

impl CatchUp {
    pub fn new(readers: usize) -> Self {
        Self {
            pending: AtomicUsize::new(readers),
        }
    }

    fn reader_done(&self, shared: &Shared) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let secs = shared.started.elapsed().as_secs_f64();
            shared.metrics.restore_seconds.set(secs);
            let products = shared.read().len();
            info!(
                restore_seconds = secs,
                products, "caught up with the end offsets captured at start: ready"
            );
            shared.caught_up();
        }
    }
}

/// Last stable offsets from librdkafka's statistics, for the lag gauge.
#[derive(Default)]
pub struct StatsContext {
    last_stable: Mutex<HashMap<i32, i64>>,
}

#[derive(Deserialize)]
struct RawStats {
    #[serde(default)]
    topics: HashMap<String, RawTopic>,
}

#[derive(Deserialize)]
struct RawTopic {
    #[serde(default)]
    partitions: HashMap<String, RawPartition>,
}

#[derive(Deserialize)]
struct RawPartition {
    ls_offset: i64,
}

impl ClientContext for StatsContext {
    // With enable.partition.eof librdkafka also reports each end of partition here; the reader
    // handles those from poll(), so they are not errors worth a log line.
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        warn!(error = %error, reason, "librdkafka error (it retries)");
    }

    // Only the last stable offsets are read: parsing librdkafka's whole statistics document
    // into rdkafka's types would break on fields a newer librdkafka adds.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<RawStats>(statistics) else {
            return;
        };
        let mut map = self
            .last_stable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // One consumer reads one topic.
        for t in stats.topics.into_values() {
            for (p, s) in t.partitions {
                if let Ok(p) = p.parse::<i32>()
                    && p >= 0
                    && s.ls_offset >= 0
                {
                    map.insert(p, s.ls_offset);
                }
            }
        }
    }
}

impl ConsumerContext for StatsContext {}

/// Where a reader starts in each partition.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    Beginning,
    /// Epoch ms: the first record at or after it.
    Since(i64),
}

/// One topic's reader.
pub struct Reader {
    pub input: Input,
    pub topic: String,
    pub start: StartAt,
    /// A missing topic blocks readiness (products) or counts as empty until it appears.
    pub required: bool,
    /// How often to look for added partitions.
    pub partition_check: Duration,
    /// `(index, count)`: this reader takes the partitions `p` with `p % count == index`, so
    /// `count` readers restore one topic in parallel (decoding is the replica's main cost).
    pub shard: (usize, usize),
}

/// The consumer settings every reader uses on top of the user's client properties.
pub fn consumer_config(mut base: ClientConfig, client_id: &str) -> ClientConfig {
    base.set("client.id", client_id)
        // librdkafka's assign() needs a group id to exist, but the consumer never joins the
        // group (no subscribe) and never commits: the id only names the client in broker logs.
        .set("group.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("statistics.interval.ms", "5000")
        // Restore throughput: larger partition fetches than the default 1 MiB. The prefetch
        // queue is a quarter of librdkafka's 64 MiB default per consumer: a restore decodes
        // slower than librdkafka fetches, so the queue is always full, and what it held shows up
        // in the RSS afterwards (the allocator keeps the freed buffers). 16 MiB is still four
        // full partition fetches ahead of the reader; restore time did not change measurably.
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.max.messages.kbytes", "16384")
        // A restore decodes slower than librdkafka fetches, so the prefetch queue fills; by
        // default the next fetch then waits a whole second (fetch.queue.backoff.ms=1000) and the
        // reader sits idle most of the restore. Fetch again as soon as there is room.
        .set("fetch.queue.backoff.ms", "10");
    base
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Partitions {
    /// Partitions still restoring and their target (end offset captured at start).
    pending: BTreeMap<i32, i64>,
    count: usize,
    /// Where each assigned partition started, for re-assigning one not read from yet.
    starts: BTreeMap<i32, Offset>,
}

/// A decoded record waiting for the write lock.
struct Item {
    partition: i32,
    offset: i64,
    bytes: u64,
    result: Result<Change, RecordError>,
}

impl Reader {
    /// Reads until shutdown. Calls `catch_up` once when every partition present at start has
    /// reached the end offset captured then.
    pub fn run(
        self,
        config: &ClientConfig,
        shared: &Shared,
        catch_up: &CatchUp,
        shutdown: &Shutdown,
    ) -> Result<(), ConsumeError> {
        let span = info_span!("reader", topic = %self.topic);
        let _guard = span.enter();
        let client_err = |source| ConsumeError::Client {
            topic: self.topic.clone(),
            source,
        };
        let consumer: BaseConsumer<StatsContext> = config
            .create_with_context(StatsContext::default())
            .map_err(client_err)?;
        let topic: Arc<str> = Arc::from(self.topic.as_str());
        let input_name = self.input.as_str();

        // Wait for a required topic; an optional one may appear later.
        let mut count = self.partition_count(&consumer)?;
        let mut waited = Instant::now();
        while count == 0 && self.required {
            if shutdown.is_requested() {
                return Ok(());
            }
            if waited.elapsed() > Duration::from_secs(30) {
                warn!(
                    "topic {} does not exist yet: not ready until it does",
                    self.topic
                );
                waited = Instant::now();
            }
            std::thread::sleep(MISSING_TOPIC_RETRY);
            count = self.partition_count(&consumer)?;
        }
        let mut parts = Partitions {
            pending: BTreeMap::new(),
            count: 0,
            starts: BTreeMap::new(),
        };
        self.assign(&consumer, 0..count, true, &mut parts, shared)?;
        info!(
            partitions = count,
            pending = parts.pending.len(),
            "assigned every partition; restoring"
        );
        let mut done = false;
        let finish = |parts: &Partitions, done: &mut bool| {
            if !*done && parts.pending.is_empty() {
                *done = true;
                info!(
                    input = input_name,
                    "caught up with the end offsets captured at start"
                );
                catch_up.reader_done(shared);
            }
        };
        finish(&parts, &mut done);

        let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
        let mut eofs: Vec<i32> = Vec::new();
        let mut last_refresh = Instant::now();
        let mut last_position = Instant::now();
        let mut last_log = Instant::now();
        let mut errors_logged = 0u32;
        let mut counters: Vec<(prometheus::IntCounter, prometheus::IntCounter)> = Vec::new();
        while !shutdown.is_requested() {
            batch.clear();
            eofs.clear();
            let mut timeout = POLL;
            while batch.len() < BATCH {
                let Some(result) = consumer.poll(timeout) else {
                    break;
                };
                timeout = Duration::ZERO;
                match result {
                    Ok(m) => {
                        let partition = m.partition();
                        let payload = m.payload();
                        let bytes = payload.map_or(0, <[u8]>::len) as u64;
                        let ts = m.timestamp().to_millis().unwrap_or(0);
                        batch.push(Item {
                            partition,
                            offset: m.offset(),
                            bytes,
                            result: record::decode(self.input, m.key(), payload, ts),
                        });
                    }
                    Err(KafkaError::PartitionEOF(p)) => eofs.push(p),
                    Err(e) => {
                        // Transient broker errors are retried by librdkafka; say so, briefly.
                        if errors_logged < 20 {
                            warn!(error = %e, "consumer error (librdkafka retries)");
                            errors_logged += 1;
                        }
                    }
                }
            }
            if !batch.is_empty() {
                let mut sizes: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
                for item in &batch {
                    let s = sizes.entry(item.partition).or_default();
                    s.0 += 1;
                    s.1 += item.bytes;
                    if let Some(target) = parts.pending.get(&item.partition)
                        && item.offset + 1 >= *target
                    {
                        parts.pending.remove(&item.partition);
                    }
                }
                self.apply(&mut batch, &topic, shared);
                for (p, (records, bytes)) in sizes {
                    // Counted per batch, not per record: two shared atomic counters per record
                    // were a measurable part of a restore.
                    let (records_counter, bytes_counter) =
                        counters_for(&mut counters, shared, &topic, p);
                    records_counter.inc_by(records);
                    bytes_counter.inc_by(bytes);
                    let caught_up = !parts.pending.contains_key(&p);
                    shared.update_progress(&self.topic, p, |pr| {
                        pr.records += records;
                        pr.bytes += bytes;
                        pr.caught_up = pr.caught_up || caught_up;
                    });
                }
            }
            for p in &eofs {
                // The end of what read_committed may read (the last stable offset): caught up
                // even when the captured end lies behind an open transaction's records.
                if parts.pending.remove(p).is_some() {
                    shared.update_progress(&self.topic, *p, |pr| pr.caught_up = true);
                }
            }
            finish(&parts, &mut done);

            if last_position.elapsed() >= POSITION_REFRESH {
                last_position = Instant::now();
                self.refresh_positions(&consumer, &topic, shared, &mut parts);
                finish(&parts, &mut done);
            }
            if !done && last_log.elapsed() >= PROGRESS_LOG {
                last_log = Instant::now();
                // Per partition of this reader: records, MiB and target, e.g. `0=51200/100103`.
                let progress = shared.progress();
                let mine: Vec<String> = progress
                    .iter()
                    .filter(|((t, p), _)| *t == self.topic && parts.pending.contains_key(p))
                    .map(|((_, p), pr)| {
                        format!(
                            "{p}={}/{} ({:.1} MiB)",
                            pr.records,
                            pr.target.unwrap_or_default(),
                            pr.bytes as f64 / 1_048_576.0
                        )
                    })
                    .collect();
                info!(
                    pending_partitions = parts.pending.len(),
                    partitions = %mine.join(", "),
                    "restoring"
                );
            }
            if last_refresh.elapsed() >= self.partition_check {
                last_refresh = Instant::now();
                match self.partition_count(&consumer) {
                    Ok(n) if n > parts.count => {
                        info!(
                            from = parts.count,
                            to = n,
                            "partitions added: reading them from the beginning"
                        );
                        let from = parts.count;
                        self.assign(&consumer, from..n, false, &mut parts, shared)?;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "partition check failed; retrying later"),
                }
            }
        }
        Ok(())
    }

    /// Partitions of the topic; 0 when it does not exist (yet).
    fn partition_count(
        &self,
        consumer: &BaseConsumer<StatsContext>,
    ) -> Result<usize, ConsumeError> {
        let md = consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(|source| ConsumeError::Metadata {
                topic: self.topic.clone(),
                source,
            })?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    /// Captures the end offsets of `range` (when `at_start`, as restore targets) and adds the
    /// partitions to the assignment at their start position.
    fn assign(
        &self,
        consumer: &BaseConsumer<StatsContext>,
        range: std::ops::Range<usize>,
        at_start: bool,
        parts: &mut Partitions,
        shared: &Shared,
    ) -> Result<(), ConsumeError> {
        let mut tpl = TopicPartitionList::new();
        let mut times = TopicPartitionList::new();
        let (index, count) = self.shard;
        for p in range.clone().filter(|p| p % count.max(1) == index) {
            let p = i32::try_from(p).unwrap_or(i32::MAX);
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, p, METADATA_TIMEOUT)
                .map_err(|source| ConsumeError::Watermarks {
                    topic: self.topic.clone(),
                    partition: p,
                    source,
                })?;
            if at_start && high > low {
                parts.pending.insert(p, high);
            }
            shared.update_progress(&self.topic, p, |pr| {
                pr.target = at_start.then_some(high);
                pr.caught_up = !(at_start && high > low);
            });
            match self.start {
                StartAt::Beginning => {
                    let _ = tpl.add_partition_offset(&self.topic, p, Offset::Beginning);
                }
                StartAt::Since(ms) if at_start => {
                    let _ = times.add_partition_offset(&self.topic, p, Offset::Offset(ms));
                }
                // A partition added later is new: all of it is recent.
                StartAt::Since(_) => {
                    let _ = tpl.add_partition_offset(&self.topic, p, Offset::Beginning);
                }
            }
        }
        if times.count() > 0 {
            let found = consumer
                .offsets_for_times(times, METADATA_TIMEOUT)
                .map_err(|source| ConsumeError::Client {
                    topic: self.topic.clone(),
                    source,
                })?;
            for e in found.elements() {
                // No record at or after the time: start at the end, nothing to restore there.
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                };
                let nothing_to_restore = match offset {
                    Offset::Offset(o) => parts.pending.get(&e.partition()).is_some_and(|t| o >= *t),
                    _ => true,
                };
                if nothing_to_restore {
                    parts.pending.remove(&e.partition());
                    shared.update_progress(&self.topic, e.partition(), |pr| pr.caught_up = true);
                }
                let _ = tpl.add_partition_offset(&self.topic, e.partition(), offset);
            }
        }
        for e in tpl.elements() {
            parts.starts.insert(e.partition(), e.offset());
        }
        // Without a consumer group there is no incremental assignment: assign the whole set
        // again, each partition read so far continuing at the view's position.
        let mut all = TopicPartitionList::new();
        {
            let view = shared.read();
            for (p, start) in &parts.starts {
                let at = view
                    .offsets()
                    .get(&self.topic, *p)
                    .map_or(*start, Offset::Offset);
                let _ = all.add_partition_offset(&self.topic, *p, at);
            }
        }
        consumer
            .assign(&all)
            .map_err(|source| ConsumeError::Client {
                topic: self.topic.clone(),
                source,
            })?;
        parts.count = parts.count.max(range.end);
        Ok(())
    }

    /// Applies a decoded batch under one write lock (emptying it), then wakes the waiters.
    fn apply(&self, batch: &mut Vec<Item>, topic: &Arc<str>, shared: &Shared) {
        let input = self.input.as_str();
        let mut rejected: Vec<(i32, i64, RecordError)> = Vec::new();
        // Positions move once per partition per batch (under the same lock, so no answer sees
        // a record without its position or the reverse).
        let mut ends: Vec<(i32, i64)> = Vec::new();
        let (seq, products) = {
            let mut view = shared.write();
            for item in batch.drain(..) {
                match ends.iter_mut().find(|(p, _)| *p == item.partition) {
                    Some((_, next)) => *next = (*next).max(item.offset + 1),
                    None => ends.push((item.partition, item.offset + 1)),
                }
                match item.result {
                    Ok(change) => {
                        view.apply(change, None);
                    }
                    Err(e) => rejected.push((item.partition, item.offset, e)),
                }
            }
            for (partition, next) in ends {
                view.reached(topic, partition, next);
            }
            (view.seq(), view.len())
        };
        shared.notify(seq);
        shared
            .metrics
            .products
            .set(i64::try_from(products).unwrap_or(i64::MAX));
        for (partition, offset, e) in rejected {
            shared
                .metrics
                .rejected
                .with_label_values(&[input, e.reason()])
                .inc();
            warn!(partition, offset, reason = e.reason(), error = %e, "record skipped");
        }
    }

    /// Moves the view's positions past records the consumer skipped (transaction markers,
    /// aborted records) and updates the lag gauge.
    fn refresh_positions(
        &self,
        consumer: &BaseConsumer<StatsContext>,
        topic: &Arc<str>,
        shared: &Shared,
        parts: &mut Partitions,
    ) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        let last_stable = consumer
            .context()
            .last_stable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut view = shared.write();
        for e in positions.elements() {
            let p = e.partition();
            if let Offset::Offset(next) = e.offset() {
                view.reached(topic, p, next);
                if parts.pending.get(&p).is_some_and(|t| next >= *t) {
                    parts.pending.remove(&p);
                    shared.update_progress(&self.topic, p, |pr| pr.caught_up = true);
                }
            }
            let at = view.offsets().get(&self.topic, p).unwrap_or(0);
            if let Some(ls) = last_stable.get(&p) {
                shared
                    .metrics
                    .lag
                    .with_label_values(&[self.topic.as_str(), &p.to_string()])
                    .set((ls - at).max(0));
            }
        }
    }
}

/// The per-partition record and byte counters, created on first use.
fn counters_for<'a>(
    cache: &'a mut Vec<(prometheus::IntCounter, prometheus::IntCounter)>,
    shared: &Shared,
    topic: &str,
    partition: i32,
) -> (&'a prometheus::IntCounter, &'a prometheus::IntCounter) {
    let idx = usize::try_from(partition).unwrap_or(0);
    while cache.len() <= idx {
        let p = cache.len().to_string();
        cache.push((
            shared.metrics.records.with_label_values(&[topic, &p]),
            shared.metrics.bytes.with_label_values(&[topic, &p]),
        ));
    }
    let (r, b) = &cache[idx];
    (r, b)
}
