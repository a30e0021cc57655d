//! What a thin pool's metadata superblock says about the pool's size.
//!
//! A head that assembles a frozen layer read-only must give its pool
//! exactly the metadata and data devices the metadata describes: a longer
//! device makes dm-thin resize the pool on resume, which it cannot do read
//! only. The layer's record may name more mirrored disks than the pool has
//! taken in (it grew while its head was switching off it), so the sizes
//! are read from the superblock, which the kernel wrote.
//!
//! The superblock is the first 4 KiB of the metadata device (Linux
//! `drivers/md/dm-thin-metadata.c`, `struct thin_disk_superblock`, all
//! little-endian): magic at byte 32, the data space map's root from byte
//! 64 and the metadata space map's from byte 192, each starting with its
//! `nr_blocks` (both roots are 128 bytes); after the two btree roots, the
//! data block size (sectors) at byte 336 and the metadata block size
//! (sectors) at byte 340.

/// `THIN_SUPERBLOCK_MAGIC`.
const MAGIC: u64 = 27_022_010;
/// The size of the superblock, and of every metadata block, in bytes.
pub const THIN_METADATA_BLOCK_BYTES: u64 = 4096;

/// The sizes a pool's superblock records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinSuperblock {
    /// Data blocks the pool has (the data space map's size).
    pub data_blocks: u64,
    /// Metadata blocks of 4 KiB the pool has (the metadata space map's).
    pub metadata_blocks: u64,
    /// The data block size, in 512-byte sectors.
    pub data_block_sectors: u32,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl ThinSuperblock {
    /// Reads the first block of a pool's metadata device: `Ok(None)` when
    /// it is all zeros (never formatted: dm-thin formats it when the pool
    /// is first loaded read-write), an error when it is neither that nor a
    /// thin superblock. The checksum is the kernel's to check.
    pub fn parse(block: &[u8]) -> Result<Option<ThinSuperblock>, String> {
        if block.len() < THIN_METADATA_BLOCK_BYTES as usize {
            return Err(format!(
                "{} bytes is less than a metadata block",
                block.len()
            ));
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let magic = le64(block, 32);
        if magic != MAGIC {
            return Err(format!("no thin superblock (magic {magic})"));
        }
        let sb = ThinSuperblock {
            data_blocks: le64(block, 64),
            metadata_blocks: le64(block, 192),
            data_block_sectors: le32(block, 336),
        };
        let metadata_block_sectors = le32(block, 340);
        if u64::from(metadata_block_sectors) * 512 != THIN_METADATA_BLOCK_BYTES
            || sb.data_block_sectors == 0
            || sb.metadata_blocks == 0
        {
            return Err(format!(
                "a thin superblock with impossible sizes ({sb:?}, metadata blocks of {metadata_block_sectors} sectors)"
            ));
        }
        Ok(Some(sb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(data_blocks: u64, metadata_blocks: u64, block_sectors: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        b[32..40].copy_from_slice(&MAGIC.to_le_bytes());
        b[64..72].copy_from_slice(&data_blocks.to_le_bytes());
        b[72..80].copy_from_slice(&7u64.to_le_bytes());
        b[192..200].copy_from_slice(&metadata_blocks.to_le_bytes());
        b[336..340].copy_from_slice(&block_sectors.to_le_bytes());
        b[340..344].copy_from_slice(&8u32.to_le_bytes());
        b
    }

    #[test]
    fn reads_the_sizes_the_kernel_wrote() {
        assert_eq!(
            ThinSuperblock::parse(&block(3808, 4096, 128)),
            Ok(Some(ThinSuperblock {
                data_blocks: 3808,
                metadata_blocks: 4096,
                data_block_sectors: 128,
            }))
        );
    }

    #[test]
    fn zeros_are_unformatted_and_anything_else_is_refused() {
        assert_eq!(ThinSuperblock::parse(&[0u8; 4096]), Ok(None));
        assert!(ThinSuperblock::parse(&[0u8; 512]).is_err());
        let mut b = block(1, 1, 128);
        b[32] ^= 1;
        assert!(ThinSuperblock::parse(&b).unwrap_err().contains("magic"));
        assert!(ThinSuperblock::parse(&block(1, 0, 128)).is_err());
        assert!(ThinSuperblock::parse(&block(1, 1, 0)).is_err());
        let mut b = block(1, 1, 128);
        b[340] = 16;
        assert!(ThinSuperblock::parse(&b).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_answer_not_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..5000),
            magic in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if magic && bytes.len() >= 40 {
                bytes[32..40].copy_from_slice(&MAGIC.to_le_bytes());
            }
            let _ = ThinSuperblock::parse(&bytes);
        }
    }
}
