//! The reference tools: `thin_restore` writes metadata from XML, and
//! `thin_dump` reads it back as XML (thin-provisioning-tools, the Debian
//! package `thin-provisioning-tools`, which `scripts/install-deps`
//! installs).
//!
//! A test that needs them fails when they are missing, unless
//! `VSKY_SKIP_THIN_TOOLS` is set, so that a machine without them cannot
//! pass the suite by silently running less of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::model::{Device, Pool};

/// The two tools' paths.
#[derive(Clone, Debug)]
pub struct Tools {
    pub restore: PathBuf,
    pub dump: PathBuf,
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tools, or `None` when they are missing and
/// `VSKY_SKIP_THIN_TOOLS` is set; panics when they are missing otherwise.
pub fn tools() -> Option<Tools> {
    match (find("thin_restore"), find("thin_dump")) {
        (Some(restore), Some(dump)) => Some(Tools { restore, dump }),
        _ if std::env::var_os("VSKY_SKIP_THIN_TOOLS").is_some() => {
            eprintln!("thin_restore/thin_dump missing; skipped (VSKY_SKIP_THIN_TOOLS is set)");
            None
        }
        _ => panic!(
            "thin_restore and thin_dump (thin-provisioning-tools) are not installed: \
             run scripts/install-deps, or set VSKY_SKIP_THIN_TOOLS=1 to skip the tests \
             that check the parser against them"
        ),
    }
}

/// A file under the test's scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vsky-thinmeta");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scratch(dir.join(format!("{name}-{}-{n}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `pool` as the XML thin_dump writes and thin_restore reads. Mappings go
/// out as ranges where virtual and data blocks both follow on and the time
/// stays the same, as single mappings elsewhere.
pub fn to_xml(pool: &Pool, flags: u32, version: u32) -> String {
    let mut xml = String::new();
    let _ = writeln!(
        xml,
        r#"<superblock uuid="" time="{}" transaction="{}" flags="{flags}" version="{version}" data_block_size="{}" nr_data_blocks="{}">"#,
        pool.time, pool.transaction, pool.data_block_sectors, pool.data_blocks
    );
    for (id, device) in &pool.devices {
        let _ = writeln!(
            xml,
            r#"  <device dev_id="{id}" mapped_blocks="{}" transaction="{}" creation_time="{}" snap_time="{}">"#,
            device.mappings.len(),
            device.transaction,
            device.creation_time,
            device.snap_time
        );
        let mut runs: Vec<(u64, u64, u64, u32)> = Vec::new();
        for (v, (d, t)) in &device.mappings {
            match runs.last_mut() {
                Some((rv, rd, len, rt)) if *rv + *len == *v && *rd + *len == *d && rt == t => {
                    *len += 1
                }
                _ => runs.push((*v, *d, 1, *t)),
            }
        }
        for (v, d, len, t) in runs {
            if len == 1 {
                let _ = writeln!(
                    xml,
                    r#"    <single_mapping origin_block="{v}" data_block="{d}" time="{t}"/>"#
                );
            } else {
                let _ = writeln!(
                    xml,
                    r#"    <range_mapping origin_begin="{v}" data_begin="{d}" length="{len}" time="{t}"/>"#
                );
            }
        }
        xml.push_str("  </device>\n");
    }
    xml.push_str("</superblock>\n");
    xml
}

/// The metadata size to give thin_restore for `pool`: room for every
/// mapping in half-full leaves, and 16 MiB at least.
fn metadata_bytes(pool: &Pool) -> u64 {
    let leaves = pool.nr_mappings() as u64 / 60 + 64;
    (leaves * 4096 * 2).max(16 << 20)
}

/// Runs a tool, panicking with its output when it fails.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("run the tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

impl Tools {
    /// Writes `pool` with thin_restore into a new (sparse) file.
    pub fn restore(&self, pool: &Pool, flags: u32, version: u32) -> Scratch {
        let xml = Scratch::new("pool.xml");
        std::fs::write(&xml.0, to_xml(pool, flags, version)).expect("write xml");
        let meta = Scratch::new("meta.bin");
        let file = std::fs::File::create(&meta.0).expect("create metadata file");
        file.set_len(metadata_bytes(pool))
            .expect("size metadata file");
        drop(file);
        run(Command::new(&self.restore)
            .arg("-q")
            .arg("-i")
            .arg(&xml.0)
            .arg("-o")
            .arg(&meta.0));
        meta
    }

    /// Reads `meta` back with thin_dump.
    pub fn dump(&self, meta: &Path) -> Pool {
        parse_xml(&run(Command::new(&self.dump).arg(meta)))
    }
}

/// The value of attribute `name` in the tag `line`.
fn attr<T: std::str::FromStr>(line: &str, name: &str) -> T {
    let key = format!(" {name}=\"");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    let end = start + line[start..].find('"').expect("closing quote");
    line[start..end]
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} in {line}"))
}

/// Parses thin_dump's XML (one tag per line).
pub fn parse_xml(xml: &str) -> Pool {
    let mut pool = Pool::empty(0);
    // The device being read, and the mapped_blocks it announced.
    let mut current: Option<(u64, u64, Device)> = None;
    for line in xml.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("<superblock") {
            pool.time = attr(line, "time");
            pool.transaction = attr(line, "transaction");
            pool.data_block_sectors = attr(line, "data_block_size");
            pool.data_blocks = attr(line, "nr_data_blocks");
        } else if line.starts_with("<device") {
            let device = Device {
                transaction: attr(line, "transaction"),
                creation_time: attr(line, "creation_time"),
                snap_time: attr(line, "snap_time"),
                mappings: BTreeMap::new(),
            };
            current = Some((attr(line, "dev_id"), attr(line, "mapped_blocks"), device));
        } else if line.starts_with("<range_mapping") {
            let (_, _, device) = current.as_mut().expect("mapping outside a device");
            let v: u64 = attr(line, "origin_begin");
            let d: u64 = attr(line, "data_begin");
            let len: u64 = attr(line, "length");
            let t: u32 = attr(line, "time");
            for i in 0..len {
                device.mappings.insert(v + i, (d + i, t));
            }
        } else if line.starts_with("<single_mapping") {
            let (_, _, device) = current.as_mut().expect("mapping outside a device");
            device.mappings.insert(
                attr(line, "origin_block"),
                (attr(line, "data_block"), attr(line, "time")),
            );
        } else if line.starts_with("</device") {
            let (id, mapped, device) = current.take().expect("device end without a device");
            assert_eq!(
                mapped as usize,
                device.mappings.len(),
                "thin_dump's mapped_blocks of {id}"
            );
            pool.devices.insert(id, device);
        } else if line.starts_with("</superblock") {
            assert!(current.is_none(), "unterminated device");
        } else {
            panic!("unexpected thin_dump line: {line}");
        }
    }
    pool
}
