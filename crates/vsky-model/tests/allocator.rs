//! Property tests of the allocation rules, driven through the public
//! `Cluster` API exactly as the manager drives it.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec};

fn new_volume(name: &str, mirrored: u64, replicas: u8) -> NewVolume {
    NewVolume {
        name: name.to_string(),
        size_bytes: mirrored * (CHUNK - MIB),
        replicas: Some(replicas),
        stripe: None,
        class: None,
        near_server: None,
        meta: Default::default(),
        thin: false,
    }
}

fn leg_spread(c: &Cluster) -> u64 {
    let legs: Vec<u64> = c.disks().map(|d| c.disk_usage(d.id).legs).collect();
    legs.iter().max().unwrap() - legs.iter().min().unwrap()
}

fn domains_of(c: &Cluster, md: &MirroredDisk) -> BTreeSet<String> {
    md.legs
        .iter()
        .map(|l| {
            let server = c.server(c.disk(l.chunk.disk).unwrap().server).unwrap();
            server.failure_domain("rack")
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Create { mirrored: u64, replicas: u8 },
    Delete(usize),
    Wipe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..12, 2u8..4).prop_map(|(mirrored, replicas)| Op::Create { mirrored, replicas }),
        2 => (0usize..64).prop_map(Op::Delete),
        1 => Just(Op::Wipe),
    ]
}

/// Wipes every releasing chunk, as the storage agents would.
fn wipe_all(c: &mut Cluster) {
    let servers: Vec<ServerId> = c.servers().map(|s| s.id).collect();
    for s in servers {
        let chunks: Vec<WipedChunk> = c
            .disks_of(s)
            .flat_map(|d| {
                d.releasing
                    .iter()
                    .map(move |(&index, &release)| WipedChunk {
                        chunk: ChunkRef { disk: d.id, index },
                        release,
                    })
            })
            .collect();
        c.chunks_wiped(s, &chunks).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Under random creates, deletes and wipes: every invariant holds after
    /// every step (no chunk used twice, chunk accounting exact, legs of one
    /// mirrored disk on distinct servers); a failed create changes nothing.
    #[test]
    fn random_churn_keeps_every_invariant(
        servers in 2usize..7, disks in 1usize..4, racks in 0usize..4,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut c = PoolSpec::new(servers, disks).chunks(24).racks(racks).build();
        let mut secrets = CountingSecrets::default();
        let mut names: Vec<String> = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Create { mirrored, replicas } => {
                    let before = c.clone();
                    let name = format!("v{i}");
                    match c.create_volume(new_volume(&name, mirrored, replicas), &mut secrets) {
                        Ok(_) => names.push(name),
                        Err(e) => {
                            prop_assert!(matches!(e, ModelError::NotEnoughChunks { .. } | ModelError::NotEnoughServers { .. }), "{e}");
                            // All or nothing: the failed create left no trace.
                            prop_assert_eq!(c.summary(), before.summary());
                            prop_assert_eq!(c.generation(), before.generation());
                            for d in c.disks() {
                                prop_assert_eq!(c.disk_usage(d.id), before.disk_usage(d.id));
                            }
                        }
                    }
                }
                Op::Delete(k) if !names.is_empty() => {
                    let name = names.remove(k % names.len());
                    c.delete_volume(&name).unwrap();
                }
                Op::Delete(_) => {}
                Op::Wipe => wipe_all(&mut c),
            }
            if let Err(e) = c.check_invariants() {
                prop_assert!(false, "invariant broken: {e}");
            }
        }
    }

    /// With at least R racks that all have room, every mirrored disk spans R
    /// distinct racks (failure domains), not just R distinct servers.
    #[test]
    fn legs_span_distinct_failure_domains_when_labels_allow(
        racks in 2usize..5, per_rack in 1usize..4, replicas in 2u8..4,
        sizes in prop::collection::vec(1u64..6, 1..12),
    ) {
        prop_assume!(usize::from(replicas) <= racks);
        let mut c = PoolSpec::new(racks * per_rack, 2).chunks(64).racks(racks).build();
        let mut secrets = CountingSecrets::default();
        for (i, mirrored) in sizes.into_iter().enumerate() {
            c.create_volume(new_volume(&format!("v{i}"), mirrored, replicas), &mut secrets).unwrap();
        }
        for v in c.volumes() {
            for md in &v.mirrored_disks {
                prop_assert_eq!(domains_of(&c, md).len(), usize::from(replicas));
            }
        }
    }

    /// In a uniform pool, creating volumes keeps per-disk leg counts within
    /// 1 of each other after every single create.
    #[test]
    fn uniform_pool_creates_stay_within_one_leg(
        servers in 3usize..9, disks in 1usize..5,
        sizes in prop::collection::vec((1u64..20, 2u8..4), 1..60),
    ) {
        let mut c = PoolSpec::new(servers, disks).chunks(1000).build();
        let mut secrets = CountingSecrets::default();
        for (i, (mirrored, replicas)) in sizes.into_iter().enumerate() {
            c.create_volume(new_volume(&format!("v{i}"), mirrored, replicas), &mut secrets).unwrap();
            prop_assert!(leg_spread(&c) <= 1, "leg spread {} after create {i}", leg_spread(&c));
        }
    }

    /// Deleting a volume can leave disks uneven (its legs leave only the
    /// disks it used; moving legs back is the rebalancer's job), and a
    /// create needing R distinct servers can briefly widen the spread when
    /// the least loaded disks sit on fewer than R servers. Creates heal:
    /// a run of small creates brings the pool back within 1 leg.
    #[test]
    fn uniform_pool_creates_heal_after_deletes(
        servers in 3usize..9, disks in 1usize..4,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut c = PoolSpec::new(servers, disks).chunks(1000).build();
        let mut secrets = CountingSecrets::default();
        let mut names = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Create { mirrored, replicas } => {
                    let name = format!("v{i}");
                    c.create_volume(new_volume(&name, mirrored, replicas), &mut secrets).unwrap();
                    names.push(name);
                }
                Op::Delete(k) if !names.is_empty() => {
                    let name = names.remove(k % names.len());
                    c.delete_volume(&name).unwrap();
                }
                _ => wipe_all(&mut c),
            }
        }
        // Refill with single-mirrored-disk volumes until balanced again.
        for i in 0..(servers * disks * 2) {
            if leg_spread(&c) <= 1 {
                break;
            }
            c.create_volume(new_volume(&format!("fill{i}"), 1, 2), &mut secrets).unwrap();
        }
        prop_assert!(leg_spread(&c) <= 1, "still uneven after refill: {}", leg_spread(&c));
    }
}

/// A pool with fewer servers than replicas refuses the volume with a clear
/// error and allocates nothing.
#[test]
fn fewer_servers_than_replicas_is_refused_and_leaves_nothing() {
    let mut c = PoolSpec::new(2, 4).chunks(10).build();
    let err = c
        .create_volume(new_volume("v", 1, 3), &mut CountingSecrets::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::NotEnoughServers {
                replicas: 3,
                eligible: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(c.summary().used_bytes, 0);
}

/// When the free chunks sit on too few servers, the create fails part-way
/// through and gives back every chunk it had taken.
#[test]
fn capacity_on_too_few_servers_rolls_back() {
    let mut c = PoolSpec::new(3, 1).chunks(4).build();
    let mut secrets = CountingSecrets::default();
    // Fill s0 and s1 except for one chunk each, using a third server.
    c.create_volume(new_volume("a", 3, 2), &mut secrets)
        .unwrap();
    let before = c.summary();
    // 4 mirrored disks × 2 legs = 8 chunks > 6 free, refused up front.
    assert!(
        c.create_volume(new_volume("b", 4, 2), &mut secrets)
            .is_err()
    );
    // 3 × 3 = 9 legs cannot fit either; but 3 mirrored disks × 2 = 6 = free.
    c.create_volume(new_volume("c", 3, 2), &mut secrets)
        .unwrap();
    assert_eq!(c.summary().free_bytes, 0);
    assert!(c.summary().used_bytes > before.used_bytes);
    c.check_invariants().unwrap();
}

/// Loading the records a cluster would store gives back the same cluster,
/// and loading contradictory records (a chunk used twice) is refused.
#[test]
fn load_round_trips_and_refuses_double_use() {
    let mut c = PoolSpec::new(4, 2).chunks(10).racks(2).build();
    let mut secrets = CountingSecrets::default();
    c.create_volume(new_volume("a", 5, 2), &mut secrets)
        .unwrap();
    c.create_volume(new_volume("b", 3, 3), &mut secrets)
        .unwrap();
    c.delete_volume("a").unwrap();
    let servers: Vec<Server> = c.servers().cloned().collect();
    let disks: Vec<Disk> = c.disks().cloned().collect();
    let volumes: Vec<Volume> = c.volumes().cloned().collect();
    let loaded = Cluster::load(Records {
        settings: c.settings().clone(),
        next_id: c.next_id(),
        servers: servers.clone(),
        disks: disks.clone(),
        volumes: volumes.clone(),
        ..Default::default()
    })
    .unwrap();
    loaded.check_invariants().unwrap();
    assert_eq!(loaded.summary(), c.summary());
    for d in c.disks() {
        assert_eq!(loaded.disk_usage(d.id), c.disk_usage(d.id));
    }
    let mut twice = volumes.clone();
    let mut copy = twice[0].clone();
    copy.id = VolumeId(c.next_id() - 1);
    copy.name = "copy".into();
    twice.push(copy);
    let err = Cluster::load(Records {
        settings: c.settings().clone(),
        next_id: c.next_id(),
        servers,
        disks,
        volumes: twice,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.code(), "store_corrupt");
}

/// For every disk: the most mirrored disks it shares with any one other
/// disk, and with any one other server.
fn partner_peaks(c: &Cluster) -> (u32, u32) {
    let mut disks: BTreeMap<(DiskId, DiskId), u32> = BTreeMap::new();
    let mut servers: BTreeMap<(DiskId, ServerId), u32> = BTreeMap::new();
    for md in c.volumes().flat_map(|v| &v.mirrored_disks) {
        for a in &md.legs {
            for b in &md.legs {
                if a.chunk.disk < b.chunk.disk {
                    *disks.entry((a.chunk.disk, b.chunk.disk)).or_default() += 1;
                }
                if a.chunk.disk != b.chunk.disk {
                    let server = c.disk(b.chunk.disk).unwrap().server;
                    *servers.entry((a.chunk.disk, server)).or_default() += 1;
                }
            }
        }
    }
    (
        disks.values().copied().max().unwrap_or(0),
        servers.values().copied().max().unwrap_or(0),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Partner spread (rule 6): filling a uniform pool half full of 2-way
    /// mirrored disks, each disk's legs are mirrored with many distinct
    /// disks and servers: no disk shares more than 2 mirrored disks over
    /// the even share with any one other disk (⌈legs ÷ disks on other
    /// servers⌉), nor with any one other server (⌈legs ÷ other servers⌉).
    /// So when a disk dies, its resyncs read from many disks behind many
    /// links at once, and when a server dies, no surviving disk must serve
    /// many of them. (On these small pools, where few candidates are ever
    /// equally loaded, spreading over disks only went up to 3 over the
    /// even share, and over servers up to 4.)
    #[test]
    fn partners_spread_over_disks_and_servers(
        servers in 12usize..24, disks in 2usize..5,
        sizes in prop::collection::vec(1u64..16, 1..32),
    ) {
        let mut c = PoolSpec::new(servers, disks).chunks(96).build();
        let mut secrets = CountingSecrets::default();
        let legs_per_disk = 48u64;
        let mut left = (servers * disks) as u64 * legs_per_disk / 2;
        let mut i = 0;
        while left > 0 {
            let mirrored = sizes[i % sizes.len()].min(left);
            c.create_volume(new_volume(&format!("v{i}"), mirrored, 2), &mut secrets).unwrap();
            left -= mirrored;
            i += 1;
        }
        let (disk_peak, server_peak) = partner_peaks(&c);
        let even_disk = legs_per_disk.div_ceil(((servers - 1) * disks) as u64) as u32;
        let even_server = legs_per_disk.div_ceil(servers as u64 - 1) as u32;
        prop_assert!(
            disk_peak <= even_disk + 2,
            "two disks share {disk_peak} mirrored disks (even share {even_disk})"
        );
        prop_assert!(
            server_peak <= even_server + 2,
            "a disk shares {server_peak} mirrored disks with one server (even share {even_server})"
        );
    }
}
