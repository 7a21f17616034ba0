//! The real kube-apiserver accepts kartflow's CRDs and refuses every invalid example in
//! `examples/invalid/` with a message naming the field (each file's `# expect:` line), accepts the
//! valid examples, and refuses renaming a CdcSource's slot.
//!
//! Needs the local cluster: `make test` starts it; alone, `make cluster-up` then
//! `cargo test -p kartflow-operator --test crd_admission -- --include-ignored`.

use std::path::{Path, PathBuf};

use kartflow_testkit::cluster::{self, TestNamespace, yaml_files};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn api_for(client: &Client, ns: &str, obj: &DynamicObject) -> Api<DynamicObject> {
    let types = obj.types.as_ref().expect("apiVersion and kind");
    let (group, version) = types.api_version.split_once('/').expect("group/version");
    let gvk = GroupVersionKind::gvk(group, version, &types.kind);
    let plural = format!("{}s", types.kind.to_lowercase());
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

/// The object, its `# expect:` line (the refusal must contain it) and its `# not:` lines
/// (the refusal must not: a second message about the same mistake only confuses).
fn load(path: &Path) -> (DynamicObject, String, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("example file");
    let expect = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_default()
        .to_owned();
    let not = text
        .lines()
        .filter_map(|l| l.strip_prefix("# not: "))
        .map(str::to_owned)
        .collect();
    let obj: DynamicObject = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a Kubernetes object: {e}", path.display()));
    (obj, expect, not)
}

#[tokio::test]
#[ignore = "needs the local cluster: `make test` runs it (or `make cluster-up` + --include-ignored)"]
async fn apiserver_refuses_invalid_resources_naming_the_field() {
    let client = cluster::client().await;
    cluster::install_crds(&client, &repo().join("crds")).await;
    let ns = TestNamespace::create(&client, "crd-admission").await;

    let invalid = yaml_files(&repo().join("examples/invalid"));
    assert!(invalid.len() >= 7, "the invalid examples are there");
    for file in invalid {
        let (obj, expect, not) = load(&file);
        assert!(
            !expect.is_empty(),
            "{} has an `# expect:` line",
            file.display()
        );
        let err = api_for(&client, &ns.name, &obj)
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{} must be refused", file.display()));
        let message = match &err {
            kube::Error::Api(status) => status.message.clone(),
            other => panic!(
                "{}: expected an admission error, got {other}",
                file.display()
            ),
        };
        assert!(
            message.contains(&expect),
            "{}: the message should name {expect:?}, got: {message}",
            file.display()
        );
        for n in not {
            assert!(
                !message.contains(&n),
                "{}: the message should not say {n:?}, got: {message}",
                file.display()
            );
        }
    }

    for name in [
        "inventory-pipeline.yaml",
        "cdc-source.yaml",
        "read-model.yaml",
    ] {
        let (obj, _, _) = load(&repo().join("examples").join(name));
        api_for(&client, &ns.name, &obj)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("valid example {name} refused: {e}"));
    }

    let (cdc, _, _) = load(&repo().join("examples/cdc-source.yaml"));
    let api = api_for(&client, &ns.name, &cdc);
    let rename = serde_json::json!({"spec": {"slot": {"name": "another_slot"}}});
    let err = api
        .patch(
            cdc.metadata.name.as_deref().expect("name"),
            &PatchParams::default(),
            &Patch::Merge(&rename),
        )
        .await
        .expect_err("renaming the slot must be refused");
    assert!(
        err.to_string().contains("slot.name is immutable"),
        "got: {err}"
    );
    ns.delete_and_wait().await;
}
