//! Children of a `ReadModel`: broadcast read replicas (Deployment), their Service, an HPA on CPU
//! when autoscaling is on, and a PodDisruptionBudget.
//!
//! The worker's file is [`kartflow_wire::config::ReadModelSettings`] (`httpListen` 0.0.0.0:<port>).
//! The pods also get `KARTFLOW_HTTP_LISTEN=$(POD_IP):<port>`, like every worker's admin address:
//! on the project's test node pods share the host network, where two replicas binding 0.0.0.0
//! would collide. The worker then also listens on 127.0.0.1:<port> (best effort), which is what
//! `kubectl port-forward` connects to inside a pod's own network namespace.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kartflow_wire::config::ReadModelSettings;
use kartflow_wire::config::read_model::{self as contract, WebSocketSettings};

use super::labels::{recommended_labels, selector_labels};
use super::pod::{self, WorkerPod};
use super::{
    BuildError, Component, Owner, cluster_ip_service, config_map, deployment, kafka_settings,
    render_config, require_non_empty, spec_hash,
};
use crate::crd::common::KafkaConnection;
use crate::crd::read_model::{Autoscaling, ReadModelTopics};
use crate::crd::{InventoryPipeline, ReadModel};
use kartflow_wire::config::KafkaSettings;

/// Name of the REST/WebSocket port.
pub const HTTP_PORT_NAME: &str = "http";

/// What a `ReadModel` reconciles into.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadModelChildren {
    /// `<name>-read-config`, key `config.json`.
    pub config_map: ConfigMap,
    /// `<name>-read`.
    pub deployment: Deployment,
    /// `<name>-read`: ports `http` and `admin`.
    pub service: Service,
    /// `<name>-read`, only when autoscaling is enabled (delete an existing one otherwise).
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// `<name>-read`.
    pub pdb: PodDisruptionBudget,
    /// The topics the replicas read, after resolving `pipelineRef` (for status).
    pub resolved_topics: ReadModelTopics,
}

/// Builds the read model's children. `pipeline` is the InventoryPipeline named by
/// `spec.source.pipelineRef`, as the controller found it in the namespace (or `None`).
pub fn read_model(
    rm: &ReadModel,
    pipeline: Option<&InventoryPipeline>,
) -> Result<ReadModelChildren, BuildError> {
    let owner = Owner::of(rm)?;
    let spec = &rm.spec;
    require_non_empty("spec.image", &spec.image)?;
    let name = owner.child_name("-read")?;
    let config_map_name = format!("{name}-config");
    let Source {
        kafka,
        worker_kafka,
        topics,
        alerts_topic,
    } = resolve_source(rm, &owner, pipeline)?;

    let http_port = u16::try_from(spec.port).ok().filter(|p| *p > 0);
    let Some(http_port) = http_port.filter(|_| spec.port != pod::ADMIN_PORT) else {
        return Err(BuildError::invalid(
            "spec.port",
            format!(
                "must be between 1 and 65535 and not {} (the admin port of every worker), got {}",
                pod::ADMIN_PORT,
                spec.port
            ),
        ));
    };
    let ws = &spec.websocket;
    if !ws.path.starts_with('/') {
        return Err(BuildError::invalid(
            "spec.websocket.path",
            "must start with '/'",
        ));
    }
    if spec.max_unavailable < 1 {
        return Err(BuildError::invalid(
            "spec.maxUnavailable",
            "must be at least 1",
        ));
    }
    let autoscaling = spec.autoscaling.as_ref().filter(|a| a.enabled);
    if let Some(a) = autoscaling {
        validate_autoscaling(a, rm)?;
    } else if spec.replicas < 0 {
        return Err(BuildError::invalid("spec.replicas", "must be at least 0"));
    }

    // Bounds the CRD does not expose (view history, WebSocket queues) keep the worker's defaults.
    let mut config = ReadModelSettings::new(owner.worker_identity(), worker_kafka);
    config.topics = contract::ReadModelTopics {
        products: topics.products.clone(),
        inventory_events: topics.inventory_events.clone(),
        inventory_alerts: alerts_topic,
    };
    config.http_listen = std::net::SocketAddr::new(pod::ADMIN_LISTEN.ip(), http_port);
    config.websocket = WebSocketSettings {
        enabled: ws.enabled,
        path: ws.path.clone(),
        max_connections: max_connections(ws.max_connections)?,
        ..WebSocketSettings::default()
    };
    config.admin_listen = pod::ADMIN_LISTEN;
    let config_json = render_config(&config)?;
    let hash = spec_hash(&config_json, &spec.image, None);

    let labels = recommended_labels(&owner.name, Component::ReadModel, &spec.image);
    let selector = selector_labels(&owner.name, Component::ReadModel);
    let mut mounts = vec![pod::config_mount(&config_map_name)];
    mounts.extend(pod::kafka_secret_mount(&kafka));
    let template = WorkerPod {
        labels: labels.clone(),
        spec_hash: hash,
        image: spec.image.clone(),
        args: pod::worker_args("read-model"),
        env: vec![pod::env_value(
            "KARTFLOW_HTTP_LISTEN",
            format!("$(POD_IP):{}", spec.port),
        )],
        ports: vec![pod::container_port(HTTP_PORT_NAME, spec.port)],
        mounts,
        resources: spec.resources.clone(),
        termination_grace_period_seconds: 30,
        ..WorkerPod::default()
    }
    .into_template();

    // With autoscaling the HPA owns spec.replicas: leaving the field out of the applied object
    // keeps server-side apply from resetting what the HPA chose on every reconcile.
    let replicas = match autoscaling {
        Some(_) => None,
        None => Some(spec.replicas),
    };
    // A new replica is Ready only once caught up; never drop below the serving count meanwhile.
    let strategy = DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    };

    let hpa = autoscaling.map(|a| HorizontalPodAutoscaler {
        metadata: owner.meta(name.clone(), labels.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            // CPU only, never consumer lag: every replica reads every partition, so lag does
            // not fall as replicas are added.
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(a.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(hpa_behavior(a)),
        }),
        ..HorizontalPodAutoscaler::default()
    });

    let pdb = PodDisruptionBudget {
        metadata: owner.meta(name.clone(), labels.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(spec.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            // A replica not Ready yet (catching up) serves nothing; evicting it must not block
            // a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };

    Ok(ReadModelChildren {
        config_map: config_map(&owner, config_map_name, labels.clone(), config_json),
        deployment: deployment(
            &owner,
            name.clone(),
            labels.clone(),
            selector.clone(),
            replicas,
            strategy,
            template,
        ),
        service: cluster_ip_service(
            &owner,
            name,
            labels,
            selector,
            vec![
                pod::service_port(HTTP_PORT_NAME, spec.port),
                pod::service_port(pod::ADMIN_PORT_NAME, pod::ADMIN_PORT),
            ],
        ),
        hpa,
        pdb,
        resolved_topics: topics,
    })
}

/// Where the replicas read from, after resolving `pipelineRef`.
struct Source {
    /// For the Secret mount.
    kafka: KafkaConnection,
    worker_kafka: KafkaSettings,
    topics: ReadModelTopics,
    /// The pipeline's alerts topic, or the default one for an explicit source.
    alerts_topic: String,
}

fn resolve_source(
    rm: &ReadModel,
    owner: &Owner,
    pipeline: Option<&InventoryPipeline>,
) -> Result<Source, BuildError> {
    let source = &rm.spec.source;
    match (&source.pipeline_ref, &source.kafka) {
        (Some(r), None) => {
            // Only the pipeline of that name in the read model's own namespace counts.
            let p = pipeline
                .filter(|p| {
                    p.metadata.name.as_deref() == Some(r.name.as_str())
                        && p.metadata.namespace.as_deref() == Some(owner.namespace.as_str())
                })
                .ok_or_else(|| BuildError::PipelineNotFound {
                    name: r.name.clone(),
                })?;
            let topics = ReadModelTopics {
                products: p.spec.topics.products.clone(),
                inventory_events: p.spec.topics.inventory_events.clone(),
            };
            // The pipeline's own faults are reported on it; here they block the reference.
            let in_pipeline = |e: BuildError| match e {
                BuildError::InvalidSpec { field, problem } => BuildError::invalid(
                    "spec.source.pipelineRef",
                    format!("InventoryPipeline {}: {field}: {problem}", r.name),
                ),
                other => other,
            };
            validate_topics("spec.topics", &topics).map_err(in_pipeline)?;
            let worker_kafka = kafka_settings("spec.kafka", &p.spec.kafka).map_err(in_pipeline)?;
            Ok(Source {
                kafka: p.spec.kafka.clone(),
                worker_kafka,
                topics,
                alerts_topic: p.spec.topics.inventory_alerts.clone(),
            })
        }
        (None, Some(k)) => {
            let topics = source.topics.clone().unwrap_or_default();
            validate_topics("spec.source.topics", &topics)?;
            Ok(Source {
                kafka: k.clone(),
                worker_kafka: kafka_settings("spec.source.kafka", k)?,
                topics,
                alerts_topic: kartflow_wire::topics::INVENTORY_ALERTS.into(),
            })
        }
        _ => Err(BuildError::invalid(
            "spec.source",
            "set exactly one of spec.source.pipelineRef and spec.source.kafka",
        )),
    }
}

fn validate_topics(field: &str, t: &ReadModelTopics) -> Result<(), BuildError> {
    require_non_empty(&format!("{field}.products"), &t.products)?;
    require_non_empty(&format!("{field}.inventoryEvents"), &t.inventory_events)
}

fn max_connections(value: i32) -> Result<u32, BuildError> {
    u32::try_from(value)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| BuildError::invalid("spec.websocket.maxConnections", "must be at least 1"))
}

/// `spec.autoscaling.behavior` as given, with `scaleDownStabilizationSeconds` as the scale-down
/// window unless the behavior sets one.
fn hpa_behavior(a: &Autoscaling) -> HorizontalPodAutoscalerBehavior {
    let mut behavior = a.behavior.clone().unwrap_or_default();
    let down = behavior
        .scale_down
        .get_or_insert_with(HPAScalingRules::default);
    down.stabilization_window_seconds
        .get_or_insert(a.scale_down_stabilization_seconds);
    behavior
}

fn validate_autoscaling(a: &Autoscaling, rm: &ReadModel) -> Result<(), BuildError> {
    if a.min_replicas < 1 {
        return Err(BuildError::invalid(
            "spec.autoscaling.minReplicas",
            "must be at least 1",
        ));
    }
    if a.max_replicas < a.min_replicas {
        return Err(BuildError::invalid(
            "spec.autoscaling.maxReplicas",
            format!(
                "must be at least spec.autoscaling.minReplicas ({})",
                a.min_replicas
            ),
        ));
    }
    if !(1..=100).contains(&a.target_cpu_utilization) {
        return Err(BuildError::invalid(
            "spec.autoscaling.targetCpuUtilization",
            "must be between 1 and 100",
        ));
    }
    if !(0..=3600).contains(&a.scale_down_stabilization_seconds) {
        return Err(BuildError::invalid(
            "spec.autoscaling.scaleDownStabilizationSeconds",
            "must be between 0 and 3600",
        ));
    }
    let has_cpu_request = rm
        .spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.contains_key("cpu"));
    if !has_cpu_request {
        return Err(BuildError::invalid(
            "spec.resources.requests.cpu",
            "is required with autoscaling: the HPA measures utilisation against the request",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::pod::tests::{assert_worker_pod_basics, env_of, mount_at, worker};
    use crate::children::testutil::assert_child_meta;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn rm(patch: Value) -> ReadModel {
        let mut spec = json!({
            "image": "kartflow/worker:0.1.0",
            "source": {"pipelineRef": {"name": "shop"}},
            "port": 8000,
            "resources": {"requests": {"cpu": "250m"}}
        });
        for (k, v) in patch.as_object().expect("object") {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "ReadModel",
            "metadata": {"name": "shop-view", "namespace": "prod", "uid": "uid-view"},
            "spec": spec
        }))
        .expect("fixture parses")
    }

    fn shop() -> InventoryPipeline {
        serde_json::from_value(json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-shop"},
            "spec": {
                "image": "kartflow/worker:0.1.0",
                "kafka": {"bootstrapServers": "kafka:9092", "secretRef": {"name": "kafka-client"}},
                "topics": {"products": "shop-products", "inventoryEvents": "shop-inventory-events"}
            }
        }))
        .expect("fixture parses")
    }

    fn build(patch: Value) -> ReadModelChildren {
        read_model(&rm(patch), Some(&shop())).expect("builds")
    }

    fn config_json(c: &ReadModelChildren) -> Value {
        serde_json::from_str(&c.config_map.data.as_ref().expect("data")["config.json"])
            .expect("JSON")
    }

    const AUTOSCALING: &str = r#"{"minReplicas": 2, "maxReplicas": 6, "targetCpuUtilization": 60,
        "scaleDownStabilizationSeconds": 120}"#;

    fn autoscaling() -> Value {
        serde_json::from_str(AUTOSCALING).expect("json")
    }

    #[test]
    fn pipeline_ref_resolves_kafka_and_topics_from_the_pipeline() {
        let c = build(json!({}));
        assert_eq!(
            c.resolved_topics,
            ReadModelTopics {
                products: "shop-products".into(),
                inventory_events: "shop-inventory-events".into(),
            }
        );
        assert_eq!(
            config_json(&c),
            json!({
                "readModel": "prod.shop-view",
                "kafka": {"bootstrapServers": "kafka:9092",
                    "propertiesFile": "/etc/kartflow/kafka/client.properties"},
                "topics": {"products": "shop-products", "inventoryEvents": "shop-inventory-events",
                    "inventoryAlerts": "inventory-alerts"},
                "httpListen": "0.0.0.0:8000",
                "websocket": {"enabled": true, "path": "/ws", "maxConnections": 10000,
                    "queueCapacity": 10000, "pingInterval": 30000, "sendTimeout": 10000},
                "view": {"recentEventsPerProduct": 10, "recentAlertsPerProduct": 5,
                    "recentAlerts": 1000, "historyWindow": 3600000},
                "shutdownDelay": 5000,
                "partitionCheckInterval": 30000,
                "adminListen": "0.0.0.0:8080"
            })
        );
        let t = &c.deployment.spec.as_ref().expect("spec").template;
        let kafka = mount_at(worker(t), pod::KAFKA_DIR).expect("pipeline's Kafka secret mounted");
        assert_eq!(kafka.read_only, Some(true));
    }

    #[test]
    fn explicit_kafka_uses_its_topics_or_the_defaults() {
        let c = read_model(
            &rm(json!({"source": {"kafka": {"bootstrapServers": "k:1"}}})),
            None,
        )
        .expect("builds");
        assert_eq!(c.resolved_topics, ReadModelTopics::default());
        let v = config_json(&c);
        assert_eq!(v["kafka"], json!({"bootstrapServers": "k:1"}));
        let c = read_model(
            &rm(json!({"source": {"kafka": {"bootstrapServers": "k:1"},
                "topics": {"products": "p", "inventoryEvents": "e"}}})),
            Some(&shop()),
        )
        .expect("builds");
        assert_eq!(c.resolved_topics.products, "p");
    }

    #[test]
    fn missing_or_other_pipeline_is_not_found() {
        let mut elsewhere = shop();
        elsewhere.metadata.namespace = Some("other".into());
        let mut renamed = shop();
        renamed.metadata.name = Some("other".into());
        for p in [None, Some(&elsewhere), Some(&renamed)] {
            match read_model(&rm(json!({})), p) {
                Err(BuildError::PipelineNotFound { name }) => assert_eq!(name, "shop"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn children_are_owned_namespaced_and_labelled() {
        let c = build(json!({"autoscaling": autoscaling()}));
        let hpa = c.hpa.as_ref().expect("hpa");
        for meta in [
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
            &hpa.metadata,
            &c.pdb.metadata,
        ] {
            assert_child_meta(
                meta,
                "prod",
                "ReadModel",
                "shop-view",
                "uid-view",
                "read-model",
            );
        }
        assert_eq!(
            c.deployment.metadata.name.as_deref(),
            Some("shop-view-read")
        );
        assert_eq!(
            c.config_map.metadata.name.as_deref(),
            Some("shop-view-read-config")
        );
    }

    #[test]
    fn deployment_rolls_with_surge_only_and_serves_http_and_admin() {
        let c = build(json!({"replicas": 3}));
        let spec = c.deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let strategy = spec.strategy.as_ref().expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let ru = strategy.rolling_update.as_ref().expect("rolling update");
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_worker_pod_basics(&spec.template, "read-model");
        let w = worker(&spec.template);
        let http = w
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .expect("http port");
        assert_eq!(http.container_port, 8000);
        // The pod IP (pods share the host network on the test node); the worker adds loopback
        // for `kubectl port-forward`.
        assert_eq!(
            env_of(w, "KARTFLOW_HTTP_LISTEN").and_then(|e| e.value.as_deref()),
            Some("$(POD_IP):8000")
        );
        let ports = c
            .service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let named: Vec<(Option<&str>, i32)> =
            ports.iter().map(|p| (p.name.as_deref(), p.port)).collect();
        assert_eq!(named, [(Some("http"), 8000), (Some("admin"), 8080)]);
        assert!(c.hpa.is_none(), "no autoscaling, no HPA");
    }

    #[test]
    fn autoscaling_hands_replicas_to_a_cpu_hpa() {
        let c = build(json!({"replicas": 3, "autoscaling": autoscaling()}));
        assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), None);
        let hpa = c.hpa.expect("hpa").spec.expect("hpa spec");
        assert_eq!(hpa.scale_target_ref.kind, "Deployment");
        assert_eq!(hpa.scale_target_ref.name, "shop-view-read");
        assert_eq!(hpa.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 6));
        let metrics = hpa.metrics.expect("metrics");
        assert_eq!(metrics.len(), 1, "CPU only");
        let res = metrics[0].resource.as_ref().expect("resource metric");
        assert_eq!(metrics[0].type_, "Resource");
        assert_eq!(res.name, "cpu");
        assert_eq!(res.target.type_, "Utilization");
        assert_eq!(res.target.average_utilization, Some(60));
        let down = hpa.behavior.and_then(|b| b.scale_down).expect("scale down");
        assert_eq!(down.stabilization_window_seconds, Some(120));
        assert_eq!(down.policies, None, "the HPA's default policies");

        let mut off = autoscaling();
        off["enabled"] = json!(false);
        let c = build(json!({"replicas": 3, "autoscaling": off}));
        assert!(c.hpa.is_none());
        assert_eq!(c.deployment.spec.and_then(|s| s.replicas), Some(3));
    }

    #[test]
    fn behavior_passes_through_and_the_window_field_fills_only_a_gap() {
        let behavior_of = |auto: Value| {
            build(json!({"autoscaling": auto}))
                .hpa
                .and_then(|h| h.spec)
                .and_then(|s| s.behavior)
                .expect("behavior")
        };
        let mut auto = autoscaling();
        auto["behavior"] = json!({
            "scaleUp": {"stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 2, "periodSeconds": 15}]},
            "scaleDown": {"stabilizationWindowSeconds": 10}
        });
        let b = behavior_of(auto.clone());
        let up = b.scale_up.expect("scale up passed through");
        assert_eq!(up.stabilization_window_seconds, Some(0));
        let policies = up.policies.expect("policies");
        assert_eq!((policies[0].type_.as_str(), policies[0].value), ("Pods", 2));
        assert_eq!(
            b.scale_down.and_then(|d| d.stabilization_window_seconds),
            Some(10),
            "the behavior's own window wins over scaleDownStabilizationSeconds (120)"
        );
        auto["behavior"] = json!({"scaleDown": {"selectPolicy": "Min"}});
        let down = behavior_of(auto).scale_down.expect("scale down");
        assert_eq!(down.stabilization_window_seconds, Some(120));
        assert_eq!(down.select_policy.as_deref(), Some("Min"));
        let mut defaults = autoscaling();
        defaults
            .as_object_mut()
            .expect("object")
            .remove("scaleDownStabilizationSeconds");
        let down = behavior_of(defaults).scale_down.expect("scale down");
        assert_eq!(down.stabilization_window_seconds, Some(300));
    }

    #[test]
    fn pdb_limits_voluntary_disruption() {
        let c = build(json!({"maxUnavailable": 2}));
        let spec = c.pdb.spec.expect("pdb spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(2)));
        assert_eq!(spec.min_available, None);
        let sel = spec
            .selector
            .and_then(|s| s.match_labels)
            .expect("selector");
        assert_eq!(sel, selector_labels("shop-view", Component::ReadModel));
        assert_eq!(c.pdb.metadata.name.as_deref(), Some("shop-view-read"));
    }

    #[test]
    fn invalid_specs_name_their_field() {
        let mut bad_min = autoscaling();
        bad_min["maxReplicas"] = json!(1);
        for (patch, field) in [
            (json!({"port": 8080}), "spec.port"),
            (json!({"replicas": -1}), "spec.replicas"),
            (json!({"maxUnavailable": 0}), "spec.maxUnavailable"),
            (json!({"websocket": {"path": "ws"}}), "spec.websocket.path"),
            (
                json!({"autoscaling": bad_min}),
                "spec.autoscaling.maxReplicas",
            ),
            (
                json!({"autoscaling": autoscaling(), "resources": {"requests": {"memory": "1Gi"}}}),
                "spec.resources.requests.cpu",
            ),
            (
                json!({"source": {"pipelineRef": {"name": "shop"}, "kafka": {"bootstrapServers": "k"}}}),
                "spec.source",
            ),
            (json!({"source": {}}), "spec.source"),
            (
                json!({"source": {"kafka": {"bootstrapServers": "k"}, "topics": {"products": ""}}}),
                "spec.source.topics.products",
            ),
        ] {
            match read_model(&rm(patch.clone()), Some(&shop())) {
                Err(BuildError::InvalidSpec { field: f, .. }) => assert_eq!(f, field, "{patch}"),
                other => panic!("{patch}: expected {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_referenced_pipeline_blocks_the_reference() {
        let mut p = shop();
        p.spec.kafka.bootstrap_servers = String::new();
        match read_model(&rm(json!({})), Some(&p)) {
            Err(BuildError::InvalidSpec { field, problem }) => {
                assert_eq!(field, "spec.source.pipelineRef");
                assert!(problem.contains("spec.kafka.bootstrapServers"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_example_builds() {
        let view: ReadModel = crate::children::testutil::example("read-model.yaml", "prod");
        assert_eq!(
            view.spec.port, 8000,
            "the default serving port is not the admin port"
        );
        let c = read_model(&view, Some(&shop())).expect("builds");
        assert!(c.hpa.is_some());
    }

    proptest! {
        #[test]
        fn replicas_are_absent_iff_autoscaling_and_never_negative(
            replicas in -5i32..50,
            auto in proptest::option::of((any::<bool>(), 1i32..10, 0i32..10)),
        ) {
            let mut patch = json!({"replicas": replicas});
            if let Some((enabled, min, extra)) = auto {
                patch["autoscaling"] = json!({"enabled": enabled, "minReplicas": min,
                    "maxReplicas": min + extra});
            }
            let on = auto.is_some_and(|(enabled, _, _)| enabled);
            match read_model(&rm(patch), Some(&shop())) {
                Ok(c) => {
                    let r = c.deployment.spec.and_then(|s| s.replicas);
                    prop_assert_eq!(r.is_none(), on);
                    prop_assert_eq!(c.hpa.is_some(), on);
                    prop_assert!(r.is_none_or(|r| r >= 0));
                }
                Err(BuildError::InvalidSpec { field, .. }) => {
                    prop_assert_eq!(field, "spec.replicas");
                    prop_assert!(!on && replicas < 0);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
