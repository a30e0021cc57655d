//! Wiping freed chunks, so a new volume never reads an old volume's data.
//!
//! Files get a hole punched (reads return zeros, space is returned to the
//! filesystem); block devices get BLKZEROOUT, which the kernel turns into
//! the cheapest zeroing the device supports. Either way the range reads back
//! as zeros before the agent reports the chunk wiped.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use vsky_api::types::{WipeSpec, WipedChunk};

/// The wipes this agent has done that the manager still lists, so that
/// each *release* of a freed chunk is wiped once (the manager keeps
/// listing it until the report arrives).
///
/// They are keyed by chunk and release, never by chunk alone: a chunk can
/// be freed, wiped, reused and freed again before this agent fetches a
/// desired state without it, and it then comes back under a new release
/// that must be wiped again (keyed by chunk, it was skipped for good and
/// stayed releasing until the agent restarted).
#[derive(Debug, Default)]
pub struct Wipes {
    done: BTreeSet<WipedChunk>,
}

impl Wipes {
    /// Forgets the wipes the manager no longer lists (their reports
    /// arrived), and returns the listed ones not done yet.
    pub fn to_do<'a>(&mut self, listed: &'a [WipeSpec]) -> Vec<&'a WipeSpec> {
        let keys: BTreeSet<WipedChunk> = listed.iter().map(report).collect();
        self.done.retain(|k| keys.contains(k));
        listed
            .iter()
            .filter(|w| !self.done.contains(&report(w)))
            .collect()
    }

    /// Records a wipe as done; returns its report for the heartbeat.
    pub fn done(&mut self, wipe: &WipeSpec) -> WipedChunk {
        let r = report(wipe);
        self.done.insert(r);
        r
    }
}

/// What the agent reports once it has wiped `wipe`.
pub fn report(wipe: &WipeSpec) -> WipedChunk {
    WipedChunk {
        chunk: wipe.chunk,
        release: wipe.release,
    }
}

/// Zeroes `[offset, offset + len)` of a disk and makes it durable.
pub fn zero_range(path: &Path, offset: u64, len: u64) -> std::io::Result<()> {
    let file = File::options().read(true).write(true).open(path)?;
    let is_block = file.metadata()?.file_type().is_block_device();
    let done = if is_block {
        vsky_kernel::block::zero_out(&file, offset, len).is_ok()
    } else {
        let (off, l) = (offset as libc::off_t, len as libc::off_t);
        // SAFETY: fallocate takes no pointers; the fd is open (owned by
        // `file`) for the whole call.
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

    use vsky_api::types::ChunkId;

    use super::*;

    fn wipe(index: u32, release: u64) -> WipeSpec {
        WipeSpec {
            chunk: ChunkId { disk_id: 7, index },
            release,
            disk_path: "/dev/vdb".into(),
            offset_bytes: u64::from(index) << 22,
            size_bytes: 1 << 22,
        }
    }

    /// A chunk wiped for one release, freed again under another before
    /// the agent saw a desired state without it, is wiped again.
    #[test]
    fn a_chunk_freed_again_is_wiped_again() {
        let mut wipes = Wipes::default();
        let first = [wipe(3, 10), wipe(4, 10)];
        assert_eq!(wipes.to_do(&first).len(), 2);
        wipes.done(&first[0]);
        wipes.done(&first[1]);
        // Listed again before the manager had the reports: nothing to do.
        assert!(wipes.to_do(&first).is_empty());
        // Chunk 3 was freed, reused and freed again (release 12); chunk 4
        // is still waiting for the manager.
        let second = [wipe(3, 12), wipe(4, 10)];
        let to_do = wipes.to_do(&second);
        assert_eq!(to_do, vec![&second[0]]);
        assert_eq!(
            wipes.done(to_do[0]),
            WipedChunk {
                chunk: ChunkId {
                    disk_id: 7,
                    index: 3
                },
                release: 12
            }
        );
        assert!(wipes.to_do(&second).is_empty());
        // Once unlisted, a release is forgotten.
        assert!(wipes.to_do(&[]).is_empty());
        assert_eq!(wipes.done.len(), 0);
    }

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
