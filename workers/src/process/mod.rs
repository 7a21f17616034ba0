//! Scaffolding every worker role shares, so a role's folder holds only its own logic: the admin
//! HTTP server ([`admin`]), shutdown on SIGTERM/SIGINT ([`shutdown`]), the tokio runtime they run
//! on and the thread a blocking processing loop runs on. Logging is `kartflow_wire::telemetry`,
//! set up once by the binary; Kafka client settings and topic checks are in [`crate::kafka`].
//!
//! A role's `run` with a blocking loop (as `inventory::runtime::run` does):
//!
//! ```text
//! let runtime = process::runtime(1)?;
//! // start-up checks: a signal here still kills the process
//! let readiness = Readiness::new("not ready: waiting for …");
//! let router = admin::router(readiness.clone(), metrics_registry, role_routes);
//! runtime.block_on(admin::serve(listen, router))?;
//! let shutdown = Shutdown::on_signals(runtime.handle());
//! // the loop calls readiness.set(..) and polls shutdown.is_requested()
//! let result = process::run_on_thread("role-loop", move || role_loop(readiness, shutdown))?;
//! process::finish(runtime);
//! ```
//!
//! An async role does the same from inside the runtime: `admin::serve(..).await` and
//! `shutdown.requested().await`.

pub mod admin;
pub mod shutdown;

use std::time::Duration;

use thiserror::Error;
use tokio::runtime::Runtime;

pub use admin::{AdminError, Readiness};
pub use shutdown::Shutdown;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    ControlToken(#[from] admin::ControlTokenError),
    #[error("processing thread: {0}")]
    Thread(std::io::Error),
    #[error("the processing thread panicked")]
    Panicked,
}

/// The worker's identity: the one given (`--instance-id`, the pod name on Kubernetes), else the
/// host name, else one made from the process id.
pub fn instance_name(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("worker-{}", std::process::id()))
}

/// A multi-thread runtime with `worker_threads` workers. One is enough when the processing runs
/// on its own thread and the runtime only serves the admin API and occasional I/O.
pub fn runtime(worker_threads: usize) -> Result<Runtime, ProcessError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .map_err(ProcessError::Runtime)
}

/// Runs a blocking loop on a thread named `name` (it shows in logs and `top -H`) and waits for
/// its result. Blocking Kafka clients must not run on the runtime's workers.
pub fn run_on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProcessError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(ProcessError::Thread)?
        .join()
        .map_err(|_| ProcessError::Panicked)
}

/// Stops the runtime, giving in-flight admin requests (a savepoint reply, say) a moment to finish.
pub fn finish(runtime: Runtime) {
    runtime.shutdown_timeout(Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_result_comes_back_and_a_panic_is_an_error() {
        let name = run_on_thread("named-loop", || {
            std::thread::current().name().map(str::to_owned)
        })
        .expect("the thread runs");
        assert_eq!(name.as_deref(), Some("named-loop"));
        let panicked = run_on_thread::<()>("panicking-loop", || panic!("boom"));
        assert!(matches!(panicked, Err(ProcessError::Panicked)));
    }
}
