//! Read-only attachments: snapshots read on any number of hosts at once
//! (docs/design/snapshots.md §5.5.3). This is how backups read a VM's disk
//! while the VM keeps running and writing elsewhere: xapi snapshots the
//! disk, then activates the snapshot read-only (`Datapath.activate_readonly`)
//! on whichever host exports it.
//!
//! ## Rules
//! - Only a snapshot has readers ([`Volume::readers`]): its chain is frozen,
//!   so every reader assembles it in base form (raid1 without metadata over
//!   the active legs, read-only tables, `read_only` pools), and no reader
//!   can change what another, or a clone's head, reads. A read-only attach
//!   of any other volume is its one ordinary attachment
//!   ([`Cluster::attach_read_only`]): its data may change, so it has one
//!   head, as for a write.
//! - A reader needs no fencing. The storage agents refuse writes past the
//!   dm-raid metadata area of a frozen layer's active legs whatever the
//!   name they are opened with (`ExportSpec::writable_bytes`), and a base
//!   form never maps the metadata area. So a reader uses the layers' own
//!   export names, as every head of a clone over the same layers does, and
//!   a layer shared by a reader and a writer's chain on one host is
//!   assembled once (`head/chain.rs`). Ending a reader therefore draws no
//!   new names: one-phase, at once. Its head then tears the devices down;
//!   if the snapshot is deleted first, the legs' exports go and its reads
//!   fail — never anybody's data, because a frozen layer in base form
//!   imports every leg over NBD, also one on the head's own disk
//!   (`agent_view.rs`): only an import is cut when the export goes.
//! - A snapshot with a reader cannot be deleted, unless the reader's server
//!   is declared failed (that host reads nothing any more): a backup in
//!   flight keeps its snapshot. `vsky volume detach --force` ends every
//!   reader (the admin's way out of a reader that is gone for good); so does
//!   removing a server.

use std::collections::BTreeSet;

use super::{Changes, Cluster};
use crate::entities::{ServerState, VolumeRole};
use crate::error::ModelError;
use crate::ids::{ServerId, VolumeId};
use crate::limits::READERS_PER_VOLUME_MAX;

/// What a read-only attach became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOnlyAttach {
    /// The server reads the snapshot, with any number of others.
    Reader,
    /// The volume is not a snapshot: the server is its one head, as for a
    /// read-write attach; `taken_from` names a gone head it was taken from
    /// (only a read-write attach takes a volume over).
    Head { taken_from: Option<String> },
}

impl Cluster {
    /// Attaches `name` read-only to `server`: a snapshot gets the server as
    /// one more reader ([`Self::attach_reader`]); any other volume is
    /// attached to it as by [`Self::attach_volume`]. A read never takes a
    /// volume over from another head, gone or not: fencing a head for a
    /// read would hand a writable device to a reader.
    pub fn attach_read_only(
        &mut self,
        name: &str,
        server: &str,
    ) -> Result<(ReadOnlyAttach, Changes), ModelError> {
        if matches!(self.volume_by_name(name)?.role, VolumeRole::Snapshot { .. }) {
            return Ok((ReadOnlyAttach::Reader, self.attach_reader(name, server)?));
        }
        let changes = self.attach_volume(name, server)?;
        Ok((ReadOnlyAttach::Head { taken_from: None }, changes))
    }

    /// Adds `server` to the readers of snapshot `name`. Idempotent. Refused
    /// for a server that is failed or cannot head volumes, a volume that is
    /// not a snapshot, a snapshot still being taken, and past
    /// [`READERS_PER_VOLUME_MAX`] readers.
    pub fn attach_reader(&mut self, name: &str, server: &str) -> Result<Changes, ModelError> {
        let head_id = self.healthy_head(server)?;
        let volume = self.volume_by_name(name)?;
        let id = volume.id;
        if !matches!(volume.role, VolumeRole::Snapshot { .. }) {
            return Err(ModelError::invalid(
                "volume",
                format!(
                    "'{name}' is not a snapshot; only snapshots are read on several hosts at once (attach it read-write, or snapshot it and read the snapshot)"
                ),
            ));
        }
        if !self.snapshot_is_ready(id) {
            return Err(ModelError::Conflict(format!(
                "snapshot '{name}' is still being taken on its volume's head; try again in a moment"
            )));
        }
        let mut changes = Changes::default();
        if volume.readers.contains(&head_id) {
            return Ok(changes);
        }
        if volume.readers.len() >= READERS_PER_VOLUME_MAX {
            return Err(ModelError::Conflict(format!(
                "snapshot '{name}' is read on {} servers already, the most one snapshot may be; detach it from one of them first",
                volume.readers.len()
            )));
        }
        self.volumes
            .get_mut(&id)
            .expect("exists")
            .readers
            .insert(head_id);
        changes.volumes.insert(id);
        Ok(self.commit(changes))
    }

    /// Ends `server`'s read-only attachment of `name`, at once (see the
    /// module header). Returns whether it had one; idempotent.
    pub fn end_reader(&mut self, name: &str, server: &str) -> Result<(bool, Changes), ModelError> {
        let server = self.server_by_name(server)?.id;
        let id = self.volume_by_name(name)?.id;
        let mut changes = Changes::default();
        let ended = self
            .volumes
            .get_mut(&id)
            .expect("exists")
            .readers
            .remove(&server);
        if ended {
            changes.volumes.insert(id);
        }
        Ok((ended, self.commit(changes)))
    }

    /// An admin's graceful detach: of `server` when named (its read of a
    /// snapshot ends, or, as its head, the volume starts releasing), else
    /// of the volume's head ([`Self::release_volume`]). A snapshot read on
    /// servers is refused without one named: ending every read at once is
    /// the forced detach.
    pub fn release_or_end_read(
        &mut self,
        name: &str,
        server: Option<&str>,
    ) -> Result<Changes, ModelError> {
        let volume = self.volume_by_name(name)?;
        let Some(server) = server else {
            if volume.attachment.is_none() && !volume.readers.is_empty() {
                let on: Vec<&str> = volume
                    .readers
                    .iter()
                    .map(|s| self.servers[s].name.as_str())
                    .collect();
                return Err(ModelError::Conflict(format!(
                    "snapshot '{name}' is read on {}; name the server whose read ends (`--server`), or end every read with `--force`",
                    on.join(", ")
                )));
            }
            return self.release_volume(name);
        };
        let id = self.server_by_name(server)?.id;
        if volume.readers.contains(&id) {
            return Ok(self.end_reader(name, server)?.1);
        }
        match volume.attachment.as_ref() {
            Some(a) if a.head == id => self.release_volume(name),
            _ => Err(ModelError::Conflict(format!(
                "volume '{name}' is neither attached to nor read on server '{server}'"
            ))),
        }
    }

    /// Whether `server` reads volume `name` (a known volume).
    pub fn is_reader(&self, name: &str, server: ServerId) -> bool {
        self.volume_by_name(name)
            .is_ok_and(|v| v.readers.contains(&server))
    }

    /// Ends every reader of volume `id` (the admin's forced detach).
    /// Returns whether there was one.
    pub(super) fn end_all_readers(&mut self, id: VolumeId, changes: &mut Changes) -> bool {
        let volume = self.volumes.get_mut(&id).expect("caller checked");
        if volume.readers.is_empty() {
            return false;
        }
        volume.readers.clear();
        changes.volumes.insert(id);
        true
    }

    /// Before a delete: refuses a snapshot read on a live server, and ends
    /// the readers on failed ones.
    pub(super) fn settle_readers_for_delete(
        &mut self,
        id: VolumeId,
        changes: &mut Changes,
    ) -> Result<(), ModelError> {
        let volume = &self.volumes[&id];
        let live: Vec<&str> = volume
            .readers
            .iter()
            .map(|s| &self.servers[s])
            .filter(|s| s.state != ServerState::Failed)
            .map(|s| s.name.as_str())
            .collect();
        if !live.is_empty() {
            return Err(ModelError::Conflict(format!(
                "snapshot '{}' is being read on {} (a backup?); detach it there first, or end a dead host's read with `vsky volume detach --force {}`",
                volume.name,
                live.join(", "),
                volume.name
            )));
        }
        self.end_all_readers(id, changes);
        Ok(())
    }

    /// Ends the read-only attachments of a server that leaves the cluster.
    pub(super) fn end_readers_on(&mut self, server: ServerId, changes: &mut Changes) {
        for v in self.volumes.values_mut() {
            if v.readers.remove(&server) {
                changes.volumes.insert(v.id);
            }
        }
    }

    /// Every reader rule, checked from scratch: only ready snapshots have
    /// readers, each a known server, at most [`READERS_PER_VOLUME_MAX`].
    pub(super) fn check_readers(&self) -> Result<(), String> {
        for v in self.volumes.values().filter(|v| !v.readers.is_empty()) {
            if !self.snapshot_is_ready(v.id) {
                return Err(format!(
                    "volume {} has readers but is not a ready snapshot",
                    v.name
                ));
            }
            if v.readers.len() > READERS_PER_VOLUME_MAX {
                return Err(format!("snapshot {} has too many readers", v.name));
            }
            let unknown: BTreeSet<_> = v
                .readers
                .iter()
                .filter(|s| !self.servers.contains_key(s))
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "snapshot {} is read by unknown servers {unknown:?}",
                    v.name
                ));
            }
        }
        Ok(())
    }
}
