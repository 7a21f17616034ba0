//! How a worker reaches Kafka (`kafka` in every worker's file).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

impl KafkaSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrapServers",
                "is empty: set it to host:port of your brokers",
            ));
        }
        Ok(())
    }

    /// Every client property in force, in the order to set them: the bootstrap servers, the
    /// properties file, then the inline properties (inline wins, so a manifest can override a
    /// shared Secret).
    pub fn client_properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.validate()?;
        let mut out = vec![(
            "bootstrap.servers".to_owned(),
            self.bootstrap_servers.clone(),
        )];
        if let Some(path) = &self.properties_file {
            let text = std::fs::read_to_string(path).map_err(|source| {
                ConfigError::KafkaPropertiesFile {
                    path: path.clone(),
                    source,
                }
            })?;
            let lines =
                parse_properties(&text).map_err(|line| ConfigError::KafkaPropertiesLine {
                    path: path.clone(),
                    line,
                })?;
            out.extend(lines.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        }
        out.extend(self.properties.clone());
        Ok(out)
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

    #[test]
    fn inline_properties_win_over_the_file() {
        let path =
            std::env::temp_dir().join(format!("kartflow-kafka-{}.properties", std::process::id()));
        std::fs::write(&path, "security.protocol=SASL_SSL\nsasl.username=file\n").expect("write");
        let s = KafkaSettings {
            bootstrap_servers: "k:9092".into(),
            properties: BTreeMap::from([("sasl.username".into(), "inline".into())]),
            properties_file: Some(path.clone()),
        };
        let props = s.client_properties().expect("readable");
        let _ = std::fs::remove_file(&path);
        let last = |key: &str| {
            props
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(last("bootstrap.servers"), Some("k:9092"));
        assert_eq!(last("security.protocol"), Some("SASL_SSL"));
        assert_eq!(last("sasl.username"), Some("inline"));
        let missing = KafkaSettings {
            properties_file: Some("/nonexistent/client.properties".into()),
            ..s
        };
        let err = missing.client_properties().expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/client.properties"),
            "{err}"
        );
    }
}
