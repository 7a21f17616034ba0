//! Shutdown on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C at a terminal), as a token
//! every part of a role can await (async tasks) or poll (a blocking processing loop).

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

/// A shutdown request shared by clones. Once requested it stays requested.
#[derive(Debug, Clone)]
pub struct Shutdown {
    // A watch channel rather than a flag: pollers read it without blocking, async tasks await it.
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A token nobody has requested yet; [`Shutdown::request`] is the only trigger.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Self { tx: Arc::new(tx) }
    }

    /// A token requested at the first SIGTERM or SIGINT, by a task on `runtime`. Call it once the
    /// start-up that a signal should simply abort (by the default action) is over: from then on
    /// the signal no longer kills the process, and the role must poll or await the token.
    pub fn on_signals(runtime: &tokio::runtime::Handle) -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        runtime.spawn(async move {
            let signal = wait_for_signal().await;
            info!(signal, "shutdown requested");
            trigger.request();
        });
        shutdown
    }

    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// For blocking loops: check between units of work.
    pub fn is_requested(&self) -> bool {
        *self.tx.borrow()
    }

    /// For async tasks: completes once shutdown is requested (at once if it already was).
    pub async fn requested(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|requested| *requested).await;
    }
}

/// Waits for SIGTERM or SIGINT and names the one that came.
async fn wait_for_signal() -> &'static str {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_request_is_seen_by_every_clone_and_stays() {
        let shutdown = Shutdown::new();
        let other = shutdown.clone();
        assert!(!shutdown.is_requested());
        other.request();
        assert!(shutdown.is_requested());
        other.request();
        assert!(shutdown.is_requested());
    }

    #[tokio::test]
    async fn waiters_wake_on_request_and_late_waiters_return_at_once() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.requested().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        shutdown.request();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .expect("the waiter does not panic");
        tokio::time::timeout(Duration::from_secs(5), shutdown.requested())
            .await
            .expect("an already requested shutdown returns at once");
    }
}
