//! Which domains on this head use each volume: the rules that decide when
//! a deactivate may tear the volume's device down, and the table's form on
//! disk.
//!
//! xapi activates a volume once per domain that uses it (a guest by its
//! domid, dom0 users as `u0-…`; `Datapath.activate uri domain`), and
//! deactivates it the same way. A head assembles one device per volume,
//! so the device must stay until the last of those activations is gone: a
//! read-only reader's deactivate must not pull the disk from under a
//! running VM. Each domain counts once, whatever the number of its
//! activate calls (xapi's calls are idempotent).
//!
//! The table is kept in a file (`--activations-file`, under `/run`: it is
//! lost on reboot together with the devices it describes) so an agent
//! restart does not forget who holds a device. A file that cannot be read
//! leaves every assembled volume with an [`unknown`](Holders::unknown)
//! holder: then no domain's deactivate tears it down, only an explicit
//! release without a domain (the admin's) does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default `--activations-file`.
pub const DEFAULT_FILE: &str = "/run/vsky/agent/activations.json";

/// The version of the file's format; a file of another version is refused.
const FORMAT: u32 = 1;

/// Longest accepted domain string. xapi's are short (`17`,
/// `u0-<datapath id>`); the limit only keeps a bad caller from bloating
/// the file.
pub const MAX_DOMAIN_LEN: usize = 256;

/// How a domain uses the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "rw")]
    ReadWrite,
    #[serde(rename = "ro")]
    ReadOnly,
}

/// Who holds one volume's device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holders {
    /// Domain → how it uses the volume.
    #[serde(default)]
    pub domains: BTreeMap<String, Mode>,
    /// Somebody the agent cannot name holds it: the table could not be
    /// read when the agent started while the volume was assembled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

impl Holders {
    fn is_empty(&self) -> bool {
        self.domains.is_empty() && !self.unknown
    }

    /// How many holders remain (an unknown holder counts as one).
    pub fn count(&self) -> usize {
        self.domains.len() + usize::from(self.unknown)
    }
}

/// What a release asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// This domain's deactivate (or detach).
    Domain(String),
    /// Tear down only if nobody holds the volume (`Datapath.close`, which
    /// names no domain).
    IfUnused,
    /// Everything goes, whoever holds it: the admin's release.
    Everything,
}

/// What the caller must do after a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds the volume any more: tear its device down and release
    /// it in the manager.
    TearDown,
    /// Others still hold it: leave the device.
    Keep { remaining: usize },
    /// Only an unknown holder is left: refuse, never tear down on a guess.
    Unknown,
}

/// The activations on this head, by volume. Volumes nobody holds are not
/// listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activations {
    volumes: BTreeMap<String, Holders>,
}

impl Activations {
    /// Records that `domain` uses `volume` in `mode`. The same domain again
    /// is the same activation; if its modes differ, read-write wins (the
    /// domain may still write through the first one).
    pub fn activate(&mut self, volume: &str, domain: &str, mode: Mode) {
        let holders = self.volumes.entry(volume.to_string()).or_default();
        let m = holders.domains.entry(domain.to_string()).or_insert(mode);
        *m = (*m).min(mode);
    }

    /// Whether `domain` holds `volume`.
    pub fn holds(&self, volume: &str, domain: &str) -> bool {
        self.volumes
            .get(volume)
            .is_some_and(|h| h.domains.contains_key(domain))
    }

    /// Drops `domain`'s activation of `volume`, if any (an activate that
    /// failed).
    pub fn undo(&mut self, volume: &str, domain: &str) {
        if let Some(h) = self.volumes.get_mut(volume) {
            h.domains.remove(domain);
            if h.is_empty() {
                self.volumes.remove(volume);
            }
        }
    }

    /// Applies a release of `volume` and says what to do with its device.
    /// A domain that does not hold the volume changes nothing (xapi
    /// deactivates twice on VM shutdown); with nobody left the answer is
    /// [`Decision::TearDown`], so a repeated deactivate still finishes a
    /// release that failed half-way.
    pub fn release(&mut self, volume: &str, how: &Release) -> Decision {
        let holders = self.volumes.entry(volume.to_string()).or_default();
        match how {
            Release::Domain(d) => {
                holders.domains.remove(d);
            }
            Release::IfUnused => {}
            Release::Everything => *holders = Holders::default(),
        }
        let decision =
            if !holders.domains.is_empty() || (holders.unknown && *how == Release::IfUnused) {
                Decision::Keep {
                    remaining: holders.count(),
                }
            } else if holders.unknown {
                Decision::Unknown
            } else {
                Decision::TearDown
            };
        if holders.is_empty() {
            self.volumes.remove(volume);
        }
        decision
    }

    /// Forgets `volume` (its device went some other way: an admin's
    /// detach through the manager, a forced takeover).
    pub fn forget(&mut self, volume: &str) {
        self.volumes.remove(volume);
    }

    /// Keeps only the volumes `assembled` says have a device here.
    pub fn retain_assembled(&mut self, assembled: impl Fn(&str) -> bool) {
        self.volumes.retain(|v, _| assembled(v));
    }

    /// The table to use when the file could not be read: every volume in
    /// `assembled` has an unknown holder.
    pub fn unknown(assembled: impl IntoIterator<Item = String>) -> Activations {
        let unknown = Holders {
            domains: BTreeMap::new(),
            unknown: true,
        };
        Activations {
            volumes: assembled
                .into_iter()
                .map(|v| (v, unknown.clone()))
                .collect(),
        }
    }

    /// Who holds `volume` (nobody: `None`).
    pub fn holders(&self, volume: &str) -> Option<&Holders> {
        self.volumes.get(volume)
    }

    /// The file's contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        let file = FileForm {
            format: FORMAT,
            volumes: self.volumes.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("the table serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses the file's contents; any flaw is an error naming it (never a
    /// panic, never a partial table).
    pub fn from_bytes(bytes: &[u8]) -> Result<Activations, String> {
        let file: FileForm = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.format != FORMAT {
            return Err(format!(
                "format {} is not the supported format {FORMAT}",
                file.format
            ));
        }
        for (volume, holders) in &file.volumes {
            if holders.is_empty() {
                return Err(format!("volume '{volume}' is listed with no holder"));
            }
            if let Some(d) = holders.domains.keys().find(|d| d.len() > MAX_DOMAIN_LEN) {
                return Err(format!(
                    "volume '{volume}' lists a domain of {} bytes (at most {MAX_DOMAIN_LEN})",
                    d.len()
                ));
            }
        }
        Ok(Activations {
            volumes: file.volumes,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    format: u32,
    volumes: BTreeMap<String, Holders>,
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    Table(Activations),
    /// No file: a first start since boot, or the first start of an agent
    /// that keeps the table.
    Missing,
    /// The file exists but cannot be used; why.
    Unreadable(String),
}

/// Reads the table from `path`.
pub fn load(path: &Path) -> Loaded {
    match std::fs::read(path) {
        Ok(bytes) => match Activations::from_bytes(&bytes) {
            Ok(table) => Loaded::Table(table),
            Err(why) => Loaded::Unreadable(why),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
        Err(e) => Loaded::Unreadable(e.to_string()),
    }
}

/// Writes the table to `path` atomically: a temporary file in the same
/// directory, flushed, renamed over `path`, then the directory flushed, so
/// a crash leaves the old table or the new one, never a mix. Creates the
/// directory (mode 0700) if needed.
pub fn save(path: &Path, table: &Activations) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&table.to_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Release {
        Release::Domain(s.into())
    }

    #[test]
    fn the_device_goes_with_the_last_domain() {
        let mut t = Activations::default();
        t.activate("v", "3", Mode::ReadWrite);
        t.activate("v", "u0-reader", Mode::ReadOnly);
        t.activate("v", "3", Mode::ReadWrite);
        assert_eq!(t.holders("v").unwrap().count(), 2);
        assert_eq!(t.release("v", &d("3")), Decision::Keep { remaining: 1 });
        // xapi deactivates twice on shutdown: the second changes nothing.
        assert_eq!(t.release("v", &d("3")), Decision::Keep { remaining: 1 });
        assert_eq!(
            t.release("v", &Release::IfUnused),
            Decision::Keep { remaining: 1 }
        );
        assert_eq!(t.release("v", &d("u0-reader")), Decision::TearDown);
        assert_eq!(t.holders("v"), None);
        // Nobody holds it: any release tears down (finishes a half-done one).
        assert_eq!(t.release("v", &d("3")), Decision::TearDown);
        assert_eq!(t.release("v", &Release::IfUnused), Decision::TearDown);
        assert_eq!(t, Activations::default());
    }

    #[test]
    fn read_write_wins_within_a_domain() {
        let mut t = Activations::default();
        t.activate("v", "3", Mode::ReadOnly);
        t.activate("v", "3", Mode::ReadWrite);
        t.activate("v", "3", Mode::ReadOnly);
        assert_eq!(t.holders("v").unwrap().domains["3"], Mode::ReadWrite);
    }

    #[test]
    fn an_unknown_holder_is_released_only_by_everything() {
        let mut t = Activations::unknown(["v".to_string()]);
        assert_eq!(t.release("v", &d("3")), Decision::Unknown);
        assert_eq!(
            t.release("v", &Release::IfUnused),
            Decision::Keep { remaining: 1 }
        );
        t.activate("v", "3", Mode::ReadWrite);
        assert_eq!(t.release("v", &d("3")), Decision::Unknown);
        assert!(!t.holds("v", "3"));
        assert_eq!(t.release("v", &Release::Everything), Decision::TearDown);
        assert_eq!(t, Activations::default());
    }

    #[test]
    fn undo_and_forget_and_retain() {
        let mut t = Activations::default();
        t.activate("a", "1", Mode::ReadWrite);
        t.activate("a", "2", Mode::ReadWrite);
        t.activate("b", "1", Mode::ReadOnly);
        t.undo("a", "2");
        assert!(!t.holds("a", "2") && t.holds("a", "1"));
        t.undo("b", "1");
        assert_eq!(t.holders("b"), None);
        t.activate("b", "1", Mode::ReadOnly);
        t.retain_assembled(|v| v == "b");
        assert_eq!(t.holders("a"), None);
        t.forget("b");
        assert_eq!(t, Activations::default());
    }

    #[test]
    fn the_file_form_is_versioned_and_checked() {
        let mut t = Activations::default();
        t.activate("v", "", Mode::ReadWrite);
        let text = String::from_utf8(t.to_bytes()).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
        assert!(text.contains("\"rw\""), "{text}");
        for bad in [
            "",
            "null",
            "{}",
            r#"{"format": 2, "volumes": {}}"#,
            r#"{"format": 1, "volumes": {"v": {}}}"#,
            r#"{"format": 1, "volumes": {"v": {"domains": {"3": "rx"}}}}"#,
            r#"{"format": 1, "volumes": {"v": {"domains": {"3": "rw"}, "extra": 1}}}"#,
        ] {
            assert!(Activations::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"format": 1, "volumes": {{"v": {{"domains": {{"{}": "rw"}}}}}}}}"#,
            "x".repeat(MAX_DOMAIN_LEN + 1)
        );
        assert!(Activations::from_bytes(long.as_bytes()).is_err());
    }

    #[test]
    fn save_replaces_the_file_atomically_and_load_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/activations.json");
        assert!(matches!(load(&path), Loaded::Missing));
        let mut t = Activations::default();
        t.activate("v", "3", Mode::ReadWrite);
        save(&path, &t).unwrap();
        t.activate("w", "u0-x", Mode::ReadOnly);
        save(&path, &t).unwrap();
        match load(&path) {
            Loaded::Table(back) => assert_eq!(back, t),
            other => panic!("{other:?}"),
        }
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["activations.json"], "no temporary file is left");
        std::fs::write(&path, b"{\"format\": 1, \"volu").unwrap();
        assert!(matches!(load(&path), Loaded::Unreadable(_)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Activate(u8, u8, bool),
        Deactivate(u8, u8),
        Close(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, 0..4u8, any::<bool>()).prop_map(|(v, d, ro)| Op::Activate(v, d, ro)),
            (0..3u8, 0..4u8).prop_map(|(v, d)| Op::Deactivate(v, d)),
            (0..3u8).prop_map(Op::Close),
        ]
    }

    proptest! {
        /// Against a model (the set of domains per volume): the device is
        /// torn down exactly when the release leaves no domain, and the
        /// count of the others is right otherwise.
        #[test]
        fn the_device_goes_exactly_with_the_last_activation(
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let mut t = Activations::default();
            let mut model: BTreeMap<u8, std::collections::BTreeSet<u8>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Activate(v, dom, ro) => {
                        let mode = if ro { Mode::ReadOnly } else { Mode::ReadWrite };
                        t.activate(&v.to_string(), &dom.to_string(), mode);
                        model.entry(v).or_default().insert(dom);
                    }
                    Op::Deactivate(v, dom) => {
                        let set = model.entry(v).or_default();
                        set.remove(&dom);
                        let want = if set.is_empty() {
                            Decision::TearDown
                        } else {
                            Decision::Keep { remaining: set.len() }
                        };
                        prop_assert_eq!(t.release(&v.to_string(), &Release::Domain(dom.to_string())), want);
                    }
                    Op::Close(v) => {
                        let n = model.get(&v).map_or(0, |s| s.len());
                        let want = if n == 0 {
                            Decision::TearDown
                        } else {
                            Decision::Keep { remaining: n }
                        };
                        prop_assert_eq!(t.release(&v.to_string(), &Release::IfUnused), want);
                    }
                }
                for v in 0..3u8 {
                    let n = model.get(&v).map_or(0, |s| s.len());
                    prop_assert_eq!(t.holders(&v.to_string()).map_or(0, Holders::count), n);
                }
                // Every state round-trips through its file form.
                prop_assert_eq!(Activations::from_bytes(&t.to_bytes()).unwrap(), t.clone());
            }
        }

        /// Any bytes are either a table or an error, never a panic; a table
        /// read back writes the same table.
        #[test]
        fn any_file_is_refused_or_read(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(t) = Activations::from_bytes(&bytes) {
                prop_assert_eq!(Activations::from_bytes(&t.to_bytes()).unwrap(), t);
            }
        }

        /// Mangled versions of a good file: refused or read, never a panic.
        #[test]
        fn a_mangled_file_never_panics(cut in 0usize..200, flip in 0usize..200, byte in any::<u8>()) {
            let mut t = Activations::default();
            t.activate("vol-1", "3", Mode::ReadWrite);
            t.activate("vol-1", "u0-reader", Mode::ReadOnly);
            let mut bytes = t.to_bytes();
            if let Some(b) = bytes.get_mut(flip) {
                *b = byte;
            }
            bytes.truncate(cut.min(bytes.len()));
            let _ = Activations::from_bytes(&bytes);
        }
    }
}
