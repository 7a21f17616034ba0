//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and only
//! one writes. The leader renews halfway through the lease; a standby takes over once it has
//! expired, so a killed leader is replaced within one lease duration. A clean shutdown releases
//! the Lease, and the standby takes over at once. A leader that cannot renew stops itself
//! before the Lease expires ([`Watchdog`]).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::{Api, Client};
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
    #[error("--lease-duration-seconds must be at least 5, got {0}")]
    Duration(u64),
}

/// The leadership state (`true` while leading) and the task renewing the Lease; dropping the
/// receiver ends the task, which releases the Lease.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Renew halfway through the lease, so the [`Watchdog`] sees a renewal well before its
/// deadline.
fn grace(duration: u64) -> u64 {
    (duration / 2).max(1)
}

pub async fn start(client: Client, settings: &LeaderSettings) -> Result<Election, LeaderError> {
    if settings.duration_seconds < 5 {
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

/// The leader's own check that it still holds the Lease. The election task keeps reporting
/// "leading" while its renewals fail (it only logs and retries), but a standby may take the
/// Lease once it expires: the leader must stop writing before that. The watchdog reads the
/// Lease every tenth of its duration and declares leadership lost when another identity holds
/// it, or when no renewal has been seen for nine tenths of the duration.
#[derive(Debug)]
pub struct Watchdog {
    identity: String,
    duration: Duration,
    last_renew: Option<MicroTime>,
    confirmed_at: Instant,
}

impl Watchdog {
    pub fn new(identity: &str, duration_seconds: u64, now: Instant) -> Self {
        Self {
            identity: identity.to_owned(),
            duration: Duration::from_secs(duration_seconds),
            last_renew: None,
            confirmed_at: now,
        }
    }

    pub fn poll_interval(&self) -> Duration {
        self.duration / 10
    }

    fn deadline(&self) -> Duration {
        self.duration - self.poll_interval()
    }

    /// What a read of the Lease showed; `Err` says why leadership is lost.
    pub fn observe(&mut self, spec: Option<&LeaseSpec>, now: Instant) -> Result<(), String> {
        let holder = spec.and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return Err(format!(
                "the Lease is now held by {}",
                holder.unwrap_or("nobody")
            ));
        }
        let renew = spec.and_then(|s| s.renew_time.clone());
        if renew != self.last_renew {
            self.last_renew = renew;
            self.confirmed_at = now;
        }
        self.check(now)
    }

    /// A read of the Lease failed: leadership holds only until the deadline.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let quiet = now.saturating_duration_since(self.confirmed_at);
        if quiet > self.deadline() {
            return Err(format!(
                "no renewal of the Lease seen for {quiet:.1?} (lease {:?})",
                self.duration
            ));
        }
        Ok(())
    }
}

/// A leader re-reads its Lease before anything it cannot take back (ending a backend, dropping
/// a slot): a process paused past its lease (SIGSTOP, a long GC-like stall, a frozen VM) may
/// resume believing it leads while a standby already acts.
#[derive(Clone)]
pub struct LeaseCheck {
    api: Api<Lease>,
    lease_name: String,
    identity: String,
    duration: Duration,
}

impl LeaseCheck {
    pub fn new(client: Client, settings: &LeaderSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            lease_name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            duration: Duration::from_secs(settings.duration_seconds),
        }
    }

    /// `Ok` when this replica holds the Lease with at least a fifth of its duration to spare.
    pub async fn confirm(&self) -> Result<(), String> {
        let lease = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| format!("cannot read the leader Lease {}: {e}", self.lease_name))?;
        still_holds(
            lease.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            self.duration,
            jiff::Timestamp::now(),
        )
    }
}

/// Whether `identity` holds the Lease `spec` at `now` with a margin of a fifth of `duration`
/// before it expires (the Lease's own duration wins when set).
pub fn still_holds(
    spec: Option<&LeaseSpec>,
    identity: &str,
    duration: Duration,
    now: jiff::Timestamp,
) -> Result<(), String> {
    let holder = spec.and_then(|s| s.holder_identity.as_deref());
    if holder != Some(identity) {
        return Err(format!(
            "this replica no longer leads: the Lease is held by {}",
            holder.unwrap_or("nobody")
        ));
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|d| u64::try_from(d).ok())
        .map_or(duration, Duration::from_secs);
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0)
        .ok_or("the Lease has no renew time")?;
    let left = duration.saturating_sub(duration / 5);
    let age = now.duration_since(renewed);
    let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
    if age > left {
        return Err(format!(
            "this replica's Lease was last renewed {age:.1?} ago (lease {duration:?}): too close \
             to expiry to act"
        ));
    }
    Ok(())
}

/// Resolves when this replica must stop leading, with the reason.
pub async fn watch_lease(client: Client, settings: &LeaderSettings) -> String {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut dog = Watchdog::new(
        &settings.identity,
        settings.duration_seconds,
        Instant::now(),
    );
    loop {
        tokio::time::sleep(dog.poll_interval()).await;
        let now = Instant::now();
        let verdict = match api.get_opt(&settings.lease_name).await {
            Ok(lease) => dog.observe(lease.as_ref().and_then(|l| l.spec.as_ref()), now),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader Lease");
                dog.check(now)
            }
        };
        if let Err(reason) = verdict {
            return reason;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_well_before_the_watchdog_deadline() {
        for duration in [5u64, 8, 15, 30, 300] {
            let renew_every = Duration::from_secs(duration - grace(duration));
            let dog = Watchdog::new("me", duration, Instant::now());
            // A renewal is seen at most one poll after it happens.
            assert!(
                renew_every + dog.poll_interval() < dog.deadline(),
                "lease {duration}s: renewal every {renew_every:?} must be seen before {:?}",
                dog.deadline()
            );
            assert!(dog.deadline() < Duration::from_secs(duration));
        }
    }

    fn spec(holder: &str, renew_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                jiff::Timestamp::from_second(renew_secs).expect("time"),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn destructive_work_needs_a_fresh_lease_held_by_us() {
        let t = |secs| jiff::Timestamp::from_second(secs).expect("time");
        let d = Duration::from_secs(10);
        let held = spec("me", 100);
        // (lease, now, ok)
        let cases = [
            (Some(&held), 101, true),
            (Some(&held), 108, true),
            // 8 s of 10 used: less than a fifth left.
            (Some(&held), 109, false),
            // Paused past the lease: another replica has it.
            (Some(&spec("other", 120)), 121, false),
            (None, 101, false),
        ];
        for (lease, now, ok) in cases {
            let got = still_holds(lease, "me", d, t(now));
            assert_eq!(got.is_ok(), ok, "{lease:?} at {now}: {got:?}");
        }
        let long = LeaseSpec {
            lease_duration_seconds: Some(60),
            ..spec("me", 100)
        };
        assert!(
            still_holds(Some(&long), "me", d, t(140)).is_ok(),
            "the Lease's duration wins"
        );
    }

    #[test]
    fn watchdog_verdicts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut dog = Watchdog::new("me", 10, t0);
        assert!(dog.observe(Some(&spec("me", 100)), t0 + s(1)).is_ok());
        // Renewed 5 s later: fine.
        assert!(dog.observe(Some(&spec("me", 105)), t0 + s(6)).is_ok());
        // Unreadable for a while, still within the deadline (9 s after the last renewal seen).
        assert!(dog.check(t0 + s(14)).is_ok());
        // No renewal seen for more than 9 s: lost.
        let lost = dog.observe(Some(&spec("me", 105)), t0 + s(16));
        assert!(lost.is_err_and(|e| e.contains("no renewal")));
        // Another holder: lost at once.
        let mut dog = Watchdog::new("me", 10, t0);
        let taken = dog.observe(Some(&spec("other", 100)), t0 + s(1));
        assert!(taken.is_err_and(|e| e.contains("held by other")));
        let gone = dog.observe(None, t0 + s(1));
        assert!(gone.is_err_and(|e| e.contains("nobody")));
    }
}
