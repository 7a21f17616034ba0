//! Access to a worker's control API (savepoints: it changes state): a bearer token in a Secret
//! the worker mounts, and a NetworkPolicy that opens the control port to the operator's pods
//! only while the admin port (health, readiness, metrics) stays open to everyone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use super::pod::{self, Mount};

/// The worker's control port (`controlListen`).
pub const CONTROL_LISTEN: std::net::SocketAddr = kartflow_wire::config::DEFAULT_CONTROL_LISTEN;
pub const CONTROL_PORT: i32 = CONTROL_LISTEN.port() as i32;
pub const CONTROL_PORT_NAME: &str = "control";
/// The Secret key holding the token, and where the worker reads it.
pub const TOKEN_KEY: &str = "token";
pub const TOKEN_DIR: &str = "/etc/kartflow/control-token";
pub const TOKEN_FILE: &str = "/etc/kartflow/control-token/token";

/// The operator's own pods, the only clients of the control port: its namespace and the labels
/// that select its pods (the chart passes both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPeer {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
}

impl ControlPeer {
    /// `k=v,k=v` (a label selector of equality terms) into labels; `None` when empty.
    pub fn parse_labels(selector: &str) -> Result<BTreeMap<String, String>, String> {
        selector
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|term| {
                term.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                    .ok_or_else(|| format!("{term:?} is not key=value"))
            })
            .collect()
    }
}

/// `<worker>-control-token` with `token`, owned by the CR. Created once (the controller keeps an
/// existing token; it is never rendered from the spec).
pub(crate) fn token_secret(
    owner: &Owner,
    name: String,
    labels: BTreeMap<String, String>,
    token: String,
) -> Secret {
    Secret {
        metadata: owner.meta(name, labels),
        type_: Some("Opaque".to_owned()),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token)])),
        ..Secret::default()
    }
}

/// The token Secret, read-only at [`TOKEN_DIR`].
pub fn token_mount(secret: &str) -> Mount {
    pod::secret_key_mount("control-token", secret, TOKEN_KEY, TOKEN_DIR, Some(0o440))
}

/// Ingress to the pods of `selector`: the admin port from anywhere (probes, Prometheus), the
/// control port from `peer`'s pods only, nothing else.
pub(crate) fn network_policy(
    owner: &Owner,
    name: String,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    peer: &ControlPeer,
) -> NetworkPolicy {
    let port = |p: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(p.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                peer.namespace.clone(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(peer.pod_labels.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: owner.meta(name, labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(pod::ADMIN_PORT_NAME)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![port(CONTROL_PORT_NAME)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// A new token: 32 random bytes as hex.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_labels_parse_and_name_a_bad_term() {
        assert_eq!(
            ControlPeer::parse_labels("a=b, c = d,").expect("valid"),
            BTreeMap::from([("a".into(), "b".into()), ("c".into(), "d".into())])
        );
        assert_eq!(
            ControlPeer::parse_labels("").expect("empty"),
            BTreeMap::new()
        );
        let err = ControlPeer::parse_labels("a=b,c").expect_err("no value");
        assert!(err.contains("\"c\""), "{err}");
        assert!(ControlPeer::parse_labels("=x").is_err());
    }

    #[test]
    fn tokens_are_long_and_differ() {
        let a = new_token().expect("random");
        let b = new_token().expect("random");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
