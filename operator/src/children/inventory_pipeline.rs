//! Children of an `InventoryPipeline`: the worker config, the worker Deployment, the admin
//! Service and the control API's NetworkPolicy (the token Secret is made by the controller, it
//! is not rendered from the spec).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kartflow_wire::config::InventoryRules;
use kartflow_wire::config::inventory::{InventorySettings, Processing, SavepointSettings, Topics};

use super::control::{self, ControlPeer};
use super::labels::{pod_labels, recommended_labels, selector_labels};
use super::pod::{self, WorkerPod};
use super::{
    BuildError, Component, Owner, cluster_ip_service, config_map, deployment, duration_ms,
    kafka_settings, recreate, render_config, require_non_empty, spec_hash,
};
use crate::crd::InventoryPipeline;
use crate::crd::inventory_pipeline::{AlertThresholds, PipelineTopics};

/// Where `spec.bootstrapProducts` is mounted; the file is `<dir>/<key>`.
pub const BOOTSTRAP_DIR: &str = "/etc/kartflow/bootstrap";

/// What an `InventoryPipeline` reconciles into.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineChildren {
    /// `<name>-worker-config`, key `config.json`.
    pub config_map: ConfigMap,
    /// `<name>-worker`.
    pub deployment: Deployment,
    /// `<name>-worker`, the admin/metrics port.
    pub service: Service,
    /// `<name>-worker-control-token`: the Secret the workers read their control token from.
    pub control_token_secret: String,
    /// The pod template's `kartflow.io/spec-hash`: config, image and restart nonce.
    pub spec_hash: String,
}

/// Builds the pipeline's children, refusing (with the JSON path) any value the worker would
/// refuse at start, so the error shows on the CR instead of in a crash loop.
pub fn inventory_pipeline(ip: &InventoryPipeline) -> Result<PipelineChildren, BuildError> {
    let owner = Owner::of(ip)?;
    let spec = &ip.spec;
    require_non_empty("spec.image", &spec.image)?;
    if spec.parallelism < 1 {
        return Err(BuildError::invalid(
            "spec.parallelism",
            format!("must be at least 1, got {}", spec.parallelism),
        ));
    }
    let deployment_name = owner.child_name("-worker")?;
    // ConfigMap names are DNS subdomains (253): the Service name is the binding limit.
    let config_map_name = format!("{deployment_name}-config");

    let bootstrap = match &spec.bootstrap_products {
        Some(r) => {
            require_non_empty("spec.bootstrapProducts.name", &r.name)?;
            if !is_config_map_key(&r.key) {
                return Err(BuildError::invalid(
                    "spec.bootstrapProducts.key",
                    "must be a ConfigMap key: letters, digits, '-', '_' and '.', not '.' or '..'",
                ));
            }
            Some(r)
        }
        None => None,
    };
    let savepoint_dir = file_savepoint_dir(&spec.savepoint_url)?;

    let config = InventorySettings {
        pipeline: owner.worker_identity(),
        kafka: kafka_settings("spec.kafka", &spec.kafka)?,
        topics: topics(&spec.topics)?,
        bootstrap_products_file: bootstrap.map(|r| format!("{BOOTSTRAP_DIR}/{}", r.key).into()),
        rules: rules(&spec.alerts)?,
        savepoints: SavepointSettings {
            storage_url: spec.savepoint_url.clone(),
        },
        processing: Processing::default(),
        admin_listen: pod::ADMIN_LISTEN,
        control_listen: control::CONTROL_LISTEN,
        control_token_file: Some(control::TOKEN_FILE.into()),
    };
    let config_json = render_config(&config)?;
    let hash = spec_hash(&config_json, &spec.image, spec.restart_nonce);

    let labels = recommended_labels(&owner.name, Component::Inventory, &spec.image);
    let selector = selector_labels(&owner.name, Component::Inventory);

    let control_token_secret = format!("{deployment_name}-control-token");
    let mut mounts = vec![
        pod::config_mount(&config_map_name),
        control::token_mount(&control_token_secret),
    ];
    if let Some(r) = bootstrap {
        mounts.push(pod::config_map_key_mount(
            "bootstrap",
            &r.name,
            &r.key,
            BOOTSTRAP_DIR,
        ));
    }
    mounts.extend(pod::kafka_secret_mount(&spec.kafka));
    if let Some(dir) = &savepoint_dir {
        // Limitation: an emptyDir lives and dies with its pod, so a `file://` savepoint does not
        // survive the pod being replaced (an upgrade). Durable savepoints need an object store
        // URL (`s3://…`); a PersistentVolumeClaim option is not modelled yet.
        mounts.push(pod::empty_dir_mount("savepoints", dir, None));
    }
    let overrides = &spec.pod;
    let template = WorkerPod {
        labels: pod_labels(&labels, &overrides.labels),
        annotations: overrides.annotations.clone(),
        spec_hash: hash.clone(),
        image: spec.image.clone(),
        args: pod::worker_args("inventory"),
        env: vec![pod::env_value(
            "KARTFLOW_CONTROL_LISTEN",
            format!("$(POD_IP):{}", control::CONTROL_PORT),
        )],
        ports: vec![pod::container_port(
            control::CONTROL_PORT_NAME,
            control::CONTROL_PORT,
        )],
        mounts,
        env_from_secrets: spec
            .savepoint_credentials
            .iter()
            .map(|r| r.name.clone())
            .collect(),
        resources: spec.resources.clone(),
        node_selector: overrides.node_selector.clone(),
        tolerations: overrides.tolerations.clone(),
        service_account_name: overrides
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty()),
        // Time to abort or finish the open transaction and leave the group cleanly.
        termination_grace_period_seconds: 60,
    }
    .into_template();

    let replicas = if spec.suspend { 0 } else { spec.parallelism };
    Ok(PipelineChildren {
        config_map: config_map(&owner, config_map_name, labels.clone(), config_json),
        // Recreate, never RollingUpdate: a surge pod would join the group while the old
        // generation still holds partitions, so two versions (possibly of different code or
        // state) would process one partition's transactions around the rebalance. Old pods stop
        // first; the new generation starts from the committed state or the savepoint.
        deployment: deployment(
            &owner,
            deployment_name.clone(),
            labels.clone(),
            selector.clone(),
            Some(replicas),
            recreate(),
            template,
        ),
        service: cluster_ip_service(
            &owner,
            deployment_name,
            labels,
            selector,
            vec![pod::service_port(pod::ADMIN_PORT_NAME, pod::ADMIN_PORT)],
        ),
        control_token_secret,
        spec_hash: hash,
    })
}

/// The control token Secret named in [`PipelineChildren::control_token_secret`], holding `token`.
pub fn control_token(ip: &InventoryPipeline, token: String) -> Result<Secret, BuildError> {
    let owner = Owner::of(ip)?;
    let name = format!("{}-control-token", owner.child_name("-worker")?);
    let labels = recommended_labels(&owner.name, Component::Inventory, &ip.spec.image);
    Ok(control::token_secret(&owner, name, labels, token))
}

/// `<name>-worker`: the control port open to `peer` (the operator) only.
pub fn network_policy(
    ip: &InventoryPipeline,
    peer: &ControlPeer,
) -> Result<NetworkPolicy, BuildError> {
    let owner = Owner::of(ip)?;
    let name = owner.child_name("-worker")?;
    let labels = recommended_labels(&owner.name, Component::Inventory, &ip.spec.image);
    let selector = selector_labels(&owner.name, Component::Inventory);
    Ok(control::network_policy(
        &owner, name, labels, selector, peer,
    ))
}

fn topics(t: &PipelineTopics) -> Result<Topics, BuildError> {
    for (field, name) in [
        ("spec.topics.productUpdates", &t.product_updates),
        ("spec.topics.orderEvents", &t.order_events),
        ("spec.topics.products", &t.products),
        ("spec.topics.inventoryEvents", &t.inventory_events),
        ("spec.topics.inventoryAlerts", &t.inventory_alerts),
        ("spec.topics.websocketFanout", &t.websocket_fanout),
        ("spec.topics.dlq", &t.dlq),
    ] {
        require_non_empty(field, name)?;
    }
    if t.product_updates == t.order_events {
        return Err(BuildError::invalid(
            "spec.topics.orderEvents",
            "must differ from spec.topics.productUpdates",
        ));
    }
    Ok(Topics {
        product_updates: t.product_updates.clone(),
        order_events: t.order_events.clone(),
        products: t.products.clone(),
        inventory_events: t.inventory_events.clone(),
        inventory_alerts: t.inventory_alerts.clone(),
        websocket_fanout: t.websocket_fanout.clone(),
        dlq: t.dlq.clone(),
        // The worker derives `<pipeline>-inventory-changelog`.
        changelog: String::new(),
    })
}

fn rules(a: &AlertThresholds) -> Result<InventoryRules, BuildError> {
    if a.low_stock < 0 {
        return Err(BuildError::invalid("spec.alerts.lowStock", "must be >= 0"));
    }
    if a.critical_stock < 0 || a.critical_stock > a.low_stock {
        return Err(BuildError::invalid(
            "spec.alerts.criticalStock",
            format!(
                "must be between 0 and spec.alerts.lowStock ({})",
                a.low_stock
            ),
        ));
    }
    if !(1..=100).contains(&a.price_drop_percent) {
        return Err(BuildError::invalid(
            "spec.alerts.priceDropPercent",
            "must be between 1 and 100",
        ));
    }
    Ok(InventoryRules {
        low_stock_threshold: a.low_stock,
        critical_stock_threshold: a.critical_stock,
        price_drop_percent: f64::from(a.price_drop_percent),
        stale_after: duration_ms("spec.alerts.staleAfter", &a.stale_after)?,
        // Not in the CRD: the worker's defaults.
        ..InventoryRules::default()
    })
}

/// The directory of a `file:///path` savepoint URL (to mount writable), `None` for other
/// schemes; refuses what is not a URL or a path we would not mount.
fn file_savepoint_dir(url: &str) -> Result<Option<String>, BuildError> {
    let field = "spec.savepointUrl";
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        BuildError::invalid(
            field,
            format!("{url:?} is not a URL: use file:///path or s3://bucket/prefix"),
        )
    })?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() {
        return Err(BuildError::invalid(field, format!("{url:?} is not a URL")));
    }
    if scheme != "file" {
        return Ok(None);
    }
    let path = rest.trim_end_matches('/');
    let plain = path.starts_with('/')
        && path
            .split('/')
            .skip(1)
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if !plain || path == pod::TMP_DIR || path.starts_with("/etc/kartflow") {
        return Err(BuildError::invalid(
            field,
            format!(
                "{url:?}: a file URL needs an absolute local path of letters, digits, '-', '_' \
                 and '.' (e.g. file:///var/lib/kartflow/savepoints), outside /tmp and /etc/kartflow"
            ),
        ));
    }
    Ok(Some(path.to_owned()))
}

fn is_config_map_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::pod::tests::{assert_worker_pod_basics, mount_at, volume, worker};
    use crate::children::testutil::assert_child_meta;
    use crate::children::{ANNOTATION_SPEC_HASH, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME};
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A pipeline as the apiserver would return it: name, namespace and uid set, spec from
    /// `spec` over the required minimum.
    fn pipeline(spec: Value) -> InventoryPipeline {
        let mut full = json!({
            "image": "kartflow/worker:0.1.0",
            "kafka": {"bootstrapServers": "kafka:9092"}
        });
        for (k, v) in spec.as_object().expect("spec object") {
            full[k] = v.clone();
        }
        let mut ip: InventoryPipeline = serde_json::from_value(json!({
            "apiVersion": "kartflow.io/v1alpha1",
            "kind": "InventoryPipeline",
            "metadata": {"name": "shop", "namespace": "prod", "uid": "uid-shop"},
            "spec": full,
        }))
        .expect("fixture parses");
        ip.metadata.generation = Some(1);
        ip
    }

    fn build(spec: Value) -> PipelineChildren {
        inventory_pipeline(&pipeline(spec)).expect("builds")
    }

    fn config_json(c: &PipelineChildren) -> Value {
        let text = &c.config_map.data.as_ref().expect("data")["config.json"];
        serde_json::from_str(text).expect("config is JSON")
    }

    fn template(c: &PipelineChildren) -> &PodTemplateSpec {
        &c.deployment.spec.as_ref().expect("spec").template
    }

    #[test]
    fn rendered_config_is_the_expected_worker_file() {
        let c = build(json!({
            "kafka": {"bootstrapServers": "kafka:9092", "secretRef": {"name": "kafka-client"}},
            "bootstrapProducts": {"name": "initial-products", "key": "initial-products.json"},
            "alerts": {"lowStock": 9, "criticalStock": 3, "priceDropPercent": 15, "staleAfter": "30m"},
            "savepointUrl": "s3://bucket/savepoints",
        }));
        assert_eq!(
            config_json(&c),
            json!({
                "pipeline": "prod.shop",
                "kafka": {
                    "bootstrapServers": "kafka:9092",
                    "propertiesFile": "/etc/kartflow/kafka/client.properties"
                },
                "topics": {
                    "productUpdates": "product-updates",
                    "orderEvents": "order-events",
                    "products": "products",
                    "inventoryEvents": "inventory-events",
                    "inventoryAlerts": "inventory-alerts",
                    "websocketFanout": "websocket-fanout",
                    "dlq": "inventory-dlq"
                },
                "bootstrapProductsFile": "/etc/kartflow/bootstrap/initial-products.json",
                "rules": {
                    "lowStockThreshold": 9,
                    "criticalStockThreshold": 3,
                    "priceDropPercent": 15.0,
                    // Not in the CRD: the worker's defaults, written out so the file shows
                    // every value in force.
                    "priceChangeEpsilon": 0.01,
                    "staleAfter": 1_800_000,
                    "orphanMaxPerProduct": 1000,
                    "orphanMaxAge": 600_000,
                    "dedupRetention": 86_400_000
                },
                "savepoints": {"storageUrl": "s3://bucket/savepoints"},
                "processing": {
                    "maxBatchRecords": 2000,
                    "maxBatchMs": 100,
                    "tickIntervalMs": 1000,
                    "createTopics": true
                },
                "adminListen": "0.0.0.0:8080",
                "controlListen": "0.0.0.0:8081",
                "controlTokenFile": "/etc/kartflow/control-token/token"
            })
        );
        let minimal = config_json(&build(json!({})));
        assert!(minimal["kafka"].get("propertiesFile").is_none());
        assert!(minimal.get("bootstrapProductsFile").is_none());
        assert_eq!(minimal["rules"]["staleAfter"], 3_600_000);
        assert_eq!(
            minimal["savepoints"]["storageUrl"],
            "file:///var/lib/kartflow/savepoints"
        );
    }

    /// The rendered file is what the worker parses: unknown fields refused, every value valid.
    #[test]
    fn the_worker_accepts_the_rendered_file() {
        let c = build(json!({
            "kafka": {"bootstrapServers": "k:9092", "secretRef": {"name": "s"}},
            "bootstrapProducts": {"name": "p", "key": "p.json"},
        }));
        let text = &c.config_map.data.as_ref().expect("data")["config.json"];
        let parsed: InventorySettings =
            kartflow_wire::config::parse_json("config.json".as_ref(), text).expect("parses");
        kartflow_wire::config::WorkerConfig::validate(&parsed).expect("valid");
        assert_eq!(parsed.pipeline, "prod.shop");
    }

    /// The control API: its own port (pod IP, like the admin port), the token Secret mounted
    /// read-only, and a NetworkPolicy opening that port to the operator's pods only.
    #[test]
    fn the_control_port_is_the_operators_alone() {
        let ip = pipeline(json!({}));
        let c = build(json!({}));
        assert_eq!(c.control_token_secret, "shop-worker-control-token");
        let t = template(&c);
        let w = pod::tests::worker(t);
        assert_eq!(
            pod::tests::env_of(w, "KARTFLOW_CONTROL_LISTEN").and_then(|e| e.value.as_deref()),
            Some("$(POD_IP):8081")
        );
        let ports: Vec<_> = w
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert!(ports.contains(&(Some("control"), 8081)), "{ports:?}");
        let mount = pod::tests::mount_at(w, control::TOKEN_DIR).expect("token mounted");
        assert_eq!(mount.read_only, Some(true));
        let secret = pod::tests::volume(t, &mount.name)
            .and_then(|v| v.secret.as_ref())
            .expect("a Secret volume");
        assert_eq!(
            secret.secret_name.as_deref(),
            Some("shop-worker-control-token")
        );
        assert_eq!(secret.default_mode, Some(0o440));

        let token = control_token(&ip, "t".into()).expect("builds");
        assert_eq!(
            token.metadata.name.as_deref(),
            Some("shop-worker-control-token")
        );
        assert!(token.metadata.owner_references.is_some());

        let peer = ControlPeer {
            namespace: "kartflow-system".into(),
            pod_labels: [("app.kubernetes.io/name".to_owned(), "kartflow".to_owned())].into(),
        };
        let np = serde_json::to_value(network_policy(&ip, &peer).expect("builds")).expect("json");
        assert_eq!(np["metadata"]["name"], "shop-worker");
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"],
            serde_json::to_value(c.deployment.spec.as_ref().map(|s| &s.selector.match_labels))
                .expect("json")
        );
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            np["spec"]["ingress"],
            json!([
                {"ports": [{"port": "admin", "protocol": "TCP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kartflow-system"}},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kartflow"}}}],
                 "ports": [{"port": "control", "protocol": "TCP"}]}
            ])
        );
    }

    #[test]
    fn children_are_owned_namespaced_and_labelled() {
        let c = build(json!({}));
        for meta in [
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
        ] {
            assert_child_meta(
                meta,
                "prod",
                "InventoryPipeline",
                "shop",
                "uid-shop",
                "inventory",
            );
            assert_eq!(
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(crate::children::LABEL_VERSION)),
                Some(&"0.1.0".to_owned())
            );
        }
        assert_eq!(
            c.config_map.metadata.name.as_deref(),
            Some("shop-worker-config")
        );
        assert_eq!(c.deployment.metadata.name.as_deref(), Some("shop-worker"));
        assert_eq!(c.service.metadata.name.as_deref(), Some("shop-worker"));
    }

    #[test]
    fn deployment_runs_hardened_workers_with_recreate() {
        let c = build(json!({"parallelism": 3}));
        let spec = c.deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate")
        );
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert_eq!(selector.len(), 3);
        assert_eq!(selector[LABEL_NAME], "kartflow-worker");
        assert_eq!(selector[LABEL_INSTANCE], "shop");
        assert_eq!(selector[LABEL_COMPONENT], "inventory");
        let t = template(&c);
        assert_worker_pod_basics(t, "inventory");
        assert_eq!(
            t.metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .map(|a| &a[ANNOTATION_SPEC_HASH]),
            Some(&c.spec_hash)
        );
        let w = worker(t);
        assert_eq!(w.image.as_deref(), Some("kartflow/worker:0.1.0"));
        assert_eq!(
            t.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds),
            Some(60)
        );
        // Default savepoints: file:// → a writable emptyDir at that path.
        let sp = mount_at(w, "/var/lib/kartflow/savepoints").expect("savepoint dir");
        assert!(
            volume(t, &sp.name)
                .and_then(|v| v.empty_dir.as_ref())
                .is_some()
        );
        assert!(mount_at(w, pod::KAFKA_DIR).is_none());
        assert!(mount_at(w, BOOTSTRAP_DIR).is_none());
        let svc = c.service.spec.as_ref().expect("service spec");
        assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(svc.selector.as_ref(), Some(&selector));
        let ports = svc.ports.as_deref().unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("admin"));
        assert_eq!(ports[0].port, 8080);
    }

    #[test]
    fn optional_volumes_follow_the_spec() {
        let c = build(json!({
            "kafka": {"bootstrapServers": "k:9092", "secretRef": {"name": "kafka-client"}},
            "bootstrapProducts": {"name": "initial-products", "key": "products.json"},
            "savepointUrl": "s3://bucket/sp",
        }));
        let t = template(&c);
        let w = worker(t);
        let kafka = mount_at(w, pod::KAFKA_DIR).expect("kafka secret mounted");
        assert_eq!(kafka.read_only, Some(true));
        let b = mount_at(w, BOOTSTRAP_DIR).expect("bootstrap mounted");
        let cm = volume(t, &b.name)
            .and_then(|v| v.config_map.as_ref())
            .expect("configMap volume");
        assert_eq!(cm.name, "initial-products");
        assert_eq!(
            cm.items.as_deref().map(|i| i[0].key.as_str()),
            Some("products.json")
        );
        assert!(
            mount_at(w, "/var/lib/kartflow/savepoints").is_none(),
            "s3: no volume"
        );
        assert_eq!(w.env_from, None, "no savepoint credentials named");

        // The object store's credentials come from the named Secret, as env, never from the spec.
        let c = build(json!({
            "savepointUrl": "s3://bucket/sp",
            "savepointCredentials": {"name": "savepoint-store"},
        }));
        let from = worker(template(&c)).env_from.clone().unwrap_or_default();
        assert_eq!(from.len(), 1, "{from:?}");
        let secret = from[0].secret_ref.as_ref().expect("a Secret");
        assert_eq!(
            (secret.name.as_str(), secret.optional),
            ("savepoint-store", Some(false))
        );
    }

    #[test]
    fn pod_overrides_apply_without_touching_the_selector() {
        let c = build(json!({
            "pod": {
                "annotations": {"team": "inv"},
                "labels": {"tier": "stream", "app.kubernetes.io/instance": "other"},
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "serviceAccountName": "workers"
            },
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}
        }));
        let t = template(&c);
        let meta = t.metadata.as_ref().expect("metadata");
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels["tier"], "stream");
        assert_eq!(labels[LABEL_INSTANCE], "shop");
        assert_eq!(meta.annotations.clone().unwrap_or_default()["team"], "inv");
        let spec = t.spec.as_ref().expect("pod spec");
        assert_eq!(spec.service_account_name.as_deref(), Some("workers"));
        assert_eq!(
            spec.node_selector.clone().unwrap_or_default()["disk"],
            "ssd"
        );
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
        let requests = worker(t)
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        assert_eq!(requests["cpu"].0, "500m");
    }

    #[test]
    fn suspend_scales_to_zero() {
        let c = build(json!({"parallelism": 4, "suspend": true}));
        assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), Some(0));
    }

    #[test]
    fn spec_hash_follows_config_image_and_restart_nonce_only() {
        let base = build(json!({}));
        let same = build(json!({"suspend": true, "pod": {"labels": {"x": "y"}}}));
        assert_eq!(base.spec_hash, same.spec_hash, "not part of the hash");
        for changed in [
            json!({"image": "kartflow/worker:0.2.0"}),
            json!({"restartNonce": 1}),
            json!({"alerts": {"staleAfter": "2h"}}),
            json!({"topics": {"dlq": "other-dlq"}}),
        ] {
            assert_ne!(
                build(changed.clone()).spec_hash,
                base.spec_hash,
                "{changed}"
            );
        }
    }

    #[test]
    fn invalid_specs_name_their_field() {
        for (spec, field) in [
            (json!({"image": ""}), "spec.image"),
            (
                json!({"kafka": {"bootstrapServers": " "}}),
                "spec.kafka.bootstrapServers",
            ),
            (json!({"parallelism": 0}), "spec.parallelism"),
            (json!({"topics": {"dlq": ""}}), "spec.topics.dlq"),
            (
                json!({"topics": {"orderEvents": "product-updates"}}),
                "spec.topics.orderEvents",
            ),
            (
                json!({"alerts": {"staleAfter": "1 hour"}}),
                "spec.alerts.staleAfter",
            ),
            (
                json!({"alerts": {"staleAfter": "0s"}}),
                "spec.alerts.staleAfter",
            ),
            (
                json!({"alerts": {"lowStock": 3, "criticalStock": 5}}),
                "spec.alerts.criticalStock",
            ),
            (json!({"alerts": {"lowStock": -1}}), "spec.alerts.lowStock"),
            (
                json!({"alerts": {"priceDropPercent": 0}}),
                "spec.alerts.priceDropPercent",
            ),
            (json!({"savepointUrl": "/var/lib/sp"}), "spec.savepointUrl"),
            (
                json!({"savepointUrl": "file://host/sp"}),
                "spec.savepointUrl",
            ),
            (json!({"savepointUrl": "file:///tmp"}), "spec.savepointUrl"),
            (
                json!({"savepointUrl": "file:///a/../b"}),
                "spec.savepointUrl",
            ),
            (
                json!({"bootstrapProducts": {"name": "p", "key": "../x"}}),
                "spec.bootstrapProducts.key",
            ),
        ] {
            match inventory_pipeline(&pipeline(spec.clone())) {
                Err(e) if e.field().is_some() => assert_eq!(e.field(), Some(field), "{spec}"),
                other => panic!("{spec}: expected {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_uid_is_refused() {
        let mut ip = pipeline(json!({}));
        ip.metadata.uid = None;
        assert!(matches!(
            inventory_pipeline(&ip),
            Err(BuildError::MissingMetadata {
                what: "metadata.uid"
            })
        ));
    }

    #[test]
    fn the_example_builds() {
        let ip: InventoryPipeline =
            crate::children::testutil::example("inventory-pipeline.yaml", "default");
        let c = inventory_pipeline(&ip).expect("builds");
        assert_eq!(c.deployment.spec.and_then(|s| s.replicas), Some(2));
    }

    proptest! {
        #[test]
        fn replicas_are_never_negative(parallelism in any::<i32>(), suspend in any::<bool>()) {
            let r = inventory_pipeline(&pipeline(json!({"parallelism": parallelism, "suspend": suspend})));
            match r {
                Ok(c) => {
                    let replicas = c.deployment.spec.and_then(|s| s.replicas).unwrap_or(-1);
                    prop_assert!(replicas >= 0);
                    prop_assert_eq!(replicas, if suspend { 0 } else { parallelism });
                }
                Err(BuildError::InvalidSpec { field, .. }) => {
                    prop_assert_eq!(field, "spec.parallelism");
                    prop_assert!(parallelism < 1);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn template_labels_always_include_the_selector(
            labels in proptest::collection::btree_map(
                prop_oneof![Just(LABEL_INSTANCE.to_owned()), Just(LABEL_NAME.to_owned()),
                    Just(LABEL_COMPONENT.to_owned()), "[a-z]{1,8}"],
                "[a-z]{1,8}", 0..5),
        ) {
            let c = build(json!({"pod": {"labels": labels}}));
            let spec = c.deployment.spec.expect("spec");
            let template_labels = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
            for (k, v) in spec.selector.match_labels.unwrap_or_default() {
                prop_assert_eq!(template_labels.get(&k), Some(&v));
            }
        }

        #[test]
        fn spec_hash_changes_iff_config_image_or_nonce_change(
            image in prop_oneof![Just("w:1"), Just("w:2")],
            nonce in proptest::option::of(0i64..3),
            stale in prop_oneof![Just("1h"), Just("60m"), Just("2h")],
            image2 in prop_oneof![Just("w:1"), Just("w:2")],
            nonce2 in proptest::option::of(0i64..3),
            stale2 in prop_oneof![Just("1h"), Just("60m"), Just("2h")],
        ) {
            let mk = |i: &str, n: Option<i64>, s: &str| build(json!({
                "image": i, "restartNonce": n, "alerts": {"staleAfter": s}
            }));
            let a = mk(image, nonce, stale);
            let b = mk(image2, nonce2, stale2);
            // "1h" and "60m" render the same config (3600000 ms): same hash.
            let same_ms = |s: &str| if s == "2h" { 2 } else { 1 };
            let same = image == image2 && nonce == nonce2 && same_ms(stale) == same_ms(stale2);
            prop_assert_eq!(a.spec_hash == b.spec_hash, same);
        }
    }
}
