//! Volumes: creating, growing, deleting and attaching them.
//!
//! A volume is `ceil(size / data per chunk)` mirrored disks (or, striped,
//! a whole number of rows of them) of `replicas` legs each, placed by the
//! allocation rules (`placement.rs`, `alloc.rs`). Creating or growing is
//! all or nothing; shrinking is refused, since it would cut data off.
//! Deleting needs a detached volume, and sends its chunks to their disks'
//! releasing sets under one release id. Attaching to another server than
//! the head is a conflict.

use std::time::Duration;

use super::{Changes, Cluster, not_found};
use crate::SecretSource;
use crate::entities::{Attachment, AttachmentState, Stripe, Volume, VolumeMeta, VolumeRole};
use crate::error::ModelError;
use crate::ids::{self, ChunkRef, ServerId, VolumeId};
use crate::limits;

#[derive(Clone, Debug, Default)]
pub struct NewVolume {
    pub name: String,
    pub size_bytes: u64,
    pub replicas: Option<u8>,
    pub stripe: Option<Stripe>,
    pub class: Option<String>,
    pub near_server: Option<String>,
    pub meta: VolumeMeta,
    /// A thin volume (`cluster/chains.rs`): it takes chunks as it is
    /// written, and can be snapshotted and cloned.
    pub thin: bool,
}

impl Cluster {
    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.values()
    }

    pub fn volume(&self, id: VolumeId) -> Option<&Volume> {
        self.volumes.get(&id)
    }

    /// The volume a user names. Layers (`cluster/chains.rs`) are internal:
    /// no user's name can be a layer's, and they are not found by name.
    pub fn volume_by_name(&self, name: &str) -> Result<&Volume, ModelError> {
        self.volume_names
            .get(name)
            .map(|id| &self.volumes[id])
            .filter(|v| v.role.layer().is_none())
            .ok_or_else(|| not_found("volume", "volume", name))
    }

    /// Creates a volume: ceil(size / data per chunk) mirrored disks of
    /// `replicas` legs each, placed by the allocation rules. All or nothing.
    pub fn create_volume(
        &mut self,
        new: NewVolume,
        secrets: &mut dyn SecretSource,
    ) -> Result<(VolumeId, Changes), ModelError> {
        ids::validate_name("volume name", &new.name)?;
        if self.volume_names.contains_key(&new.name) {
            return Err(ModelError::AlreadyExists {
                kind: "volume",
                key: new.name,
            });
        }
        let replicas = new.replicas.unwrap_or(self.settings.default_replicas);
        if !(limits::REPLICAS_MIN..=limits::REPLICAS_MAX).contains(&replicas) {
            return Err(ModelError::invalid(
                "replicas",
                format!(
                    "{replicas} is outside {}..={}",
                    limits::REPLICAS_MIN,
                    limits::REPLICAS_MAX
                ),
            ));
        }
        if let Some(class) = &new.class {
            ids::validate_name("disk class", class)?;
        }
        let (size_bytes, count) = self.layout_for(new.size_bytes, new.stripe.as_ref())?;
        let near = match &new.near_server {
            Some(name) => Some(self.server_by_name(name)?.id),
            None => None,
        };
        self.validate_meta(&new.meta)?;
        let mut volume = Volume {
            id: VolumeId(0),
            name: new.name,
            size_bytes,
            replicas,
            stripe: new.stripe,
            class: new.class,
            near_server: near,
            mirrored_disks: Vec::new(),
            attachment: None,
            readers: Default::default(),
            meta: new.meta,
            role: VolumeRole::Thick,
        };
        if new.thin {
            return self.create_thin_volume(volume, secrets);
        }
        let mut changes = Changes::default();
        let id = VolumeId(self.next_id);
        volume.id = id;
        volume.mirrored_disks = self.allocate(&volume, count, 0, secrets)?;
        self.take_id(&mut changes);
        self.volume_names.insert(volume.name.clone(), id);
        self.volumes.insert(id, volume);
        changes.volumes.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Grows a volume to at least `size_bytes` (shrinking would cut data off
    /// and is refused). All or nothing.
    ///
    /// An attached volume grows online: its head assembles the new
    /// mirrored disks and swaps its volume device's table for the longer
    /// one (`vsky-agent/src/head`), then reports the new size
    /// ([`Attachment::served_bytes`]). So a grow needs a head that is
    /// there to apply it: if the head has been silent (`head_silent_for`,
    /// the manager's clock) for [`limits::GROW_HEAD_SILENCE_SECONDS_MAX`]
    /// or its `head_grace`, whichever is shorter (past its grace the head
    /// counts as gone), the grow is refused and nothing is allocated; the
    /// volume keeps its size.
    pub fn resize_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        head_silent_for: &dyn Fn(ServerId) -> Duration,
        head_grace: Duration,
        secrets: &mut dyn SecretSource,
    ) -> Result<Changes, ModelError> {
        let volume = self.volume_by_name(name)?;
        let (new_size, count) = self.layout_for(size_bytes, volume.stripe.as_ref())?;
        if new_size < volume.size_bytes {
            return Err(ModelError::invalid(
                "size",
                format!(
                    "volume '{name}' is {} bytes; shrinking to {new_size} would destroy data and is not supported",
                    volume.size_bytes
                ),
            ));
        }
        let mut changes = Changes::default();
        if new_size == volume.size_bytes {
            return Ok(changes);
        }
        if let Some(a) = volume.attachment.as_ref().filter(|a| !a.is_releasing()) {
            let silent = head_silent_for(a.head);
            let limit = head_grace.min(Duration::from_secs(limits::GROW_HEAD_SILENCE_SECONDS_MAX));
            if silent >= limit {
                let server = &self.servers[&a.head].name;
                return Err(ModelError::Conflict(format!(
                    "volume '{name}' is attached to server '{server}', whose agent has been silent for {}s; an attached volume grows on its head, so nothing was changed. Start the agent on '{server}' and try again, or detach the volume first (`vsky volume detach --force {name}` if '{server}' is dead)",
                    silent.as_secs()
                )));
            }
        }
        let id = volume.id;
        match volume.role {
            VolumeRole::Thick => {}
            // A thin volume's pool grows as it is written, not with its
            // size: only the thin device gets longer.
            VolumeRole::Thin { top } => {
                self.check_thin_size(new_size)?;
                self.set_thin_size(id, top, new_size, &mut changes);
                return Ok(self.commit(changes));
            }
            VolumeRole::Snapshot { .. } | VolumeRole::Layer(_) => {
                return Err(ModelError::invalid(
                    "volume",
                    format!("'{name}' is a snapshot, which is read-only; resize a clone of it"),
                ));
            }
        }
        let have = volume.mirrored_disks.len() as u64;
        // allocate() needs the cluster mutably; it reads only the placement
        // fields, so a shell copy without the layout is enough.
        let shell = Volume {
            mirrored_disks: Vec::new(),
            ..volume.clone()
        };
        let added = self.allocate(&shell, count.saturating_sub(have), have, secrets)?;
        let volume = self.volumes.get_mut(&id).expect("exists");
        volume.mirrored_disks.extend(added);
        volume.size_bytes = new_size;
        changes.volumes.insert(id);
        Ok(self.commit(changes))
    }

    /// Deletes a detached volume. Its chunks go to their disks' releasing
    /// sets until the storage agents wipe them. A thin volume's or a
    /// snapshot's layers go with it, unless another volume or snapshot
    /// still reads through them (`cluster/chains.rs`).
    pub fn delete_volume(&mut self, name: &str) -> Result<Changes, ModelError> {
        let volume = self.volume_by_name(name)?;
        if let Some(a) = &volume.attachment {
            let server = &self.servers[&a.head].name;
            return Err(ModelError::Conflict(if a.is_releasing() {
                format!(
                    "volume '{name}' is being released by server '{server}'; wait until it has torn its devices down, or fence a dead server with `vsky volume detach --force {name}`"
                )
            } else {
                format!("volume '{name}' is attached to server '{server}'; detach it first")
            }));
        }
        let id = volume.id;
        let mut changes = Changes::default();
        self.settle_readers_for_delete(id, &mut changes)?;
        let volume = &self.volumes[&id];
        if volume.role.is_thick() {
            self.release_volume_record(id, &mut changes);
        } else {
            self.delete_handle(id, &mut changes);
        }
        Ok(self.commit(changes))
    }

    /// Removes a volume record with mirrored disks (a thick volume or a
    /// layer) and sends its chunks to their disks' releasing sets, under one
    /// release id, until the storage agents wipe them. Its jobs end.
    pub(super) fn release_volume_record(&mut self, id: VolumeId, changes: &mut Changes) {
        self.end_jobs_of(id, changes);
        let volume = self.volumes.remove(&id).expect("exists");
        self.volume_names.remove(&volume.name);
        for md in &volume.mirrored_disks {
            let chunks: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
            self.link_pairs(&chunks, false);
        }
        // One release id for all its chunks: what matters is that each
        // release of one chunk has its own.
        let release = self.take_id(changes);
        for leg in volume.mirrored_disks.iter().flat_map(|m| &m.legs) {
            let rt = self
                .runtime
                .get_mut(&leg.chunk.disk)
                .expect("legs sit on known disks");
            assert!(
                rt.used.remove(&leg.chunk.index).is_some(),
                "a leg's chunk is used"
            );
            let disk = self.disks.get_mut(&leg.chunk.disk).expect("exists");
            assert!(
                disk.releasing.insert(leg.chunk.index, release).is_none(),
                "a used chunk is not releasing"
            );
            changes.disks.insert(leg.chunk.disk);
        }
        for d in changes.disks.clone() {
            self.reindex(d);
        }
        changes.volumes.insert(id);
    }

    /// Attaches a volume to its head server. Attaching again to the same
    /// server is a no-op, or, while that attachment is releasing, takes it
    /// back (a retry after a failed deactivate: the head assembles it
    /// again); to another server is a conflict (`AttachedElsewhere`, or
    /// `ReleasingElsewhere` until the head has confirmed its teardown); to
    /// a server whose agent runs with `--storage-only` is refused.
    pub fn attach_volume(&mut self, name: &str, server: &str) -> Result<Changes, ModelError> {
        let head_id = self.healthy_head(server)?;
        let volume = self.volume_by_name(name)?;
        self.check_chain_attachable(volume)?;
        let mut changes = Changes::default();
        let id = volume.id;
        match &volume.attachment {
            Some(a) if a.head == head_id && !a.is_releasing() => return Ok(changes),
            Some(a) if a.head == head_id => {
                // Its resyncs were requeued when the release started: the
                // head takes them up again once they start.
                let a = self
                    .volumes
                    .get_mut(&id)
                    .and_then(|v| v.attachment.as_mut())
                    .expect("exists");
                a.state = AttachmentState::Attached;
                changes.volumes.insert(id);
                return Ok(self.commit(changes));
            }
            Some(a) if a.is_releasing() => {
                return Err(ModelError::ReleasingElsewhere {
                    volume: name.to_string(),
                    server: self.servers[&a.head].name.clone(),
                });
            }
            Some(a) => {
                return Err(ModelError::AttachedElsewhere {
                    volume: name.to_string(),
                    server: self.servers[&a.head].name.clone(),
                });
            }
            None => {}
        }
        self.volumes.get_mut(&id).expect("exists").attachment = Some(Attachment {
            head: head_id,
            state: AttachmentState::Attached,
            served_bytes: None,
        });
        changes.volumes.insert(id);
        self.top_written(id, &mut changes);
        // A storage agent was copying its resyncs; the head takes over.
        self.requeue_writer_jobs(id, &mut changes);
        Ok(self.commit(changes))
    }

    /// Rounds a requested size and computes how many mirrored disks hold it.
    fn layout_for(
        &self,
        size_bytes: u64,
        stripe: Option<&Stripe>,
    ) -> Result<(u64, u64), ModelError> {
        if size_bytes == 0 {
            return Err(ModelError::invalid("size", "must be greater than zero"));
        }
        let per_chunk = self.settings.data_bytes_per_chunk();
        let too_big = || {
            ModelError::invalid(
                "size",
                format!(
                    "{size_bytes} bytes needs more than {} mirrored disks; use a bigger chunk size",
                    limits::MIRRORED_DISKS_PER_VOLUME_MAX
                ),
            )
        };
        let (size, count) = match stripe {
            None => {
                let size = size_bytes
                    .checked_next_multiple_of(limits::VOLUME_BLOCK_BYTES)
                    .ok_or_else(too_big)?;
                (size, size.div_ceil(per_chunk))
            }
            Some(s) => {
                if !(2..=limits::STRIPE_WIDTH_MAX).contains(&s.width) {
                    return Err(ModelError::invalid(
                        "stripe width",
                        format!("must be 2..={}", limits::STRIPE_WIDTH_MAX),
                    ));
                }
                if !s.unit_bytes.is_power_of_two()
                    || !(limits::STRIPE_UNIT_BYTES_MIN..=limits::STRIPE_UNIT_BYTES_MAX)
                        .contains(&s.unit_bytes)
                    || !per_chunk.is_multiple_of(s.unit_bytes)
                {
                    return Err(ModelError::invalid(
                        "stripe unit",
                        format!(
                            "must be a power of two from {} to {} bytes that divides the {per_chunk}-byte data area of a chunk",
                            limits::STRIPE_UNIT_BYTES_MIN,
                            limits::STRIPE_UNIT_BYTES_MAX
                        ),
                    ));
                }
                let row = u64::from(s.width) * s.unit_bytes;
                let size = size_bytes
                    .checked_next_multiple_of(row)
                    .ok_or_else(too_big)?;
                let per_column = size / u64::from(s.width);
                (size, per_column.div_ceil(per_chunk) * u64::from(s.width))
            }
        };
        if count > limits::MIRRORED_DISKS_PER_VOLUME_MAX {
            return Err(too_big());
        }
        Ok((size, count))
    }
}
