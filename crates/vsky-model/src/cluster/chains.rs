//! Thin volumes, snapshots and clones: chains of layers
//! (docs/design/snapshots.md §5.1–§5.2, §5.5).
//!
//! A **layer** is a hidden volume record ([`VolumeRole::Layer`]): one
//! dm-thin pool on the layer's own mirrored disks, with one thin device
//! that reads what it has not written from its **parent** layer (dm-thin's
//! external origin). Layers are ordinary volume records on purpose: their
//! legs are placed, repaired, drained, scrubbed and released by the rules
//! every volume follows. What users see are **handles**:
//! - a thin volume ([`VolumeRole::Thin`]) writes its **top** layer;
//! - a snapshot ([`VolumeRole::Snapshot`]) names a frozen layer.
//!
//! The **chain** of a handle is its layer, then each parent in turn.
//!
//! ## Rules
//! - A snapshot freezes the volume's top and gives the volume a new, empty
//!   top over it; a clone is a new thin volume whose empty top sits over a
//!   frozen layer; a revert gives a detached volume a new, empty top over a
//!   snapshot's layer. None of them copies data or takes more than one
//!   mirrored disk (the new top's), whatever the volume's size.
//! - A layer is writable (the top of exactly one thin volume, with no
//!   child), freezing, or frozen, and never goes back. Freezing exists
//!   because the head of an attached volume switches to the new top in its
//!   kernel after the manager records the snapshot: until that head reports
//!   the switch ([`Cluster::finish_freeze`]) or its attachment ends (it
//!   wrote its last then), it may still write the old top, so no reader,
//!   clone or revert may rely on that layer's content. The snapshot of a
//!   freezing layer is *pending* and is not shown to users.
//! - Parents are never writable; chains are at most
//!   [`limits::CHAIN_DEPTH_MAX`] deep, so every read reaches data through a
//!   bounded stack of devices.
//! - A layer no handle and no child names holds nothing anybody can read:
//!   it is released at once (its chunks go to their disks' releasing sets,
//!   to be wiped, like a deleted volume's), and so, in turn, is each parent
//!   that this leaves unnamed. A frozen layer with no handle and one child
//!   stays until garbage collection folds the child into it (a later step
//!   of the design); with several children it stays as their shared base.
//!
//! [`Cluster::check_chains`] (`chains/check.rs`) states every rule as a
//! check; `load` refuses records that break one, and `check_invariants`
//! runs it after every step of the tests and the simulator.

use super::{Changes, Cluster};
use crate::SecretSource;
use crate::entities::{Attachment, LayerInfo, LayerState, Volume, VolumeMeta, VolumeRole};
use crate::error::ModelError;
use crate::ids::{self, ChunkRef, VolumeId};
use crate::limits;

mod check;

/// The record name of a layer. Users' volume names start with a letter or a
/// digit (`ids::validate_name`), so no volume can take a layer's name, and
/// the name stays a valid device-mapper name part.
pub fn layer_name(id: VolumeId) -> String {
    format!("_L{:x}", id.0)
}

/// How a layer's first mirrored disk is split between dm-thin's metadata and
/// its data: an eighth of the chunk's data area for metadata, between
/// [`limits::THIN_META_BYTES_MIN`] and [`limits::THIN_META_BYTES_INITIAL`],
/// in whole thin blocks. `None` if the chunk is too small for a pool.
pub fn thin_meta_bytes(data_bytes_per_chunk: u64) -> Option<u64> {
    if data_bytes_per_chunk < limits::THIN_CHUNK_DATA_BYTES_MIN {
        return None;
    }
    let block = u64::from(limits::THIN_BLOCK_SECTORS) * 512;
    let meta = (data_bytes_per_chunk / 8)
        .clamp(limits::THIN_META_BYTES_MIN, limits::THIN_META_BYTES_INITIAL);
    Some(meta - meta % block)
}

/// What a handle's chain needs from the source a new layer goes over.
enum Base {
    /// A new thin volume: no parent.
    Empty,
    /// Over this frozen (or, for a snapshot's new top, freezing) layer.
    Over(VolumeId),
}

impl Cluster {
    /// The chain of a thin volume or snapshot, its own layer first; empty
    /// for a thick volume or a layer.
    pub fn chain(&self, handle: VolumeId) -> Vec<VolumeId> {
        let mut next = match self.volumes.get(&handle).map(|v| &v.role) {
            Some(VolumeRole::Thin { top }) => Some(*top),
            Some(VolumeRole::Snapshot { layer, .. }) => Some(*layer),
            _ => None,
        };
        let mut chain = Vec::new();
        while let Some(id) = next {
            chain.push(id);
            // The depth bound also ends a cycle that `load` would refuse.
            if chain.len() > limits::CHAIN_DEPTH_MAX + 1 {
                break;
            }
            next = self.layer_info(id).and_then(|l| l.parent);
        }
        chain
    }

    /// Whether a snapshot is ready to be read: its layer is frozen (not
    /// pending the head's switch to the new top). False for other volumes.
    pub fn snapshot_is_ready(&self, id: VolumeId) -> bool {
        match self.volumes.get(&id).map(|v| &v.role) {
            Some(VolumeRole::Snapshot { layer, .. }) => self
                .layer_info(*layer)
                .is_some_and(|l| l.state == LayerState::Frozen),
            _ => false,
        }
    }

    /// Whether the data of `leg` of volume `v` may never change: an active
    /// leg of a frozen layer. (A syncing leg is written by its repair; a
    /// freezing layer may still be written by its head.)
    pub fn leg_is_immutable(&self, v: &Volume, leg: &crate::entities::Leg) -> bool {
        leg.state == crate::entities::LegState::Active
            && v.role
                .layer()
                .is_some_and(|l| l.state == LayerState::Frozen)
    }

    /// The attachment whose head writes `volume`'s chunks: a thick
    /// volume's own, and a writable or freezing layer's writer's
    /// ([`LayerInfo::writer`]); `None` for a frozen layer and when that
    /// volume is detached. Who runs a volume's resyncs and scrubs follows
    /// from it (`executor.rs`, `scrub.rs`).
    pub(crate) fn writer_of(&self, volume: VolumeId) -> Option<&Attachment> {
        let v = self.volumes.get(&volume)?;
        match &v.role {
            VolumeRole::Layer(info) => self.volumes.get(&info.writer?)?.attachment.as_ref(),
            _ => v.attachment.as_ref(),
        }
    }

    /// Requeues the running jobs of volume `id` and of the layers its head
    /// writes: their executor is about to change (an attachment starts,
    /// releases or ends).
    pub(super) fn requeue_writer_jobs(&mut self, id: VolumeId, changes: &mut Changes) {
        self.requeue_jobs_of(id, changes);
        for layer in self.layers_written_by(id) {
            self.requeue_jobs_of(layer, changes);
        }
    }

    /// The layers thin volume `id`'s head may write (its top, and an old
    /// top while that freezes); none for any other volume.
    fn layers_written_by(&self, id: VolumeId) -> Vec<VolumeId> {
        match self.volumes.get(&id).map(|v| &v.role) {
            Some(VolumeRole::Thin { top }) => self
                .chain_from(*top)
                .into_iter()
                .take_while(|l| self.layer_info(*l).is_some_and(|i| i.writer == Some(id)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a head's list of what it has assembled still holds devices
    /// of volume `id` (named `name`) that write its chunks: the volume's
    /// own, or a layer it writes (heads assemble layers under the layers'
    /// names). Until none is left, its release does not end: another head
    /// could otherwise assemble the same legs writable while these still
    /// run.
    pub(super) fn holds_writable_devices(&self, id: VolumeId, name: &str, list: &[String]) -> bool {
        list.iter().any(|n| n == name)
            || self
                .layers_written_by(id)
                .iter()
                .any(|l| list.iter().any(|n| *n == self.volumes[l].name))
    }

    /// A layer by its record name (`_L<id>`); `volume_by_name` finds only
    /// volumes and snapshots.
    pub(crate) fn layer_by_name(&self, name: &str) -> Option<&Volume> {
        self.volume_names
            .get(name)
            .map(|id| &self.volumes[id])
            .filter(|v| v.role.layer().is_some())
    }

    /// The set of mirrors an agent names in a report: a volume, or a thin
    /// volume's layer (heads report a chain's legs, and storage agents
    /// their comparisons, under the layer's own name, which
    /// `volume_by_name` does not find).
    pub(crate) fn reported_mirrors(&self, name: &str) -> Option<&Volume> {
        self.layer_by_name(name)
            .or_else(|| self.volume_by_name(name).ok())
    }

    /// The thin volume whose head `head` still has to report having
    /// switched off the freezing layer `layer` (its top's parent), if any.
    pub(super) fn freezing_writer(
        &self,
        head: crate::ids::ServerId,
        layer: &str,
    ) -> Option<&Volume> {
        let l = self.layer_by_name(layer)?;
        let info = l.role.layer()?;
        if info.state != LayerState::Freezing {
            return None;
        }
        let writer = self.volumes.get(&info.writer?)?;
        let VolumeRole::Thin { top } = writer.role else {
            return None;
        };
        let on_head = writer.attachment.as_ref().is_some_and(|a| a.head == head);
        let below_top = self.layer_info(top).and_then(|t| t.parent) == Some(l.id);
        (on_head && below_top).then_some(writer)
    }

    /// Head `head` reports it switched its volume off the freezing layer
    /// `layer`: the layer is frozen ([`Cluster::finish_freeze`]). Returns
    /// the volume and the changes, or `None` if the report is stale.
    pub(super) fn finish_freeze_of(
        &mut self,
        head: crate::ids::ServerId,
        layer: &str,
    ) -> Option<(String, Changes)> {
        let name = self.freezing_writer(head, layer)?.name.clone();
        match self.finish_freeze(head, &name) {
            Ok((true, changes)) => Some((name, changes)),
            _ => None,
        }
    }

    /// The frozen parent of writable top `top`, if nothing was written to
    /// `top` since it was made (its volume was not attached since).
    fn unwritten_top_over(&self, top: VolumeId) -> Option<VolumeId> {
        let info = self.layer_info(top)?;
        let parent = info.parent?;
        (info.unwritten
            && self
                .layer_info(parent)
                .is_some_and(|p| p.state == LayerState::Frozen))
        .then_some(parent)
    }

    /// Notes that thin volume `id`'s top may be written from now on: its
    /// volume is being attached.
    pub(super) fn top_written(&mut self, id: VolumeId, changes: &mut Changes) {
        if let Some(VolumeRole::Thin { top }) = self.volumes.get(&id).map(|v| v.role.clone())
            && self.layer_info(top).is_some_and(|l| l.unwritten)
        {
            self.layer_info_mut(top).unwritten = false;
            changes.volumes.insert(top);
        }
    }

    /// Whether `head` assembles volume `v`: a volume attached to it, or a
    /// layer in the chain of a thin volume attached to it or of a snapshot
    /// it reads.
    pub(super) fn assembles(&self, head: crate::ids::ServerId, v: &Volume) -> bool {
        if v.role.layer().is_none() {
            return v.attachment.as_ref().is_some_and(|a| a.head == head);
        }
        self.volumes.values().any(|h| {
            let heads = match h.role {
                VolumeRole::Thin { .. } => h.attachment.as_ref().is_some_and(|a| a.head == head),
                VolumeRole::Snapshot { .. } => h.readers.contains(&head),
                _ => false,
            };
            heads && self.chain(h.id).contains(&v.id)
        })
    }

    fn layer_info(&self, id: VolumeId) -> Option<&LayerInfo> {
        self.volumes.get(&id).and_then(|v| v.role.layer())
    }

    fn layer_info_mut(&mut self, id: VolumeId) -> &mut LayerInfo {
        match &mut self.volumes.get_mut(&id).expect("a layer exists").role {
            VolumeRole::Layer(info) => info,
            _ => panic!("{id} is not a layer"),
        }
    }

    /// The number of layers below `layer` (0 for a layer with no parent).
    fn depth_of(&self, layer: VolumeId) -> usize {
        self.chain_from(layer).len() - 1
    }

    fn chain_from(&self, layer: VolumeId) -> Vec<VolumeId> {
        let mut chain = vec![layer];
        while let Some(p) = self
            .layer_info(*chain.last().expect("not empty"))
            .and_then(|l| l.parent)
        {
            if chain.len() > limits::CHAIN_DEPTH_MAX + 1 {
                break;
            }
            chain.push(p);
        }
        chain
    }

    /// Takes an id and the chunks of one mirrored disk for a new empty
    /// layer of `thin_size_bytes` over `base`, placed like `handle` (its
    /// class and replicas, near its head or its named server). The only
    /// step of a chain operation that can fail for want of space, so every
    /// operation calls it before it changes anything else; on failure
    /// nothing is taken.
    fn new_layer(
        &mut self,
        handle: &Volume,
        writer: Option<VolumeId>,
        base: Base,
        thin_size_bytes: u64,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) -> Result<VolumeId, ModelError> {
        let per_chunk = self.settings.data_bytes_per_chunk();
        let meta_bytes = thin_meta_bytes(per_chunk).ok_or_else(|| {
            ModelError::invalid(
                "thin volume",
                format!(
                    "chunks of {} bytes are too small for a thin volume's pool, which needs {} bytes of data per chunk; create it thick",
                    self.settings.chunk_size_bytes,
                    limits::THIN_CHUNK_DATA_BYTES_MIN
                ),
            )
        })?;
        self.check_thin_size(thin_size_bytes)?;
        let parent = match base {
            Base::Empty => None,
            Base::Over(p) => Some(p),
        };
        let id = VolumeId(self.next_id);
        let mut layer = Volume {
            id,
            name: layer_name(id),
            size_bytes: per_chunk,
            replicas: handle.replicas,
            stripe: None,
            class: handle.class.clone(),
            near_server: handle
                .attachment
                .as_ref()
                .map(|a| a.head)
                .or(handle.near_server),
            mirrored_disks: Vec::new(),
            attachment: None,
            readers: Default::default(),
            meta: VolumeMeta::default(),
            role: VolumeRole::Layer(LayerInfo {
                parent,
                state: LayerState::Writable,
                block_sectors: limits::THIN_BLOCK_SECTORS,
                meta_bytes,
                added_meta_bytes: super::pools::thin_added_meta_bytes(per_chunk),
                thin_size_bytes,
                frozen_at_unix_s: None,
                writer,
                // The new top of an attached volume's snapshot is written
                // by its head at once.
                unwritten: handle.attachment.is_none(),
            }),
        };
        layer.mirrored_disks = self.allocate(&layer, 1, 0, secrets)?;
        self.take_id(changes);
        self.volume_names.insert(layer.name.clone(), id);
        self.volumes.insert(id, layer);
        changes.volumes.insert(id);
        Ok(id)
    }

    /// Creates a thin volume: the handle and its first, empty layer of one
    /// mirrored disk, whatever the size. Called by `create_volume` with the
    /// request validated and the handle's record built (id 0, no mirrored
    /// disks).
    pub(super) fn create_thin_volume(
        &mut self,
        mut handle: Volume,
        secrets: &mut dyn SecretSource,
    ) -> Result<(VolumeId, Changes), ModelError> {
        if handle.stripe.is_some() {
            return Err(ModelError::invalid(
                "stripe",
                "a thin volume is not striped (its pool places its data); leave out the stripe or create it thick",
            ));
        }
        let mut changes = Changes::default();
        let top = self.new_layer(
            &handle,
            None,
            Base::Empty,
            handle.size_bytes,
            secrets,
            &mut changes,
        )?;
        let id = VolumeId(self.take_id(&mut changes));
        self.layer_info_mut(top).writer = Some(id);
        handle.id = id;
        handle.role = VolumeRole::Thin { top };
        self.volume_names.insert(handle.name.clone(), id);
        self.volumes.insert(id, handle);
        changes.volumes.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Takes a snapshot of thin volume `name`, named `snapshot_name`, at
    /// `now_unix_s`: its top is frozen and it goes on writing a new, empty
    /// top over it. Of a detached volume the snapshot is ready at once. Of
    /// an attached one it is pending ([`Cluster::snapshot_is_ready`]) until
    /// the head reports the switch ([`Cluster::finish_freeze`]); if the
    /// attachment ends first, the snapshot is deleted (it might hold writes
    /// made after this call) and the volume's data is intact either way.
    pub fn snapshot_volume(
        &mut self,
        name: &str,
        snapshot_name: &str,
        now_unix_s: u64,
        secrets: &mut dyn SecretSource,
    ) -> Result<(VolumeId, Changes), ModelError> {
        self.check_new_name(snapshot_name)?;
        let handle = self.volume_by_name(name)?.clone();
        let top = self.writable_top(&handle, "snapshot")?;
        let mut changes = Changes::default();
        let frozen = self.freeze_top(&handle, top, now_unix_s, secrets, &mut changes)?;
        let id = VolumeId(self.take_id(&mut changes));
        let snapshot = Volume {
            id,
            name: snapshot_name.to_string(),
            mirrored_disks: Vec::new(),
            attachment: None,
            readers: Default::default(),
            role: VolumeRole::Snapshot {
                layer: frozen,
                snapshot_of: handle.name.clone(),
                snapshot_time_unix_s: now_unix_s,
            },
            ..handle
        };
        self.volume_names.insert(snapshot.name.clone(), id);
        self.volumes.insert(id, snapshot);
        changes.volumes.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Clones a snapshot, or a detached thin volume, into a new thin volume
    /// `clone_name`: a new, empty top over the source's frozen layer (a thin
    /// volume's top is frozen first, and the volume goes on over a new top
    /// of its own). The clone's metadata is the source's. An attached
    /// volume is refused: snapshot it and clone the snapshot.
    pub fn clone_volume(
        &mut self,
        source: &str,
        clone_name: &str,
        now_unix_s: u64,
        secrets: &mut dyn SecretSource,
    ) -> Result<(VolumeId, Changes), ModelError> {
        self.check_new_name(clone_name)?;
        let handle = self.volume_by_name(source)?.clone();
        let mut changes = Changes::default();
        let (base, frozen_now) = match &handle.role {
            VolumeRole::Snapshot { layer, .. } => {
                self.check_frozen(&handle.name, *layer)?;
                (*layer, false)
            }
            VolumeRole::Thin { .. } => {
                if let Some(a) = &handle.attachment {
                    return Err(ModelError::Conflict(format!(
                        "volume '{source}' is attached to server '{}'; snapshot it and clone the snapshot, or detach it first",
                        self.servers[&a.head].name
                    )));
                }
                let top = self.writable_top(&handle, "clone")?;
                match self.unwritten_top_over(top) {
                    // Nothing written since the last freeze: the clone reads
                    // the frozen parent, and the chain does not grow (xapi
                    // clones a reset-on-boot VM's disk at every start, and
                    // a template's at every fast clone).
                    Some(parent) => (parent, false),
                    None => (top, true),
                }
            }
            VolumeRole::Thick => return Err(thick_refused(source, "clone")),
            VolumeRole::Layer(_) => unreachable!("volume_by_name hides layers"),
        };
        self.check_depth(base, source)?;
        // The source's size: a volume grown since its parent froze reads
        // zeros past the parent's end, and so does its clone.
        let size = self
            .layer_info(base)
            .expect("a base is a layer")
            .thin_size_bytes
            .max(handle.size_bytes);
        let shell = Volume {
            attachment: None,
            readers: Default::default(),
            ..handle.clone()
        };
        let top = self.new_layer(&shell, None, Base::Over(base), size, secrets, &mut changes)?;
        // A thin volume's top is frozen under both the clone and the
        // volume's own new top; with no room for the latter, the clone's
        // top is given back and nothing changed.
        if frozen_now
            && let Err(e) = self.freeze_top(&handle, base, now_unix_s, secrets, &mut changes)
        {
            self.discard_new_layer(top);
            return Err(e);
        }
        let id = VolumeId(self.take_id(&mut changes));
        self.layer_info_mut(top).writer = Some(id);
        let clone = Volume {
            id,
            name: clone_name.to_string(),
            size_bytes: size,
            mirrored_disks: Vec::new(),
            attachment: None,
            readers: Default::default(),
            role: VolumeRole::Thin { top },
            ..handle
        };
        self.volume_names.insert(clone.name.clone(), id);
        self.volumes.insert(id, clone);
        changes.volumes.insert(id);
        Ok((id, self.commit(changes)))
    }

    /// Reverts detached thin volume `name` to snapshot `snapshot`: the
    /// volume keeps its name and metadata and now reads exactly the
    /// snapshot's data, at the snapshot's size, on a new empty top over the
    /// snapshot's layer. Its old top, and any layer that leaves unnamed, is
    /// released.
    pub fn revert_volume(
        &mut self,
        name: &str,
        snapshot: &str,
        secrets: &mut dyn SecretSource,
    ) -> Result<Changes, ModelError> {
        let handle = self.volume_by_name(name)?.clone();
        let old_top = match handle.role {
            VolumeRole::Thin { top } => top,
            VolumeRole::Thick => return Err(thick_refused(name, "revert")),
            _ => {
                return Err(ModelError::invalid(
                    "volume",
                    format!("'{name}' is a snapshot; revert the volume it was taken of"),
                ));
            }
        };
        if let Some(a) = &handle.attachment {
            return Err(ModelError::Conflict(format!(
                "volume '{name}' is attached to server '{}'; shut its VM down (detach it) before reverting",
                self.servers[&a.head].name
            )));
        }
        let snap = self.volume_by_name(snapshot)?;
        let VolumeRole::Snapshot {
            layer,
            ref snapshot_of,
            ..
        } = snap.role
        else {
            return Err(ModelError::invalid(
                "snapshot",
                format!("'{snapshot}' is not a snapshot; list snapshots with `vsky volume list`"),
            ));
        };
        // Only to its own snapshots, as xapi's revert (`snapshot_of`): one
        // of another volume would silently give this one other data.
        if snapshot_of != name {
            return Err(ModelError::invalid(
                "snapshot",
                format!(
                    "'{snapshot}' is a snapshot of '{snapshot_of}', not of '{name}'; revert '{name}' to one of its own snapshots, or clone '{snapshot}'"
                ),
            ));
        }
        let size = snap.size_bytes;
        self.check_frozen(snapshot, layer)?;
        self.check_depth(layer, snapshot)?;
        let mut changes = Changes::default();
        let top = self.new_layer(
            &handle,
            Some(handle.id),
            Base::Over(layer),
            size,
            secrets,
            &mut changes,
        )?;
        let v = self.volumes.get_mut(&handle.id).expect("exists");
        v.role = VolumeRole::Thin { top };
        v.size_bytes = size;
        changes.volumes.insert(handle.id);
        self.release_unnamed(old_top, &mut changes);
        Ok(self.commit(changes))
    }

    /// The head of thin volume `name` reports that it has switched to the
    /// volume's new top: the old top is frozen for good, and a snapshot of
    /// it is ready. A report from another server than the head, or when no
    /// switch is pending, changes nothing (a repeated report). Returns
    /// whether a layer was frozen.
    pub fn finish_freeze(
        &mut self,
        server: crate::ids::ServerId,
        name: &str,
    ) -> Result<(bool, Changes), ModelError> {
        let handle = self.volume_by_name(name)?;
        let mut changes = Changes::default();
        let (VolumeRole::Thin { top }, Some(a)) = (&handle.role, &handle.attachment) else {
            return Ok((false, changes));
        };
        if a.head != server {
            return Ok((false, changes));
        }
        let frozen = self.settle_freezing_below(*top, &mut changes);
        Ok((frozen, self.commit(changes)))
    }

    /// The attachment of thin volume `id` has ended (the head's devices are
    /// gone, or the head was fenced): a layer its head was still switching
    /// away from is frozen, since nothing writes it now, and a snapshot of
    /// it that the head never confirmed is deleted, since its head may have
    /// written it after the snapshot was asked. Rotates the secrets of the
    /// layers the head could write. Called by `end_attachment`.
    pub(super) fn end_chain_writer(
        &mut self,
        id: VolumeId,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) {
        let VolumeRole::Thin { top } = self.volumes[&id].role else {
            return;
        };
        let parent = self.layer_info(top).and_then(|l| l.parent);
        let mut writable = vec![top];
        if let Some(p) = parent.filter(|p| {
            self.layer_info(*p)
                .is_some_and(|l| l.state == LayerState::Freezing)
        }) {
            writable.push(p);
            let pending: Vec<String> = self
                .volumes
                .values()
                .filter(|v| matches!(v.role, VolumeRole::Snapshot { layer, .. } if layer == p))
                .map(|v| v.name.clone())
                .collect();
            for name in pending {
                let sid = self.volume_names.remove(&name).expect("indexed");
                self.volumes.remove(&sid);
                changes.volumes.insert(sid);
            }
            self.settle_freezing_below(top, changes);
        }
        for layer in writable {
            self.rotate_leg_secrets(layer, secrets, changes);
        }
    }

    /// Deletes a thin volume's or a snapshot's handle record (the caller
    /// checked it may go) and releases every layer that leaves unnamed.
    pub(super) fn delete_handle(&mut self, id: VolumeId, changes: &mut Changes) {
        let handle = self.volumes.remove(&id).expect("caller checked");
        self.volume_names.remove(&handle.name);
        changes.volumes.insert(id);
        match handle.role {
            VolumeRole::Thin { top: layer } | VolumeRole::Snapshot { layer, .. } => {
                self.release_unnamed(layer, changes);
            }
            VolumeRole::Thick | VolumeRole::Layer(_) => {
                unreachable!("delete_handle is for thin volumes and snapshots")
            }
        }
    }

    /// Refuses a thin size no pool of this cluster's chunks can hold: a
    /// pool grows as it fills (`cluster/pools.rs`), up to
    /// [`limits::MIRRORED_DISKS_PER_VOLUME_MAX`] mirrored disks.
    pub(super) fn check_thin_size(&self, size_bytes: u64) -> Result<(), ModelError> {
        let per_chunk = self.settings.data_bytes_per_chunk();
        let Some(meta_bytes) = thin_meta_bytes(per_chunk) else {
            return Err(ModelError::invalid(
                "thin volume",
                format!(
                    "chunks of {} bytes are too small for a thin volume's pool, which needs {} bytes of data per chunk; create it thick",
                    self.settings.chunk_size_bytes,
                    limits::THIN_CHUNK_DATA_BYTES_MIN
                ),
            ));
        };
        let largest = LayerInfo {
            parent: None,
            state: LayerState::Writable,
            block_sectors: limits::THIN_BLOCK_SECTORS,
            meta_bytes,
            added_meta_bytes: super::pools::thin_added_meta_bytes(per_chunk),
            thin_size_bytes: 0,
            frozen_at_unix_s: None,
            writer: None,
            unwritten: true,
        };
        let disks = usize::try_from(limits::MIRRORED_DISKS_PER_VOLUME_MAX).unwrap_or(usize::MAX);
        let block = u64::from(limits::THIN_BLOCK_SECTORS) * 512;
        let capacity = super::pools::pool_data_blocks(&largest, disks, per_chunk) * block;
        if size_bytes > capacity {
            return Err(ModelError::invalid(
                "size",
                format!(
                    "{size_bytes} bytes is more than a thin volume's pool can grow to on this cluster's chunks ({capacity} bytes on {} mirrored disks); use a bigger chunk size",
                    limits::MIRRORED_DISKS_PER_VOLUME_MAX
                ),
            ));
        }
        // dm-thin's metadata has a ceiling, and pools take metadata in
        // proportion to their data.
        let mappable = limits::THIN_META_BYTES_MAX / limits::THIN_META_BYTES_PER_BLOCK * block;
        if size_bytes > mappable {
            return Err(ModelError::invalid(
                "size",
                format!(
                    "{size_bytes} bytes is more than a thin volume can map ({mappable} bytes: dm-thin's metadata ceiling); make it thick, or smaller"
                ),
            ));
        }
        Ok(())
    }

    /// Grows thin volume `id` to `size_bytes` (checked by the caller): its
    /// top's thin device gets longer; what lies past a parent's end reads
    /// as zeros (dm-thin's external origin).
    pub(super) fn set_thin_size(
        &mut self,
        id: VolumeId,
        top: VolumeId,
        size_bytes: u64,
        changes: &mut Changes,
    ) {
        self.volumes.get_mut(&id).expect("exists").size_bytes = size_bytes;
        self.layer_info_mut(top).thin_size_bytes = size_bytes;
        changes.volumes.insert(id);
        changes.volumes.insert(top);
    }

    /// Marks the freezing parent of `top`, if any, frozen.
    fn settle_freezing_below(&mut self, top: VolumeId, changes: &mut Changes) -> bool {
        let Some(p) = self.layer_info(top).and_then(|l| l.parent) else {
            return false;
        };
        let info = self.layer_info_mut(p);
        if info.state != LayerState::Freezing {
            return false;
        }
        info.state = LayerState::Frozen;
        info.writer = None;
        changes.volumes.insert(p);
        // Its head ran its resyncs; storage agents copy them from now on.
        self.requeue_jobs_of(p, changes);
        true
    }

    /// Freezes `top`, the writable top of thin volume `handle`, and gives
    /// the volume a new, empty top over it. Freezing if the volume is
    /// attached (its head switches), frozen if not. Returns the frozen
    /// layer. On failure (no room for the new top) nothing changed.
    fn freeze_top(
        &mut self,
        handle: &Volume,
        top: VolumeId,
        now_unix_s: u64,
        secrets: &mut dyn SecretSource,
        changes: &mut Changes,
    ) -> Result<VolumeId, ModelError> {
        if let Some(a) = handle.attachment.as_ref().filter(|a| a.is_releasing()) {
            return Err(ModelError::ReleasingElsewhere {
                volume: handle.name.clone(),
                server: self.servers[&a.head].name.clone(),
            });
        }
        self.check_depth(top, &handle.name)?;
        let size = handle.size_bytes;
        let new_top = self.new_layer(
            handle,
            Some(handle.id),
            Base::Over(top),
            size,
            secrets,
            changes,
        )?;
        let info = self.layer_info_mut(top);
        if handle.attachment.is_some() {
            // Its head still writes it until it switches.
            info.state = LayerState::Freezing;
        } else {
            info.state = LayerState::Frozen;
            info.writer = None;
        }
        info.frozen_at_unix_s = Some(now_unix_s);
        changes.volumes.insert(top);
        self.volumes.get_mut(&handle.id).expect("exists").role = VolumeRole::Thin { top: new_top };
        changes.volumes.insert(handle.id);
        Ok(top)
    }

    /// Gives back a layer [`Self::new_layer`] just made, which nothing
    /// names and nothing wrote: its chunks return to the free lists at once
    /// (no wipe: they were never handed to anybody) and its id is drawn
    /// again, so a refused operation leaves the cluster as it found it.
    fn discard_new_layer(&mut self, id: VolumeId) {
        assert_eq!(
            id.0 + 1,
            self.next_id,
            "only the last layer made is discarded"
        );
        let layer = self.volumes.remove(&id).expect("just made");
        self.volume_names.remove(&layer.name);
        for md in &layer.mirrored_disks {
            let chunks: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
            self.link_pairs(&chunks, false);
            self.give_back(&chunks);
        }
        self.next_id = id.0;
    }

    /// Releases `layer` if no handle and no child names it, then its parent
    /// on the same condition, and so on down the chain.
    fn release_unnamed(&mut self, layer: VolumeId, changes: &mut Changes) {
        let mut next = Some(layer);
        while let Some(id) = next {
            if self.layer_is_named(id) {
                return;
            }
            next = self.layer_info(id).and_then(|l| l.parent);
            self.release_volume_record(id, changes);
        }
    }

    /// Whether a handle or a child layer names `layer`. A scan of the
    /// volumes: it runs only when a handle goes.
    fn layer_is_named(&self, layer: VolumeId) -> bool {
        self.volumes.values().any(|v| match &v.role {
            VolumeRole::Thin { top } => *top == layer,
            VolumeRole::Snapshot { layer: l, .. } => *l == layer,
            VolumeRole::Layer(info) => info.parent == Some(layer),
            VolumeRole::Thick => false,
        })
    }

    /// The writable top of thin volume `handle`, refusing other kinds of
    /// volume and a volume whose previous snapshot is still pending.
    fn writable_top(&self, handle: &Volume, what: &str) -> Result<VolumeId, ModelError> {
        let top = match handle.role {
            VolumeRole::Thin { top } => top,
            VolumeRole::Thick => return Err(thick_refused(&handle.name, what)),
            _ => {
                return Err(ModelError::invalid(
                    "volume",
                    format!(
                        "'{}' is a snapshot, which is read-only; clone it first to {what} a writable volume",
                        handle.name
                    ),
                ));
            }
        };
        if let Some(p) = self.layer_info(top).and_then(|l| l.parent)
            && self
                .layer_info(p)
                .is_some_and(|l| l.state == LayerState::Freezing)
        {
            return Err(ModelError::Conflict(format!(
                "a snapshot of volume '{}' is still being taken on its head; try again in a moment",
                handle.name
            )));
        }
        Ok(top)
    }

    /// Refuses a source layer that is still freezing (its head may still
    /// write it).
    fn check_frozen(&self, name: &str, layer: VolumeId) -> Result<(), ModelError> {
        if self
            .layer_info(layer)
            .is_some_and(|l| l.state == LayerState::Frozen)
        {
            return Ok(());
        }
        Err(ModelError::Conflict(format!(
            "snapshot '{name}' is still being taken on its volume's head; try again in a moment"
        )))
    }

    /// Refuses a new layer over `base` that would make a chain deeper than
    /// [`limits::CHAIN_DEPTH_MAX`].
    fn check_depth(&self, base: VolumeId, name: &str) -> Result<(), ModelError> {
        if self.depth_of(base) < limits::CHAIN_DEPTH_MAX {
            return Ok(());
        }
        Err(ModelError::Conflict(format!(
            "'{name}' already reads through {} layers of snapshots, the most a volume may; delete older snapshots of this disk first",
            limits::CHAIN_DEPTH_MAX
        )))
    }

    /// Refuses a name a new volume cannot take.
    fn check_new_name(&self, name: &str) -> Result<(), ModelError> {
        ids::validate_name("volume name", name)?;
        if self.volume_names.contains_key(name) {
            return Err(ModelError::AlreadyExists {
                kind: "volume",
                key: name.to_string(),
            });
        }
        Ok(())
    }

    /// Refuses attaching a snapshot read-write. (A thin volume's chain
    /// never holds another volume's freezing layer: clones and reverts
    /// wait for frozen ones.)
    pub(super) fn check_chain_attachable(&self, v: &Volume) -> Result<(), ModelError> {
        if let VolumeRole::Snapshot { .. } = v.role {
            return Err(ModelError::invalid(
                "volume",
                format!(
                    "'{}' is a snapshot, which is read-only; clone it to get a writable volume",
                    v.name
                ),
            ));
        }
        Ok(())
    }
}

fn thick_refused(name: &str, what: &str) -> ModelError {
    ModelError::invalid(
        "volume",
        format!(
            "'{name}' is a thick volume, which cannot {what}; only thin volumes (`--thin`) have snapshots and clones"
        ),
    )
}
