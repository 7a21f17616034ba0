//! Reconcile errors, classified: a permanent error (the spec is wrong) is reported as a condition
//! and an Event and waits for the user to change the object; a transient one (apiserver,
//! database, a missing dependency) is retried with back-off. Neither stalls other objects.

use std::string::FromUtf8Error;

use thiserror::Error;

use crate::children::BuildError;
use crate::slot_guard::{GuardError, PolicyError};

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Guard(#[from] GuardError),
    /// Something the object refers to is missing, or lacks what it needs.
    #[error("{what}: {problem}")]
    Dependency { what: String, problem: String },
    /// A value of the credentials Secret is not text.
    #[error("Secret {secret}: the value of key {key:?} is not UTF-8 text")]
    SecretNotText {
        secret: String,
        key: &'static str,
        #[source]
        source: FromUtf8Error,
    },
    /// Deletion must drop the slot but cannot reach the database.
    #[error(
        "dropping slot {slot} on delete: {source}. Fix the connection, or set \
         spec.slot.dropOnDelete to false to delete the CdcSource without dropping the slot"
    )]
    CleanupUnreachable {
        slot: String,
        #[source]
        source: Box<Error>,
    },
    /// The guard was about to end a reader or drop a slot, but this replica may no longer lead.
    #[error("not acting on the slot: {0}")]
    NotLeading(String),
    /// Adding or removing our finalizer failed (its apply and cleanup errors are unwrapped).
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The user must change the object; retrying cannot help. The one rule of the retry
    /// policy, the reconcile metrics and failure reporting.
    pub fn is_permanent(&self) -> bool {
        self.class().1
    }

    /// A CamelCase reason for conditions, Events and the errors metric.
    pub fn reason(&self) -> &'static str {
        self.class().0
    }

    /// `(reason, permanent)`: one table, so a reason never changes its retry class.
    fn class(&self) -> (&'static str, bool) {
        match self {
            // A worker config the worker would refuse was built from a value of the spec.
            Error::Build(
                BuildError::InvalidSpec { .. }
                | BuildError::InvalidUnit { .. }
                | BuildError::WorkerConfig(_),
            )
            | Error::Policy(_) => ("InvalidSpec", true),
            // The spec may be right: the pipeline can still be created.
            Error::Build(BuildError::PipelineNotFound { .. }) => ("PipelineNotFound", false),
            // Missing metadata or a config that fails to render: not the user's spec.
            Error::Build(_) => ("BuildFailed", false),
            // 422: the apiserver refused a child built from this spec (e.g. a bad resource
            // quantity in a pod override): fixing the spec is the only way out.
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => ("ChildRejected", true),
            Error::Kube(_) => ("KubernetesApiError", false),
            // The TLS mode, the tables or the slot's name: waiting will not fix them.
            Error::Guard(g) if g.is_spec_error() => ("InvalidSpec", true),
            Error::Guard(_) => ("PostgresError", false),
            Error::Dependency { .. }
            | Error::SecretNotText { .. }
            | Error::CleanupUnreachable { .. } => ("DependencyMissing", false),
            Error::Finalizer(_) => ("FinalizerFailed", false),
            Error::NotLeading(_) => ("NotLeading", false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::crd::cdc_source::SlotGuard;
    use crate::slot_guard::GuardPolicy;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("refused", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    fn policy_error() -> PolicyError {
        let spec = SlotGuard {
            check_interval: "0s".into(),
            ..SlotGuard::default()
        };
        match GuardPolicy::from_spec(&spec) {
            Err(e) => e,
            Ok(p) => panic!("0s must be refused: {p:?}"),
        }
    }

    fn not_utf8() -> FromUtf8Error {
        match String::from_utf8(vec![0xff]) {
            Err(e) => e,
            Ok(s) => panic!("{s:?} is not UTF-8"),
        }
    }

    #[test]
    fn one_table_says_reason_and_permanence() {
        let cases: Vec<(Error, &str, bool)> = vec![
            (
                BuildError::invalid("spec.x", "bad").into(),
                "InvalidSpec",
                true,
            ),
            (policy_error().into(), "InvalidSpec", true),
            (
                BuildError::InvalidUnit {
                    field: "spec.alerts.staleAfter".into(),
                    source: crate::units::UnitError::Duration { value: "1w".into() },
                }
                .into(),
                "InvalidSpec",
                true,
            ),
            (
                BuildError::WorkerConfig(kartflow_wire::config::ConfigError::invalid(
                    "topics.dlq",
                    "must not be empty",
                ))
                .into(),
                "InvalidSpec",
                true,
            ),
            (
                BuildError::PipelineNotFound { name: "p".into() }.into(),
                "PipelineNotFound",
                false,
            ),
            (
                BuildError::MissingMetadata {
                    what: "metadata.uid",
                }
                .into(),
                "BuildFailed",
                false,
            ),
            (api_error(422).into(), "ChildRejected", true),
            (api_error(409).into(), "KubernetesApiError", false),
            (
                GuardError::NoTables {
                    publication: "p".into(),
                }
                .into(),
                "InvalidSpec",
                true,
            ),
            (
                GuardError::SlotBusy {
                    slot: "s".into(),
                    attempts: 5,
                    last_pid: None,
                }
                .into(),
                "PostgresError",
                false,
            ),
            (
                Error::Dependency {
                    what: "Secret ns/s".into(),
                    problem: "not found".into(),
                },
                "DependencyMissing",
                false,
            ),
            (
                Error::SecretNotText {
                    secret: "ns/s".into(),
                    key: "password",
                    source: not_utf8(),
                },
                "DependencyMissing",
                false,
            ),
            (
                Error::CleanupUnreachable {
                    slot: "s".into(),
                    source: Box::new(api_error(503).into()),
                },
                "DependencyMissing",
                false,
            ),
            (
                Error::Finalizer(Box::new(kube::runtime::finalizer::Error::AddFinalizer(
                    api_error(409),
                ))),
                "FinalizerFailed",
                false,
            ),
        ];
        for (err, reason, permanent) in cases {
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(err.is_permanent(), permanent, "{err}");
        }
    }

    #[test]
    fn wrapped_errors_keep_their_cause() {
        let e = Error::CleanupUnreachable {
            slot: "s".into(),
            source: Box::new(api_error(503).into()),
        };
        let cause = e.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.starts_with("Kubernetes API: ApiError"), "{cause}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "dropping slot s on delete: {cause}. Fix the connection"
            )),
            "{text}"
        );

        let e = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::RemoveFinalizer(
            api_error(409),
        )));
        assert!(
            e.to_string().starts_with("failed to remove finalizer"),
            "{e}"
        );
        let root = e.source().and_then(|f| f.source());
        assert!(
            matches!(
                root.and_then(|r| r.downcast_ref::<kube::Error>()),
                Some(kube::Error::Api(s)) if s.code == 409
            ),
            "{root:?}"
        );

        let e = Error::SecretNotText {
            secret: "ns/s".into(),
            key: "password",
            source: not_utf8(),
        };
        assert!(
            e.source()
                .is_some_and(|s| s.downcast_ref::<FromUtf8Error>().is_some()),
            "{e}"
        );
    }
}
