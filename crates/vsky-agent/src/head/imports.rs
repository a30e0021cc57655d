//! The NBD legs of the head: importing a chunk through the kernel NBD
//! client (or mapping one on a local block device in place), adopting an
//! import the kernel already has, giving a dead import a fresh connection,
//! and bringing back legs the manager lists active again.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vsky_api::types::{ChunkId, LegSpec, LegState, VolumeSpec};
use vsky_kernel::dm::{
    Datapath, Device, LegDevices, LegLayout, MappedDevice, Sectors, TableMode, Target, TargetLine,
    VolumeName,
};
use vsky_kernel::nbd::{self, BackendLookup, ConnectRequest, NbdIndex, NbdNetlink};

use super::naming::{backend_id, backend_prefix, leg_tag, parse_backend_rest};
use super::{Head, HeadError, NbdTimeouts, REVIVE_BACKOFF, sectors};

/// Where the head keeps which NBD device imports which leg when the
/// kernel does not (before Linux 5.14; `nbd::BackendFile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdBackendFile {
    /// The file, on a tmpfs such as /run: it must be empty after a reboot,
    /// when the NBD devices are gone too.
    pub path: PathBuf,
    /// Use the file even on a kernel that keeps identifiers (the lab runs
    /// the 4.19 path this way on a newer kernel).
    pub always: bool,
}

impl Default for NbdBackendFile {
    fn default() -> Self {
        NbdBackendFile {
            path: PathBuf::from(nbd::DEFAULT_BACKEND_FILE),
            always: false,
        }
    }
}

/// One volume's NBD imports, by leg: what the kernel (or the head's file)
/// lists, read once and then kept current by the head's own connects.
/// `Head::ensure` holds one for the whole assembly: reading every NBD
/// device's backend for each leg made a volume's activation quadratic in
/// its legs (docs/design/activation.md, step 1).
#[derive(Debug, Default)]
pub(super) struct ImportIndex {
    volume: String,
    by_leg: HashMap<(u32, ChunkId), (NbdIndex, String)>,
}

impl ImportIndex {
    /// The imports of `volume` among `backends` (device, backend
    /// identifier), in either identifier form; of two imports of one leg,
    /// the first listed.
    pub(super) fn of(volume: &str, backends: Vec<(NbdIndex, String)>) -> Self {
        let prefix = backend_prefix(volume);
        let mut by_leg = HashMap::new();
        for (index, backend) in backends {
            let Some(leg) = backend.strip_prefix(&prefix).and_then(parse_backend_rest) else {
                continue;
            };
            by_leg.entry(leg).or_insert((index, backend));
        }
        ImportIndex {
            volume: volume.to_string(),
            by_leg,
        }
    }

    fn get(&self, k: usize, chunk: ChunkId) -> Option<(NbdIndex, String)> {
        self.by_leg.get(&(k as u32, chunk)).cloned()
    }
}

impl Head {
    /// The NBD import of `chunk` in mirrored disk `k` of `volume`, with the
    /// backend identifier it was connected with (either form): from the
    /// assembly's index while `ensure` runs, else from the kernel, or from
    /// the head's own file on kernels without identifiers.
    pub(super) fn find_import(
        &mut self,
        volume: &str,
        k: usize,
        chunk: ChunkId,
    ) -> Result<Option<(NbdIndex, String)>, HeadError> {
        if let Some(imports) = self.imports.as_ref().filter(|i| i.volume == volume) {
            return Ok(imports.get(k, chunk));
        }
        Ok(ImportIndex::of(volume, self.nl.list_backends()?).get(k, chunk))
    }

    /// Adds an import just connected to the assembly's index, so the rest
    /// of `ensure` adopts it instead of connecting it again.
    pub(super) fn note_import(
        &mut self,
        volume: &str,
        k: usize,
        chunk: ChunkId,
        new: Option<(NbdIndex, String)>,
    ) {
        let Some(new) = new else { return };
        if let Some(imports) = self.imports.as_mut().filter(|i| i.volume == volume) {
            imports.by_leg.insert((k as u32, chunk), new);
        }
    }

    /// Brings back legs of mirror `k` that the kernel failed but the manager
    /// lists active again (their server returned within its grace period):
    /// the NBD import gets a fresh socket in place (netlink RECONFIGURE;
    /// the device, and so the mirror's table, stay the same), then the
    /// mirror's table is reloaded so dm-raid re-adds the leg and resyncs
    /// only what its write-intent bitmap marks. Best effort: a leg still
    /// unreachable stays dead and is reported again by the health loop.
    pub(super) fn revive_returned_legs(&mut self, vol: &VolumeName, spec: &VolumeSpec, k: usize) {
        let legs = &spec.mirrored_disks[k];
        let name = vol.raid(k as u32);
        let Ok(status) = self.dp.raid1_status(&name) else {
            return;
        };
        let dead = status.dead_legs();
        if dead.is_empty() {
            return;
        }
        let Ok(chunks) = self
            .device_names()
            .and_then(|names| self.slot_chunks(vol, k as u32, &names))
        else {
            return;
        };
        let mut back = Vec::new();
        for position in dead {
            // The manager's slot of the dead chunk: while a leg moves, the
            // kernel's slots and the manager's can differ. None: the dead
            // device is another chunk's (a replacement is due, or the leg
            // is moving away).
            let Some(l) = chunks
                .get(position)
                .copied()
                .flatten()
                .and_then(|chunk| legs.iter().position(|leg| leg.chunk == chunk))
            else {
                continue;
            };
            let leg = &legs[l];
            if leg.state != LegState::Active {
                continue;
            }
            let key = (spec.name.clone(), k, l, leg.chunk);
            if self
                .revive_attempts
                .get(&key)
                .is_some_and(|t| t.elapsed() < REVIVE_BACKOFF)
            {
                continue;
            }
            self.revive_attempts.insert(key, Instant::now());
            let local = leg
                .local_disk_path
                .as_ref()
                .is_some_and(|p| self.local_block_disks.contains(&PathBuf::from(p)));
            let reconnected = if local {
                Ok(())
            } else {
                self.reconnect(&spec.name, k, leg)
            };
            match reconnected {
                Ok(()) => back.push(l),
                Err(e) => {
                    tracing::warn!(volume = %spec.name, mirrored_disk = k, leg = l, error = %e,
                    "cannot bring the returned leg back yet")
                }
            }
        }
        if back.is_empty() {
            return;
        }
        match self.dp.reload_raid1(&name) {
            Ok(()) => tracing::info!(volume = %spec.name, mirrored_disk = k, legs = ?back,
                "returned legs re-added; catching up from the write-intent bitmap"),
            Err(e) => tracing::warn!(volume = %spec.name, mirrored_disk = k, error = %e,
                "cannot reload the mirror to re-add returned legs"),
        }
        self.revive_attempts
            .retain(|(v, m, l, _), _| !(v == &spec.name && *m == k && back.contains(l)));
    }

    /// Gives the existing NBD import of a leg of mirrored disk `k` a fresh
    /// connection in place.
    pub(super) fn reconnect(
        &mut self,
        volume: &str,
        k: usize,
        leg: &LegSpec,
    ) -> Result<(), HeadError> {
        // The kernel refuses a RECONFIGURE whose backend identifier differs
        // from the device's: use the one it holds (an older agent's form
        // names the slot). A kernel without identifiers checks nothing:
        // then the index comes from the head's file, just verified against
        // the kernel (connected, same size).
        let (index, backend) =
            self.find_import(volume, k, leg.chunk)?
                .ok_or_else(|| HeadError::Layout {
                    volume: volume.to_string(),
                    reason: format!(
                        "the NBD import of chunk {} is gone; it is replaced instead",
                        leg_tag(leg.chunk)
                    ),
                })?;
        let (socket, _) = handshake(&leg.server_address, &leg.export_name, self.timeouts.connect)
            .map_err(|e| HeadError::Layout {
            volume: volume.to_string(),
            reason: format!("cannot reach {} ({}): {e}", leg.server, leg.server_address),
        })?;
        self.nl.reconfigure(index, &backend, &[socket.as_fd()])?;
        Ok(())
    }
}

/// The netlink socket of one of the threads that import a volume's legs at
/// once (a netlink socket carries one request at a time), opened when the
/// thread first connects or disconnects, looking imports up where the
/// head's own socket does.
pub(super) struct LazyNetlink<'a> {
    socket: Option<NbdNetlink>,
    lookup: &'a BackendLookup,
}

impl<'a> LazyNetlink<'a> {
    pub(super) fn new(lookup: &'a BackendLookup) -> Self {
        LazyNetlink {
            socket: None,
            lookup,
        }
    }

    /// Disconnects an import.
    pub(super) fn disconnect(&mut self, index: NbdIndex) -> Result<(), HeadError> {
        Ok(self.socket()?.disconnect(index)?)
    }

    fn socket(&mut self) -> Result<&mut NbdNetlink, HeadError> {
        let nl = match self.socket.take() {
            Some(nl) => nl,
            None => match self.lookup {
                BackendLookup::Kernel => NbdNetlink::open(),
                BackendLookup::File(file) => NbdNetlink::open_with_backend_file(file.clone(), true),
            }
            .map_err(HeadError::Netlink)?,
        };
        Ok(self.socket.insert(nl))
    }
}

/// What making one leg's devices gave: the devices, and the import it
/// connected, if any (whether or not the devices could be made, so the
/// assembly's index never misses a connected import).
pub(super) type LegOutcome<R> = (Result<R, HeadError>, Option<(NbdIndex, String)>);

/// What making a leg's devices needs from the head, shared by the threads
/// that make a volume's legs at once (`Head::assemble`): the dm interface
/// (its ioctls are independent of each other), the NBD timeouts, and this
/// server's own block devices.
#[derive(Clone, Copy)]
pub(super) struct LegMaker<'a> {
    pub(super) dp: &'a Datapath,
    pub(super) timeouts: NbdTimeouts,
    pub(super) local_block_disks: &'a BTreeSet<PathBuf>,
}

impl LegMaker<'_> {
    /// Imports one leg (or adopts `known`, its import already connected)
    /// and carves its meta and data devices. A new member (a replacement
    /// leg) gets its metadata area zeroed when its devices are first
    /// created, so dm-raid rebuilds it rather than trusting whatever an
    /// earlier user of the chunk left there. Also returns the import it
    /// connected, if any, whether or not the devices could be made.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn leg(
        &self,
        nl: &mut LazyNetlink<'_>,
        vol: &VolumeName,
        spec: &VolumeSpec,
        k: usize,
        leg: &LegSpec,
        layout: LegLayout,
        new_member: bool,
        known: Option<NbdIndex>,
    ) -> LegOutcome<LegDevices> {
        let (source, new) = self.source(nl, spec, k, leg, layout, known);
        let devices = source.and_then(|(parent, layout)| {
            let names = vol.leg(k as u32, &leg_tag(leg.chunk))?;
            Ok(self
                .dp
                .ensure_leg(&names, parent, layout, new_member)?
                .devices())
        });
        (devices, new)
    }

    /// One leg of a base (a frozen layer, `chain.rs`): its import (or
    /// local chunk) and a read-only linear over its data area; its metadata
    /// area is never mapped.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn base_leg(
        &self,
        nl: &mut LazyNetlink<'_>,
        vol: &VolumeName,
        as_volume: &VolumeSpec,
        k: usize,
        leg: &LegSpec,
        layout: LegLayout,
        known: Option<NbdIndex>,
    ) -> LegOutcome<MappedDevice> {
        let (source, new) = self.source(nl, as_volume, k, leg, layout, known);
        let device = source.and_then(|(parent, layout)| {
            let names = vol.leg(k as u32, &leg_tag(leg.chunk))?;
            let line = TargetLine {
                start: Sectors(0),
                len: layout.data_size,
                target: Target::Linear {
                    dev: parent,
                    offset: Sectors(*layout.start + *layout.meta_size),
                },
            };
            Ok(self
                .dp
                .ensure_device_mode(&names.data, &[line], TableMode::ReadOnly)?)
        });
        (device, new)
    }

    /// The device a leg's chunk is on, and where on it: a chunk of one of
    /// this server's block devices in place, anything else imported (or
    /// `known`, its import already connected); with the import it
    /// connected, if any.
    pub(super) fn source(
        &self,
        nl: &mut LazyNetlink<'_>,
        spec: &VolumeSpec,
        k: usize,
        leg: &LegSpec,
        layout: LegLayout,
        known: Option<NbdIndex>,
    ) -> LegOutcome<(Device, LegLayout)> {
        match leg.local_disk_path.as_ref().map(PathBuf::from) {
            Some(path) if self.local_block_disks.contains(&path) => {
                // A chunk on our own block device: map it in place, no
                // network hop.
                (local_device(spec, &path, leg, layout), None)
            }
            // A remote chunk, or one on a local *file* (labs only: a file is
            // not a block device, so it goes through our own NBD export).
            _ => {
                if let Some(index) = known {
                    return (
                        index.device().map(|d| (d, layout)).map_err(Into::into),
                        None,
                    );
                }
                match self.connect(nl, &spec.name, k, spec.chunk_size_bytes, leg) {
                    Ok((index, backend)) => (
                        index.device().map(|d| (d, layout)).map_err(Into::into),
                        Some((index, backend)),
                    ),
                    Err(e) => (Err(e), None),
                }
            }
        }
    }

    /// Connects a new import of a chunk of mirrored disk `k` through the
    /// kernel NBD client: our handshake, then the socket handed to the
    /// kernel.
    fn connect(
        &self,
        nl: &mut LazyNetlink<'_>,
        volume: &str,
        k: usize,
        chunk_size_bytes: u64,
        leg: &LegSpec,
    ) -> Result<(NbdIndex, String), HeadError> {
        let backend = backend_id(volume, k, leg.chunk);
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
        let mut req = ConnectRequest::new(info.size_bytes, info.transmission_flags, &backend);
        req.timeout = self.timeouts.request;
        req.dead_conn_timeout = self.timeouts.dead_connection;
        let index = nl.socket()?.connect(&req, &[socket.as_fd()])?;
        // The kernel holds its own reference to the socket.
        drop(socket);
        Ok((index, backend.to_string()))
    }
}

/// A chunk on one of this server's block devices (`path`), mapped in place.
fn local_device(
    spec: &VolumeSpec,
    path: &std::path::Path,
    leg: &LegSpec,
    layout: LegLayout,
) -> Result<(Device, LegLayout), HeadError> {
    let meta = std::fs::metadata(path).map_err(|e| HeadError::Layout {
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
    Ok((device, layout.at(sectors(leg.offset_bytes))))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(disk_id: u64, index: u32) -> ChunkId {
        ChunkId { disk_id, index }
    }

    #[test]
    fn imports_are_found_in_both_forms() {
        let backends = vec![
            (NbdIndex(0), "vsky:vol2:0:17:5".to_string()),
            (NbdIndex(1), "vsky:vol:1:17:5".to_string()),
            (NbdIndex(2), "vsky:vol:0:1:17:5".to_string()),
            (NbdIndex(3), "vsky:vol:0:17:6".to_string()),
            (NbdIndex(4), "lab/x".to_string()),
        ];
        let find = |volume: &str, k: usize, c: ChunkId| {
            ImportIndex::of(volume, backends.clone()).get(k, c)
        };
        assert_eq!(
            find("vol", 0, chunk(17, 5)),
            Some((NbdIndex(2), "vsky:vol:0:1:17:5".to_string()))
        );
        assert_eq!(
            find("vol", 0, chunk(17, 6)),
            Some((NbdIndex(3), "vsky:vol:0:17:6".to_string()))
        );
        assert_eq!(
            find("vol", 1, chunk(17, 5)).map(|(i, _)| i),
            Some(NbdIndex(1))
        );
        // Not another volume's, nor another mirror's.
        assert_eq!(find("vol2", 1, chunk(17, 5)), None);
        assert_eq!(find("vo", 0, chunk(17, 5)), None);
        // Of two imports of one leg, the first listed is adopted.
        let twice = vec![
            (NbdIndex(7), "vsky:vol:0:17:5".to_string()),
            (NbdIndex(8), "vsky:vol:0:0:17:5".to_string()),
        ];
        assert_eq!(
            ImportIndex::of("vol", twice)
                .get(0, chunk(17, 5))
                .map(|(i, _)| i),
            Some(NbdIndex(7))
        );
    }
}
