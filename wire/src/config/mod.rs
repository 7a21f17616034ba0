//! The configuration contract between the operator and the workers: one JSON file per worker
//! (camelCase), rendered by the operator into the worker's ConfigMap and read by
//! `kartflow-worker <role> --config FILE`.
//!
//! These types exist once. The operator's builders construct them (so it can only write fields
//! the worker knows), the workers parse them with unknown fields refused (so a typo in a file
//! written by hand fails at start with its name), and [`WorkerConfig::validate`] is the one check
//! both sides run: the operator before it renders, the worker before it starts.
//!
//! | role | type | subcommand |
//! | --- | --- | --- |
//! | inventory | [`InventorySettings`] | `kartflow-worker inventory` |
//! | CDC | [`CdcSettings`] | `kartflow-worker cdc` |
//! | read model | [`ReadModelSettings`] | `kartflow-worker read-model` |
//!
//! Environment overrides (what differs per environment rather than per resource) are applied by
//! [`load`] before validation: `KARTFLOW_KAFKA_BOOTSTRAP` and `KARTFLOW_ADMIN_LISTEN` for every
//! role, plus the role's own (see each type).

pub mod cdc;
mod duration;
pub mod inventory;
mod kafka;
pub mod read_model;
mod rules;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

pub use cdc::CdcSettings;
pub use duration::Millis;
pub use inventory::InventorySettings;
pub use kafka::KafkaSettings;
pub use read_model::ReadModelSettings;
pub use rules::InventoryRules;

/// The admin server (`/healthz`, `/readyz`, `/metrics`) of every worker: all addresses, port 8080.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080);

/// The control server of the workers that take state-changing requests (savepoints): all
/// addresses, port 8081. A port of its own, so a NetworkPolicy can open the admin port to
/// Prometheus and this one to the operator only.
pub const DEFAULT_CONTROL_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8081);

/// Why a worker configuration cannot be used. Every variant names the file, field or variable.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not JSON of the expected shape; the source names the field (`postgres.sslMode: …`).
    #[error("configuration file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    /// A value out of its allowed range; `field` is its path in the file (`topics.dlq`).
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("environment variable {var}={value:?} is not valid: {problem}")]
    Env {
        var: &'static str,
        value: String,
        problem: String,
    },
    #[error("kafka.propertiesFile {path}: {source}")]
    KafkaPropertiesFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kafka.propertiesFile {path} line {line}: expected key=value")]
    KafkaPropertiesLine { path: PathBuf, line: usize },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error with `prefix.` in front of an invalid field's path, for a nested object.
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        match self {
            ConfigError::Invalid { field, problem } => ConfigError::Invalid {
                field: format!("{prefix}.{field}"),
                problem,
            },
            other => other,
        }
    }
}

/// A worker's configuration file.
pub trait WorkerConfig: DeserializeOwned {
    /// Applies the role's `KARTFLOW_*` overrides; `env` looks a variable up.
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError>;

    /// Checks every field; the first bad one is reported by its path in the file.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads `path`, applies the environment overrides from `env`, and validates.
pub fn load<T: WorkerConfig>(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config: T = parse_json(path, &text)?;
    config.apply_env(&env)?;
    config.validate()?;
    Ok(config)
}

/// `text` as a `T`, errors naming the field's path within the file at `path`.
pub fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The overrides every role takes: the Kafka bootstrap servers and the admin address.
fn apply_common_env(
    kafka: &mut KafkaSettings,
    admin_listen: &mut SocketAddr,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = env("KARTFLOW_KAFKA_BOOTSTRAP") {
        kafka.bootstrap_servers = v;
    }
    if let Some(addr) = socket_addr_env("KARTFLOW_ADMIN_LISTEN", env)? {
        *admin_listen = addr;
    }
    Ok(())
}

/// `var` parsed as a socket address ([`parse_listen`]), when set.
fn socket_addr_env(
    var: &'static str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    env(var)
        .map(|v| {
            parse_listen(&v).map_err(|e| ConfigError::Env {
                var,
                problem: e.to_string(),
                value: v,
            })
        })
        .transpose()
}

/// A listen address `host:port`. Besides the standard forms (`10.1.2.3:8080`, `[fd00::7]:8080`)
/// it takes an IPv6 address without brackets (`fd00::7:8080`, the last colon splits off the
/// port): that is what `$(POD_IP):8080` expands to on an IPv6 cluster.
pub fn parse_listen(value: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    value.parse().or_else(|e| {
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(e);
        };
        let ip: std::net::Ipv6Addr = host.parse()?;
        let Ok(port) = port.parse::<u16>() else {
            return Err(e);
        };
        Ok(SocketAddr::from((ip, port)))
    })
}

fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

/// Refuses an empty or blank value of `field`.
fn require_non_empty(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        Err(ConfigError::invalid(field, "must not be empty"))
    } else {
        Ok(())
    }
}

/// Refuses a resource identity the workers cannot turn into Kafka client ids, group ids and
/// topic names: letters, digits, `-`, `_` and `.` only.
fn require_identity(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            "must be non-empty and use only letters, digits, '-', '_' and '.'",
        ))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::{ConfigError, WorkerConfig};

    /// Parses and validates inline JSON as a worker would, without environment overrides.
    pub fn parse<T: WorkerConfig>(v: serde_json::Value) -> Result<T, ConfigError> {
        let config: T = super::parse_json("inline".as_ref(), &v.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// `base` with each top-level key of `patch` replaced.
    pub fn patched(base: &serde_json::Value, patch: &serde_json::Value) -> serde_json::Value {
        let mut v = base.clone();
        for (k, val) in patch.as_object().into_iter().flatten() {
            v[k] = val.clone();
        }
        v
    }

    /// Every `(patch, field)` case is refused with `field` in the message, and a round trip
    /// through JSON of the valid `base` gives the same value.
    pub fn assert_contract<T>(base: serde_json::Value, cases: &[(serde_json::Value, &str)])
    where
        T: WorkerConfig + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        let valid: T = parse(base.clone()).expect("the base file is valid");
        let again: T =
            parse(serde_json::to_value(&valid).expect("serializes")).expect("round trip");
        assert_eq!(valid, again, "serialize → parse is the identity");
        for (patch, field) in cases {
            let err = parse::<T>(patched(&base, patch)).expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        let mut typo = base;
        typo["adminListn"] = serde_json::json!("0.0.0.0:1");
        let err = parse::<T>(typo).expect_err("unknown field");
        assert!(err.to_string().contains("adminListn"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_of_both_families() {
        for (value, want) in [
            ("10.1.2.3:8080", Some("10.1.2.3:8080")),
            ("[fd00::7]:8080", Some("[fd00::7]:8080")),
            ("fd00::7:8080", Some("[fd00::7]:8080")),
            ("::1:9", Some("[::1]:9")),
            ("0.0.0.0:8081", Some("0.0.0.0:8081")),
            ("10.1.2.3", None),
            ("fd00::7", None),
            ("host:80", None),
            ("10.1.2.3:99999", None),
        ] {
            let got = parse_listen(value).ok().map(|a| a.to_string());
            assert_eq!(got.as_deref(), want, "{value}");
        }
    }

    #[test]
    fn within_prefixes_only_invalid_fields() {
        let e = ConfigError::invalid("staleAfter", "must be longer than 0").within("rules");
        assert_eq!(e.to_string(), "rules.staleAfter: must be longer than 0");
        let e = ConfigError::KafkaPropertiesLine {
            path: "/p".into(),
            line: 3,
        }
        .within("x");
        assert!(e.to_string().starts_with("kafka.propertiesFile /p line 3"));
    }

    #[test]
    fn common_overrides_apply_and_bad_addresses_are_named() {
        let mut kafka = KafkaSettings::default();
        let mut admin = DEFAULT_ADMIN_LISTEN;
        apply_common_env(&mut kafka, &mut admin, &|k| match k {
            "KARTFLOW_KAFKA_BOOTSTRAP" => Some("other:1".into()),
            "KARTFLOW_ADMIN_LISTEN" => Some("127.0.0.1:9999".into()),
            _ => None,
        })
        .expect("valid overrides");
        assert_eq!(kafka.bootstrap_servers, "other:1");
        assert_eq!(admin.port(), 9999);
        let err = apply_common_env(&mut kafka, &mut admin, &|k| {
            (k == "KARTFLOW_ADMIN_LISTEN").then(|| "nope".into())
        })
        .expect_err("bad address");
        assert!(err.to_string().contains("KARTFLOW_ADMIN_LISTEN"), "{err}");
    }

    #[test]
    fn load_names_the_file_on_read_and_parse_errors() {
        let dir = std::env::temp_dir().join(format!("kartflow-wire-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.json");
        let err = load::<ReadModelSettings>(&missing, |_| None).expect_err("missing");
        assert!(err.to_string().contains("missing.json"), "{err}");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{").expect("write");
        let err = load::<ReadModelSettings>(&bad, |_| None).expect_err("bad json");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"readModel": "ns.rm", "kafka": {"bootstrapServers": "k:9092"}}"#,
        )
        .expect("write");
        let rm = load::<ReadModelSettings>(&good, |k| {
            (k == "KARTFLOW_KAFKA_BOOTSTRAP").then(|| "env:1".into())
        })
        .expect("loads");
        assert_eq!(rm.kafka.bootstrap_servers, "env:1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
