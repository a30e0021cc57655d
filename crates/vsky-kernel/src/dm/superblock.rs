//! A leg's dm-raid superblock, read and cleared directly on its metadata
//! device. Recognising one ([`is_raid_superblock`]) is pure and tested here;
//! the device I/O around it runs in the VM lab.

use std::path::Path;

use super::{DmError, Result};

/// dm-raid's superblock magic ("DmRd", little endian), at the start of a
/// leg's metadata device.
const DM_RAID_MAGIC: u32 = 0x6452_6D44;

/// Whether a leg's metadata device holds a dm-raid superblock: a leg that
/// was part of a mirror has one; a chunk filled by a server-to-server copy
/// (or never used) starts zeroed. A mirror assembled from legs with and
/// without one must list the latter under `rebuild`, or dm-raid refuses the
/// table ("new device injected into existing raid set"). The device is
/// read directly (O_DIRECT), so no stale page cache answers.
pub fn has_raid_superblock(meta: &Path) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DmError::Io {
        path: meta.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(meta)
        .map_err(io)?;
    // O_DIRECT wants a buffer aligned to the logical block size.
    #[repr(C, align(4096))]
    struct Block([u8; 4096]);
    let mut block = Block([0; 4096]);
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut block.0, 0).map_err(io)?;
    Ok(is_raid_superblock(&block.0))
}

/// Whether `head`, the first bytes of a metadata device, starts with
/// dm-raid's superblock magic.
fn is_raid_superblock(head: &[u8]) -> bool {
    head.first_chunk::<4>()
        .is_some_and(|magic| u32::from_le_bytes(*magic) == DM_RAID_MAGIC)
}

/// Writes 4 KiB of zeros at the start of a block device and flushes it.
pub(super) fn zero_head(path: &Path) -> Result<()> {
    use std::io::Write;
    let io = |source| DmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&[0u8; 4096]).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The magic is "DmRd" read as a little-endian u32 at offset 0; a zeroed
    /// chunk, another signature, or a short read is not a superblock.
    #[test]
    fn raid_superblock_is_recognised_by_its_magic() {
        let mut block = [0u8; 4096];
        assert!(!is_raid_superblock(&block));
        block[..4].copy_from_slice(b"DmRd");
        assert!(is_raid_superblock(&block));
        block[..4].copy_from_slice(b"dRmD");
        assert!(!is_raid_superblock(&block));
        assert!(!is_raid_superblock(b"DmR"));
    }
}
