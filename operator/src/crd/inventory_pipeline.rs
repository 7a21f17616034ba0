//! `InventoryPipeline`: the exactly-once inventory workers, their configuration and
//! savepoint-driven upgrades.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kartflow_wire::topics;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, ConfigMapKeyRef, KafkaConnection, LocalObjectRef};

/// Desired state of an inventory pipeline.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kartflow.io",
    version = "v1alpha1",
    kind = "InventoryPipeline",
    namespaced,
    status = "InventoryPipelineStatus",
    shortname = "ipl",
    category = "kartflow",
    doc = "Exactly-once inventory processing of product updates and order lines",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".spec.parallelism"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Upgrade", type_ = "string", json_path = ".spec.upgradeMode"),
    printcolumn(
        name = "Last Savepoint",
        type_ = "string",
        json_path = ".status.savepoints.last.id"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InventoryPipelineSpec {
    /// The `kartflow-worker` image to run.
    #[schemars(length(min = 1))]
    pub image: String,
    pub kafka: KafkaConnection,
    /// Topic names; the defaults are the reference system's.
    #[serde(default)]
    pub topics: PipelineTopics,
    /// The initial products file (JSON array or one product per line), applied once per content
    /// version as idempotent upserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_products: Option<ConfigMapKeyRef>,
    /// Number of worker replicas; the input partitions are shared among them.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,
    /// Thresholds of the inventory rules.
    #[serde(default)]
    // Either value may be a default the user never wrote, so the message blames neither.
    // (A messageExpression with string(int) exceeds the apiserver's CEL cost budget.)
    #[x_kube(validation = Rule::new("self.criticalStock <= self.lowStock").message("alerts.lowStock must be at least alerts.criticalStock (10 and 5 unless set): raise lowStock or lower criticalStock"))]
    pub alerts: AlertThresholds,
    /// Where savepoints are written: `file:///path` on a volume, or `s3://bucket/prefix`.
    #[serde(default = "default_savepoint_url")]
    #[schemars(length(min = 1))]
    pub savepoint_url: String,
    /// A Secret in the pipeline's namespace whose keys become the workers' environment: the
    /// object store's credentials and settings for an `s3://` `savepointUrl`
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and for an S3-compatible
    /// server `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`). Never write credentials into the spec itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_credentials: Option<LocalObjectRef>,
    /// How a change of the worker spec is rolled out: `savepoint` (take a savepoint, record it in
    /// status, start the new version from it), `last-state` (restart on the committed state) or
    /// `stateless` (start empty).
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// Change this value to take a savepoint now without changing anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// Change this value to restart the workers (with the upgrade mode's semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    /// Stop the workers (after a savepoint in `savepoint` mode) and keep the state.
    #[serde(default)]
    pub suspend: bool,
    /// CPU and memory of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A small set of pod overrides.
    #[serde(default)]
    pub pod: PodOverrides,
}

fn default_parallelism() -> i32 {
    1
}

fn default_savepoint_url() -> String {
    "file:///var/lib/kartflow/savepoints".into()
}

/// The pipeline's topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PipelineTopics {
    #[schemars(length(min = 1, max = 249))]
    pub product_updates: String,
    #[schemars(length(min = 1, max = 249))]
    pub order_events: String,
    #[schemars(length(min = 1, max = 249))]
    pub products: String,
    #[schemars(length(min = 1, max = 249))]
    pub inventory_events: String,
    #[schemars(length(min = 1, max = 249))]
    pub inventory_alerts: String,
    #[schemars(length(min = 1, max = 249))]
    pub websocket_fanout: String,
    #[schemars(length(min = 1, max = 249))]
    pub dlq: String,
}

impl Default for PipelineTopics {
    fn default() -> Self {
        Self {
            product_updates: topics::PRODUCT_UPDATES.into(),
            order_events: topics::ORDER_EVENTS.into(),
            products: topics::PRODUCTS.into(),
            inventory_events: topics::INVENTORY_EVENTS.into(),
            inventory_alerts: topics::INVENTORY_ALERTS.into(),
            websocket_fanout: topics::WEBSOCKET_FANOUT.into(),
            dlq: topics::INVENTORY_DLQ.into(),
        }
    }
}

/// Alert thresholds. LOW_STOCK is raised when `0 < inventory <= lowStock`, CRITICAL at or below
/// `criticalStock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AlertThresholds {
    #[schemars(range(min = 0))]
    pub low_stock: i64,
    #[schemars(range(min = 0))]
    pub critical_stock: i64,
    /// A price drop of at least this many percent raises PRICE_DROP.
    #[schemars(range(min = 1, max = 100))]
    pub price_drop_percent: i32,
    /// STALE_INVENTORY after this long without an update, e.g. `1h`, `30m`.
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub stale_after: String,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            low_stock: 10,
            critical_stock: 5,
            price_drop_percent: 10,
            stale_after: "1h".into(),
        }
    }
}

/// How upgrades carry state over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    #[default]
    Savepoint,
    LastState,
    Stateless,
}

/// Pod settings a pipeline may override.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// Observed state of an inventory pipeline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryPipelineStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Hash of the worker spec that is deployed (what an upgrade compares against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_spec_hash: Option<String>,
    #[serde(default)]
    pub savepoints: SavepointStatus,
}

/// Savepoint bookkeeping, recorded before each step is acted on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    /// The savepoint being taken, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<SavepointInfo>,
    /// The newest completed savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<SavepointInfo>,
    /// Completed savepoints, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<SavepointInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    pub id: String,
    /// Where it was written (the `--from-savepoint` value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Why it was taken: `upgrade`, `trigger`, `suspend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339 time it was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
}
