//! Starting and stopping the agent: opens the head role, starts the NBD
//! server, registers, and wires the tasks (the reconcile loop, heartbeats,
//! the health watcher, the scrub patrol and the local API) until shutdown.
//! The background loops run under `vsky_sync::supervise` (a panic is
//! logged and the loop restarts); a panic in the reconcile loop itself ends
//! the process with a non-zero status, and systemd restarts it.
//! Only this module wires the tasks together: they talk through the shared
//! state (`shared`), never through each other's wiring, so the modules
//! depend on each other one way (`run` → `reconcile`, `api`, `scrub` →
//! `head`, `shared`).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;
use vsky_api::Client;
use vsky_nbd::{ExportTable, ServerConfig};
use vsky_sync::{LockExt, supervise};

use crate::config::Config;
use crate::disks::{self, InspectedDisk};
use crate::head::{Head, HeadError};
use crate::reconcile::{Agent, health_loop, heartbeat_loop};
use crate::shared::Shared;
use crate::{api, scrub};

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A disk that cannot be used is reported to the manager (which fails
    // it), not an error: the agent serves its other disks.
    let inspected: Vec<InspectedDisk> = config.disks.iter().map(disks::inspect).collect();
    let client = Client::new(config.client.clone())?;
    let head = if config.head {
        let local: BTreeSet<PathBuf> = inspected
            .iter()
            .filter_map(InspectedDisk::probed)
            .filter(|d| d.is_block_device)
            .map(|d| d.path.clone())
            .collect();
        let timeouts = config.timeouts;
        let nbd_backends = config.nbd_backends.clone();
        let (head, present) = tokio::task::spawn_blocking(move || {
            let head = Head::open(timeouts, local, &nbd_backends)?;
            let present = head.assembled_volumes()?;
            Ok::<_, HeadError>((head, present))
        })
        .await?
        .context("cannot start the head role (it needs the nbd, dm-mod and dm-raid kernel modules and a kernel it supports; or run with --storage-only)")?;
        Some((Arc::new(Mutex::new(head)), present))
    } else {
        None
    };
    // What is assembled from before a restart counts until torn down: a
    // release must not end while those devices exist.
    let (head, present) = match head {
        Some((head, present)) => (Some(head), present),
        None => (None, BTreeSet::new()),
    };

    let exports = ExportTable::new();
    let listener = tokio::net::TcpListener::bind(config.nbd_listen)
        .await
        .with_context(|| format!("cannot listen for NBD on {}", config.nbd_listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let nbd = tokio::spawn(vsky_nbd::serve(
        listener,
        exports.clone(),
        ServerConfig::default(),
        wait_stop(stop_rx.clone()),
    ));

    let shared = Arc::new(Shared::default());
    *shared.present.lock_unpoisoned() = present;
    let mut agent = Agent::new(
        config.clone(),
        client.clone(),
        exports,
        head.clone(),
        shared.clone(),
    );
    tokio::pin!(shutdown);
    tokio::select! {
        r = agent.register(inspected) => r?,
        _ = &mut shutdown => return stop(stop_tx, nbd).await,
    }
    // The background loops are supervised: a panic in one is logged and
    // the loop restarts, instead of heartbeats (or leg-failure detection,
    // or scrubs) stopping silently while the rest of the agent runs.
    let heartbeat = {
        let (client, config, shared, stop) = (
            client.clone(),
            config.clone(),
            shared.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(supervise("heartbeat", move || {
            heartbeat_loop(client.clone(), config.clone(), shared.clone(), stop.clone())
        }))
    };
    let health = head.clone().map(|h| {
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        tokio::spawn(supervise("health", move || {
            health_loop(h.clone(), shared.clone(), stop.clone())
        }))
    });
    let patrol = head.clone().map(|h| {
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        tokio::spawn(supervise("scrub patrol", move || {
            scrub::patrol_loop(h.clone(), shared.clone(), stop.clone())
        }))
    });
    if let Some(api) = config.api.clone() {
        let ctx = api::Context {
            client: client.clone(),
            server: config.server_name.clone(),
            head: head.is_some(),
            shared: shared.clone(),
        };
        api::spawn(api, ctx, wait_stop(stop_rx.clone())).await?;
    }
    let mut nbd = nbd;
    // The NBD server owns its listener, so it is not restarted in place: if
    // it ends on its own (a panic, an accept error), the agent exits with an
    // error and its service manager restarts the whole process. Exports
    // must never silently stop while heartbeats say the server is fine.
    let nbd_ended = tokio::select! {
        () = agent.reconcile_loop() => None,
        _ = &mut shutdown => None,
        r = &mut nbd => Some(r),
    };
    let stop_loops = || {
        heartbeat.abort();
        if let Some(h) = &health {
            h.abort();
        }
        if let Some(p) = &patrol {
            p.abort();
        }
    };
    if let Some(ended) = nbd_ended {
        let _ = stop_tx.send(true);
        stop_loops();
        return Err(match ended {
            Ok(Ok(())) => anyhow::anyhow!("the NBD server stopped on its own"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the NBD server failed"),
            Err(e) if e.is_panic() => anyhow::anyhow!(
                "the NBD server panicked: {}",
                vsky_sync::supervise::panic_message(e.into_panic())
            ),
            Err(e) => anyhow::anyhow!("the NBD server task ended: {e}"),
        }
        .context("exiting so that the service manager restarts the agent"));
    }
    tracing::info!("shutting down; assembled volumes stay in place");
    let result = stop(stop_tx, nbd).await;
    stop_loops();
    result
}

async fn wait_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn stop(
    tx: watch::Sender<bool>,
    nbd: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    let _ = tx.send(true);
    nbd.await?.context("NBD server failed")?;
    Ok(())
}
