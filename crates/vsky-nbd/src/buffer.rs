//! A pool of reusable payload buffers shared by every connection of a server,
//! and the [`Buffer`] it hands out, whose data is placed to suit the
//! kernel's copies.
//!
//! Profiling large sequential reads showed the server spending more CPU on
//! page faults (fresh allocations of 256 KiB and up come straight from mmap,
//! and glibc hands them back with madvise on free) than on copying data.
//! Recycling READ and WRITE buffers removes that cost. Buffers are kept in
//! power-of-two size classes, so a recycled buffer always fits the next
//! request of its class, and the pool retains at most a configured number of
//! bytes, so an idle server does not sit on its peak memory.
//!
//! Where payload data sits in memory matters on the AMD EPYC machines we
//! measure on: the kernel's copies (`rep movsb`) run about 5x slower when
//! the destination lies 16 bytes past the source modulo the page. glibc puts
//! large allocations 16 bytes past a page boundary, so every `pread` from the
//! page cache (page-aligned source) into such a buffer hit it (1.1 GiB/s
//! instead of 5.6 GiB/s for 1 MiB); a page-aligned buffer moves the problem
//! to `sendmsg`, whose data follows the 16-byte reply header in the socket's
//! pages. Data starting 64 bytes past a page boundary avoids both, and
//! halved the CPU per GiB of 1 MiB READs (see `docs/benchmarks.md`, NBD
//! section).

use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use vsky_sync::LockExt;

/// Smallest class: one page. Smaller requests still get a page-sized buffer.
const MIN_CLASS: u32 = 12;
/// Largest class: the protocol's maximum payload (32 MiB = 2^25).
const MAX_CLASS: u32 = 25;
const CLASSES: usize = (MAX_CLASS - MIN_CLASS + 1) as usize;
/// Payload data starts `DATA_OFFSET` bytes past an `ALIGN` boundary (see
/// the module docs for why neither 0 nor glibc's 16 will do).
const ALIGN: usize = 4096;
const DATA_OFFSET: usize = 64;

/// A growable byte buffer whose data starts `DATA_OFFSET` bytes past a page
/// boundary.
///
/// Safe code over a `Vec`: the vector is allocated `ALIGN - 1 + DATA_OFFSET`
/// bytes larger and its first `start` bytes are (initialised, never
/// exposed) padding up to that point. The vector is never grown in place, so the data does not
/// move; [`Buffer::reserve`] moves it to a new, well-placed buffer instead.
#[derive(Default)]
pub(crate) struct Buffer {
    bytes: Vec<u8>,
    start: usize,
}

impl Buffer {
    /// An empty buffer with room for `capacity` bytes, placed as above.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut bytes: Vec<u8> =
            Vec::with_capacity(capacity.saturating_add(ALIGN - 1 + DATA_OFFSET));
        // align_offset never fails for u8 pointers; the min only documents
        // that the padding stays below ALIGN + DATA_OFFSET.
        let start = bytes.as_ptr().align_offset(ALIGN).min(ALIGN - 1) + DATA_OFFSET;
        bytes.resize(start, 0);
        Self { bytes, start }
    }

    pub fn capacity(&self) -> usize {
        self.bytes.capacity() - self.start
    }

    /// Bytes allocated, padding included: what the pool accounts for.
    fn allocated_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    pub fn clear(&mut self) {
        self.bytes.truncate(self.start);
    }

    /// Makes room for `additional` more bytes, keeping the data's placement.
    pub fn reserve(&mut self, additional: usize) {
        if self.capacity() - self.len() >= additional {
            return;
        }
        let mut grown = Self::with_capacity(self.len().saturating_add(additional));
        grown.bytes.extend_from_slice(self);
        *self = grown;
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        self.bytes.extend_from_slice(data);
    }

    /// The uninitialised room after the data, to read into.
    pub fn spare_capacity_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        self.bytes.spare_capacity_mut()
    }

    /// Sets the data length.
    ///
    /// # Safety
    ///
    /// As for `Vec::set_len`: `length` is at most [`Buffer::capacity`], and
    /// the first `length` bytes of the data are initialised.
    pub unsafe fn set_len(&mut self, length: usize) {
        // SAFETY: forwarded to the caller; the padding before `start` is
        // always initialised.
        unsafe { self.bytes.set_len(self.start + length) };
    }

    fn is_well_placed(&self) -> bool {
        self.bytes.as_ptr().wrapping_add(self.start) as usize % ALIGN == DATA_OFFSET
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..]
    }
}

/// Wraps data where it is (not necessarily well placed): for tests and callers
/// that already hold a vector.
impl From<Vec<u8>> for Buffer {
    fn from(bytes: Vec<u8>) -> Self {
        Self { bytes, start: 0 }
    }
}

impl std::fmt::Debug for Buffer {
    // Payloads are large and meaningless in logs: show their size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.len()).finish()
    }
}

pub(crate) struct BufferPool {
    inner: Mutex<Classes>,
    retained_bytes_max: usize,
}

struct Classes {
    free: [Vec<Buffer>; CLASSES],
    retained_bytes: usize,
}

impl BufferPool {
    pub fn new(retained_bytes_max: usize) -> Self {
        Self {
            inner: Mutex::new(Classes {
                free: std::array::from_fn(|_| Vec::new()),
                retained_bytes: 0,
            }),
            retained_bytes_max,
        }
    }

    /// An empty buffer with capacity for at least `length` bytes.
    pub fn take(&self, length: usize) -> Buffer {
        let Some(class) = class_of(length) else {
            return Buffer::with_capacity(length);
        };
        let recycled = {
            let mut inner = self.lock();
            let buffer = inner.free[class].pop();
            if let Some(buffer) = &buffer {
                inner.retained_bytes -= buffer.allocated_bytes();
            }
            buffer
        };
        recycled.unwrap_or_else(|| Buffer::with_capacity(1 << (class as u32 + MIN_CLASS)))
    }

    /// Returns a buffer for reuse, filed under the largest class it can
    /// serve; dropped if the pool is full, or the buffer is misplaced or
    /// outside the classes.
    pub fn give(&self, mut buffer: Buffer) {
        let Some(class) = floor_class_of(buffer.capacity()) else {
            return;
        };
        if !buffer.is_well_placed() {
            return;
        }
        buffer.clear();
        let allocated = buffer.allocated_bytes();
        let mut inner = self.lock();
        if inner.retained_bytes + allocated <= self.retained_bytes_max {
            inner.retained_bytes += allocated;
            inner.free[class].push(buffer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Classes> {
        // The critical sections cannot panic half-way; recover the pool.
        self.inner.lock_unpoisoned()
    }

    #[cfg(test)]
    fn retained_bytes(&self) -> usize {
        self.lock().retained_bytes
    }
}

/// Index of the smallest class holding `length` bytes; `None` above the
/// largest class.
fn class_of(length: usize) -> Option<usize> {
    let bits = length
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS);
    (bits <= MAX_CLASS).then(|| (bits - MIN_CLASS) as usize)
}

/// Index of the largest class not above `capacity`: the class a buffer of
/// that capacity can always serve. `None` below the smallest or above the
/// largest class.
fn floor_class_of(capacity: usize) -> Option<usize> {
    let bits = capacity.checked_ilog2()?;
    (MIN_CLASS..=MAX_CLASS)
        .contains(&bits)
        .then(|| (bits - MIN_CLASS) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves buffers are reused by class, always fit the request, place
    // their data as intended, and the retained total never exceeds the cap.
    #[test]
    fn buffers_are_recycled_well_placed_within_the_cap() {
        let pool = BufferPool::new(2 << 20);
        let first = pool.take(300_000);
        assert!(first.capacity() >= 300_000);
        assert_eq!(first.as_ptr() as usize % ALIGN, DATA_OFFSET);
        let address = first.as_ptr();
        pool.give(first);
        assert!(pool.retained_bytes() >= 512 * 1024);
        let again = pool.take(262_145);
        assert_eq!(again.as_ptr(), address, "same class reuses the buffer");
        assert!(again.is_empty());
        let small = pool.take(1);
        assert!(small.capacity() >= 4096);
        assert_eq!(small.as_ptr() as usize % ALIGN, DATA_OFFSET);
        // Cap: a few 512 KiB buffers fit 2 MiB, never more.
        for _ in 0..6 {
            pool.give(Buffer::with_capacity(512 * 1024));
        }
        assert!(pool.retained_bytes() <= 2 << 20);
        // Misplaced and oversized buffers are not kept.
        let before = pool.retained_bytes();
        let mut misplaced = Buffer::from(vec![0u8; 8192]);
        if misplaced.is_well_placed() {
            misplaced = Buffer::from(Vec::with_capacity(0));
        }
        pool.give(misplaced);
        pool.give(Buffer::with_capacity(64 << 20));
        assert_eq!(pool.retained_bytes(), before);
        assert!(pool.take(64 << 20).capacity() >= 64 << 20);
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_of(4097), Some(1));
        assert_eq!(class_of(32 << 20), Some(CLASSES - 1));
        assert_eq!(class_of((32 << 20) + 1), None);
        assert_eq!(floor_class_of(4095), None);
        assert_eq!(floor_class_of(4096 + 4095), Some(0));
        assert_eq!(floor_class_of(8192), Some(1));
        assert_eq!(floor_class_of(64 << 20), None);
    }

    // Proves a buffer keeps its data placed and intact through growth,
    // and that set_len exposes exactly what was written into spare room.
    #[test]
    fn buffer_grows_and_stays_well_placed() {
        let mut buffer = Buffer::with_capacity(10);
        buffer.extend_from_slice(b"hello");
        buffer.extend_from_slice(&[7u8; 10_000]);
        assert_eq!(buffer.len(), 10_005);
        assert_eq!(&buffer[..5], b"hello");
        assert!(buffer[5..].iter().all(|&b| b == 7));
        assert_eq!(buffer.as_ptr() as usize % ALIGN, DATA_OFFSET);
        buffer.clear();
        buffer.reserve(3);
        let spare = buffer.spare_capacity_mut();
        for (i, byte) in spare[..3].iter_mut().enumerate() {
            byte.write(i as u8);
        }
        // SAFETY: three bytes were just initialised.
        unsafe { buffer.set_len(3) };
        assert_eq!(&buffer[..], &[0, 1, 2]);
        assert_eq!(format!("{buffer:?}"), "Buffer { len: 3 }");
    }
}
