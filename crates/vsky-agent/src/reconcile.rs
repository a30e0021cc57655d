//! The agent's loops: register, long-poll the desired state and apply it,
//! heartbeat with observations, and watch assembled mirrors for dead legs.
//! `run` starts them (with the NBD server, the scrub patrol and the local
//! API) and stops them.
//!
//! - `Agent::reconcile_loop` long-polls `desired-state` with the last
//!   generation it applied, then calls `Agent::apply`, in this order:
//!   drop what touches disks the manager did not accept; stop (and wait
//!   for) copies and comparisons no longer listed, before any export is
//!   added, so a head never writes a chunk still being copied into; make
//!   the `ExportTable` hold exactly the desired exports (removing one cuts
//!   its connections); wipe each listed chunk not yet wiped for its
//!   release and queue `(chunk, release)` for the heartbeat; assemble
//!   every desired volume and tear down the others (`Head::ensure`,
//!   `Head::teardown`); hand the listed dm-raid checks to the patrol
//!   (`scrub.rs`) once their mirrors exist; start the listed copies and
//!   comparisons. After a partial failure (an unreachable leg, a failed
//!   wipe) it polls again after a few seconds instead of waiting for the
//!   next change.
//! - `heartbeat_loop` sends every heartbeat interval, or at once when
//!   something is queued: the queued wipes and failed legs (dropped exactly
//!   as sent once the manager acknowledges them), the current resyncs and
//!   scrub reports, and the assembled volumes (left out for a manager from
//!   before two-phase detach, which refuses the field).
//! - `health_loop` checks each assembled mirror once a second
//!   (`Head::dead_legs`, from the dm-raid status, with the chunk the dead
//!   device imported) and queues each newly dead leg once; it also reads
//!   resync progress and sends a heartbeat at once when one finishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use vsky_api::Client;
use vsky_api::types::{
    AgentDisk, DesiredState, Heartbeat, RegisterAgent, ResyncReport, ScrubMethod, ScrubSpec,
    VolumeSpec, WipedChunk,
};
use vsky_nbd::{Export, ExportTable};
use vsky_sync::LockExt;

use crate::compare::Scrubs;
use crate::config::Config;
use crate::copy::Copies;
use crate::disks::InspectedDisk;
use crate::head::{Head, is_layer, mirror_sets};
use crate::label::{self, Decoded};
use crate::shared::{Assembled, Shared};
use crate::wipe;

/// Longest wait of one desired-state long-poll.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Retry delay after a partly failed apply (an unreachable leg, a failed
/// wipe): sooner than the long-poll, later than a tight loop.
const RETRY: Duration = Duration::from_secs(3);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often assembled mirrors are checked for dead legs.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Agent {
    config: Config,
    client: Client,
    exports: ExportTable,
    head: Option<Arc<Mutex<Head>>>,
    shared: Arc<Shared>,
    /// Wipes done and reported (or queued) that the manager still lists.
    wipes: wipe::Wipes,
    /// Resyncs of detached volumes this storage agent copies.
    copies: Copies,
    /// Scrubs of detached volumes this storage agent runs.
    scrubs: Scrubs,
    /// Paths of the disks the manager accepted at registration: the agent
    /// exports, wipes and copies into these only, whatever it is asked.
    served: BTreeSet<String>,
}

/// Drops what the desired state asks of disks the manager did not accept
/// at registration (it never should: refused disks are failed or unknown
/// there), so a refused disk (another server's, another cluster's) is never
/// exported, wiped or written.
fn served_disks_only(served: &BTreeSet<String>, mut desired: DesiredState) -> DesiredState {
    let served = |path: &str, what: &str| {
        let ok = served.contains(path);
        if !ok {
            tracing::warn!(path, "{what} on a disk this agent does not serve ignored");
        }
        ok
    };
    desired
        .exports
        .retain(|e| served(&e.disk_path, "an export"));
    desired.wipes.retain(|w| served(&w.disk_path, "a wipe"));
    desired
        .copies
        .retain(|c| served(&c.target_disk_path, "a copy"));
    desired
}

/// What the manager hears about one disk: its size and label, or why it
/// cannot be used.
fn agent_disk(d: &InspectedDisk) -> AgentDisk {
    let (size_bytes, label, problem) = match &d.state {
        Ok((p, Decoded::Blank)) => (p.size_bytes, None, None),
        Ok((p, Decoded::Label(l))) => (
            p.size_bytes,
            Some(vsky_api::types::DiskLabel {
                cluster_id: l.cluster_id.clone(),
                disk_id: l.disk_id,
                server: l.server.clone(),
            }),
            None,
        ),
        Ok((p, Decoded::Unusable(why))) => (p.size_bytes, None, Some(why.clone())),
        Err(why) => (0, None, Some(why.clone())),
    };
    AgentDisk {
        path: d.arg.path.display().to_string(),
        size_bytes,
        class: d.arg.class.clone(),
        label,
        problem,
    }
}

impl Agent {
    pub(crate) fn new(
        config: Config,
        client: Client,
        exports: ExportTable,
        head: Option<Arc<Mutex<Head>>>,
        shared: Arc<Shared>,
    ) -> Self {
        Agent {
            config,
            client,
            exports,
            head,
            copies: Copies::new(shared.copy_resyncs.clone(), shared.clone()),
            scrubs: Scrubs::new(shared.detached_scrubs.clone(), shared.clone()),
            shared,
            wipes: wipe::Wipes::default(),
            served: BTreeSet::new(),
        }
    }

    /// Registers the server and its disks, retrying while the manager is
    /// unreachable (it may start after the agents).
    ///
    /// Each disk goes with what its header holds (a label, nothing, or why
    /// it cannot be used), and the manager answers which disks to serve and
    /// which to leave alone (another cluster's or server's disk, a replaced,
    /// shrunk or unreadable one: it fails those it knows, and the agent
    /// serves the rest). Blank disks it accepts get their label here, and
    /// the agent registers once more so the manager records them labelled
    /// (a labelled disk that later reads blank was replaced, and is
    /// failed); a label that cannot be written makes that disk unusable.
    pub(crate) async fn register(
        &mut self,
        mut inspected: Vec<InspectedDisk>,
    ) -> anyhow::Result<()> {
        for round in 0..2 {
            let answer = self.register_once(&inspected).await?;
            self.served = answer.disks.iter().map(|d| d.path.clone()).collect();
            for r in &answer.refused_disks {
                tracing::error!(path = %r.path, disk_id = ?r.disk_id, "disk refused, not served: {}", r.reason);
            }
            if round == 1 {
                break;
            }
            if answer.cluster_id.is_empty() {
                tracing::warn!("the manager is older than disk labels; the disks stay unlabelled");
                break;
            }
            // The second round is about the disks served: the refused ones
            // were judged already.
            inspected.retain(|d| {
                let path = d.arg.path.display().to_string();
                !answer.refused_disks.iter().any(|r| r.path == path)
            });
            let mut labelled = false;
            for served in &answer.disks {
                let Some(disk) = inspected
                    .iter_mut()
                    .find(|d| d.arg.path.display().to_string() == served.path)
                else {
                    continue;
                };
                if !matches!(disk.state, Ok((_, Decoded::Blank))) {
                    continue;
                }
                let new = label::Label {
                    cluster_id: answer.cluster_id.clone(),
                    disk_id: served.id,
                    server: self.config.server_name.clone(),
                };
                let (path, to_write) = (disk.arg.path.clone(), new.clone());
                match tokio::task::spawn_blocking(move || label::write(&path, &to_write)).await? {
                    Ok(()) => {
                        tracing::info!(path = %served.path, disk_id = served.id, cluster_id = %answer.cluster_id,
                            "labelled a blank disk");
                        if let Ok((_, found)) = &mut disk.state {
                            *found = Decoded::Label(new);
                        }
                    }
                    Err(e) => disk.state = Err(format!("cannot write its label: {e}")),
                }
                labelled = true;
            }
            if !labelled {
                break;
            }
        }
        Ok(())
    }

    /// One registration, retried while the manager is unreachable.
    async fn register_once(
        &self,
        inspected: &[InspectedDisk],
    ) -> anyhow::Result<vsky_api::types::AgentRegistered> {
        let req = RegisterAgent {
            server: self.config.server_name.clone(),
            address: self.config.advertise.clone(),
            labels: self.config.labels.clone(),
            storage_only: !self.config.head,
            disks: inspected.iter().map(agent_disk).collect(),
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.client.register_agent(&req).await {
                Ok(answer) => {
                    tracing::info!(server = %req.server, server_id = answer.server_id, disks = answer.disks.len(),
                        refused_disks = answer.refused_disks.len(), cluster_id = %answer.cluster_id,
                        chunk_size_bytes = answer.chunk_size_bytes, "registered with the manager");
                    return Ok(answer);
                }
                // The manager refused the request as a whole (a bad name, a
                // token bound to another server, …; a bad disk is only
                // refused on its own): retrying cannot help.
                Err(e @ vsky_api::ClientError::Api { .. }) => {
                    return Err(e).context("the manager refused the registration");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "manager unreachable; retrying registration");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    pub(crate) async fn reconcile_loop(&mut self) {
        let mut known: Option<u64> = None;
        let mut wait = Duration::ZERO;
        let mut delay = Duration::from_millis(200);
        loop {
            match self
                .client
                .desired_state(&self.config.server_name, known, wait)
                .await
            {
                Ok(desired) => {
                    delay = Duration::from_millis(200);
                    let generation = desired.generation;
                    let complete = self.apply(desired).await;
                    known = Some(generation);
                    // After a partial failure, poll again soon (the long-
                    // poll returns at once when the generation differs, so
                    // forget it) rather than wait for the next change.
                    if complete {
                        wait = LONG_POLL;
                    } else {
                        known = None;
                        tokio::time::sleep(RETRY).await;
                        wait = Duration::ZERO;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch desired state; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Converges local state onto `desired`; returns false if something
    /// must be retried.
    async fn apply(&mut self, desired: DesiredState) -> bool {
        let desired = self.served_disks_only(desired);
        let mut complete = true;
        // Checks of mirrors this head assembles go to the patrol, the
        // comparisons of detached volumes' legs to `compare.rs`.
        let (checks, compares): (Vec<ScrubSpec>, Vec<ScrubSpec>) = desired
            .scrubs
            .iter()
            .cloned()
            .partition(|s| s.method == ScrubMethod::RaidCheck);
        // Copies the manager stopped listing end (their last write done)
        // before any export is added: a chunk being copied into is exported
        // to a head only after its copy stopped.
        self.copies.retain(&desired.copies).await;
        self.scrubs.retain(&compares);
        self.sync_exports(&desired);
        complete &= self.wipe(&desired).await;
        self.shared.set_volumes(&desired.volumes);
        if let Some(head) = self.head.clone() {
            complete &= self
                .assemble(head, desired.volumes, desired.resync_rate_bytes_per_second)
                .await;
        }
        // After the assembly, so the patrol finds the mirrors to check.
        *self.shared.head_checks.lock_unpoisoned() = checks;
        self.copies.start(&desired.copies);
        self.scrubs
            .start(&compares, desired.resync_rate_bytes_per_second);
        complete
    }

    fn served_disks_only(&self, desired: DesiredState) -> DesiredState {
        served_disks_only(&self.served, desired)
    }

    /// Exports exactly the chunks the manager lists. Removing an export
    /// also cuts its open connections. A write limit that moved (a layer
    /// was frozen) moves for the open connections too, without cutting
    /// them.
    fn sync_exports(&self, desired: &DesiredState) {
        let want: HashMap<&str, _> = desired
            .exports
            .iter()
            .map(|e| (e.export_name.as_str(), e))
            .collect();
        let have: BTreeSet<String> = self.exports.names().into_iter().collect();
        for name in &have {
            if !want.contains_key(name.as_str()) {
                self.exports.remove(name);
                tracing::info!("export removed");
            }
        }
        for (name, e) in want {
            if have.contains(name) {
                let before = self.exports.set_writable_bytes(name, e.writable_bytes);
                if before.is_some_and(|b| b != e.writable_bytes) {
                    tracing::info!(disk = %e.disk_path, chunk = e.chunk.index, writable_bytes = ?e.writable_bytes, "export write limit moved");
                }
            } else {
                self.exports.insert(
                    name.to_string(),
                    Export {
                        path: PathBuf::from(&e.disk_path),
                        offset_bytes: e.offset_bytes,
                        size_bytes: e.size_bytes,
                        read_only: false,
                        writable_bytes: e.writable_bytes,
                    },
                );
                tracing::info!(disk = %e.disk_path, chunk = e.chunk.index, "export added");
            }
        }
    }

    /// Wipes freed chunks not wiped yet (for their current release) and
    /// queues them for the heartbeat.
    async fn wipe(&mut self, desired: &DesiredState) -> bool {
        let mut complete = true;
        for w in self.wipes.to_do(&desired.wipes) {
            let (path, offset, len) = (PathBuf::from(&w.disk_path), w.offset_bytes, w.size_bytes);
            match tokio::task::spawn_blocking(move || wipe::zero_range(&path, offset, len)).await {
                Ok(Ok(())) => {
                    let report = self.wipes.done(w);
                    self.shared.wiped.lock_unpoisoned().push(report);
                    self.shared.heartbeat_now.notify_one();
                }
                Ok(Err(e)) => {
                    tracing::error!(disk = %w.disk_path, chunk = w.chunk.index, error = %e, "wipe failed; will retry");
                    complete = false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "wipe task failed");
                    complete = false;
                }
            }
        }
        complete
    }

    /// Assembles every desired volume and tears down the others.
    async fn assemble(
        &self,
        head: Arc<Mutex<Head>>,
        volumes: Vec<VolumeSpec>,
        resync_rate: u64,
    ) -> bool {
        let shared = self.shared.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut head = head.lock_unpoisoned();
            head.set_resync_rate(resync_rate);
            let mut complete = true;
            let mut switched = BTreeSet::new();
            for spec in &volumes {
                // A thin volume's layers are sets of mirrors of their own.
                let sets = mirror_sets(spec);
                for set in &sets {
                    // Legs brought back by the manager: try them now,
                    // whatever an earlier attempt (during the outage) said.
                    let returning = shared.take_returning(&set.name);
                    head.forget_revive_attempts(
                        &set.name,
                        returning
                            .iter()
                            .map(|(_, k, l, _)| (*k as usize, *l as usize)),
                    );
                }
                match head.ensure(spec) {
                    Ok(assembly) => {
                        shared.set_assembled(
                            &spec.name,
                            Assembled {
                                device: assembly.device.clone(),
                                size_bytes: assembly.size_bytes,
                            },
                        );
                        for (set, k, l) in &assembly.unreachable_legs {
                            if let Some(set) = sets.iter().find(|s| s.name == *set) {
                                shared.leg_failed(set, *k, *l, None);
                            }
                        }
                        if assembly.retry_new_members {
                            complete = false;
                        }
                        if let Some(old_top) = assembly.switched {
                            switched.insert(old_top);
                        }
                        tracing::debug!(volume = %spec.name, device = %assembly.device.display(), "volume assembled");
                    }
                    Err(e) => {
                        tracing::error!(volume = %spec.name, error = %e, "cannot assemble volume; will retry");
                        complete = false;
                    }
                }
            }
            shared.set_switched(switched);
            // A thin volume's layers are assembled under their own names:
            // the head reports them assembled until they are torn down,
            // so the manager never lets another head write a layer this
            // one still has.
            let desired: BTreeSet<&str> = volumes
                .iter()
                .flat_map(|v| {
                    std::iter::once(v.name.as_str()).chain(v.chain.iter().map(|l| l.name.as_str()))
                })
                .collect();
            match head.assembled_volumes() {
                Ok(mut present) => {
                    let mut extra: Vec<String> = present
                        .iter()
                        .filter(|n| !desired.contains(n.as_str()))
                        .cloned()
                        .collect();
                    // Volumes before layers, and a layer only once nothing
                    // above it is left: a layer another still reads from
                    // is busy, and waits for the next round.
                    extra.sort_by_key(|n| is_layer(n));
                    let mut failed = BTreeMap::new();
                    loop {
                        let before = extra.len();
                        extra.retain(|name| match head.teardown(name) {
                            Ok(()) => {
                                shared.assembled.lock_unpoisoned().remove(name);
                                shared.teardown_errors.lock_unpoisoned().remove(name);
                                present.remove(name);
                                failed.remove(name);
                                tracing::info!(volume = %name, "volume detached");
                                false
                            }
                            Err(e) => {
                                failed.insert(name.clone(), e);
                                true
                            }
                        });
                        if extra.is_empty() || extra.len() == before {
                            break;
                        }
                    }
                    for (name, e) in failed {
                        // Usually still open by a user: keep it, retry.
                        tracing::warn!(volume = %name, error = %e, "cannot tear down volume; will retry");
                        if !is_layer(&name) {
                            shared
                                .teardown_errors
                                .lock_unpoisoned()
                                .insert(name, e.to_string());
                        }
                        complete = false;
                    }
                    // The manager hears at once that the devices are gone.
                    shared.set_present(present);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot list device-mapper devices");
                    complete = false;
                }
            }
            shared.assembly.send_modify(|n| *n += 1);
            complete
        });
        task.await.unwrap_or(false)
    }
}

pub(crate) async fn heartbeat_loop(
    client: Client,
    config: Config,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Cleared when the manager is older than two-phase detach and refuses
    // the field; such a manager detaches at once anyway.
    let mut report_assembled = true;
    // Cleared when the manager is older than online resize.
    let mut report_served = true;
    // Cleared when the manager is older than growing pools.
    let mut report_pools = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.heartbeat_interval) => {}
            _ = shared.heartbeat_now.notified() => {}
            _ = stop.changed() => return,
        }
        let wiped = shared.wiped.lock_unpoisoned().clone();
        let failed = shared.failed.lock_unpoisoned().clone();
        let mut scrubs = shared.check_reports.lock_unpoisoned().clone();
        scrubs.extend(shared.detached_scrubs.lock_unpoisoned().values().cloned());
        let mut resyncs: Vec<ResyncReport> = shared
            .head_resyncs
            .lock_unpoisoned()
            .values()
            .cloned()
            .collect();
        resyncs.extend(shared.copy_resyncs.lock_unpoisoned().values().cloned());
        // Wipes the manager listed without a release id (an older
        // manager) go in the field it knows.
        let (unnumbered, numbered): (Vec<WipedChunk>, Vec<WipedChunk>) =
            wiped.iter().partition(|w| w.release == 0);
        let beat = Heartbeat {
            server: config.server_name.clone(),
            wiped_chunks: unnumbered.iter().map(|w| w.chunk).collect(),
            wiped: numbered,
            failed_legs: failed.clone(),
            resyncs,
            scrubs,
            assembled: report_assembled.then(|| shared.assembled_report()),
            served: if report_served {
                shared.served_report()
            } else {
                Vec::new()
            },
            switched: shared.switched.lock_unpoisoned().iter().cloned().collect(),
            pools: if report_pools {
                shared.pools.lock_unpoisoned().clone()
            } else {
                Vec::new()
            },
        };
        match client.heartbeat(&beat).await {
            Err(vsky_api::ClientError::Api {
                status: 400,
                message,
                ..
            }) if report_assembled && refuses_assembled(&message) => {
                tracing::warn!(
                    "the manager is older than two-phase detach; heartbeats go without the assembled volumes (upgrade the managers)"
                );
                report_assembled = false;
                shared.heartbeat_now.notify_one();
            }
            Err(vsky_api::ClientError::Api {
                status: 400,
                message,
                ..
            }) if report_served && refuses_field(&message, "served") => {
                tracing::warn!(
                    "the manager is older than online resize; heartbeats go without the served sizes (upgrade the managers before growing attached volumes)"
                );
                report_served = false;
                shared.heartbeat_now.notify_one();
            }
            Err(vsky_api::ClientError::Api {
                status: 400,
                message,
                ..
            }) if report_pools && refuses_field(&message, "pools") => {
                tracing::warn!(
                    "the manager is older than growing thin pools; heartbeats go without pool usage (upgrade the managers: thin volumes stay on their first mirrored disk until then)"
                );
                report_pools = false;
                shared.heartbeat_now.notify_one();
            }
            Ok(_) => {
                // Drop exactly what was sent; newer observations stay queued.
                shared.wiped.lock_unpoisoned().drain(..wiped.len());
                shared.failed.lock_unpoisoned().drain(..failed.len());
                if !wiped.is_empty() || !failed.is_empty() {
                    tracing::info!(
                        wiped = wiped.len(),
                        failed_legs = failed.len(),
                        "observations reported"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
        }
    }
}

/// Whether a manager's 400 answer refuses the heartbeat's `assembled`
/// field as unknown (a manager from before two-phase detach).
fn refuses_assembled(message: &str) -> bool {
    refuses_field(message, "assembled")
}

/// Whether a manager's 400 answer refuses the heartbeat field `field` as
/// unknown (a manager older than the field).
fn refuses_field(message: &str, field: &str) -> bool {
    message.contains(&format!("unknown field `{field}`"))
}

/// Polls assembled mirrors for legs the kernel marked dead. (dm-raid also
/// raises a dm event; polling once a second is simpler and bounds the
/// report delay just as well.)
pub(crate) async fn health_loop(
    head: Arc<Mutex<Head>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let (head, shared) = (head.clone(), shared.clone());
        vsky_sync::blocking(move || {
            let volumes = shared.volumes.lock_unpoisoned().clone();
            let head = head.lock_unpoisoned();
            let mut resyncs = BTreeMap::new();
            let pools: Vec<_> = volumes.iter().filter_map(|v| head.pool_report(v)).collect();
            // A pool past its last report's use by a tenth or more, or
            // full, is news the manager may act on (grow it) now.
            let urgent = {
                let before = shared.pools.lock_unpoisoned();
                pools.iter().any(|p| {
                    p.out_of_data_space
                        || before.iter().find(|b| b.layer == p.layer).is_none_or(|b| {
                            p.used_data_blocks
                                >= b.used_data_blocks.saturating_add(p.total_data_blocks / 10)
                        })
                })
            };
            *shared.pools.lock_unpoisoned() = pools;
            if urgent {
                shared.heartbeat_now.notify_one();
            }
            for spec in volumes.iter().flat_map(mirror_sets) {
                let spec = &spec;
                if let Ok(dead) = head.dead_legs(spec) {
                    for (k, l, chunk) in dead {
                        shared.leg_failed(spec, k, l, chunk);
                    }
                }
                match head.resyncs(spec) {
                    Ok(reports) => resyncs.extend(reports.into_iter().map(|r| (r.job, r))),
                    Err(e) => tracing::debug!(volume = %spec.name, error = %e, "cannot read resync progress"),
                }
            }
            let finished = resyncs.values().any(|r| r.done)
                && shared.head_resyncs.lock_unpoisoned().values().all(|r| !r.done);
            *shared.head_resyncs.lock_unpoisoned() = resyncs;
            if finished {
                // Let the manager turn the leg active without waiting for
                // the next regular heartbeat.
                shared.heartbeat_now.notify_one();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::LegSpec;
    use vsky_api::types::{ChunkId, FailedLeg, LegState};

    fn spec(name: &str, chunks: &[(u64, u32)], failed: &[usize]) -> VolumeSpec {
        let leg = |i: usize, (disk_id, index): (u64, u32)| LegSpec {
            chunk: ChunkId { disk_id, index },
            server: format!("s{i}"),
            server_address: format!("10.0.0.{i}:10809"),
            export_name: format!("e{i}"),
            local_disk_path: None,
            offset_bytes: 0,
            state: if failed.contains(&i) {
                LegState::Failed
            } else {
                LegState::Active
            },
            resync_job: None,
        };
        VolumeSpec {
            name: name.to_string(),
            size_bytes: 1 << 20,
            stripe: None,
            chunk_size_bytes: 8 << 20,
            leg_meta_bytes: 1 << 20,
            mirrored_disks: vec![chunks.iter().enumerate().map(|(i, c)| leg(i, *c)).collect()],
            chain: Vec::new(),
            read_only: false,
        }
    }

    fn queued(shared: &Shared) -> usize {
        shared.failed.lock_unpoisoned().drain(..).count()
    }

    #[test]
    fn a_failed_leg_is_reported_once() {
        let shared = Shared::default();
        let v = spec("v", &[(1, 0), (2, 0)], &[]);
        shared.set_volumes(std::slice::from_ref(&v));
        shared.leg_failed(&v, 0, 1, None);
        shared.leg_failed(&v, 0, 1, None);
        assert_eq!(queued(&shared), 1);
        // Still active in the manager's view (report in flight): not again.
        shared.set_volumes(std::slice::from_ref(&v));
        shared.leg_failed(&v, 0, 1, None);
        assert_eq!(queued(&shared), 0);
        // The manager lists it failed: the kernel's dead leg is not resent.
        let v = spec("v", &[(1, 0), (2, 0)], &[1]);
        shared.set_volumes(std::slice::from_ref(&v));
        shared.leg_failed(&v, 0, 1, None);
        assert_eq!(queued(&shared), 0);
        // Out-of-range slots are ignored rather than reported.
        shared.leg_failed(&v, 3, 0, None);
        assert_eq!(queued(&shared), 0);
    }

    /// A leg the manager brings back (failed, then active on the same
    /// chunk) is not reported dead again before an assembly has tried to
    /// revive it; after that, it is.
    #[test]
    fn a_returning_leg_waits_for_its_revival() {
        let shared = Shared::default();
        let failed = spec("v", &[(1, 0), (2, 0)], &[1]);
        shared.set_volumes(std::slice::from_ref(&failed));
        let back = spec("v", &[(1, 0), (2, 0)], &[]);
        shared.set_volumes(std::slice::from_ref(&back));
        shared.leg_failed(
            &back,
            0,
            1,
            Some(ChunkId {
                disk_id: 2,
                index: 0,
            }),
        );
        assert_eq!(
            queued(&shared),
            0,
            "the kernel's dead leg is about to be revived"
        );
        assert_eq!(shared.take_returning("v").len(), 1);
        assert!(shared.take_returning("v").is_empty());
        shared.leg_failed(
            &back,
            0,
            1,
            Some(ChunkId {
                disk_id: 2,
                index: 0,
            }),
        );
        assert_eq!(queued(&shared), 1, "still dead after the attempt: reported");
        // A slot that gets a new chunk is not "returning".
        shared.set_volumes(std::slice::from_ref(&failed));
        let replaced = spec("v", &[(1, 0), (3, 0)], &[]);
        shared.set_volumes(std::slice::from_ref(&replaced));
        assert!(shared.take_returning("v").is_empty());
    }

    /// The heartbeat reports a volume assembled while its devices exist or
    /// the manager lists it (an assembly may be under way), so a release
    /// never ends while devices remain; a change of the devices sends a
    /// heartbeat at once.
    #[tokio::test]
    async fn the_assembled_report_covers_devices_and_desired_volumes() {
        let shared = Shared::default();
        assert!(shared.assembled_report().is_empty(), "a storage-only agent");
        // Devices left from before a restart, the manager now lists another.
        shared.set_present(BTreeSet::from(["old".to_string()]));
        shared.set_volumes(&[spec("new", &[(1, 0), (2, 0)], &[])]);
        assert_eq!(shared.assembled_report(), ["new", "old"]);
        assert!(!shared.gone("old") && shared.gone("new"));
        // The release of "old" ends once its devices are gone, and the
        // heartbeat goes out at once.
        let notified = shared.heartbeat_now.notified();
        shared.set_present(BTreeSet::new());
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .expect("a change of the devices wakes the heartbeat");
        assert_eq!(shared.assembled_report(), ["new"]);
        assert!(shared.gone("old"));
    }

    #[test]
    fn an_older_managers_refusal_of_the_assembled_field_is_recognised() {
        /// A heartbeat as a manager from before two-phase detach reads it.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct OlderHeartbeat {
            server: String,
            wiped_chunks: Vec<ChunkId>,
            failed_legs: Vec<FailedLeg>,
            resyncs: Vec<ResyncReport>,
            scrubs: Vec<serde_json::Value>,
        }
        let beat = Heartbeat {
            server: "h".into(),
            assembled: Some(vec!["v".into()]),
            ..Default::default()
        };
        let e = serde_json::from_value::<OlderHeartbeat>(serde_json::to_value(&beat).unwrap())
            .err()
            .expect("an older manager refuses the field");
        assert!(refuses_assembled(&e.to_string()), "{e}");
        // Without the field it is accepted; another refusal is not this one.
        let beat = Heartbeat {
            assembled: None,
            ..beat
        };
        assert!(
            serde_json::from_value::<OlderHeartbeat>(serde_json::to_value(&beat).unwrap()).is_ok()
        );
        assert!(!refuses_assembled(
            "unknown field `x`, expected one of `server`, `scrubs`, `assembled`"
        ));
        // A manager older than online resize refuses the served sizes.
        let served = Heartbeat {
            server: "h".into(),
            served: vec![vsky_api::types::ServedVolume {
                volume: "v".into(),
                size_bytes: 1,
            }],
            ..Default::default()
        };
        let e = serde_json::from_value::<OlderHeartbeat>(serde_json::to_value(&served).unwrap())
            .err()
            .expect("an older manager refuses the field");
        assert!(refuses_field(&e.to_string(), "served"), "{e}");
        assert!(!refuses_field(&e.to_string(), "assembled"), "{e}");
    }

    #[test]
    fn a_reused_slot_is_reported_again() {
        let shared = Shared::default();
        let v = spec("v", &[(1, 0), (2, 0)], &[]);
        shared.set_volumes(std::slice::from_ref(&v));
        shared.leg_failed(&v, 0, 1, None);
        assert_eq!(queued(&shared), 1);
        // Detached and deleted, then a volume of the same name is created
        // on the very same chunks and its leg 1 fails as well.
        shared.set_volumes(&[]);
        shared.set_volumes(std::slice::from_ref(&v));
        shared.leg_failed(&v, 0, 1, None);
        assert_eq!(queued(&shared), 1);
        // A replacement leg (new chunk) in the same slot fails.
        let w = spec("v", &[(1, 0), (3, 5)], &[]);
        shared.set_volumes(std::slice::from_ref(&w));
        shared.leg_failed(&w, 0, 1, None);
        assert_eq!(queued(&shared), 1);
    }

    /// Nothing on a disk the manager refused is exported, wiped or written,
    /// even if a desired state asks.
    #[test]
    fn only_served_disks_are_touched() {
        let chunk = |disk_id: u64, path: &str| {
            serde_json::json!({
                "chunk": {"disk_id": disk_id, "index": 0},
                "disk_path": path, "offset_bytes": 1 << 20, "size_bytes": 4 << 20,
                "export_name": "secret"
            })
        };
        let desired: DesiredState = serde_json::from_value(serde_json::json!({
            "generation": 7,
            "exports": [chunk(1, "/ok"), chunk(2, "/refused")],
            "wipes": [chunk(1, "/ok"), chunk(2, "/refused")],
            "volumes": [], "copies": [], "scrubs": [],
        }))
        .unwrap();
        let served = BTreeSet::from(["/ok".to_string()]);
        let kept = served_disks_only(&served, desired);
        assert_eq!(kept.exports.len(), 1);
        assert_eq!(kept.exports[0].disk_path, "/ok");
        assert_eq!(kept.wipes.len(), 1);
        assert_eq!(kept.wipes[0].disk_path, "/ok");
    }
}
