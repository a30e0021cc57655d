//! Block-device ioctls outside the datapath: every kernel ioctl VastSky
//! issues lives in this crate, typed, with its safety argument next to it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Zeroes `[offset, offset + len)` of the block device open (for writing) as
/// `file`, with `BLKZEROOUT`: the kernel picks the cheapest zeroing the
/// device supports (write-zeroes, discard that zeroes, or plain writes).
///
/// Fails with the ioctl's error when `file` is not a block device, the range
/// is not aligned to its logical block size, or the device cannot zero;
/// callers fall back to writing zeros themselves. The zeros are not yet
/// durable: sync the file afterwards.
pub fn zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads one [u64; 2] (start, length) through the
    // pointer and writes nothing; `range` outlives the call, and the fd is
    // open for as long as `file` is borrowed.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a regular file the ioctl is refused (ENOTTY), as an error the
    /// caller can fall back from, not a panic.
    #[test]
    fn zero_out_refuses_a_regular_file() {
        let path = std::env::temp_dir().join(format!("vsky-zero-out-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let err = zero_out(&file, 0, 4096).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
