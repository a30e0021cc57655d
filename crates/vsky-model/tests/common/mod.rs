//! Helpers shared by the model's integration tests (the pools come from
//! `vsky_testkit::pool`). Each test file uses its own subset, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB};

/// Creates a volume of `mirrored` mirrored disks of `replicas` legs.
pub fn volume(
    c: &mut Cluster,
    name: &str,
    mirrored: u64,
    replicas: u8,
    secrets: &mut CountingSecrets,
) -> VolumeId {
    let new = NewVolume {
        name: name.into(),
        size_bytes: mirrored * (CHUNK - MIB),
        replicas: Some(replicas),
        ..Default::default()
    };
    c.create_volume(new, secrets).unwrap().0
}

/// The ids of the running jobs (the ones a test plays the executor of).
pub fn running_jobs(c: &Cluster) -> Vec<JobId> {
    c.jobs()
        .filter(|j| j.state == JobState::Running)
        .map(|j| j.id)
        .collect()
}

/// The volume records through the store's encoding (JSON) and back,
/// checked unchanged.
pub fn volumes_through_the_store(records: &Records) -> Vec<Volume> {
    let volumes: Vec<Volume> = records
        .volumes
        .iter()
        .map(|v| serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap())
        .collect();
    assert_eq!(volumes, records.volumes);
    volumes
}

/// Creates a thin volume of `size` bytes.
pub fn thin(c: &mut Cluster, name: &str, size: u64, s: &mut CountingSecrets) -> VolumeId {
    let new = NewVolume {
        name: name.into(),
        size_bytes: size,
        thin: true,
        ..Default::default()
    };
    c.create_volume(new, s).unwrap().0
}

/// Chunks the volumes' legs hold.
pub fn used_chunks(c: &Cluster) -> u64 {
    c.volumes()
        .flat_map(|v| &v.mirrored_disks)
        .map(|m| m.legs.len() as u64)
        .sum()
}
