//! Children of a `CdcSource`: the CDC worker config, its single-replica Deployment and the admin
//! Service.
//!
//! The worker's file is [`kartflow_wire::config::CdcSettings`]; credentials are never in it (the
//! Deployment fills `PGUSER` / `PGPASSWORD` from the Secret's `username` / `password` keys).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kartflow_wire::config::CdcSettings;
use kartflow_wire::config::cdc::{
    self as contract, CaptureSettings, OrderLineColumns, OutboxSettings, PostgresSettings,
    PublicationSettings, SlotSettings,
};

use super::labels::{recommended_labels, selector_labels};
use super::pod::{self, WorkerPod};
use super::{
    BuildError, Component, Owner, cluster_ip_service, config_map, deployment, duration_ms,
    kafka_settings, recreate, render_config, require_non_empty, spec_hash,
};
use crate::crd::CdcSource;
use crate::crd::cdc_source::{CaptureMode, SslMode};

/// What a `CdcSource` reconciles into.
#[derive(Debug, Clone, PartialEq)]
pub struct CdcChildren {
    /// `<name>-cdc-config`, key `config.json`.
    pub config_map: ConfigMap,
    /// `<name>-cdc`, one replica.
    pub deployment: Deployment,
    /// `<name>-cdc`, the admin/metrics port.
    pub service: Service,
}

/// Builds the source's children. `stopped`: the guard dropped the slot and the user has not
/// acknowledged it yet, so the worker runs no replica.
pub fn cdc_source(cdc: &CdcSource, stopped: bool) -> Result<CdcChildren, BuildError> {
    let owner = Owner::of(cdc)?;
    let spec = &cdc.spec;
    require_non_empty("spec.image", &spec.image)?;
    let deployment_name = owner.child_name("-cdc")?;
    let config_map_name = format!("{deployment_name}-config");

    let pg = &spec.postgres;
    require_non_empty("spec.postgres.host", &pg.host)?;
    let port = u16::try_from(pg.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| BuildError::invalid("spec.postgres.port", "must be between 1 and 65535"))?;
    require_non_empty("spec.postgres.database", &pg.database)?;
    let credentials = &pg.credentials_secret_ref.name;
    require_non_empty("spec.postgres.credentialsSecretRef.name", credentials)?;
    require_non_empty("spec.publication.name", &spec.publication.name)?;
    let slot_ok = (1..=63).contains(&spec.slot.name.len())
        && spec
            .slot
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !slot_ok {
        return Err(BuildError::invalid(
            "spec.slot.name",
            "must be 1 to 63 lowercase letters, digits and underscores",
        ));
    }
    let cap = &spec.capture;
    match cap.mode {
        CaptureMode::Table => {
            require_non_empty("spec.capture.table", &cap.table)?;
            require_non_empty("spec.capture.columns.orderId", &cap.columns.order_id)?;
            require_non_empty("spec.capture.columns.productId", &cap.columns.product_id)?;
            require_non_empty("spec.capture.columns.quantity", &cap.columns.quantity)?;
        }
        CaptureMode::Outbox => require_non_empty("spec.capture.outboxTable", &cap.outbox_table)?,
    }
    require_non_empty("spec.topic", &spec.topic)?;
    if matches!(pg.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && pg.ca_cert.is_none() {
        return Err(BuildError::invalid(
            "spec.postgres.caCert",
            "is required with sslMode verify-ca and verify-full: name the Secret or ConfigMap \
             key holding the CA certificate (PEM)",
        ));
    }

    let config = CdcSettings {
        source: owner.worker_identity(),
        postgres: PostgresSettings {
            host: pg.host.clone(),
            port,
            database: pg.database.clone(),
            ssl_mode: pg.ssl_mode,
            ca_file: pg
                .ca_cert
                .as_ref()
                .map(|r| format!("{}/{}", pod::POSTGRES_CA_DIR, r.key).into()),
        },
        publication: PublicationSettings {
            name: spec.publication.name.clone(),
            tables: spec.publication.tables.clone(),
            create: spec.publication.create,
        },
        slot: SlotSettings {
            name: spec.slot.name.clone(),
            create: spec.slot.create,
        },
        capture: CaptureSettings {
            mode: cap.mode,
            table: cap.table.clone(),
            columns: OrderLineColumns {
                order_id: cap.columns.order_id.clone(),
                product_id: cap.columns.product_id.clone(),
                quantity: cap.columns.quantity.clone(),
                id: cap.columns.id.clone(),
                timestamp: cap.columns.timestamp.clone(),
            },
            outbox_table: cap.outbox_table.clone(),
            outbox: OutboxSettings {
                id_column: cap.outbox.id_column.clone(),
                aggregate_type_column: cap.outbox.aggregate_type_column.clone(),
                aggregate_id_column: cap.outbox.aggregate_id_column.clone(),
                payload_column: cap.outbox.payload_column.clone(),
                type_column: cap.outbox.type_column.clone(),
                topic_prefix: cap.outbox.topic_prefix.clone(),
                delete_after_capture: cap.outbox.delete_after_capture,
            },
        },
        topic: spec.topic.clone(),
        dlq_topic: spec.dlq_topic.clone(),
        snapshot_mode: spec.snapshot_mode,
        snapshot_nonce: spec.snapshot_nonce,
        heartbeat_interval: duration_ms("spec.heartbeatInterval", &spec.heartbeat_interval)?,
        kafka: kafka_settings("spec.kafka", &spec.kafka)?,
        admin_listen: pod::ADMIN_LISTEN,
        positions_topic: contract::default_positions_topic(),
        snapshot_chunk_rows: contract::default_snapshot_chunk_rows(),
        max_batch_records: contract::default_max_batch_records(),
        max_batch_delay: contract::default_max_batch_delay(),
        ready_lag_bytes: contract::default_ready_lag_bytes(),
    };
    let config_json = render_config(&config)?;
    let hash = spec_hash(&config_json, &spec.image, None);

    let labels = recommended_labels(&owner.name, Component::Cdc, &spec.image);
    let selector = selector_labels(&owner.name, Component::Cdc);
    let mut mounts = vec![pod::config_mount(&config_map_name)];
    mounts.extend(pod::kafka_secret_mount(&spec.kafka));
    mounts.extend(pg.ca_cert.as_ref().map(pod::postgres_ca_mount));
    let template = WorkerPod {
        labels: labels.clone(),
        spec_hash: hash,
        image: spec.image.clone(),
        args: pod::worker_args("cdc"),
        env: vec![
            pod::env_secret("PGUSER", credentials, "username"),
            pod::env_secret("PGPASSWORD", credentials, "password"),
        ],
        mounts,
        // Time to flush the producer and confirm the last LSN to PostgreSQL.
        termination_grace_period_seconds: 60,
        ..WorkerPod::default()
    }
    .into_template();

    Ok(CdcChildren {
        config_map: config_map(&owner, config_map_name, labels.clone(), config_json),
        // One replica with Recreate: a slot has at most one active reader, so a surge pod would
        // fail ("replication slot is active") or, worse, race the old one for the stream.
        deployment: deployment(
            &owner,
            deployment_name.clone(),
            labels.clone(),
            selector.clone(),
            Some(if stopped { 0 } else { 1 }),
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::pod::tests::{assert_worker_pod_basics, env_of, worker};
    use crate::children::testutil::assert_child_meta;
    use serde_json::{Value, json};

    fn source(patch: Value) -> CdcSource {
        let mut spec = json!({
            "image": "kartflow/worker:0.1.0",
            "postgres": {"host": "pg", "database": "shop", "credentialsSecretRef": {"name": "pg-creds"}},
            "publication": {"name": "kartflow_orders", "tables": ["public.order_items"]},
            "slot": {"name": "kartflow_orders"},
            "kafka": {"bootstrapServers": "kafka:9092"}
        });
        for (k, v) in patch.as_object().expect("object") {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "kartflow.io/v1alpha1", "kind": "CdcSource",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-orders"},
            "spec": spec
        }))
        .expect("fixture parses")
    }

    fn build(patch: Value) -> CdcChildren {
        cdc_source(&source(patch), false).expect("builds")
    }

    #[test]
    fn the_ca_certificate_is_mounted_and_named_in_the_worker_config() {
        for (kind, source) in [("Secret", "secret"), ("ConfigMap", "configMap")] {
            let c = build(json!({"postgres": {
                "host": "pg", "database": "shop", "credentialsSecretRef": {"name": "pg-creds"},
                "sslMode": "verify-full", "caCert": {"kind": kind, "name": "db-ca"}
            }}));
            let text = &c.config_map.data.as_ref().expect("data")["config.json"];
            let v: Value = serde_json::from_str(text).expect("JSON");
            assert_eq!(
                v["postgres"]["caFile"], "/etc/kartflow/postgres-ca/ca.crt",
                "{kind}"
            );
            let pod = serde_json::to_value(&c.deployment.spec.as_ref().expect("spec").template)
                .expect("pod JSON");
            let volume = pod["spec"]["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == "postgres-ca"))
                .cloned()
                .unwrap_or_default();
            let name_key = if source == "secret" {
                "secretName"
            } else {
                "name"
            };
            assert_eq!(volume[source][name_key], "db-ca", "{kind}: {volume}");
            assert_eq!(volume[source]["items"][0]["key"], "ca.crt", "{kind}");
            assert!(
                pod.to_string().contains("/etc/kartflow/postgres-ca"),
                "{kind}: mounted"
            );
        }
    }

    #[test]
    fn config_is_the_documented_contract_without_credentials() {
        let c = build(
            json!({"kafka": {"bootstrapServers": "kafka:9092", "secretRef": {"name": "kc"}}}),
        );
        let text = &c.config_map.data.as_ref().expect("data")["config.json"];
        let v: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(
            v,
            json!({
                "source": "shop.orders",
                "postgres": {"host": "pg", "port": 5432, "database": "shop", "sslMode": "prefer"},
                "publication": {"name": "kartflow_orders", "tables": ["public.order_items"], "create": true},
                "slot": {"name": "kartflow_orders", "create": true},
                "capture": {
                    "mode": "table",
                    "table": "public.order_items",
                    "columns": {"orderId": "order_id", "productId": "product_id", "quantity": "quantity", "id": "id"},
                    "outboxTable": "public.outbox",
                    "outbox": {
                        "idColumn": "id", "aggregateTypeColumn": "aggregatetype",
                        "aggregateIdColumn": "aggregateid", "payloadColumn": "payload",
                        "typeColumn": "type", "topicPrefix": "outbox.event.",
                        "deleteAfterCapture": false
                    }
                },
                "topic": "order-events",
                "dlqTopic": "cdc-dlq",
                "positionsTopic": "kartflow-cdc-positions",
                "snapshotMode": "initial",
                "snapshotChunkRows": 10000,
                "heartbeatInterval": 30000,
                "maxBatchRecords": 10000,
                "maxBatchDelay": 100,
                "readyLagBytes": 67108864,
                "kafka": {"bootstrapServers": "kafka:9092", "propertiesFile": "/etc/kartflow/kafka/client.properties"},
                "adminListen": "0.0.0.0:8080"
            })
        );
        assert!(!text.contains("pg-creds") && !text.to_lowercase().contains("password"));
        assert_eq!(
            c.config_map.metadata.name.as_deref(),
            Some("orders-cdc-config")
        );
    }

    #[test]
    fn one_recreated_replica_with_credentials_from_the_secret() {
        let c = build(json!({}));
        for meta in [
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
        ] {
            assert_child_meta(meta, "shop", "CdcSource", "orders", "uid-orders", "cdc");
        }
        assert_eq!(c.deployment.metadata.name.as_deref(), Some("orders-cdc"));
        assert_eq!(c.service.metadata.name.as_deref(), Some("orders-cdc"));
        let spec = c.deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate")
        );
        assert_worker_pod_basics(&spec.template, "cdc");
        let w = worker(&spec.template);
        for (var, key) in [("PGUSER", "username"), ("PGPASSWORD", "password")] {
            let sel = env_of(w, var)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|s| s.secret_key_ref.as_ref())
                .expect(var);
            assert_eq!(sel.name, "pg-creds");
            assert_eq!(sel.key, key);
        }
        let ports = c
            .service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 8080);
    }

    #[test]
    fn invalid_specs_name_their_field() {
        for (patch, field) in [
            (json!({"heartbeatInterval": "0s"}), "spec.heartbeatInterval"),
            (
                json!({"heartbeatInterval": "often"}),
                "spec.heartbeatInterval",
            ),
            (json!({"slot": {"name": "Bad-Slot"}}), "spec.slot.name"),
            (
                json!({"postgres": {"host": "pg", "port": 70000, "database": "d",
                    "credentialsSecretRef": {"name": "c"}}}),
                "spec.postgres.port",
            ),
            (
                json!({"postgres": {"host": "", "database": "d", "credentialsSecretRef": {"name": "c"}}}),
                "spec.postgres.host",
            ),
            (
                json!({"capture": {"mode": "outbox", "outboxTable": ""}}),
                "spec.capture.outboxTable",
            ),
            (json!({"topic": ""}), "spec.topic"),
            (
                json!({"kafka": {"bootstrapServers": ""}}),
                "spec.kafka.bootstrapServers",
            ),
        ] {
            match cdc_source(&source(patch.clone()), false) {
                Err(e) if e.field().is_some() => assert_eq!(e.field(), Some(field), "{patch}"),
                other => panic!("{patch}: expected {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_example_builds() {
        let cdc: CdcSource = crate::children::testutil::example("cdc-source.yaml", "default");
        cdc_source(&cdc, false).expect("builds");
    }
}
