//! The freeze: moving an attached thin volume onto the new top a snapshot
//! gave it (docs/design/snapshots.md §5.5.2), and keeping the old top,
//! once frozen, as it was assembled here.
//!
//! The manager records the snapshot first: the volume's chain is then the
//! new, empty top `N` over the old top `T`, which is *freezing* (this head
//! may still write it). The assembly builds `N` (its thin device reading
//! through `T`'s) with no pause; then:
//! 1. load the volume device's new table (a linear over `N`'s thin
//!    device) into its inactive slot: nothing pauses yet;
//! 2. the pause: suspend the volume device (the I/O in flight completes,
//!    new I/O waits: every write acknowledged before this is in `T`),
//!    suspend `T`'s thin device and pool (the pool commits its metadata),
//!    load the pool `read_only`, resume the pool and the thin device;
//! 3. resume the volume device: its new table goes in, and the waiting
//!    I/O goes to `N`.
//!
//! Because the volume device's new table is loaded before anything is
//! suspended, every resume after a failure or a crash ends with the device
//! on the old top with a writable pool, or on the new top: never on a
//! read-only pool. A later assembly first resumes whatever a cut-short
//! switch left suspended ([`Head::resume_cut_short_switch`]), then
//! switches again; every step is "make it so".
//!
//! The head then reports the volume switched, and the manager marks `T`
//! frozen: the snapshot over it is ready. `T` stays assembled here as it
//! was, read-write tables under a `read_only` pool, until the volume is
//! detached (a later assembly elsewhere uses the base form).

use std::time::Instant;

use vsky_api::types::{LayerSpec, VolumeSpec};
use vsky_kernel::dm::{
    DevName, Device, PoolMode, Raid1BaseTable, Sectors, TableMode, Target, TargetLine,
    ThinPoolTable, VolumeName,
};

use super::chain::StackForm;
use super::{Head, HeadError};

impl Head {
    /// Moves the volume device `handle` onto `new_thin` (its new top's thin
    /// device) if it still maps `old`'s, making `old`'s pool read-only in
    /// the same pause; also when the device does not exist yet (the volume
    /// is being assembled afresh), only the pool changes.
    pub(super) fn switch_to_new_top(
        &mut self,
        handle: &VolumeName,
        old: &VolumeName,
        new_thin: Device,
        len: Sectors,
    ) -> Result<(), HeadError> {
        let device = handle.top();
        let maps = self.linear_target(&device)?;
        let frozen_pool = self.read_only_pool_lines(old)?;
        if maps == Some(new_thin) || maps.is_none() {
            // Switched already, or nothing to switch: only the pool.
            if let Some(lines) = frozen_pool {
                self.dp.reload(&old.pool(), &lines)?;
            }
            return Ok(());
        }
        let volume_lines = [TargetLine {
            start: Sectors(0),
            len,
            target: Target::Linear {
                dev: new_thin,
                offset: Sectors(0),
            },
        }];
        // Before the pause: a failure here changes nothing.
        self.dp
            .load_table(&device, &volume_lines, TableMode::ReadWrite)?;
        let paused = Instant::now();
        let result = self.pause_and_switch(&device, old, frozen_pool);
        if let Err(e) = &result {
            // Never leave the VM's I/O held: resume whatever is suspended.
            // The volume device then maps the new top (its table was
            // loaded first), whatever mode the old top's pool is in.
            tracing::error!(volume = %handle.as_str(), error = %e, "the pause of a switch to the new top failed; resuming");
            for name in [old.pool(), old.thin(), device.clone()] {
                let _ = self.dp.resume(&name);
            }
        }
        result?;
        tracing::info!(volume = %handle.as_str(), old_top = %old.as_str(),
            pause_ms = paused.elapsed().as_millis() as u64,
            "switched the volume onto the new top of its snapshot");
        Ok(())
    }

    /// The pause, with the volume device's new table already loaded.
    fn pause_and_switch(
        &self,
        device: &DevName,
        old: &VolumeName,
        frozen_pool: Option<Vec<TargetLine>>,
    ) -> Result<(), HeadError> {
        self.dp.suspend(device)?;
        self.dp.suspend(&old.thin())?;
        self.dp.suspend(&old.pool())?;
        if let Some(lines) = frozen_pool {
            self.dp
                .load_table(&old.pool(), &lines, TableMode::ReadWrite)?;
        }
        self.dp.resume(&old.pool())?;
        self.dp.resume(&old.thin())?;
        self.dp.resume(device)?;
        Ok(())
    }

    /// Resumes what a switch cut short (by a crash or an error) left
    /// suspended: the old top's pool (with the `read_only` table loaded,
    /// if it was), its thin device, then the volume device (onto the new
    /// top, if its table was loaded). Every outcome is safe, and the switch
    /// runs again once the chain is assembled.
    pub(super) fn resume_cut_short_switch(
        &self,
        handle: &VolumeName,
        old: &VolumeName,
    ) -> Result<(), HeadError> {
        for name in [old.pool(), old.thin(), handle.top()] {
            if self.dp.suspended(&name)? == Some(true) {
                tracing::warn!(device = %name, "resuming a device a switch to a new top left suspended");
                self.dp.resume(&name)?;
            }
        }
        Ok(())
    }

    /// Whether the volume device of `handle` maps `layer`'s thin device.
    pub(super) fn maps_thin_of(
        &self,
        handle: &VolumeName,
        layer: &VolumeName,
    ) -> Result<bool, HeadError> {
        let Some(thin) = self.dp.lookup(&layer.thin())? else {
            return Ok(false);
        };
        Ok(self.linear_target(&handle.top())? == Some(thin))
    }

    /// The device a one-line linear device maps, or `None` if it does not
    /// exist.
    fn linear_target(&self, name: &DevName) -> Result<Option<Device>, HeadError> {
        if self.dp.lookup(name)?.is_none() {
            return Ok(None);
        }
        let table = self.dp.table(name)?;
        match table.as_slice() {
            [(0, _, kind, params)] if kind == "linear" => {
                let dev = params.split_whitespace().next().unwrap_or_default();
                dev.parse::<Device>()
                    .map(Some)
                    .map_err(|_| HeadError::Layout {
                        volume: name.to_string(),
                        reason: format!("its linear table maps {dev:?}"),
                    })
            }
            _ => Err(HeadError::Layout {
                volume: name.to_string(),
                reason: "is not one linear line; remove it or detach the volume".into(),
            }),
        }
    }

    /// The running pool's table, if the pool exists.
    pub(super) fn running_pool(&self, pool: &DevName) -> Result<Option<ThinPoolTable>, HeadError> {
        if self.dp.lookup(pool)?.is_none() {
            return Ok(None);
        }
        match self.dp.table(pool)?.as_slice() {
            [(0, _, kind, params)] if kind == "thin-pool" => {
                params.parse().map(Some).map_err(|e| HeadError::Layout {
                    volume: pool.to_string(),
                    reason: format!("unreadable thin-pool table: {e}"),
                })
            }
            _ => Err(HeadError::Layout {
                volume: pool.to_string(),
                reason: "is not a thin-pool".into(),
            }),
        }
    }

    /// The running pool's table with `read_only` on, or `None` if it is
    /// read-only already.
    fn read_only_pool_lines(&self, old: &VolumeName) -> Result<Option<Vec<TargetLine>>, HeadError> {
        let pool = &old.pool();
        let Some(running) = self.running_pool(pool)? else {
            return Err(HeadError::Layout {
                volume: pool.to_string(),
                reason: "the old top's pool is gone".into(),
            });
        };
        if running.read_only {
            return Ok(None);
        }
        self.finish_metadata_growth(old)?;
        let len = self.dp.size(pool)?;
        Ok(Some(vec![TargetLine {
            start: Sectors(0),
            len,
            target: Target::ThinPool(ThinPoolTable {
                read_only: true,
                ..running
            }),
        }]))
    }

    /// Finishes a pool growth cut short between the reload of the pool's
    /// metadata device and the pool's own (an error, or a crash of the
    /// agent): a read-write pool whose metadata device is longer than its
    /// metadata is reloaded as it runs, so dm-thin takes the space in on
    /// resume. Called before a pool is made read-only: a read-only pool
    /// cannot resize its metadata, and its resume would fail.
    pub(super) fn finish_metadata_growth(&self, vol: &VolumeName) -> Result<(), HeadError> {
        let pool = &vol.pool();
        let Some(usage) = self.dp.thin_pool_status(pool)?.usage().cloned() else {
            return Ok(());
        };
        let tmeta = vol.thin_meta();
        let meta_sectors = usage
            .total_metadata_blocks
            .saturating_mul(vsky_kernel::dm::THIN_METADATA_BLOCK_BYTES / super::SECTOR);
        if usage.mode == PoolMode::ReadOnly || *self.dp.size(&tmeta)? <= meta_sectors {
            return Ok(());
        }
        let (Some(running), Some(len)) = (self.running_pool(pool)?, self.running_pool_len(pool)?)
        else {
            return Ok(());
        };
        tracing::warn!(%pool, "finishing a pool growth cut short before the pool goes read-only");
        self.dp.reload(
            pool,
            &[TargetLine {
                start: Sectors(0),
                len,
                target: Target::ThinPool(running),
            }],
        )?;
        Ok(())
    }

    /// Whether layer `name` runs here in top form (it was this head's
    /// writable top): its first mirror has metadata devices.
    pub(super) fn assembled_writable(&self, name: &str) -> Result<bool, HeadError> {
        let mirror = VolumeName::new(name)?.raid(0);
        if self.dp.lookup(&mirror)?.is_none() {
            return Ok(false);
        }
        Ok(match self.dp.table(&mirror)?.as_slice() {
            [(0, _, kind, params)] if kind == "raid" => params.parse::<Raid1BaseTable>().is_err(),
            _ => false,
        })
    }

    /// A frozen layer this head wrote: kept as it was assembled (its
    /// mirrors with their metadata devices, read-write tables), its pool
    /// read-only. Its legs are not reconciled any more: nothing writes its
    /// data, and the next assembly (after a detach) is the base form.
    pub(super) fn frozen_in_place(
        &mut self,
        spec: &VolumeSpec,
        layer: &LayerSpec,
        below: Option<(Device, Sectors)>,
    ) -> Result<Device, HeadError> {
        let vol = VolumeName::new(&layer.name)?;
        let space = self.dp.lookup(&vol.top())?.ok_or_else(|| HeadError::Layout {
            volume: layer.name.clone(),
            reason: "its mirrors run but its space device is gone; detach the volume to reassemble it".into(),
        })?;
        let space_len = self.dp.size(&vol.top())?;
        self.thin_stack(
            &vol,
            layer,
            space,
            space_len,
            super::chain::disk_len(spec),
            below,
            StackForm::FrozenInPlace,
        )?
        .ok_or_else(|| HeadError::Layout {
            volume: layer.name.clone(),
            reason: "a layer frozen in place has no thin device".into(),
        })
    }
}
