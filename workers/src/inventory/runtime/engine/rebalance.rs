//! Partitions leaving and arriving: the rebalance callbacks commit the open transaction first,
//! restore arriving partitions from the changelog (or a savepoint) and make the assignment start
//! each one exactly where its state stops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::{Core, Ctx, EngineError, Slot};
use crate::inventory::runtime::changelog;
use kartflow_wire::config::InventorySettings;

const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

fn partitions_of(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = self.core();
        // Whatever moves, the open transaction commits first: the next owner of a revoked
        // partition must see its offsets and changelog, and restoring arrivals may take long.
        core.commit_or_rewind(consumer);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                for p in partitions_of(tpl) {
                    core.slots.remove(&p);
                    core.to_seek.remove(&p);
                    core.to_bootstrap.remove(&p);
                }
                info!(partitions = ?partitions_of(tpl), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let arriving: Vec<i32> = partitions_of(tpl)
                    .into_iter()
                    .filter(|p| !core.slots.contains_key(p))
                    .collect();
                if let Err(e) = core.load(consumer, &arriving) {
                    error!(error = %e, "restoring assigned partitions failed");
                    core.fatal = Some(e);
                }
                core.set_start_offsets(tpl);
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = self.core();
        if let Rebalance::Assign(tpl) = rebalance {
            core.assigned_once = true;
            check_copartitioned(tpl, &core.settings);
            info!(partitions = ?partitions_of(tpl), "partitions assigned");
        }
        if let Err(e) = core.seek_restored(consumer) {
            // The start offsets are already in the assignment and `on_record` skips applied
            // offsets, so a failed seek here only costs re-reading.
            warn!(error = %e, "seek after assignment failed");
        }
        core.publish_status();
    }
}

/// Keyed co-processing needs both inputs' partition `p` on the same worker; the range assignor
/// guarantees it for co-partitioned topics, so a violation is a misconfigured group.
fn check_copartitioned(tpl: &TopicPartitionList, settings: &InventorySettings) {
    let of = |topic: &str| -> BTreeSet<i32> {
        tpl.elements_for_topic(topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    };
    let (pu, oe) = (
        of(&settings.topics.product_updates),
        of(&settings.topics.order_events),
    );
    if pu != oe {
        error!(product_updates = ?pu, order_events = ?oe,
            "assignment is not co-partitioned: partitions of both inputs must go to the same worker; \
             use the range assignor");
    }
}

impl Core {
    /// Restores `partitions` from the changelog (or the savepoint) into slots.
    pub(super) fn load<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
    ) -> Result<(), EngineError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for t in self.input_topics() {
            for p in partitions {
                tpl.add_partition(&t, *p);
            }
        }
        // read_committed makes this wait for pending transactional offsets (KIP-447).
        let committed_tpl = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        let mut committed: BTreeMap<i32, BTreeMap<String, i64>> = BTreeMap::new();
        for e in committed_tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed
                    .entry(e.partition())
                    .or_default()
                    .insert(e.topic().to_owned(), o);
            }
        }
        let restored = changelog::restore(
            &self.client,
            &self.changelog_topic,
            partitions,
            &committed,
            RESTORE_TIMEOUT,
        )?;
        let mut records = 0;
        for (p, r) in restored {
            records += r.records;
            let mut slot = Slot {
                state: r.state,
                meta: r.meta,
                dirty_keys: BTreeSet::new(),
                meta_dirty: false,
                lag: BTreeMap::new(),
                orphans: 0,
            };
            if let Some(sp) = &self.savepoint
                && slot.meta.savepoint_id.as_deref() != Some(sp.id.as_str())
                && let Some(snap) = sp.partitions.get(&p)
            {
                // First start from this savepoint: its state replaces the changelog's (stale
                // keys get tombstones) and its offsets become the position.
                slot.dirty_keys = slot
                    .state
                    .keys
                    .keys()
                    .chain(snap.state.keys.keys())
                    .cloned()
                    .collect();
                slot.state = snap.state.clone();
                slot.meta = snap.meta.clone();
                slot.meta.savepoint_id = Some(sp.id.clone());
                slot.meta_dirty = true;
                info!(partition = p, savepoint = %sp.id, "partition started from savepoint");
            }
            slot.orphans = slot.state.orphan_count();
            self.to_seek.insert(p);
            self.to_bootstrap.insert(p);
            self.slots.insert(p, slot);
        }
        self.metrics
            .restores
            .with_label_values(&["changelog"])
            .observe(started.elapsed().as_secs_f64());
        info!(
            ?partitions,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partitions restored"
        );
        Ok(())
    }

    /// Makes the assignment itself start every partition with state exactly where its state
    /// stops (the beginning for an input it has consumed nothing of). A seek right after an
    /// incremental assign fails while librdkafka still fetches the committed offsets ("Erroneous
    /// state"), and the consumer would then start from the group's committed offsets, which
    /// differ from the state's after a savepoint restore (the whole input is re-read into a new
    /// group; an older savepoint in the same group would skip what it has not seen).
    fn set_start_offsets(&mut self, tpl: &TopicPartitionList) {
        // `elements` hands out writable views of the list librdkafka assigns after this callback.
        for mut e in tpl.elements() {
            let Some(slot) = self.slots.get(&e.partition()) else {
                continue;
            };
            let start = slot
                .meta
                .offsets
                .get(e.topic())
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(err) = e.set_offset(start) {
                warn!(topic = e.topic(), partition = e.partition(), error = %err,
                    "cannot set the start offset; seeking after the assignment instead");
                continue;
            }
            self.to_seek.remove(&e.partition());
        }
    }

    /// Points the consumer at the offsets the restored state corresponds to.
    pub(super) fn seek_restored<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), KafkaError> {
        // Called before every record: nothing to allocate when nothing waits for a seek.
        if self.to_seek.is_empty() {
            return Ok(());
        }
        let pending: Vec<i32> = std::mem::take(&mut self.to_seek).into_iter().collect();
        let mut tpl = TopicPartitionList::new();
        for p in &pending {
            let Some(slot) = self.slots.get(p) else {
                continue;
            };
            for (topic, next) in &slot.meta.offsets {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let result = consumer.seek_partitions(tpl, Duration::from_secs(10))?;
        for e in result.elements() {
            e.error()?;
        }
        Ok(())
    }
}
