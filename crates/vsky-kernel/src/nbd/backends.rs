//! Which NBD device imports which backend, on kernels that do not keep the
//! backend identifier (before Linux 5.14, e.g. XCP-ng's 4.19 dom0; A6 of
//! docs/kernel-floor.md).
//!
//! There the kernel drops `NBD_ATTR_BACKEND_IDENTIFIER` without an error and
//! has no `/sys/block/nbdN/backend`, so the head would never find its
//! imports again: every reconcile would connect a new device for the same
//! chunk. Instead the agent keeps the map itself, in a [`BackendFile`]:
//! written after every CONNECT, the entry dropped after DISCONNECT, and
//! checked against the kernel before use ([`verified`]): the device must be
//! connected (`NBD_CMD_STATUS`) and have the size recorded at CONNECT. The
//! file belongs on a tmpfs (`/run`): the reboot that drops every NBD device
//! empties it too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use vsky_sync::LockExt;

use super::{NbdError, NbdIndex, Result, validate_backend_identifier};

/// Where the agent keeps the map unless told otherwise.
pub const DEFAULT_BACKEND_FILE: &str = "/run/vsky/agent/nbd-backends";

/// One connected device as recorded at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    pub index: NbdIndex,
    /// The size given to CONNECT; the device must still have it.
    pub size_bytes: u64,
    pub backend: String,
}

/// The agent's own index ↔ backend map: one line per device,
/// `<index> <size_bytes> <backend>` (backend identifiers hold no spaces).
/// Replaced atomically (a temporary file renamed over it), so a crash
/// leaves the old or the new map, never a torn one. Every read-modify-write
/// holds [`BackendFile::lock`], so the head's threads that import legs at
/// the same time each add their entry (one process writes the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFile {
    path: PathBuf,
}

impl BackendFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BackendFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Held across every load-change-store of the file in this process:
    /// two connects recording at once would otherwise each store the map
    /// without the other's entry.
    pub(super) fn lock() -> MutexGuard<'static, ()> {
        static FILE: Mutex<()> = Mutex::new(());
        FILE.lock_unpoisoned()
    }

    fn error(&self, reason: String) -> NbdError {
        NbdError::BackendFile {
            path: self.path.clone(),
            reason,
        }
    }

    /// Every recorded entry; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<BackendEntry>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.error(format!("cannot read it: {e}"))),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, line)| {
                parse_entry(line).ok_or_else(|| {
                    self.error(format!(
                        "line {} is not `<index> <size_bytes> <backend>`: {line:?}; the agent \
                         writes this file alone: restore it, or remove it after disconnecting \
                         the head's NBD devices",
                        n + 1
                    ))
                })
            })
            .collect()
    }

    /// Replaces the whole map with `entries`.
    pub(super) fn store(&self, entries: &[BackendEntry]) -> Result<()> {
        let io = |what: &str, e: std::io::Error| self.error(format!("cannot {what}: {e}"));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create its directory", e))?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create the temporary file", e))?;
        for e in entries {
            writeln!(f, "{} {} {}", e.index.0, e.size_bytes, e.backend)
                .map_err(|e| io("write the temporary file", e))?;
        }
        f.sync_all().map_err(|e| io("sync the temporary file", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replace it", e))
    }

    /// Records a device just connected. An older entry for the same index
    /// (a device disconnected behind our back, then reused) or the same
    /// backend (an import that is gone) is replaced.
    pub fn record(&self, entry: BackendEntry) -> Result<()> {
        validate_backend_identifier(&entry.backend)?;
        let _file = Self::lock();
        let mut entries = self.load()?;
        entries.retain(|e| e.index != entry.index && e.backend != entry.backend);
        entries.push(entry);
        entries.sort_by_key(|e| e.index);
        self.store(&entries)
    }

    /// Drops the entry of a device just disconnected.
    pub fn forget(&self, index: NbdIndex) -> Result<()> {
        let _file = Self::lock();
        let entries = self.load()?;
        let kept: Vec<BackendEntry> = entries
            .iter()
            .filter(|e| e.index != index)
            .cloned()
            .collect();
        if kept.len() == entries.len() {
            return Ok(());
        }
        self.store(&kept)
    }
}

fn parse_entry(line: &str) -> Option<BackendEntry> {
    let mut t = line.split_whitespace();
    let index = NbdIndex(t.next()?.parse().ok()?);
    let size_bytes = t.next()?.parse().ok()?;
    let backend = t.next()?.to_string();
    if t.next().is_some() || validate_backend_identifier(&backend).is_err() {
        return None;
    }
    Some(BackendEntry {
        index,
        size_bytes,
        backend,
    })
}

/// The entries that still describe the kernel: the device is connected and
/// has the size recorded at CONNECT (`size_of` gives its size in bytes,
/// `None` if unknown). Anything else (disconnected by someone else, or
/// reused for another export) is not ours any more and must not be
/// adopted or reconfigured. If two entries claim one device, neither is
/// trusted.
pub fn verified(
    entries: &[BackendEntry],
    connected: &[NbdIndex],
    size_of: impl Fn(NbdIndex) -> Option<u64>,
) -> Vec<BackendEntry> {
    entries
        .iter()
        .filter(|e| {
            connected.contains(&e.index)
                && size_of(e.index) == Some(e.size_bytes)
                && entries.iter().filter(|o| o.index == e.index).count() == 1
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u32, size_bytes: u64, backend: &str) -> BackendEntry {
        BackendEntry {
            index: NbdIndex(index),
            size_bytes,
            backend: backend.to_string(),
        }
    }

    fn temp_file(name: &str) -> BackendFile {
        let dir =
            std::env::temp_dir().join(format!("vsky-nbd-backends-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        BackendFile::new(dir.join("sub").join("nbd-backends"))
    }

    /// Recorded after CONNECT, dropped after DISCONNECT; a reused index or
    /// a re-imported backend replaces the old entry; nothing is left in a
    /// temporary file.
    #[test]
    fn the_file_follows_connects_and_disconnects() {
        let f = temp_file("follow");
        assert_eq!(f.load().unwrap(), vec![]);
        f.record(entry(3, 1 << 20, "vsky:v:0:1:2")).unwrap();
        f.record(entry(1, 2 << 20, "vsky:v:0:1:3")).unwrap();
        assert_eq!(
            f.load().unwrap(),
            vec![
                entry(1, 2 << 20, "vsky:v:0:1:3"),
                entry(3, 1 << 20, "vsky:v:0:1:2")
            ]
        );
        // nbd3 reused for another backend, and vsky:v:0:1:3 imported again
        // on nbd4.
        f.record(entry(3, 1 << 20, "vsky:w:0:5:5")).unwrap();
        f.record(entry(4, 2 << 20, "vsky:v:0:1:3")).unwrap();
        assert_eq!(
            f.load().unwrap(),
            vec![
                entry(3, 1 << 20, "vsky:w:0:5:5"),
                entry(4, 2 << 20, "vsky:v:0:1:3")
            ]
        );
        f.forget(NbdIndex(3)).unwrap();
        f.forget(NbdIndex(9)).unwrap();
        assert_eq!(f.load().unwrap(), vec![entry(4, 2 << 20, "vsky:v:0:1:3")]);
        let dir = f.path().parent().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("nbd-backends")]);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// A damaged file is an error naming the file and the line, never a
    /// panic or a silent loss of entries; bad identifiers are refused.
    #[test]
    fn a_damaged_file_is_an_error() {
        let f = temp_file("damaged");
        std::fs::create_dir_all(f.path().parent().unwrap()).unwrap();
        for bad in [
            "3 1048576",
            "x 1 vsky:a",
            "3 -1 vsky:a",
            "3 1 vsky:a extra",
            "3 1 \u{7}",
        ] {
            std::fs::write(f.path(), format!("1 4096 vsky:ok\n{bad}\n")).unwrap();
            let e = f.load().unwrap_err().to_string();
            assert!(
                e.contains("nbd-backends") && e.contains("line 2"),
                "{bad:?}: {e}"
            );
        }
        std::fs::write(f.path(), "1 4096 vsky:ok\n\n").unwrap();
        assert_eq!(f.load().unwrap(), vec![entry(1, 4096, "vsky:ok")]);
        assert!(f.record(entry(2, 1, "has space")).is_err());
        std::fs::remove_dir_all(f.path().parent().unwrap().parent().unwrap()).unwrap();
    }

    /// The head's threads import a volume's legs at once: every connect's
    /// entry is kept, and every disconnect's dropped, however they
    /// interleave.
    #[test]
    fn threads_recording_at_once_keep_every_entry() {
        let f = temp_file("threads");
        std::thread::scope(|scope| {
            for t in 0..8u32 {
                let f = &f;
                scope.spawn(move || {
                    for i in 0..25u32 {
                        let index = t * 100 + i;
                        f.record(entry(index, 4096, &format!("vsky:v:{t}:{i}")))
                            .unwrap();
                        if i % 5 == 0 {
                            f.forget(NbdIndex(index)).unwrap();
                        }
                    }
                });
            }
        });
        let kept = f.load().unwrap();
        assert_eq!(kept.len(), 8 * 20, "an entry was lost or kept");
        assert!(kept.iter().all(|e| e.index.0 % 100 % 5 != 0));
        std::fs::remove_dir_all(f.path().parent().unwrap().parent().unwrap()).unwrap();
    }

    /// Only connected devices with the recorded size are trusted; a
    /// device two entries claim is trusted for neither.
    #[test]
    fn entries_are_checked_against_the_kernel() {
        let entries = vec![
            entry(0, 4096, "vsky:a"),
            entry(1, 4096, "vsky:b"),
            entry(2, 4096, "vsky:c"),
            entry(3, 8192, "vsky:d"),
            entry(5, 4096, "vsky:e"),
            entry(5, 4096, "vsky:f"),
        ];
        let connected = [NbdIndex(0), NbdIndex(2), NbdIndex(3), NbdIndex(5)];
        let size = |i: NbdIndex| match i.0 {
            0 | 5 => Some(4096),
            2 => None,
            _ => Some(4096),
        };
        assert_eq!(
            verified(&entries, &connected, size),
            vec![entry(0, 4096, "vsky:a")]
        );
    }
}
