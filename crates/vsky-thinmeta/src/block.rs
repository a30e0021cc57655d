//! Where the metadata blocks come from.
//!
//! dm-thin reads and writes its metadata device in blocks of 4 KiB
//! (`THIN_METADATA_BLOCK_SIZE`, 8 sectors), and every structure this crate
//! reads fills exactly one block. A [`BlockSource`] is anything that can
//! hand over block *N*: the metadata device opened as a file
//! ([`ReadSeekSource`] over `std::fs::File`), or an image in memory (`&[u8]`,
//! `Vec<u8>`).
//!
//! A source is asked only for blocks below its [`BlockSource::nr_blocks`];
//! the reader checks every block number it follows against that (and
//! against the size the superblock records) before it asks.

use std::io::{self, Read, Seek, SeekFrom};

/// The size of a metadata block, in bytes.
pub const BLOCK_SIZE: usize = 4096;

/// One metadata block.
pub type Block = [u8; BLOCK_SIZE];

/// Something that reads metadata blocks by index.
pub trait BlockSource {
    /// How many whole blocks the source holds (a partial block at the end
    /// does not count).
    fn nr_blocks(&self) -> u64;

    /// Reads block `index`, which is below [`Self::nr_blocks`], into `buf`.
    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()>;
}

impl<T: BlockSource + ?Sized> BlockSource for &mut T {
    fn nr_blocks(&self) -> u64 {
        (**self).nr_blocks()
    }

    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()> {
        (**self).read_block(index, buf)
    }
}

impl BlockSource for &[u8] {
    fn nr_blocks(&self) -> u64 {
        (self.len() / BLOCK_SIZE) as u64
    }

    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()> {
        let bytes = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(BLOCK_SIZE))
            .and_then(|start| self.get(start..start.checked_add(BLOCK_SIZE)?))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("block {index} is past the end of the image"),
                )
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl BlockSource for Vec<u8> {
    fn nr_blocks(&self) -> u64 {
        self.as_slice().nr_blocks()
    }

    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()> {
        self.as_slice().read_block(index, buf)
    }
}

/// A [`BlockSource`] over anything that reads and seeks: a metadata device
/// or an image file opened with `std::fs::File::open`, a `Cursor`.
#[derive(Debug)]
pub struct ReadSeekSource<R> {
    inner: R,
    nr_blocks: u64,
}

impl<R: Read + Seek> ReadSeekSource<R> {
    /// Wraps `inner`, whose size is read once, now (seeking to its end).
    pub fn new(mut inner: R) -> io::Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        Ok(ReadSeekSource {
            inner,
            nr_blocks: len / BLOCK_SIZE as u64,
        })
    }

    /// Gives the wrapped reader back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read + Seek> BlockSource for ReadSeekSource<R> {
    fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()> {
        let offset = byte_offset(index)?;
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.read_exact(buf)
    }
}

/// A [`BlockSource`] over a metadata device opened with `O_DIRECT`, as a
/// pool's metadata device must be read: dm-thin writes its metadata through
/// dm-bufio, past the device's page cache, so a buffered read may return a
/// block cached before the pool's last commit (an older transaction's
/// tree). Each block is read into a 4 KiB-aligned buffer, as `O_DIRECT`
/// requires; opening the file with the flag is the caller's (this crate
/// has no `libc`): `OpenOptions::new().read(true).custom_flags(O_DIRECT)`.
#[derive(Debug)]
pub struct DirectFileSource {
    file: std::fs::File,
    nr_blocks: u64,
    /// Two blocks, so that one aligned block always lies inside.
    buf: Vec<u8>,
}

impl DirectFileSource {
    /// Wraps `file`, whose size is read once, now (seeking to its end,
    /// which also works for block devices).
    pub fn new(mut file: std::fs::File) -> io::Result<Self> {
        let len = file.seek(SeekFrom::End(0))?;
        Ok(DirectFileSource {
            file,
            nr_blocks: len / BLOCK_SIZE as u64,
            buf: vec![0u8; 2 * BLOCK_SIZE],
        })
    }

    /// Gives the file back.
    pub fn into_inner(self) -> std::fs::File {
        self.file
    }
}

impl BlockSource for DirectFileSource {
    fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let offset = byte_offset(index)?;
        let skew = self.buf.as_ptr() as usize % BLOCK_SIZE;
        let start = (BLOCK_SIZE - skew) % BLOCK_SIZE;
        let aligned = &mut self.buf[start..start + BLOCK_SIZE];
        self.file.read_exact_at(aligned, offset)?;
        buf.copy_from_slice(aligned);
        Ok(())
    }
}

/// Where block `index` starts on a device, or an error past any device.
fn byte_offset(index: u64) -> io::Result<u64> {
    index.checked_mul(BLOCK_SIZE as u64).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("block {index} has no byte offset"),
        )
    })
}

/// The little-endian `u32` at byte `at` of `bytes`. Callers pass offsets
/// they have checked; an offset past the end reads as 0 rather than panic.
pub(crate) fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    match at.checked_add(4).and_then(|end| bytes.get(at..end)) {
        Some(slice) => word.copy_from_slice(slice),
        None => debug_assert!(false, "le32 at {at} past {} bytes", bytes.len()),
    }
    u32::from_le_bytes(word)
}

/// The little-endian `u64` at byte `at` of `bytes` (see [`le32`]).
pub(crate) fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    match at.checked_add(8).and_then(|end| bytes.get(at..end)) {
        Some(slice) => word.copy_from_slice(slice),
        None => debug_assert!(false, "le64 at {at} past {} bytes", bytes.len()),
    }
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(blocks: usize, tail: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; blocks * BLOCK_SIZE + tail];
        for (i, chunk) in bytes.chunks_mut(BLOCK_SIZE).enumerate() {
            chunk.fill(i as u8 + 1);
        }
        bytes
    }

    #[test]
    fn a_slice_holds_its_whole_blocks_only() {
        let bytes = image(3, 100);
        let mut source: &[u8] = &bytes;
        assert_eq!(source.nr_blocks(), 3);
        let mut buf = [0u8; BLOCK_SIZE];
        source.read_block(2, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 3));
        let err = source.read_block(3, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(source.read_block(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn a_reader_is_sized_once_and_read_by_offset() {
        let bytes = image(4, 7);
        let mut source = ReadSeekSource::new(io::Cursor::new(bytes.clone())).unwrap();
        assert_eq!(source.nr_blocks(), 4);
        let mut buf = [0u8; BLOCK_SIZE];
        source.read_block(1, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 2));
        assert!(source.read_block(4, &mut buf).is_err());
        assert!(source.read_block(u64::MAX, &mut buf).is_err());
        let mut vec = bytes;
        fn count<S: BlockSource>(source: S) -> u64 {
            source.nr_blocks()
        }
        assert_eq!(count(&mut vec), 4);
        vec.read_block(3, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 4));
    }

    /// Blocks come through the aligned buffer whole and in place (the file
    /// here is not opened with O_DIRECT: the test's filesystem may not
    /// support it; the alignment is what matters).
    #[test]
    fn a_direct_source_reads_blocks_through_an_aligned_buffer() {
        let path =
            std::env::temp_dir().join(format!("vsky-thinmeta-direct-{}", std::process::id()));
        std::fs::write(&path, image(3, 10)).unwrap();
        let mut source = DirectFileSource::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(source.nr_blocks(), 3);
        let mut buf = [0u8; BLOCK_SIZE];
        for i in [2, 0, 1] {
            source.read_block(i, &mut buf).unwrap();
            assert!(buf.iter().all(|b| u64::from(*b) == i + 1));
        }
        assert!(source.read_block(3, &mut buf).is_err());
        assert!(source.read_block(u64::MAX, &mut buf).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn little_endian_words() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le32(&bytes, 1), 0x0504_0302);
        assert_eq!(le64(&bytes, 1), 0x0908_0706_0504_0302);
    }
}
