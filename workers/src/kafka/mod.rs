//! Kafka plumbing shared by the worker roles: client settings, partitioning and topic checks.

pub mod partitioner;
pub mod topics;

use kartflow_wire::config::{ConfigError, KafkaSettings};
use rdkafka::ClientConfig;

/// An rdkafka client config with every property of `settings` (the bootstrap servers, the
/// properties file, then the inline properties, so inline wins).
pub fn client_config(settings: &KafkaSettings) -> Result<ClientConfig, ConfigError> {
    let mut cfg = ClientConfig::new();
    for (k, v) in settings.client_properties()? {
        cfg.set(k, v);
    }
    Ok(cfg)
}
