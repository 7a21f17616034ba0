//! Pure builders of every object the operator creates for a custom resource. No I/O: each takes
//! the CR (and what the controller already read, e.g. a referenced pipeline) and returns the
//! desired children, ready for server-side apply with [`FIELD_MANAGER`].
//!
//! Every child lives in the CR's namespace, carries the recommended labels and a controller
//! owner reference (so deleting the CR garbage-collects it and the controller's `.owns()` watch
//! maps it back).

pub mod cdc_source;
pub mod control;
pub mod inventory_pipeline;
pub mod labels;
pub mod pod;
pub mod read_model;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kartflow_wire::config::{ConfigError, KafkaSettings, Millis, WorkerConfig};
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::crd::common::KafkaConnection;

pub use cdc_source::{CdcChildren, cdc_source};
pub use inventory_pipeline::{PipelineChildren, inventory_pipeline};
pub use read_model::{ReadModelChildren, read_model};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "kartflow-operator";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";

/// Value of [`LABEL_NAME`]: every child runs the one worker binary.
pub const APP_NAME: &str = "kartflow-worker";
/// Value of [`LABEL_PART_OF`].
pub const PART_OF: &str = "kartflow";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "kartflow-operator";
/// Selects every object the operator manages: its watches of children use only these.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=kartflow-operator";

/// Pod-template annotation whose change rolls the pods: see [`spec_hash`].
pub const ANNOTATION_SPEC_HASH: &str = "kartflow.io/spec-hash";

/// Which worker role a child belongs to ([`LABEL_COMPONENT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Inventory,
    Cdc,
    ReadModel,
}

impl Component {
    pub const fn as_str(self) -> &'static str {
        match self {
            Component::Inventory => "inventory",
            Component::Cdc => "cdc",
            Component::ReadModel => "read-model",
        }
    }
}

/// Why the desired children could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The CR lacks metadata the apiserver always sets (`metadata.namespace`, `metadata.uid`, …);
    /// only a hand-made object can get here.
    #[error("the resource has no {what}")]
    MissingMetadata { what: &'static str },
    /// A spec value the children cannot be built from; `field` is its JSON path
    /// (`spec.alerts.staleAfter`).
    #[error("{field}: {problem}")]
    InvalidSpec { field: String, problem: String },
    /// A spec value that is not the duration or quantity its field takes.
    #[error("{field}: {source}")]
    InvalidUnit {
        field: String,
        source: crate::units::UnitError,
    },
    /// `spec.source.pipelineRef` names an InventoryPipeline that does not exist (yet).
    #[error(
        "InventoryPipeline {name:?} (spec.source.pipelineRef) does not exist in this namespace"
    )]
    PipelineNotFound { name: String },
    /// A worker config failed to serialize (not expected with the plain structs used).
    #[error("rendering the worker configuration: {0}")]
    Render(#[from] serde_json::Error),
    /// The worker would refuse the configuration built from this spec at start; the builders
    /// check the CR's fields first, so this is a safety net that names the file's field.
    #[error("the worker would refuse its configuration: {0}")]
    WorkerConfig(#[source] ConfigError),
}

impl BuildError {
    /// The CR field at fault, for the spec errors that have one.
    pub fn field(&self) -> Option<&str> {
        match self {
            BuildError::InvalidSpec { field, .. } | BuildError::InvalidUnit { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        BuildError::InvalidSpec {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Hex SHA-256 of what, when changed, must restart the workers: the rendered config, the image
/// and the restart nonce. Each part is length-prefixed so no two different inputs share a
/// hash by shifting bytes between parts.
pub fn spec_hash(config: &str, image: &str, restart_nonce: Option<i64>) -> String {
    let mut h = Sha256::new();
    for part in [config.as_bytes(), image.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    match restart_nonce {
        None => h.update([0u8]),
        Some(n) => {
            h.update([1u8]);
            h.update(n.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// What every child of one CR shares: its namespace, the CR's name and the owner reference.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub name: String,
    pub namespace: String,
    pub owner_ref: OwnerReference,
}

impl Owner {
    pub fn of<K: Resource<DynamicType = ()>>(cr: &K) -> Result<Self, BuildError> {
        let meta = cr.meta();
        let name = meta.name.clone().ok_or(BuildError::MissingMetadata {
            what: "metadata.name",
        })?;
        let namespace = meta.namespace.clone().ok_or(BuildError::MissingMetadata {
            what: "metadata.namespace",
        })?;
        if meta.uid.is_none() {
            return Err(BuildError::MissingMetadata {
                what: "metadata.uid",
            });
        }
        let owner_ref = cr
            .controller_owner_ref(&())
            .map(|r| OwnerReference {
                // Foreground deletion of the CR waits for its children.
                block_owner_deletion: Some(true),
                ..r
            })
            .ok_or(BuildError::MissingMetadata {
                what: "metadata.name or metadata.uid",
            })?;
        Ok(Self {
            name,
            namespace,
            owner_ref,
        })
    }

    /// `<cr name><suffix>`, checked to be a valid Service name (DNS-1035 label, at most 63
    /// characters): CR names may be longer subdomains with dots, which Services refuse.
    pub fn child_name(&self, suffix: &str) -> Result<String, BuildError> {
        let name = format!("{}{suffix}", self.name);
        let dns1035 = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if dns1035 {
            Ok(name)
        } else {
            Err(BuildError::invalid(
                "metadata.name",
                format!(
                    "{name:?} (the name plus {suffix:?}) must be a DNS-1035 label: at most 63 \
                     lowercase letters, digits and '-', starting with a letter; \
                     use a name of at most {} characters without dots",
                    63usize.saturating_sub(suffix.len())
                ),
            ))
        }
    }

    /// Metadata of a child: name, the CR's namespace, labels and the owner reference.
    pub fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The identity a worker uses for Kafka consumer groups, transactional ids and derived
    /// topics: `<namespace>.<name>`. Kafka is shared across namespaces, so the bare name would
    /// let two `shop` pipelines in different namespaces join one consumer group, fence each
    /// other's transactional ids and write one changelog. A namespace is a DNS label (no dots),
    /// so the first dot splits the pair unambiguously; both parts use only characters the
    /// worker accepts (letters, digits, `-`, `.`).
    pub fn worker_identity(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// Refuses an empty (or blank) string value.
pub(crate) fn require_non_empty(field: &str, value: &str) -> Result<(), BuildError> {
    if value.trim().is_empty() {
        Err(BuildError::invalid(field, "must not be empty"))
    } else {
        Ok(())
    }
}

/// A CR duration (`30s`, `1h`) as the whole milliseconds the worker configs carry; at least
/// 1 ms and small enough for the workers' signed epoch-millisecond arithmetic.
pub(crate) fn duration_ms(field: &str, value: &str) -> Result<Millis, BuildError> {
    let d = crate::units::parse_duration(value).map_err(|source| BuildError::InvalidUnit {
        field: field.to_owned(),
        source,
    })?;
    let ms = u64::try_from(d.as_millis())
        .ok()
        .filter(|ms| i64::try_from(*ms).is_ok())
        .ok_or_else(|| BuildError::invalid(field, format!("{value:?} is too long")))?;
    if ms == 0 {
        return Err(BuildError::invalid(field, "must be longer than 0"));
    }
    Ok(Millis(ms))
}

/// The `kafka` object of every worker config, from a CR's connection at JSON path `field`
/// (e.g. `spec.kafka`). Credentials are never in it: they stay in the Secret mounted at
/// `propertiesFile`.
pub(crate) fn kafka_settings(
    field: &str,
    k: &KafkaConnection,
) -> Result<KafkaSettings, BuildError> {
    require_non_empty(&format!("{field}.bootstrapServers"), &k.bootstrap_servers)?;
    Ok(KafkaSettings {
        bootstrap_servers: k.bootstrap_servers.clone(),
        properties: BTreeMap::new(),
        properties_file: k
            .secret_ref
            .as_ref()
            .map(|_| pod::KAFKA_PROPERTIES_FILE.into()),
    })
}

/// The worker's file as stored in the ConfigMap and hashed: pretty JSON in struct order, after
/// the same validation the worker runs at start, so the operator never renders a file its
/// worker refuses.
pub(crate) fn render_config<T: WorkerConfig + Serialize>(config: &T) -> Result<String, BuildError> {
    config.validate().map_err(BuildError::WorkerConfig)?;
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    Ok(text)
}

pub(crate) fn config_map(
    owner: &Owner,
    name: String,
    labels: BTreeMap<String, String>,
    config_json: String,
) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(name, labels),
        data: Some(BTreeMap::from([(pod::CONFIG_KEY.to_owned(), config_json)])),
        ..ConfigMap::default()
    }
}

pub(crate) fn deployment(
    owner: &Owner,
    name: String,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    replicas: Option<i32>,
    strategy: DeploymentStrategy,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: owner.meta(name, labels),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(strategy),
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// `Recreate`: the old pods are gone before new ones start.
pub(crate) fn recreate() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("Recreate".to_owned()),
        ..DeploymentStrategy::default()
    }
}

pub(crate) fn cluster_ip_service(
    owner: &Owner,
    name: String,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: owner.meta(name, labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared assertions over built objects.

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// `examples/<file>` as the custom resource the apiserver would hand the controller: in
    /// `namespace`, with a uid.
    pub fn example<K: serde::de::DeserializeOwned + kube::Resource>(
        file: &str,
        namespace: &str,
    ) -> K {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut cr: K = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        cr.meta_mut().namespace = Some(namespace.into());
        cr.meta_mut().uid = Some("u".into());
        cr
    }

    /// The child is in `namespace`, controlled by the CR `kind`/`name`/`uid`, and carries the
    /// recommended labels of `component`.
    pub fn assert_child_meta(
        meta: &ObjectMeta,
        namespace: &str,
        kind: &str,
        name: &str,
        uid: &str,
        component: &str,
    ) {
        assert_eq!(meta.namespace.as_deref(), Some(namespace), "{meta:?}");
        let refs = meta.owner_references.as_deref().unwrap_or_default();
        assert_eq!(refs.len(), 1, "{meta:?}");
        let r = &refs[0];
        assert_eq!(r.api_version, "kartflow.io/v1alpha1");
        assert_eq!(r.kind, kind);
        assert_eq!(r.name, name);
        assert_eq!(r.uid, uid);
        assert_eq!(r.controller, Some(true));
        assert_eq!(r.block_owner_deletion, Some(true));
        let labels = meta.labels.clone().unwrap_or_default();
        for (k, v) in [
            (super::LABEL_NAME, super::APP_NAME),
            (super::LABEL_INSTANCE, name),
            (super::LABEL_COMPONENT, component),
            (super::LABEL_PART_OF, super::PART_OF),
            (super::LABEL_MANAGED_BY, super::MANAGED_BY),
        ] {
            assert_eq!(
                labels.get(k).map(String::as_str),
                Some(v),
                "{k} on {meta:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::InventoryPipeline;
    use proptest::prelude::*;

    fn cr(name: Option<&str>, ns: Option<&str>, uid: Option<&str>) -> InventoryPipeline {
        let mut ip: InventoryPipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "InventoryPipeline",
            "metadata": {},
            "spec": {"image": "w:1", "kafka": {"bootstrapServers": "k:9092"}}
        }))
        .expect("fixture parses");
        ip.metadata.name = name.map(Into::into);
        ip.metadata.namespace = ns.map(Into::into);
        ip.metadata.uid = uid.map(Into::into);
        ip
    }

    #[test]
    fn owner_needs_name_namespace_and_uid() {
        let ok = Owner::of(&cr(Some("shop"), Some("prod"), Some("u-1"))).expect("complete");
        assert_eq!(ok.owner_ref.controller, Some(true));
        assert_eq!(ok.owner_ref.block_owner_deletion, Some(true));
        assert_eq!(ok.owner_ref.kind, "InventoryPipeline");
        assert_eq!(ok.worker_identity(), "prod.shop");
        for (c, what) in [
            (cr(None, Some("prod"), Some("u")), "metadata.name"),
            (cr(Some("shop"), None, Some("u")), "metadata.namespace"),
            (cr(Some("shop"), Some("prod"), None), "metadata.uid"),
        ] {
            match Owner::of(&c) {
                Err(BuildError::MissingMetadata { what: w }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn child_names_must_be_service_names() {
        let owner = |n: &str| Owner::of(&cr(Some(n), Some("ns"), Some("u"))).expect("owner");
        assert_eq!(
            owner("shop").child_name("-worker").expect("ok"),
            "shop-worker"
        );
        let long = "a".repeat(57);
        for bad in ["shop.eu", "1shop", long.as_str()] {
            match owner(bad).child_name("-worker") {
                Err(BuildError::InvalidSpec { field, .. }) => assert_eq!(field, "metadata.name"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(owner(&"a".repeat(56)).child_name("-worker").is_ok());
    }

    #[test]
    fn durations_become_positive_millis() {
        assert_eq!(duration_ms("f", "30s").expect("ok"), Millis(30_000));
        assert_eq!(duration_ms("f", "1h").expect("ok"), Millis(3_600_000));
        for bad in ["0s", "1w", "", "99999999999999999d"] {
            match duration_ms("spec.x", bad) {
                Err(
                    BuildError::InvalidSpec { field, .. } | BuildError::InvalidUnit { field, .. },
                ) => assert_eq!(field, "spec.x"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match duration_ms("spec.x", "1w") {
            Err(e @ BuildError::InvalidUnit { .. }) => {
                assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
                assert!(e.to_string().starts_with("spec.x: "), "{e}");
            }
            other => panic!("1w: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn spec_hash_changes_iff_an_input_changes(
            config in ".{0,12}",
            image in ".{0,6}",
            nonce in proptest::option::of(any::<i64>()),
            which in 0u8..4,
            other in ".{0,12}",
            other_nonce in proptest::option::of(any::<i64>()),
        ) {
            let (mut c2, mut i2, mut n2) = (config.clone(), image.clone(), nonce);
            match which {
                1 => c2 = other,
                2 => i2 = other,
                3 => n2 = other_nonce,
                _ => {}
            }
            let same_inputs = c2 == config && i2 == image && n2 == nonce;
            let h1 = spec_hash(&config, &image, nonce);
            let h2 = spec_hash(&c2, &i2, n2);
            prop_assert_eq!(h1 == h2, same_inputs);
            prop_assert_eq!(h1.len(), 64);
        }

        #[test]
        fn moving_bytes_between_config_and_image_changes_the_hash(s in "[a-z]{2,16}", cut in 1usize..16) {
            let cut = cut.min(s.len() - 1);
            let (x, y) = s.split_at(cut);
            prop_assert_ne!(spec_hash(x, y, None), spec_hash(&s, "", None));
        }
    }
}
