//! Thin pools that grow as their heads report them filling
//! (`cluster/pools.rs`): when a report grows a layer and by how much, which
//! reports count, what happens when the cluster has no chunk left, and, as
//! a property, that the pool's layout only ever appends.

use proptest::prelude::*;
use vsky_model::*;
use vsky_testkit::pool::{MIB, PoolSpec};

/// 256 MiB chunks of which 1 MiB is the legs' metadata.
const CHUNK: u64 = 256 * MIB;
const PER_CHUNK: u64 = CHUNK - MIB;
const BLOCK: u64 = 64 << 10;

fn pool(chunks: u64) -> Cluster {
    PoolSpec::new(3, 2)
        .chunk_bytes(CHUNK)
        .chunks(chunks)
        .build()
}

fn server(c: &Cluster, name: &str) -> ServerId {
    c.server_by_name(name).unwrap().id
}

/// A thin volume of `size` attached to s0, and its top's id and name.
fn attached(c: &mut Cluster, size: u64, s: &mut CountingSecrets) -> (VolumeId, String) {
    let new = NewVolume {
        name: "v".into(),
        size_bytes: size,
        thin: true,
        ..Default::default()
    };
    c.create_volume(new, s).unwrap();
    c.attach_volume("v", "s0").unwrap();
    let top = top_of(c);
    (top, c.volume(top).unwrap().name.clone())
}

fn top_of(c: &Cluster) -> VolumeId {
    match c.volume_by_name("v").unwrap().role {
        VolumeRole::Thin { top } => top,
        ref other => panic!("v is {other:?}"),
    }
}

fn info(c: &Cluster, id: VolumeId) -> LayerInfo {
    c.volume(id).unwrap().role.layer().unwrap().clone()
}

fn disks(c: &Cluster, id: VolumeId) -> usize {
    c.volume(id).unwrap().mirrored_disks.len()
}

/// What the head of a pool of `id`'s current size reports with `used`
/// data blocks mapped.
fn usage(c: &Cluster, id: VolumeId, used: u64) -> PoolUsage {
    let total = pool_data_blocks(&info(c, id), disks(c, id), PER_CHUNK);
    PoolUsage {
        layer: c.volume(id).unwrap().name.clone(),
        used_data_blocks: used.min(total),
        total_data_blocks: total,
        used_meta_blocks: 10,
        total_meta_blocks: 4096,
        out_of_data_space: used >= total,
    }
}

fn beat(pools: Vec<PoolUsage>) -> AgentReport {
    AgentReport {
        assembled: Some(vec!["v".into()]),
        pools,
        ..Default::default()
    }
}

#[test]
fn a_pool_grows_when_its_head_reports_it_filling_and_not_before() {
    let mut c = pool(32);
    let mut s = CountingSecrets::default();
    let (top, name) = attached(&mut c, 40 * CHUNK, &mut s);
    let head = server(&c, "s0");
    let first = pool_data_blocks(&info(&c, top), 1, PER_CHUNK);
    assert_eq!(first, (PER_CHUNK - 16 * MIB) / BLOCK);
    // Half a chunk free or more: nothing to do, and the heartbeat is quiet.
    let calm = beat(vec![usage(&c, top, first - PER_CHUNK / BLOCK / 2)]);
    assert_eq!(c.pool_growth(head, &calm.pools[0]), PoolGrowth::NotNeeded);
    assert!(c.heartbeat_is_quiet(head, &calm));
    // Below it: one more mirrored disk, near the head, in one heartbeat.
    let filling = beat(vec![usage(&c, top, first - 10)]);
    assert!(!c.heartbeat_is_quiet(head, &filling));
    let generation = c.generation();
    let (out, changes) = c.apply_heartbeat(head, &filling, 1, &mut s).unwrap();
    assert_eq!(
        out.events,
        [HeartbeatEvent::PoolGrown {
            volume: "v".into(),
            layer: name.clone(),
            mirrored_disks: 2,
        }]
    );
    assert!(changes.volumes.contains(&top));
    assert!(c.generation() > generation, "the head's long-poll wakes");
    assert_eq!(disks(&c, top), 2);
    let grown = c.volume(top).unwrap();
    assert_eq!(grown.size_bytes, 2 * PER_CHUNK);
    assert!(
        grown.mirrored_disks[1]
            .legs
            .iter()
            .any(|l| c.disk(l.chunk.disk).unwrap().server == head),
        "placed near its head"
    );
    assert_eq!(
        info(&c, top).added_meta_bytes,
        thin_added_meta_bytes(PER_CHUNK)
    );
    c.check_invariants().unwrap();
    // The same report again, about the pool before the growth: the head
    // has not applied it yet, so it asks for nothing.
    assert_eq!(c.pool_growth(head, &filling.pools[0]), PoolGrowth::Stale);
    assert!(c.heartbeat_is_quiet(head, &filling));
    // Once applied, a pool with room is quiet again.
    let applied = beat(vec![usage(&c, top, first)]);
    assert_eq!(
        c.pool_growth(head, &applied.pools[0]),
        PoolGrowth::NotNeeded
    );
    // Writes far ahead of the reports: several disks at once, bounded.
    let behind = beat(vec![usage(&c, top, u64::MAX)]);
    match c.pool_growth(head, &behind.pools[0]) {
        PoolGrowth::Grow { layer, disks } => {
            assert_eq!(layer, top);
            assert!((1..=8).contains(&disks), "{disks}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_the_writing_head_grows_a_writable_layer_and_never_past_its_thin_device() {
    let mut c = pool(32);
    let mut s = CountingSecrets::default();
    // Room for a bit more than one disk's data: one growth is all it gets.
    let (top, _) = attached(&mut c, PER_CHUNK, &mut s);
    let head = server(&c, "s0");
    let full = usage(&c, top, u64::MAX);
    assert_eq!(c.pool_growth(server(&c, "s1"), &full), PoolGrowth::Stale);
    let unknown = PoolUsage {
        layer: "_Lffff".into(),
        ..full.clone()
    };
    assert_eq!(c.pool_growth(head, &unknown), PoolGrowth::Stale);
    assert_eq!(
        c.pool_growth(head, &full),
        PoolGrowth::Grow {
            layer: top,
            disks: 1
        }
    );
    c.apply_heartbeat(head, &beat(vec![full]), 1, &mut s)
        .unwrap();
    assert_eq!(disks(&c, top), 2);
    let full = usage(&c, top, u64::MAX);
    assert_eq!(c.pool_growth(head, &full), PoolGrowth::NotNeeded);
    // A frozen layer never grows: the snapshot froze this top.
    c.snapshot_volume("v", "v-snap", 5, &mut s).unwrap();
    c.finish_freeze(head, "v").unwrap();
    assert_eq!(info(&c, top).state, LayerState::Frozen);
    assert_eq!(c.pool_growth(head, &full), PoolGrowth::Stale);
    // A releasing head is no writer any more.
    let new_top = top_of(&c);
    c.release_volume("v").unwrap();
    let full = usage(&c, new_top, u64::MAX);
    assert_eq!(c.pool_growth(head, &full), PoolGrowth::Stale);
    c.check_invariants().unwrap();
}

#[test]
fn a_pool_whose_metadata_fills_grows_whatever_its_data() {
    let mut c = pool(32);
    let mut s = CountingSecrets::default();
    let (top, _) = attached(&mut c, 40 * CHUNK, &mut s);
    let head = server(&c, "s0");
    let mut u = usage(&c, top, 0);
    u.used_meta_blocks = u.total_meta_blocks / 2 + 1;
    assert_eq!(
        c.pool_growth(head, &u),
        PoolGrowth::Grow {
            layer: top,
            disks: 1
        }
    );
}

#[test]
fn a_pool_that_cannot_grow_says_so_and_changes_nothing() {
    // 2 chunks per disk, 12 in all: the thin volume takes 2, a thick one
    // the other 10.
    let mut c = pool(2);
    let mut s = CountingSecrets::default();
    let (top, name) = attached(&mut c, 40 * CHUNK, &mut s);
    let thick = NewVolume {
        name: "filler".into(),
        size_bytes: 5 * PER_CHUNK,
        ..Default::default()
    };
    c.create_volume(thick, &mut s).unwrap();
    let head = server(&c, "s0");
    let full = beat(vec![usage(&c, top, u64::MAX)]);
    let before = format!("{:?}", c.records());
    let (out, changes) = c.apply_heartbeat(head, &full, 1, &mut s).unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(format!("{:?}", c.records()), before);
    match &out.events[..] {
        [
            HeartbeatEvent::PoolExhausted {
                volume,
                layer,
                full: true,
                error,
            },
        ] => {
            assert_eq!((volume.as_str(), layer), ("v", &name));
            assert!(error.contains("chunk"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // It says so on every report until there is room (the manager tells
    // the admin once).
    let (out, _) = c.apply_heartbeat(head, &full, 2, &mut s).unwrap();
    assert_eq!(out.events.len(), 1);
    c.delete_volume("filler").unwrap();
    c.check_invariants().unwrap();
}

#[test]
fn records_from_before_growth_load_and_grow_by_the_rule() {
    let mut c = pool(32);
    let mut s = CountingSecrets::default();
    let (top, _) = attached(&mut c, 40 * CHUNK, &mut s);
    let mut records = c.records();
    for v in &mut records.volumes {
        if let VolumeRole::Layer(info) = &mut v.role {
            info.added_meta_bytes = 0;
        }
    }
    let mut old = Cluster::load(records.clone()).unwrap();
    let head = server(&old, "s0");
    let full = beat(vec![usage(&old, top, u64::MAX)]);
    old.apply_heartbeat(head, &full, 1, &mut s).unwrap();
    assert!(disks(&old, top) > 1);
    assert_eq!(
        info(&old, top).added_meta_bytes,
        thin_added_meta_bytes(PER_CHUNK)
    );
    old.check_invariants().unwrap();
    // A grown layer without its rule is refused.
    let mut bad = old.records();
    for v in &mut bad.volumes {
        if let VolumeRole::Layer(info) = &mut v.role {
            info.added_meta_bytes = 0;
        }
    }
    let err = Cluster::load(bad).unwrap_err();
    assert!(err.to_string().contains("pool shape"), "{err}");
}

#[test]
fn a_thin_volume_is_refused_only_past_what_a_pool_can_grow_to() {
    let mut c = pool(32);
    let mut s = CountingSecrets::default();
    let too_big = NewVolume {
        name: "huge".into(),
        size_bytes: (1 << 20) * PER_CHUNK,
        thin: true,
        ..Default::default()
    };
    let err = c.create_volume(too_big, &mut s).unwrap_err();
    assert!(err.to_string().contains("bigger chunk size"), "{err}");
    let big = NewVolume {
        name: "big".into(),
        size_bytes: 1000 * CHUNK,
        thin: true,
        ..Default::default()
    };
    c.create_volume(big, &mut s).unwrap();
    c.check_invariants().unwrap();
}

proptest! {
    /// Any report from any server, about any layer, with any counters:
    /// an answer, never a panic, and never a growth past the bounds.
    #[test]
    fn any_pool_report_is_answered_within_bounds(
        reporter in 0usize..3,
        known_layer in any::<bool>(),
        used in any::<u64>(),
        total in prop_oneof![Just(0u64), Just(80), Just(3808), any::<u64>()],
        used_meta in any::<u64>(),
        total_meta in any::<u64>(),
        full in any::<bool>(),
    ) {
        let mut c = pool(32);
        let mut s = CountingSecrets::default();
        let (top, name) = attached(&mut c, 40 * CHUNK, &mut s);
        let usage = PoolUsage {
            layer: if known_layer { name } else { "_Lzz".into() },
            used_data_blocks: used,
            total_data_blocks: total,
            used_meta_blocks: used_meta,
            total_meta_blocks: total_meta,
            out_of_data_space: full,
        };
        let server = server(&c, &format!("s{reporter}"));
        if let PoolGrowth::Grow { layer, disks } = c.pool_growth(server, &usage) {
            prop_assert_eq!(layer, top);
            prop_assert!((1..=8).contains(&disks));
        }
        let before = disks(&c, top);
        c.apply_heartbeat(server, &beat(vec![usage]), 1, &mut s).unwrap();
        prop_assert!(disks(&c, top) <= before + 8);
        c.check_invariants().unwrap();
    }

    /// Growing a pool only appends: the metadata and data parts of a layer
    /// of `n` disks are the first parts of the same layer of `n + k`; they
    /// never overlap, cover every byte of the layer's space, and the data
    /// blocks counted are those of the data parts.
    #[test]
    fn a_pools_layout_only_appends(
        per_chunk_mib in 5u64..2048,
        n in 1usize..40,
        k in 1usize..10,
    ) {
        let per_chunk = per_chunk_mib * MIB;
        let meta = thin_meta_bytes(per_chunk).unwrap();
        let info = LayerInfo {
            parent: None,
            state: LayerState::Writable,
            block_sectors: 128,
            meta_bytes: meta,
            added_meta_bytes: thin_added_meta_bytes(per_chunk),
            thin_size_bytes: 1,
            frozen_at_unix_s: None,
            writer: None,
            unwritten: true,
        };
        let (m1, d1) = pool_extents(&info, n, per_chunk);
        let (m2, d2) = pool_extents(&info, n + k, per_chunk);
        prop_assert_eq!(&m2[..m1.len()], &m1[..]);
        prop_assert_eq!(&d2[..d1.len()], &d1[..]);
        let mut parts: Vec<(u64, u64)> = m2.iter().chain(&d2).copied().collect();
        parts.sort();
        let mut at = 0;
        for (start, len) in parts {
            prop_assert_eq!(start, at);
            prop_assert!(len > 0);
            at += len;
        }
        prop_assert_eq!(at, (n + k) as u64 * per_chunk);
        let data: u64 = d2.iter().map(|(_, l)| l).sum();
        prop_assert_eq!(pool_data_blocks(&info, n + k, per_chunk), data / BLOCK);
        // Each later disk's metadata covers its own data at the sizing rule.
        let added = thin_added_meta_bytes(per_chunk);
        prop_assert!(added >= (per_chunk - added) / BLOCK * 96);
    }
}
