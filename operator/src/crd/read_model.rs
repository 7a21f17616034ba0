//! `ReadModel`: broadcast read replicas that each hold the whole product view and serve it over
//! REST and WebSocket, scaled by CPU.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kartflow_wire::topics;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CommonStatus, KafkaConnection, LocalObjectRef};

/// Desired state of a read model.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kartflow.io",
    version = "v1alpha1",
    kind = "ReadModel",
    namespaced,
    status = "ReadModelStatus",
    shortname = "rm",
    category = "kartflow",
    doc = "Broadcast read replicas serving the whole product view over REST and WebSocket",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "CPU%", type_ = "integer", json_path = ".status.cpuUtilization"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !self.autoscaling.enabled || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)").message("autoscaling on CPU needs resources.requests.cpu: the HPA measures utilisation against the request"))]
#[serde(rename_all = "camelCase")]
pub struct ReadModelSpec {
    /// The `kartflow-worker` image to run.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Where the view comes from.
    pub source: ReadModelSource,
    /// Replicas when autoscaling is off.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// HTTP port of REST and WebSocket (8080 is the workers' admin port).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    #[x_kube(validation = Rule::new("self != 8080").message("port 8080 is the workers' admin and metrics port: choose another"))]
    pub port: i32,
    #[serde(default)]
    pub websocket: WebSocketSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// CPU and memory of each replica; `requests.cpu` is required with autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PodDisruptionBudget: how many replicas may be down at once during voluntary disruptions.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

fn default_replicas() -> i32 {
    2
}

fn default_port() -> i32 {
    8000
}

fn default_max_unavailable() -> i32 {
    1
}

/// Either a pipeline to follow or explicit Kafka topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pipelineRef) != has(self.kafka)").message("set exactly one of source.pipelineRef and source.kafka"))]
pub struct ReadModelSource {
    /// An `InventoryPipeline` in the same namespace: its Kafka connection and output topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<LocalObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConnection>,
    /// Topics when `kafka` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<ReadModelTopics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ReadModelTopics {
    #[schemars(length(min = 1, max = 249))]
    pub products: String,
    #[schemars(length(min = 1, max = 249))]
    pub inventory_events: String,
}

impl Default for ReadModelTopics {
    fn default() -> Self {
        Self {
            products: topics::PRODUCTS.into(),
            inventory_events: topics::INVENTORY_EVENTS.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct WebSocketSettings {
    pub enabled: bool,
    #[schemars(regex(pattern = r"^/[A-Za-z0-9/_-]*$"))]
    pub path: String,
    /// Connections per replica at most.
    #[schemars(range(min = 1))]
    pub max_connections: i32,
}

/// The worker contract's defaults.
impl Default for WebSocketSettings {
    fn default() -> Self {
        let d = kartflow_wire::config::read_model::WebSocketSettings::default();
        Self {
            enabled: d.enabled,
            path: d.path,
            max_connections: i32::try_from(d.max_connections).unwrap_or(i32::MAX),
        }
    }
}

/// CPU-based autoscaling. Never on consumer lag: every replica reads every partition, so lag
/// does not fall as replicas are added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must be at most autoscaling.maxReplicas"))]
pub struct Autoscaling {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent of the request.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Scale-down stabilisation window in seconds (`behavior.scaleDown.stabilizationWindowSeconds`
    /// when `behavior` does not set it).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// Passed through to the HorizontalPodAutoscaler's `spec.behavior` (scale-up and scale-down
    /// policies and stabilisation windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn yes() -> bool {
    true
}

fn default_cpu_target() -> i32 {
    70
}

fn default_stabilization() -> i32 {
    300
}

/// Observed state of a read model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadModelStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Replicas the HPA currently has and wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Average CPU of the replicas in percent of their request, as the HPA last measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_utilization: Option<i32>,
    /// The same as a quantity per replica (e.g. `130m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_average: Option<String>,
    /// Topics the replicas read, after resolving `pipelineRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_topics: Option<ReadModelTopics>,
}
