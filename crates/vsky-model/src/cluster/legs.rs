//! A leg's failure, and its return.
//!
//! A leg fails when its disk or server is failed ([`Cluster::fail_disk`],
//! [`Cluster::fail_server`]) or when the volume's head reports it (only the
//! head may, and only while the slot still holds the chunk that failed).
//! A failed leg is replaced by the recovery pass (`recovery.rs`), unless its
//! server is in its grace period: when that server speaks again, its
//! failed legs that nothing replaces yet and that were in sync come back
//! ([`Cluster::leg_returned`]), and the head's mirror catches up on what was
//! written meanwhile.

use super::{Changes, Cluster, LegAddr, not_found};
use crate::entities::{DiskState, Leg, LegState, ServerState};
use crate::error::ModelError;
use crate::ids::{ChunkRef, DiskId, ServerId};

impl Cluster {
    /// The head of a volume reports that one of its legs failed. `volume`
    /// may name a layer of a thin volume attached to that head
    /// (`chains.rs`): the head assembles those, so it sees their legs fail.
    pub fn report_leg_failed(
        &mut self,
        head: ServerId,
        volume: &str,
        mirrored_disk: u32,
        leg: u8,
    ) -> Result<Changes, ModelError> {
        let v = self
            .reported_mirrors(volume)
            .ok_or_else(|| super::not_found("volume", "volume", volume))?;
        if !self.assembles(head, v) {
            return Err(ModelError::Conflict(format!(
                "volume '{volume}' is not attached to this server; only its head reports leg failures"
            )));
        }
        let id = v.id;
        let l = v
            .mirrored_disks
            .get(mirrored_disk as usize)
            .and_then(|m| m.legs.get(usize::from(leg)))
            .ok_or_else(|| {
                ModelError::invalid("leg", format!("{volume} has no leg {mirrored_disk}/{leg}"))
            })?;
        let lost = l.chunk;
        let mut changes = Changes::default();
        self.jobs_lose(|c| c == lost, &mut changes);
        // A lost move target is gone with its extra slot (moves.rs).
        let Some(l) = self.volumes[&id].mirrored_disks[mirrored_disk as usize]
            .legs
            .get(usize::from(leg))
            .filter(|l| l.chunk == lost)
        else {
            return Ok(self.commit(changes));
        };
        if l.state != LegState::Failed {
            let v = self.volumes.get_mut(&id).expect("exists");
            v.mirrored_disks[mirrored_disk as usize].legs[usize::from(leg)].fail();
            changes.volumes.insert(id);
            self.repairs_pending = true;
        }
        Ok(self.commit(changes))
    }

    /// A failed leg whose server came back within its grace period, with
    /// the leg's chunk intact: the leg is active again, and its head re-adds
    /// it to the running mirror, which then resyncs only the regions written
    /// while it was away (dm-raid's write-intent bitmap). Refused once the
    /// slot has a replacement, or when the leg's disk or server failed.
    pub fn leg_returned(&mut self, addr: LegAddr) -> Result<Changes, ModelError> {
        let LegAddr {
            volume,
            mirrored_disk,
            leg,
        } = addr;
        let v = self
            .volumes
            .get(&volume)
            .ok_or_else(|| not_found("volume", "volume", volume.0))?;
        let l = v
            .mirrored_disks
            .get(mirrored_disk as usize)
            .and_then(|m| m.legs.get(usize::from(leg)))
            .ok_or_else(|| {
                ModelError::invalid(
                    "leg",
                    format!("{} has no leg {mirrored_disk}/{leg}", v.name),
                )
            })?;
        if l.state != LegState::Failed {
            return Ok(Changes::default());
        }
        if l.never_synced {
            return Err(ModelError::Conflict(format!(
                "leg {mirrored_disk}/{leg} of '{}' failed before it was in sync; it is replaced, not revived",
                v.name
            )));
        }
        if self.repairs.contains_key(&addr) {
            return Err(ModelError::Conflict(format!(
                "leg {mirrored_disk}/{leg} of '{}' is being replaced already",
                v.name
            )));
        }
        let disk = self.disk(l.chunk.disk)?;
        let server_failed = self
            .server(disk.server)
            .is_none_or(|s| s.state == ServerState::Failed);
        if disk.state == DiskState::Failed || server_failed {
            return Err(ModelError::Conflict(format!(
                "the disk or server of leg {mirrored_disk}/{leg} of '{}' failed; it is replaced, not revived",
                v.name
            )));
        }
        self.volumes
            .get_mut(&volume)
            .expect("exists")
            .mirrored_disks[mirrored_disk as usize]
            .legs[usize::from(leg)]
        .state = LegState::Active;
        let mut changes = Changes::default();
        changes.volumes.insert(volume);
        Ok(self.commit(changes))
    }

    /// Failed legs on `server`'s serving disks that nothing replaces yet:
    /// the candidates for [`Self::leg_returned`] when the server is back.
    pub fn failed_legs_on(&self, server: ServerId) -> Vec<(LegAddr, ChunkRef)> {
        self.disks_of(server)
            .filter(|d| d.state != DiskState::Failed)
            .flat_map(|d| {
                self.legs_on_disk(d.id)
                    .map(move |(index, a)| (a, ChunkRef { disk: d.id, index }))
            })
            .filter(|(a, _)| {
                let leg = self.leg_at(*a);
                leg.state == LegState::Failed && !leg.never_synced && !self.repairs.contains_key(a)
            })
            .collect()
    }

    /// The leg at `a`, which must exist (an address from the chunk owner
    /// index or the repairs).
    pub(super) fn leg_at(&self, a: LegAddr) -> &Leg {
        &self.volumes[&a.volume].mirrored_disks[a.mirrored_disk as usize].legs[usize::from(a.leg)]
    }

    /// Fails every leg on `disk` (the disk or its server failed); the
    /// resyncs that use it fail or pick another source (`jobs_lose_disk`).
    pub(super) fn fail_legs_on(&mut self, disk: DiskId, changes: &mut Changes) {
        self.jobs_lose_disk(disk, changes);
        let addrs: Vec<LegAddr> = self.runtime[&disk].used.values().copied().collect();
        for a in addrs {
            let v = self
                .volumes
                .get_mut(&a.volume)
                .expect("used chunks belong to volumes");
            let leg = &mut v.mirrored_disks[a.mirrored_disk as usize].legs[usize::from(a.leg)];
            if leg.state != LegState::Failed {
                leg.fail();
                changes.volumes.insert(a.volume);
                self.repairs_pending = true;
            }
        }
    }
}
