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
//! leg a comparing scrub reads over NBD, a layer of an attached thin
//! volume's chain or of a snapshot it reads). A storage-only server is listed no volume to assemble,
//! and a head no volume it is releasing.

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
    /// A thick volume's mirrored disks; empty for a thin volume.
    pub mirrored_disks: Vec<Vec<LegSpec>>,
    /// A thin volume's layers, its top first, each over the next; empty
    /// for a thick volume (`cluster/chains.rs`).
    pub chain: Vec<LayerSpec>,
    /// A snapshot this server reads (`cluster/readers.rs`): every layer in
    /// base form, and the device read-only.
    pub read_only: bool,
}

/// How a head assembles one layer of a chain (docs/design/snapshots.md
/// §5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerForm {
    /// The layer the volume writes: raid1 with metadata devices over every
    /// leg (resyncs run through it, as a thick volume's), its pool
    /// read-write.
    Top,
    /// The old top a snapshot froze, which this head still writes until it
    /// has switched the volume device to the new top: assembled as `Top`
    /// until then; the head then reloads its pool `read_only` and reports
    /// the switch (the heartbeat's frozen layers, `Cluster::finish_freeze`).
    Freezing,
    /// Immutable: raid1 over the active legs' data areas only (no metadata
    /// devices, `nosync`), read-only, its pool `read_only`. Any number of
    /// heads may assemble it so at once; storage agents repair it.
    Base,
}

/// One layer of a thin volume's chain: a dm-thin pool on the layer's
/// mirrored disks (metadata in front, data behind) and its thin device 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// The layer's record name (`_L<id>`): its devices are named after it,
    /// so a head assembles a layer several of its volumes share once.
    pub name: String,
    pub form: LayerForm,
    /// Every slot, as for a thick volume: a leg this head must not open
    /// has no export name (in `Base` form, every leg that is not active).
    pub mirrored_disks: Vec<Vec<LegSpec>>,
    /// Bytes of pool metadata at the front of the layer's first mirrored
    /// disk.
    pub meta_bytes: u64,
    /// Bytes of pool metadata at the front of each later mirrored disk
    /// (`cluster/pools.rs`).
    pub added_meta_bytes: u64,
    /// dm-thin block size, in 512-byte sectors.
    pub block_sectors: u32,
    /// The size of the layer's thin device.
    pub thin_size_bytes: u64,
    /// The layer its thin device reads unwritten blocks from (the next in
    /// the chain).
    pub parent: Option<String>,
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
        // heartbeat then ends the attachment (`cluster/access.rs`). The
        // snapshots it reads come with them.
        let heads = self.server(server).is_some_and(|s| !s.storage_only);
        let volumes = self
            .volumes()
            .filter(|v| {
                heads
                    && (v.readers.contains(&server)
                        || v.attachment
                            .as_ref()
                            .is_some_and(|a| a.head == server && !a.is_releasing()))
            })
            .map(|v| VolumeSpec {
                name: v.name.clone(),
                size_bytes: v.size_bytes,
                stripe: v.stripe,
                chunk_size_bytes: chunk,
                leg_meta_bytes: s.leg_meta_bytes,
                mirrored_disks: self.head_legs(server, v),
                chain: self.chain_specs(server, v),
                read_only: v.readers.contains(&server),
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

    /// The legs of a volume (or a top-form layer) as its head assembles
    /// them: active legs, and the new members whose resync this head runs.
    fn head_legs(&self, server: ServerId, v: &Volume) -> Vec<Vec<LegSpec>> {
        v.mirrored_disks
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
                                    && self.job_executor(j.id) == Some(Executor::Head(server))
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
            .collect()
    }

    /// A thin volume's chain as its head `server` assembles it: the layers
    /// its head writes in top form, the frozen ones in base form (their
    /// active legs only). Every leg of a layer is imported over NBD, none
    /// mapped from the head's own disk as a thick volume's may be.
    fn chain_specs(&self, server: ServerId, v: &Volume) -> Vec<LayerSpec> {
        let chain = self.chain(v.id);
        chain
            .iter()
            .enumerate()
            .filter_map(|(i, &id)| {
                let layer = self.volume(id)?;
                let info = layer.role.layer()?;
                let form = match info.state {
                    LayerState::Writable => LayerForm::Top,
                    LayerState::Freezing => LayerForm::Freezing,
                    LayerState::Frozen => LayerForm::Base,
                };
                let mirrored_disks = match form {
                    // Over NBD too (see below): this top is frozen in
                    // place one day, and then kept by readers of its
                    // snapshot after its volume left this head.
                    LayerForm::Top | LayerForm::Freezing => {
                        let mut legs = self.head_legs(server, layer);
                        for leg in legs.iter_mut().flatten() {
                            leg.local_disk_path = None;
                        }
                        legs
                    }
                    LayerForm::Base => layer
                        .mirrored_disks
                        .iter()
                        .map(|md| {
                            md.legs
                                .iter()
                                .map(|leg| {
                                    let mut spec = self.leg_spec(server, leg);
                                    if leg.state != LegState::Active {
                                        spec.export_name.clear();
                                    }
                                    // Always over NBD, even from this
                                    // server's own disk: a frozen layer's
                                    // legs move and its snapshots go
                                    // without this head's part, and only
                                    // an import is cut when the storage
                                    // agent drops the export before it
                                    // wipes the chunk (a local mapping
                                    // would read the wipe, then the next
                                    // owner's data, and a top-form mirror
                                    // frozen in place would write its
                                    // superblocks there).
                                    spec.local_disk_path = None;
                                    spec
                                })
                                .collect()
                        })
                        .collect(),
                };
                Some(LayerSpec {
                    name: layer.name.clone(),
                    form,
                    mirrored_disks,
                    meta_bytes: info.meta_bytes,
                    added_meta_bytes: crate::cluster::pools::later_meta_bytes(
                        info,
                        self.settings().data_bytes_per_chunk(),
                    ),
                    block_sectors: info.block_sectors,
                    thin_size_bytes: info.thin_size_bytes,
                    parent: chain.get(i + 1).map(|p| self.volume_label(*p)),
                })
            })
            .collect()
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
