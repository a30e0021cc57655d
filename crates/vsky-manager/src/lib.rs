//! The VastSky manager: holds the cluster's desired state and serves it.
//!
//! The manager owns the cluster model (in `vsky-model`), persists every
//! change in a durable store before answering, and serves REST API v1 to
//! admins (`vsky` CLI), agents and the SMAPIv3 plugins. It is never in the
//! I/O path: agents assemble and serve volumes on their own.
//!
//! - [`manager`]: [`Manager`], the cluster behind a lock, kept in step with
//!   the store, and its [`Role`](manager::Role) (single, leader or standby).
//! - [`store`]: the durable store interface, its embedded redb
//!   implementation and the replicated etcd one.
//! - [`etcd_client`]: a small blocking client of etcd's v3 JSON API, which
//!   the etcd store and the election use.
//! - [`leader`]: leader election among managers sharing an etcd store.
//! - [`migrate`]: copying a cluster between stores (redb ⇄ etcd).
//! - [`http`]: routes, request pipeline, error mapping, OpenAPI document.
//! - [`auth`]: admin and agent bearer tokens.
//! - [`metrics`]: Prometheus metrics.
//! - [`serve`]: the HTTP front door: accept loop, connection caps, read
//!   deadlines for slow clients, graceful shutdown.
//! - [`tls`]: the rustls server configuration.
//! - [`recovery`]: the background loop that fails silent servers, plans
//!   replacement legs and starts resyncs.
//! - [`events`]: the bounded event log behind `/api/v1/events`.
//!
//! Entry point: [`run`], which the thin `vsky-manager` binary calls.
//!
//! Shutdown: [`run`] serves until its `shutdown` future resolves (SIGTERM or
//! Ctrl-C in `main.rs`), then lets requests in flight finish. A mutation
//! that already reached the blocking pool completes and commits even if its
//! client disconnected: the durable state never depends on whether an
//! answer was delivered. `Manager::begin_shutdown` also ends the
//! `desired-state` long-polls and the recovery loop at once, so agents
//! holding a poll do not hold up the stop.

pub mod auth;
pub mod etcd_client;
pub mod events;
pub mod http;
pub mod leader;
pub mod manager;
pub mod metrics;
pub mod migrate;
pub mod recovery;
pub mod serve;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;

pub use auth::Tokens;
pub use manager::Manager;
pub use recovery::RecoveryConfig;
pub use serve::ServeLimits;

/// Serves the API on `listener`, and runs the recovery loop, until
/// `shutdown` resolves; then finishes in-flight requests and returns. The
/// front door's limits are the defaults ([`run_with_limits`] sets them).
pub async fn run(
    manager: Arc<Manager>,
    tokens: Tokens,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    recovery: RecoveryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_limits(
        manager,
        tokens,
        listener,
        tls,
        recovery,
        ServeLimits::default(),
        shutdown,
    )
    .await
}

/// [`run`] with the front door's limits: timeouts and connection caps.
pub async fn run_with_limits(
    manager: Arc<Manager>,
    tokens: Tokens,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    recovery: RecoveryConfig,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = Arc::clone(&manager);
    let shutdown = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    let recovery = Arc::new(recovery::Recovery::new(recovery));
    // Supervised: a panic in a pass is logged, counted
    // (`vsky_task_restarts`) and the loop starts again, rather than failures
    // going unhandled while the API keeps answering.
    let background = {
        let (manager, recovery) = (Arc::clone(&manager), Arc::clone(&recovery));
        tokio::spawn(vsky_sync::supervise("recovery", move || {
            recovery::run(
                Arc::clone(&manager),
                Arc::clone(&recovery),
                manager.stopping(),
            )
        }))
    };
    let state = http::AppState {
        manager,
        tokens: Arc::new(tokens),
        metrics: Arc::new(metrics::Metrics::new()),
        recovery,
    };
    let app = http::router(state);
    let served = serve::serve(app, listener, tls, limits, shutdown).await;
    background.abort();
    served
}
