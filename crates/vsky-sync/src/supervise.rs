//! Long-running tasks that survive their own panics.
//!
//! The manager's recovery loop and an agent's heartbeat, health and scrub
//! loops run for the life of the process. A panic in one of them (a bug)
//! would otherwise end that loop for good while the rest of the process —
//! its HTTP API above all — keeps answering, so nobody would notice that
//! failures are no longer handled. [`supervise`] runs such a loop as a
//! tokio task and, when it panics, logs the cause at error level, counts
//! the restart ([`restarts`], exported as a metric) and starts it again
//! after a back-off, so a loop that panics at once every time costs a log
//! line every [`MAX_BACKOFF`], not a busy loop.
//!
//! Restarting is right for these loops because each pass starts from the
//! shared state (the cluster records, the desired state, the kernel's
//! devices) rather than from anything the panicked pass held. The
//! process's main loop (an agent's reconcile loop, the manager's HTTP
//! server) is not supervised here: a panic there ends the process with a
//! non-zero status and systemd restarts it (`Restart=on-failure` in
//! `packaging/systemd/`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The first wait before a restart.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between restarts of a loop that keeps panicking.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before it panicked starts again after
/// [`FIRST_BACKOFF`]: its panic is a new one, not the same one repeating.
const STABLE_RUN: Duration = Duration::from_secs(60);

static RESTARTS: AtomicU64 = AtomicU64::new(0);

/// How many times a supervised task of this process panicked and was
/// restarted.
pub fn restarts() -> u64 {
    RESTARTS.load(Ordering::Relaxed)
}

/// Runs `start()` as a task until it returns, restarting it after each
/// panic. Returns when the task returns (its own stop condition) or is
/// cancelled. Dropping or aborting the future returned here also aborts the
/// task it runs, so `tokio::spawn(supervise(..)).abort()` stops both.
pub async fn supervise<F, Fut>(name: &'static str, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(start()));
        match task.join().await {
            Ok(()) => return,
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                let cause = panic_message(e.into_panic());
                RESTARTS.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() >= STABLE_RUN {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(
                    task = name,
                    cause = %cause,
                    restart_in_ms = backoff.as_millis() as u64,
                    "background task panicked; restarting it (this is a bug: please report it with this log line)"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Runs blocking work on tokio's blocking pool and returns its result; a
/// panic in `f` continues in the caller, so a supervised loop that does its
/// work in blocking sections is restarted rather than silently skipping a
/// pass (`let _ = spawn_blocking(..).await` would swallow the panic).
pub async fn blocking<R, F>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The blocking pool only cancels at runtime shutdown; nothing waits
        // for this result then.
        Err(e) => panic!("blocking section cancelled: {e}"),
    }
}

/// A task handle that aborts its task when dropped: the supervisor's own
/// cancellation must not leave the loop running unsupervised.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn join(&mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The text a panic carried (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_until_it_returns() {
        let runs = Arc::new(AtomicU32::new(0));
        let before = restarts();
        let counted = runs.clone();
        supervise("test", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 3 {
                    panic!("injected");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert!(restarts() >= before + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_the_supervisor_aborts_its_task() {
        let alive = Arc::new(AtomicU32::new(0));
        let counted = alive.clone();
        let supervisor = tokio::spawn(supervise("test", move || {
            let alive = counted.clone();
            async move {
                loop {
                    alive.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        supervisor.abort();
        let _ = supervisor.await;
        let seen = alive.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(alive.load(Ordering::SeqCst), seen, "the loop kept running");
    }

    #[tokio::test]
    async fn a_panic_in_a_blocking_section_reaches_the_supervisor() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervise("test", move || {
            let runs = counted.clone();
            async move {
                let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
                blocking(move || assert!(!first, "injected")).await;
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(7u8)), "a panic without a message");
    }
}
