//! Data written to and read back from volumes. Writes and reads use
//! O_DIRECT, so the bytes read come from the legs, not the page cache; a
//! read-back is compared byte for byte with what was written.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};

pub const MIB: usize = 1 << 20;
/// Small requests: many round trips, so a write is still running when a
/// server dies under it.
pub const SMALL_BLOCK: usize = 64 << 10;
/// O_DIRECT needs buffers aligned to the logical block size; a page covers
/// every device here.
const ALIGN: usize = 4096;

/// `/dev/mapper/vsky-<volume>`.
pub fn device(volume: &str) -> PathBuf {
    PathBuf::from(format!("/dev/mapper/vsky-{volume}"))
}

/// `mib` MiB of random bytes (a new pattern each call).
pub fn random(mib: usize) -> Result<Vec<u8>> {
    let mut data = vec![0u8; mib * MIB];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .context("read /dev/urandom")?;
    Ok(data)
}

/// A heap buffer whose usable part starts on an `ALIGN` boundary.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Aligned { buf, start, len }
    }
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

pub fn open_direct(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT", path.display()))
}

/// Writes `data` at byte `offset` of `path` with O_DIRECT, `block` bytes per
/// request.
pub fn write_direct(path: &Path, offset: u64, data: &[u8], block: usize) -> Result<()> {
    let f = open_direct(path, true)?;
    let mut buf = Aligned::new(block);
    for (i, piece) in data.chunks(block).enumerate() {
        let at = offset + (i * block) as u64;
        buf.bytes()[..piece.len()].copy_from_slice(piece);
        f.write_all_at(&buf.bytes()[..piece.len()], at)
            .with_context(|| format!("O_DIRECT write to {} at byte {at}", path.display()))?;
    }
    Ok(())
}

/// Reads `len` bytes from byte `offset` of `path` with O_DIRECT.
pub fn read_direct(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = open_direct(path, false)?;
    let mut out = Vec::with_capacity(len);
    let mut buf = Aligned::new(MIB);
    while out.len() < len {
        let n = (len - out.len()).min(MIB);
        let at = offset + out.len() as u64;
        f.read_exact_at(&mut buf.bytes()[..n], at)
            .with_context(|| format!("O_DIRECT read of {} at byte {at}", path.display()))?;
        out.extend_from_slice(&buf.bytes()[..n]);
    }
    Ok(out)
}

/// `ops` O_DIRECT requests of `block` bytes at pseudo-random aligned
/// offsets in `[0, region)` of `path` (a fixed sequence per `seed`), reads
/// or writes of a fixed pattern, on one open file; their rate per second.
pub fn random_io(
    path: &Path,
    region: u64,
    block: usize,
    ops: usize,
    write: bool,
    seed: u64,
) -> Result<f64> {
    let f = open_direct(path, write)?;
    let mut buf = Aligned::new(block);
    buf.bytes().fill(0x5a);
    let slots = (region / block as u64).max(1);
    let mut x = seed | 1;
    let start = std::time::Instant::now();
    for _ in 0..ops {
        // xorshift: cheap, deterministic, spread over the region.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % slots) * block as u64;
        if write {
            f.write_all_at(buf.bytes(), at)
        } else {
            f.read_exact_at(buf.bytes(), at)
        }
        .with_context(|| format!("O_DIRECT I/O of {} at byte {at}", path.display()))?;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64().max(1e-3))
}

/// Fails unless `path` holds `want` at byte `offset` (read with O_DIRECT);
/// `what` names the check in the error.
pub fn expect_same(path: &Path, offset: u64, want: &[u8], what: &str) -> Result<()> {
    let got = read_direct(path, offset, want.len())?;
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        bail!(
            "{what}: {} differs from what was written (first at byte {} of {} MiB)",
            path.display(),
            offset + i as u64,
            want.len() / MIB
        );
    }
    Ok(())
}

/// A write running in the background, as a VM's I/O would: `data` written
/// with O_DIRECT in small requests.
pub struct Writer {
    handle: JoinHandle<Result<()>>,
}

impl Writer {
    pub fn start(path: PathBuf, data: Arc<Vec<u8>>) -> Writer {
        let handle = std::thread::spawn(move || write_direct(&path, 0, &data, SMALL_BLOCK));
        Writer { handle }
    }

    pub fn running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Waits for the write to end; fails if it saw an error.
    pub fn finish(self) -> Result<()> {
        match self.handle.join() {
            Ok(r) => r.context("the writer saw an I/O error"),
            Err(_) => bail!("the writer thread panicked"),
        }
    }
}

/// The sha256 of `data` in hex, by busybox's `sha256sum` (shown to the
/// reader; the checks themselves compare bytes).
pub fn sha256(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("run sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum stdin")?;
    // Written from a thread: sha256sum's output cannot fill its pipe, but
    // the input may be larger than a pipe buffer.
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("sha256sum")?;
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("sha256sum feeder panicked"))?
        .context("write to sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Rewrites `data` over and over with O_DIRECT until stopped, as a busy
/// VM would; counts the rounds and stops at the first error.
pub struct Rewriter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: JoinHandle<Result<u64>>,
}

impl Rewriter {
    pub fn start(path: PathBuf, data: Arc<Vec<u8>>) -> Rewriter {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop_seen.load(Ordering::SeqCst) {
                write_direct(&path, 0, &data, SMALL_BLOCK).with_context(|| {
                    format!("the writer saw an I/O error in round {}", rounds + 1)
                })?;
                rounds += 1;
            }
            Ok(rounds)
        });
        Rewriter { stop, handle }
    }

    pub fn running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Stops after the current round; the rounds completed, or the error.
    pub fn finish(self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the writer thread panicked"),
        }
    }
}

/// The first `len` bytes of a leg's data read from its disk image, behind
/// the mirror: a chunk of `chunk_bytes` is the leg's metadata area, then
/// `data_bytes` of data (`VolumeDetail::data_bytes_per_mirrored_disk`).
pub fn leg_data(
    leg: &crate::api::LegAt,
    chunk_bytes: u64,
    data_bytes: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let at = leg.at.offset_bytes + chunk_bytes.saturating_sub(data_bytes);
    read_direct(Path::new(&leg.at.disk_path), at, len).with_context(|| {
        format!(
            "read leg {}/{} from {}",
            leg.mirrored_disk, leg.leg, leg.at.disk_path
        )
    })
}

/// Every leg of each mirrored disk named in `want` holds exactly its bytes
/// at the start of its data (chunks of `chunk_bytes`); an error names the
/// first leg that does not.
pub fn legs_hold(
    legs: &[crate::api::LegAt],
    chunk_bytes: u64,
    data_bytes: u64,
    want: &[(usize, &[u8])],
) -> Result<()> {
    for (mirrored_disk, bytes) in want {
        let of_disk: Vec<_> = legs
            .iter()
            .filter(|l| l.mirrored_disk == *mirrored_disk)
            .collect();
        anyhow::ensure!(
            of_disk.len() >= 2,
            "mirrored disk {mirrored_disk} has {} legs: {}",
            of_disk.len(),
            crate::api::describe(legs)
        );
        for leg in of_disk {
            if leg_data(leg, chunk_bytes, data_bytes, bytes.len())? != *bytes {
                anyhow::bail!(
                    "leg {}/{} on {} ({}) does not hold what was acknowledged (legs: {})",
                    leg.mirrored_disk,
                    leg.leg,
                    leg.at.server,
                    leg.at.disk_path,
                    crate::api::describe(legs)
                );
            }
        }
    }
    Ok(())
}
