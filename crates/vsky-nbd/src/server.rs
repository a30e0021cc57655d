//! The accept loop, per-connection tasks and graceful shutdown.
//!
//! [`serve`] is the crate's server entry point, shaped like mini-redis's
//! `server::run`: it takes a bound listener and a shutdown future, so the
//! agent and the tests drive the same code. A semaphore caps live connections
//! (the accept loop waits for a slot before accepting). Shutdown is a watch
//! channel whose sender is dropped: every connection sees it, stops reading
//! new requests, finishes and answers the ones in flight, syncs, and closes.
//! (Once past the handshake, a connection is served by a thread of its own;
//! its task here only supervises it, see `connection`.)
//! The connection tasks live in a `JoinSet`, so `serve` knows when the last
//! one is done, and can abort stragglers (a client that never reads its
//! replies) once `shutdown_grace` has passed.

use std::future::Future;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::buffer::BufferPool;
use crate::connection::{self, End, Limits};
use crate::error::NbdError;
use crate::export::ExportTable;
use crate::handshake;
use crate::proto;
use crate::shutdown::Shutdown;

/// Limits and timeouts of one [`serve`] call.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; further clients wait in the listen backlog.
    /// Each connection past its handshake has an OS thread of its own.
    pub max_connections: usize,
    /// Requests one connection may have in flight. The Linux kernel client
    /// queues up to 128 per connection, so lower values throttle it.
    pub max_inflight_per_connection: usize,
    /// Payload bytes (WRITE data received, READ data not yet sent) one
    /// connection may hold in memory. Raised to the 32 MiB maximum request if
    /// set lower, so that any valid request can run.
    pub max_inflight_bytes_per_connection: usize,
    /// Time a client gets from connecting to selecting an export.
    pub handshake_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown starts; later,
    /// their connections are cut.
    pub shutdown_grace: Duration,
    /// Idle time before TCP keepalive probes start, so a head that crashed
    /// without closing its sockets frees its connection slots.
    pub keepalive_idle: Duration,
    /// Payload buffers the server keeps for reuse between requests, shared by
    /// all connections. Reuse avoids page-faulting fresh memory for every
    /// large request; this caps what an idle server keeps.
    pub buffer_pool_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // One storage agent serves every leg on its disks to every head;
            // 1024 covers a large host with a connection per leg per head.
            max_connections: 1024,
            max_inflight_per_connection: 128,
            max_inflight_bytes_per_connection: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(30),
            // Enough for a few connections with deep queues of 256 KiB requests.
            buffer_pool_bytes: 128 * 1024 * 1024,
        }
    }
}

impl ServerConfig {
    fn limits(&self) -> std::io::Result<Limits> {
        if self.max_connections == 0 || self.max_inflight_per_connection == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "ServerConfig: max_connections and max_inflight_per_connection must be at least 1",
            ));
        }
        Ok(Limits {
            max_inflight: self.max_inflight_per_connection,
            max_inflight_bytes: self
                .max_inflight_bytes_per_connection
                .max(proto::MAX_PAYLOAD_BYTES as usize),
        })
    }
}

/// Serves NBD on `listener` until `shutdown` completes, then drains: stops
/// accepting, lets in-flight requests finish and reply, and closes every
/// connection. Returns an error only for an invalid `config`; failures of
/// single connections are logged and never stop the server.
pub async fn serve(
    listener: TcpListener,
    exports: ExportTable,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let limits = config.limits()?;
    let buffers = std::sync::Arc::new(BufferPool::new(config.buffer_pool_bytes));
    let slots = std::sync::Arc::new(Semaphore::new(config.max_connections));
    // Dropping the sender is the shutdown broadcast.
    let (shutdown_sender, shutdown_receiver) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut accept_backoff = Backoff::new();
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = std::sync::Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or memory is usually transient; a
                    // storage server keeps trying rather than exiting.
                    let delay = accept_backoff.next();
                    tracing::warn!(%error, ?delay, "accept failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            },
        };
        accept_backoff.reset();
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let task = serve_connection(
            stream,
            exports.clone(),
            config.clone(),
            limits,
            std::sync::Arc::clone(&buffers),
            Shutdown::new(shutdown_receiver.clone()),
        );
        connections.spawn(
            async move {
                task.await;
                drop(slot);
            }
            .instrument(tracing::info_span!("nbd_connection", %peer)),
        );
    }

    tracing::info!(
        connections = connections.len(),
        "NBD server shutting down; draining connections"
    );
    drop(shutdown_sender);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown grace period over; cutting remaining NBD connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    mut stream: TcpStream,
    exports: ExportTable,
    config: ServerConfig,
    limits: Limits,
    buffers: std::sync::Arc<BufferPool>,
    mut shutdown: Shutdown,
) {
    if let Err(error) = tune_socket(&stream, &config) {
        tracing::debug!(%error, "could not set TCP options");
    }
    let negotiated = tokio::select! {
        () = shutdown.wait() => return,
        negotiated = tokio::time::timeout(
            config.handshake_timeout,
            handshake::negotiate(&mut stream, &exports),
        ) => negotiated,
    };
    let session = match negotiated {
        Ok(Ok(Some(session))) => session,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::info!(%error, "NBD handshake failed");
            return;
        }
        Err(_elapsed) => {
            let error = NbdError::HandshakeTimeout {
                seconds: config.handshake_timeout.as_secs(),
            };
            tracing::info!(%error, "NBD handshake failed");
            return;
        }
    };
    tracing::debug!("NBD transmission started");
    match connection::run(stream, session, limits, buffers, &mut shutdown).await {
        Ok(End::Revoked) => tracing::info!("export removed; NBD connection closed"),
        Ok(end) => tracing::debug!(?end, "NBD connection ended"),
        Err(error) => tracing::info!(%error, "NBD connection closed on error"),
    }
}

fn tune_socket(stream: &TcpStream, config: &ServerConfig) -> std::io::Result<()> {
    // Each reply leaves in one sendmsg of header and data; Nagle would only
    // hold back the next one.
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(config.keepalive_idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Exponential backoff for accept errors, capped so the server recovers
/// promptly once descriptors free up.
struct Backoff {
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self { delay: Self::FIRST }
    }

    fn next(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }

    fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves invalid limits are refused and the byte budget is raised to fit
    // one maximal request.
    #[test]
    fn config_limits_are_checked() {
        let zero = ServerConfig {
            max_connections: 0,
            ..ServerConfig::default()
        };
        assert!(zero.limits().is_err());
        let tiny_budget = ServerConfig {
            max_inflight_bytes_per_connection: 1,
            ..ServerConfig::default()
        };
        assert_eq!(
            tiny_budget.limits().expect("valid").max_inflight_bytes,
            proto::MAX_PAYLOAD_BYTES as usize
        );
    }

    // Proves the backoff doubles up to its cap and resets.
    #[test]
    fn backoff_is_bounded() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next()).collect();
        assert_eq!(delays[0], Backoff::FIRST);
        assert_eq!(delays[1], Backoff::FIRST * 2);
        assert_eq!(*delays.last().expect("some"), Backoff::MAX);
        backoff.reset();
        assert_eq!(backoff.next(), Backoff::FIRST);
    }
}
