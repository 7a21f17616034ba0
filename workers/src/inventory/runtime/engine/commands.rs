//! Requests from the admin API, run by the loop between records: taking a savepoint of the
//! owned partitions' state and offsets.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use tracing::info;

use super::{Core, now_ms};
use crate::inventory::PartitionState;
use crate::inventory::runtime::changelog::PartitionMeta;
use crate::inventory::runtime::savepoint::{self, Written};

/// Requests from the admin API to the loop.
pub enum Command {
    Savepoint {
        id: String,
        stop: bool,
        reply: tokio::sync::oneshot::Sender<Result<Written, String>>,
    },
}

impl Core {
    /// Commits what is open, then writes the owned partitions' state and offsets as savepoint
    /// `id`. The error is the reply text for the admin API.
    pub(super) fn savepoint<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        runtime: &tokio::runtime::Handle,
        id: &str,
    ) -> Result<Written, String> {
        self.commit_or_rewind(consumer);
        if self.needs_rewind {
            return Err("the transaction before the savepoint failed; retry".to_owned());
        }
        take_savepoint(self, runtime, id)
    }

    fn snapshot(&self) -> BTreeMap<i32, (PartitionMeta, PartitionState)> {
        self.slots
            .iter()
            .map(|(p, s)| (*p, (s.meta.clone(), s.state.clone())))
            .collect()
    }
}

fn take_savepoint(
    core: &Core,
    runtime: &tokio::runtime::Handle,
    id: &str,
) -> Result<Written, String> {
    let store =
        savepoint::Store::open(&core.settings.savepoints.storage_url).map_err(|e| e.to_string())?;
    let snapshot = core.snapshot();
    let written = runtime
        .block_on(store.write(
            id,
            &core.settings.pipeline,
            &core.instance,
            core.partition_count,
            now_ms(),
            &snapshot,
        ))
        .map_err(|e| e.to_string())?;
    info!(savepoint = %written.id, location = %written.location, partitions = ?written.partitions, "savepoint written");
    Ok(written)
}
