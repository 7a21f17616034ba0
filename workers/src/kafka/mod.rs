//! Kafka plumbing shared by the worker roles: client settings, partitioning and topic checks.

pub mod partitioner;
pub mod topics;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a worker reaches Kafka. Credentials never sit in the config file itself: put them in a
/// Secret mounted as `propertiesFile` (librdkafka `key=value` lines, e.g. `sasl.password`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties (`security.protocol`, `ssl.ca.location`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// A file of librdkafka `key=value` lines read at start (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties_file: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum KafkaSettingsError {
    #[error("kafka.bootstrapServers is empty: set it to host:port of your brokers")]
    NoBootstrap,
    #[error("kafka.propertiesFile {path}: {source}")]
    PropertiesFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kafka.propertiesFile {path} line {line}: expected key=value")]
    PropertiesLine { path: PathBuf, line: usize },
}

impl KafkaSettings {
    pub fn validate(&self) -> Result<(), KafkaSettingsError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(KafkaSettingsError::NoBootstrap);
        }
        Ok(())
    }

    /// A client config with the bootstrap servers, the properties file, then inline properties
    /// (inline wins, so a manifest can override a shared Secret).
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSettingsError> {
        self.validate()?;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        if let Some(path) = &self.properties_file {
            let text = std::fs::read_to_string(path).map_err(|source| {
                KafkaSettingsError::PropertiesFile {
                    path: path.clone(),
                    source,
                }
            })?;
            for (k, v) in
                parse_properties(&text).map_err(|line| KafkaSettingsError::PropertiesLine {
                    path: path.clone(),
                    line,
                })?
            {
                cfg.set(k, v);
            }
        }
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        Ok(cfg)
    }
}

/// Parses `key=value` lines (blank lines and `#` comments skipped); `Err(line number)` otherwise.
fn parse_properties(text: &str) -> Result<Vec<(&str, &str)>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(i + 1)?;
        out.push((k.trim(), v.trim()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_name_the_bad_line() {
        let ok = parse_properties("# c\nsecurity.protocol=SASL_SSL\n\n sasl.username = u \n");
        assert_eq!(
            ok,
            Ok(vec![
                ("security.protocol", "SASL_SSL"),
                ("sasl.username", "u")
            ])
        );
        assert_eq!(parse_properties("a=1\nnonsense\n"), Err(2));
    }

    #[test]
    fn empty_bootstrap_is_rejected_with_the_field_named() {
        let err = KafkaSettings::default().validate().expect_err("empty");
        assert!(err.to_string().contains("kafka.bootstrapServers"));
    }
}
