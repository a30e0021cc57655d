//! Device-mapper stacks for VastSky volumes: legs, raid1 mirrors, and the
//! linear or striped volume device on top.
//!
//! A volume on the head is built bottom-up:
//!
//! ```text
//! /dev/nbdN ─┬─ vsky-<vol>+r<k>+<tag>+meta   dm-linear, first `meta_size` sectors (superblock + bitmap)
//!            └─ vsky-<vol>+r<k>+<tag>+data   dm-linear, the rest
//! vsky-<vol>-r<k>   dm-raid raid1 over 2+ (meta, data) pairs, `- -` for a missing leg
//! vsky-<vol>        dm-linear concatenation (or dm-striped) of the raid1 devices
//! ```
//!
//! Every operation is an idempotent `ensure_*` in the devicemapper-rs style:
//! if the device is missing it is created (and removed again if its table
//! fails to load); if it exists, the kernel's table is read back and compared
//! with the wanted one, and a difference is an error rather than a silent
//! reload. That is also how a restarted agent adopts its devices. Tables refer
//! to parents by `major:minor` and we create `/dev/mapper/<name>` nodes
//! ourselves, because there is no udev on the test VM (and we must not depend
//! on it in production either).
//!
//! Main types: [`Datapath`] (the DM context), [`TargetLine`] (typed table
//! lines: [`Raid1Table`], linear, striped), [`RaidStatus`] (parsed status).
//!
//! Size: over 1000 lines, not split yet. Issue #15 item 2 splits it by
//! concern (names, tables, status parsing, superblocks, the datapath), with
//! the pure parts testable without a kernel.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use devicemapper::{DM, DevId, DmError as RawDmError, DmFlags, DmName, DmOptions, DmUuid};
pub use devicemapper::{Device, Sectors};

/// Errors of the device-mapper layer. Messages name the device and say what
/// to do next.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error(
        "cannot open /dev/mapper/control: {0} (load the dm-mod module and run as root; \
         dm-raid and raid1 are needed for mirrors)"
    )]
    Open(String),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid table for {name}: {reason}")]
    InvalidTable { name: String, reason: String },
    #[error("device-mapper {op} on {name} failed: {source} (see dmesg for the target's reason)")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: RawDmError,
    },
    #[error(
        "{name} already exists with a different table: kernel has {found:?}, wanted {wanted:?}; \
         remove it (or pick another name) if it is stale"
    )]
    TableMismatch {
        name: String,
        found: String,
        wanted: String,
    },
    #[error("{name} does not exist")]
    NotFound { name: String },
    #[error("cannot parse the {what} of {name}: {text:?}")]
    Parse {
        name: String,
        what: &'static str,
        text: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} did not reach {wanted} within {waited:?}; last status: {last}")]
    Timeout {
        name: String,
        wanted: &'static str,
        waited: Duration,
        last: String,
    },
}

pub type Result<T, E = DmError> = std::result::Result<T, E>;

/// Prefix of every device we create; teardown only ever touches these.
pub const NAME_PREFIX: &str = "vsky-";
/// Prefix of the DM UUIDs we set, so tools can tell our devices apart.
const UUID_PREFIX: &str = "VSKY-";
/// DM_NAME_LEN is 128 including the NUL; leave room for our suffixes.
const NAME_MAX_BYTES: usize = 127;

/// A validated device-mapper device name (`vsky-…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevName(String);

impl DevName {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad = |reason| {
            Err(DmError::InvalidName {
                name: name.clone(),
                reason,
            })
        };
        if !name.starts_with(NAME_PREFIX) {
            return bad("VastSky devices are named vsky-…");
        }
        if name.len() > NAME_MAX_BYTES {
            return bad("longer than 127 bytes");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        {
            return bad("only ASCII letters, digits and - _ . + are allowed");
        }
        Ok(DevName(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The node we create: `/dev/mapper/<name>`.
    pub fn node_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.0)
    }
    fn dm_name(&self) -> &DmName {
        // Validated above with rules stricter than DmName's.
        DmName::new(&self.0).expect("DevName is a valid DmName")
    }
}

impl fmt::Display for DevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A volume name as the manager gives it; device names derive from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        // The manager's names: 1-64 of [A-Za-z0-9._-]. Internal devices
        // separate name parts with '+', which volume names never contain, so
        // `vsky-a+r0` (mirror 0 of volume `a`) can never collide with the top
        // device of a volume named `a-r0` (`vsky-a-r0`). Room is left for
        // "vsky-" and "+r<k>+<tag>+meta" within the kernel's 127 bytes.
        if name.is_empty() || name.len() > 64 {
            return Err(DmError::InvalidName {
                name,
                reason: "volume names are 1-64 bytes",
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(DmError::InvalidName {
                name,
                reason: "volume names use ASCII letters, digits, _, . and -",
            });
        }
        Ok(VolumeName(name))
    }
    /// The volume device, `vsky-<vol>`.
    pub fn top(&self) -> DevName {
        DevName(format!("{NAME_PREFIX}{}", self.0))
    }
    /// Mirrored disk `k` of the volume, `vsky-<vol>+r<k>`.
    pub fn raid(&self, k: u32) -> DevName {
        DevName(format!("{NAME_PREFIX}{}+r{k}", self.0))
    }

    /// Column `k` of a striped volume whose columns span several mirrored
    /// disks (a linear concatenation), `vsky-<vol>+c<k>`.
    pub fn column(&self, k: u32) -> DevName {
        DevName(format!("{NAME_PREFIX}{}+c{k}", self.0))
    }
    /// The meta/data pair of one leg of mirror `k`. `tag` identifies the
    /// chunk (a replacement leg needs a name different from the one it
    /// replaces, since both exist during the swap).
    pub fn leg(&self, k: u32, tag: &str) -> Result<LegNames> {
        if tag.is_empty()
            || tag.len() > 40
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(&b))
        {
            return Err(DmError::InvalidName {
                name: tag.to_string(),
                reason: "leg tags are 1-40 ASCII letters, digits, _ or .",
            });
        }
        let base = format!("{NAME_PREFIX}{}+r{k}+{tag}", self.0);
        Ok(LegNames {
            meta: DevName::new(format!("{base}+meta"))?,
            data: DevName::new(format!("{base}+data"))?,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Names of a leg's two linear devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegNames {
    pub meta: DevName,
    pub data: DevName,
}

/// The device numbers of one raid1 leg, as used in the raid table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegDevices {
    pub meta: Device,
    pub data: Device,
}

// ---------------------------------------------------------------------------
// Typed table lines
// ---------------------------------------------------------------------------

/// The raid1 parameters we use: `raid1 <#params> 0 [nosync] [rebuild i]…
/// region_size <r> <#devs> <meta data|- ->…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raid1Table {
    /// Legs in slot order; `None` is a missing leg (`- -`).
    pub legs: Vec<Option<LegDevices>>,
    /// Bitmap region size. Power of two, ≤ the device length and ≥ len/2^21.
    pub region_size: Sectors,
    /// Slots to rebuild from scratch (only on the load that adds a new leg).
    pub rebuild: Vec<usize>,
    /// Skip the initial resync (legs known to be zero).
    pub nosync: bool,
    /// Resync/recovery rate limit per leg, KiB/s (`max_recovery_rate`);
    /// `None` leaves md's default.
    pub max_recovery_rate_kib: Option<u64>,
}

impl Raid1Table {
    pub fn new(legs: Vec<Option<LegDevices>>, region_size: Sectors) -> Self {
        Raid1Table {
            legs,
            region_size,
            rebuild: Vec::new(),
            nosync: false,
            max_recovery_rate_kib: None,
        }
    }

    fn validate(&self, len: Sectors) -> std::result::Result<(), String> {
        let r = *self.region_size;
        if self.legs.len() < 2 || self.legs.len() > 64 {
            return Err(format!("raid1 needs 2-64 legs, got {}", self.legs.len()));
        }
        if self.legs.iter().all(Option::is_none) {
            return Err("raid1 needs at least one present leg".into());
        }
        if !r.is_power_of_two() || r > *len || r < (*len >> 21).max(1) {
            return Err(format!(
                "region size {r} must be a power of two within {}..={}",
                (*len >> 21).max(1),
                *len
            ));
        }
        if self.nosync && !self.rebuild.is_empty() {
            return Err("nosync and rebuild are mutually exclusive".into());
        }
        if let Some(i) = self
            .rebuild
            .iter()
            .find(|i| **i >= self.legs.len() || self.legs[**i].is_none())
        {
            return Err(format!("rebuild slot {i} is not a present leg"));
        }
        Ok(())
    }

    /// Same devices and region size; `rebuild`/`nosync` are creation-time
    /// switches and deliberately ignored, so a device still carrying its last
    /// `rebuild i` in the kernel matches the plain table (and is not reloaded,
    /// which would restart a full rebuild).
    pub fn same_layout(&self, other: &Raid1Table) -> bool {
        self.legs == other.legs && self.region_size == other.region_size
    }
}

impl fmt::Display for Raid1Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Option order follows dm-raid's own table output (raid_status,
        // STATUSTYPE_TABLE), so our line and the kernel's compare equal.
        let mut opts = Vec::new();
        if self.nosync {
            opts.push("nosync".to_string());
        }
        for i in &self.rebuild {
            opts.push(format!("rebuild {i}"));
        }
        if let Some(rate) = self.max_recovery_rate_kib {
            opts.push(format!("max_recovery_rate {rate}"));
        }
        opts.push(format!("region_size {}", *self.region_size));
        let opts = opts.join(" ");
        // #raid_params counts chunk_size plus every option token.
        let nparams = 1 + opts.split(' ').count();
        write!(f, "raid1 {nparams} 0 {opts} {}", self.legs.len())?;
        for leg in &self.legs {
            match leg {
                Some(l) => write!(f, " {} {}", l.meta, l.data)?,
                None => write!(f, " - -")?,
            }
        }
        Ok(())
    }
}

fn parse_device(tok: &str) -> std::result::Result<Device, String> {
    tok.parse::<Device>()
        .map_err(|_| format!("{tok:?} is not major:minor"))
}

impl FromStr for Raid1Table {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut t = s.split_whitespace();
        let mut next = |what: &str| t.next().ok_or_else(|| format!("missing {what}"));
        if next("raid type")? != "raid1" {
            return Err("not a raid1 table".into());
        }
        let num = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{what} {v:?} is not a number"))
        };
        let nparams = num(next("#raid_params")?, "#raid_params")? as usize;
        if nparams == 0 {
            return Err("#raid_params is 0 (chunk size missing)".into());
        }
        let mut params = Vec::with_capacity(nparams);
        for _ in 0..nparams {
            params.push(next("raid parameter")?.to_string());
        }
        let mut table = Raid1Table::new(Vec::new(), Sectors(0));
        let mut p = params[1..].iter();
        while let Some(key) = p.next() {
            match key.as_str() {
                "nosync" => table.nosync = true,
                "sync" => {}
                "rebuild" | "region_size" | "write_mostly" | "daemon_sleep"
                | "min_recovery_rate" | "max_recovery_rate" | "max_write_behind" => {
                    let v = p.next().ok_or_else(|| format!("{key} without a value"))?;
                    let v = num(v, key)?;
                    match key.as_str() {
                        "rebuild" => table.rebuild.push(v as usize),
                        "region_size" => table.region_size = Sectors(v),
                        "max_recovery_rate" => table.max_recovery_rate_kib = Some(v),
                        // Not used by VastSky; tolerated so that adoption of a
                        // hand-tuned device reports a mismatch, not a parse error.
                        _ => {}
                    }
                }
                other => return Err(format!("unknown raid1 option {other:?}")),
            }
        }
        let ndevs = num(next("#raid_devs")?, "#raid_devs")? as usize;
        if ndevs > 64 {
            return Err(format!("{ndevs} raid devices is more than dm-raid allows"));
        }
        for _ in 0..ndevs {
            let (m, d) = (next("meta device")?, next("data device")?);
            table.legs.push(match (m, d) {
                ("-", "-") => None,
                ("-", _) | (_, "-") => {
                    return Err("legs without a metadata device are not used by VastSky".into());
                }
                (m, d) => Some(LegDevices {
                    meta: parse_device(m)?,
                    data: parse_device(d)?,
                }),
            });
        }
        if let Some(extra) = t.next() {
            return Err(format!("trailing token {extra:?}"));
        }
        Ok(table)
    }
}

/// One line of a device table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `linear <dev> <offset>`.
    Linear {
        dev: Device,
        offset: Sectors,
    },
    /// `striped <#stripes> <chunk> <dev> <offset>…`.
    Striped {
        chunk: Sectors,
        stripes: Vec<(Device, Sectors)>,
    },
    Raid1(Raid1Table),
}

impl Target {
    pub fn target_type(&self) -> &'static str {
        match self {
            Target::Linear { .. } => "linear",
            Target::Striped { .. } => "striped",
            Target::Raid1(_) => "raid",
        }
    }
    pub fn params(&self) -> String {
        match self {
            Target::Linear { dev, offset } => format!("{dev} {}", **offset),
            Target::Striped { chunk, stripes } => {
                let mut s = format!("{} {}", stripes.len(), **chunk);
                for (d, o) in stripes {
                    s.push_str(&format!(" {d} {}", **o));
                }
                s
            }
            Target::Raid1(r) => r.to_string(),
        }
    }
    /// Whether the kernel's (type, params) for this line describe the same
    /// mapping.
    fn matches(&self, kind: &str, params: &str) -> bool {
        if kind != self.target_type() {
            return false;
        }
        match self {
            Target::Raid1(want) => params
                .parse::<Raid1Table>()
                .is_ok_and(|t| want.same_layout(&t)),
            _ => params
                .split_whitespace()
                .eq(self.params().split_whitespace()),
        }
    }
}

/// `(start, length, target)`, like a dmsetup table line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLine {
    pub start: Sectors,
    pub len: Sectors,
    pub target: Target,
}

impl fmt::Display for TargetLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            *self.start,
            *self.len,
            self.target.target_type(),
            self.target.params()
        )
    }
}

fn validate_table(name: &DevName, lines: &[TargetLine]) -> Result<()> {
    let bad = |reason: String| {
        Err(DmError::InvalidTable {
            name: name.to_string(),
            reason,
        })
    };
    if lines.is_empty() {
        return bad("a table needs at least one line".into());
    }
    let mut at = Sectors(0);
    for l in lines {
        if l.start != at {
            return bad(format!(
                "line at {} leaves a gap or overlap (expected start {})",
                *l.start, *at
            ));
        }
        if *l.len == 0 {
            return bad("zero-length line".into());
        }
        match &l.target {
            Target::Raid1(r) => {
                if let Err(e) = r.validate(l.len) {
                    return bad(e);
                }
            }
            Target::Striped { chunk, stripes } => {
                if stripes.len() < 2 {
                    return bad("striping needs at least two stripes".into());
                }
                let c = **chunk;
                // dm-stripe: chunk ≥ 4 KiB (8 sectors) so it is a multiple of
                // any logical block size; length a multiple of the chunk for
                // each stripe.
                if c < 8
                    || !c.is_power_of_two()
                    || !(*l.len).is_multiple_of(c * stripes.len() as u64)
                {
                    return bad(format!(
                        "stripe chunk {c} must be a power of two ≥ 8 sectors dividing len/stripes ({} / {})",
                        *l.len,
                        stripes.len()
                    ));
                }
            }
            Target::Linear { .. } => {}
        }
        at = Sectors(*at + *l.len);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Typed raid status
// ---------------------------------------------------------------------------

/// Health of one raid leg, from the status health characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegHealth {
    /// `A`: alive and in sync.
    InSync,
    /// `a`: alive, being resynced or recovered.
    Syncing,
    /// `D`: failed; the mirror runs degraded without it.
    Dead,
    /// `-`: the slot was given as `- -`.
    Missing,
}

impl LegHealth {
    fn from_char(c: char) -> Option<Self> {
        Some(match c {
            'A' => LegHealth::InSync,
            'a' => LegHealth::Syncing,
            'D' => LegHealth::Dead,
            '-' => LegHealth::Missing,
            _ => return None,
        })
    }
    pub fn as_char(self) -> char {
        match self {
            LegHealth::InSync => 'A',
            LegHealth::Syncing => 'a',
            LegHealth::Dead => 'D',
            LegHealth::Missing => '-',
        }
    }
}

/// What md is doing with the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    Idle,
    Frozen,
    Resync,
    Recover,
    Check,
    Repair,
    Reshape,
}

impl FromStr for SyncAction {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        Ok(match s {
            "idle" => SyncAction::Idle,
            "frozen" => SyncAction::Frozen,
            "resync" => SyncAction::Resync,
            "recover" => SyncAction::Recover,
            "check" => SyncAction::Check,
            "repair" => SyncAction::Repair,
            "reshape" => SyncAction::Reshape,
            _ => return Err(()),
        })
    }
}

/// Parsed `raid1 <#devs> <health> <synced>/<total> <action> <mismatch>
/// <data_offset> [<journal>]` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidStatus {
    pub legs: Vec<LegHealth>,
    pub synced: Sectors,
    pub total: Sectors,
    pub sync_action: SyncAction,
    /// Only meaningful after a `check`.
    pub mismatch_count: u64,
}

impl RaidStatus {
    /// Every present leg is `A` and md is idle: safe to lose any one leg.
    pub fn is_in_sync(&self) -> bool {
        self.sync_action == SyncAction::Idle && self.legs.iter().all(|h| *h == LegHealth::InSync)
    }
    /// Slots whose leg failed.
    pub fn dead_legs(&self) -> Vec<usize> {
        self.legs
            .iter()
            .enumerate()
            .filter(|(_, h)| **h == LegHealth::Dead)
            .map(|(i, _)| i)
            .collect()
    }
    /// Resync/recovery progress in 0.0..=1.0.
    pub fn sync_ratio(&self) -> f64 {
        if *self.total == 0 {
            1.0
        } else {
            *self.synced as f64 / *self.total as f64
        }
    }
    pub fn health_string(&self) -> String {
        self.legs.iter().map(|h| h.as_char()).collect()
    }
}

impl fmt::Display for RaidStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} {:?} mismatch={}",
            self.health_string(),
            *self.synced,
            *self.total,
            self.sync_action,
            self.mismatch_count
        )
    }
}

impl FromStr for RaidStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t: Vec<&str> = s.split_whitespace().collect();
        if t.len() < 6 {
            return Err(format!("{} fields, expected at least 6", t.len()));
        }
        if t[0] != "raid1" {
            return Err(format!("raid type {:?}, expected raid1", t[0]));
        }
        let ndevs: usize = t[1].parse().map_err(|_| "bad #devs".to_string())?;
        let legs = t[2]
            .chars()
            .map(|c| LegHealth::from_char(c).ok_or_else(|| format!("unknown health char {c:?}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if legs.len() != ndevs {
            return Err(format!("{} health chars for {ndevs} devices", legs.len()));
        }
        let (a, b) = t[3].split_once('/').ok_or("sync ratio without '/'")?;
        let synced = a.parse::<u64>().map_err(|_| "bad synced count")?;
        let total = b.parse::<u64>().map_err(|_| "bad total count")?;
        let sync_action = t[4]
            .parse()
            .map_err(|_| format!("unknown sync action {:?}", t[4]))?;
        let mismatch_count = t[5].parse().map_err(|_| "bad mismatch count")?;
        Ok(RaidStatus {
            legs,
            synced: Sectors(synced),
            total: Sectors(total),
            sync_action,
            mismatch_count,
        })
    }
}

// ---------------------------------------------------------------------------
// The DM context and the ensure_* operations
// ---------------------------------------------------------------------------

/// A created or adopted device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedDevice {
    pub name: DevName,
    pub device: Device,
    /// `/dev/mapper/<name>`, created by us.
    pub path: PathBuf,
    /// False when an existing device with the same table was adopted.
    pub created: bool,
}

/// A leg: the meta and data devices carved from one imported chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub meta: MappedDevice,
    pub data: MappedDevice,
}

impl Leg {
    pub fn devices(&self) -> LegDevices {
        LegDevices {
            meta: self.meta.device,
            data: self.data.device,
        }
    }
}

/// How a leg is carved from its block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegLayout {
    /// Where the chunk starts on the parent device: 0 for an imported
    /// chunk (the NBD device is the chunk), the chunk's offset for a chunk
    /// on a local disk mapped directly.
    pub start: Sectors,
    /// The metadata area at the front (superblock at 0, bitmap at 4 KiB).
    pub meta_size: Sectors,
    /// The data area right after it.
    pub data_size: Sectors,
}

impl LegLayout {
    /// 4 MiB of metadata, as the lab recipe and LVM use.
    pub const DEFAULT_META: Sectors = Sectors(8192);

    /// Splits a chunk of `chunk_size` into the default meta area and the rest.
    pub fn for_chunk(chunk_size: Sectors) -> Result<Self> {
        Self::with_meta(chunk_size, Self::DEFAULT_META)
    }
    pub fn with_meta(chunk_size: Sectors, meta_size: Sectors) -> Result<Self> {
        // ≥ 8 KiB: superblock (4 KiB) plus at least one bitmap page.
        if *meta_size < 16 || *chunk_size <= *meta_size {
            return Err(DmError::InvalidTable {
                name: "leg".into(),
                reason: format!(
                    "chunk of {} sectors cannot hold a {}-sector metadata area and data",
                    *chunk_size, *meta_size
                ),
            });
        }
        Ok(LegLayout {
            start: Sectors(0),
            meta_size,
            data_size: Sectors(*chunk_size - *meta_size),
        })
    }

    /// The same layout for a chunk that starts at `start` on its parent.
    pub fn at(self, start: Sectors) -> Self {
        LegLayout { start, ..self }
    }
}

/// The layout of the volume device over its mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeLayout {
    /// Concatenation, in order.
    Linear(Vec<(Device, Sectors)>),
    /// Striping over equal-sized mirrors with the given chunk.
    Striped {
        chunk: Sectors,
        members: Vec<(Device, Sectors)>,
    },
}

impl VolumeLayout {
    fn lines(&self) -> Vec<TargetLine> {
        match self {
            VolumeLayout::Linear(parts) => {
                let mut at = Sectors(0);
                parts
                    .iter()
                    .map(|(dev, len)| {
                        let l = TargetLine {
                            start: at,
                            len: *len,
                            target: Target::Linear {
                                dev: *dev,
                                offset: Sectors(0),
                            },
                        };
                        at = Sectors(*at + **len);
                        l
                    })
                    .collect()
            }
            VolumeLayout::Striped { chunk, members } => {
                // Every member contributes the size of the smallest, rounded
                // down to a whole chunk.
                let per = members.iter().map(|(_, l)| **l).min().unwrap_or(0);
                let per = if **chunk == 0 { 0 } else { per - per % **chunk };
                vec![TargetLine {
                    start: Sectors(0),
                    len: Sectors(per * members.len() as u64),
                    target: Target::Striped {
                        chunk: *chunk,
                        stripes: members.iter().map(|(d, _)| (*d, Sectors(0))).collect(),
                    },
                }]
            }
        }
    }
}

/// The device-mapper context of the head's datapath.
///
/// Every method is a blocking ioctl (and `wait_raid1_in_sync` sleeps): from
/// async code call them in `spawn_blocking`. Operations on one volume must be
/// serialised by the caller (the agent owns each volume in one task); the
/// kernel serialises single ioctls, not our read-compare-load sequences.
pub struct Datapath {
    dm: DM,
    mapper_dir: PathBuf,
}

fn dm_err(op: &'static str, name: &DevName) -> impl FnOnce(RawDmError) -> DmError + use<> {
    let name = name.to_string();
    move |source| DmError::Ioctl { op, name, source }
}

/// ENXIO from DM_DEV_STATUS/TABLE_STATUS means "no such device".
fn is_no_such_device(e: &RawDmError) -> bool {
    matches!(e, RawDmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) if **errno as i32 == libc::ENXIO)
}

impl Datapath {
    /// Opens `/dev/mapper/control`.
    pub fn new() -> Result<Self> {
        let dm = DM::new().map_err(|e| DmError::Open(e.to_string()))?;
        Ok(Datapath {
            dm,
            mapper_dir: PathBuf::from("/dev/mapper"),
        })
    }

    /// The (major, minor, patch) version of the kernel's DM ioctl interface.
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        self.dm.version().map_err(|source| DmError::Ioctl {
            op: "version",
            name: "control".into(),
            source,
        })
    }

    fn node_path(&self, name: &DevName) -> PathBuf {
        self.mapper_dir.join(name.as_str())
    }

    /// The device number of `name`, or `None` if it does not exist.
    pub fn lookup(&self, name: &DevName) -> Result<Option<Device>> {
        match self.dm.device_info(&DevId::Name(name.dm_name())) {
            Ok(info) => Ok(Some(info.device())),
            Err(e) if is_no_such_device(&e) => Ok(None),
            Err(e) => Err(dm_err("info", name)(e)),
        }
    }

    /// How many times `name` is held open (the kernel's open count: a VM's
    /// blkback, a mounted filesystem, a process with the node open), or
    /// `None` if it does not exist. A device held open cannot be removed.
    pub fn open_count(&self, name: &DevName) -> Result<Option<i32>> {
        match self.dm.device_info(&DevId::Name(name.dm_name())) {
            Ok(info) => Ok(Some(info.open_count())),
            Err(e) if is_no_such_device(&e) => Ok(None),
            Err(e) => Err(dm_err("info", name)(e)),
        }
    }

    /// The active table of `name` as (start, len, type, params).
    pub fn table(&self, name: &DevName) -> Result<Vec<(u64, u64, String, String)>> {
        let opts = DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE);
        match self.dm.table_status(&DevId::Name(name.dm_name()), opts) {
            Ok((_, t)) => Ok(t),
            Err(e) if is_no_such_device(&e) => Err(DmError::NotFound {
                name: name.to_string(),
            }),
            Err(e) => Err(dm_err("table", name)(e)),
        }
    }

    fn raw_status(&self, name: &DevName) -> Result<Vec<(u64, u64, String, String)>> {
        // NOFLUSH: a status read must never wait for I/O stuck on a dead leg.
        let opts = DmOptions::default().set_flags(DmFlags::DM_NOFLUSH);
        match self.dm.table_status(&DevId::Name(name.dm_name()), opts) {
            Ok((_, t)) => Ok(t),
            Err(e) if is_no_such_device(&e) => Err(DmError::NotFound {
                name: name.to_string(),
            }),
            Err(e) => Err(dm_err("status", name)(e)),
        }
    }

    /// Creates `name` with `lines`, or adopts it if it exists with the same
    /// table. What a crashed run may have left is completed: a device without
    /// an active table gets `lines` loaded, and a suspended device is resumed
    /// first (a crash between suspend and resume of a leg replacement would
    /// otherwise leave every I/O to the volume hanging). On failure a device
    /// created here is removed again.
    pub fn ensure_device(&self, name: &DevName, lines: &[TargetLine]) -> Result<MappedDevice> {
        validate_table(name, lines)?;
        let id = DevId::Name(name.dm_name());
        if let Some(mut info) = self.info(name)? {
            if !info.flags().contains(DmFlags::DM_ACTIVE_PRESENT) {
                tracing::warn!(%name, "device exists without an active table; loading it");
                self.load_and_resume(name, lines)?;
                let path = self.ensure_node(name, info.device())?;
                return Ok(MappedDevice {
                    name: name.clone(),
                    device: info.device(),
                    path,
                    created: true,
                });
            }
            if info.flags().contains(DmFlags::DM_SUSPEND) {
                tracing::warn!(%name, "device was left suspended; resuming it");
                info = self
                    .dm
                    .device_suspend(&id, DmOptions::default())
                    .map_err(dm_err("resume", name))?;
            }
            let found = self.table(name)?;
            if !table_matches(lines, &found) {
                return Err(DmError::TableMismatch {
                    name: name.to_string(),
                    found: format_raw_table(&found),
                    wanted: lines
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            let device = info.device();
            let path = self.ensure_node(name, device)?;
            tracing::debug!(%name, %device, "adopted existing device");
            return Ok(MappedDevice {
                name: name.clone(),
                device,
                path,
                created: false,
            });
        }
        let uuid = format!("{UUID_PREFIX}{}", name.as_str());
        let uuid = DmUuid::new(&uuid).map_err(|_| DmError::InvalidName {
            name: uuid.clone(),
            reason: "not a valid device-mapper UUID",
        })?;
        let info = self
            .dm
            .device_create(name.dm_name(), Some(uuid), DmOptions::default())
            .map_err(dm_err("create", name))?;
        let device = info.device();
        let result = self
            .load_and_resume(name, lines)
            .and_then(|()| self.ensure_node(name, device));
        match result {
            Ok(path) => {
                tracing::info!(%name, %device, "created device");
                Ok(MappedDevice {
                    name: name.clone(),
                    device,
                    path,
                    created: true,
                })
            }
            Err(e) => {
                // Roll back so a retry starts clean.
                if let Err(re) = self.dm.device_remove(&id, DmOptions::default()) {
                    tracing::error!(%name, error = %re, "rollback of a half-created device failed");
                }
                let _ = std::fs::remove_file(self.node_path(name));
                Err(e)
            }
        }
    }

    fn info(&self, name: &DevName) -> Result<Option<devicemapper::DeviceInfo>> {
        match self.dm.device_info(&DevId::Name(name.dm_name())) {
            Ok(info) => Ok(Some(info)),
            Err(e) if is_no_such_device(&e) => Ok(None),
            Err(e) => Err(dm_err("info", name)(e)),
        }
    }

    fn load_and_resume(&self, name: &DevName, lines: &[TargetLine]) -> Result<()> {
        let id = DevId::Name(name.dm_name());
        let raw: Vec<(u64, u64, String, String)> = lines
            .iter()
            .map(|l| {
                (
                    *l.start,
                    *l.len,
                    l.target.target_type().to_string(),
                    l.target.params(),
                )
            })
            .collect();
        self.dm
            .table_load(&id, &raw, DmOptions::default())
            .map_err(dm_err("table load", name))?;
        // Resume = activate the loaded table.
        self.dm
            .device_suspend(&id, DmOptions::default())
            .map_err(dm_err("resume", name))?;
        Ok(())
    }

    /// Creates `/dev/mapper/<name>` as a block node for `device`, replacing a
    /// stale node or a regular file (a write to a missing node creates one on
    /// devtmpfs-less systems).
    fn ensure_node(&self, name: &DevName, device: Device) -> Result<PathBuf> {
        let path = self.node_path(name);
        let io = |source| DmError::Io {
            path: path.clone(),
            source,
        };
        let want = libc::makedev(device.major, device.minor);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_block_device() && m.rdev() == want => return Ok(path),
            Ok(_) => std::fs::remove_file(&path).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: mknod with a valid NUL-terminated path.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, want) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // udev may have raced us to it; accept a correct node.
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && std::fs::symlink_metadata(&path)
                    .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == want)
            {
                return Ok(path);
            }
            return Err(io(e));
        }
        Ok(path)
    }

    /// Carves a leg (meta + data linear devices) from `parent`.
    ///
    /// With `new_member`, the first 4 KiB of a *newly created* meta device
    /// is zeroed so dm-raid treats the leg as a new member to rebuild (an old
    /// superblock from a reused chunk would otherwise be trusted). Without
    /// it (re-assembling a volume's existing legs, e.g. after a detach or a
    /// reboot) the superblock and write-intent bitmap are kept, so dm-raid
    /// knows the legs are in sync and resyncs only what the bitmap says. An
    /// adopted meta device is never touched: it belongs to a running mirror.
    pub fn ensure_leg(
        &self,
        names: &LegNames,
        parent: Device,
        layout: LegLayout,
        new_member: bool,
    ) -> Result<Leg> {
        let meta_line = [TargetLine {
            start: Sectors(0),
            len: layout.meta_size,
            target: Target::Linear {
                dev: parent,
                offset: layout.start,
            },
        }];
        let data_line = [TargetLine {
            start: Sectors(0),
            len: layout.data_size,
            target: Target::Linear {
                dev: parent,
                offset: Sectors(*layout.start + *layout.meta_size),
            },
        }];
        let meta = self.ensure_device(&names.meta, &meta_line)?;
        let zeroed = if meta.created && new_member {
            zero_head(&meta.path)
        } else {
            Ok(())
        };
        if let Err(e) = zeroed {
            let _ = self.remove(&names.meta);
            return Err(e);
        }
        let data = match self.ensure_device(&names.data, &data_line) {
            Ok(d) => d,
            Err(e) => {
                if meta.created {
                    let _ = self.remove(&names.meta);
                }
                return Err(e);
            }
        };
        Ok(Leg { meta, data })
    }

    /// Creates or adopts a raid1 device of `len` sectors (≤ every data leg).
    pub fn ensure_raid1(
        &self,
        name: &DevName,
        len: Sectors,
        table: &Raid1Table,
    ) -> Result<MappedDevice> {
        self.ensure_device(
            name,
            &[TargetLine {
                start: Sectors(0),
                len,
                target: Target::Raid1(table.clone()),
            }],
        )
    }

    /// Creates or adopts the volume device.
    pub fn ensure_volume(&self, name: &DevName, layout: &VolumeLayout) -> Result<MappedDevice> {
        self.ensure_device(name, &layout.lines())
    }

    /// The current raid1 table of a running mirror.
    pub fn raid1_table(&self, name: &DevName) -> Result<(Sectors, Raid1Table)> {
        let t = self.table(name)?;
        match t.as_slice() {
            [(0, len, kind, params)] if kind == "raid" => {
                let table = params.parse::<Raid1Table>().map_err(|e| DmError::Parse {
                    name: name.to_string(),
                    what: "raid1 table",
                    text: format!("{params} ({e})"),
                })?;
                Ok((Sectors(*len), table))
            }
            _ => Err(DmError::Parse {
                name: name.to_string(),
                what: "raid1 table",
                text: format_raw_table(&t),
            }),
        }
    }

    /// Puts `new` into slot `index` of a running raid1 and starts its
    /// rebuild: load the table with `rebuild <index>`, suspend, resume. The
    /// volume device above is untouched (its table names the raid's
    /// major:minor, which survives the reload). Returns false if the slot
    /// already holds `new` (idempotent retry).
    ///
    /// Suspend flushes in-flight I/O: the NBD timeouts must be finite so a
    /// dead leg cannot hang it.
    pub fn replace_raid1_leg(&self, name: &DevName, index: usize, new: LegDevices) -> Result<bool> {
        let (len, mut table) = self.raid1_table(name)?;
        if index >= table.legs.len() {
            return Err(DmError::InvalidTable {
                name: name.to_string(),
                reason: format!(
                    "slot {index} out of range: the mirror has {} legs",
                    table.legs.len()
                ),
            });
        }
        if table.legs[index] == Some(new) {
            return Ok(false);
        }
        table.legs[index] = Some(new);
        // Only the new slot is rebuilt; an older `rebuild` must not be
        // repeated (it would restart that leg's full rebuild).
        table.rebuild = vec![index];
        table.nosync = false;
        self.reload_raid1_table(name, len, table)?;
        tracing::info!(%name, index, "replaced raid1 leg; rebuild started");
        Ok(true)
    }

    /// Reloads a running raid1 with its own table (no `rebuild`, no
    /// `nosync`), so dm-raid reads every leg's superblock again. A leg it
    /// had failed whose device works again (its NBD import reconnected)
    /// comes back as a returning member: md resyncs only the regions its
    /// write-intent bitmap marks dirty, not the whole leg.
    pub fn reload_raid1(&self, name: &DevName) -> Result<()> {
        let (len, mut table) = self.raid1_table(name)?;
        table.rebuild.clear();
        table.nosync = false;
        self.reload_raid1_table(name, len, table)?;
        tracing::info!(%name, "reloaded raid1 table; returning legs are re-added");
        Ok(())
    }

    /// Reloads a running raid1 with another set of legs: more (a new leg
    /// listed in `rebuild` is synced from the others while the mirror keeps
    /// serving), fewer (a leg dropped from the table leaves the mirror), or
    /// the same ones in other slots (dm-raid lets raid1 legs change
    /// position). This is how a leg moves without the mirror ever having
    /// fewer in-sync copies: add the new leg, wait until it is in sync, then
    /// drop the old one. The region size and options are kept.
    pub fn reshape_raid1(
        &self,
        name: &DevName,
        legs: Vec<Option<LegDevices>>,
        rebuild: Vec<usize>,
    ) -> Result<()> {
        let (len, mut table) = self.raid1_table(name)?;
        table.legs = legs;
        table.rebuild = rebuild;
        table.nosync = false;
        self.reload_raid1_table(name, len, table)?;
        tracing::info!(%name, "reshaped raid1");
        Ok(())
    }

    /// Loads `table` as the inactive table of `name`, then suspends and
    /// resumes to swap it in.
    fn reload_raid1_table(&self, name: &DevName, len: Sectors, table: Raid1Table) -> Result<()> {
        let line = [TargetLine {
            start: Sectors(0),
            len,
            target: Target::Raid1(table),
        }];
        validate_table(name, &line)?;
        let raw: Vec<(u64, u64, String, String)> = line
            .iter()
            .map(|l| {
                (
                    *l.start,
                    *l.len,
                    l.target.target_type().to_string(),
                    l.target.params(),
                )
            })
            .collect();
        let id = DevId::Name(name.dm_name());
        self.dm
            .table_load(&id, &raw, DmOptions::default())
            .map_err(dm_err("table load", name))?;
        if let Err(e) = self
            .dm
            .device_suspend(&id, DmOptions::default().set_flags(DmFlags::DM_SUSPEND))
        {
            // Drop the inactive table so a later resume cannot swap it in.
            let _ = self.dm.table_clear(&id);
            return Err(dm_err("suspend", name)(e));
        }
        self.dm
            .device_suspend(&id, DmOptions::default())
            .map_err(dm_err("resume", name))?;
        Ok(())
    }

    /// Parsed status of a raid1 device.
    pub fn raid1_status(&self, name: &DevName) -> Result<RaidStatus> {
        let t = self.raw_status(name)?;
        match t.as_slice() {
            [(_, _, kind, params)] if kind == "raid" => {
                params.parse::<RaidStatus>().map_err(|e| DmError::Parse {
                    name: name.to_string(),
                    what: "raid status",
                    text: format!("{params} ({e})"),
                })
            }
            _ => Err(DmError::Parse {
                name: name.to_string(),
                what: "raid status",
                text: format_raw_table(&t),
            }),
        }
    }

    /// Polls until every leg is `A` and md is idle, or `timeout` passes.
    pub fn wait_raid1_in_sync(&self, name: &DevName, timeout: Duration) -> Result<RaidStatus> {
        let start = Instant::now();
        loop {
            let s = self.raid1_status(name)?;
            if s.is_in_sync() {
                return Ok(s);
            }
            if start.elapsed() >= timeout {
                return Err(DmError::Timeout {
                    name: name.to_string(),
                    wanted: "in sync",
                    waited: timeout,
                    last: s.to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends a message (`check`, `repair`, `idle`, …) to a raid device.
    pub fn raid1_message(&self, name: &DevName, msg: &str) -> Result<()> {
        self.dm
            .target_msg(&DevId::Name(name.dm_name()), None, msg)
            .map_err(dm_err("message", name))?;
        Ok(())
    }

    /// Removes a device and its node. Missing is success (idempotent).
    pub fn remove(&self, name: &DevName) -> Result<()> {
        match self
            .dm
            .device_remove(&DevId::Name(name.dm_name()), DmOptions::default())
        {
            Ok(_) => {}
            Err(e) if is_no_such_device(&e) => {}
            Err(e) => return Err(dm_err("remove", name)(e)),
        }
        match std::fs::remove_file(self.node_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DmError::Io {
                path: self.node_path(name),
                source,
            }),
        }
    }

    /// All our devices (`vsky-…`), sorted by name.
    pub fn list(&self) -> Result<Vec<(DevName, Device)>> {
        let all = self.dm.list_devices().map_err(|source| DmError::Ioctl {
            op: "list",
            name: "all".into(),
            source,
        })?;
        let mut out: Vec<(DevName, Device)> = all
            .into_iter()
            .filter_map(|(n, dev, _)| DevName::new(n.to_string()).ok().map(|n| (n, dev)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes every device of `volume`, top first, then the mirrors, then
    /// the legs, so no device is removed while another still maps it.
    /// Returns the removed names. The NBD devices underneath are the
    /// caller's (disconnect them afterwards).
    pub fn teardown_volume(&self, volume: &VolumeName) -> Result<Vec<DevName>> {
        let top = volume.top();
        let prefix = format!("{}+", top.as_str());
        let mine: Vec<DevName> = self
            .list()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| *n == top || n.as_str().starts_with(&prefix))
            .collect();
        let rank = |n: &DevName| {
            if *n == top {
                0
            } else if n.as_str().ends_with("+meta") || n.as_str().ends_with("+data") {
                3
            } else if n.as_str().starts_with(&format!("{prefix}c")) {
                // Stripe columns sit between the top and the mirrors.
                1
            } else {
                2
            }
        };
        let mut ordered = mine;
        ordered.sort_by_key(|n| (rank(n), n.clone()));
        for n in &ordered {
            self.remove(n)?;
        }
        Ok(ordered)
    }
}

fn table_matches(want: &[TargetLine], found: &[(u64, u64, String, String)]) -> bool {
    want.len() == found.len()
        && want
            .iter()
            .zip(found)
            .all(|(w, (s, l, k, p))| *w.start == *s && *w.len == *l && w.target.matches(k, p))
}

fn format_raw_table(t: &[(u64, u64, String, String)]) -> String {
    if t.is_empty() {
        return "(no table)".into();
    }
    t.iter()
        .map(|(s, l, k, p)| format!("{s} {l} {k} {p}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Writes 4 KiB of zeros at the start of a block device and flushes it.
/// dm-raid's superblock magic ("DmRd", little endian), at the start of a
/// leg's metadata device.
const DM_RAID_MAGIC: u32 = 0x6452_6D44;

/// Whether a leg's metadata device holds a dm-raid superblock: a leg that
/// was part of a mirror has one; a chunk filled by a server-to-server copy
/// (or never used) starts zeroed. A mirror assembled from legs with and
/// without one must list the latter under `rebuild`, or dm-raid refuses the
/// table ("new device injected into existing raid set"). The device is
/// read directly (O_DIRECT), so no stale page cache answers.
pub fn has_raid_superblock(meta: &Path) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DmError::Io {
        path: meta.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(meta)
        .map_err(io)?;
    // O_DIRECT wants a buffer aligned to the logical block size.
    #[repr(C, align(4096))]
    struct Block([u8; 4096]);
    let mut block = Block([0; 4096]);
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut block.0, 0).map_err(io)?;
    let magic = u32::from_le_bytes(block.0[..4].try_into().expect("4 bytes"));
    Ok(magic == DM_RAID_MAGIC)
}

fn zero_head(path: &Path) -> Result<()> {
    use std::io::Write;
    let io = |source| DmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&[0u8; 4096]).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    fn leg(a: u32) -> Option<LegDevices> {
        Some(LegDevices {
            meta: dev(253, a),
            data: dev(253, a + 1),
        })
    }

    /// The raid1 line counts its parameters and lists legs, with `- -` for
    /// a missing one; the rebuild form adds two parameters.
    #[test]
    fn raid1_table_formats_like_dmsetup() {
        let t = Raid1Table::new(vec![leg(0), leg(2)], Sectors(1024));
        assert_eq!(
            t.to_string(),
            "raid1 3 0 region_size 1024 2 253:0 253:1 253:2 253:3"
        );
        let mut r = Raid1Table::new(vec![leg(0), None, leg(4)], Sectors(8192));
        r.rebuild = vec![2];
        assert_eq!(
            r.to_string(),
            "raid1 5 0 rebuild 2 region_size 8192 3 253:0 253:1 - - 253:4 253:5"
        );
        let mut n = Raid1Table::new(vec![leg(0), leg(2)], Sectors(1024));
        n.nosync = true;
        assert_eq!(
            n.to_string(),
            "raid1 4 0 nosync region_size 1024 2 253:0 253:1 253:2 253:3"
        );
        let line = TargetLine {
            start: Sectors(0),
            len: Sectors(131072),
            target: Target::Raid1(t),
        };
        assert_eq!(
            line.to_string(),
            "0 131072 raid raid1 3 0 region_size 1024 2 253:0 253:1 253:2 253:3"
        );
    }

    /// What we format parses back to the same value, and the kernel's own
    /// table (which keeps `rebuild`) still counts as the same layout.
    #[test]
    fn raid1_table_round_trips_and_ignores_rebuild_when_comparing() {
        let mut r = Raid1Table::new(vec![leg(0), None, leg(4)], Sectors(8192));
        r.rebuild = vec![2];
        let parsed: Raid1Table = r.to_string().parse().unwrap();
        assert_eq!(parsed, r);
        let plain = Raid1Table::new(vec![leg(0), None, leg(4)], Sectors(8192));
        assert!(plain.same_layout(&parsed));
        assert!(Target::Raid1(plain.clone()).matches("raid", &r.to_string()));
        assert!(!Target::Raid1(plain.clone()).matches(
            "raid",
            "raid1 3 0 region_size 4096 3 253:0 253:1 - - 253:4 253:5"
        ));
        assert!(!Target::Raid1(plain).matches("linear", "253:0 0"));
    }

    /// The recovery rate goes where dm-raid prints it (after `rebuild`,
    /// before `region_size`), parses back, and does not change the layout.
    #[test]
    fn raid1_table_carries_the_recovery_rate() {
        let mut r = Raid1Table::new(vec![leg(0), leg(2)], Sectors(1024));
        r.rebuild = vec![1];
        r.max_recovery_rate_kib = Some(20480);
        assert_eq!(
            r.to_string(),
            "raid1 7 0 rebuild 1 max_recovery_rate 20480 region_size 1024 2 253:0 253:1 253:2 253:3"
        );
        let parsed: Raid1Table = r.to_string().parse().unwrap();
        assert_eq!(parsed, r);
        assert!(Raid1Table::new(vec![leg(0), leg(2)], Sectors(1024)).same_layout(&parsed));
    }

    /// Garbage from the kernel (or a hand-made device) is an error, not a panic.
    #[test]
    fn raid1_table_parse_rejects_garbage() {
        for bad in [
            "",
            "raid5 3 0 region_size 1024 2 1:1 1:2 1:3 1:4",
            "raid1 9 0 region_size",
            "raid1 3 0 region_size x 2 1:1 1:2 1:3 1:4",
            "raid1 3 0 region_size 1024 2 1:1 1:2",
            "raid1 3 0 region_size 1024 2 1:1 - 1:3 1:4",
            "raid1 3 0 region_size 1024 2 1:1 1:2 1:3 1:4 extra",
            "raid1 1 0 bogus 1 1:1 1:2",
            "raid1 3 0 region_size 1024 99999999999 1:1",
            "raid1 0",
        ] {
            assert!(bad.parse::<Raid1Table>().is_err(), "{bad:?} parsed");
        }
    }

    /// Table validation catches what dm-raid and dm-stripe would reject, with
    /// a reason, before any ioctl.
    #[test]
    fn table_validation() {
        let name = DevName::new("vsky-t").unwrap();
        let raid = |legs, region| {
            vec![TargetLine {
                start: Sectors(0),
                len: Sectors(131072),
                target: Target::Raid1(Raid1Table::new(legs, Sectors(region))),
            }]
        };
        assert!(validate_table(&name, &raid(vec![leg(0), leg(2)], 1024)).is_ok());
        assert!(validate_table(&name, &raid(vec![leg(0), leg(2)], 1000)).is_err()); // not a power of two
        assert!(validate_table(&name, &raid(vec![leg(0)], 1024)).is_err()); // one leg
        assert!(validate_table(&name, &raid(vec![None, None], 1024)).is_err());
        let mut r = Raid1Table::new(vec![leg(0), None], Sectors(1024));
        r.rebuild = vec![1];
        assert!(
            validate_table(
                &name,
                &[TargetLine {
                    start: Sectors(0),
                    len: Sectors(2048),
                    target: Target::Raid1(r)
                }]
            )
            .is_err()
        );
        let gap = vec![
            TargetLine {
                start: Sectors(0),
                len: Sectors(8),
                target: Target::Linear {
                    dev: dev(1, 1),
                    offset: Sectors(0),
                },
            },
            TargetLine {
                start: Sectors(16),
                len: Sectors(8),
                target: Target::Linear {
                    dev: dev(1, 1),
                    offset: Sectors(0),
                },
            },
        ];
        assert!(validate_table(&name, &gap).is_err());
        assert!(validate_table(&name, &[]).is_err());
        let striped = |len, chunk| {
            vec![TargetLine {
                start: Sectors(0),
                len: Sectors(len),
                target: Target::Striped {
                    chunk: Sectors(chunk),
                    stripes: vec![(dev(1, 1), Sectors(0)), (dev(1, 2), Sectors(0))],
                },
            }]
        };
        assert!(validate_table(&name, &striped(4096, 128)).is_ok());
        assert!(validate_table(&name, &striped(4000, 128)).is_err());
        assert!(validate_table(&name, &striped(4096, 4)).is_err());
    }

    /// Linear concatenation and striping produce dmsetup-style lines, and
    /// the kernel's normalised output of the same table matches.
    #[test]
    fn volume_layout_lines() {
        let lin = VolumeLayout::Linear(vec![
            (dev(253, 4), Sectors(1000)),
            (dev(253, 9), Sectors(500)),
        ])
        .lines();
        let s: Vec<String> = lin.iter().map(|l| l.to_string()).collect();
        assert_eq!(s, ["0 1000 linear 253:4 0", "1000 500 linear 253:9 0"]);
        assert!(table_matches(
            &lin,
            &[
                (0, 1000, "linear".into(), "253:4 0".into()),
                (1000, 500, "linear".into(), "253:9  0".into())
            ]
        ));
        assert!(!table_matches(
            &lin,
            &[(0, 1000, "linear".into(), "253:4 0".into())]
        ));
        assert!(!table_matches(
            &lin,
            &[
                (0, 1000, "linear".into(), "253:4 8".into()),
                (1000, 500, "linear".into(), "253:9 0".into())
            ]
        ));
        let st = VolumeLayout::Striped {
            chunk: Sectors(128),
            members: vec![(dev(253, 4), Sectors(1000)), (dev(253, 9), Sectors(1100))],
        }
        .lines();
        assert_eq!(st[0].to_string(), "0 1792 striped 2 128 253:4 0 253:9 0");
    }

    /// Status lines from dm-raid parse into health, progress and action.
    #[test]
    fn raid_status_parses() {
        let s: RaidStatus = "raid1 2 AA 131072/131072 idle 0 0 -".parse().unwrap();
        assert!(s.is_in_sync());
        assert_eq!(s.sync_ratio(), 1.0);
        let d: RaidStatus = "raid1 2 AD 131072/131072 idle 0 0 -".parse().unwrap();
        assert_eq!(d.legs, vec![LegHealth::InSync, LegHealth::Dead]);
        assert_eq!(d.dead_legs(), vec![1]);
        assert!(!d.is_in_sync());
        let r: RaidStatus = "raid1 3 Aa- 65536/131072 recover 0 0 -".parse().unwrap();
        assert_eq!(r.sync_action, SyncAction::Recover);
        assert_eq!(r.sync_ratio(), 0.5);
        assert_eq!(r.health_string(), "Aa-");
        // Older kernels print no journal field.
        let o: RaidStatus = "raid1 2 aa 0/131072 resync 7 0".parse().unwrap();
        assert_eq!((o.sync_action, o.mismatch_count), (SyncAction::Resync, 7));
        for bad in [
            "",
            "raid1 2 AA",
            "raid1 2 AX 1/1 idle 0 0 -",
            "raid1 3 AA 1/1 idle 0 0 -",
            "raid1 2 AA 1-1 idle 0 0 -",
            "raid1 2 AA 1/1 dancing 0 0 -",
            "raid5 2 AA 1/1 idle 0 0 -",
        ] {
            assert!(bad.parse::<RaidStatus>().is_err(), "{bad:?} parsed");
        }
    }

    /// Names are validated and derived consistently.
    #[test]
    fn names() {
        let v = VolumeName::new("vm42.disk0").unwrap();
        assert_eq!(v.top().as_str(), "vsky-vm42.disk0");
        assert_eq!(v.raid(1).as_str(), "vsky-vm42.disk0+r1");
        let l = v.leg(1, "c17").unwrap();
        assert_eq!(l.meta.as_str(), "vsky-vm42.disk0+r1+c17+meta");
        assert_eq!(l.data.as_str(), "vsky-vm42.disk0+r1+c17+data");
        // Dashes are allowed in volume names and cannot collide with parts.
        let dashed = VolumeName::new("a-r0").unwrap();
        assert_ne!(dashed.top(), VolumeName::new("a").unwrap().raid(0));
        assert!(VolumeName::new("a+b").is_err());
        assert!(VolumeName::new("").is_err());
        assert!(VolumeName::new("x".repeat(65)).is_err());
        assert!(v.leg(0, "bad tag").is_err());
        assert!(DevName::new("other").is_err());
        assert!(DevName::new("vsky-ä").is_err());
        assert_eq!(
            DevName::new("vsky-x").unwrap().node_path(),
            Path::new("/dev/mapper/vsky-x")
        );
    }

    /// Leg layouts keep room for metadata and data.
    #[test]
    fn leg_layout() {
        let l = LegLayout::for_chunk(Sectors(139264)).unwrap();
        assert_eq!((l.meta_size, l.data_size), (Sectors(8192), Sectors(131072)));
        assert!(LegLayout::for_chunk(Sectors(8192)).is_err());
        assert!(LegLayout::with_meta(Sectors(100), Sectors(8)).is_err());
    }
}
