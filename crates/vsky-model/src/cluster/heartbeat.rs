//! An agent's heartbeat, applied: the rules for what an agent may report.
//!
//! A heartbeat carries what the agent observed since its last one: chunks
//! it wiped, legs of its volumes whose I/O failed, progress of the resyncs
//! it executes, verdicts of the scrubs it ran, and the volumes it has
//! assembled. [`Cluster::apply_heartbeat`] applies all of it in one
//! mutation. Reports arrive late, twice, or from an agent that no longer
//! has the job (the volume was detached, the leg replaced, the job
//! requeued under another executor): such items are dropped and listed in
//! [`HeartbeatOutcome::dropped`], never refused, or one stale item would
//! block every later heartbeat. The rules:
//! - a wipe counts only for a chunk on the reporting server's own disks,
//!   and frees it only under the release it was wiped for (`chunks_wiped`);
//! - a leg failure counts only from the volume's head, and only while the
//!   slot still holds the chunk the failed device imported;
//! - only a job's current executor ([`Cluster::job_executor`]) moves it on
//!   (progress, done, failed), and a copy-source failure counts only for
//!   the source of the current attempt;
//! - only a scrub run's executor ends the run it was given;
//! - a releasing attachment of the server ends once its volume is no
//!   longer assembled there;
//! - the size a head serves counts only for volumes attached to it (not
//!   releasing), and is recorded on the attachment (a grow is applied
//!   once it reaches the volume's size);
//! - a pool report counts only from the head of the thin volume whose
//!   writable top it is, and grows the layer by the rules of
//!   `cluster/pools.rs`.
//!
//! The manager's handler (`vsky-manager/src/http/handlers/agent.rs`)
//! only translates: the REST body into an [`AgentReport`], and the
//! [`HeartbeatOutcome`] into events, metrics and the answer.

use super::pools::PoolUsage;
use super::recovery::JobKind;
use super::{Changes, Cluster};
use crate::SecretSource;
use crate::cluster::WipedChunk;
use crate::entities::UNNUMBERED_RELEASE;
use crate::error::ModelError;
use crate::ids::{ChunkRef, JobId, ServerId, VolumeId};
use crate::limits::HEARTBEAT_ASSEMBLED_MAX;

/// What an agent observed since its last heartbeat, in the model's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Chunks wiped, each for one release of it ([`UNNUMBERED_RELEASE`]
    /// for reports without a release id, from older agents).
    pub wiped: Vec<WipedChunk>,
    /// Legs of volumes this agent heads whose I/O failed.
    pub failed_legs: Vec<LegFailure>,
    /// The resyncs this agent executes.
    pub resyncs: Vec<ResyncUpdate>,
    /// Verdicts of the scrubs the manager gave this agent.
    pub scrubs: Vec<ScrubVerdict>,
    /// The volumes the agent has assembled now; `None` when it cannot say
    /// (an agent from before two-phase detach).
    pub assembled: Option<Vec<String>>,
    /// The size of each volume device the agent serves (volume, bytes);
    /// empty from agents older than online resize.
    pub served: Vec<(String, u64)>,
    /// Freezing layers (old tops) the agent has switched its thin volumes
    /// off: it no longer writes them ([`Cluster::finish_freeze`]). Named by
    /// layer, not volume, so a late report can never freeze a newer top.
    pub switched: Vec<String>,
    /// The pools of the layers this head writes (`cluster/pools.rs`).
    pub pools: Vec<PoolUsage>,
}

/// A head saw one leg's I/O fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegFailure {
    pub volume: String,
    pub mirrored_disk: u32,
    pub leg: u8,
    /// The chunk the failed device imported, when the agent says: a report
    /// about a chunk the slot no longer holds is about a replaced leg.
    pub chunk: Option<ChunkRef>,
}

/// How far a resync the agent executes has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResyncUpdate {
    pub job: JobId,
    pub status: ResyncStatus,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResyncStatus {
    /// Still copying; this many bytes are done.
    Copying { bytes_done: u64 },
    /// The new leg holds all the data.
    Done,
    /// The copy failed for good.
    Failed { error: String },
    /// The copy could not read its source leg (`source`, its chunk): it
    /// starts again from another healthy leg, onto the same target.
    SourceFailed { source: ChunkRef, error: String },
}

/// The end of one scrub run the manager gave the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubVerdict {
    /// The run's id (`ScrubRun::id`).
    pub scrub: u64,
    pub volume: String,
    pub mirrored_disk: u32,
    pub result: ScrubResult,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScrubResult {
    /// The legs were read and compared: `mismatched_sectors` differ, and
    /// the legs in `unreadable_legs` (slots) returned read errors.
    Read {
        mismatched_sectors: u64,
        unreadable_legs: Vec<u8>,
    },
    /// The scrub could not be done (a leg stayed unreachable).
    NotDone { error: String },
}

/// What a heartbeat changed and what the manager tells about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// The desired-state generation after the heartbeat: the answer.
    pub generation: u64,
    /// Chunks the wipes freed.
    pub freed: usize,
    /// Wipes reported without a release id for chunks released under one:
    /// they stay releasing until the agent is upgraded.
    pub unnumbered_still_releasing: usize,
    /// Servers holding legs a head newly reported failed: their legs may
    /// be held for their grace period unless they show they are alive.
    pub suspects: Vec<ServerId>,
    /// Progress accepted from jobs' executors (job, bytes done as
    /// reported), for rate estimates.
    pub progress: Vec<(JobId, u64)>,
    /// Scrubs whose verdict was accepted.
    pub scrubs_finished: Vec<FinishedScrub>,
    /// What happened, in order, for the event log.
    pub events: Vec<HeartbeatEvent>,
    /// Stale or refused items, dropped without failing the heartbeat.
    pub dropped: Vec<DroppedReport>,
}

/// A scrub whose verdict [`Cluster::apply_heartbeat`] accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedScrub {
    pub volume: String,
    pub mirrored_disk: u32,
    pub mismatched_sectors: u64,
}

/// Something a heartbeat changed that the event log tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// The head's report failed a leg.
    LegFailed {
        volume: String,
        mirrored_disk: u32,
        leg: u8,
    },
    /// A copy could not read its source; it starts again, from another
    /// healthy leg if `another_source`.
    ResyncSourceFailed {
        job: JobId,
        volume: String,
        source: ChunkRef,
        error: String,
        another_source: bool,
    },
    /// A job failed for good.
    ResyncFailed {
        job: JobId,
        volume: String,
        kind: JobKind,
        error: String,
    },
    /// A job is done.
    ResyncDone {
        job: JobId,
        volume: String,
        kind: JobKind,
    },
    /// A scrub could not be done; it is tried again later.
    ScrubFailed {
        volume: String,
        mirrored_disk: u32,
        error: String,
    },
    /// A scrub could not read some legs (slot, name of the server holding
    /// it): they are failed and replaced.
    ScrubUnreadable {
        volume: String,
        mirrored_disk: u32,
        legs: Vec<(u8, String)>,
    },
    /// A releasing attachment ended: the head tore its devices down.
    Released { volume: String },
    /// The head serves a grown volume at its new size.
    GrowApplied { volume: String, size_bytes: u64 },
    /// The head switched a thin volume onto the new top its snapshot gave
    /// it: the snapshot is ready.
    Switched { volume: String },
    /// Thin volume `volume`'s top `layer` filled past its mark and got
    /// more mirrored disks (`mirrored_disks` now).
    PoolGrown {
        volume: String,
        layer: String,
        mirrored_disks: usize,
    },
    /// A pool that needs to grow could not (`error`: no free chunk, …);
    /// `full` when its head already holds writes for want of space.
    PoolExhausted {
        volume: String,
        layer: String,
        full: bool,
        error: String,
    },
}

impl HeartbeatEvent {
    /// The job the event ends or restarts, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            HeartbeatEvent::ResyncSourceFailed { job, .. }
            | HeartbeatEvent::ResyncFailed { job, .. }
            | HeartbeatEvent::ResyncDone { job, .. } => Some(*job),
            _ => None,
        }
    }
}

/// A report item [`Cluster::apply_heartbeat`] dropped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DroppedReport {
    /// A leg failure about a chunk its slot no longer holds.
    FailureOfReplacedChunk { volume: String },
    /// A leg failure the model refused (not the head, no such leg, …).
    StaleFailure { volume: String, error: ModelError },
    /// A resync report from a server that does not execute the job.
    NotExecutor { job: JobId },
    /// A copy-source failure about an earlier attempt's source.
    StaleCopySource { job: JobId },
    /// A scrub verdict about a volume that no longer exists.
    ScrubOfMissingVolume { volume: String },
    /// A scrub verdict about a run that ended, changed or is another's.
    StaleScrub { volume: String, scrub: u64 },
    /// A scrub failure the model refused.
    ScrubFailureRefused { scrub: u64, error: ModelError },
    /// A scrub verdict the model refused (a leg slot out of range, …).
    ScrubRefused { scrub: u64, error: ModelError },
}

impl Cluster {
    /// Whether applying `report` from `server` would change nothing: no
    /// item to apply, and no releasing attachment of the server to end.
    /// The manager skips the write for such heartbeats.
    pub fn heartbeat_is_quiet(&self, server: ServerId, report: &AgentReport) -> bool {
        let releases = self.releasing_on(server).any(|(id, name)| {
            report
                .assembled
                .as_ref()
                .is_none_or(|list| !self.holds_writable_devices(id, &name, list))
        });
        let switches = report
            .switched
            .iter()
            .any(|layer| self.freezing_writer(server, layer).is_some());
        !releases
            && !switches
            && !self.served_sizes_change(server, &report.served)
            && !self.pools_want_growth(server, &report.pools)
            && report.wiped.is_empty()
            && report.failed_legs.is_empty()
            && report.resyncs.is_empty()
            && report.scrubs.is_empty()
    }

    /// Applies one heartbeat of `server`'s agent (see the module's rules).
    /// `now_unix_s` dates the scrubs it ends. Errors only when the cluster
    /// refuses a change the rules allowed (the manager then answers the
    /// error and applies nothing); stale items are dropped instead.
    pub fn apply_heartbeat(
        &mut self,
        server: ServerId,
        report: &AgentReport,
        now_unix_s: u64,
        secrets: &mut dyn SecretSource,
    ) -> Result<(HeartbeatOutcome, Changes), ModelError> {
        let mut out = HeartbeatOutcome::default();
        let wiped: Vec<WipedChunk> = report
            .wiped
            .iter()
            .copied()
            .filter(|w| self.disk(w.chunk.disk).is_ok_and(|d| d.server == server))
            .collect();
        let (freed, mut changes) = self.chunks_wiped(server, &wiped)?;
        out.freed = freed;
        out.unnumbered_still_releasing = wiped
            .iter()
            .filter(|w| w.release == UNNUMBERED_RELEASE)
            .filter(|w| {
                self.disk(w.chunk.disk).is_ok_and(|d| {
                    d.releasing
                        .get(&w.chunk.index)
                        .is_some_and(|&r| r != w.release)
                })
            })
            .count();
        for f in &report.failed_legs {
            self.leg_failure(server, f, &mut out, &mut changes);
        }
        for r in &report.resyncs {
            changes.merge(self.resync_update(server, r, &mut out)?);
        }
        for v in &report.scrubs {
            self.scrub_verdict(server, v, now_unix_s, &mut out, &mut changes);
        }
        let (released, ch) =
            self.head_reports_assembled(server, report.assembled.as_deref(), secrets)?;
        changes.merge(ch);
        out.events.extend(
            released
                .into_iter()
                .map(|volume| HeartbeatEvent::Released { volume }),
        );
        if report.switched.len() > HEARTBEAT_ASSEMBLED_MAX {
            return Err(ModelError::invalid(
                "switched volumes",
                format!(
                    "{} names; a heartbeat lists at most {HEARTBEAT_ASSEMBLED_MAX}",
                    report.switched.len()
                ),
            ));
        }
        for layer in &report.switched {
            // A layer frozen, deleted or no longer this head's since is no
            // news.
            if let Some((volume, ch)) = self.finish_freeze_of(server, layer) {
                changes.merge(ch);
                out.events.push(HeartbeatEvent::Switched { volume });
            }
        }
        if report.pools.len() > HEARTBEAT_ASSEMBLED_MAX {
            return Err(ModelError::invalid(
                "pools",
                format!(
                    "{} pools; a heartbeat lists at most {HEARTBEAT_ASSEMBLED_MAX}",
                    report.pools.len()
                ),
            ));
        }
        self.grow_pools(
            server,
            &report.pools,
            secrets,
            &mut out.events,
            &mut changes,
        );
        let grown = self.head_serves(server, &report.served, &mut changes)?;
        out.events.extend(
            grown
                .into_iter()
                .map(|(volume, size_bytes)| HeartbeatEvent::GrowApplied { volume, size_bytes }),
        );
        out.generation = self.generation();
        Ok((out, changes))
    }

    /// The chunk a slot holds now, if the slot exists.
    fn chunk_in_slot(&self, volume: &str, mirrored_disk: u32, leg: u8) -> Option<ChunkRef> {
        let v = self.reported_mirrors(volume)?;
        let leg = v
            .mirrored_disks
            .get(mirrored_disk as usize)?
            .legs
            .get(usize::from(leg))?;
        Some(leg.chunk)
    }

    fn leg_failure(
        &mut self,
        server: ServerId,
        f: &LegFailure,
        out: &mut HeartbeatOutcome,
        changes: &mut Changes,
    ) {
        let current = self.chunk_in_slot(&f.volume, f.mirrored_disk, f.leg);
        if f.chunk.is_some() && current != f.chunk {
            out.dropped.push(DroppedReport::FailureOfReplacedChunk {
                volume: f.volume.clone(),
            });
            return;
        }
        let holder = current
            .and_then(|ch| self.disk(ch.disk).ok())
            .map(|d| d.server);
        match self.report_leg_failed(server, &f.volume, f.mirrored_disk, f.leg) {
            Ok(ch) => {
                if !ch.volumes.is_empty() {
                    out.suspects.extend(holder);
                    out.events.push(HeartbeatEvent::LegFailed {
                        volume: f.volume.clone(),
                        mirrored_disk: f.mirrored_disk,
                        leg: f.leg,
                    });
                }
                changes.merge(ch);
            }
            Err(error) => out.dropped.push(DroppedReport::StaleFailure {
                volume: f.volume.clone(),
                error,
            }),
        }
    }

    fn resync_update(
        &mut self,
        server: ServerId,
        r: &ResyncUpdate,
        out: &mut HeartbeatOutcome,
    ) -> Result<Changes, ModelError> {
        let job = r.job;
        // Only the job's current executor may move it on.
        if self.job_executor(job).map(|e| e.server()) != Some(server) {
            out.dropped.push(DroppedReport::NotExecutor { job });
            return Ok(Changes::default());
        }
        let running = self.job(job)?;
        let volume = self.volume_label(running.volume);
        let kind = running.kind;
        let source = running.source;
        match &r.status {
            ResyncStatus::SourceFailed {
                source: failed,
                error,
            } => {
                // A report about an earlier attempt's source is stale.
                if source != Some(*failed) {
                    out.dropped.push(DroppedReport::StaleCopySource { job });
                    return Ok(Changes::default());
                }
                let (ch, another_source) = self.copy_source_failed(job, error)?;
                out.events.push(HeartbeatEvent::ResyncSourceFailed {
                    job,
                    volume,
                    source: *failed,
                    error: error.clone(),
                    another_source,
                });
                Ok(ch)
            }
            ResyncStatus::Failed { error } => {
                out.events.push(HeartbeatEvent::ResyncFailed {
                    job,
                    volume,
                    kind,
                    error: error.clone(),
                });
                self.fail_job(job, error)
            }
            ResyncStatus::Done => {
                out.events
                    .push(HeartbeatEvent::ResyncDone { job, volume, kind });
                self.finish_job(job)
            }
            ResyncStatus::Copying { bytes_done } => {
                out.progress.push((job, *bytes_done));
                self.job_progress(job, *bytes_done)
            }
        }
    }

    fn scrub_verdict(
        &mut self,
        server: ServerId,
        v: &ScrubVerdict,
        now_unix_s: u64,
        out: &mut HeartbeatOutcome,
        changes: &mut Changes,
    ) {
        let Some(volume) = self.reported_mirrors(&v.volume).map(|vol| vol.id) else {
            out.dropped.push(DroppedReport::ScrubOfMissingVolume {
                volume: v.volume.clone(),
            });
            return;
        };
        let (m, id) = (v.mirrored_disk, v.scrub);
        // Only the run's executor may end it.
        if self.scrub(volume, m).map(|run| (run.id, run.executor)) != Some((id, server)) {
            out.dropped.push(DroppedReport::StaleScrub {
                volume: v.volume.clone(),
                scrub: id,
            });
            return;
        }
        match &v.result {
            ScrubResult::NotDone { error } => match self.scrub_failed(volume, m, id, now_unix_s) {
                Ok(ch) => {
                    changes.merge(ch);
                    out.events.push(HeartbeatEvent::ScrubFailed {
                        volume: v.volume.clone(),
                        mirrored_disk: m,
                        error: error.clone(),
                    });
                }
                Err(error) => out
                    .dropped
                    .push(DroppedReport::ScrubFailureRefused { scrub: id, error }),
            },
            ScrubResult::Read {
                mismatched_sectors,
                unreadable_legs,
            } => {
                // Named before the legs fail (and may be replaced).
                let legs: Vec<(u8, String)> = unreadable_legs
                    .iter()
                    .map(|&l| (l, self.holder_name(volume, m, l)))
                    .collect();
                match self.finish_scrub(volume, m, id, now_unix_s, unreadable_legs) {
                    Ok(ch) => {
                        changes.merge(ch);
                        if !legs.is_empty() {
                            out.events.push(HeartbeatEvent::ScrubUnreadable {
                                volume: v.volume.clone(),
                                mirrored_disk: m,
                                legs,
                            });
                        }
                        out.scrubs_finished.push(FinishedScrub {
                            volume: v.volume.clone(),
                            mirrored_disk: m,
                            mismatched_sectors: *mismatched_sectors,
                        });
                    }
                    Err(error) => out
                        .dropped
                        .push(DroppedReport::ScrubRefused { scrub: id, error }),
                }
            }
        }
    }

    /// The name of the server holding a leg slot's chunk ("" if none).
    fn holder_name(&self, volume: VolumeId, m: u32, leg: u8) -> String {
        self.volume(volume)
            .and_then(|v| v.mirrored_disks.get(m as usize)?.legs.get(usize::from(leg)))
            .and_then(|leg| self.disk(leg.chunk.disk).ok())
            .and_then(|d| self.server(d.server))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }
}
