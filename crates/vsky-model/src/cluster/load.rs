//! Loading a cluster from its stored records, and handing them back.
//!
//! The store keeps only [`Records`]; everything else is derived here, at
//! start-up, by [`Cluster::load`]: the free lists, which leg uses which
//! chunk, the name indexes, the partner counts and the allocation index.
//! Nothing derived is ever stored, so it cannot drift from the records.
//! `load` refuses records that contradict each other (an id beyond the next
//! id, a chunk used twice or both used and releasing, a leg on a missing
//! disk, a volume in a missing group, a chain of layers that breaks a rule
//! of `chains.rs`) with `ModelError::Corrupt`, rather than run on them.

use std::collections::BTreeMap;

use super::{Cluster, DiskRuntime, LegAddr, recovery};
use crate::entities::{Disk, Group, Server, Settings, Volume};
use crate::error::ModelError;
use crate::freelist::FreeList;
use crate::ids::{ChunkRef, ServerId};

/// Everything the store keeps: the input of [`Cluster::load`] and the
/// output of [`Cluster::records`].
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub settings: Settings,
    pub next_id: u64,
    pub servers: Vec<Server>,
    pub disks: Vec<Disk>,
    pub volumes: Vec<Volume>,
    pub groups: Vec<Group>,
    pub jobs: Vec<recovery::ResyncJob>,
}

impl Cluster {
    /// Rebuilds a cluster from stored records, checking that they agree.
    pub fn load(records: Records) -> Result<Self, ModelError> {
        let Records {
            settings,
            next_id,
            servers,
            disks,
            volumes,
            groups,
            jobs,
        } = records;
        let corrupt = |msg: String| ModelError::Corrupt(msg);
        let mut cluster = Cluster::new(settings)?;
        cluster.next_id = next_id;
        for group in groups {
            cluster.groups.insert(group.name.clone(), group);
        }
        for server in servers {
            if server.id.0 >= next_id || cluster.server_names.contains_key(&server.name) {
                return Err(corrupt(format!(
                    "server record {} is duplicated or beyond next id",
                    server.id
                )));
            }
            cluster.server_names.insert(server.name.clone(), server.id);
            cluster.servers.insert(server.id, server);
        }
        for disk in disks {
            if disk.id.0 >= next_id || !cluster.servers.contains_key(&disk.server) {
                return Err(corrupt(format!(
                    "disk record {} names a missing server",
                    disk.id
                )));
            }
            let mut free = FreeList::full(disk.chunk_count);
            for (&index, &release) in &disk.releasing {
                if !free.take(index) {
                    return Err(corrupt(format!(
                        "{} releases chunk {index} beyond its end",
                        disk.id
                    )));
                }
                // A release id the counter has not reached yet could be
                // drawn again, and a stale wipe report would then match.
                if release >= next_id {
                    return Err(corrupt(format!(
                        "{} releases chunk {index} with id {release}, beyond next id",
                        disk.id
                    )));
                }
            }
            cluster.runtime.insert(
                disk.id,
                DiskRuntime {
                    free,
                    used: BTreeMap::new(),
                },
            );
            cluster
                .disks_by_server
                .entry(disk.server)
                .or_default()
                .insert(disk.id);
            cluster.disks.insert(disk.id, disk);
        }
        for volume in volumes {
            if volume.id.0 >= next_id || cluster.volume_names.contains_key(&volume.name) {
                return Err(corrupt(format!(
                    "volume record {} is duplicated",
                    volume.id
                )));
            }
            for (m, md) in volume.mirrored_disks.iter().enumerate() {
                for (l, leg) in md.legs.iter().enumerate() {
                    let addr = LegAddr {
                        volume: volume.id,
                        mirrored_disk: m as u32,
                        leg: l as u8,
                    };
                    let runtime = cluster.runtime.get_mut(&leg.chunk.disk).ok_or_else(|| {
                        corrupt(format!("{} uses missing {}", volume.id, leg.chunk.disk))
                    })?;
                    if !runtime.free.take(leg.chunk.index) {
                        return Err(corrupt(format!(
                            "chunk {} of {} is used twice or also releasing",
                            leg.chunk.index, leg.chunk.disk
                        )));
                    }
                    runtime.used.insert(leg.chunk.index, addr);
                }
            }
            if let Some(g) = &volume.meta.group
                && !cluster.groups.contains_key(g)
            {
                return Err(corrupt(format!(
                    "{} belongs to missing group '{g}'",
                    volume.id
                )));
            }
            for md in &volume.mirrored_disks {
                let chunks: Vec<ChunkRef> = md.legs.iter().map(|l| l.chunk).collect();
                cluster.link_pairs(&chunks, true);
            }
            cluster.volume_names.insert(volume.name.clone(), volume.id);
            cluster.volumes.insert(volume.id, volume);
        }
        let ids: Vec<ServerId> = cluster.servers.keys().copied().collect();
        for id in ids {
            cluster.reindex_server(id);
        }
        cluster.check_chains().map_err(corrupt)?;
        cluster.load_jobs(jobs)?;
        Ok(cluster)
    }

    /// Every record, as a store would hold them.
    pub fn records(&self) -> Records {
        Records {
            settings: self.settings.clone(),
            next_id: self.next_id,
            servers: self.servers.values().cloned().collect(),
            disks: self.disks.values().cloned().collect(),
            volumes: self.volumes.values().cloned().collect(),
            groups: self.groups.values().cloned().collect(),
            jobs: self.jobs.values().cloned().collect(),
        }
    }
}
