//! A connection's view of the server's shutdown broadcast. Its own module so
//! that `server` (which starts the broadcast) and `connection` (which waits
//! on it) both depend on it instead of on each other.

use tokio::sync::watch;

/// A connection's view of the shutdown broadcast: a watch channel nobody
/// sends on, whose sender `serve` drops to begin shutdown.
pub(crate) struct Shutdown {
    receiver: watch::Receiver<()>,
}

impl Shutdown {
    pub(crate) fn new(receiver: watch::Receiver<()>) -> Self {
        Self { receiver }
    }

    /// Completes once shutdown has begun (and immediately thereafter).
    pub async fn wait(&mut self) {
        // Nobody sends; `changed` fails once the sender is dropped.
        while self.receiver.changed().await.is_ok() {}
    }
}
