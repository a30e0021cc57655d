//! The device-mapper context and its ioctls: the idempotent `ensure_*`
//! operations, reading tables and status back, reloading mirrors, and
//! removal. Needs `/dev/mapper/control` and root; the VM lab runs it.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use devicemapper::{DM, DevId, DmError as RawDmError, DmFlags, DmOptions, DmUuid};

use super::floor::{DM_INTERFACE_MAJOR, DmSupport, decide_dm_support};
use super::layout::{LegLayout, VolumeLayout};
use super::names::{DevName, LegNames, UUID_PREFIX, VolumeName};
use super::status::RaidStatus;
use super::superblock::zero_head;
use super::table::{
    LegDevices, Raid1BaseTable, Raid1Table, RaidTableReadback, Target, TargetLine,
    format_raw_table, grows, table_matches, validate_table,
};
use super::thin::{ThinPoolStatus, ThinStatus};
use super::{Device, DmError, Result, Sectors};

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

/// What [`Datapath::ensure_device_growing`] does with a running device
/// whose wanted table only appends to the one it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// A mismatch, like any other difference.
    Refuse,
    /// Load the longer table in place (suspend, swap, resume).
    Reload,
    /// Keep the device as it runs: what uses it must not see it grow (a
    /// read-only thin pool's metadata and data devices).
    KeepRunning,
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
    /// How raid tables read back are trusted: exact only once
    /// [`Datapath::check_kernel`] found dm-raid ≥ 1.15.1.
    readback: RaidTableReadback,
}

fn dm_err(op: &'static str, name: &DevName) -> impl FnOnce(RawDmError) -> DmError + use<> {
    let name = name.to_string();
    move |source| DmError::Ioctl { op, name, source }
}

/// The errno of a failed ioctl, if it was one.
fn errno_of(e: &RawDmError) -> Option<i32> {
    match e {
        RawDmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => {
            Some(**errno as i32)
        }
        _ => None,
    }
}

/// ENXIO from DM_DEV_STATUS/TABLE_STATUS means "no such device".
fn is_no_such_device(e: &RawDmError) -> bool {
    errno_of(e) == Some(libc::ENXIO)
}

/// How a table is loaded: read-write (the default), or read-only
/// (`dmsetup --readonly`, DM_READONLY): the device-mapper core opens the
/// table's devices for reading only and marks the device read-only. A
/// thin-pool is refused in a read-only table (it is always opened for
/// writing); its own `read_only` feature is the pool's read-only mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    ReadWrite,
    ReadOnly,
}

impl TableMode {
    fn options(self) -> DmOptions {
        match self {
            TableMode::ReadWrite => DmOptions::default(),
            TableMode::ReadOnly => DmOptions::default().set_flags(DmFlags::DM_READONLY),
        }
    }
    fn of(info: &devicemapper::DeviceInfo) -> TableMode {
        if info.flags().contains(DmFlags::DM_READONLY) {
            TableMode::ReadOnly
        } else {
            TableMode::ReadWrite
        }
    }
}

/// Table lines as the ioctl takes them, and as the kernel reads them back
/// (start, length, target type, parameters).
pub(super) fn raw_lines(lines: &[TargetLine]) -> Vec<(u64, u64, String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                *l.start,
                *l.len,
                l.target.target_type().to_string(),
                l.target.params(),
            )
        })
        .collect()
}

impl Datapath {
    /// Opens `/dev/mapper/control`.
    pub fn new() -> Result<Self> {
        let dm = DM::new().map_err(|e| DmError::Open(e.to_string()))?;
        Ok(Datapath {
            dm,
            mapper_dir: PathBuf::from("/dev/mapper"),
            readback: RaidTableReadback::UntrustedRebuild,
        })
    }

    /// Checks that this kernel's device-mapper can carry the head
    /// ([`decide_dm_support`]): DM interface 4, and a `raid` target of at
    /// least 4.19's 1.14.0. The target's version also decides how raid
    /// tables read back are trusted from now on (B10 of
    /// docs/kernel-floor.md).
    ///
    /// DM_LIST_VERSIONS, not DM_GET_TARGET_VERSION: the latter needs
    /// interface 4.41 and 4.19 has 4.39. It lists loaded targets only, so
    /// dm-raid is loaded first when it is missing; the kernel would load it
    /// on its own (request_module) at the first raid table, too late for a
    /// start-up check.
    pub fn check_kernel(&mut self) -> Result<DmSupport> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "(unknown release)".to_string());
        let interface = self.version().map_err(|e| DmError::Unsupported {
            kernel: kernel.clone(),
            reason: format!(
                "its device-mapper does not answer a version {DM_INTERFACE_MAJOR} VERSION ioctl \
                 ({e}); run the head on a standard Linux kernel, or run this agent with \
                 --storage-only"
            ),
        })?;
        let mut targets = Vec::new();
        if interface.0 == DM_INTERFACE_MAJOR {
            targets = self.list_versions()?;
            if !targets.iter().any(|(name, ..)| name == "raid") {
                load_module("dm-raid");
                targets = self.list_versions()?;
            }
        }
        let support = decide_dm_support(&kernel, interface, &targets)?;
        self.readback = support.readback;
        Ok(support)
    }

    /// The loaded targets and their versions (DM_LIST_VERSIONS).
    fn list_versions(&self) -> Result<Vec<(String, u32, u32, u32)>> {
        self.dm.list_versions().map_err(|source| DmError::Ioctl {
            op: "list versions",
            name: "control".into(),
            source,
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

    /// The block node of device `name` (`/dev/mapper/<name>`).
    pub fn node_path(&self, name: &DevName) -> PathBuf {
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

    /// The length of `name`'s active table.
    pub fn size(&self, name: &DevName) -> Result<Sectors> {
        Ok(Sectors(self.table(name)?.iter().map(|l| l.1).sum()))
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
        self.ensure_device_or_grow(name, lines, TableMode::ReadWrite, Growth::Refuse)
    }

    /// [`ensure_device`](Self::ensure_device) with the table loaded
    /// read-only (see [`TableMode`]). An existing device adopts only if its
    /// mode is the same too: a read-write device is a mismatch.
    pub fn ensure_device_mode(
        &self,
        name: &DevName,
        lines: &[TargetLine],
        mode: TableMode,
    ) -> Result<MappedDevice> {
        self.ensure_device_or_grow(name, lines, mode, Growth::Refuse)
    }

    /// [`ensure_device_mode`](Self::ensure_device_mode), except that a
    /// running device whose table `lines` only grows (see [`grows`]) is
    /// handled as `growth` says: reloaded with `lines`, or kept as it runs.
    pub fn ensure_device_growing(
        &self,
        name: &DevName,
        lines: &[TargetLine],
        mode: TableMode,
        growth: Growth,
    ) -> Result<MappedDevice> {
        self.ensure_device_or_grow(name, lines, mode, growth)
    }

    /// [`ensure_device`](Self::ensure_device), except that a running device
    /// whose table `lines` only grows (see [`grows`]) gets `lines` loaded
    /// in place: suspend, swap, resume, with the I/O in flight held, never
    /// failed. A device that would change otherwise is still a mismatch.
    fn ensure_device_or_grow(
        &self,
        name: &DevName,
        lines: &[TargetLine],
        mode: TableMode,
        growth: Growth,
    ) -> Result<MappedDevice> {
        validate_table(name, lines)?;
        let id = DevId::Name(name.dm_name());
        if let Some(mut info) = self.info(name)? {
            if !info.flags().contains(DmFlags::DM_ACTIVE_PRESENT) {
                tracing::warn!(%name, "device exists without an active table; loading it");
                self.load_and_resume(name, lines, mode)?;
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
            if TableMode::of(&info) != mode {
                return Err(DmError::TableMismatch {
                    name: name.to_string(),
                    found: format!(
                        "{:?} table {}",
                        TableMode::of(&info),
                        format_raw_table(&found)
                    ),
                    wanted: format!("{mode:?} table"),
                });
            }
            let begins_with = |new, old, len| self.begins_with(new, old, len);
            let shorter = || growth != Growth::Refuse && grows(&found, lines, &begins_with);
            if table_matches(lines, &found) {
            } else if growth == Growth::Reload && shorter() {
                let from: u64 = found.iter().map(|l| l.1).sum();
                let to: u64 = lines.iter().map(|l| *l.len).sum();
                self.reload(name, lines)?;
                tracing::info!(%name, from_sectors = from, to_sectors = to, "grew device");
            } else if growth == Growth::KeepRunning && shorter() {
                tracing::debug!(%name, "kept a device shorter than its layout, as it runs");
            } else {
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
            .load_and_resume(name, lines, mode)
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

    fn load_and_resume(&self, name: &DevName, lines: &[TargetLine], mode: TableMode) -> Result<()> {
        let id = DevId::Name(name.dm_name());
        self.dm
            .table_load(&id, &raw_lines(lines), mode.options())
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
    ///
    /// A running volume device whose new layout only appends space (the
    /// volume grew: more mirrored disks, or longer stripe columns) is
    /// reloaded in place, under I/O; see [`grows`].
    pub fn ensure_volume(&self, name: &DevName, layout: &VolumeLayout) -> Result<MappedDevice> {
        self.ensure_device_or_grow(name, &layout.lines(), TableMode::ReadWrite, Growth::Reload)
    }

    /// Whether device `new` maps its first `len` sectors straight onto
    /// `old` (its table starts with `linear <old> 0` at least `len` long).
    fn begins_with(&self, new: Device, old: Device, len: Sectors) -> bool {
        let Ok(devices) = self.list() else {
            return false;
        };
        let Some((name, _)) = devices.into_iter().find(|(_, d)| *d == new) else {
            return false;
        };
        let Ok(table) = self.table(&name) else {
            return false;
        };
        let want = Target::Linear {
            dev: old,
            offset: Sectors(0),
        };
        matches!(table.first(), Some((0, l, kind, params)) if *l >= *len && want.matches(kind, params))
    }

    /// The current raid1 table of a running mirror.
    pub fn raid1_table(&self, name: &DevName) -> Result<(Sectors, Raid1Table)> {
        let t = self.table(name)?;
        match t.as_slice() {
            [(0, len, kind, params)] if kind == "raid" => {
                let table =
                    Raid1Table::from_kernel(params, self.readback).map_err(|e| DmError::Parse {
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

    /// The data device of each slot of a running mirror in either form:
    /// top ([`Raid1Table`]) or base ([`Raid1BaseTable`], a frozen layer
    /// assembled read-only). `None` is an empty slot.
    pub fn raid1_data_devices(&self, name: &DevName) -> Result<Vec<Option<Device>>> {
        let t = self.table(name)?;
        let parsed = match t.as_slice() {
            [(0, _, kind, params)] if kind == "raid" => {
                match Raid1Table::from_kernel(params, self.readback) {
                    Ok(top) => Some(top.legs.iter().map(|l| l.map(|l| l.data)).collect()),
                    Err(_) => params.parse::<Raid1BaseTable>().ok().map(|base| base.data),
                }
            }
            _ => None,
        };
        parsed.ok_or_else(|| DmError::Parse {
            name: name.to_string(),
            what: "raid1 table (top or base form)",
            text: format_raw_table(&t),
        })
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
        self.reload(name, &line)
    }

    /// Loads `lines` as the inactive table of the running device `name`,
    /// then suspends and resumes to swap it in. Suspend holds new I/O and
    /// waits for the I/O in flight; nothing fails. This is also how a
    /// thin-pool changes mode (`read_only` on or off) and a thin device
    /// changes its external origin, with the devices above kept open.
    pub fn reload(&self, name: &DevName, lines: &[TargetLine]) -> Result<()> {
        validate_table(name, lines)?;
        let id = DevId::Name(name.dm_name());
        self.dm
            .table_load(&id, &raw_lines(lines), DmOptions::default())
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

    /// Loads `lines` into the inactive slot of `name` without swapping it
    /// in: the next [`resume`](Self::resume) does. This is the middle of a
    /// multi-device change made while the devices are suspended (the
    /// freeze of docs/design/snapshots.md §5.5.2). A failed load leaves the
    /// active table as it was.
    pub fn load_table(&self, name: &DevName, lines: &[TargetLine], mode: TableMode) -> Result<()> {
        validate_table(name, lines)?;
        self.dm
            .table_load(
                &DevId::Name(name.dm_name()),
                &raw_lines(lines),
                mode.options(),
            )
            .map_err(dm_err("table load", name))?;
        Ok(())
    }

    /// Suspends `name`: waits for the I/O in flight (and, for a thin-pool,
    /// commits its metadata), then holds new I/O until the resume.
    /// Suspending a suspended device is a no-op.
    pub fn suspend(&self, name: &DevName) -> Result<()> {
        self.dm
            .device_suspend(
                &DevId::Name(name.dm_name()),
                DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
            )
            .map_err(dm_err("suspend", name))?;
        Ok(())
    }

    /// Resumes `name`, swapping in a table loaded by
    /// [`load_table`](Self::load_table) first if there is one; the I/O
    /// held since the suspend then runs against it.
    pub fn resume(&self, name: &DevName) -> Result<()> {
        self.dm
            .device_suspend(&DevId::Name(name.dm_name()), DmOptions::default())
            .map_err(dm_err("resume", name))?;
        Ok(())
    }

    /// Whether `name` is suspended, or `None` if it does not exist. A
    /// restarted agent reads this to finish a sequence a crash cut short.
    pub fn suspended(&self, name: &DevName) -> Result<Option<bool>> {
        Ok(self
            .info(name)?
            .map(|info| info.flags().contains(DmFlags::DM_SUSPEND)))
    }

    /// Sends a target message (DM_TARGET_MSG, sector 0) and returns the
    /// target's reply text, if any.
    pub fn message(&self, name: &DevName, msg: &str) -> Result<Option<String>> {
        let (_, reply) = self
            .dm
            .target_msg(&DevId::Name(name.dm_name()), None, msg)
            .map_err(dm_err("message", name))?;
        Ok(reply)
    }

    /// Creates thin device `dev_id` in the running pool `pool`
    /// (`create_thin <id>`). Returns false if the pool already has it
    /// (the kernel's EEXIST): the thin device lives in the pool's metadata,
    /// so a retry after a crash finds it there.
    pub fn create_thin(&self, pool: &DevName, dev_id: u32) -> Result<bool> {
        match self.dm.target_msg(
            &DevId::Name(pool.dm_name()),
            None,
            &format!("create_thin {dev_id}"),
        ) {
            Ok(_) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(dm_err("message create_thin", pool)(e)),
        }
    }

    /// Parsed status of a thin-pool: usage, mode, `needs_check`.
    pub fn thin_pool_status(&self, name: &DevName) -> Result<ThinPoolStatus> {
        self.single_status(name, "thin-pool", "thin-pool status")
    }

    /// Parsed status of a thin device: the sectors it maps in its pool.
    pub fn thin_status(&self, name: &DevName) -> Result<ThinStatus> {
        self.single_status(name, "thin", "thin status")
    }

    /// The status of a one-line device of target `kind`, parsed as `T`.
    fn single_status<T: std::str::FromStr<Err = String>>(
        &self,
        name: &DevName,
        kind: &str,
        what: &'static str,
    ) -> Result<T> {
        let t = self.raw_status(name)?;
        match t.as_slice() {
            [(_, _, k, params)] if k == kind => params.parse::<T>().map_err(|e| DmError::Parse {
                name: name.to_string(),
                what,
                text: format!("{params} ({e})"),
            }),
            _ => Err(DmError::Parse {
                name: name.to_string(),
                what,
                text: format_raw_table(&t),
            }),
        }
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

    /// Removes every device of `volume` (or of a thin volume's layer) from
    /// the top down, so no device is removed while another still maps it:
    /// a layer's thin device, its pool, the pool's metadata and data
    /// linears, then the volume (or layer space) device, stripe columns,
    /// mirrors and legs. Returns the removed names. The NBD devices
    /// underneath are the caller's (disconnect them afterwards).
    ///
    /// Devices of one rank map none of each other, so up to `workers` of
    /// them are removed at once (a dm-raid's removal writes its superblock
    /// and bitmap over NBD, and waits for it): a rank is finished before
    /// the next one starts. A rank where a removal fails is still finished
    /// (each failure logged), then the teardown stops with the first error,
    /// leaving every device below in place for the next attempt.
    pub fn teardown_volume(&self, volume: &VolumeName, workers: usize) -> Result<Vec<DevName>> {
        let top = volume.top();
        let prefix = format!("{}+", top.as_str());
        let mine: Vec<DevName> = self
            .list()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| *n == top || n.as_str().starts_with(&prefix))
            .collect();
        let (thin, pool) = (volume.thin(), volume.pool());
        let (tmeta, tdata) = (volume.thin_meta(), volume.thin_data());
        let rank = |n: &DevName| {
            if *n == thin {
                0
            } else if *n == pool {
                1
            } else if *n == tmeta || *n == tdata {
                2
            } else if *n == top {
                3
            } else if n.as_str().ends_with("+meta") || n.as_str().ends_with("+data") {
                6
            } else if n.as_str().starts_with(&format!("{prefix}c")) {
                // Stripe columns sit between the top and the mirrors.
                4
            } else {
                5
            }
        };
        let mut ordered = mine;
        ordered.sort_by_key(|n| (rank(n), n.clone()));
        let mut start = 0;
        while start < ordered.len() {
            let r = rank(&ordered[start]);
            let end = start + ordered[start..].partition_point(|n| rank(n) == r);
            let removed = vsky_sync::map_bounded(
                ordered[start..end].iter().collect(),
                workers,
                || (),
                |_, n| (n, self.remove(n)),
            );
            let mut first = None;
            for (n, r) in removed {
                if let Err(e) = r {
                    tracing::warn!(device = %n, error = %e, "cannot remove a device of the volume");
                    first.get_or_insert(e);
                }
            }
            if let Some(e) = first {
                return Err(e);
            }
            start = end;
        }
        Ok(ordered)
    }
}

/// Loads a kernel module with modprobe, as the agent's service unit does
/// before start (`ExecStartPre=-/sbin/modprobe -a nbd dm-mod dm-raid …`).
/// Best effort: what is still missing afterwards is reported by the caller,
/// with what to do.
fn load_module(name: &str) {
    let status = ["modprobe", "/sbin/modprobe", "/usr/sbin/modprobe"]
        .iter()
        .find_map(|bin| std::process::Command::new(bin).arg(name).status().ok());
    match status {
        Some(s) if s.success() => tracing::info!(module = name, "loaded kernel module"),
        Some(s) => tracing::warn!(module = name, %s, "modprobe failed"),
        None => tracing::warn!(module = name, "modprobe not found; cannot load the module"),
    }
}
