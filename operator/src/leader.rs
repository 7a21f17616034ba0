//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and only
//! one writes. The leader renews `grace` seconds before the lease expires; a standby takes over
//! once it has expired, so a killed leader is replaced within one lease duration. A clean
//! shutdown releases the Lease, and the standby takes over at once.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct LeaderSettings {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per replica: the pod name on Kubernetes.
    pub identity: String,
    pub duration_seconds: u64,
}

#[derive(Debug, Error)]
pub enum LeaderError {
    #[error(
        "cannot use Lease {namespace}/{name} for leader election: {source}. The operator's \
         service account needs get, create, update and patch on leases in {namespace} (the Helm \
         chart grants them)"
    )]
    Lease {
        namespace: String,
        name: String,
        source: LeaseManagerError,
    },
    #[error("--lease-duration-seconds must be at least 3, got {0}")]
    Duration(u64),
}

/// The leadership state (`true` while leading) and the task renewing the Lease; dropping the
/// receiver ends the task, which releases the Lease.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Renew well before expiry: a third of the duration, at least one second.
fn grace(duration: u64) -> u64 {
    (duration / 3).max(1)
}

pub async fn start(client: Client, settings: &LeaderSettings) -> Result<Election, LeaderError> {
    if settings.duration_seconds < 3 {
        return Err(LeaderError::Duration(settings.duration_seconds));
    }
    let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds)
        .with_grace(grace(settings.duration_seconds))
        .with_field_manager(format!("kartflow-operator-{}", settings.identity))
        .build()
        .await
        .map_err(|source| LeaderError::Lease {
            namespace: settings.namespace.clone(),
            name: settings.lease_name.clone(),
            source,
        })?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}

#[cfg(test)]
mod tests {
    use super::grace;

    #[test]
    fn renewal_leaves_time_before_expiry() {
        for (duration, want) in [(3, 1), (15, 5), (30, 10), (4, 1)] {
            assert_eq!(grace(duration), want);
            assert!(grace(duration) < duration);
        }
    }
}
