//! What one server's agent must do, derived from the cluster: which chunks
//! to export (storage role), which volumes to assemble (head role), which
//! freed chunks to wipe, which detached volumes' legs to copy, and which
//! mirrored disks to scrub. The manager serves this as the agent's desired
//! state; nothing here is stored.
//!
//! A view names only what its server needs right now, because an agent
//! token may leak: a leg's secret export name is listed to the server that
//! exports the chunk, and to another server only while that server must
//! open the leg (as the head of an attached volume, a copy's source, a
//! leg a comparing scrub reads over NBD). A storage-only server is listed
//! no volume to assemble, and a head no volume it is releasing.

use crate::cluster::Cluster;
use crate::cluster::executor::Executor;
use crate::cluster::scrub::ScrubMethod;
use crate::entities::*;
use crate::ids::{ChunkRef, JobId, ServerId, VolumeId};

/// A chunk this server exports over NBD under a secret name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    pub export_name: String,
    pub chunk: ChunkRef,
    pub disk_path: String,
    pub offset_bytes: u64,
    pub size_bytes: u64,
    /// Writes past this byte of the export are refused: set for the active
    /// legs of a frozen layer (`cluster/chains.rs`), whose data nothing may
    /// change while any number of hosts read it; its dm-raid metadata area
    /// in front stays writable for the head that assembles it with one.
    pub writable_bytes: Option<u64>,
}

/// A freed chunk this server must wipe before it can be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WipeSpec {
    pub chunk: ChunkRef,
    /// Which release of the chunk this wipe is for: the agent reports the
    /// wipe with it (`Cluster::chunks_wiped`), and wipes again when the
    /// same chunk comes back with another.
    pub release: u64,
    pub disk_path: String,
    pub offset_bytes: u64,
    pub size_bytes: u64,
}

/// One leg as the head needs it to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegSpec {
    pub chunk: ChunkRef,
    pub server: ServerId,
    pub server_address: String,
    /// The leg's secret export name; empty when this server has no reason
    /// to open the leg now (a failed or waiting leg of a head's mirror, a
    /// leg a scrub reads in place or not at all).
    pub export_name: String,
    /// Set when the chunk is on the head's own disk: map it directly.
    pub local_disk_path: Option<String>,
    pub offset_bytes: u64,
    pub state: LegState,
    /// A syncing leg whose resync this head runs now.
    pub resync_job: Option<JobId>,
}

/// A resync of a detached volume that this (storage) server copies into
/// its own chunk, reading the healthy `source` leg over NBD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySpec {
    pub job: JobId,
    pub source: LegSpec,
    pub target: ChunkRef,
    pub target_disk_path: String,
    pub target_offset_bytes: u64,
}

/// A scrub of a mirrored disk that this server runs: as the volume's head,
/// dm-raid's `check` on its mirror; for a detached volume, reading every
/// leg's data area (its own in place, the others over NBD) and comparing
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubSpec {
    pub scrub: u64,
    pub method: ScrubMethod,
    pub volume: String,
    pub mirrored_disk: u32,
    pub legs: Vec<LegSpec>,
}

/// A volume this server (its head) assembles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    pub stripe: Option<Stripe>,
    pub chunk_size_bytes: u64,
    pub leg_meta_bytes: u64,
    pub mirrored_disks: Vec<Vec<LegSpec>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView {
    pub generation: u64,
    pub exports: Vec<ExportSpec>,
    pub wipes: Vec<WipeSpec>,
    pub volumes: Vec<VolumeSpec>,
    pub copies: Vec<CopySpec>,
    pub scrubs: Vec<ScrubSpec>,
}

impl Cluster {
    /// The desired state of one server's agent. O(its chunks + attached
    /// volumes' legs).
    pub fn agent_view(&self, server: ServerId) -> AgentView {
        let s = self.settings();
        let chunk = s.chunk_size_bytes;
        let mut exports = Vec::new();
        let mut wipes = Vec::new();
        for disk in self.disks_of(server) {
            if disk.state == DiskState::Failed {
                continue;
            }
            for (index, addr) in self.legs_on_disk(disk.id) {
                if !self.leg_exported(addr.volume, addr.mirrored_disk, addr.leg) {
                    continue;
                }
                let v = self
                    .volume(addr.volume)
                    .expect("used chunks belong to volumes");
                let leg =
                    &v.mirrored_disks[addr.mirrored_disk as usize].legs[usize::from(addr.leg)];
                exports.push(ExportSpec {
                    export_name: leg.export_name.clone(),
                    chunk: ChunkRef {
                        disk: disk.id,
                        index,
                    },
                    disk_path: disk.path.clone(),
                    offset_bytes: s.chunk_offset_bytes(index),
                    size_bytes: chunk,
                    writable_bytes: self.leg_is_immutable(v, leg).then_some(s.leg_meta_bytes),
                });
            }
            for (&index, &release) in &disk.releasing {
                wipes.push(WipeSpec {
                    chunk: ChunkRef {
                        disk: disk.id,
                        index,
                    },
                    release,
                    disk_path: disk.path.clone(),
                    offset_bytes: s.chunk_offset_bytes(index),
                    size_bytes: chunk,
                });
            }
        }
        // A storage-only server assembles nothing (an attachment from
        // before the role was known waits for an admin's detach). A
        // releasing volume is left out: its head tears it down, and its
        // heartbeat then ends the attachment (`cluster/access.rs`).
        // Thin volumes are not assembled by heads yet (design step 6 of
        // docs/design/snapshots.md); nothing attaches one until then.
        let heads = self.server(server).is_some_and(|s| !s.storage_only);
        let volumes = self
            .volumes()
            .filter(|v| {
                heads
                    && v.role.is_thick()
                    && v.attachment
                        .as_ref()
                        .is_some_and(|a| a.head == server && !a.is_releasing())
            })
            .map(|v| VolumeSpec {
                name: v.name.clone(),
                size_bytes: v.size_bytes,
                stripe: v.stripe,
                chunk_size_bytes: chunk,
                leg_meta_bytes: s.leg_meta_bytes,
                mirrored_disks: v
                    .mirrored_disks
                    .iter()
                    .enumerate()
                    .map(|(m, md)| {
                        md.legs
                            .iter()
                            .enumerate()
                            .map(|(l, leg)| {
                                let mut spec = self.leg_spec(server, leg);
                                spec.resync_job = self
                                    .active_job(v.id, m as u32, l as u8)
                                    .filter(|j| {
                                        leg.state == LegState::Syncing
                                            && self.job_executor(j.id)
                                                == Some(Executor::Head(server))
                                    })
                                    .map(|j| j.id);
                                // The head imports active legs and the new
                                // members it rebuilds, nothing else.
                                if leg.state != LegState::Active && spec.resync_job.is_none() {
                                    spec.export_name.clear();
                                }
                                spec
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        AgentView {
            generation: self.generation(),
            exports,
            wipes,
            volumes,
            copies: self.copies_of(server),
            scrubs: self.scrubs_of(server),
        }
    }

    /// Running scrubs that `server` executes.
    fn scrubs_of(&self, server: ServerId) -> Vec<ScrubSpec> {
        self.scrubs()
            .filter(|(_, _, run)| run.executor == server)
            .filter_map(|(volume, m, run)| {
                let v = self.volume(volume)?;
                Some(ScrubSpec {
                    scrub: run.id,
                    method: run.method,
                    volume: v.name.clone(),
                    mirrored_disk: m,
                    legs: v.mirrored_disks[m as usize]
                        .legs
                        .iter()
                        .map(|leg| {
                            let mut spec = self.leg_spec(server, leg);
                            // A head checks through its own mirror; a
                            // comparison reads its own leg in place.
                            if run.method == ScrubMethod::RaidCheck
                                || spec.local_disk_path.is_some()
                            {
                                spec.export_name.clear();
                            }
                            spec
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// Running resyncs of detached volumes whose target chunk is on
    /// `server`.
    fn copies_of(&self, server: ServerId) -> Vec<CopySpec> {
        self.jobs()
            .filter(|j| self.job_executor(j.id) == Some(Executor::Storage(server)))
            .filter_map(|j| {
                let source = j.source?;
                let v = self.volume(j.volume)?;
                let leg = v.mirrored_disks[j.mirrored_disk as usize]
                    .legs
                    .iter()
                    .find(|l| l.chunk == source)?;
                let target_disk = self.disk(j.target.disk).ok()?;
                Some(CopySpec {
                    job: j.id,
                    source: self.leg_spec(server, leg),
                    target: j.target,
                    target_disk_path: target_disk.path.clone(),
                    target_offset_bytes: self.settings().chunk_offset_bytes(j.target.index),
                })
            })
            .collect()
    }

    /// The volume a job repairs, by name, for messages.
    pub fn volume_label(&self, id: VolumeId) -> String {
        self.volume(id)
            .map(|v| v.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    }

    fn leg_spec(&self, head: ServerId, leg: &Leg) -> LegSpec {
        let disk = self.disk(leg.chunk.disk).expect("legs sit on known disks");
        let owner = self
            .server(disk.server)
            .expect("disks sit on known servers");
        LegSpec {
            chunk: leg.chunk,
            server: owner.id,
            server_address: owner.address.clone(),
            export_name: leg.export_name.clone(),
            local_disk_path: (owner.id == head).then(|| disk.path.clone()),
            offset_bytes: self.settings().chunk_offset_bytes(leg.chunk.index),
            state: leg.state,
            resync_job: None,
        }
    }
}
