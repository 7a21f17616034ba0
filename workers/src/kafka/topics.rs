//! Topic facts and checks the workers make at start-up: partition counts, co-partitioning of
//! keyed inputs, and creation of topics a worker owns.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use thiserror::Error;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum TopicError {
    #[error("cannot reach Kafka to read metadata of topic {topic}: {source}")]
    Metadata {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic} is not usable: {code} (check the ACLs of this client's principal)")]
    Unavailable {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(
        "topic {topic} does not exist: create it (with as many partitions as {peer}) or fix the topic name in the configuration"
    )]
    Missing { topic: String, peer: String },
    #[error(
        "topics {left} ({left_n} partitions) and {right} ({right_n} partitions) are not co-partitioned: \
         keyed co-processing needs the same partition count; repartition one of them"
    )]
    NotCopartitioned {
        left: String,
        left_n: usize,
        right: String,
        right_n: usize,
    },
    #[error("creating topic {topic} failed: {reason}")]
    Create { topic: String, reason: String },
    #[error(
        "topic {topic} has {actual} partitions but the inputs have {expected}: state partitions \
         must map 1:1 to input partitions; delete {topic} or start a new pipeline from a savepoint"
    )]
    WrongPartitionCount {
        topic: String,
        actual: usize,
        expected: usize,
    },
}

/// Number of partitions of `topic`, `None` when it does not exist.
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<Option<usize>, TopicError> {
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|source| TopicError::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None if t.partitions().is_empty() => Ok(None),
        None => Ok(Some(t.partitions().len())),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => Err(TopicError::Unavailable {
            topic: topic.to_owned(),
            code,
        }),
    }
}

/// The shared partition count of two keyed inputs, or why they cannot be co-processed.
pub fn check_copartitioned(
    left: (&str, Option<usize>),
    right: (&str, Option<usize>),
) -> Result<usize, TopicError> {
    match (left.1, right.1) {
        (None, _) => Err(TopicError::Missing {
            topic: left.0.to_owned(),
            peer: right.0.to_owned(),
        }),
        (_, None) => Err(TopicError::Missing {
            topic: right.0.to_owned(),
            peer: left.0.to_owned(),
        }),
        (Some(l), Some(r)) if l != r => Err(TopicError::NotCopartitioned {
            left: left.0.to_owned(),
            left_n: l,
            right: right.0.to_owned(),
            right_n: r,
        }),
        (Some(l), Some(_)) => Ok(l),
    }
}

/// Creates `topic` with `partitions` unless it exists; an existing topic must have exactly
/// `partitions` when `exact` is set (internal topics whose partitions map to state).
pub async fn ensure_topic(
    config: &ClientConfig,
    consumer: &BaseConsumer,
    topic: &str,
    partitions: usize,
    topic_config: &[(&str, &str)],
    exact: bool,
) -> Result<(), TopicError> {
    if let Some(actual) = partition_count(consumer, topic)? {
        if exact && actual != partitions {
            return Err(TopicError::WrongPartitionCount {
                topic: topic.to_owned(),
                actual,
                expected: partitions,
            });
        }
        return Ok(());
    }
    let create_err = |reason: String| TopicError::Create {
        topic: topic.to_owned(),
        reason,
    };
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| create_err(e.to_string()))?;
    let partitions_i32 = i32::try_from(partitions).map_err(|e| create_err(e.to_string()))?;
    let mut new = NewTopic::new(topic, partitions_i32, TopicReplication::Fixed(-1));
    for (k, v) in topic_config {
        new = new.set(k, v);
    }
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .map_err(|e| create_err(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(create_err(code.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copartitioning_rules() {
        assert_eq!(
            check_copartitioned(("a", Some(3)), ("b", Some(3))).ok(),
            Some(3)
        );
        let err = check_copartitioned(("a", Some(3)), ("b", Some(4))).expect_err("differs");
        assert!(
            err.to_string()
                .contains("a (3 partitions) and b (4 partitions)"),
            "{err}"
        );
        let err = check_copartitioned(("a", None), ("b", Some(4))).expect_err("missing");
        assert!(err.to_string().contains("topic a does not exist"), "{err}");
    }
}
