//! Placing legs: taking chunks for new mirrored disks, and keeping the
//! allocation index and the partner counts current.
//!
//! Which disks a mirrored disk's legs go to is decided by `AllocIndex::pick`
//! under the allocation rules written at the top of `alloc.rs`; this file
//! applies its choice. `allocate` is all or nothing: on failure
//! every chunk taken is given back. Every change to a disk's free chunks,
//! state or server goes through `reindex`, so the index never holds a disk
//! that may not take new legs (failed, draining, or on such a server).

use super::{Cluster, LegAddr};
use crate::SecretSource;
use crate::alloc::{DiskEntry, Near};
use crate::entities::{DiskState, Leg, LegState, MirroredDisk, ServerState, Volume};
use crate::error::ModelError;
use crate::ids::{ChunkRef, DiskId, ServerId};

impl Cluster {
    /// Allocates `count` mirrored disks for `volume`, numbered from `first`.
    /// On failure every chunk taken is given back: nothing stays allocated.
    pub(super) fn allocate(
        &mut self,
        volume: &Volume,
        count: u64,
        first: u64,
        secrets: &mut dyn SecretSource,
    ) -> Result<Vec<MirroredDisk>, ModelError> {
        let class = volume.class.as_deref();
        let needed = count * u64::from(volume.replicas);
        let free = self.index.free_chunks(class);
        let class_note = class
            .map(|c| format!(" of class '{c}'"))
            .unwrap_or_default();
        if needed > free {
            return Err(ModelError::NotEnoughChunks {
                needed,
                free,
                class: class_note,
            });
        }
        let near_server = volume
            .near_server
            .or(volume.attachment.as_ref().map(|a| a.head));
        let near = near_server
            .and_then(|id| self.servers.get(&id))
            .map(|s| Near {
                server: s.id,
                domain: s.failure_domain(&self.settings.failure_domain_label),
            });
        let mut taken: Vec<ChunkRef> = Vec::with_capacity(needed as usize);
        let mut mirrored: Vec<Vec<ChunkRef>> = Vec::with_capacity(count as usize);
        for m in 0..count {
            let picked = self
                .index
                .pick(volume.replicas, class, near.as_ref(), &self.partners);
            let Some(disks) = picked else {
                let eligible = self.index.eligible_servers(class);
                for legs in &mirrored {
                    self.link_pairs(legs, false);
                }
                self.give_back(&taken);
                return Err(if eligible < usize::from(volume.replicas) {
                    ModelError::NotEnoughServers {
                        replicas: volume.replicas,
                        eligible,
                        class: class_note,
                    }
                } else {
                    ModelError::NotEnoughChunks {
                        needed,
                        free,
                        class: class_note,
                    }
                });
            };
            let mut legs = Vec::with_capacity(disks.len());
            for (l, disk) in disks.into_iter().enumerate() {
                let addr = LegAddr {
                    volume: volume.id,
                    mirrored_disk: (first + m) as u32,
                    leg: l as u8,
                };
                let index = self.take_chunk(disk, addr);
                let chunk = ChunkRef { disk, index };
                taken.push(chunk);
                legs.push(chunk);
            }
            self.link_pairs(&legs, true);
            mirrored.push(legs);
        }
        // Secrets are drawn only once the allocation stands.
        Ok(mirrored
            .into_iter()
            .map(|legs| MirroredDisk {
                last_scrub_unix_s: None,
                legs: legs
                    .into_iter()
                    .map(|chunk| Leg {
                        chunk,
                        state: LegState::Active,
                        export_name: secrets.export_secret(),
                        never_synced: false,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Counts (or with `add` false, uncounts) every pair of the legs of one
    /// mirrored disk in the partner counts.
    pub(super) fn link_pairs(&mut self, legs: &[ChunkRef], add: bool) {
        let legs: Vec<(DiskId, ServerId)> = legs
            .iter()
            .map(|c| (c.disk, self.disks[&c.disk].server))
            .collect();
        self.partners.link(&legs, add);
    }

    /// Takes the lowest free chunk of an indexed disk for the leg at
    /// `addr`, keeping the allocation index current.
    pub(super) fn take_chunk(&mut self, disk: DiskId, addr: LegAddr) -> u32 {
        let rt = self
            .runtime
            .get_mut(&disk)
            .expect("indexed disks have runtime");
        let index = rt
            .free
            .take_lowest()
            .expect("indexed disks have a free chunk");
        rt.used.insert(index, addr);
        self.reindex(disk);
        index
    }

    pub(super) fn give_back(&mut self, chunks: &[ChunkRef]) {
        for c in chunks {
            let rt = self
                .runtime
                .get_mut(&c.disk)
                .expect("taken from a known disk");
            rt.used.remove(&c.index);
            assert!(rt.free.give_back(c.index));
            self.reindex(c.disk);
        }
    }

    /// Brings a disk's allocation-index entry up to date.
    pub(super) fn reindex(&mut self, id: DiskId) {
        let disk = &self.disks[&id];
        let server = &self.servers[&disk.server];
        let rt = &self.runtime[&id];
        // A draining disk or server serves its legs but takes no new ones.
        let eligible = disk.state == DiskState::Online
            && server.state == ServerState::Online
            && !disk.draining
            && !server.draining;
        let entry = eligible.then(|| DiskEntry {
            disk: id,
            server: server.id,
            domain: server.failure_domain(&self.settings.failure_domain_label),
            class: disk.class.clone(),
            legs: rt.used.len() as u64,
            free_chunks: rt.free.len(),
        });
        self.index.set(id, entry);
    }

    /// Re-indexes every disk of a server (its state or domain changed).
    pub(super) fn reindex_server(&mut self, server: ServerId) {
        let disks: Vec<DiskId> = self
            .disks_by_server
            .get(&server)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for id in disks {
            self.reindex(id);
        }
    }
}
