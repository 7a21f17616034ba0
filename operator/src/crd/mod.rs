//! kartflow's custom resources (group `kartflow.io`, version `v1alpha1`). The Rust types are the
//! source of truth: `crdgen` renders them to `crds/` and the chart, and `make crds-check` fails
//! when the committed YAML drifts. Doc comments become the field descriptions users see in
//! `kubectl explain`; validation lives in the schema (OpenAPI + CEL) so the apiserver refuses bad
//! objects at admission with the field named.

// kube's `printcolumn(name = …, type_ = …)` repeats keys across columns, which clippy mistakes
// for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod cdc_source;
pub mod common;
pub mod inventory_pipeline;
pub mod read_model;

pub use cdc_source::{CdcSource, CdcSourceSpec, CdcSourceStatus};
pub use inventory_pipeline::{InventoryPipeline, InventoryPipelineSpec, InventoryPipelineStatus};
pub use read_model::{ReadModel, ReadModelSpec, ReadModelStatus};

use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

pub const GROUP: &str = "kartflow.io";
pub const VERSION: &str = "v1alpha1";

/// Kubernetes' own syntax of a `resource.Quantity`.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Every CRD, in a stable order, as the YAML documents `crdgen` writes.
pub fn all_crds() -> Vec<Crd> {
    // One version per kind today; merge_crds keeps the door open for v1beta1 alongside.
    [
        vec![CdcSource::crd()],
        vec![InventoryPipeline::crd()],
        vec![ReadModel::crd()],
    ]
    .into_iter()
    .filter_map(|versions| merge_crds(versions, VERSION).ok())
    .map(with_quantity_patterns)
    .collect()
}

/// Gives every quantity in the schema (pod resources) Kubernetes' quantity pattern, so
/// `cpu: lots` is refused at admission with the CR's field named, instead of being admitted and
/// then refused on the child Deployment with the child's path. The long upstream description of
/// the Quantity type is replaced by one line.
fn with_quantity_patterns(crd: Crd) -> Crd {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let is_quantity = m.get("x-kubernetes-int-or-string") == Some(&true.into())
                    && m.get("description")
                        .and_then(|d| d.as_str())
                        .is_some_and(|d| d.starts_with("Quantity is a fixed-point"));
                if is_quantity {
                    m.insert("pattern".into(), QUANTITY_PATTERN.into());
                    m.insert(
                        "description".into(),
                        "A quantity: a number with an optional suffix, e.g. 500m, 2, 1.5 or 1Gi."
                            .into(),
                    );
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut v) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd_json(kind: &str) -> serde_json::Value {
        let crd = all_crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("no CRD for {kind}"));
        serde_json::to_value(crd).expect("CRD serializes")
    }

    fn rules(v: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::Array(rs)) = m.get("x-kubernetes-validations") {
                        for r in rs {
                            out.push(r["rule"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                    m.values().for_each(|c| walk(c, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
                _ => {}
            }
        }
        walk(v, &mut out);
        out
    }

    #[test]
    fn every_kind_is_namespaced_in_the_kartflow_category_with_status() {
        for kind in ["InventoryPipeline", "CdcSource", "ReadModel"] {
            let c = crd_json(kind);
            assert_eq!(c["spec"]["group"], GROUP);
            assert_eq!(c["spec"]["scope"], "Namespaced");
            assert_eq!(c["spec"]["names"]["categories"][0], "kartflow", "{kind}");
            assert!(c["spec"]["names"]["shortNames"][0].is_string(), "{kind}");
            let v = &c["spec"]["versions"][0];
            assert_eq!(v["name"], VERSION);
            assert!(
                v["subresources"]["status"].is_object(),
                "{kind} has a status subresource"
            );
            assert!(
                v["additionalPrinterColumns"]
                    .as_array()
                    .is_some_and(|a| a.len() >= 3),
                "{kind} has printer columns"
            );
        }
    }

    #[test]
    fn cross_field_rules_are_in_the_schema() {
        let cdc = rules(&crd_json("CdcSource"));
        assert!(
            cdc.iter().any(|r| r == "self == oldSelf"),
            "slot name immutable: {cdc:?}"
        );
        assert!(
            cdc.iter()
                .any(|r| r.contains("quantity(self.warnRetainedWal)")),
            "{cdc:?}"
        );
        let rm = rules(&crd_json("ReadModel"));
        assert!(
            rm.iter()
                .any(|r| r.contains("self.minReplicas <= self.maxReplicas")),
            "{rm:?}"
        );
        assert!(
            rm.iter()
                .any(|r| r.contains("'cpu' in self.resources.requests")),
            "{rm:?}"
        );
        assert!(
            rm.iter()
                .any(|r| r.contains("has(self.pipelineRef) != has(self.kafka)"))
        );
        let ip = rules(&crd_json("InventoryPipeline"));
        assert!(
            ip.iter()
                .any(|r| r.contains("self.criticalStock <= self.lowStock")),
            "{ip:?}"
        );
    }

    #[test]
    fn schema_carries_bounds_enums_and_defaults() {
        let ip = crd_json("InventoryPipeline");
        let spec = &ip["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props = &spec["properties"];
        assert_eq!(props["parallelism"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["parallelism"]["default"], 1);
        let modes: Vec<&str> = props["upgradeMode"]["enum"]
            .as_array()
            .expect("upgradeMode is an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(modes, ["savepoint", "last-state", "stateless"]);
        assert_eq!(props["topics"]["properties"]["orderEvents"]["minLength"], 1);
        assert_eq!(
            props["topics"]["properties"]["orderEvents"]["default"],
            "order-events"
        );
        let cdc = crd_json("CdcSource");
        let slot = &cdc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["slot"]["properties"];
        assert_eq!(slot["name"]["pattern"], "^[a-z0-9_]{1,63}$");
        assert_eq!(slot["dropOnDelete"]["default"], true);
    }

    #[test]
    fn examples_parse_as_their_kinds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("example exists");
        let ip: InventoryPipeline =
            serde_yaml::from_str(&read("inventory-pipeline.yaml")).expect("pipeline parses");
        assert_eq!(ip.spec.parallelism, 2);
        let cdc: CdcSource = serde_yaml::from_str(&read("cdc-source.yaml")).expect("cdc parses");
        assert!(
            cdc.spec.slot.drop_on_delete,
            "dropOnDelete defaults to true"
        );
        let rm: ReadModel = serde_yaml::from_str(&read("read-model.yaml")).expect("rm parses");
        assert_eq!(rm.spec.autoscaling.map(|a| a.max_replicas), Some(6));
    }
}
