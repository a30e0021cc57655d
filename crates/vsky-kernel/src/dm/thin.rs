//! dm-thin, typed: the `thin-pool` and `thin` table lines we load
//! ([`ThinPoolTable`], [`ThinTable`]), formatted exactly as the kernel
//! prints them back (so a read-back table compares equal), parsed from the
//! kernel's text and validated before any ioctl; and the two status lines
//! ([`ThinPoolStatus`], [`ThinStatus`]).
//!
//! The formats follow `Documentation/device-mapper/thin-provisioning.txt`
//! (4.19; `admin-guide/device-mapper/thin-provisioning.rst` upstream) and
//! the status code of `dm-thin.c` (`pool_status`, `thin_status`,
//! `emit_flags`), which is the same in 4.19 and 6.1 for every field read
//! here. How a VastSky layer uses them is in docs/design/snapshots.md §5.4.

use std::fmt;
use std::str::FromStr;

use super::{Device, Sectors};

/// Smallest pool block: 64 KiB (doc: "between 64KB and 1GB").
pub const THIN_BLOCK_MIN: Sectors = Sectors(128);
/// Largest pool block: 1 GiB.
pub const THIN_BLOCK_MAX: Sectors = Sectors(2 * 1024 * 1024);
/// Thin device ids are 24 bits (`MAX_DEV_ID` in dm-thin.c).
pub const THIN_DEV_ID_MAX: u32 = (1 << 24) - 1;

/// A `thin-pool` table: `<metadata> <data> <block sectors> <low water
/// blocks> <#features> <feature>…`.
///
/// The line's length is the pool's data size: dm-thin counts its data
/// blocks from the table length, not from the data device, so it must not
/// exceed the data device (the device-mapper core refuses that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinPoolTable {
    pub metadata: Device,
    pub data: Device,
    /// Pool block size: 64 KiB to 1 GiB, a multiple of 64 KiB, fixed when
    /// the pool's metadata is first written.
    pub block_sectors: Sectors,
    /// Free data blocks below which the pool raises one dm event.
    pub low_water_blocks: u64,
    /// `read_only`: no block is provisioned or changed, and the metadata
    /// device is opened without write access (the data device is still
    /// opened for writing, 4.19 `dm-thin.c` l.3249–3257).
    pub read_only: bool,
    /// `skip_block_zeroing`: new blocks are not zeroed first.
    pub skip_block_zeroing: bool,
    /// `ignore_discard`.
    pub ignore_discard: bool,
    /// `no_discard_passdown`: discards unmap blocks but are not sent on to
    /// the data device.
    pub no_discard_passdown: bool,
    /// `error_if_no_space`: fail writes at once when data space runs out,
    /// instead of queueing them for `no_space_timeout`.
    pub error_if_no_space: bool,
}

impl ThinPoolTable {
    /// A read-write pool with the kernel's defaults (block zeroing,
    /// discard passdown, queue when out of space).
    pub fn new(
        metadata: Device,
        data: Device,
        block_sectors: Sectors,
        low_water_blocks: u64,
    ) -> Self {
        ThinPoolTable {
            metadata,
            data,
            block_sectors,
            low_water_blocks,
            read_only: false,
            skip_block_zeroing: false,
            ignore_discard: false,
            no_discard_passdown: false,
            error_if_no_space: false,
        }
    }

    /// The features in the order `emit_flags` prints them.
    fn features(&self) -> Vec<&'static str> {
        [
            (self.skip_block_zeroing, "skip_block_zeroing"),
            (self.ignore_discard, "ignore_discard"),
            (self.no_discard_passdown, "no_discard_passdown"),
            (self.read_only, "read_only"),
            (self.error_if_no_space, "error_if_no_space"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    pub(super) fn validate(&self, len: Sectors) -> Result<(), String> {
        let b = *self.block_sectors;
        if b < *THIN_BLOCK_MIN || b > *THIN_BLOCK_MAX || !b.is_multiple_of(*THIN_BLOCK_MIN) {
            return Err(format!(
                "thin-pool block size {b} sectors must be a multiple of 128 (64 KiB) within \
                 128..={}",
                *THIN_BLOCK_MAX
            ));
        }
        if *len < b {
            return Err(format!(
                "a thin-pool of {} sectors holds no block of {b} sectors; give it a longer data device",
                *len
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ThinPoolTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let features = self.features();
        write!(
            f,
            "{} {} {} {} {}",
            self.metadata,
            self.data,
            *self.block_sectors,
            self.low_water_blocks,
            features.len()
        )?;
        for feature in features {
            write!(f, " {feature}")?;
        }
        Ok(())
    }
}

fn device(tok: &str) -> Result<Device, String> {
    tok.parse::<Device>()
        .map_err(|_| format!("{tok:?} is not major:minor"))
}

fn number(tok: &str, what: &str) -> Result<u64, String> {
    tok.parse::<u64>()
        .map_err(|_| format!("{what} {tok:?} is not a number"))
}

impl FromStr for ThinPoolTable {
    type Err = String;
    /// Reads the table as the kernel prints it (with a trailing space, and
    /// `0` for no features); the feature order does not matter.
    fn from_str(s: &str) -> Result<Self, String> {
        let t: Vec<&str> = s.split_whitespace().collect();
        let [meta, data, block, lwm, nfeatures, features @ ..] = t.as_slice() else {
            return Err("a thin-pool line has at least 5 fields".into());
        };
        let mut table = ThinPoolTable::new(
            device(meta)?,
            device(data)?,
            Sectors(number(block, "block size")?),
            number(lwm, "low water mark")?,
        );
        if number(nfeatures, "#features")? != features.len() as u64 {
            return Err(format!(
                "#features {nfeatures} but {} features follow",
                features.len()
            ));
        }
        for f in features {
            let flag = match *f {
                "skip_block_zeroing" => &mut table.skip_block_zeroing,
                "ignore_discard" => &mut table.ignore_discard,
                "no_discard_passdown" => &mut table.no_discard_passdown,
                "read_only" => &mut table.read_only,
                "error_if_no_space" => &mut table.error_if_no_space,
                other => return Err(format!("unknown thin-pool feature {other:?}")),
            };
            if *flag {
                return Err(format!("thin-pool feature {f} given twice"));
            }
            *flag = true;
        }
        Ok(table)
    }
}

/// A `thin` table: `<pool> <dev id> [<external origin>]`. The line's
/// length is the thin device's virtual size; it may exceed the origin's
/// (reads beyond the origin are zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinTable {
    pub pool: Device,
    /// The thin device inside the pool (created by the `create_thin`
    /// message); VastSky uses 0, one per pool.
    pub dev_id: u32,
    /// Read-only device whose data unprovisioned blocks read through to.
    pub external_origin: Option<Device>,
}

impl ThinTable {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.dev_id > THIN_DEV_ID_MAX {
            return Err(format!(
                "thin device id {} is above dm-thin's 24-bit limit {THIN_DEV_ID_MAX}",
                self.dev_id
            ));
        }
        if self.external_origin == Some(self.pool) {
            return Err("a thin device's external origin cannot be its own pool".into());
        }
        Ok(())
    }
}

impl fmt::Display for ThinTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pool, self.dev_id)?;
        if let Some(origin) = self.external_origin {
            write!(f, " {origin}")?;
        }
        Ok(())
    }
}

impl FromStr for ThinTable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t: Vec<&str> = s.split_whitespace().collect();
        let (pool, id, origin) = match t.as_slice() {
            [pool, id] => (pool, id, None),
            [pool, id, origin] => (pool, id, Some(device(origin)?)),
            _ => return Err("a thin line is <pool> <dev id> [<external origin>]".into()),
        };
        let dev_id = number(id, "thin device id")?;
        Ok(ThinTable {
            pool: device(pool)?,
            dev_id: u32::try_from(dev_id)
                .map_err(|_| format!("thin device id {dev_id} is out of range"))?,
            external_origin: origin,
        })
    }
}

/// The pool's mode as its status prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// `rw`.
    ReadWrite,
    /// `ro`: loaded `read_only`, or switched there by the kernel after a
    /// metadata error or when metadata space ran out.
    ReadOnly,
    /// `out_of_data_space`: writes to unprovisioned blocks queue or fail.
    OutOfDataSpace,
}

/// What the pool does with discards (`ignore_discard`,
/// `discard_passdown`, `no_discard_passdown`): the features in force,
/// which may differ from the table's when the data device cannot discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolDiscard {
    Ignore,
    Passdown,
    NoPassdown,
}

/// A running pool's counters and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinPoolUsage {
    pub transaction_id: u64,
    /// In metadata blocks of 4 KiB.
    pub used_metadata_blocks: u64,
    pub total_metadata_blocks: u64,
    /// In pool blocks (`block_sectors` each).
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// A metadata snapshot held for userspace (`reserve_metadata_snap`).
    pub held_metadata_root: Option<u64>,
    pub mode: PoolMode,
    pub discard: PoolDiscard,
    /// `error_if_no_space` (else `queue_if_no_space`).
    pub error_if_no_space: bool,
    /// `needs_check`: the metadata must be checked (`thin_check`) before
    /// the pool can be written again.
    pub needs_check: bool,
    /// The metadata low-water threshold in metadata blocks, printed since
    /// 4.11; `None` from older kernels.
    pub metadata_low_watermark: Option<u64>,
}

impl ThinPoolUsage {
    pub fn free_data_blocks(&self) -> u64 {
        self.total_data_blocks.saturating_sub(self.used_data_blocks)
    }
    pub fn free_metadata_blocks(&self) -> u64 {
        self.total_metadata_blocks
            .saturating_sub(self.used_metadata_blocks)
    }
}

/// A pool's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinPoolStatus {
    Active(ThinPoolUsage),
    /// `Fail`: the pool failed (metadata I/O errors); every I/O errors and
    /// the metadata needs an offline repair.
    Fail,
    /// `Error`: the kernel could not read its own counters.
    Error,
}

impl ThinPoolStatus {
    pub fn usage(&self) -> Option<&ThinPoolUsage> {
        match self {
            ThinPoolStatus::Active(u) => Some(u),
            _ => None,
        }
    }
}

fn used_total(tok: &str, what: &str) -> Result<(u64, u64), String> {
    let (used, total) = tok
        .split_once('/')
        .ok_or_else(|| format!("{what} {tok:?} is not used/total"))?;
    let (used, total) = (number(used, what)?, number(total, what)?);
    if used > total {
        return Err(format!("{what} {tok:?}: more used than there is"));
    }
    Ok((used, total))
}

impl FromStr for ThinPoolStatus {
    type Err = String;
    /// `<transaction id> <used>/<total metadata blocks> <used>/<total data
    /// blocks> <held root|-> rw|ro|out_of_data_space
    /// ignore_discard|discard_passdown|no_discard_passdown
    /// error_if_no_space|queue_if_no_space needs_check|- [<metadata low
    /// watermark>]`, or `Fail`, or `Error`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t: Vec<&str> = s.split_whitespace().collect();
        let [tid, meta, data, held, mode, discard, space, rest @ ..] = t.as_slice() else {
            return match t.as_slice() {
                ["Fail"] => Ok(ThinPoolStatus::Fail),
                ["Error"] => Ok(ThinPoolStatus::Error),
                _ => Err("a thin-pool status has at least 7 fields".into()),
            };
        };
        let (used_metadata_blocks, total_metadata_blocks) = used_total(meta, "metadata blocks")?;
        let (used_data_blocks, total_data_blocks) = used_total(data, "data blocks")?;
        let (needs_check, metadata_low_watermark) = match rest {
            [] => (false, None),
            [check] | [check, _] => {
                let needs = match *check {
                    "needs_check" => true,
                    "-" => false,
                    other => return Err(format!("unknown check flag {other:?}")),
                };
                let mark = match rest {
                    [_, mark] => Some(number(mark, "metadata low watermark")?),
                    _ => None,
                };
                (needs, mark)
            }
            _ => return Err("too many fields in a thin-pool status".into()),
        };
        Ok(ThinPoolStatus::Active(ThinPoolUsage {
            transaction_id: number(tid, "transaction id")?,
            used_metadata_blocks,
            total_metadata_blocks,
            used_data_blocks,
            total_data_blocks,
            held_metadata_root: match *held {
                "-" => None,
                root => Some(number(root, "held metadata root")?),
            },
            mode: match *mode {
                "rw" => PoolMode::ReadWrite,
                "ro" => PoolMode::ReadOnly,
                "out_of_data_space" => PoolMode::OutOfDataSpace,
                other => return Err(format!("unknown pool mode {other:?}")),
            },
            discard: match *discard {
                "ignore_discard" => PoolDiscard::Ignore,
                "discard_passdown" => PoolDiscard::Passdown,
                "no_discard_passdown" => PoolDiscard::NoPassdown,
                other => return Err(format!("unknown discard mode {other:?}")),
            },
            error_if_no_space: match *space {
                "error_if_no_space" => true,
                "queue_if_no_space" => false,
                other => return Err(format!("unknown no-space mode {other:?}")),
            },
            needs_check,
            metadata_low_watermark,
        }))
    }
}

impl fmt::Display for ThinPoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = match self {
            ThinPoolStatus::Active(u) => u,
            ThinPoolStatus::Fail => return write!(f, "Fail"),
            ThinPoolStatus::Error => return write!(f, "Error"),
        };
        let mode = match u.mode {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "ro",
            PoolMode::OutOfDataSpace => "out_of_data_space",
        };
        let discard = match u.discard {
            PoolDiscard::Ignore => "ignore_discard",
            PoolDiscard::Passdown => "discard_passdown",
            PoolDiscard::NoPassdown => "no_discard_passdown",
        };
        let space = if u.error_if_no_space {
            "error_if_no_space"
        } else {
            "queue_if_no_space"
        };
        write!(
            f,
            "{} {}/{} {}/{} ",
            u.transaction_id,
            u.used_metadata_blocks,
            u.total_metadata_blocks,
            u.used_data_blocks,
            u.total_data_blocks
        )?;
        match u.held_metadata_root {
            Some(root) => write!(f, "{root}")?,
            None => write!(f, "-")?,
        }
        write!(
            f,
            " {mode} {discard} {space} {}",
            if u.needs_check { "needs_check" } else { "-" }
        )?;
        if let Some(mark) = u.metadata_low_watermark {
            write!(f, " {mark}")?;
        }
        Ok(())
    }
}

/// A thin device's status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinStatus {
    /// `<mapped sectors> <highest mapped sector|->`.
    Active {
        /// Sectors mapped in the pool (whole blocks).
        mapped: Sectors,
        /// The last sector of the highest mapped block; `None` when nothing
        /// is mapped.
        highest: Option<Sectors>,
    },
    /// `-`: the device is not attached to its pool (not resumed yet).
    Inactive,
    /// `Fail`: the pool failed.
    Fail,
}

impl FromStr for ThinStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t: Vec<&str> = s.split_whitespace().collect();
        match t.as_slice() {
            ["Fail"] => Ok(ThinStatus::Fail),
            ["-"] => Ok(ThinStatus::Inactive),
            [mapped, highest] => Ok(ThinStatus::Active {
                mapped: Sectors(number(mapped, "mapped sectors")?),
                highest: match *highest {
                    "-" => None,
                    h => Some(Sectors(number(h, "highest mapped sector")?)),
                },
            }),
            _ => Err("a thin status is <mapped sectors> <highest mapped sector|->".into()),
        }
    }
}

impl fmt::Display for ThinStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThinStatus::Active { mapped, highest } => {
                write!(f, "{} ", **mapped)?;
                match highest {
                    Some(h) => write!(f, "{}", **h),
                    None => write!(f, "-"),
                }
            }
            ThinStatus::Inactive => write!(f, "-"),
            ThinStatus::Fail => write!(f, "Fail"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::DevName;
    use crate::dm::table::{Raid1BaseTable, Target, TargetLine, validate_table};

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    fn line(len: u64, target: Target) -> Vec<TargetLine> {
        vec![TargetLine {
            start: Sectors(0),
            len: Sectors(len),
            target,
        }]
    }

    /// The lines as `dmsetup table` prints them for the same devices
    /// (thin-provisioning.txt and `emit_flags`): features counted, in the
    /// kernel's order.
    #[test]
    fn thin_tables_format_like_the_kernel() {
        let mut p = ThinPoolTable::new(dev(253, 3), dev(253, 4), Sectors(128), 16);
        assert_eq!(p.to_string(), "253:3 253:4 128 16 0");
        p.read_only = true;
        p.skip_block_zeroing = true;
        assert_eq!(
            p.to_string(),
            "253:3 253:4 128 16 2 skip_block_zeroing read_only"
        );
        let t = ThinTable {
            pool: dev(253, 5),
            dev_id: 0,
            external_origin: None,
        };
        assert_eq!(t.to_string(), "253:5 0");
        let o = ThinTable {
            external_origin: Some(dev(253, 9)),
            ..t
        };
        assert_eq!(o.to_string(), "253:5 0 253:9");
        assert_eq!(Target::ThinPool(p).target_type(), "thin-pool");
        assert_eq!(Target::Thin(o).target_type(), "thin");
    }

    /// What the kernel prints back (trailing space, any feature order)
    /// matches the table we loaded; another mode or origin does not.
    #[test]
    fn kernel_readback_matches() {
        let mut p = ThinPoolTable::new(dev(253, 3), dev(253, 4), Sectors(128), 16);
        p.read_only = true;
        let want = Target::ThinPool(p.clone());
        assert!(want.matches("thin-pool", "253:3 253:4 128 16 1 read_only "));
        assert!(!want.matches("thin-pool", "253:3 253:4 128 16 0 "));
        assert!(!want.matches("thin", "253:3 253:4 128 16 1 read_only"));
        let t = Target::Thin(ThinTable {
            pool: dev(253, 5),
            dev_id: 0,
            external_origin: Some(dev(253, 9)),
        });
        assert!(t.matches("thin", "253:5 0 253:9"));
        assert!(!t.matches("thin", "253:5 0 253:10"));
        assert!(!t.matches("thin", "253:5 0"));
    }

    #[test]
    fn bad_thin_tables_are_refused() {
        for bad in [
            "",
            "253:3 253:4 128 16",
            "253:3 253:4 128 16 1",
            "253:3 253:4 128 16 0 read_only",
            "253:3 253:4 128 16 2 read_only read_only",
            "253:3 253:4 128 16 1 bogus",
            "x 253:4 128 16 0",
            "253:3 253:4 -1 16 0",
        ] {
            assert!(bad.parse::<ThinPoolTable>().is_err(), "{bad:?} parsed");
        }
        for bad in [
            "",
            "253:5",
            "253:5 x",
            "253:5 0 1",
            "253:5 0 253:9 1",
            "253:5 4294967296",
        ] {
            assert!(bad.parse::<ThinTable>().is_err(), "{bad:?} parsed");
        }
    }

    /// Block sizes outside 64 KiB..1 GiB or not a multiple of 64 KiB, a
    /// pool shorter than one block, a thin id over 24 bits and a thin that
    /// is its own origin are refused before any ioctl.
    #[test]
    fn thin_validation() {
        let name = DevName::new("vsky-t").unwrap();
        let pool = |block, len| {
            line(
                len,
                Target::ThinPool(ThinPoolTable::new(
                    dev(253, 3),
                    dev(253, 4),
                    Sectors(block),
                    0,
                )),
            )
        };
        assert!(validate_table(&name, &pool(128, 8192)).is_ok());
        assert!(validate_table(&name, &pool(2 * 1024 * 1024, 4 * 1024 * 1024)).is_ok());
        for (block, len) in [
            (64, 8192),
            (192 + 1, 8192),
            (4 * 1024 * 1024, 1 << 23),
            (256, 128),
        ] {
            assert!(
                validate_table(&name, &pool(block, len)).is_err(),
                "{block}/{len}"
            );
        }
        let thin = |id, origin| {
            line(
                8192,
                Target::Thin(ThinTable {
                    pool: dev(253, 5),
                    dev_id: id,
                    external_origin: origin,
                }),
            )
        };
        assert!(validate_table(&name, &thin(0, Some(dev(253, 9)))).is_ok());
        assert!(validate_table(&name, &thin(THIN_DEV_ID_MAX, None)).is_ok());
        assert!(validate_table(&name, &thin(THIN_DEV_ID_MAX + 1, None)).is_err());
        assert!(validate_table(&name, &thin(0, Some(dev(253, 5)))).is_err());
    }

    /// Status lines as 6.1 and 4.19 print them.
    #[test]
    fn pool_status_parses() {
        let s: ThinPoolStatus = "1 11/1024 10/640 - rw discard_passdown queue_if_no_space - 768 "
            .parse()
            .unwrap();
        let u = s.usage().unwrap();
        assert_eq!(
            (u.used_metadata_blocks, u.total_metadata_blocks),
            (11, 1024)
        );
        assert_eq!((u.used_data_blocks, u.total_data_blocks), (10, 640));
        assert_eq!(u.free_data_blocks(), 630);
        assert_eq!(u.free_metadata_blocks(), 1013);
        assert_eq!(u.mode, PoolMode::ReadWrite);
        assert_eq!(u.discard, PoolDiscard::Passdown);
        assert!(!u.error_if_no_space && !u.needs_check);
        assert_eq!(u.metadata_low_watermark, Some(768));
        assert_eq!(u.held_metadata_root, None);
        let ro: ThinPoolStatus =
            "3 20/1024 640/640 17 out_of_data_space no_discard_passdown error_if_no_space needs_check"
                .parse()
                .unwrap();
        let u = ro.usage().unwrap();
        assert_eq!(u.mode, PoolMode::OutOfDataSpace);
        assert_eq!(u.held_metadata_root, Some(17));
        assert!(u.error_if_no_space && u.needs_check);
        assert_eq!(u.metadata_low_watermark, None);
        let ro: ThinPoolStatus = "0 9/1024 0/448 - ro ignore_discard queue_if_no_space - 768"
            .parse()
            .unwrap();
        assert_eq!(ro.usage().unwrap().mode, PoolMode::ReadOnly);
        assert_eq!(ro.usage().unwrap().discard, PoolDiscard::Ignore);
        assert_eq!("Fail".parse::<ThinPoolStatus>(), Ok(ThinPoolStatus::Fail));
        assert_eq!("Error".parse::<ThinPoolStatus>(), Ok(ThinPoolStatus::Error));
        for bad in [
            "",
            "Fail now",
            "1 11/1024 10/640 - rw discard_passdown",
            "1 11/1024 10/640 - rx discard_passdown queue_if_no_space -",
            "1 11/1024 700/640 - rw discard_passdown queue_if_no_space -",
            "1 11-1024 10/640 - rw discard_passdown queue_if_no_space -",
            "1 11/1024 10/640 - rw discard_passdown queue_if_no_space maybe",
            "1 11/1024 10/640 - rw discard_passdown queue_if_no_space - 7 8",
        ] {
            assert!(bad.parse::<ThinPoolStatus>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn thin_status_parses() {
        assert_eq!(
            "1280 1279".parse::<ThinStatus>(),
            Ok(ThinStatus::Active {
                mapped: Sectors(1280),
                highest: Some(Sectors(1279))
            })
        );
        assert_eq!(
            "0 -".parse::<ThinStatus>(),
            Ok(ThinStatus::Active {
                mapped: Sectors(0),
                highest: None
            })
        );
        assert_eq!("-".parse::<ThinStatus>(), Ok(ThinStatus::Inactive));
        assert_eq!("Fail".parse::<ThinStatus>(), Ok(ThinStatus::Fail));
        for bad in ["", "1 2 3", "x -", "1 y"] {
            assert!(bad.parse::<ThinStatus>().is_err(), "{bad:?} parsed");
        }
    }

    /// The base form of raid1: data devices only, `nosync`, as the recipe
    /// loaded it; the top-form parser refuses it and the reverse.
    #[test]
    fn raid1_base_form() {
        let b = Raid1BaseTable {
            data: vec![Some(dev(253, 1)), None, Some(dev(253, 3))],
            region_size: Sectors(1024),
        };
        assert_eq!(
            b.to_string(),
            "raid1 4 0 nosync region_size 1024 3 - 253:1 - - - 253:3"
        );
        assert_eq!(b.to_string().parse::<Raid1BaseTable>(), Ok(b.clone()));
        let want = Target::Raid1Base(b.clone());
        assert_eq!(want.target_type(), "raid");
        assert!(want.matches(
            "raid",
            "raid1 4 0 nosync region_size 1024 3 - 253:1 - - - 253:3"
        ));
        // Top form and base form never match each other.
        let top = "raid1 4 0 nosync region_size 1024 2 253:0 253:1 253:2 253:3";
        assert!(!want.matches("raid", top));
        assert!(top.parse::<Raid1BaseTable>().is_err());
        assert!(b.to_string().parse::<crate::dm::Raid1Table>().is_err());
        // Base form without nosync, or with rebuild, is not ours.
        assert!(
            "raid1 3 0 region_size 1024 2 - 253:1 - 253:3"
                .parse::<Raid1BaseTable>()
                .is_err()
        );
        assert!(
            "raid1 6 0 nosync rebuild 1 region_size 1024 2 - 253:1 - 253:3"
                .parse::<Raid1BaseTable>()
                .is_err()
        );
        let name = DevName::new("vsky-t").unwrap();
        assert!(validate_table(&name, &line(65536, want)).is_ok());
        let one = Raid1BaseTable {
            data: vec![Some(dev(253, 1))],
            region_size: Sectors(1024),
        };
        assert!(validate_table(&name, &line(65536, Target::Raid1Base(one))).is_err());
        let odd = Raid1BaseTable {
            data: vec![Some(dev(253, 1)), Some(dev(253, 2))],
            region_size: Sectors(1000),
        };
        assert!(validate_table(&name, &line(65536, Target::Raid1Base(odd))).is_err());
    }

    fn any_device() -> impl proptest::strategy::Strategy<Value = Device> {
        use proptest::prelude::*;
        (0u32..4096, 0u32..1 << 20).prop_map(|(major, minor)| dev(major, minor))
    }

    fn any_pool() -> impl proptest::strategy::Strategy<Value = ThinPoolTable> {
        use proptest::prelude::*;
        (
            any_device(),
            any_device(),
            1u64..=16384,
            any::<u64>(),
            proptest::array::uniform5(any::<bool>()),
        )
            .prop_map(|(m, d, b, lwm, f)| ThinPoolTable {
                metadata: m,
                data: d,
                block_sectors: Sectors(b * 128),
                low_water_blocks: lwm,
                skip_block_zeroing: f[0],
                ignore_discard: f[1],
                no_discard_passdown: f[2],
                read_only: f[3],
                error_if_no_space: f[4],
            })
    }

    fn any_usage() -> impl proptest::strategy::Strategy<Value = ThinPoolUsage> {
        use proptest::prelude::*;
        (
            (
                any::<u64>(),
                0u64..1 << 40,
                0u64..1 << 40,
                0u64..1 << 40,
                0u64..1 << 40,
            ),
            proptest::option::of(any::<u64>()),
            0usize..3,
            0usize..3,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |((tid, a, b, c, d), held, mode, discard, err, check, mark)| ThinPoolUsage {
                    transaction_id: tid,
                    used_metadata_blocks: a.min(b),
                    total_metadata_blocks: a.max(b),
                    used_data_blocks: c.min(d),
                    total_data_blocks: c.max(d),
                    held_metadata_root: held,
                    mode: [
                        PoolMode::ReadWrite,
                        PoolMode::ReadOnly,
                        PoolMode::OutOfDataSpace,
                    ][mode],
                    discard: [
                        PoolDiscard::Ignore,
                        PoolDiscard::Passdown,
                        PoolDiscard::NoPassdown,
                    ][discard],
                    error_if_no_space: err,
                    needs_check: check,
                    metadata_low_watermark: mark,
                },
            )
    }

    proptest::proptest! {
        /// Any pool, thin and base raid1 table we format parses back equal,
        /// and matches what the kernel prints (ours plus a trailing space).
        #[test]
        fn thin_tables_round_trip(
            p in any_pool(),
            pool in any_device(),
            id in 0u32..=THIN_DEV_ID_MAX,
            origin in proptest::option::of(any_device()),
            data in proptest::collection::vec(proptest::option::weighted(0.8, any_device()), 2..64),
            region in 0u32..22,
        ) {
            proptest::prop_assert_eq!(p.to_string().parse::<ThinPoolTable>(), Ok(p.clone()));
            let printed = format!("{p} ");
            let matched = Target::ThinPool(p.clone()).matches("thin-pool", &printed);
            proptest::prop_assert!(matched);
            let t = ThinTable { pool, dev_id: id, external_origin: origin };
            proptest::prop_assert_eq!(t.to_string().parse::<ThinTable>(), Ok(t.clone()));
            let b = Raid1BaseTable { data, region_size: Sectors(1 << region) };
            proptest::prop_assert_eq!(b.to_string().parse::<Raid1BaseTable>(), Ok(b.clone()));
        }

        /// Any status we print (the kernel's format) parses back equal.
        #[test]
        fn pool_status_round_trips(u in any_usage()) {
            let s = ThinPoolStatus::Active(u);
            proptest::prop_assert_eq!(s.to_string().parse::<ThinPoolStatus>(), Ok(s.clone()));
        }

        #[test]
        fn thin_status_round_trips(mapped in proptest::prelude::any::<u64>(), highest in proptest::option::of(proptest::prelude::any::<u64>())) {
            let s = ThinStatus::Active { mapped: Sectors(mapped), highest: highest.map(Sectors) };
            proptest::prop_assert_eq!(s.to_string().parse::<ThinStatus>(), Ok(s));
        }

        /// Garbage never panics.
        #[test]
        fn thin_parsers_never_panic(
            tokens in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("-".to_string()),
                    proptest::strategy::Just("read_only".to_string()),
                    proptest::strategy::Just("rw".to_string()),
                    proptest::strategy::Just("Fail".to_string()),
                    "[0-9]{1,3}",
                    "[0-9]{1,3}:[0-9]{1,3}",
                    "[0-9]{1,3}/[0-9]{1,3}",
                    "[a-z:_/-]{0,8}",
                    "[0-9]{18,22}",
                ],
                0..14,
            ),
        ) {
            let line = tokens.join(" ");
            let _ = line.parse::<ThinPoolTable>();
            let _ = line.parse::<ThinTable>();
            let _ = line.parse::<ThinPoolStatus>();
            let _ = line.parse::<ThinStatus>();
            let _ = line.parse::<Raid1BaseTable>();
            let _ = format!("raid1 {line}").parse::<Raid1BaseTable>();
        }
    }
}
