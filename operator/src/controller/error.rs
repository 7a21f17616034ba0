//! Reconcile errors, classified: a permanent error (the spec is wrong) is reported as a condition
//! and an Event and waits for the user to change the object; a transient one (apiserver,
//! database, a missing dependency) is retried with back-off. Neither stalls other objects.

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
    #[error("{what}: {problem}")]
    Dependency { what: String, problem: String },
    #[error("{0}")]
    Finalizer(String),
}

impl Error {
    /// The user must change the object; retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Build(BuildError::InvalidSpec { .. }) | Error::Policy(_) => true,
            // 422: the apiserver refused a child built from this spec (e.g. a bad resource
            // quantity in a pod override): fixing the spec is the only way out.
            Error::Kube(kube::Error::Api(s)) => s.code == 422,
            _ => false,
        }
    }

    /// A CamelCase reason for conditions, Events and the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Build(BuildError::InvalidSpec { .. }) | Error::Policy(_) => "InvalidSpec",
            Error::Build(BuildError::PipelineNotFound { .. }) => "PipelineNotFound",
            Error::Build(_) => "BuildFailed",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "ChildRejected",
            Error::Kube(_) => "KubernetesApiError",
            Error::Guard(_) => "PostgresError",
            Error::Dependency { .. } => "DependencyMissing",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
}
