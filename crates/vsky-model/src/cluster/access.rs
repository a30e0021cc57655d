//! Who may reach a volume's data: which servers may head volumes, how an
//! attachment is handed back, and how an ended attachment loses its way in.
//!
//! ## The life of an attachment
//!
//! ```text
//!   attach ──▶ Attached ──graceful detach──▶ Releasing ──head reports its
//!                 ▲                              │        devices gone──▶ ended
//!                 └──── attach on the same head ─┘
//!   forced detach (fencing), from either state ─────────────────────────▶ ended
//! ```
//!
//! - **Attached**: the head's desired state lists the volume; it assembles
//!   it and may write it.
//! - **Releasing** ([`Cluster::release_volume`], an admin's or the head
//!   agent's graceful detach): the head's desired state no longer lists the
//!   volume, so the head tears its devices down, still able to reach every
//!   leg under the names it knows (dm-raid's last superblock writes
//!   succeed). No other server may attach (`ReleasingElsewhere`, 409),
//!   and no resync or scrub of the volume runs: the head gave up its
//!   resyncs (requeued when the release starts) and a storage agent's copy
//!   would write a chunk the head may still write. Attaching again on the
//!   same head returns to Attached (a retry after a failed deactivate).
//! - **Ended** ([`Cluster::end_attachment`], no attachment): when the
//!   head's heartbeat lists its assembled volumes and this one is not among
//!   them ([`Cluster::head_reports_assembled`]), or at once for a forced
//!   detach ([`Cluster::force_detach_volume`], the fencing operation for a
//!   dead or partitioned head). An agent too old to report what it has
//!   assembled (`None`) ends its releasing attachments at once, as detaches
//!   did before two-phase detach.
//!
//! A head that is gone — declared failed, or silent longer than the
//! manager's `--head-grace` — never confirms a release and may never come
//! back: an attach elsewhere then takes the volume over
//! ([`Cluster::attach_volume_taking_over`]: fence, then attach, in one
//! change), from either state. Without such an attach, its attachment stays
//! until an admin forces the detach.
//!
//! ## Fencing
//!
//! A leg's `export_name` is the only credential for its NBD export: whoever
//! knows it can read and write the chunk. A head learns the names of every
//! leg of the volumes attached to it, so once an attachment ends those
//! names must stop working, or a former head (or anyone who read its desired
//! state, e.g. with a leaked agent token) could still open the legs.
//! [`Cluster::end_attachment`] is the one place an attachment ends: it draws
//! a new secret for every leg of the volume. The storage agents then export
//! the chunks under the new names only, and removing an export cuts every
//! NBD connection opened with the old name (`vsky_nbd::ExportTable`).
//!
//! A server whose agent runs with `--storage-only` cannot assemble volumes
//! (`Server::storage_only`): attaching a volume to it is refused, because
//! nothing there would ever assemble the volume or run its resyncs, and its
//! desired state names no volume to assemble.

use std::collections::BTreeMap;

use super::{Changes, Cluster};
use crate::SecretSource;
use crate::entities::{AttachmentState, ServerState};
use crate::error::ModelError;
use crate::ids::{ServerId, VolumeId};
use crate::limits::HEARTBEAT_ASSEMBLED_MAX;

impl Cluster {
    /// Records whether a server's agent runs with `--storage-only`, as it
    /// says when it registers. Volumes already attached to a server that
    /// becomes storage-only stay attached until an admin detaches them
    /// (`vsky volume detach`); no new ones can be.
    pub fn set_storage_only(
        &mut self,
        id: ServerId,
        storage_only: bool,
    ) -> Result<Changes, ModelError> {
        let server = self
            .servers
            .get_mut(&id)
            .ok_or_else(|| super::not_found("server", "server", id.0))?;
        let mut changes = Changes::default();
        if server.storage_only != storage_only {
            server.storage_only = storage_only;
            changes.servers.insert(id);
        }
        Ok(self.commit(changes))
    }

    /// The server an attach names, if it may assemble volumes now: not
    /// failed, not storage-only.
    pub(super) fn healthy_head(&self, server: &str) -> Result<ServerId, ModelError> {
        let head = self.server_by_name(server)?;
        if head.state == ServerState::Failed {
            return Err(ModelError::Conflict(format!(
                "server '{server}' is failed; attach on a healthy server"
            )));
        }
        let id = head.id;
        self.check_may_head(id)?;
        Ok(id)
    }

    /// Refuses a server that cannot head volumes.
    pub(super) fn check_may_head(&self, id: ServerId) -> Result<(), ModelError> {
        let server = &self.servers[&id];
        if server.storage_only {
            return Err(ModelError::StorageOnly {
                server: server.name.clone(),
            });
        }
        Ok(())
    }

    /// A graceful detach (an admin's, or the head agent's own): an attached
    /// volume starts releasing. Its head stops being told to assemble it,
    /// the resyncs it ran go back to the queue (none starts until the
    /// attachment ends), and the attachment ends once the head reports the
    /// devices gone ([`Cluster::head_reports_assembled`]). Idempotent: a
    /// releasing or detached volume changes nothing.
    pub fn release_volume(&mut self, name: &str) -> Result<Changes, ModelError> {
        let id = self.volume_by_name(name)?.id;
        let mut changes = Changes::default();
        let volume = self.volumes.get_mut(&id).expect("exists");
        if let Some(a) = volume.attachment.as_mut()
            && a.state == AttachmentState::Attached
        {
            a.state = AttachmentState::Releasing;
            changes.volumes.insert(id);
            self.requeue_writer_jobs(id, &mut changes);
        }
        Ok(self.commit(changes))
    }

    /// The fencing operation: ends a volume's attachment at once, from
    /// either state, without the head's confirmation (a dead or
    /// partitioned head). Every leg gets a new secret export name, so the
    /// storage agents cut the old head's connections and refuse its names.
    /// A snapshot's read-only attachments all end (`cluster/readers.rs`).
    /// Returns whether there was an attachment or a reader; idempotent.
    pub fn force_detach_volume(
        &mut self,
        name: &str,
        secrets: &mut dyn SecretSource,
    ) -> Result<(bool, Changes), ModelError> {
        let id = self.volume_by_name(name)?.id;
        let mut changes = Changes::default();
        let ended = self.end_attachment(id, secrets, &mut changes);
        let read = self.end_all_readers(id, &mut changes);
        Ok((ended || read, self.commit(changes)))
    }

    /// Attaches a volume to `server` ([`Cluster::attach_volume`]), first
    /// taking it over from another head that is gone: declared failed, or
    /// one `head_is_gone` says is (the manager's clock: silent longer than
    /// `--head-grace`). The takeover is the fencing operation
    /// ([`Cluster::force_detach_volume`]) and the attach in one change, so
    /// the new head only ever learns the new export names, which the
    /// storage agents serve only after they dropped the old ones: the old
    /// head, if it comes back, gets I/O errors, never a successful write.
    /// A head that is not gone keeps the volume (`AttachedElsewhere` or
    /// `ReleasingElsewhere`, as from `attach_volume`). Returns the old
    /// head's name when there was a takeover. The new head is checked
    /// before anything is fenced, so a refused attach changes nothing.
    pub fn attach_volume_taking_over(
        &mut self,
        name: &str,
        server: &str,
        head_is_gone: &dyn Fn(ServerId) -> bool,
        secrets: &mut dyn SecretSource,
    ) -> Result<(Option<String>, Changes), ModelError> {
        let head = self.server_by_name(server)?;
        let (head_id, head_failed) = (head.id, head.state == ServerState::Failed);
        let volume = self.volume_by_name(name)?;
        let id = volume.id;
        let gone = volume
            .attachment
            .as_ref()
            .map(|a| a.head)
            .filter(|&old| old != head_id)
            .filter(|old| self.servers[old].state == ServerState::Failed || head_is_gone(*old));
        // A failed new head gets attach_volume's own refusal, before any
        // fence.
        let Some(old) = gone.filter(|_| !head_failed) else {
            return Ok((None, self.attach_volume(name, server)?));
        };
        self.check_may_head(head_id)?;
        let mut changes = Changes::default();
        self.end_attachment(id, secrets, &mut changes);
        let mut changes = self.commit(changes);
        changes.merge(self.attach_volume(name, server)?);
        Ok((Some(self.servers[&old].name.clone()), changes))
    }

    /// A head's heartbeat says which volumes it has assembled now: every
    /// releasing attachment of that server whose volume is not among them
    /// (nor, for a thin volume, a layer it writes) ends (the devices are
    /// gone). `None` (an agent from before two-phase
    /// detach, which cannot say) ends them all at once, as its detaches
    /// did before. Names of unknown volumes are ignored (a volume may have
    /// been deleted since). Returns the names of the volumes released.
    pub fn head_reports_assembled(
        &mut self,
        server: ServerId,
        assembled: Option<&[String]>,
        secrets: &mut dyn SecretSource,
    ) -> Result<(Vec<String>, Changes), ModelError> {
        if !self.servers.contains_key(&server) {
            return Err(super::not_found("server", "server", server.0));
        }
        if let Some(list) = assembled
            && list.len() > HEARTBEAT_ASSEMBLED_MAX
        {
            return Err(ModelError::invalid(
                "assembled volumes",
                format!(
                    "{} names; a heartbeat lists at most {HEARTBEAT_ASSEMBLED_MAX}",
                    list.len()
                ),
            ));
        }
        let done: Vec<(VolumeId, String)> = self
            .releasing_on(server)
            .filter(|(id, name)| {
                assembled.is_none_or(|list| !self.holds_writable_devices(*id, name, list))
            })
            .collect();
        let mut changes = Changes::default();
        let mut released = Vec::with_capacity(done.len());
        for (id, name) in done {
            self.end_attachment(id, secrets, &mut changes);
            released.push(name);
        }
        Ok((released, self.commit(changes)))
    }

    /// Records the sizes `server` serves its attached volumes at (see
    /// `Attachment::served_bytes`); reports about volumes not attached
    /// to it, or releasing, are ignored. Returns the volumes whose grow this
    /// report shows applied (volume, size): served below the volume's size
    /// before, at it now.
    pub(crate) fn head_serves(
        &mut self,
        server: ServerId,
        served: &[(String, u64)],
        changes: &mut Changes,
    ) -> Result<Vec<(String, u64)>, ModelError> {
        if served.len() > HEARTBEAT_ASSEMBLED_MAX {
            return Err(ModelError::invalid(
                "served volumes",
                format!(
                    "{} sizes; a heartbeat lists at most {HEARTBEAT_ASSEMBLED_MAX}",
                    served.len()
                ),
            ));
        }
        let mut grown = Vec::new();
        for (name, size) in last_size_per_volume(served) {
            let Some(id) = self.attached_to(server, name) else {
                continue;
            };
            let volume = self.volumes.get_mut(&id).expect("attached_to found it");
            let target = volume.size_bytes;
            let attachment = volume.attachment.as_mut().expect("attached_to checked");
            if attachment.served_bytes == Some(size) {
                continue;
            }
            let before = attachment.served_bytes.replace(size);
            if before.is_some_and(|b| b < target) && size >= target {
                grown.push((name.to_string(), size));
            }
            changes.volumes.insert(id);
        }
        Ok(grown)
    }

    /// Whether `served` would change a served size [`Self::head_serves`]
    /// records.
    pub(crate) fn served_sizes_change(&self, server: ServerId, served: &[(String, u64)]) -> bool {
        last_size_per_volume(served)
            .into_iter()
            .any(|(name, size)| {
                self.attached_to(server, name).is_some_and(|id| {
                    self.volumes[&id]
                        .attachment
                        .as_ref()
                        .is_some_and(|a| a.served_bytes != Some(size))
                })
            })
    }

    /// The volume `name` if it is attached (not releasing) to `server`.
    fn attached_to(&self, server: ServerId, name: &str) -> Option<VolumeId> {
        let id = *self.volume_names.get(name)?;
        let a = self.volumes[&id].attachment.as_ref()?;
        (a.head == server && !a.is_releasing()).then_some(id)
    }

    /// The volumes (id, name) whose attachment to `server` is releasing.
    pub fn releasing_on(&self, server: ServerId) -> impl Iterator<Item = (VolumeId, String)> + '_ {
        self.volumes
            .values()
            .filter(move |v| {
                v.attachment
                    .as_ref()
                    .is_some_and(|a| a.head == server && a.is_releasing())
            })
            .map(|v| (v.id, v.name.clone()))
    }

    /// Ends a volume's attachment, if it has one: its running resyncs go
    /// back to the queue (the storage agents take them over) and every leg
    /// gets a new secret export name, so the names the head knew open
    /// nothing any more. Every path that ends an attachment (a release the
    /// head confirmed, a forced detach) goes through here. Returns whether
    /// there was an attachment.
    pub(crate) fn end_attachment(
        &mut self,
        id: VolumeId,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) -> bool {
        let volume = self.volumes.get_mut(&id).expect("caller checked");
        if volume.attachment.take().is_none() {
            return false;
        }
        // Running jobs were the head's (an attached volume's executor):
        // requeued, they restart under a storage agent with the new names.
        // The head's scrubs are dropped by `commit` (the mirrored disks
        // stop qualifying).
        self.requeue_writer_jobs(id, changes);
        self.rotate_leg_secrets(id, secrets, changes);
        // A thin volume's legs are its layers' (`cluster/chains.rs`).
        self.end_chain_writer(id, secrets, changes);
        true
    }

    /// Draws a new secret export name for every leg of a volume (the extra
    /// slot of a move, failed and syncing legs included): connections
    /// opened with the old names are cut once the storage agents apply it.
    pub(super) fn rotate_leg_secrets(
        &mut self,
        id: VolumeId,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) {
        let volume = self.volumes.get_mut(&id).expect("caller checked");
        for leg in volume.mirrored_disks.iter_mut().flat_map(|m| &mut m.legs) {
            leg.export_name = secrets.export_secret();
        }
        changes.volumes.insert(id);
    }
}

/// A report's served sizes, one per volume: a volume listed twice counts
/// with its last size, so that the same report applied twice changes
/// nothing the second time.
fn last_size_per_volume(served: &[(String, u64)]) -> BTreeMap<&str, u64> {
    served.iter().map(|(v, s)| (v.as_str(), *s)).collect()
}
