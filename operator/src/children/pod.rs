//! Pod pieces every worker shares: hardening, downward-API env, admin port and probes,
//! Prometheus annotations, the config, Kafka-secret and scratch volumes, and [`WorkerPod`],
//! which assembles them into a pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, ServicePort, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ANNOTATION_SPEC_HASH;
use crate::crd::common::KafkaConnection;

/// The worker container's name in every pod.
pub const CONTAINER_NAME: &str = "worker";
/// `adminListen` written into config files: admin HTTP (`/healthz`, `/readyz`, `/metrics`,
/// worker APIs) of every worker. `KARTFLOW_ADMIN_LISTEN` overrides it with the pod IP.
pub const ADMIN_LISTEN: std::net::SocketAddr = kartflow_wire::config::DEFAULT_ADMIN_LISTEN;
pub const ADMIN_PORT: i32 = ADMIN_LISTEN.port() as i32;
pub const ADMIN_PORT_NAME: &str = "admin";
/// See the container built by [`WorkerPod::into_template`].
pub const TERMINATION_MESSAGE_POLICY: &str = "FallbackToLogsOnError";
/// The non-root user and group the workers run as (distroless `nonroot`).
pub const RUN_AS_ID: i64 = 65532;

/// Key of the worker config in its ConfigMap, and where the container sees it.
pub const CONFIG_KEY: &str = "config.json";
pub const CONFIG_PATH: &str = "/etc/kartflow/config.json";
/// The Kafka client Secret's key and mount.
pub const KAFKA_PROPERTIES_KEY: &str = "client.properties";
pub const KAFKA_DIR: &str = "/etc/kartflow/kafka";
pub const KAFKA_PROPERTIES_FILE: &str = "/etc/kartflow/kafka/client.properties";
/// Writable scratch space under the read-only root filesystem.
pub const TMP_DIR: &str = "/tmp";

/// A volume and where the worker container mounts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub volume: Volume,
    pub mount: VolumeMount,
}

/// `<role> --config /etc/kartflow/config.json`.
pub fn worker_args(role: &str) -> Vec<String> {
    vec![
        role.to_owned(),
        "--config".to_owned(),
        CONFIG_PATH.to_owned(),
    ]
}

pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_ID),
        run_as_group: Some(RUN_AS_ID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// `fsGroup` makes mounted Secrets, ConfigMaps and emptyDirs readable/writable by the worker.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        fs_group: Some(RUN_AS_ID),
        ..PodSecurityContext::default()
    }
}

pub fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

pub fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

pub fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The env every worker gets. `POD_IP` comes before its `$(POD_IP)` uses: the kubelet only
/// expands variables defined earlier in the list.
pub fn base_env() -> Vec<EnvVar> {
    vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        // Bind the pod IP, not 0.0.0.0: the same on a real cluster, and required on the project's
        // test node where pods share the host network. The workers take an IPv6 pod IP without
        // brackets, and also listen on loopback for `kubectl port-forward`.
        env_value("KARTFLOW_ADMIN_LISTEN", format!("$(POD_IP):{ADMIN_PORT}")),
        env_value("KARTFLOW_LOG_FORMAT", "json"),
        env_value("KARTFLOW_CONFIG", CONFIG_PATH),
    ]
}

pub fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

pub fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn admin_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// `/healthz`: restart only after a minute of no answer (restoring state is not a failure).
pub fn liveness_probe() -> Probe {
    admin_probe("/healthz", 10, 6)
}

/// `/readyz`: the worker decides (caught up, partitions assigned).
pub fn readiness_probe() -> Probe {
    admin_probe("/readyz", 5, 3)
}

pub fn prometheus_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), ADMIN_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ])
}

/// The worker config at [`CONFIG_PATH`]. A `subPath` file mount, so the other mounts under
/// `/etc/kartflow` are not nested in a read-only ConfigMap volume. (subPath files do not see
/// ConfigMap updates; the spec-hash annotation restarts the pods instead.)
pub fn config_mount(config_map: &str) -> Mount {
    Mount {
        volume: Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_owned(),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.to_owned(),
                    path: CONFIG_KEY.to_owned(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_PATH.to_owned(),
            sub_path: Some(CONFIG_KEY.to_owned()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    }
}

/// One key of a user's ConfigMap as the file `<dir>/<key>`.
pub fn config_map_key_mount(volume: &str, config_map: &str, key: &str, dir: &str) -> Mount {
    Mount {
        volume: Volume {
            name: volume.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_owned(),
                items: Some(vec![KeyToPath {
                    key: key.to_owned(),
                    path: key.to_owned(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: volume.to_owned(),
            mount_path: dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    }
}

/// Where `spec.postgres.caCert` is mounted in the CDC worker; the file is `<dir>/<key>`.
pub const POSTGRES_CA_DIR: &str = "/etc/kartflow/postgres-ca";

/// The CA certificate of `spec.postgres.caCert`, from its Secret or ConfigMap key.
pub fn postgres_ca_mount(r: &crate::crd::cdc_source::CaCertRef) -> Mount {
    use crate::crd::cdc_source::CaSourceKind;
    const VOLUME: &str = "postgres-ca";
    match r.kind {
        CaSourceKind::ConfigMap => config_map_key_mount(VOLUME, &r.name, &r.key, POSTGRES_CA_DIR),
        CaSourceKind::Secret => secret_key_mount(VOLUME, &r.name, &r.key, POSTGRES_CA_DIR, None),
    }
}

/// The Kafka client Secret's `client.properties`, read-only at [`KAFKA_DIR`], when the
/// connection names one.
pub fn kafka_secret_mount(kafka: &KafkaConnection) -> Option<Mount> {
    let secret = kafka.secret_ref.as_ref()?;
    // Owner and fsGroup only: it holds credentials.
    Some(secret_key_mount(
        "kafka-client",
        &secret.name,
        KAFKA_PROPERTIES_KEY,
        KAFKA_DIR,
        Some(0o440),
    ))
}

/// One key of a Secret as the file `<dir>/<key>`, read-only; `mode` for credentials.
pub fn secret_key_mount(
    volume: &str,
    secret: &str,
    key: &str,
    dir: &str,
    mode: Option<i32>,
) -> Mount {
    Mount {
        volume: Volume {
            name: volume.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(vec![KeyToPath {
                    key: key.to_owned(),
                    path: key.to_owned(),
                    ..KeyToPath::default()
                }]),
                default_mode: mode,
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: volume.to_owned(),
            mount_path: dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    }
}

pub fn empty_dir_mount(volume: &str, path: &str, size_limit: Option<&str>) -> Mount {
    Mount {
        volume: Volume {
            name: volume.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: size_limit.map(|s| Quantity(s.to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: volume.to_owned(),
            mount_path: path.to_owned(),
            ..VolumeMount::default()
        },
    }
}

pub fn tmp_mount() -> Mount {
    empty_dir_mount("tmp", TMP_DIR, Some("64Mi"))
}

/// Everything that differs between the workers' pod templates.
#[derive(Debug, Clone, Default)]
pub struct WorkerPod {
    /// Pod labels (recommended plus overrides; must include the selector).
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations, applied over the Prometheus ones.
    pub annotations: BTreeMap<String, String>,
    /// Value of [`ANNOTATION_SPEC_HASH`]; always wins over `annotations`.
    pub spec_hash: String,
    pub image: String,
    pub args: Vec<String>,
    /// Env after [`base_env`].
    pub env: Vec<EnvVar>,
    /// Secrets whose keys become env (credentials the worker's libraries read from env).
    pub env_from_secrets: Vec<String>,
    /// Ports before the admin port.
    pub ports: Vec<ContainerPort>,
    /// Volumes besides `/tmp`, which is always added last.
    pub mounts: Vec<Mount>,
    pub resources: Option<ResourceRequirements>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub service_account_name: Option<String>,
    pub termination_grace_period_seconds: i64,
}

impl WorkerPod {
    pub fn into_template(self) -> PodTemplateSpec {
        let mut annotations = prometheus_annotations();
        annotations.extend(self.annotations);
        annotations.insert(ANNOTATION_SPEC_HASH.to_owned(), self.spec_hash);

        let mut env = base_env();
        env.extend(self.env);
        let mut ports = self.ports;
        ports.push(container_port(ADMIN_PORT_NAME, ADMIN_PORT));
        // /tmp last: on the project's test node mounts are bind mounts whose sources live
        // under the host's /tmp, so an earlier /tmp mount would hide them.
        let mut mounts = self.mounts;
        mounts.push(tmp_mount());
        let (volumes, volume_mounts): (Vec<_>, Vec<_>) =
            mounts.into_iter().map(|m| (m.volume, m.mount)).unzip();

        let container = Container {
            name: CONTAINER_NAME.to_owned(),
            image: Some(self.image),
            args: Some(self.args),
            env: Some(env),
            env_from: (!self.env_from_secrets.is_empty()).then(|| {
                self.env_from_secrets
                    .into_iter()
                    .map(|name| EnvFromSource {
                        secret_ref: Some(k8s_openapi::api::core::v1::SecretEnvSource {
                            name,
                            optional: Some(false),
                        }),
                        ..EnvFromSource::default()
                    })
                    .collect()
            }),
            ports: Some(ports),
            resources: self.resources,
            volume_mounts: Some(volume_mounts),
            liveness_probe: Some(liveness_probe()),
            readiness_probe: Some(readiness_probe()),
            security_context: Some(container_security_context()),
            // A worker that fails at start prints why as its last log line: it becomes the
            // container's termination message, which the operator shows on the CR.
            termination_message_policy: Some(TERMINATION_MESSAGE_POLICY.to_owned()),
            ..Container::default()
        };
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(self.labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![container],
                volumes: Some(volumes),
                security_context: Some(pod_security_context()),
                service_account_name: self.service_account_name,
                // Workers never call the Kubernetes API.
                automount_service_account_token: Some(false),
                node_selector: (!self.node_selector.is_empty()).then_some(self.node_selector),
                tolerations: (!self.tolerations.is_empty()).then_some(self.tolerations),
                termination_grace_period_seconds: Some(self.termination_grace_period_seconds),
                ..PodSpec::default()
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::common::LocalObjectRef;

    /// The single worker container of a template.
    pub fn worker(t: &PodTemplateSpec) -> &Container {
        let spec = t.spec.as_ref().expect("pod spec");
        assert_eq!(spec.containers.len(), 1);
        &spec.containers[0]
    }

    pub fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
        c.env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.name == name)
    }

    pub fn mount_at<'a>(c: &'a Container, path: &str) -> Option<&'a VolumeMount> {
        c.volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.mount_path == path)
    }

    pub fn volume<'a>(t: &'a PodTemplateSpec, name: &str) -> Option<&'a Volume> {
        t.spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == name)
    }

    /// The hardening, env, probes, admin port, annotations and /tmp every worker pod has.
    pub fn assert_worker_pod_basics(t: &PodTemplateSpec, role: &str) {
        let spec = t.spec.as_ref().expect("pod spec");
        assert_eq!(
            spec.security_context.as_ref().and_then(|s| s.fs_group),
            Some(65532)
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = worker(t);
        assert_eq!(c.name, "worker");
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(
            c.args.as_deref(),
            Some(&[role.to_owned(), "--config".into(), CONFIG_PATH.into()][..])
        );
        assert_eq!(c.security_context, Some(container_security_context()));
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));

        let names: Vec<&str> = c
            .env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).expect(n);
        assert!(pos("POD_IP") < pos("KARTFLOW_ADMIN_LISTEN"), "{names:?}");
        assert_eq!(
            env_of(c, "KARTFLOW_ADMIN_LISTEN").and_then(|e| e.value.as_deref()),
            Some("$(POD_IP):8080")
        );
        assert_eq!(
            env_of(c, "KARTFLOW_CONFIG").and_then(|e| e.value.as_deref()),
            Some(CONFIG_PATH)
        );
        for (var, path) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
        ] {
            let field = env_of(c, var)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|s| s.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            assert_eq!(field, Some(path), "{var}");
        }

        let admin = c
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some("admin"))
            .expect("admin port");
        assert_eq!(admin.container_port, 8080);
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect(path);
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("admin".into()));
        }

        let meta = t.metadata.as_ref().expect("template metadata");
        let ann = meta.annotations.clone().unwrap_or_default();
        assert_eq!(ann["prometheus.io/scrape"], "true");
        assert_eq!(ann["prometheus.io/port"], "8080");
        assert_eq!(ann["prometheus.io/path"], "/metrics");
        assert_eq!(ann[ANNOTATION_SPEC_HASH].len(), 64);

        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        assert_eq!(mounts.last().map(|m| m.mount_path.as_str()), Some("/tmp"));
        let config = mount_at(c, CONFIG_PATH).expect("config mounted");
        assert_eq!(config.sub_path.as_deref(), Some(CONFIG_KEY));
        assert_eq!(config.read_only, Some(true));
        // Every mount has its volume.
        for m in mounts {
            assert!(volume(t, &m.name).is_some(), "volume {}", m.name);
        }
    }

    #[test]
    fn kafka_secret_is_mounted_read_only_only_when_referenced() {
        let none = KafkaConnection {
            bootstrap_servers: "k:9092".into(),
            secret_ref: None,
        };
        assert!(kafka_secret_mount(&none).is_none());
        let with = KafkaConnection {
            secret_ref: Some(LocalObjectRef {
                name: "kafka-creds".into(),
            }),
            ..none
        };
        let m = kafka_secret_mount(&with).expect("mounted");
        assert_eq!(m.mount.mount_path, KAFKA_DIR);
        assert_eq!(m.mount.read_only, Some(true));
        let secret = m.volume.secret.expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("kafka-creds"));
        let items = secret.items.expect("items");
        assert_eq!(items[0].key, "client.properties");
        assert_eq!(
            format!("{KAFKA_DIR}/{}", items[0].path),
            KAFKA_PROPERTIES_FILE
        );
    }

    #[test]
    fn template_assembles_the_shared_pieces() {
        let plain = WorkerPod {
            spec_hash: "0".repeat(64),
            args: worker_args("inventory"),
            mounts: vec![config_mount("cm")],
            ..WorkerPod::default()
        }
        .into_template();
        assert_worker_pod_basics(&plain, "inventory");

        let t = WorkerPod {
            labels: BTreeMap::from([("a".into(), "b".into())]),
            annotations: BTreeMap::from([
                ("prometheus.io/scrape".into(), "false".into()),
                (ANNOTATION_SPEC_HASH.into(), "user-value".into()),
            ]),
            spec_hash: "f".repeat(64),
            image: "w:1".into(),
            args: worker_args("inventory"),
            mounts: vec![config_mount("cm")],
            termination_grace_period_seconds: 60,
            ..WorkerPod::default()
        }
        .into_template();
        let ann = t.metadata.as_ref().and_then(|m| m.annotations.clone());
        let ann = ann.unwrap_or_default();
        assert_eq!(ann["prometheus.io/scrape"], "false", "users may opt out");
        assert_eq!(
            ann[ANNOTATION_SPEC_HASH],
            "f".repeat(64),
            "never the user's"
        );
        let spec = t.spec.expect("spec");
        assert_eq!(spec.node_selector, None);
        assert_eq!(spec.tolerations, None);
        assert_eq!(spec.termination_grace_period_seconds, Some(60));
    }
}
