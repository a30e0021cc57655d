//! How a leg is carved from its block device ([`LegLayout`]) and how a
//! volume device lays its mirrors out ([`VolumeLayout`]), as table lines.

use super::table::{Target, TargetLine};
use super::{Device, DmError, Result, Sectors};

/// How a leg is carved from its block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegLayout {
    /// Where the chunk starts on the parent device: 0 for an imported
    /// chunk (the NBD device is the chunk), the chunk's offset for a chunk
    /// on a local disk mapped directly.
    pub start: Sectors,
    /// The metadata area at the front (superblock at 0, bitmap at 4 KiB).
    pub meta_size: Sectors,
    /// The data area right after it.
    pub data_size: Sectors,
}

impl LegLayout {
    /// 4 MiB of metadata, as the lab recipe and LVM use.
    pub const DEFAULT_META: Sectors = Sectors(8192);

    /// Splits a chunk of `chunk_size` into the default meta area and the rest.
    pub fn for_chunk(chunk_size: Sectors) -> Result<Self> {
        Self::with_meta(chunk_size, Self::DEFAULT_META)
    }
    pub fn with_meta(chunk_size: Sectors, meta_size: Sectors) -> Result<Self> {
        // ≥ 8 KiB: superblock (4 KiB) plus at least one bitmap page.
        if *meta_size < 16 || *chunk_size <= *meta_size {
            return Err(DmError::InvalidTable {
                name: "leg".into(),
                reason: format!(
                    "chunk of {} sectors cannot hold a {}-sector metadata area and data",
                    *chunk_size, *meta_size
                ),
            });
        }
        Ok(LegLayout {
            start: Sectors(0),
            meta_size,
            data_size: Sectors(*chunk_size - *meta_size),
        })
    }

    /// The same layout for a chunk that starts at `start` on its parent.
    pub fn at(self, start: Sectors) -> Self {
        LegLayout { start, ..self }
    }
}

/// The layout of the volume device over its mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeLayout {
    /// Concatenation, in order.
    Linear(Vec<(Device, Sectors)>),
    /// Striping over equal-sized mirrors with the given chunk.
    Striped {
        chunk: Sectors,
        members: Vec<(Device, Sectors)>,
    },
}

impl VolumeLayout {
    /// The device's length: what its table maps.
    pub fn len(&self) -> Sectors {
        Sectors(self.lines().iter().map(|l| *l.len).sum())
    }

    pub(super) fn lines(&self) -> Vec<TargetLine> {
        match self {
            VolumeLayout::Linear(parts) => {
                let mut at = Sectors(0);
                parts
                    .iter()
                    .map(|(dev, len)| {
                        let l = TargetLine {
                            start: at,
                            len: *len,
                            target: Target::Linear {
                                dev: *dev,
                                offset: Sectors(0),
                            },
                        };
                        at = Sectors(*at + **len);
                        l
                    })
                    .collect()
            }
            VolumeLayout::Striped { chunk, members } => {
                // Every member contributes the size of the smallest, rounded
                // down to a whole chunk.
                let per = members.iter().map(|(_, l)| **l).min().unwrap_or(0);
                let per = if **chunk == 0 { 0 } else { per - per % **chunk };
                vec![TargetLine {
                    start: Sectors(0),
                    len: Sectors(per * members.len() as u64),
                    target: Target::Striped {
                        chunk: *chunk,
                        stripes: members.iter().map(|(d, _)| (*d, Sectors(0))).collect(),
                    },
                }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::table::table_matches;

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    /// Linear concatenation and striping produce dmsetup-style lines, and
    /// the kernel's normalised output of the same table matches.
    #[test]
    fn volume_layout_lines() {
        let lin = VolumeLayout::Linear(vec![
            (dev(253, 4), Sectors(1000)),
            (dev(253, 9), Sectors(500)),
        ])
        .lines();
        let s: Vec<String> = lin.iter().map(|l| l.to_string()).collect();
        assert_eq!(s, ["0 1000 linear 253:4 0", "1000 500 linear 253:9 0"]);
        assert!(table_matches(
            &lin,
            &[
                (0, 1000, "linear".into(), "253:4 0".into()),
                (1000, 500, "linear".into(), "253:9  0".into())
            ]
        ));
        assert!(!table_matches(
            &lin,
            &[(0, 1000, "linear".into(), "253:4 0".into())]
        ));
        assert!(!table_matches(
            &lin,
            &[
                (0, 1000, "linear".into(), "253:4 8".into()),
                (1000, 500, "linear".into(), "253:9 0".into())
            ]
        ));
        let st = VolumeLayout::Striped {
            chunk: Sectors(128),
            members: vec![(dev(253, 4), Sectors(1000)), (dev(253, 9), Sectors(1100))],
        }
        .lines();
        assert_eq!(st[0].to_string(), "0 1792 striped 2 128 253:4 0 253:9 0");
    }

    /// Leg layouts keep room for metadata and data.
    #[test]
    fn leg_layout() {
        let l = LegLayout::for_chunk(Sectors(139264)).unwrap();
        assert_eq!((l.meta_size, l.data_size), (Sectors(8192), Sectors(131072)));
        assert!(LegLayout::for_chunk(Sectors(8192)).is_err());
        assert!(LegLayout::with_meta(Sectors(100), Sectors(8)).is_err());
    }
}
