//! The pool's superblock, block 0 of the metadata device.
//!
//! Layout (`struct thin_disk_superblock` in Linux
//! `drivers/md/dm-thin-metadata.c`, packed, little-endian):
//!
//! | bytes   | field                                               |
//! |---------|-----------------------------------------------------|
//! | 0       | `csum`, CRC-32C of bytes 4.. (salt 160774)           |
//! | 4       | `flags` (bit 0: needs_check)                        |
//! | 8       | `blocknr`, always 0                                 |
//! | 16      | `uuid` (16 bytes, unused by the kernel)             |
//! | 32      | `magic`, 27022010                                   |
//! | 40      | `version`                                           |
//! | 44      | `time`, bumped at every snapshot                    |
//! | 48      | `trans_id`, set by userspace                        |
//! | 56      | `held_root`, the metadata snapshot's block, or 0    |
//! | 64      | data space map root (128 bytes; `nr_blocks` first)  |
//! | 192     | metadata space map root (128 bytes; `nr_blocks` first) |
//! | 320     | `data_mapping_root`, the two-level mapping tree     |
//! | 328     | `device_details_root`                               |
//! | 336     | `data_block_size`, in 512-byte sectors              |
//! | 340     | `metadata_block_size`, in sectors (8)               |
//! | 344     | `metadata_nr_blocks` (as formatted; not kept up to date) |
//! | 352     | `compat_flags`, `compat_ro_flags`, `incompat_flags` |
//!
//! Checks, in the kernel's order (`sb_check`, then
//! `__check_incompat_features`), and then ours: the block says it is block
//! 0; the magic; the checksum; a version this parser was written for; no
//! incompatible feature flag (the kernel supports none); needs_check clear
//! (the kernel sets it when it found the metadata damaged, and then only
//! `thin_check`/`thin_repair` should read it); 4 KiB metadata blocks; a data
//! block size dm-thin accepts. `compat_ro_flags` only matter to a writer.

use crate::block::{BLOCK_SIZE, Block, le32, le64};
use crate::checksum::{BlockKind, block_checksum, stored_checksum};
use crate::error::{Error, Result};

/// `THIN_SUPERBLOCK_MAGIC`.
pub const MAGIC: u64 = 27_022_010;

/// The metadata format versions this parser reads. The first dm-thin
/// (Linux 3.2) formatted pools as version 1; the upstream source read for
/// this crate formats them as version 2 (`THIN_VERSION`), and thin_restore
/// writes either. The kernel never rewrites the version of a pool it opens,
/// so an old pool keeps its 1. Both lay out everything read here the same
/// way. A later version may not, so it is refused rather than guessed (the
/// kernel itself does not check the version).
pub const VERSIONS: std::ops::RangeInclusive<u32> = 1..=2;

/// The superblock flag the kernel sets when it found the metadata damaged.
pub const NEEDS_CHECK_FLAG: u32 = 1;

/// dm-thin's largest data block (1 GiB), in sectors.
const DATA_BLOCK_SECTORS_MAX: u32 = 2_097_152;
/// dm-thin's data blocks are multiples of 64 KiB, in sectors.
const DATA_BLOCK_SECTORS_STEP: u32 = 128;

/// What the superblock says about the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The metadata format version (1 or 2).
    pub version: u32,
    /// The superblock's flags (bit 0, needs_check, is always clear here).
    pub flags: u32,
    /// The pool's time: how many snapshots it has taken. Each mapping
    /// records the time it was made at.
    pub time: u32,
    /// The transaction id userspace last set (`set_transaction_id`).
    pub transaction_id: u64,
    /// The block of the metadata snapshot userspace holds
    /// (`reserve_metadata_snap`), if any.
    pub metadata_snap: Option<u64>,
    /// The size of a data block, in 512-byte sectors.
    pub data_block_sectors: u32,
    /// How many data blocks the pool has (the data space map's size).
    pub data_blocks: u64,
    /// How many 4 KiB metadata blocks the pool uses (the metadata space
    /// map's size).
    pub metadata_blocks: u64,
    /// The root of the two-level mapping tree.
    pub mapping_root: u64,
    /// The root of the device details tree.
    pub details_root: u64,
}

impl Superblock {
    /// Reads and checks block 0 of a metadata device.
    pub fn parse(block: &Block) -> Result<Superblock> {
        if block.iter().all(|byte| *byte == 0) {
            return Err(Error::Unformatted);
        }
        let recorded = le64(block, 8);
        if recorded != 0 {
            return Err(Error::WrongLocation {
                block: 0,
                kind: BlockKind::Superblock,
                recorded,
            });
        }
        let magic = le64(block, 32);
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let stored = stored_checksum(block);
        let computed = block_checksum(BlockKind::Superblock, block);
        if stored != computed {
            return Err(Error::BadChecksum {
                block: 0,
                kind: BlockKind::Superblock,
                stored,
                computed,
            });
        }
        let version = le32(block, 40);
        if !VERSIONS.contains(&version) {
            return Err(Error::UnsupportedVersion { version });
        }
        let incompat_flags = le32(block, 360);
        if incompat_flags != 0 {
            return Err(Error::UnsupportedFeatures { incompat_flags });
        }
        let flags = le32(block, 4);
        if flags & NEEDS_CHECK_FLAG != 0 {
            return Err(Error::NeedsCheck);
        }
        let metadata_sectors = le32(block, 340);
        if u64::from(metadata_sectors) * 512 != BLOCK_SIZE as u64 {
            return Err(Error::BadMetadataBlockSize {
                sectors: metadata_sectors,
            });
        }
        let data_block_sectors = le32(block, 336);
        if data_block_sectors == 0
            || !data_block_sectors.is_multiple_of(DATA_BLOCK_SECTORS_STEP)
            || data_block_sectors > DATA_BLOCK_SECTORS_MAX
        {
            return Err(Error::BadDataBlockSize {
                sectors: data_block_sectors,
            });
        }
        let held_root = le64(block, 56);
        Ok(Superblock {
            version,
            flags,
            time: le32(block, 44),
            transaction_id: le64(block, 48),
            metadata_snap: (held_root != 0).then_some(held_root),
            data_block_sectors,
            data_blocks: le64(block, 64),
            metadata_blocks: le64(block, 192),
            mapping_root: le64(block, 320),
            details_root: le64(block, 328),
        })
    }

    /// The size of a data block, in bytes.
    pub fn data_block_bytes(&self) -> u64 {
        u64::from(self.data_block_sectors) * 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superblock as the kernel formats one, checksummed.
    fn block() -> Block {
        let mut b = [0u8; BLOCK_SIZE];
        b[32..40].copy_from_slice(&MAGIC.to_le_bytes());
        b[40..44].copy_from_slice(&2u32.to_le_bytes());
        b[44..48].copy_from_slice(&5u32.to_le_bytes());
        b[48..56].copy_from_slice(&9u64.to_le_bytes());
        b[64..72].copy_from_slice(&1000u64.to_le_bytes());
        b[192..200].copy_from_slice(&4096u64.to_le_bytes());
        b[320..328].copy_from_slice(&7u64.to_le_bytes());
        b[328..336].copy_from_slice(&6u64.to_le_bytes());
        b[336..340].copy_from_slice(&128u32.to_le_bytes());
        b[340..344].copy_from_slice(&8u32.to_le_bytes());
        seal(&mut b);
        b
    }

    fn seal(b: &mut Block) {
        let csum = block_checksum(BlockKind::Superblock, b);
        b[0..4].copy_from_slice(&csum.to_le_bytes());
    }

    fn with(at: usize, bytes: &[u8]) -> Result<Superblock> {
        let mut b = block();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        seal(&mut b);
        Superblock::parse(&b)
    }

    #[test]
    fn reads_every_field() {
        let sb = Superblock::parse(&block()).unwrap();
        assert_eq!(
            sb,
            Superblock {
                version: 2,
                flags: 0,
                time: 5,
                transaction_id: 9,
                metadata_snap: None,
                data_block_sectors: 128,
                data_blocks: 1000,
                metadata_blocks: 4096,
                mapping_root: 7,
                details_root: 6,
            }
        );
        assert_eq!(sb.data_block_bytes(), 65536);
        assert_eq!(
            with(56, &3u64.to_le_bytes()).unwrap().metadata_snap,
            Some(3)
        );
        assert_eq!(with(40, &1u32.to_le_bytes()).unwrap().version, 1);
    }

    #[test]
    fn refuses_what_the_kernel_refuses() {
        assert!(matches!(
            Superblock::parse(&[0; BLOCK_SIZE]),
            Err(Error::Unformatted)
        ));
        assert!(matches!(
            with(8, &1u64.to_le_bytes()),
            Err(Error::WrongLocation { recorded: 1, .. })
        ));
        assert!(matches!(with(32, &[0]), Err(Error::BadMagic { .. })));
        let mut b = block();
        b[400] ^= 1;
        assert!(matches!(
            Superblock::parse(&b),
            Err(Error::BadChecksum {
                block: 0,
                kind: BlockKind::Superblock,
                ..
            })
        ));
        for version in [0u32, 3, u32::MAX] {
            assert!(matches!(
                with(40, &version.to_le_bytes()),
                Err(Error::UnsupportedVersion { version: v }) if v == version
            ));
        }
        assert!(matches!(
            with(360, &1u32.to_le_bytes()),
            Err(Error::UnsupportedFeatures { incompat_flags: 1 })
        ));
        assert!(matches!(
            with(4, &1u32.to_le_bytes()),
            Err(Error::NeedsCheck)
        ));
        assert!(with(4, &2u32.to_le_bytes()).is_ok());
        assert!(with(356, &1u32.to_le_bytes()).is_ok());
        assert!(matches!(
            with(340, &16u32.to_le_bytes()),
            Err(Error::BadMetadataBlockSize { sectors: 16 })
        ));
        for sectors in [0u32, 64, 129, 2_097_152 + 128] {
            assert!(matches!(
                with(336, &sectors.to_le_bytes()),
                Err(Error::BadDataBlockSize { .. })
            ));
        }
        assert!(with(336, &2_097_152u32.to_le_bytes()).is_ok());
    }
}
