//! What the server exports: [`Export`] (a byte range of a file or block
//! device) and [`ExportTable`] (the live name → export map).
//!
//! The table is shared between the agent's reconciler, which inserts and
//! removes exports as the manager reassigns chunks, and the server, which
//! looks names up during the handshake. Every registration carries a
//! revocation signal: removing (or replacing) an export flips a flag that
//! blocks further I/O on it and wakes every connection using it, which then
//! drops its socket at once. A reassigned chunk thus becomes unreachable
//! through old connections, not just for new ones.
//!
//! A registration also carries a live write limit
//! ([`ExportTable::set_writable_bytes`]): the leg of a frozen layer may only
//! have its front (dm-raid's superblock and bitmap) written, and lowering
//! the limit binds connections already open, not just new ones.
//!
//! Export names are per-leg secrets: they act as capabilities, so nothing in
//! this module (or the handshake) ever lists them to a client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use vsky_sync::LockExt;

/// A byte range `[offset_bytes, offset_bytes + size_bytes)` of a regular file
/// or block device, exported as an NBD device of `size_bytes` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The backing file or block device. Opened per connection, never created.
    pub path: PathBuf,
    /// Where the export starts inside the backing file.
    pub offset_bytes: u64,
    /// The export's size; clients see offsets `0..size_bytes`.
    pub size_bytes: u64,
    /// Opened `O_RDONLY`, advertised READ_ONLY; writes get `EPERM`.
    pub read_only: bool,
    /// If set, writes, zeroes and trims must end at or below this byte of
    /// the export; others get `EPERM` (the data of a frozen layer's leg,
    /// which nothing may change, behind its writable metadata area). The
    /// limit at registration; [`ExportTable::set_writable_bytes`] moves it.
    pub writable_bytes: Option<u64>,
}

/// The live write limit of a registration: the first byte no write may
/// reach ([`u64::MAX`]: none).
pub(crate) type WriteLimit = Arc<AtomicU64>;

fn limit_value(writable_bytes: Option<u64>) -> u64 {
    writable_bytes.unwrap_or(u64::MAX)
}

/// The live set of exports, keyed by secret export name.
///
/// Cheap to clone: clones share one map. Lookups and updates hold a std mutex
/// for a hash-map operation only, never across an `.await`, so a blocking
/// mutex is both correct and cheaper than an async one.
#[derive(Clone, Default)]
pub struct ExportTable {
    inner: Arc<Mutex<HashMap<String, Registration>>>,
}

/// One registered export and its revocation signal.
struct Registration {
    export: Arc<Export>,
    /// Checked by the blocking I/O path right before each syscall, so no new
    /// read or write starts on a removed export.
    revoked: Arc<AtomicBool>,
    /// Checked by the blocking I/O path before each write or zeroing.
    write_limit: WriteLimit,
    /// Dropping the sender wakes every connection's [`Revocation::revoked`].
    /// A watch channel (rather than `Notify`) because it also reports a drop
    /// that happened before the connection started waiting.
    _alive: watch::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.revoked.store(true, Ordering::SeqCst);
    }
}

impl ExportTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `export` under `name`. Replacing an existing name revokes the
    /// old registration: its connections are closed, because their clients
    /// negotiated the old geometry.
    pub fn insert(&self, name: String, export: Export) {
        let (alive, _) = watch::channel(());
        let registration = Registration {
            write_limit: Arc::new(AtomicU64::new(limit_value(export.writable_bytes))),
            export: Arc::new(export),
            revoked: Arc::new(AtomicBool::new(false)),
            _alive: alive,
        };
        // The old registration (if any) is dropped after the lock is released.
        let _old = self.lock().insert(name, registration);
    }

    /// Unregisters `name` and closes every open connection to it. Returns
    /// whether it was registered. I/O already inside a syscall completes, but
    /// no new request on those connections is executed or answered.
    pub fn remove(&self, name: &str) -> bool {
        let old = self.lock().remove(name);
        old.is_some()
    }

    /// Moves the write limit of `name` (see [`Export::writable_bytes`]),
    /// for its open connections too: a write that has not started yet is
    /// checked against the new limit. Returns the limit it had, or `None`
    /// if `name` is not registered.
    pub fn set_writable_bytes(
        &self,
        name: &str,
        writable_bytes: Option<u64>,
    ) -> Option<Option<u64>> {
        let table = self.lock();
        let old = table
            .get(name)?
            .write_limit
            .swap(limit_value(writable_bytes), Ordering::SeqCst);
        Some((old != u64::MAX).then_some(old))
    }

    /// The registered names, sorted, for the agent's own status reporting.
    /// Never sent on the wire.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Looks up a name received from a client. Non-UTF-8 names cannot be
    /// registered, so they are simply unknown. The map's hasher is randomly
    /// keyed SipHash, so lookup timing reveals nothing useful about other
    /// names.
    pub(crate) fn lookup(&self, name: &[u8]) -> Option<ExportHandle> {
        let name = std::str::from_utf8(name).ok()?;
        let table = self.lock();
        let registration = table.get(name)?;
        Some(ExportHandle {
            export: Arc::clone(&registration.export),
            write_limit: Arc::clone(&registration.write_limit),
            revocation: Revocation {
                flag: Arc::clone(&registration.revoked),
                receiver: registration._alive.subscribe(),
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registration>> {
        // A panic while holding this lock can only come from HashMap itself;
        // the map stays consistent, so recover it rather than poisoning the
        // whole server.
        self.inner.lock_unpoisoned()
    }
}

impl std::fmt::Debug for ExportTable {
    // Names are secrets: Debug shows how many exports there are, not which.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportTable")
            .field("exports", &self.lock().len())
            .finish()
    }
}

/// What a connection gets from a successful lookup: the export as it was
/// registered, and the signal that it has since been removed.
pub(crate) struct ExportHandle {
    pub export: Arc<Export>,
    pub write_limit: WriteLimit,
    pub revocation: Revocation,
}

/// The revocation signal of one registration, as seen by one connection.
pub(crate) struct Revocation {
    flag: Arc<AtomicBool>,
    receiver: watch::Receiver<()>,
}

impl Revocation {
    /// A flag the blocking I/O path can check without async machinery.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    #[cfg(test)]
    pub fn is_revoked(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Completes once the export has been removed or replaced.
    pub async fn revoked(&mut self) {
        // Nobody ever sends on the channel; `changed` only fails, when the
        // registration's sender is dropped.
        while self.receiver.changed().await.is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> Export {
        Export {
            path: PathBuf::from("/dev/null"),
            offset_bytes: 0,
            size_bytes: 4096,
            read_only: false,
            writable_bytes: None,
        }
    }

    // Proves remove revokes a handle obtained earlier, both through the flag
    // and through the async signal, and that names() reflects the table.
    #[tokio::test]
    async fn remove_revokes_existing_handles() {
        let table = ExportTable::new();
        table.insert("b".into(), export());
        table.insert("a".into(), export());
        assert_eq!(table.names(), vec!["a".to_string(), "b".to_string()]);
        let mut handle = table.lookup(b"a").expect("registered");
        assert!(!handle.revocation.is_revoked());
        assert!(table.remove("a"));
        assert!(!table.remove("a"));
        assert!(handle.revocation.is_revoked());
        handle.revocation.revoked().await;
        assert_eq!(table.names(), vec!["b".to_string()]);
    }

    // Proves re-inserting a name revokes connections to the old export while
    // the new one stays live.
    #[tokio::test]
    async fn replacing_revokes_the_old_registration() {
        let table = ExportTable::new();
        table.insert("a".into(), export());
        let mut old = table.lookup(b"a").expect("registered");
        table.insert("a".into(), export());
        old.revocation.revoked().await;
        let new = table.lookup(b"a").expect("registered");
        assert!(!new.revocation.is_revoked());
    }

    // Proves the write limit of a registration reaches handles obtained
    // before it moved, and that an unknown name has none.
    #[test]
    fn write_limits_move_for_open_handles() {
        let table = ExportTable::new();
        table.insert("a".into(), export());
        let handle = table.lookup(b"a").expect("registered");
        assert_eq!(handle.write_limit.load(Ordering::SeqCst), u64::MAX);
        assert_eq!(table.set_writable_bytes("a", Some(512)), Some(None));
        assert_eq!(handle.write_limit.load(Ordering::SeqCst), 512);
        assert_eq!(table.set_writable_bytes("a", None), Some(Some(512)));
        assert_eq!(handle.write_limit.load(Ordering::SeqCst), u64::MAX);
        assert_eq!(table.set_writable_bytes("b", Some(1)), None);
        let limited = Export {
            writable_bytes: Some(1024),
            ..export()
        };
        table.insert("c".into(), limited);
        let handle = table.lookup(b"c").expect("registered");
        assert_eq!(handle.write_limit.load(Ordering::SeqCst), 1024);
    }

    // Proves unknown and non-UTF-8 names are simply not found.
    #[test]
    fn lookup_of_unknown_names_fails() {
        let table = ExportTable::new();
        table.insert("a".into(), export());
        assert!(table.lookup(b"b").is_none());
        assert!(table.lookup(&[0xff, 0xfe]).is_none());
        assert!(table.lookup(b"").is_none());
        assert!(format!("{table:?}").contains("exports: 1"));
        assert!(!format!("{table:?}").contains('"'));
    }
}
