//! Cluster-wide totals, and the capacity accounting behind them.
//!
//! Capacity counts only chunks that can serve (an online disk of an online
//! server), and always adds up: `capacity = free + used + releasing`.
//! Chunks on a failed disk, or on any disk of a failed server, count apart
//! as `unavailable_bytes`, whatever they hold.

use super::Cluster;
use crate::entities::{DiskState, ServerState, VolumeRole};
use crate::limits;

/// Cluster-wide totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub servers: usize,
    pub servers_failed: usize,
    pub disks: usize,
    pub disks_failed: usize,
    pub chunk_size_bytes: u64,
    pub default_replicas: u8,
    /// Chunk bytes on disks that can serve (online disk, online server).
    /// Always `free_bytes + used_bytes + releasing_bytes`.
    pub capacity_bytes: u64,
    /// Chunk bytes free for new legs (on serving disks).
    pub free_bytes: u64,
    /// Chunk bytes in use by legs on serving disks.
    pub used_bytes: u64,
    /// Chunk bytes on serving disks freed but not yet wiped by their agent.
    pub releasing_bytes: u64,
    /// Chunk bytes on disks that cannot serve (a failed disk, or any disk
    /// of a failed server), whatever they hold: not part of the capacity.
    pub unavailable_bytes: u64,
    /// Volumes and snapshots (not the hidden layers of thin volumes).
    pub volumes: usize,
    pub volumes_attached: usize,
    /// The sizes of the writable volumes, thick and thin: what users were
    /// promised. Thin volumes take chunks only as they are written, so
    /// this may exceed what the pool holds (over-commit).
    pub provisioned_bytes: u64,
    /// Usable bytes of the mirrored disks of thin volumes' layers (their
    /// own data, their snapshots' and clones' shared data).
    pub thin_allocated_bytes: u64,
    pub mirrored_disks: usize,
    pub mirrored_disks_degraded: usize,
    pub mirrored_disks_rebuilding: usize,
}

/// How much of the pool's chunk space is free, against the marks of
/// [`limits::CAPACITY_LOW_PERCENT`] and
/// [`limits::CAPACITY_CRITICAL_PERCENT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum CapacityLevel {
    #[default]
    Ok,
    Low,
    Critical,
}

impl Summary {
    /// The capacity level now, given the level last told (`before`): a
    /// level is left upwards only past its mark plus
    /// [`limits::CAPACITY_MARGIN_PERCENT`]. A pool with no capacity (no
    /// disk yet) is `Ok`: there is nothing to run out of.
    pub fn capacity_level(&self, before: CapacityLevel) -> CapacityLevel {
        if self.capacity_bytes == 0 {
            return CapacityLevel::Ok;
        }
        // In u128: byte counts times 100 do not fit u64 on big pools.
        let free = u128::from(self.free_bytes) * 100;
        let below = |percent: u64| free < u128::from(self.capacity_bytes) * u128::from(percent);
        let margin = |level: CapacityLevel, mark: u64| {
            if before >= level {
                mark + limits::CAPACITY_MARGIN_PERCENT
            } else {
                mark
            }
        };
        if below(margin(
            CapacityLevel::Critical,
            limits::CAPACITY_CRITICAL_PERCENT,
        )) {
            CapacityLevel::Critical
        } else if below(margin(CapacityLevel::Low, limits::CAPACITY_LOW_PERCENT)) {
            CapacityLevel::Low
        } else {
            CapacityLevel::Ok
        }
    }
}

impl Cluster {
    pub fn summary(&self) -> Summary {
        let chunk = self.settings.chunk_size_bytes;
        let mut s = Summary {
            chunk_size_bytes: chunk,
            default_replicas: self.settings.default_replicas,
            ..Summary::default()
        };
        s.servers = self.servers.len();
        s.servers_failed = self
            .servers
            .values()
            .filter(|v| v.state == ServerState::Failed)
            .count();
        for disk in self.disks.values() {
            s.disks += 1;
            let serving = disk.state == DiskState::Online
                && self.servers[&disk.server].state == ServerState::Online;
            if disk.state == DiskState::Failed {
                s.disks_failed += 1;
            }
            // Each disk's chunks are free, used or releasing; a disk that
            // cannot serve counts apart, so the capacity still adds up.
            let usage = self.disk_usage(disk.id);
            if serving {
                s.capacity_bytes += u64::from(disk.chunk_count) * chunk;
                s.free_bytes += usage.free_chunks * chunk;
                s.used_bytes += usage.legs * chunk;
                s.releasing_bytes += usage.releasing_chunks * chunk;
            } else {
                s.unavailable_bytes += u64::from(disk.chunk_count) * chunk;
            }
        }
        let per_chunk = self.settings.data_bytes_per_chunk();
        for volume in self.volumes.values() {
            match &volume.role {
                VolumeRole::Layer(_) => {
                    s.thin_allocated_bytes += volume.mirrored_disks.len() as u64 * per_chunk;
                }
                VolumeRole::Thick | VolumeRole::Thin { .. } => {
                    s.volumes += 1;
                    s.provisioned_bytes += volume.size_bytes;
                }
                VolumeRole::Snapshot { .. } => s.volumes += 1,
            }
            s.volumes_attached += usize::from(volume.attachment.is_some());
            s.mirrored_disks += volume.mirrored_disks.len();
            s.mirrored_disks_degraded += volume.degraded_mirrored_disks();
            s.mirrored_disks_rebuilding += volume.rebuilding_mirrored_disks();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CapacityLevel::{Critical, Low, Ok};

    fn with_free(percent: u64) -> Summary {
        Summary {
            capacity_bytes: 1000,
            free_bytes: percent * 10,
            ..Summary::default()
        }
    }

    #[test]
    fn capacity_levels_fall_at_their_marks_and_rise_past_the_margin() {
        assert_eq!(with_free(50).capacity_level(Ok), Ok);
        assert_eq!(with_free(15).capacity_level(Ok), Ok);
        assert_eq!(with_free(14).capacity_level(Ok), Low);
        assert_eq!(with_free(4).capacity_level(Ok), Critical);
        // Back up: only past the mark and the margin.
        assert_eq!(with_free(15).capacity_level(Low), Low);
        assert_eq!(with_free(16).capacity_level(Low), Low);
        assert_eq!(with_free(17).capacity_level(Low), Ok);
        assert_eq!(with_free(6).capacity_level(Critical), Critical);
        assert_eq!(with_free(7).capacity_level(Critical), Low);
        assert_eq!(with_free(17).capacity_level(Critical), Ok);
        // Nothing to run out of.
        assert_eq!(Summary::default().capacity_level(Critical), Ok);
        // Big pools do not overflow.
        let big = Summary {
            capacity_bytes: u64::MAX,
            free_bytes: u64::MAX / 2,
            ..Summary::default()
        };
        assert_eq!(big.capacity_level(Ok), Ok);
    }
}
