//! The Kafka side: one transactional producer whose every transaction carries the records of
//! whole PostgreSQL transactions plus the source position they reach, and the reader of that
//! position at start. Consumers reading `read_committed` therefore see each committed row once,
//! and a restarted worker knows exactly what Kafka already holds.
//!
//! Blocking librdkafka calls (init, commit, abort, metadata) run under `block_in_place`; the
//! worker's runtime is multi-threaded for that reason.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, PurgeConfig};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::block_in_place;
use tracing::{info, warn};

use super::error::CdcError;
use super::mapping::{Destination, OutRecord};
use super::position::Position;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::topics::{self, TopicError};
use kartflow_wire::config::CdcSettings;

const TXN_TIMEOUT: Duration = Duration::from_secs(60);
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The transactional id of a source: one writer per `CdcSource`, so a new instance fences a
/// zombie.
pub fn transactional_id(source: &str) -> String {
    format!("kartflow-cdc-{source}")
}

/// A `BaseProducer` the worker polls itself, drained before each commit (see `Sink::drain`).
pub struct Sink {
    producer: BaseProducer<DefaultProducerContext>,
    meta: BaseConsumer,
    partitions: HashMap<String, Option<i32>>,
    topic: String,
    dlq_topic: String,
    positions_topic: String,
    source: String,
    open: bool,
    started: Option<Instant>,
    records: usize,
    bytes: u64,
}

/// Creates the worker's own topics when missing (positions: compacted, one partition; DLQ) and
/// checks the target topic exists.
pub async fn prepare_topics(
    client: &ClientConfig,
    settings: &CdcSettings,
    table_mode: bool,
) -> Result<(), CdcError> {
    let meta: BaseConsumer = client
        .create()
        .map_err(|e| CdcError::kafka("creating a metadata client", &e))?;
    let target = block_in_place(|| topics::partition_count(&meta, &settings.topic))?;
    if table_mode && target.is_none() {
        return Err(TopicError::Missing {
            topic: settings.topic.clone(),
            peer: "product-updates".into(),
        }
        .into());
    }
    topics::ensure_topic(
        client,
        &meta,
        &settings.positions_topic,
        1,
        &[("cleanup.policy", "compact")],
        false,
    )
    .await?;
    topics::ensure_topic(client, &meta, &settings.dlq_topic, 1, &[], false).await?;
    Ok(())
}

impl Sink {
    /// A producer with this source's transactional id; `init_transactions` fences any previous
    /// instance and aborts what it left open, so the position read afterwards is final.
    pub fn connect(client: &ClientConfig, settings: &CdcSettings) -> Result<Self, CdcError> {
        let tid = transactional_id(&settings.source);
        let producer: BaseProducer<DefaultProducerContext> = client
            .clone()
            .set("transactional.id", &tid)
            .set("transaction.timeout.ms", "900000")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "200000")
            .create()
            .map_err(|e| CdcError::kafka("creating the producer", &e))?;
        block_in_place(|| producer.init_transactions(TXN_TIMEOUT))
            .map_err(|e| classify(&tid, "initialising transactions", e))?;
        let meta: BaseConsumer = client
            .create()
            .map_err(|e| CdcError::kafka("creating a metadata client", &e))?;
        info!(transactional_id = %tid, "transactional producer ready");
        Ok(Self {
            producer,
            meta,
            partitions: HashMap::new(),
            topic: settings.topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
            positions_topic: settings.positions_topic.clone(),
            source: settings.source.clone(),
            open: false,
            started: None,
            records: 0,
            bytes: 0,
        })
    }

    /// Records and value bytes in the open transaction.
    pub fn pending(&self) -> (usize, u64) {
        (self.records, self.bytes)
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// When the open transaction got its first record.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    fn begin(&mut self) -> Result<(), CdcError> {
        if !self.open {
            self.producer
                .begin_transaction()
                .map_err(|e| classify(&self.source, "beginning a transaction", e))?;
            self.open = true;
            self.started = Some(Instant::now());
            self.records = 0;
            self.bytes = 0;
        }
        Ok(())
    }

    /// Partitions of `topic` (cached); `None` when it does not exist.
    fn partitions_of(&mut self, topic: &str) -> Result<Option<i32>, CdcError> {
        if let Some(n) = self.partitions.get(topic) {
            return Ok(*n);
        }
        let n = block_in_place(|| topics::partition_count(&self.meta, topic))?
            .and_then(|n| i32::try_from(n).ok());
        self.partitions.insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The topic a record goes to, or `None` when a routed topic does not exist (the caller
    /// sends the row to the DLQ instead).
    pub fn resolve(&mut self, destination: &Destination) -> Result<Option<String>, CdcError> {
        let topic = match destination {
            Destination::Main => self.topic.clone(),
            Destination::Routed(t) => t.clone(),
        };
        Ok(self.partitions_of(&topic)?.map(|_| topic))
    }

    /// Adds `record` to the open transaction (opening one), on the partition the Java default
    /// partitioner picks for its key, as the inventory worker does.
    pub async fn send(&mut self, topic: &str, record: &OutRecord) -> Result<(), CdcError> {
        let partitions = self.partitions_of(topic)?.unwrap_or(1);
        let partition = partition_for_key(record.key.as_bytes(), partitions);
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "eventId",
            value: Some(record.event_id.as_bytes()),
        });
        if let Some(t) = &record.event_type {
            headers = headers.insert(Header {
                key: "eventType",
                value: Some(t.as_bytes()),
            });
        }
        self.produce(
            topic.to_owned(),
            partition,
            record.key.as_bytes(),
            record.value.as_deref(),
            Some(headers),
        )
        .await
    }

    /// Adds a DLQ record (keyed by the table) to the open transaction.
    pub async fn send_dlq(&mut self, table: &str, value: &[u8]) -> Result<(), CdcError> {
        let topic = self.dlq_topic.clone();
        let partitions = self.partitions_of(&topic)?.unwrap_or(1);
        let partition = partition_for_key(table.as_bytes(), partitions);
        self.produce(topic, partition, table.as_bytes(), Some(value), None)
            .await
    }

    async fn produce(
        &mut self,
        topic: String,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), CdcError> {
        self.begin()?;
        let mut record = BaseRecord::<[u8], [u8]>::to(&topic)
            .key(key)
            .partition(partition);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The producer's queue is the only buffer: when Kafka is slow or gone the
                // worker waits here (serving delivery reports) instead of holding rows.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::ZERO);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(classify(&self.source, "producing a record", e)),
            }
        }
        if self.records.is_multiple_of(1024) {
            // Delivery reports: nobody else polls this producer.
            self.producer.poll(Duration::ZERO);
        }
        self.records += 1;
        self.bytes += value.map_or(0, |v| v.len() as u64);
        Ok(())
    }

    /// Writes `position` and commits the open transaction (opening one if a position must be
    /// recorded without records, e.g. snapshot progress). Returns how long the transaction was
    /// open and how long the commit call took.
    pub fn commit(&mut self, position: &Position) -> Result<(Duration, Duration), CdcError> {
        self.begin()?;
        let value = serde_json::to_vec(position).unwrap_or_default();
        let record = BaseRecord::<[u8], [u8]>::to(&self.positions_topic)
            .key(self.source.as_bytes())
            .payload(&value)
            .partition(0);
        if let Err((e, _)) = self.producer.send(record) {
            return Err(classify(&self.source, "producing the position", e));
        }
        let calling = Instant::now();
        let result = block_in_place(|| {
            self.drain();
            self.producer.commit_transaction(TXN_TIMEOUT)
        });
        let call = calling.elapsed();
        self.open = false;
        let started = self.started.take();
        match result {
            Ok(()) => Ok((started.map(|s| s.elapsed()).unwrap_or_default(), call)),
            Err(e) => {
                let err = classify(&self.source, "committing a transaction", e);
                if !matches!(err, CdcError::Fenced(_)) {
                    self.open = true;
                    self.abort();
                }
                Err(err)
            }
        }
    }

    /// Waits until every record is delivered, serving delivery reports in 1 ms steps. rdkafka's
    /// own flush (which `commit_transaction` runs first) polls in 100 ms steps and its poll
    /// always waits its whole timeout, so any record in flight cost 100 ms per Kafka
    /// transaction: half the worker's throughput in `make bench-cdc`. After this the flush inside
    /// the commit finds nothing in flight and returns at once.
    fn drain(&self) {
        let deadline = Instant::now() + TXN_TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
    }

    /// Gives up the open transaction after a failure: purges what is not delivered (nothing of
    /// it becomes visible to `read_committed`), serves the purge reports, and asks the
    /// coordinator to abort, briefly. librdkafka's abort waits for every delivery report, which
    /// only a poll serves, so without the purge and drain it waited its whole timeout (60 s
    /// after a lost PostgreSQL connection). If the abort does not get through, the next
    /// session's `init_transactions` aborts the transaction anyway.
    pub fn abort(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        self.started = None;
        block_in_place(|| {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let deadline = Instant::now() + ABORT_TIMEOUT;
            while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
                self.producer.poll(Duration::from_millis(1));
            }
            if let Err(e) = self.producer.abort_transaction(ABORT_TIMEOUT) {
                warn!(error = %e, "aborting the Kafka transaction failed; the next start aborts it");
            }
        });
    }
}

fn classify(source: &str, action: &str, e: KafkaError) -> CdcError {
    let fenced = e.rdkafka_error_code().is_some_and(|c| {
        matches!(
            c,
            RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
        )
    }) || matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
    if fenced {
        CdcError::Fenced(transactional_id(source))
    } else {
        CdcError::kafka(action, &e)
    }
}

/// The last committed position of `source` in the positions topic (read_committed), or the
/// default when there is none yet.
pub fn read_position(client: &ClientConfig, settings: &CdcSettings) -> Result<Position, CdcError> {
    let topic = &settings.positions_topic;
    let consumer: BaseConsumer = client
        .clone()
        .set(
            "group.id",
            format!("kartflow-cdc-positions-{}", settings.source),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| CdcError::kafka("creating the positions reader", &e))?;
    block_in_place(|| {
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, READ_TIMEOUT)
            .map_err(|e| CdcError::kafka(format!("reading the end of {topic}"), &e))?;
        let mut found: Option<Position> = None;
        if high <= low {
            return Ok(Position::default());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| CdcError::kafka("assigning the positions topic", &e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| CdcError::kafka("assigning the positions topic", &e))?;
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            // read_committed stops at the last stable offset; transaction markers are skipped,
            // so progress is the consumer's position, not the last message offset.
            let done = consumer
                .position()
                .ok()
                .and_then(|p| p.find_partition(topic, 0).and_then(|e| e.offset().to_raw()))
                .is_some_and(|o| o >= high);
            if done {
                break;
            }
            if Instant::now() > deadline {
                return Err(CdcError::Position(format!(
                    "could not read {topic} to its end ({high}) within {}s",
                    READ_TIMEOUT.as_secs()
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.key() == Some(settings.source.as_bytes()) => {
                    found = match m.payload() {
                        Some(p) => Some(serde_json::from_slice(p).map_err(|e| {
                            CdcError::Position(format!(
                                "{topic} offset {}: {e} (delete the record or the topic to \
                                 start over)",
                                m.offset()
                            ))
                        })?),
                        None => None,
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(CdcError::kafka(format!("reading {topic}"), &e));
                }
                None => {}
            }
        }
        Ok(found.unwrap_or_default())
    })
}
