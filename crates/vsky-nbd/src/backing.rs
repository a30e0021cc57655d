//! Positional I/O on an export's backing file, confined to its byte range.
//!
//! [`Backing`] is the only code that touches the backing file. Every method
//! takes export-relative offsets that the command layer has already checked
//! with [`Geometry::confine`]; the translation to file offsets happens here,
//! once, so the range `[offset_bytes, offset_bytes + size_bytes)` is the only
//! part of the file that can ever be read or written.
//!
//! All methods block: the connection runs them on its own thread or on
//! tokio's blocking pool, never on an async worker. I/O
//! is buffered (no `O_DIRECT`, no userspace cache), so every connection to the
//! same file shares the kernel page cache and one `fdatasync` makes all of
//! them durable; that is what makes advertising CAN_MULTI_CONN honest.
//!
//! Zeroing (TRIM, WRITE_ZEROES) uses `fallocate`: PUNCH_HOLE where holes are
//! allowed, ZERO_RANGE otherwise, and plain zero writes when the file system
//! or device supports neither. On block devices Linux implements both modes
//! with guaranteed-zero discards or zero-outs, so trimmed ranges always read
//! back as zeroes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::buffer::Buffer;
use crate::export::{Export, WriteLimit};

/// An export's size as seen by clients, and where it lives in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub base_bytes: u64,
    pub size_bytes: u64,
    pub read_only: bool,
}

impl Geometry {
    /// Checks that `[offset, offset + length)` lies inside the export and
    /// returns the matching file offset. Overflow-safe for any inputs: a
    /// range whose end overflows u64 is simply out of range.
    pub fn confine(&self, offset: u64, length: u64) -> Option<u64> {
        let end = offset.checked_add(length)?;
        if end > self.size_bytes {
            return None;
        }
        // Cannot overflow: open() checked base + size fits in u64.
        Some(self.base_bytes + offset)
    }
}

/// An open backing file plus the export's geometry.
pub(crate) struct Backing {
    file: File,
    geometry: Geometry,
    /// Set when the export is removed from the table; checked right before
    /// each syscall so nothing new reaches a reassigned chunk.
    revoked: Arc<AtomicBool>,
    /// The export's live write limit (`Export::writable_bytes`), checked
    /// before each write and zeroing, like `revoked`.
    write_limit: WriteLimit,
    /// Cleared once the kernel refuses `RWF_NOWAIT`.
    nowait_reads: AtomicBool,
    /// Set after every write or zeroing through this handle, cleared when a
    /// flush through it starts. Lets the connection skip its closing
    /// `fdatasync` when the client already flushed everything it wrote: with
    /// nbdcopy's several connections that sync was a second, synchronous
    /// write-back of the whole copy (see `docs/benchmarks.md`).
    unflushed: AtomicBool,
}

impl Backing {
    /// Opens the backing file and checks that the export's range lies inside
    /// it. Never creates or extends the file: a chunk that does not fit is a
    /// configuration error, not something to paper over with zeroes.
    pub fn open(
        export: &Export,
        revoked: Arc<AtomicBool>,
        write_limit: WriteLimit,
    ) -> io::Result<Self> {
        let end = export
            .offset_bytes
            .checked_add(export.size_bytes)
            .ok_or_else(|| {
                invalid(format!(
                    "export range {}+{} overflows u64",
                    export.offset_bytes, export.size_bytes
                ))
            })?;
        let file = OpenOptions::new()
            .read(true)
            .write(!export.read_only)
            .open(&export.path)?;
        let file_type = file.metadata()?.file_type();
        if !(file_type.is_file() || file_type.is_block_device()) {
            return Err(invalid(format!(
                "{} is neither a regular file nor a block device",
                export.path.display()
            )));
        }
        // metadata().len() is 0 for block devices; seeking to the end works
        // for both kinds.
        let backing_bytes = (&file).seek(SeekFrom::End(0))?;
        if end > backing_bytes {
            return Err(invalid(format!(
                "export range ends at byte {end} but {} has only {backing_bytes} bytes",
                export.path.display()
            )));
        }
        Ok(Self {
            file,
            geometry: Geometry {
                base_bytes: export.offset_bytes,
                size_bytes: export.size_bytes,
                read_only: export.read_only,
            },
            revoked,
            write_limit,
            nowait_reads: AtomicBool::new(true),
            unflushed: AtomicBool::new(false),
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Reads `length` bytes at `file_offset`, a value from
    /// [`Geometry::confine`] (as for every method below).
    /// `data` is an empty buffer to fill (from the pool); it is returned
    /// holding exactly `length` bytes.
    pub fn read(&self, file_offset: u64, length: usize, mut data: Buffer) -> io::Result<Buffer> {
        self.check_live()?;
        // Read into uninitialised capacity: zeroing a buffer that pread is
        // about to overwrite is pure waste on large reads.
        data.clear();
        data.reserve(length);
        let spare = data.spare_capacity_mut();
        let mut filled = 0;
        while filled < length {
            let at = libc::off_t::try_from(file_offset + filled as u64)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: the pointer and length describe the unfilled tail of
            // `spare`, which is valid for writes; pread writes at most that.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare[filled..].as_mut_ptr().cast(),
                    length - filled,
                    at,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                n => filled += n as usize,
            }
        }
        // SAFETY: the loop initialised exactly `length` bytes.
        unsafe { data.set_len(length) };
        Ok(data)
    }

    /// Reads the range only if it is entirely in the page cache
    /// (`preadv2(RWF_NOWAIT)`), so the connection thread can answer hot
    /// reads itself instead of waiting on the device. Returns the buffer back on any
    /// shortfall; the caller then takes the blocking path, which also
    /// reports real errors.
    pub fn try_read_cached(
        &self,
        file_offset: u64,
        length: usize,
        mut data: Buffer,
    ) -> Result<Buffer, Buffer> {
        if !self.nowait_reads.load(Ordering::Relaxed) || self.check_live().is_err() {
            return Err(data);
        }
        let Ok(at) = libc::off_t::try_from(file_offset) else {
            return Err(data);
        };
        data.clear();
        data.reserve(length);
        let iov = libc::iovec {
            iov_base: data.spare_capacity_mut().as_mut_ptr().cast(),
            iov_len: length,
        };
        const IOV_COUNT: libc::c_long = 1;
        // The raw system call, not glibc's preadv2(): that wrapper appeared in
        // glibc 2.26, and the shipped binaries must run on XCP-ng's dom0
        // (glibc 2.17, kernel 4.19; the call is in Linux since 4.6 and
        // RWF_NOWAIT since 4.14). The offset goes in as glibc passes it on
        // x86_64 (LO_HI_LONG): low and high halves, the kernel joining them.
        // Every argument is widened to a long: syscall() is variadic and
        // reads each as one.
        // SAFETY: the iovec describes `length` bytes of spare capacity, valid
        // for writes; preadv2 writes at most that. The arguments match the
        // kernel's preadv2(fd, iov, iovcnt, pos_l, pos_h, flags).
        let n = unsafe {
            libc::syscall(
                libc::SYS_preadv2,
                libc::c_long::from(self.file.as_raw_fd()),
                &raw const iov,
                IOV_COUNT,
                at,
                at >> 32,
                libc::c_long::from(libc::RWF_NOWAIT),
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if matches!(
                error.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
            ) {
                // Old kernel or file system: stop trying.
                self.nowait_reads.store(false, Ordering::Relaxed);
            }
            return Err(data);
        }
        if n as usize != length {
            return Err(data);
        }
        // SAFETY: preadv2 initialised exactly `length` bytes.
        unsafe { data.set_len(length) };
        Ok(data)
    }

    pub fn write(&self, file_offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.check_live()?;
        self.check_write_limit(file_offset, data.len() as u64)?;
        let written = self.file.write_all_at(data, file_offset);
        // Marked once the write is done (even a failed one may have written
        // part), before it is acknowledged: a flush that cleared the mark
        // earlier may have missed this data, so the mark must survive it.
        self.unflushed.store(true, Ordering::SeqCst);
        written?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Makes every completed write durable. `fdatasync` flushes the inode's
    /// dirty pages from every connection, and the device's volatile cache.
    pub fn flush(&self) -> io::Result<()> {
        if self.geometry.read_only {
            return Ok(());
        }
        self.check_live()?;
        // Cleared before the sync, so a write that completes during it marks
        // the handle again and is covered by the next flush or the closing
        // one; restored if the sync fails, so nothing counts as durable that
        // may not be.
        self.unflushed.store(false, Ordering::SeqCst);
        let synced = self.file.sync_data();
        if synced.is_err() {
            self.unflushed.store(true, Ordering::SeqCst);
        }
        synced
    }

    /// [`Backing::flush`], but only if something was written or zeroed
    /// through this handle since its last successful flush: the closing sync
    /// of a connection. Writes of *other* connections are their own
    /// connection's business, so skipping here never leaves an acknowledged
    /// write unsynced.
    pub fn flush_if_unflushed(&self) -> io::Result<()> {
        if !self.unflushed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.flush()
    }

    /// Makes the range read as zeroes. `may_punch` allows deallocation (TRIM,
    /// WRITE_ZEROES without NO_HOLE); otherwise the blocks stay allocated.
    pub fn zero(
        &self,
        file_offset: u64,
        length: u64,
        may_punch: bool,
        fua: bool,
    ) -> io::Result<()> {
        self.check_live()?;
        self.check_write_limit(file_offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let zeroed = self.zero_range(file_offset, length, may_punch);
        // As in write(): marked once the file changed, before the reply.
        self.unflushed.store(true, Ordering::SeqCst);
        zeroed?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn zero_range(&self, file_offset: u64, length: u64, may_punch: bool) -> io::Result<()> {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero_range = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let modes: &[libc::c_int] = if may_punch {
            &[punch, zero_range]
        } else {
            &[zero_range]
        };
        let mut done = false;
        for &mode in modes {
            match self.fallocate_aligned(mode, file_offset, length) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(error) if fallocate_unsupported(&error) => continue,
                Err(error) => return Err(error),
            }
        }
        if !done {
            self.write_zeroes_by_hand(file_offset, length)?;
        }
        Ok(())
    }

    /// Hints the kernel to read the range ahead (NBD_CMD_CACHE).
    pub fn cache(&self, file_offset: u64, length: u64) -> io::Result<()> {
        self.check_live()?;
        let (Ok(offset), Ok(len)) = (
            libc::off_t::try_from(file_offset),
            libc::off_t::try_from(length),
        ) else {
            return Err(invalid("cache range beyond off_t".into()));
        };
        // SAFETY: plain syscall on a valid, owned file descriptor.
        let rc = unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Block devices refuse fallocate on ranges not aligned to their logical
    /// block size. Zero the unaligned head and tail by hand and fallocate the
    /// aligned middle; on regular files the whole range goes in one call.
    fn fallocate_aligned(&self, mode: libc::c_int, offset: u64, length: u64) -> io::Result<()> {
        match self.fallocate(mode, offset, length) {
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {}
            other => return other,
        }
        const ALIGN: u64 = 4096;
        let end = offset + length;
        let middle_start = offset.div_ceil(ALIGN) * ALIGN;
        let middle_end = end / ALIGN * ALIGN;
        if middle_start >= middle_end || (middle_start == offset && middle_end == end) {
            // Nothing aligned to split off, or already aligned and still
            // refused: let the caller try the next mode or write by hand.
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        self.fallocate(mode, middle_start, middle_end - middle_start)?;
        self.write_zeroes_by_hand(offset, middle_start - offset)?;
        self.write_zeroes_by_hand(middle_end, end - middle_end)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, length: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(length))
        else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: plain syscall on a valid, owned file descriptor.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if rc == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    fn write_zeroes_by_hand(&self, mut offset: u64, length: u64) -> io::Result<()> {
        const CHUNK_BYTES: u64 = 1024 * 1024;
        let zeroes = vec![0u8; length.min(CHUNK_BYTES) as usize];
        let end = offset + length;
        while offset < end {
            self.check_live()?;
            let n = (end - offset).min(CHUNK_BYTES) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    #[cfg(test)]
    fn unflushed(&self) -> bool {
        self.unflushed.load(Ordering::SeqCst)
    }

    fn check_live(&self) -> io::Result<()> {
        if self.revoked.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "export was removed",
            ));
        }
        Ok(())
    }

    /// Refuses a change of `[file_offset, file_offset + length)` that
    /// reaches past the export's write limit, with `EPERM` (what NBD
    /// answers a write to a read-only range with). The range was confined
    /// to the export already, so the subtraction cannot underflow.
    fn check_write_limit(&self, file_offset: u64, length: u64) -> io::Result<()> {
        let end = file_offset - self.geometry.base_bytes + length;
        if end > self.write_limit.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

/// fallocate errors that mean "try another way", not "the I/O failed".
fn fallocate_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV)
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Maps an I/O error to the NBD error value the specification asks for.
pub(crate) fn nbd_error_from_io(error: &io::Error) -> u32 {
    use crate::proto::{EINVAL, EIO, ENOSPC, EPERM};
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ENOSPC,
        Some(libc::EPERM | libc::EACCES | libc::EROFS) => EPERM,
        Some(libc::EINVAL) => EINVAL,
        _ => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicU64;

    fn geometry(base: u64, size: u64) -> Geometry {
        Geometry {
            base_bytes: base,
            size_bytes: size,
            read_only: false,
        }
    }

    // Proves confine accepts exactly the ranges inside the export and maps
    // them past the base, and that overflowing ends are refused.
    #[test]
    fn confine_bounds_arithmetic() {
        let g = geometry(1000, 4096);
        assert_eq!(g.confine(0, 4096), Some(1000));
        assert_eq!(g.confine(4095, 1), Some(5095));
        assert_eq!(g.confine(4096, 0), Some(5096));
        assert_eq!(g.confine(4096, 1), None);
        assert_eq!(g.confine(0, 4097), None);
        assert_eq!(g.confine(u64::MAX, 1), None);
        assert_eq!(g.confine(u64::MAX - 10, 20), None);
        assert_eq!(g.confine(1, u64::MAX), None);
        let huge = geometry(u64::MAX - 10, 10);
        assert_eq!(huge.confine(9, 1), Some(u64::MAX - 1));
        assert_eq!(huge.confine(10, 1), None);
    }

    fn backing_file(len: usize) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&vec![0xee; len]).expect("fill");
        file
    }

    fn open(
        path: &std::path::Path,
        offset: u64,
        size: u64,
        read_only: bool,
    ) -> io::Result<Backing> {
        let export = Export {
            path: path.to_owned(),
            offset_bytes: offset,
            size_bytes: size,
            read_only,
            writable_bytes: None,
        };
        Backing::open(
            &export,
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(u64::MAX)),
        )
    }

    // Proves open refuses ranges that do not fit in the file or overflow,
    // and refuses paths that are not files or block devices.
    #[test]
    fn open_validates_range_and_type() {
        let file = backing_file(8192);
        assert!(open(file.path(), 4096, 4096, false).is_ok());
        assert!(open(file.path(), 4096, 4097, false).is_err());
        assert!(open(file.path(), u64::MAX, 2, false).is_err());
        assert!(open(std::path::Path::new("/"), 0, 0, true).is_err());
        assert!(open(std::path::Path::new("/nonexistent/vsky"), 0, 0, true).is_err());
    }

    // Proves zeroing with and without holes (including unaligned edges) reads
    // back as zeroes and leaves neighbouring bytes untouched.
    #[test]
    fn zero_modes_read_back_as_zeroes() {
        let file = backing_file(64 * 1024);
        let backing = open(file.path(), 4096, 32 * 1024, false).expect("open");
        for (may_punch, start, len) in [(true, 100u64, 10_000u64), (false, 20_000, 5_000)] {
            let at = backing.geometry().confine(start, len).expect("in range");
            backing.zero(at, len, may_punch, false).expect("zero");
            let data = backing
                .read(at, len as usize, Buffer::default())
                .expect("read");
            assert!(data.iter().all(|&b| b == 0));
            let before = backing
                .read(at - 1, 1, Buffer::default())
                .expect("read before");
            let after = backing
                .read(at + len, 1, Buffer::default())
                .expect("read after");
            assert_eq!((before[0], after[0]), (0xee, 0xee));
        }
        backing.flush().expect("flush");
    }

    // Proves the closing sync is skipped only when a flush through this
    // handle came after every write and zeroing through it: each change
    // marks the handle, a flush clears the mark, reads leave it alone.
    #[test]
    fn only_a_flush_after_the_last_change_clears_the_mark() {
        let file = backing_file(8192);
        let backing = open(file.path(), 0, 8192, false).expect("open");
        assert!(!backing.unflushed(), "nothing written yet");
        backing.write(0, &[1; 512], false).expect("write");
        assert!(backing.unflushed());
        backing.read(0, 512, Buffer::default()).expect("read");
        assert!(backing.unflushed(), "a read does not make writes durable");
        backing.flush().expect("flush");
        assert!(!backing.unflushed());
        backing.zero(4096, 4096, true, false).expect("zero");
        assert!(backing.unflushed(), "zeroing changes the file too");
        backing.flush_if_unflushed().expect("closing sync");
        assert!(!backing.unflushed());
        backing.write(0, &[2; 512], true).expect("FUA write");
        backing.write(512, &[3; 512], false).expect("write");
        assert!(
            backing.unflushed(),
            "a later plain write needs a sync again"
        );
    }

    // Proves a revoked backing refuses all further I/O.
    #[test]
    fn revoked_backing_refuses_io() {
        let file = backing_file(4096);
        let flag = Arc::new(AtomicBool::new(false));
        let export = Export {
            path: file.path().to_owned(),
            offset_bytes: 0,
            size_bytes: 4096,
            read_only: false,
            writable_bytes: None,
        };
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let backing = Backing::open(&export, Arc::clone(&flag), limit).expect("open");
        flag.store(true, Ordering::SeqCst);
        assert!(backing.read(0, 1, Buffer::default()).is_err());
        assert!(backing.write(0, &[1], false).is_err());
        assert!(backing.zero(0, 1, true, false).is_err());
        assert_eq!(
            backing
                .read(0, 0, Buffer::default())
                .map_err(|e| e.kind())
                .err(),
            Some(io::ErrorKind::NotConnected)
        );
    }

    // Proves the write limit refuses writes and zeroing that reach past it,
    // as EPERM, while reads, flushes and changes below it go on, and that
    // moving the limit binds the open backing at once.
    #[test]
    fn write_limit_keeps_the_data_behind_it() {
        let file = backing_file(3 * 4096);
        let export = Export {
            path: file.path().to_owned(),
            offset_bytes: 4096,
            size_bytes: 8192,
            read_only: false,
            writable_bytes: Some(4096),
        };
        let limit = Arc::new(AtomicU64::new(4096));
        let backing = Backing::open(
            &export,
            Arc::new(AtomicBool::new(false)),
            Arc::clone(&limit),
        )
        .expect("open");
        let base = 4096;
        backing
            .write(base, &[1; 4096], false)
            .expect("below the limit");
        backing
            .zero(base + 512, 512, true, false)
            .expect("zero below it");
        for refused in [
            backing.write(base + 4095, &[1; 2], false),
            backing.write(base + 4096, &[1; 512], true),
            backing.zero(base, 4097, true, false),
            backing.zero(base + 8191, 1, false, false),
        ] {
            let error = refused.expect_err("past the limit");
            assert_eq!(
                crate::backing::nbd_error_from_io(&error),
                crate::proto::EPERM
            );
        }
        assert_eq!(
            backing
                .read(base + 4096, 4096, Buffer::default())
                .expect("read")
                .len(),
            4096
        );
        backing.flush().expect("flush");
        // The data behind the limit is untouched.
        let mut tail = vec![0u8; 4096];
        file.as_file()
            .read_exact_at(&mut tail, 2 * 4096)
            .expect("read back");
        assert!(tail.iter().all(|b| *b == 0xee));
        limit.store(u64::MAX, Ordering::SeqCst);
        backing
            .write(base + 4096, &[2; 512], false)
            .expect("limit lifted");
        limit.store(0, Ordering::SeqCst);
        assert!(backing.write(base, &[3; 512], false).is_err());
    }
}
