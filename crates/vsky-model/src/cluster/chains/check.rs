//! Every rule of `cluster/chains.rs`'s header, checked from scratch over
//! the records: what `load` refuses and `check_invariants` asserts.

use std::collections::BTreeMap;

use super::layer_name;
use crate::cluster::Cluster;
use crate::entities::{LayerInfo, LayerState, VolumeRole};
use crate::ids::VolumeId;
use crate::limits;

impl Cluster {
    /// Every rule of the module header, checked from scratch.
    pub(in crate::cluster) fn check_chains(&self) -> Result<(), String> {
        #[derive(Default)]
        struct Names {
            tops: usize,
            snapshots: usize,
            children: Vec<VolumeId>,
        }
        let mut names: BTreeMap<VolumeId, Names> = BTreeMap::new();
        let layer_of = |id: &VolumeId, by: &str| -> Result<&LayerInfo, String> {
            self.layer_info(*id)
                .ok_or_else(|| format!("{by} names {id}, which is not a layer"))
        };
        for v in self.volumes.values() {
            let own = !v.mirrored_disks.is_empty();
            match &v.role {
                VolumeRole::Thick => {}
                VolumeRole::Thin { top } => {
                    let info = layer_of(top, &v.name)?;
                    if own || v.stripe.is_some() {
                        return Err(format!("thin volume {} has its own layout", v.name));
                    }
                    if info.state != LayerState::Writable || info.thin_size_bytes != v.size_bytes {
                        return Err(format!(
                            "thin volume {}'s top {top} is not writable at its size",
                            v.name
                        ));
                    }
                    names.entry(*top).or_default().tops += 1;
                }
                VolumeRole::Snapshot { layer, .. } => {
                    let info = layer_of(layer, &v.name)?;
                    if own || v.attachment.is_some() {
                        return Err(format!("snapshot {} has a layout or a writer", v.name));
                    }
                    if info.state == LayerState::Writable {
                        return Err(format!("snapshot {} names writable {layer}", v.name));
                    }
                    names.entry(*layer).or_default().snapshots += 1;
                }
                VolumeRole::Layer(info) => {
                    if v.name != layer_name(v.id)
                        || v.attachment.is_some()
                        || v.meta.group.is_some()
                        || !own
                        || v.stripe.is_some()
                    {
                        return Err(format!(
                            "layer {} has a user's name, writer, group or stripe, or no space",
                            v.id
                        ));
                    }
                    let per_chunk = self.settings.data_bytes_per_chunk();
                    let space = v.mirrored_disks.len() as u64 * per_chunk;
                    let grown = v.mirrored_disks.len() > 1;
                    if v.size_bytes != space
                        || info.meta_bytes == 0
                        || info.meta_bytes >= per_chunk
                        || info.added_meta_bytes >= per_chunk
                        || (grown && info.added_meta_bytes == 0)
                        || info.block_sectors != limits::THIN_BLOCK_SECTORS
                        || info.thin_size_bytes == 0
                    {
                        return Err(format!("layer {} has an impossible pool shape", v.id));
                    }
                    if let Some(p) = info.parent {
                        let parent = layer_of(&p, &v.name)?;
                        if parent.state == LayerState::Writable {
                            return Err(format!("layer {} reads through writable {p}", v.id));
                        }
                        names.entry(p).or_default().children.push(v.id);
                    }
                    if info.state != LayerState::Writable && info.frozen_at_unix_s.is_none() {
                        return Err(format!("layer {} was frozen at no time", v.id));
                    }
                    let attached_writer = info
                        .writer
                        .and_then(|w| self.volumes.get(&w))
                        .is_some_and(|w| w.attachment.is_some());
                    if info.unwritten && attached_writer {
                        return Err(format!(
                            "layer {} is marked unwritten while its volume is attached",
                            v.id
                        ));
                    }
                    if self.chain_from(v.id).len() > limits::CHAIN_DEPTH_MAX + 1 {
                        return Err(format!(
                            "layer {} is in a parent cycle or too deep a chain",
                            v.id
                        ));
                    }
                }
            }
        }
        for v in self.volumes.values() {
            let Some(info) = v.role.layer() else { continue };
            let n = names.remove(&v.id).unwrap_or_default();
            if n.tops + n.snapshots + n.children.len() == 0 {
                return Err(format!(
                    "layer {} is named by nothing and was not released",
                    v.id
                ));
            }
            let handle_top = |w: VolumeId| match self.volumes.get(&w).map(|h| &h.role) {
                Some(VolumeRole::Thin { top }) => Some(*top),
                _ => None,
            };
            let writer_ok = match info.state {
                LayerState::Frozen => info.writer.is_none(),
                LayerState::Writable => info.writer.and_then(handle_top) == Some(v.id),
                LayerState::Freezing => info
                    .writer
                    .and_then(handle_top)
                    .is_some_and(|top| n.children.contains(&top)),
            };
            if !writer_ok {
                return Err(format!("layer {} names the wrong writer", v.id));
            }
            match info.state {
                LayerState::Writable
                    if n.tops != 1 || n.snapshots != 0 || !n.children.is_empty() =>
                {
                    return Err(format!(
                        "writable layer {} is not the top of exactly one thin volume",
                        v.id
                    ));
                }
                LayerState::Freezing => {
                    let [child] = n.children[..] else {
                        return Err(format!("freezing layer {} has other than one child", v.id));
                    };
                    let written = self.volumes.values().any(|h| {
                        h.attachment.is_some()
                            && matches!(h.role, VolumeRole::Thin { top } if top == child)
                    });
                    if n.tops != 0 || !written {
                        return Err(format!(
                            "freezing layer {} has no head switching away from it",
                            v.id
                        ));
                    }
                }
                _ => {}
            }
        }
        self.check_readers()
    }
}
