//! `CdcSource`: a PostgreSQL logical replication slot streamed into Kafka, and the slot guard
//! that keeps a forgotten slot from filling the database's disk.

// The modes are the worker contract's own enums: one definition for the CRD and the file.
pub use kartflow_wire::config::cdc::{CaptureMode, SnapshotMode, SslMode};
use kartflow_wire::topics;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, KafkaConnection, LocalObjectRef};

/// Desired state of a CDC source.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kartflow.io",
    version = "v1alpha1",
    kind = "CdcSource",
    namespaced,
    status = "CdcSourceStatus",
    shortname = "cdc",
    category = "kartflow",
    doc = "Change data capture from a PostgreSQL replication slot into Kafka, with a slot guard",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Slot", type_ = "string", json_path = ".spec.slot.name"),
    printcolumn(name = "Active", type_ = "boolean", json_path = ".status.slot.active"),
    printcolumn(
        name = "Retained",
        type_ = "string",
        json_path = ".status.slot.retainedWal"
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.topic"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CdcSourceSpec {
    /// The `kartflow-worker` image to run.
    #[schemars(length(min = 1))]
    pub image: String,
    pub postgres: PostgresConnection,
    pub publication: Publication,
    pub slot: Slot,
    /// What to capture and how rows become order-line events.
    #[serde(default)]
    pub capture: Capture,
    pub kafka: KafkaConnection,
    /// Target topic of the order-line events.
    #[serde(default = "default_topic")]
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
    /// Rows that cannot be mapped (a null productId, a negative quantity) go here with the
    /// reason, the LSN and the table; capture goes on.
    #[serde(default = "default_dlq_topic")]
    #[schemars(length(min = 1, max = 249))]
    pub dlq_topic: String,
    /// `initial` reads the existing rows before streaming; `never` streams changes only.
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    /// Change this value to take a new initial snapshot, e.g. after the slot was dropped and
    /// re-created (`spec.slot.recreateNonce`) and the rows committed meanwhile are wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_nonce: Option<i64>,
    /// Confirm progress to PostgreSQL at least this often when idle, so WAL is released even
    /// when the captured tables do not change, e.g. `30s`. Between 1s and 5m.
    #[serde(default = "default_heartbeat")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('5m')").message("heartbeatInterval must be between 1s and 5m (well inside wal_sender_timeout)"))]
    pub heartbeat_interval: String,
    #[serde(default)]
    // Each quantity rule first checks that both values parse, so a value its own pattern already
    // refuses is reported once, by that pattern, instead of twice.
    #[x_kube(
        validation = Rule::new("!isQuantity(self.warnRetainedWal) || !isQuantity(self.dropRetainedWal) || quantity(self.warnRetainedWal).isLessThan(quantity(self.dropRetainedWal))").message(kube::core::cel::Message::Expression("'guard.warnRetainedWal (' + self.warnRetainedWal + ') must be less than guard.dropRetainedWal (' + self.dropRetainedWal + ')'".into())),
        validation = Rule::new("!isQuantity(self.dropRetainedWal) || quantity(self.dropRetainedWal).isGreaterThan(quantity('0'))").message("guard.dropRetainedWal is zero: it must be more than 0, or every slot would be past it"),
        validation = Rule::new("!self.checkInterval.matches('^[0-9]+(ms|s|m|h)$') || duration(self.checkInterval) >= duration('1s')").message(kube::core::cel::Message::Expression("'guard.checkInterval must be at least 1s, got ' + self.checkInterval + ': each check opens a query to the database and writes status'".into())),
    )]
    pub guard: SlotGuard,
}

fn default_topic() -> String {
    topics::ORDER_EVENTS.into()
}

fn default_heartbeat() -> String {
    "30s".into()
}

fn default_dlq_topic() -> String {
    topics::CDC_DLQ.into()
}

/// Where the database is. Credentials come only from a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.sslMode in ['verify-ca', 'verify-full']) || has(self.caCert)").message("postgres.caCert is required with sslMode verify-ca and verify-full: name the Secret or ConfigMap key holding the CA certificate"))]
pub struct PostgresConnection {
    #[schemars(length(min = 1))]
    pub host: String,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// A Secret with keys `username` and `password`. The role needs `LOGIN REPLICATION`.
    pub credentials_secret_ref: LocalObjectRef,
    /// libpq's `sslmode`: `disable`, `prefer` (TLS when offered, unverified), `require`
    /// (encrypted; the chain is checked when `caCert` is set), `verify-ca` (chain checked) or
    /// `verify-full` (chain and host name checked). Managed databases need one of the last three.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// The CA certificate (PEM) that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<CaCertRef>,
}

/// A key of a Secret or ConfigMap in the same namespace holding PEM CA certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaCertRef {
    #[serde(default)]
    pub kind: CaSourceKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum CaSourceKind {
    #[default]
    Secret,
    ConfigMap,
}

fn default_port() -> i32 {
    5432
}

/// The publication the slot streams.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.create || (has(self.tables) && size(self.tables) > 0)").message("publication.tables must list at least one table (schema.table) when publication.create is true: kartflow creates the publication for those tables"))]
pub struct Publication {
    /// An identifier: a letter or `_`, then letters, digits and `_`, at most 63 characters.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub name: String,
    /// Tables to publish (`schema.table` or `table`); used when kartflow creates the
    /// publication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(
        pattern = r"^([A-Za-z_][A-Za-z0-9_$]{0,62}\.)?[A-Za-z_][A-Za-z0-9_$]{0,62}$"
    )))]
    pub tables: Vec<String>,
    /// Create the publication if it does not exist (and drop it with the slot on delete).
    #[serde(default = "yes")]
    pub create: bool,
}

/// The logical replication slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// Slot name: lowercase letters, digits and underscores, at most 63 characters (what
    /// PostgreSQL accepts). Immutable: a renamed slot would orphan the old one.
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,63}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(kube::core::cel::Message::Expression("'slot.name is immutable (it was ' + oldSelf + ', now ' + self + '): create a new CdcSource to use another slot'".into())))]
    pub name: String,
    /// Create the slot if it does not exist.
    #[serde(default = "yes")]
    pub create: bool,
    /// Drop the slot when the CdcSource is deleted. Default true: an abandoned slot retains WAL
    /// forever and is the main cause of full database disks.
    #[serde(default = "yes")]
    pub drop_on_delete: bool,
    /// Change this value to recreate a slot the guard dropped. The guard never recreates a
    /// dropped slot on its own: the changes committed while it was gone were not captured, and
    /// someone should decide whether to re-snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate_nonce: Option<i64>,
}

fn yes() -> bool {
    true
}

/// How captured rows become events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Capture {
    /// `table`: map rows of `table` to order lines via `columns`; `outbox`: route outbox rows by
    /// aggregate type, keyed by aggregate id.
    pub mode: CaptureMode,
    /// The order-lines table (`schema.table`) in `table` mode.
    pub table: String,
    /// Column names for the order-line fields in `table` mode.
    pub columns: OrderLineColumns,
    /// The outbox table in `outbox` mode.
    pub outbox_table: String,
    /// Column names and routing in `outbox` mode.
    pub outbox: Outbox,
}

/// The worker contract's defaults, so a value left out of the CR and one left out of a
/// hand-written worker file mean the same.
impl Default for Capture {
    fn default() -> Self {
        let d = kartflow_wire::config::cdc::CaptureSettings::default();
        Self {
            mode: d.mode,
            table: d.table,
            columns: OrderLineColumns::default(),
            outbox_table: d.outbox_table,
            outbox: Outbox::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OrderLineColumns {
    pub order_id: String,
    pub product_id: String,
    pub quantity: String,
    /// The row's unique id (primary key); `eventId` is `<table>:<id>`, identical in the
    /// snapshot and the stream.
    pub id: String,
    /// A timestamp column for the order line's `timestamp`; unset: the commit time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl Default for OrderLineColumns {
    fn default() -> Self {
        let d = kartflow_wire::config::cdc::OrderLineColumns::default();
        Self {
            order_id: d.order_id,
            product_id: d.product_id,
            quantity: d.quantity,
            id: d.id,
            timestamp: d.timestamp,
        }
    }
}

/// The transactional outbox, with Debezium's default column names: each INSERT becomes a record
/// on `<topicPrefix><aggregatetype>` keyed by the aggregate id, payload passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Outbox {
    pub id_column: String,
    pub aggregate_type_column: String,
    pub aggregate_id_column: String,
    pub payload_column: String,
    pub type_column: String,
    #[schemars(length(max = 200))]
    pub topic_prefix: String,
    /// Delete rows from the outbox table once Kafka committed them.
    pub delete_after_capture: bool,
}

/// The worker contract's defaults, as for the other capture settings.
impl Default for Outbox {
    fn default() -> Self {
        let d = kartflow_wire::config::cdc::OutboxSettings::default();
        Self {
            id_column: d.id_column,
            aggregate_type_column: d.aggregate_type_column,
            aggregate_id_column: d.aggregate_id_column,
            payload_column: d.payload_column,
            type_column: d.type_column,
            topic_prefix: d.topic_prefix,
            delete_after_capture: d.delete_after_capture,
        }
    }
}

/// The replication-slot guard: every interval it measures retained WAL and the reader's
/// confirmed position, warns past `warnRetainedWal`, and with action `drop` drops the slot when
/// PostgreSQL reports its WAL `lost`, when its reader is gone (past `dropRetainedWal` or
/// `maxInactive`), or when a connected reader has confirmed nothing for `maxUnconfirmed`. A
/// connected reader that keeps confirming is never ended unless `dropOnRetainedWal` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SlotGuard {
    /// How often to check, e.g. `30s`.
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub check_interval: String,
    /// Retained WAL above which a Warning is raised, e.g. `1Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub warn_retained_wal: String,
    /// Retained WAL above which a slot without a reader is dropped (action `drop`), e.g. `2Gi`;
    /// with a connected reader, only with `dropOnRetainedWal`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub drop_retained_wal: String,
    /// Also act when the slot has had no reader for this long, e.g. `24h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(ms|s|m|h|d)$"))]
    pub max_inactive: Option<String>,
    /// Drop the slot of a connected reader that has confirmed nothing for this long while WAL
    /// waits for it (a hung or deadlocked reader), e.g. `15m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(ms|s|m|h|d)$"))]
    pub max_unconfirmed: Option<String>,
    /// Also drop past `dropRetainedWal` when the reader is connected and confirming (the WAL is
    /// then held back by a long transaction, or the reader is slow): choose this when the
    /// database's disk matters more than the stream, which must then be re-created and
    /// re-snapshotted.
    pub drop_on_retained_wal: bool,
    pub action: GuardAction,
    /// Also guard slots kartflow did not create (off: unowned slots are never touched).
    pub guard_unowned: bool,
}

impl Default for SlotGuard {
    fn default() -> Self {
        Self {
            check_interval: "30s".into(),
            warn_retained_wal: "1Gi".into(),
            drop_retained_wal: "2Gi".into(),
            max_inactive: None,
            max_unconfirmed: Some("15m".into()),
            drop_on_retained_wal: false,
            action: GuardAction::Drop,
            guard_unowned: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GuardAction {
    /// Warn only.
    Alert,
    /// Terminate the reader if any and drop the slot.
    #[default]
    Drop,
}

/// Observed state of a CDC source.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdcSourceStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drop: Option<SlotDrop>,
    /// kartflow created the slot, so the guard may drop it and deletion drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_owned: Option<bool>,
    /// kartflow created the publication, so deletion drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication_created: Option<bool>,
}

/// What the guard last read from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotFacts {
    pub exists: bool,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_status: Option<String>,
    /// Retained WAL in bytes (`pg_current_wal_lsn() - restart_lsn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_bytes: Option<i64>,
    /// The same, human-readable (`1.5Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_wal_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the reader has yet to confirm, in bytes (`pg_current_wal_lsn() - confirmed_flush_lsn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_lag_bytes: Option<i64>,
    /// RFC 3339 time since which the confirmed position has not moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_unchanged_since: Option<String>,
    /// Why the slot retains WAL, when it is above a threshold or must go: `ReaderGone`,
    /// `ReaderStuck`, `ReaderBehind`, `HeldBackByTransaction` or `WalLost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The backend whose open transaction holds the slot back (`HeldBackByTransaction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back_by_pid: Option<i32>,
    /// How long that transaction has been open (`2h5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back_for: Option<String>,
    /// RFC 3339 time of the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
}

/// The guard's last drop. It is written before the `DROP` (outcome `Pending`) and again after
/// it, so a drop is never forgotten, whatever fails in between.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotDrop {
    pub at: String,
    pub retained_bytes: i64,
    pub reason: String,
    /// `ReaderGone`, `ReaderStuck`, `WalLost`, …: see `slot.cause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// `Pending` (decided and recorded, not yet done), `Dropped`, `Gone` (the slot had
    /// already disappeared) or `Abandoned` (never carried out; the slot is intact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// `spec.slot.recreateNonce` at the drop: the slot is recreated, and the CDC worker
    /// started again, only once it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate_nonce: Option<i64>,
    /// The `metadata.generation` at the drop (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl SlotDrop {
    /// The user has not acknowledged this drop: `spec.slot.recreateNonce` is what it was at
    /// the drop. No other spec change counts. An abandoned drop left the slot intact: there is
    /// nothing to acknowledge.
    pub fn awaiting_ack(&self, spec: &CdcSourceSpec) -> bool {
        self.outcome.as_deref() != Some("Abandoned")
            && self.recreate_nonce == spec.slot.recreate_nonce
    }
}
