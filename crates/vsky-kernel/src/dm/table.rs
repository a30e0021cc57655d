//! Typed device-mapper table lines: the raid1 (top and base form), linear,
//! striped, thin-pool and thin (`thin.rs`) targets we load, formatted
//! exactly as the kernel prints them back (so a read-back table compares
//! equal), parsed from the kernel's text, and validated before any ioctl.

use std::fmt;
use std::str::FromStr;

use super::names::DevName;
use super::thin::{ThinPoolTable, ThinTable};
use super::{Device, DmError, Result, Sectors};

/// The device numbers of one raid1 leg, as used in the raid table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegDevices {
    pub meta: Device,
    pub data: Device,
}

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

/// How far a raid table line the kernel prints back can be trusted.
///
/// dm-raid before 1.15.1 (Linux < 5.6; XCP-ng's 4.19 ships 1.14.0) prints a
/// table that carries `rebuild` with a wrong `#raid_params`: each rebuild
/// pair is counted twice (once per rebuild disk, once through the
/// `rebuild` constructor flag), so our `raid1 5 0 rebuild 1 region_size 2048
/// 2 …` comes back as `raid1 7 0 rebuild 1 region_size 2048 2 …`. It also
/// prints the rebuild index from the md member's `raid_disk`, which is not
/// set yet at that point, so the index itself may be wrong or missing.
/// (docs/kernel-floor.md, B10.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaidTableReadback {
    /// dm-raid ≥ 1.15.1: the `rebuild` indexes are the ones we loaded.
    Exact,
    /// dm-raid < 1.15.1: `rebuild` values are not trusted and dropped.
    UntrustedRebuild,
}

impl Raid1Table {
    /// Parses a raid1 table line as the kernel prints it back.
    ///
    /// `#raid_params` is never trusted, whatever the target's version: the
    /// legs are found by counting back from the end of the line, where
    /// `<#raid_devs>` is followed by exactly 2·N device tokens (`M:m` or
    /// `-`), and every token between the chunk size and `<#raid_devs>` is an
    /// option. On a correct kernel this reads exactly what the count says;
    /// on dm-raid < 1.15.1 it reads past the miscount. The option order
    /// does not matter either (it differs between dm-raid versions). With
    /// [`RaidTableReadback::UntrustedRebuild`] the `rebuild` values are
    /// dropped: every caller that reloads a table sets its own, and
    /// [`Raid1Table::same_layout`] ignores them.
    pub fn from_kernel(s: &str, readback: RaidTableReadback) -> std::result::Result<Self, String> {
        let mut table = s.parse::<Raid1Table>()?;
        if readback == RaidTableReadback::UntrustedRebuild {
            table.rebuild.clear();
        }
        Ok(table)
    }
}

/// The slots of a raid1 line as printed: (metadata, data), `None` for `-`.
type RawSlots = Vec<(Option<Device>, Option<Device>)>;

/// Reads a raid1 line into its options (a table with no legs yet) and its
/// device slots, for both forms ([`Raid1Table`], [`Raid1BaseTable`]).
/// Reads `#raid_params` past a miscount (see [`Raid1Table::from_kernel`]);
/// `rebuild` values are kept as printed.
fn parse_raid1_line(s: &str) -> std::result::Result<(Raid1Table, RawSlots), String> {
    let t: Vec<&str> = s.split_whitespace().collect();
    let num = |v: &str, what: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{what} {v:?} is not a number"))
    };
    match t.first() {
        Some(&"raid1") => {}
        Some(_) => return Err("not a raid1 table".into()),
        None => return Err("missing raid type".into()),
    }
    // Checked for its form only: dm-raid < 1.15.1 miscounts it when the
    // table carries `rebuild` (docs/kernel-floor.md, B10).
    let nparams = num(t.get(1).ok_or("missing #raid_params")?, "#raid_params")?;
    if nparams == 0 {
        return Err("#raid_params is 0 (chunk size missing)".into());
    }
    num(t.get(2).ok_or("missing chunk size")?, "chunk size")?;
    // `<#raid_devs>` is the last token that is not a device: options
    // hold names and numbers, never `major:minor` or `-` (journal_dev,
    // the one option with a device, is not a raid1 option).
    let is_device = |tok: &&&str| **tok == "-" || tok.contains(':');
    let devices = t[3..].iter().rev().take_while(is_device).count();
    let Some(at) = (t.len() - devices).checked_sub(1).filter(|at| *at >= 3) else {
        return Err("missing #raid_devs".into());
    };
    let ndevs = num(t[at], "#raid_devs")?;
    if ndevs > 64 {
        return Err(format!("{ndevs} raid devices is more than dm-raid allows"));
    }
    if devices as u64 != 2 * ndevs {
        return Err(format!(
            "#raid_devs {ndevs} needs {} device tokens, the line has {devices}",
            2 * ndevs
        ));
    }
    let mut table = Raid1Table::new(Vec::with_capacity(ndevs as usize), Sectors(0));
    let mut p = t[3..at].iter();
    while let Some(key) = p.next() {
        match *key {
            "nosync" => table.nosync = true,
            "sync" => {}
            "rebuild" | "region_size" | "write_mostly" | "daemon_sleep" | "min_recovery_rate"
            | "max_recovery_rate" | "max_write_behind" => {
                let v = p.next().ok_or_else(|| format!("{key} without a value"))?;
                let v = num(v, key)?;
                match *key {
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
    let dev = |tok: &str| match tok {
        "-" => Ok(None),
        tok => parse_device(tok).map(Some),
    };
    let mut slots = Vec::with_capacity(ndevs as usize);
    for pair in t[at + 1..].chunks(2) {
        match pair {
            [m, d] => slots.push((dev(m)?, dev(d)?)),
            _ => return Err("odd number of device tokens".into()),
        }
    }
    Ok((table, slots))
}

impl FromStr for Raid1Table {
    type Err = String;
    /// Reads `#raid_params` past a miscount (see [`Raid1Table::from_kernel`]);
    /// `rebuild` values are kept as printed.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (mut table, slots) = parse_raid1_line(s)?;
        for slot in slots {
            table.legs.push(match slot {
                (None, None) => None,
                (Some(meta), Some(data)) => Some(LegDevices { meta, data }),
                (None, Some(_)) => {
                    return Err(
                        "a leg without a metadata device is the base form (Raid1BaseTable)".into(),
                    );
                }
                (Some(_), None) => return Err("a metadata device without data".into()),
            });
        }
        Ok(table)
    }
}

/// The **base form** of a raid1 mirror: data devices only (`- <data>`
/// pairs), always `nosync`, loaded in a read-only table. Without metadata
/// devices dm-raid keeps no superblock and no bitmap, so nothing is ever
/// written to the legs, and any number of hosts may assemble the same
/// legs at once. It serves immutable data only (a frozen layer): without
/// a bitmap nothing records which regions differ, so a rebuild is
/// impossible and a failed leg stays failed until the table is reloaded
/// with another leg list. Format:
/// `raid1 4 0 nosync region_size <r> <#devs> - <data>|- -…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raid1BaseTable {
    /// Data devices in slot order; `None` is a missing leg (`- -`).
    pub data: Vec<Option<Device>>,
    /// Region size: a power of two, as for [`Raid1Table`] (dm-raid checks
    /// it even without a bitmap).
    pub region_size: Sectors,
}

impl Raid1BaseTable {
    fn validate(&self, len: Sectors) -> std::result::Result<(), String> {
        // The same slot and region rules as the top form.
        let legs = self
            .data
            .iter()
            .map(|d| d.map(|data| LegDevices { meta: data, data }))
            .collect();
        Raid1Table::new(legs, self.region_size).validate(len)
    }
}

impl fmt::Display for Raid1BaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Option order as dm-raid prints it (nosync before region_size).
        write!(
            f,
            "raid1 4 0 nosync region_size {} {}",
            *self.region_size,
            self.data.len()
        )?;
        for d in &self.data {
            match d {
                Some(d) => write!(f, " - {d}")?,
                None => write!(f, " - -")?,
            }
        }
        Ok(())
    }
}

impl FromStr for Raid1BaseTable {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (table, slots) = parse_raid1_line(s)?;
        if !table.nosync {
            return Err("the base form is always nosync (no bitmap to resync from)".into());
        }
        if !table.rebuild.is_empty() {
            return Err("the base form cannot rebuild (no metadata devices)".into());
        }
        let mut data = Vec::with_capacity(slots.len());
        for slot in slots {
            data.push(match slot {
                (None, d) => d,
                (Some(_), _) => {
                    return Err("a leg with a metadata device is the top form (Raid1Table)".into());
                }
            });
        }
        Ok(Raid1BaseTable {
            data,
            region_size: table.region_size,
        })
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
    /// raid1 over data devices only: the read-only base form.
    Raid1Base(Raid1BaseTable),
    /// `thin-pool <metadata> <data> <block> <low water> <#features> …`.
    ThinPool(ThinPoolTable),
    /// `thin <pool> <dev id> [<external origin>]`.
    Thin(ThinTable),
    /// `zero`: reads zeros, takes no writes worth keeping (dm-zero). What a
    /// read-only snapshot of a volume nothing ever wrote maps.
    Zero,
}

impl Target {
    pub fn target_type(&self) -> &'static str {
        match self {
            Target::Linear { .. } => "linear",
            Target::Striped { .. } => "striped",
            Target::Raid1(_) | Target::Raid1Base(_) => "raid",
            Target::ThinPool(_) => "thin-pool",
            Target::Thin(_) => "thin",
            Target::Zero => "zero",
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
            Target::Raid1Base(r) => r.to_string(),
            Target::ThinPool(p) => p.to_string(),
            Target::Thin(t) => t.to_string(),
            Target::Zero => String::new(),
        }
    }
    /// Whether the kernel's (type, params) for this line describe the same
    /// mapping.
    pub(super) fn matches(&self, kind: &str, params: &str) -> bool {
        if kind != self.target_type() {
            return false;
        }
        match self {
            Target::Raid1(want) => params
                .parse::<Raid1Table>()
                .is_ok_and(|t| want.same_layout(&t)),
            Target::Raid1Base(want) => params.parse::<Raid1BaseTable>().as_ref() == Ok(want),
            Target::ThinPool(want) => params.parse::<ThinPoolTable>().as_ref() == Ok(want),
            Target::Thin(want) => params.parse::<ThinTable>().as_ref() == Ok(want),
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

pub(super) fn validate_table(name: &DevName, lines: &[TargetLine]) -> Result<()> {
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
            Target::Raid1Base(r) => {
                if let Err(e) = r.validate(l.len) {
                    return bad(e);
                }
            }
            Target::ThinPool(p) => {
                if let Err(e) = p.validate(l.len) {
                    return bad(e);
                }
            }
            Target::Thin(t) => {
                if let Err(e) = t.validate() {
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
            Target::Linear { .. } | Target::Zero => {}
        }
        at = Sectors(*at + *l.len);
    }
    Ok(())
}

pub(super) fn table_matches(want: &[TargetLine], found: &[(u64, u64, String, String)]) -> bool {
    want.len() == found.len()
        && want
            .iter()
            .zip(found)
            .all(|(w, (s, l, k, p))| *w.start == *s && *w.len == *l && w.target.matches(k, p))
}

/// The linear or striped target the kernel printed as (`kind`, `params`);
/// `None` for any other target or a line we cannot read.
fn parse_plain_target(kind: &str, params: &str) -> Option<Target> {
    let t: Vec<&str> = params.split_whitespace().collect();
    let sectors = |v: &str| v.parse::<u64>().ok().map(Sectors);
    match (kind, t.as_slice()) {
        ("linear", [dev, offset]) => Some(Target::Linear {
            dev: dev.parse().ok()?,
            offset: sectors(offset)?,
        }),
        ("striped", [n, chunk, rest @ ..]) => {
            let n: usize = n.parse().ok()?;
            if n == 0 || rest.len() != 2 * n {
                return None;
            }
            let stripes = rest
                .chunks(2)
                .map(|p| Some((p[0].parse().ok()?, sectors(p[1])?)))
                .collect::<Option<Vec<(Device, Sectors)>>>()?;
            Some(Target::Striped {
                chunk: sectors(chunk)?,
                stripes,
            })
        }
        _ => None,
    }
}

/// Whether loading `want` over the running `found` table only *grows* the
/// device: every sector `found` maps goes to the same place under `want`,
/// and `want` is longer. That is how a volume grows online (mirrored disks
/// appended): the reload may then happen under I/O, because no sector that
/// a reader or writer already uses changes its meaning.
///
/// Line by line: `want` starts with `found`'s lines, the same except that
/// the last one may be longer (a linear part that reaches further into its
/// device, or a striped line over more sectors: dm-stripe's mapping does
/// not depend on the line's length); lines after that are new space. Only
/// linear and striped lines can grow. A stripe member may change device
/// when `begins_with(new, old, len)` says the new device maps its first
/// `len` sectors straight onto the old one (a column that was one mirror
/// and has become a concatenation starting with that mirror).
pub(super) fn grows(
    found: &[(u64, u64, String, String)],
    want: &[TargetLine],
    begins_with: &dyn Fn(Device, Device, Sectors) -> bool,
) -> bool {
    let total = |lens: &mut dyn Iterator<Item = u64>| lens.sum::<u64>();
    let (Some(last), true) = (found.len().checked_sub(1), found.len() <= want.len()) else {
        return false;
    };
    if total(&mut want.iter().map(|l| *l.len)) <= total(&mut found.iter().map(|l| l.1)) {
        return false;
    }
    found
        .iter()
        .zip(want)
        .enumerate()
        .all(|(i, ((start, len, kind, params), w))| {
            let Some(old) = parse_plain_target(kind, params) else {
                return false;
            };
            let length_ok = if i == last {
                *w.len >= *len
            } else {
                *w.len == *len
            };
            *w.start == *start
                && length_ok
                && match (&old, &w.target) {
                    (
                        Target::Linear { dev, offset },
                        Target::Linear {
                            dev: new_dev,
                            offset: new_offset,
                        },
                    ) => dev == new_dev && offset == new_offset,
                    (
                        Target::Striped { chunk, stripes },
                        Target::Striped {
                            chunk: new_chunk,
                            stripes: new_stripes,
                        },
                    ) => {
                        let per_stripe = Sectors(*len / stripes.len() as u64);
                        chunk == new_chunk
                            && stripes.len() == new_stripes.len()
                            && stripes.iter().zip(new_stripes).all(|((d, o), (nd, no))| {
                                o == no && (d == nd || begins_with(*nd, *d, per_stripe))
                            })
                    }
                    _ => false,
                }
        })
}

pub(super) fn format_raw_table(t: &[(u64, u64, String, String)]) -> String {
    if t.is_empty() {
        return "(no table)".into();
    }
    t.iter()
        .map(|(s, l, k, p)| format!("{s} {l} {k} {p}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
