//! The recommended `app.kubernetes.io/*` labels and the selector subset.

use std::collections::BTreeMap;

use super::{
    APP_NAME, Component, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME,
    LABEL_PART_OF, LABEL_VERSION, MANAGED_BY, PART_OF,
};

/// Labels that select a CR's pods: name, instance and component only. A Deployment's selector
/// is immutable, so nothing that changes over the CR's life (the version) may be in it.
pub fn selector_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.as_str().to_owned()),
    ])
}

/// The selector labels plus part-of, managed-by and, when the image has a tag usable as a
/// label value, the version.
pub fn recommended_labels(
    instance: &str,
    component: Component,
    image: &str,
) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance, component);
    labels.insert(LABEL_PART_OF.to_owned(), PART_OF.to_owned());
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    if let Some(tag) = image_tag(image) {
        labels.insert(LABEL_VERSION.to_owned(), tag.to_owned());
    }
    labels
}

/// Pod-template labels: the recommended ones, then the user's, except that the user's never
/// replace a selector label (the Deployment would stop matching its own pods).
pub fn pod_labels(
    recommended: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let selector_keys = [LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT];
    let mut labels = recommended.clone();
    for (k, v) in overrides {
        if !selector_keys.contains(&k.as_str()) {
            labels.insert(k.clone(), v.clone());
        }
    }
    labels
}

/// The tag of an image reference (`repo/x:1.2` → `1.2`; `registry:5000/x` and digest-only
/// references have none), if it is a valid label value.
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_component = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let (_, tag) = last_component.split_once(':')?;
    is_label_value(tag).then_some(tag)
}

/// A non-empty label value: at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both
/// ends.
fn is_label_value(v: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !v.is_empty()
        && v.len() <= 63
        && v.starts_with(alnum)
        && v.ends_with(alnum)
        && v.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn image_tags() {
        for (image, tag) in [
            ("kartflow/worker:0.1.0", Some("0.1.0")),
            ("ghcr.io/kartflow/worker:v1.2-rc.1", Some("v1.2-rc.1")),
            ("registry:5000/kartflow/worker", None),
            ("registry:5000/kartflow/worker:dev", Some("dev")),
            ("kartflow/worker@sha256:abc", None),
            ("kartflow/worker:1.0@sha256:abc", Some("1.0")),
            ("kartflow/worker", None),
            ("kartflow/worker:", None),
            ("kartflow/worker:_x", None),
        ] {
            assert_eq!(image_tag(image), tag, "{image}");
        }
        let long = format!("w:{}", "a".repeat(64));
        assert_eq!(image_tag(&long), None, "longer than a label value");
    }

    #[test]
    fn recommended_labels_carry_the_version_and_selector_does_not() {
        let rec = recommended_labels("shop", Component::Inventory, "kartflow/worker:0.1.0");
        assert_eq!(rec[LABEL_NAME], "kartflow-worker");
        assert_eq!(rec[LABEL_INSTANCE], "shop");
        assert_eq!(rec[LABEL_COMPONENT], "inventory");
        assert_eq!(rec[LABEL_PART_OF], "kartflow");
        assert_eq!(rec[LABEL_MANAGED_BY], "kartflow-operator");
        assert_eq!(rec[LABEL_VERSION], "0.1.0");
        let sel = selector_labels("shop", Component::Inventory);
        assert_eq!(sel.len(), 3);
        assert!(!sel.contains_key(LABEL_VERSION));
        assert!(sel.iter().all(|(k, v)| rec.get(k) == Some(v)));
        let untagged = recommended_labels("shop", Component::Cdc, "kartflow/worker");
        assert!(!untagged.contains_key(LABEL_VERSION));
    }

    #[test]
    fn overrides_add_and_replace_but_never_touch_the_selector() {
        let rec = recommended_labels("shop", Component::ReadModel, "w:1");
        let overrides = BTreeMap::from([
            ("team".to_owned(), "inventory".to_owned()),
            (LABEL_PART_OF.to_owned(), "shop-platform".to_owned()),
            (LABEL_INSTANCE.to_owned(), "hijack".to_owned()),
            (LABEL_COMPONENT.to_owned(), "hijack".to_owned()),
            (LABEL_NAME.to_owned(), "hijack".to_owned()),
        ]);
        let labels = pod_labels(&rec, &overrides);
        assert_eq!(labels["team"], "inventory");
        assert_eq!(labels[LABEL_PART_OF], "shop-platform");
        assert_eq!(labels[LABEL_INSTANCE], "shop");
        assert_eq!(labels[LABEL_COMPONENT], "read-model");
        assert_eq!(labels[LABEL_NAME], "kartflow-worker");
    }

    proptest! {
        #[test]
        fn selector_is_a_subset_of_pod_labels_for_any_overrides(
            overrides in proptest::collection::btree_map(
                prop_oneof![
                    Just(LABEL_NAME.to_owned()),
                    Just(LABEL_INSTANCE.to_owned()),
                    Just(LABEL_COMPONENT.to_owned()),
                    Just(LABEL_VERSION.to_owned()),
                    "[a-z./-]{1,20}",
                ],
                "[a-z0-9]{0,10}",
                0..8,
            ),
            image in "[a-z/]{1,10}(:[a-z0-9.]{1,8})?",
        ) {
            let rec = recommended_labels("shop", Component::Inventory, &image);
            let labels = pod_labels(&rec, &overrides);
            for (k, v) in selector_labels("shop", Component::Inventory) {
                prop_assert_eq!(labels.get(&k), Some(&v));
            }
        }
    }
}
