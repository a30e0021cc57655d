//! Pools shared by the model's integration tests. Each test file uses its
//! own subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use vsky_model::*;

pub const MIB: u64 = 1 << 20;
pub const CHUNK: u64 = 4 * MIB;

/// `servers` servers `s0`, `s1`, … of `disks` disks with 16 chunks each.
pub fn pool(servers: usize, disks: usize) -> Cluster {
    pool_of(servers, disks, 16)
}

/// `servers` servers `s0`, `s1`, … of `disks` disks with `chunks` chunks
/// each.
pub fn pool_of(servers: usize, disks: usize, chunks: u64) -> Cluster {
    let mut c = Cluster::new(Settings::new(CHUNK)).unwrap();
    for s in 0..servers {
        add_server_of(&mut c, s, disks, chunks);
    }
    c
}

/// Adds server `s<s>` (address 10.0.0.<s>) with `disks` disks of 16
/// chunks: `/dev/vdb`, `/dev/vdc`, …
pub fn add_server(c: &mut Cluster, s: usize, disks: usize) {
    add_server_of(c, s, disks, 16)
}

/// Adds server `s<s>` with `disks` disks of `chunks` chunks.
pub fn add_server_of(c: &mut Cluster, s: usize, disks: usize, chunks: u64) {
    let name = format!("s{s}");
    c.add_server(NewServer {
        name: name.clone(),
        address: format!("10.0.0.{s}:1"),
        labels: Default::default(),
    })
    .unwrap();
    for d in 0..disks {
        c.add_disk(NewDisk {
            server: name.clone(),
            path: format!("/dev/vd{}", char::from(b'b' + d as u8)),
            size_bytes: MIB + chunks * CHUNK,
            class: None,
        })
        .unwrap();
    }
}

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
