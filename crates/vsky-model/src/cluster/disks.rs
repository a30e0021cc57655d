//! Disks: adding, registering, removing and failing them, and wiping their
//! freed chunks.
//!
//! A disk is cut into chunks after its header; a disk that grows gets more
//! chunks, one that shrinks below its chunks is refused (that would lose
//! data). A freed chunk stays `releasing` under its release id until its
//! storage agent reports it wiped for that very release
//! ([`Cluster::chunks_wiped`]), so an old volume's data never reaches a new
//! one. A disk is removed only when none of its chunks is used.

use std::collections::BTreeMap;

use super::{Changes, Cluster, DiskRuntime, LegAddr, not_found};
use crate::entities::{Disk, DiskState};
use crate::error::ModelError;
use crate::freelist::FreeList;
use crate::ids::{self, ChunkRef, DiskId, ServerId};
use crate::limits;

#[derive(Clone, Debug)]
pub struct NewDisk {
    pub server: String,
    pub path: String,
    pub size_bytes: u64,
    pub class: Option<String>,
}

/// A storage agent's report that it wiped a chunk for one release (the
/// `release` of the `WipeSpec` it acted on; see [`Disk::releasing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WipedChunk {
    pub chunk: ChunkRef,
    pub release: u64,
}

/// Per-disk usage in chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub legs: u64,
    pub free_chunks: u64,
    pub releasing_chunks: u64,
}

impl Cluster {
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.disks.values()
    }

    pub fn disk(&self, id: DiskId) -> Result<&Disk, ModelError> {
        self.disks
            .get(&id)
            .ok_or_else(|| not_found("disk", "disk", id.0))
    }

    pub fn disks_of(&self, server: ServerId) -> impl Iterator<Item = &Disk> {
        self.disks_by_server
            .get(&server)
            .into_iter()
            .flatten()
            .map(|id| &self.disks[id])
    }

    pub fn disk_usage(&self, id: DiskId) -> DiskUsage {
        let disk = &self.disks[&id];
        let rt = &self.runtime[&id];
        DiskUsage {
            legs: rt.used.len() as u64,
            free_chunks: rt.free.len(),
            releasing_chunks: disk.releasing.len() as u64,
        }
    }

    /// Every leg that uses a chunk of this disk.
    pub fn legs_on_disk(&self, id: DiskId) -> impl Iterator<Item = (u32, LegAddr)> + '_ {
        self.runtime
            .get(&id)
            .into_iter()
            .flat_map(|rt| rt.used.iter().map(|(&i, &a)| (i, a)))
    }

    fn validate_new_disk(&self, new: &NewDisk) -> Result<(ServerId, u32), ModelError> {
        let server = self.server_by_name(&new.server)?.id;
        ids::validate_device_path(&new.path)?;
        if let Some(class) = &new.class {
            ids::validate_name("disk class", class)?;
        }
        let chunks = self.settings.chunks_on_disk(new.size_bytes);
        if chunks == 0 {
            return Err(ModelError::invalid(
                "disk size",
                format!(
                    "{} bytes holds no chunk: a disk needs at least {} bytes ({} header + one {}-byte chunk)",
                    new.size_bytes,
                    self.settings.disk_header_bytes + self.settings.chunk_size_bytes,
                    self.settings.disk_header_bytes,
                    self.settings.chunk_size_bytes
                ),
            ));
        }
        if chunks > limits::CHUNKS_PER_DISK_MAX {
            return Err(ModelError::invalid(
                "disk size",
                "more than 2^32-1 chunks; use a bigger chunk size",
            ));
        }
        Ok((server, chunks as u32))
    }

    /// Adds a disk to a server (admin). Fails if the path exists there.
    pub fn add_disk(&mut self, new: NewDisk) -> Result<(DiskId, Changes), ModelError> {
        let (server, chunk_count) = self.validate_new_disk(&new)?;
        if self.disks_of(server).any(|d| d.path == new.path) {
            return Err(ModelError::AlreadyExists {
                kind: "disk",
                key: format!("{}:{}", new.server, new.path),
            });
        }
        let mut changes = Changes::default();
        let id = DiskId(self.take_id(&mut changes));
        self.disks.insert(
            id,
            Disk {
                id,
                server,
                path: new.path,
                size_bytes: new.size_bytes,
                class: new.class,
                state: DiskState::Online,
                chunk_count,
                releasing: BTreeMap::new(),
                draining: false,
                labelled: false,
            },
        );
        self.runtime.insert(
            id,
            DiskRuntime {
                free: FreeList::full(chunk_count),
                used: BTreeMap::new(),
            },
        );
        self.disks_by_server.entry(server).or_default().insert(id);
        self.reindex(id);
        changes.disks.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Registers a disk on behalf of its agent: adds it, or updates an
    /// existing one (a disk that grew gets more chunks; one that shrank below
    /// its chunks is refused, since that would lose data).
    pub fn register_disk(&mut self, new: NewDisk) -> Result<(DiskId, Changes), ModelError> {
        let (server, chunk_count) = self.validate_new_disk(&new)?;
        let Some(id) = self
            .disks_of(server)
            .find(|d| d.path == new.path)
            .map(|d| d.id)
        else {
            return self.add_disk(new);
        };
        let disk = self.disks.get_mut(&id).expect("exists");
        let mut changes = Changes::default();
        if chunk_count < disk.chunk_count {
            return Err(ModelError::Conflict(format!(
                "disk {} on '{}' shrank from {} to {} bytes, which cuts off its chunks: it is failed and its legs are rebuilt elsewhere; once it holds no legs, remove it with `vsky disk remove`",
                new.path, new.server, disk.size_bytes, new.size_bytes
            )));
        }
        if chunk_count > disk.chunk_count
            || disk.class != new.class
            || disk.size_bytes != new.size_bytes
        {
            let rt = self.runtime.get_mut(&id).expect("runtime for every disk");
            rt.free.extend(disk.chunk_count, chunk_count);
            disk.chunk_count = chunk_count;
            disk.size_bytes = new.size_bytes;
            disk.class = new.class;
            changes.disks.insert(id);
            self.reindex(id);
        }
        Ok((id, self.commit(changes)))
    }

    /// Removes a disk none of whose chunks is used.
    pub fn remove_disk(&mut self, id: DiskId) -> Result<Changes, ModelError> {
        self.disk(id)?;
        let legs = self.runtime[&id].used.len();
        if legs > 0 {
            return Err(ModelError::Conflict(format!(
                "disk {} still holds {legs} legs of volumes; drain it or delete those volumes first",
                id.0
            )));
        }
        self.drop_disk(id);
        let mut changes = Changes::default();
        changes.disks.insert(id);
        Ok(self.commit(changes))
    }

    /// Declares a disk failed: its legs fail and it gets no new chunks.
    /// Idempotent.
    pub fn fail_disk(&mut self, id: DiskId) -> Result<Changes, ModelError> {
        self.disk(id)?;
        let mut changes = Changes::default();
        let disk = self.disks.get_mut(&id).expect("exists");
        if disk.state != DiskState::Failed {
            disk.state = DiskState::Failed;
            changes.disks.insert(id);
        }
        self.fail_legs_on(id, &mut changes);
        self.reindex(id);
        Ok(self.commit(changes))
    }

    /// The storage agent of `server` reports chunks it has wiped: each
    /// becomes free if it is still releasing under the release the wipe was
    /// for. Anything else is ignored, not refused: the report may be a
    /// retry, or late, and the chunk may since have been reused and freed
    /// again (it then waits for the wipe of its new release, or an old
    /// volume's data would reach a new one). Returns how many chunks were
    /// freed.
    pub fn chunks_wiped(
        &mut self,
        server: ServerId,
        wiped: &[WipedChunk],
    ) -> Result<(usize, Changes), ModelError> {
        for w in wiped {
            let disk = self.disk(w.chunk.disk)?;
            if disk.server != server {
                return Err(ModelError::invalid(
                    "wiped chunk",
                    format!("disk {} does not belong to this server", w.chunk.disk.0),
                ));
            }
        }
        let mut changes = Changes::default();
        let mut freed = 0;
        for &WipedChunk { chunk: c, release } in wiped {
            let disk = self.disks.get_mut(&c.disk).expect("checked");
            if disk.releasing.get(&c.index) == Some(&release) {
                disk.releasing.remove(&c.index);
                let rt = self
                    .runtime
                    .get_mut(&c.disk)
                    .expect("runtime for every disk");
                assert!(
                    rt.free.give_back(c.index),
                    "a releasing chunk is never free"
                );
                freed += 1;
                changes.disks.insert(c.disk);
            }
        }
        for d in changes.disks.clone() {
            self.reindex(d);
        }
        Ok((freed, self.commit(changes)))
    }

    pub(super) fn drop_disk(&mut self, id: DiskId) {
        self.index.set(id, None);
        self.runtime.remove(&id);
        let disk = self.disks.remove(&id).expect("dropping a known disk");
        if let Some(set) = self.disks_by_server.get_mut(&disk.server) {
            set.remove(&id);
        }
        self.reindex_server(disk.server);
    }
}
