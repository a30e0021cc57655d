//! Wiping freed chunks, so a new volume never reads an old volume's data.
//!
//! Files get a hole punched (reads return zeros, space is returned to the
//! filesystem); block devices get BLKZEROOUT, which the kernel turns into
//! the cheapest zeroing the device supports. Either way the range reads back
//! as zeros before the agent reports the chunk wiped.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Zeroes `[offset, offset + len)` of a disk and makes it durable.
pub fn zero_range(path: &Path, offset: u64, len: u64) -> std::io::Result<()> {
    let file = File::options().read(true).write(true).open(path)?;
    let is_block = file.metadata()?.file_type().is_block_device();
    let done = if is_block {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads a [u64; 2] from the pointer we pass,
        // which lives for the duration of the call.
        unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) == 0 }
    } else {
        let (off, l) = (offset as libc::off_t, len as libc::off_t);
        // SAFETY: plain syscall on an fd we own.
        unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            ) == 0
        }
    };
    if !done {
        // Filesystems without hole punching, devices without zeroing
        // support: write zeros by hand.
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// The wiped range reads back as zeros; bytes around it are untouched.
    #[test]
    fn zeroes_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let f = File::create(&path).unwrap();
        f.write_all_at(&vec![0xab; 4 << 20], 0).unwrap();
        zero_range(&path, 1 << 20, 2 << 20).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        assert!(buf[..1 << 20].iter().all(|&b| b == 0xab));
        assert!(buf[1 << 20..3 << 20].iter().all(|&b| b == 0));
        assert!(buf[3 << 20..].iter().all(|&b| b == 0xab));
    }
}
