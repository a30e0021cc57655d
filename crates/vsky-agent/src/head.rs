//! The head role: assembling attached volumes in the kernel, and tearing
//! them down.
//!
//! For every mirrored disk, each leg that is not known to have failed is
//! imported: a chunk on another server through the kernel NBD client (a
//! socket we handshake, then hand to the kernel over netlink), a chunk on
//! one of this server's block devices directly. Each leg is carved into a
//! metadata and a data device, the legs form a dm-raid raid1 mirror, and the
//! mirrors are concatenated (or striped) into `/dev/mapper/vsky-<volume>`.
//!
//! Everything is idempotent and adopts what the kernel already has: NBD
//! devices by their backend identifier, dm devices by name and table. So an
//! agent restarted while volumes are attached picks them up unchanged.
//!
//! All calls here block (ioctls, netlink, socket handshakes): the agent runs
//! them on the blocking pool, one at a time (the [`Head`] is behind a mutex).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use vsky_api::types::{LegSpec, LegState, VolumeSpec};
use vsky_kernel::dm::{
    Datapath, Device, LegDevices, LegLayout, MappedDevice, Raid1Table, Sectors, VolumeLayout,
    VolumeName,
};
use vsky_kernel::nbd::{self, ConnectRequest, NbdNetlink};

const SECTOR: u64 = 512;
/// Bitmap region of the mirrors: the unit a returning leg resyncs in.
const REGION_SECTORS: u64 = 2048;
/// Backend identifiers start with this, so we only ever touch our devices.
const BACKEND_PREFIX: &str = "vsky:";

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Dm(#[from] vsky_kernel::dm::DmError),
    #[error(transparent)]
    Nbd(#[from] vsky_kernel::nbd::NbdError),
    #[error(
        "volume {volume}: mirrored disk {mirrored_disk} has no reachable leg; its data is unavailable until a leg's server returns"
    )]
    NoLeg {
        volume: String,
        mirrored_disk: usize,
    },
    #[error("volume {volume}: {reason}")]
    Layout { volume: String, reason: String },
}

/// Timeouts for imported legs: finite, so a dead server turns into an I/O
/// error that degrades the mirror instead of hanging it.
#[derive(Clone, Copy, Debug)]
pub struct NbdTimeouts {
    pub request: Duration,
    pub dead_connection: Duration,
    pub connect: Duration,
}

/// What one assembly found, for the agent to report.
#[derive(Debug, Default)]
pub struct Assembly {
    pub device: PathBuf,
    /// Legs (mirrored disk, leg) that could not be imported.
    pub unreachable_legs: Vec<(u32, u8)>,
}

pub struct Head {
    dp: Datapath,
    nl: NbdNetlink,
    timeouts: NbdTimeouts,
    /// This server's block-device disks, by path, for direct local legs.
    local_block_disks: BTreeSet<PathBuf>,
}

fn sectors(bytes: u64) -> Sectors {
    Sectors(bytes / SECTOR)
}

/// The identifier the kernel keeps for an imported leg (visible in sysfs,
/// so it holds no secret): volume, mirrored disk, leg slot and chunk.
fn backend_id(volume: &str, k: usize, l: usize, leg: &LegSpec) -> String {
    format!(
        "{BACKEND_PREFIX}{volume}:{k}:{l}:{}:{}",
        leg.chunk.disk_id, leg.chunk.index
    )
}

impl Head {
    pub fn open(
        timeouts: NbdTimeouts,
        local_block_disks: BTreeSet<PathBuf>,
    ) -> Result<Self, HeadError> {
        Ok(Head {
            dp: Datapath::new()?,
            nl: NbdNetlink::open()?,
            timeouts,
            local_block_disks,
        })
    }

    /// Volumes whose top device exists in the kernel (ours: `vsky-` names
    /// without the internal `+` separator).
    pub fn assembled_volumes(&self) -> Result<BTreeSet<String>, HeadError> {
        let prefix = vsky_kernel::dm::NAME_PREFIX;
        Ok(self
            .dp
            .list()?
            .into_iter()
            .filter_map(|(n, _)| {
                n.as_str()
                    .strip_prefix(prefix)
                    .filter(|v| !v.contains('+'))
                    .map(String::from)
            })
            .collect())
    }

    /// Creates or adopts every device of `spec`; returns the volume device.
    pub fn ensure(&mut self, spec: &VolumeSpec) -> Result<Assembly, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let layout =
            LegLayout::with_meta(sectors(spec.chunk_size_bytes), sectors(spec.leg_meta_bytes))?;
        let data_len = layout.data_size;
        let mut assembly = Assembly::default();
        let mut mirrors: Vec<MappedDevice> = Vec::with_capacity(spec.mirrored_disks.len());
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            let mut slots: Vec<Option<LegDevices>> = Vec::with_capacity(legs.len());
            for (l, leg) in legs.iter().enumerate() {
                if leg.state == LegState::Failed {
                    slots.push(None);
                    continue;
                }
                match self.leg(&vol, spec, k, l, leg, layout) {
                    Ok(devices) => slots.push(Some(devices)),
                    Err(e) => {
                        tracing::warn!(volume = %spec.name, mirrored_disk = k, leg = l, server = %leg.server, error = %e,
                            "leg unreachable; assembling the mirror without it");
                        assembly.unreachable_legs.push((k as u32, l as u8));
                        slots.push(None);
                    }
                }
            }
            if slots.iter().all(Option::is_none) {
                return Err(HeadError::NoLeg {
                    volume: spec.name.clone(),
                    mirrored_disk: k,
                });
            }
            mirrors.push(self.mirror(&vol, k as u32, data_len, slots)?);
        }
        let top = self.top(&vol, spec, data_len, &mirrors)?;
        assembly.device = top.path;
        Ok(assembly)
    }

    /// Imports one leg and carves its meta and data devices.
    fn leg(
        &mut self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        k: usize,
        l: usize,
        leg: &LegSpec,
        layout: LegLayout,
    ) -> Result<LegDevices, HeadError> {
        let tag = format!("d{}c{}", leg.chunk.disk_id, leg.chunk.index);
        let names = vol.leg(k as u32, &tag)?;
        let (parent, layout) = match leg.local_disk_path.as_ref().map(PathBuf::from) {
            Some(path) if self.local_block_disks.contains(&path) => {
                // A chunk on our own block device: map it in place, no
                // network hop.
                let meta = std::fs::metadata(&path).map_err(|e| HeadError::Layout {
                    volume: spec.name.clone(),
                    reason: format!("cannot stat local disk {}: {e}", path.display()),
                })?;
                if !meta.file_type().is_block_device() {
                    return Err(HeadError::Layout {
                        volume: spec.name.clone(),
                        reason: format!("{} is no block device", path.display()),
                    });
                }
                let rdev = meta.rdev();
                let device = Device {
                    major: libc::major(rdev),
                    minor: libc::minor(rdev),
                };
                (device, layout.at(sectors(leg.offset_bytes)))
            }
            // A remote chunk, or one on a local *file* (labs only: a file is
            // not a block device, so it goes through our own NBD export).
            _ => (
                self.import(
                    &backend_id(&spec.name, k, l, leg),
                    spec.chunk_size_bytes,
                    leg,
                )?,
                layout,
            ),
        };
        Ok(self.dp.ensure_leg(&names, parent, layout, false)?.devices())
    }

    /// Imports a chunk through the kernel NBD client, or adopts the device
    /// already connected for it.
    fn import(
        &mut self,
        backend: &str,
        chunk_size_bytes: u64,
        leg: &LegSpec,
    ) -> Result<Device, HeadError> {
        if let Some(index) = nbd::find_by_backend(backend)? {
            return Ok(index.device()?);
        }
        let (socket, info) =
            handshake(&leg.server_address, &leg.export_name, self.timeouts.connect).map_err(
                |e| HeadError::Layout {
                    volume: backend.to_string(),
                    reason: format!("cannot reach {} ({}): {e}", leg.server, leg.server_address),
                },
            )?;
        if info.size_bytes != chunk_size_bytes {
            return Err(HeadError::Layout {
                volume: backend.to_string(),
                reason: format!(
                    "server {} exports {} bytes, expected a {chunk_size_bytes}-byte chunk",
                    leg.server, info.size_bytes
                ),
            });
        }
        let mut req = ConnectRequest::new(info.size_bytes, info.transmission_flags, backend);
        req.timeout = self.timeouts.request;
        req.dead_conn_timeout = self.timeouts.dead_connection;
        let index = self.nl.connect(&req, &[socket.as_fd()])?;
        // The kernel holds its own reference to the socket.
        drop(socket);
        Ok(index.device()?)
    }

    /// Creates the mirror, or adopts a running one whose live legs match.
    fn mirror(
        &self,
        vol: &VolumeName,
        k: u32,
        len: Sectors,
        slots: Vec<Option<LegDevices>>,
    ) -> Result<MappedDevice, HeadError> {
        let name = vol.raid(k);
        if self.dp.lookup(&name)?.is_some() {
            // A running mirror may still list a leg that has since failed
            // (dm-raid marks it dead, the manager marks it failed): adopt it
            // as long as every leg we expect is where we expect it.
            let (_, table) = self.dp.raid1_table(&name)?;
            let consistent = slots.len() == table.legs.len()
                && slots
                    .iter()
                    .zip(&table.legs)
                    .all(|(want, have)| want.is_none() || want == have);
            if !consistent {
                return Err(HeadError::Layout {
                    volume: vol.as_str().to_string(),
                    reason: format!(
                        "running mirror {} has other legs than the manager's layout",
                        name.as_str()
                    ),
                });
            }
            let node = name.node_path();
            let device = self.dp.lookup(&name)?.expect("looked up above");
            return Ok(MappedDevice {
                name,
                device,
                path: node,
                created: false,
            });
        }
        let mut region = REGION_SECTORS;
        // dm-raid's bitmap has at most 2^21 regions.
        while region < *len >> 21 {
            region <<= 1;
        }
        let table = Raid1Table::new(slots, Sectors(region.min(*len)));
        Ok(self.dp.ensure_raid1(&name, len, &table)?)
    }

    /// The volume device over the mirrors: a concatenation, or stripes
    /// whose columns concatenate every `width`-th mirror.
    fn top(
        &self,
        vol: &VolumeName,
        spec: &VolumeSpec,
        data_len: Sectors,
        mirrors: &[MappedDevice],
    ) -> Result<MappedDevice, HeadError> {
        let size = sectors(spec.size_bytes);
        let layout = match &spec.stripe {
            None => {
                let mut left = *size;
                let mut parts = Vec::new();
                for m in mirrors {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(*data_len);
                    parts.push((m.device, Sectors(take)));
                    left -= take;
                }
                VolumeLayout::Linear(parts)
            }
            Some(stripe) => {
                let width = stripe.width as usize;
                if width == 0 || !mirrors.len().is_multiple_of(width) {
                    return Err(HeadError::Layout {
                        volume: spec.name.clone(),
                        reason: "mirrored disks are not a multiple of the stripe width".into(),
                    });
                }
                let per_column = *size / width as u64;
                let mut members = Vec::with_capacity(width);
                for c in 0..width {
                    let column: Vec<&MappedDevice> =
                        mirrors.iter().skip(c).step_by(width).collect();
                    let device = if column.len() == 1 {
                        column[0].device
                    } else {
                        let mut left = per_column;
                        let parts = column
                            .iter()
                            .map(|m| {
                                let take = left.min(*data_len);
                                left -= take;
                                (m.device, Sectors(take))
                            })
                            .filter(|(_, l)| **l > 0)
                            .collect();
                        self.dp
                            .ensure_volume(&vol.column(c as u32), &VolumeLayout::Linear(parts))?
                            .device
                    };
                    members.push((device, Sectors(per_column)));
                }
                VolumeLayout::Striped {
                    chunk: sectors(stripe.unit_bytes),
                    members,
                }
            }
        };
        Ok(self.dp.ensure_volume(&vol.top(), &layout)?)
    }

    /// Removes every device of a volume and disconnects its legs.
    pub fn teardown(&mut self, volume: &str) -> Result<(), HeadError> {
        let vol = VolumeName::new(volume)?;
        self.dp.teardown_volume(&vol)?;
        let prefix = format!("{BACKEND_PREFIX}{volume}:");
        for (index, backend) in nbd::list_backends()? {
            if backend.starts_with(&prefix) {
                self.nl.disconnect(index)?;
            }
        }
        Ok(())
    }

    /// Legs the kernel reports dead, as (mirrored disk, leg) of `spec`.
    pub fn dead_legs(&self, spec: &VolumeSpec) -> Result<Vec<(u32, u8)>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let mut dead = Vec::new();
        for k in 0..spec.mirrored_disks.len() {
            let status = self.dp.raid1_status(&vol.raid(k as u32))?;
            dead.extend(status.dead_legs().into_iter().map(|l| (k as u32, l as u8)));
        }
        Ok(dead)
    }

    /// Per-mirror health (`AA`, `AD`, …) of an assembled volume.
    pub fn health(&self, spec: &VolumeSpec) -> Result<BTreeMap<u32, String>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let mut out = BTreeMap::new();
        for k in 0..spec.mirrored_disks.len() as u32 {
            out.insert(k, self.dp.raid1_status(&vol.raid(k))?.health_string());
        }
        Ok(out)
    }
}

/// Connects and negotiates a socket the kernel can take over.
fn handshake(
    address: &str,
    export: &str,
    timeout: Duration,
) -> std::io::Result<(std::net::TcpStream, vsky_nbd::client::ExportInfo)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let connect = async {
            let mut s = tokio::net::TcpStream::connect(address).await?;
            s.set_nodelay(true)?;
            let info = vsky_nbd::client::handshake(&mut s, export)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>((s.into_std()?, info))
        };
        let (s, info) = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "NBD connect timed out")
        })??;
        // The kernel drives the socket in blocking mode.
        s.set_nonblocking(false)?;
        Ok((s, info))
    })
}
