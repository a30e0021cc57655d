//! Thin pools that grow as they fill (docs/design/snapshots.md §5.7).
//!
//! A thin volume takes chunks as it is written: its writable top's pool
//! starts on one mirrored disk, and the manager appends mirrored disks
//! when the head reports the pool filling.
//!
//! ## Layout
//! Mirrored disk `k` of a layer gives the front of its data area to the
//! pool's metadata and the rest to the pool's data: [`LayerInfo::meta_bytes`]
//! on the first, [`LayerInfo::added_meta_bytes`] on each later one
//! ([`thin_added_meta_bytes`]: [`limits::THIN_META_BYTES_PER_BLOCK`] per data
//! block). The metadata device is the concatenation of the metadata parts,
//! the data device that of the data parts, so a growth appends to both and
//! no sector the pool used moves (dm-thin resizes both on the pool's next
//! resume). Heads build their tables from [`pool_extents`].
//!
//! ## When a pool grows
//! The head of an attached thin volume reports its top's pool in every
//! heartbeat ([`PoolUsage`]). The layer grows ([`Cluster::pool_growth`])
//! when, on a report from that head about the layer's current size:
//! - its free data is below the larger of half a chunk's data and
//!   [`limits::POOL_FREE_LOW_PERCENT`] of its data, or its metadata is more
//!   than [`limits::POOL_META_HIGH_PERCENT`] used;
//! - and the pool can still be short of space: a layer whose data covers
//!   its whole thin device never grows.
//!
//! It grows by enough mirrored disks to be above the mark again, at most
//! [`limits::POOL_GROWTH_DISKS_MAX`] per report and never beyond what its
//! thin device can map. A report about a pool of another size than the
//! record's (the head has not applied the last growth yet) asks for
//! nothing. Only
//! writable layers grow: a frozen pool is never written again, and the
//! dm-thin metadata of a read-only pool must not be resized.
//!
//! When no chunk is free the growth fails and is reported (the manager
//! raises `pool_exhausted`); the pool keeps the space it has, and the
//! kernel holds writes to blocks it cannot map (`queue_if_no_space`) and
//! then fails them, never corrupting data.

use super::heartbeat::HeartbeatEvent;
use super::{Changes, Cluster};
use crate::SecretSource;
use crate::entities::{LayerInfo, LayerState, Volume, VolumeRole};
use crate::ids::{ServerId, VolumeId};
use crate::limits;

/// What a head reports about a pool it writes: the kernel's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// The layer's record name (`_L<id>`).
    pub layer: String,
    /// In pool blocks ([`LayerInfo::block_sectors`]).
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// In dm-thin metadata blocks (4 KiB).
    pub used_meta_blocks: u64,
    pub total_meta_blocks: u64,
    /// The kernel holds writes to unmapped blocks: no data space left.
    pub out_of_data_space: bool,
}

/// Metadata on each mirrored disk a pool grows by: enough for that disk's
/// data blocks, in whole thin blocks.
pub fn thin_added_meta_bytes(data_bytes_per_chunk: u64) -> u64 {
    let block = u64::from(limits::THIN_BLOCK_SECTORS) * 512;
    let meta = (data_bytes_per_chunk / block) * limits::THIN_META_BYTES_PER_BLOCK;
    meta.next_multiple_of(block).max(block)
}

/// Metadata bytes at the front of mirrored disk `k` of a layer.
fn meta_bytes_of(info: &LayerInfo, k: usize, data_bytes_per_chunk: u64) -> u64 {
    match k {
        0 => info.meta_bytes,
        _ => later_meta_bytes(info, data_bytes_per_chunk),
    }
}

/// Metadata bytes at the front of each mirrored disk after a layer's first
/// (the rule's, for a record from before growth, which has none yet).
pub fn later_meta_bytes(info: &LayerInfo, data_bytes_per_chunk: u64) -> u64 {
    match info.added_meta_bytes {
        0 => thin_added_meta_bytes(data_bytes_per_chunk),
        n => n,
    }
}

/// (offset in a layer's space, length), in bytes.
pub type Extent = (u64, u64);

/// Where a layer's pool lies on its `disks` mirrored disks of
/// `data_bytes_per_chunk` each: the metadata and the data parts as
/// (offset in the layer's space, length) in bytes, in order. The pool's
/// data blocks are the whole blocks of the data parts.
pub fn pool_extents(
    info: &LayerInfo,
    disks: usize,
    data_bytes_per_chunk: u64,
) -> (Vec<Extent>, Vec<Extent>) {
    let mut meta = Vec::with_capacity(disks);
    let mut data = Vec::with_capacity(disks);
    for k in 0..disks {
        let start = k as u64 * data_bytes_per_chunk;
        let m = meta_bytes_of(info, k, data_bytes_per_chunk).min(data_bytes_per_chunk);
        if m > 0 {
            meta.push((start, m));
        }
        if m < data_bytes_per_chunk {
            data.push((start + m, data_bytes_per_chunk - m));
        }
    }
    (meta, data)
}

/// The pool data blocks a layer of `disks` mirrored disks holds: the whole
/// blocks of the data parts of [`pool_extents`].
pub fn pool_data_blocks(info: &LayerInfo, disks: usize, data_bytes_per_chunk: u64) -> u64 {
    let block = u64::from(info.block_sectors.max(1)) * 512;
    let Some(later) = (disks as u64).checked_sub(1) else {
        return 0;
    };
    let data_of =
        |k| data_bytes_per_chunk.saturating_sub(meta_bytes_of(info, k, data_bytes_per_chunk));
    data_of(0).saturating_add(later.saturating_mul(data_of(1))) / block
}

/// Why a pool report asks for no growth, or how much it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolGrowth {
    /// Grow the layer by this many mirrored disks.
    Grow { layer: VolumeId, disks: u64 },
    /// Above the mark, or the pool already covers its thin device.
    NotNeeded,
    /// The report is not about a writable layer this server heads, or is
    /// about a smaller pool than the record's (a growth not applied yet).
    Stale,
}

impl Cluster {
    /// What `server`'s report about a pool asks for (see the module's
    /// rules). Pure: [`Cluster::apply_heartbeat`] applies it.
    pub fn pool_growth(&self, server: ServerId, usage: &PoolUsage) -> PoolGrowth {
        let Some(layer) = self.layer_by_name(&usage.layer) else {
            return PoolGrowth::Stale;
        };
        let Some(info) = layer.role.layer() else {
            return PoolGrowth::Stale;
        };
        let heads_it = self
            .writer_of(layer.id)
            .is_some_and(|a| a.head == server && !a.is_releasing());
        if info.state != LayerState::Writable || !heads_it {
            return PoolGrowth::Stale;
        }
        let per_chunk = self.settings.data_bytes_per_chunk();
        let disks = layer.mirrored_disks.len();
        let have = pool_data_blocks(info, disks, per_chunk);
        // A smaller pool: the head has not applied the last growth yet. A
        // larger one cannot come from a healthy head; neither counts, so no
        // report grows a layer twice for one need.
        if usage.total_data_blocks != have {
            return PoolGrowth::Stale;
        }
        let block = u64::from(info.block_sectors.max(1)) * 512;
        let needed = info.thin_size_bytes.div_ceil(block);
        if have >= needed {
            return PoolGrowth::NotNeeded;
        }
        let per_disk = pool_data_blocks(info, 2, per_chunk) - pool_data_blocks(info, 1, per_chunk);
        let mark = (per_chunk / block / 2).max(have * limits::POOL_FREE_LOW_PERCENT / 100);
        let free = have.saturating_sub(usage.used_data_blocks);
        // In u128: the counters are the head's word, any u64.
        let meta_high = u128::from(usage.used_meta_blocks) * 100
            > u128::from(usage.total_meta_blocks) * u128::from(limits::POOL_META_HIGH_PERCENT);
        if free >= mark && !meta_high {
            return PoolGrowth::NotNeeded;
        }
        // Enough to be above the mark again (one disk for metadata alone),
        // no more than the thin device can use.
        let short = (mark + 1).saturating_sub(free);
        let wanted = short.div_ceil(per_disk.max(1)).max(1);
        let useful = (needed - have).div_ceil(per_disk.max(1));
        let room = limits::MIRRORED_DISKS_PER_VOLUME_MAX.saturating_sub(disks as u64);
        let disks = wanted
            .min(useful)
            .min(limits::POOL_GROWTH_DISKS_MAX)
            .min(room);
        if disks == 0 {
            return PoolGrowth::NotNeeded;
        }
        PoolGrowth::Grow {
            layer: layer.id,
            disks,
        }
    }

    /// Applies the pool reports of `server`'s heartbeat: grows each layer
    /// that asks for it, or reports why it could not.
    pub(super) fn grow_pools(
        &mut self,
        server: ServerId,
        pools: &[PoolUsage],
        secrets: &mut dyn SecretSource,
        events: &mut Vec<HeartbeatEvent>,
        changes: &mut Changes,
    ) {
        for usage in pools {
            let PoolGrowth::Grow { layer, disks } = self.pool_growth(server, usage) else {
                continue;
            };
            let volume = self.handle_writing(layer);
            match self.grow_layer(layer, disks, server, secrets) {
                Ok(total) => {
                    let mut grown = Changes::default();
                    grown.volumes.insert(layer);
                    changes.merge(self.commit(grown));
                    events.push(HeartbeatEvent::PoolGrown {
                        volume,
                        layer: usage.layer.clone(),
                        mirrored_disks: total,
                    });
                }
                Err(e) => events.push(HeartbeatEvent::PoolExhausted {
                    volume,
                    layer: usage.layer.clone(),
                    full: usage.out_of_data_space,
                    error: e.to_string(),
                }),
            }
        }
    }

    /// The thin volume writing layer `layer` (by record name) and the
    /// layer's pool block size in bytes: what a pool report's counters
    /// belong to, for metrics and `volume show`. `None` for a layer no
    /// volume writes any more.
    pub fn pool_writer(&self, layer: &str) -> Option<(String, u64)> {
        let l = self.layer_by_name(layer)?;
        let info = l.role.layer()?;
        let handle = self.volumes.get(&info.writer?)?;
        Some((handle.name.clone(), u64::from(info.block_sectors) * 512))
    }

    /// Whether a heartbeat's pool reports would change a record.
    pub(super) fn pools_want_growth(&self, server: ServerId, pools: &[PoolUsage]) -> bool {
        pools
            .iter()
            .any(|u| matches!(self.pool_growth(server, u), PoolGrowth::Grow { .. }))
    }

    /// The name of the thin volume whose top `layer` is.
    fn handle_writing(&self, layer: VolumeId) -> String {
        self.volumes
            .get(&layer)
            .and_then(|l| l.role.layer())
            .and_then(|info| info.writer)
            .and_then(|w| self.volumes.get(&w))
            .map_or_else(|| layer.to_string(), |h| h.name.clone())
    }

    /// Appends `disks` mirrored disks to writable layer `id`, placed near
    /// its head. Returns the layer's mirrored disks; on failure (no room)
    /// nothing changed.
    fn grow_layer(
        &mut self,
        id: VolumeId,
        disks: u64,
        head: ServerId,
        secrets: &mut dyn SecretSource,
    ) -> Result<usize, crate::error::ModelError> {
        let layer = &self.volumes[&id];
        let have = layer.mirrored_disks.len() as u64;
        // allocate() reads only the placement fields.
        let shell = Volume {
            mirrored_disks: Vec::new(),
            near_server: Some(head),
            ..layer.clone()
        };
        let added = self.allocate(&shell, disks, have, secrets)?;
        let per_chunk = self.settings.data_bytes_per_chunk();
        let layer = self.volumes.get_mut(&id).expect("exists");
        layer.mirrored_disks.extend(added);
        layer.size_bytes = layer.mirrored_disks.len() as u64 * per_chunk;
        if let VolumeRole::Layer(info) = &mut layer.role
            && info.added_meta_bytes == 0
        {
            info.added_meta_bytes = thin_added_meta_bytes(per_chunk);
        }
        Ok(layer.mirrored_disks.len())
    }
}
