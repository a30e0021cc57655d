//! What the head reports about its volumes: legs the kernel marks dead,
//! resync progress, scrub (dm-raid `check`) state and results, mirror
//! health, the pools of the thin layers it writes, and whether a volume's
//! device is held open.

use std::collections::{BTreeMap, HashMap};

use vsky_api::types::{ChunkId, LayerForm, PoolReport, ResyncReport, VolumeSpec};
use vsky_kernel::dm::{
    Datapath, DevName, Device, LegHealth, PoolMode, SyncAction, ThinPoolStatus, VolumeName,
};

use super::naming::parse_tag;
use super::{Head, HeadError};

impl Head {
    /// How many openers hold a volume's device (`/dev/mapper/vsky-NAME`)
    /// open, or `None` if it is not assembled here. A volume held open
    /// cannot be torn down. Opens its own device-mapper handle, so it does
    /// not wait for a running assembly.
    pub fn volume_open_count(volume: &str) -> Result<Option<i32>, HeadError> {
        let vol = VolumeName::new(volume)?;
        Ok(Datapath::new()?.open_count(&vol.top())?)
    }

    /// Legs the kernel reports dead, as (mirrored disk, leg, chunk of the
    /// dead device) of `spec`. The chunk matters: until its replacement
    /// goes in, a slot's dead device is the old chunk's, while the manager
    /// already lists the new one there. The leg is the manager's slot of
    /// that chunk (while a leg moves, the kernel may hold it in another
    /// slot), or the kernel's slot for a chunk the manager no longer lists.
    pub fn dead_legs(
        &self,
        spec: &VolumeSpec,
    ) -> Result<Vec<(u32, u8, Option<ChunkId>)>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let names = self.device_names()?;
        let mut dead = Vec::new();
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            let k = k as u32;
            let status = self.dp.raid1_status(&vol.raid(k))?;
            let chunks = self.slot_chunks(&vol, k, &names)?;
            dead.extend(status.dead_legs().into_iter().map(|position| {
                let chunk = chunks.get(position).copied().flatten();
                let l = chunk
                    .and_then(|c| legs.iter().position(|leg| leg.chunk == c))
                    .unwrap_or(position);
                (k, l as u8, chunk)
            }));
        }
        Ok(dead)
    }

    /// Progress of the resyncs this head runs for `spec` (its legs with a
    /// `resync_job`). A leg is done when dm-raid reports it in sync and
    /// idle, with the target chunk's device in the mirror (in its slot, or
    /// in another one while a move is between two reshapes).
    pub fn resyncs(&self, spec: &VolumeSpec) -> Result<Vec<ResyncReport>, HeadError> {
        let vol = VolumeName::new(&spec.name)?;
        let data_bytes = spec.chunk_size_bytes.saturating_sub(spec.leg_meta_bytes);
        let mut names = None;
        let mut out = Vec::new();
        for (k, legs) in spec.mirrored_disks.iter().enumerate() {
            if legs.iter().all(|l| l.resync_job.is_none()) {
                continue;
            }
            let names = match &names {
                Some(n) => n,
                None => names.insert(self.device_names()?),
            };
            let status = self.dp.raid1_status(&vol.raid(k as u32))?;
            let chunks = self.slot_chunks(&vol, k as u32, names)?;
            for leg in legs {
                let Some(job) = leg.resync_job else { continue };
                let Some(position) = chunks.iter().position(|c| *c == Some(leg.chunk)) else {
                    continue; // not swapped in yet
                };
                let report = match status.legs.get(position) {
                    Some(LegHealth::InSync) if status.sync_action == SyncAction::Idle => {
                        ResyncReport {
                            job,
                            bytes_done: data_bytes,
                            done: true,
                            error: None,
                            failed_source: None,
                        }
                    }
                    Some(LegHealth::Syncing | LegHealth::InSync) => ResyncReport {
                        job,
                        bytes_done: (status.sync_ratio() * data_bytes as f64) as u64,
                        done: false,
                        error: None,
                        failed_source: None,
                    },
                    // Dead: reported as a failed leg, which fails the job.
                    _ => continue,
                };
                out.push(report);
            }
        }
        Ok(out)
    }

    /// Every dm device, by device number.
    pub(super) fn device_names(&self) -> Result<HashMap<Device, DevName>, HeadError> {
        Ok(self.dp.list()?.into_iter().map(|(n, d)| (d, n)).collect())
    }

    /// The chunk behind each slot of mirror `k`, read back from the names
    /// of the leg devices in its table (`…+r<k>+d<disk>c<index>+data`).
    pub(super) fn slot_chunks(
        &self,
        vol: &VolumeName,
        k: u32,
        names: &HashMap<Device, DevName>,
    ) -> Result<Vec<Option<ChunkId>>, HeadError> {
        // Either form: a base (a frozen layer) has data devices only.
        let data = self.dp.raid1_data_devices(&vol.raid(k))?;
        let prefix = format!("{}+", vol.raid(k).as_str());
        Ok(data
            .iter()
            .map(|data| {
                let name = names.get(data.as_ref()?)?;
                parse_tag(name.as_str().strip_prefix(&prefix)?.strip_suffix("+data")?)
            })
            .collect())
    }

    /// Starts a scrub of mirror `k` of `volume` (dm-raid `check`: md reads
    /// every leg and counts the sectors whose copies differ), if the mirror
    /// is in sync and idle. Returns whether it started.
    pub fn start_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        let name = VolumeName::new(volume)?.raid(k);
        if !self.dp.raid1_status(&name)?.is_in_sync() {
            return Ok(false);
        }
        self.dp.raid1_message(&name, "check")?;
        Ok(true)
    }

    /// Interrupts a running check of mirror `k` (dm-raid's `idle`);
    /// whether one ran. Does nothing if md is doing anything else: `idle`
    /// would interrupt a rebuild too.
    pub fn stop_scrub(&self, volume: &str, k: u32) -> Result<bool, HeadError> {
        let name = VolumeName::new(volume)?.raid(k);
        if self.dp.raid1_status(&name)?.sync_action != SyncAction::Check {
            return Ok(false);
        }
        self.dp.raid1_message(&name, "idle")?;
        Ok(true)
    }

    /// A running scrub's state: `None` while md is still checking, then the
    /// mismatched sectors it counted.
    pub fn scrub_result(&self, volume: &str, k: u32) -> Result<Option<u64>, HeadError> {
        let status = self.dp.raid1_status(&VolumeName::new(volume)?.raid(k))?;
        Ok((status.sync_action != SyncAction::Check).then_some(status.mismatch_count))
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

    /// The pool of the top a thin volume writes, as the kernel counts it:
    /// `None` for a thick volume, a top not assembled (yet), or a pool
    /// that failed (its I/O errors tell).
    pub fn pool_report(&self, spec: &VolumeSpec) -> Option<PoolReport> {
        let top = spec.chain.first().filter(|l| l.form == LayerForm::Top)?;
        let pool = VolumeName::new(&top.name).ok()?.pool();
        let status = match self.dp.thin_pool_status(&pool) {
            Ok(status) => status,
            Err(e) => {
                tracing::debug!(%pool, error = %e, "cannot read a pool's usage");
                return None;
            }
        };
        let usage = match status {
            ThinPoolStatus::Active(usage) => usage,
            other => {
                tracing::warn!(%pool, status = %other, "a thin pool failed");
                return None;
            }
        };
        Some(PoolReport {
            layer: top.name.clone(),
            used_data_blocks: usage.used_data_blocks,
            total_data_blocks: usage.total_data_blocks,
            used_meta_blocks: usage.used_metadata_blocks,
            total_meta_blocks: usage.total_metadata_blocks,
            out_of_data_space: usage.mode == PoolMode::OutOfDataSpace,
        })
    }
}
