//! Thin volumes, snapshots, clones and reverts as chains of layers
//! (`cluster/chains.rs`): what each operation costs and refuses, how a
//! snapshot of an attached volume waits for its head, and what `load`
//! refuses. The property over random histories is in `chain_histories.rs`.

mod common;

use common::{thin, used_chunks};
use vsky_model::*;
use vsky_testkit::pool::{MIB, PoolSpec};

/// 256 MiB chunks: a layer's first mirrored disk holds 239 MiB of data
/// (the data area less 16 MiB of pool metadata).
const CHUNK: u64 = 256 * MIB;

fn pool() -> Cluster {
    PoolSpec::new(3, 2).chunk_bytes(CHUNK).chunks(32).build()
}

fn server(c: &Cluster, name: &str) -> ServerId {
    c.server_by_name(name).unwrap().id
}

fn releasing_chunks(c: &Cluster) -> usize {
    c.disks().map(|d| d.releasing.len()).sum()
}

fn layer(c: &Cluster, id: VolumeId) -> &LayerInfo {
    c.volume(id).unwrap().role.layer().unwrap()
}

fn top_of(c: &Cluster, name: &str) -> VolumeId {
    match c.volume_by_name(name).unwrap().role {
        VolumeRole::Thin { top } => top,
        ref other => panic!("{name} is {other:?}"),
    }
}

fn leg_names(c: &Cluster, layer: VolumeId) -> Vec<String> {
    c.volume(layer)
        .unwrap()
        .mirrored_disks
        .iter()
        .flat_map(|m| &m.legs)
        .map(|l| l.export_name.clone())
        .collect()
}

#[test]
fn a_thin_volume_takes_one_mirrored_disk_whatever_its_size() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    // Far larger than the pool's chunks: thin volumes over-commit.
    let capacity = 64 * CHUNK;
    let v = thin(&mut c, "big", capacity, &mut s);
    let handle = c.volume(v).unwrap();
    assert!(handle.mirrored_disks.is_empty());
    assert_eq!(handle.size_bytes, capacity);
    let chain = c.chain(v);
    assert_eq!(chain.len(), 1);
    let top = c.volume(chain[0]).unwrap();
    assert_eq!(top.mirrored_disks.len(), 1);
    assert_eq!(top.name, layer_name(top.id));
    let info = top.role.layer().unwrap();
    assert_eq!(info.state, LayerState::Writable);
    assert_eq!(info.parent, None);
    assert_eq!(info.thin_size_bytes, capacity);
    assert_eq!(info.meta_bytes, thin_meta_bytes(CHUNK - MIB).unwrap());
    assert_eq!(used_chunks(&c), 2);
    c.check_invariants().unwrap();
    // Layers are internal: not found by name, and no volume can take one's
    // name.
    assert!(matches!(
        c.volume_by_name(&top.name.clone()),
        Err(ModelError::NotFound { .. })
    ));
    let taken = NewVolume {
        name: layer_name(VolumeId(999)),
        size_bytes: MIB,
        ..Default::default()
    };
    assert!(matches!(
        c.create_volume(taken, &mut s),
        Err(ModelError::Invalid { .. })
    ));
}

#[test]
fn thin_pool_sizes_follow_the_chunk() {
    // An eighth of the data area, clamped, in whole 64 KiB blocks.
    assert_eq!(thin_meta_bytes(3 * MIB), None);
    assert_eq!(thin_meta_bytes(4 * MIB), Some(2 * MIB));
    assert_eq!(thin_meta_bytes(15 * MIB), Some(2 * MIB));
    assert_eq!(thin_meta_bytes(63 * MIB), Some(7 * MIB + 896 * 1024));
    assert_eq!(thin_meta_bytes(1023 * MIB), Some(16 * MIB));
    // Too small a chunk: a clear refusal, nothing taken.
    let mut c = PoolSpec::new(3, 1).build();
    let mut s = CountingSecrets::default();
    let new = NewVolume {
        name: "v".into(),
        size_bytes: MIB,
        thin: true,
        ..Default::default()
    };
    let err = c.create_volume(new, &mut s).unwrap_err();
    assert!(err.to_string().contains("create it thick"), "{err}");
    assert_eq!(c.volumes().count(), 0);
    assert_eq!(c.next_id(), PoolSpec::new(3, 1).build().next_id());
}

#[test]
fn a_snapshot_of_a_detached_volume_is_ready_at_once_and_costs_one_mirrored_disk() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    let v = thin(&mut c, "v", 100 * MIB, &mut s);
    let old_top = top_of(&c, "v");
    let before = used_chunks(&c);
    let (snap, _) = c.snapshot_volume("v", "v-snap", 1_000, &mut s).unwrap();
    assert_eq!(used_chunks(&c), before + 2, "only the new top's chunks");
    assert!(c.snapshot_is_ready(snap));
    let new_top = top_of(&c, "v");
    assert_eq!(c.chain(v), vec![new_top, old_top]);
    assert_eq!(c.chain(snap), vec![old_top]);
    assert_eq!(layer(&c, old_top).state, LayerState::Frozen);
    assert_eq!(layer(&c, old_top).frozen_at_unix_s, Some(1_000));
    assert_eq!(layer(&c, new_top).parent, Some(old_top));
    let sv = c.volume(snap).unwrap();
    assert_eq!(sv.size_bytes, 100 * MIB);
    assert_eq!(
        sv.role,
        VolumeRole::Snapshot {
            layer: old_top,
            snapshot_of: "v".into(),
            snapshot_time_unix_s: 1_000
        }
    );
    c.check_invariants().unwrap();
    // A snapshot is read-only: no read-write attach, no resize, no
    // snapshot of it.
    assert!(c.attach_volume("v-snap", "s0").is_err());
    let grace = std::time::Duration::from_secs(30);
    let silent = |_| std::time::Duration::ZERO;
    assert!(
        c.resize_volume("v-snap", 200 * MIB, &silent, grace, &mut s)
            .is_err()
    );
    assert!(c.snapshot_volume("v-snap", "x", 1, &mut s).is_err());
    // A thin volume grows without chunks.
    let chunks = used_chunks(&c);
    c.resize_volume("v", 200 * MIB, &silent, grace, &mut s)
        .unwrap();
    assert_eq!(used_chunks(&c), chunks);
    assert_eq!(layer(&c, new_top).thin_size_bytes, 200 * MIB);
    // Also past what its top's pool holds now: the pool grows as it is
    // written (`tests/pools.rs`).
    c.resize_volume("v", 4 * CHUNK, &silent, grace, &mut s)
        .unwrap();
    assert_eq!(used_chunks(&c), chunks);
    assert_eq!(c.volume(v).unwrap().size_bytes, 4 * CHUNK);
    c.check_invariants().unwrap();
}

#[test]
fn a_snapshot_of_an_attached_volume_waits_for_its_head() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    let old_top = top_of(&c, "v");
    let (snap, _) = c.snapshot_volume("v", "v-snap", 5, &mut s).unwrap();
    assert!(!c.snapshot_is_ready(snap));
    assert_eq!(layer(&c, old_top).state, LayerState::Freezing);
    c.check_invariants().unwrap();
    // Until the head switched, nothing relies on the old top.
    let refusal = c.clone_volume("v-snap", "c", 6, &mut s).unwrap_err();
    assert!(refusal.to_string().contains("try again"), "{refusal}");
    let refusal = c.snapshot_volume("v", "v-snap2", 6, &mut s).unwrap_err();
    assert!(refusal.to_string().contains("try again"), "{refusal}");
    // Only the head's report counts, once; it comes in a heartbeat.
    let (frozen, changes) = c.finish_freeze(server(&c, "s1"), "v").unwrap();
    assert!(!frozen && changes.is_empty());
    let head = server(&c, "s0");
    let old_name = c.volume(old_top).unwrap().name.clone();
    let report = AgentReport {
        assembled: Some(vec!["v".into()]),
        switched: vec![old_name.clone(), "_Lffff".into(), "v".into()],
        ..Default::default()
    };
    assert!(!c.heartbeat_is_quiet(head, &report));
    assert!(c.heartbeat_is_quiet(server(&c, "s1"), &report));
    let (out, _) = c.apply_heartbeat(head, &report, 9, &mut s).unwrap();
    assert_eq!(
        out.events,
        [HeartbeatEvent::Switched { volume: "v".into() }]
    );
    assert!(c.snapshot_is_ready(snap));
    assert_eq!(layer(&c, old_top).state, LayerState::Frozen);
    assert!(c.heartbeat_is_quiet(head, &report), "said once is enough");
    // A second snapshot at once: the report about the first old top,
    // still repeated, must not freeze the second before its switch.
    let second_top = top_of(&c, "v");
    let (snap2, _) = c.snapshot_volume("v", "v-snap2", 8, &mut s).unwrap();
    assert!(c.heartbeat_is_quiet(head, &report));
    let (out, _) = c.apply_heartbeat(head, &report, 10, &mut s).unwrap();
    assert!(out.events.is_empty(), "{:?}", out.events);
    assert!(!c.snapshot_is_ready(snap2));
    assert_eq!(layer(&c, second_top).state, LayerState::Freezing);
    c.check_invariants().unwrap();
    // Its own report does.
    let second = AgentReport {
        switched: vec![c.volume(second_top).unwrap().name.clone()],
        ..report
    };
    c.apply_heartbeat(head, &second, 11, &mut s).unwrap();
    assert!(c.snapshot_is_ready(snap2));
    let (frozen, changes) = c.finish_freeze(server(&c, "s0"), "v").unwrap();
    assert!(!frozen && changes.is_empty());
    c.check_invariants().unwrap();
    c.clone_volume("v-snap", "c", 7, &mut s).unwrap();
    c.check_invariants().unwrap();
}

#[test]
fn a_heads_heartbeat_fails_the_legs_of_its_layers() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    let top = top_of(&c, "v");
    let (name, chunk) = {
        let l = c.volume(top).unwrap();
        (l.name.clone(), l.mirrored_disks[0].legs[1].chunk)
    };
    let report = AgentReport {
        assembled: Some(vec!["v".into(), name.clone()]),
        failed_legs: vec![LegFailure {
            volume: name,
            mirrored_disk: 0,
            leg: 1,
            chunk: Some(chunk),
        }],
        ..Default::default()
    };
    c.apply_heartbeat(server(&c, "s0"), &report, 1, &mut s)
        .unwrap();
    assert_eq!(
        c.volume(top).unwrap().mirrored_disks[0].legs[1].state,
        LegState::Failed
    );
    c.check_invariants().unwrap();
}

#[test]
fn an_attachment_that_ends_before_the_switch_drops_the_pending_snapshot() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    let v = thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    let old_top = top_of(&c, "v");
    let (snap, _) = c.snapshot_volume("v", "v-snap", 5, &mut s).unwrap();
    let new_top = top_of(&c, "v");
    let names = (leg_names(&c, old_top), leg_names(&c, new_top));
    // The head is fenced before it reported the switch: it may have written
    // the old top after the snapshot was asked, so the snapshot goes; the
    // volume's data is whole either way (old writes in the old top, new ones
    // in the new top).
    c.force_detach_volume("v", &mut s).unwrap();
    assert!(c.volume(snap).is_none());
    assert_eq!(c.chain(v), vec![new_top, old_top]);
    assert_eq!(layer(&c, old_top).state, LayerState::Frozen);
    // Both layers the head could write have new secrets.
    let after = (leg_names(&c, old_top), leg_names(&c, new_top));
    assert!(names.0.iter().all(|n| !after.0.contains(n)));
    assert!(names.1.iter().all(|n| !after.1.contains(n)));
    c.check_invariants().unwrap();
    // The volume snapshots again once detached.
    c.snapshot_volume("v", "v-snap", 6, &mut s).unwrap();
    c.check_invariants().unwrap();
}

/// The write limits of the exports of `layer`'s legs, from their servers'
/// desired states.
fn write_limits(c: &Cluster, layer: VolumeId) -> Vec<Option<u64>> {
    let names = leg_names(c, layer);
    c.servers()
        .flat_map(|s| c.agent_view(s.id).exports)
        .filter(|e| names.contains(&e.export_name))
        .map(|e| e.writable_bytes)
        .collect()
}

#[test]
fn a_frozen_layers_data_is_exported_read_only_once_its_head_switched() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    let old_top = top_of(&c, "v");
    assert_eq!(write_limits(&c, old_top), vec![None, None]);
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    // Its head may still write it until it switched.
    assert_eq!(write_limits(&c, old_top), vec![None, None]);
    c.finish_freeze(server(&c, "s0"), "v").unwrap();
    let meta = Some(c.settings().leg_meta_bytes);
    assert_eq!(write_limits(&c, old_top), vec![meta, meta]);
    assert_eq!(write_limits(&c, top_of(&c, "v")), vec![None, None]);
    // A detached volume's snapshot is read-only at once.
    thin(&mut c, "w", 64 * MIB, &mut s);
    let top = top_of(&c, "w");
    c.snapshot_volume("w", "wsnap", 1, &mut s).unwrap();
    assert_eq!(write_limits(&c, top), vec![meta, meta]);
}

/// Fails the disk under leg 0 of `layer` and plans and starts its repair;
/// returns the job.
fn repair_leg_of(c: &mut Cluster, layer: VolumeId, s: &mut CountingSecrets) -> JobId {
    let disk = c.volume(layer).unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.fail_disk(disk).unwrap();
    let (jobs, _) = c.plan_repairs(s);
    let job = jobs
        .into_iter()
        .find(|j| c.job(*j).unwrap().volume == layer)
        .expect("a repair of the layer");
    c.start_jobs(2);
    assert_eq!(c.job(job).unwrap().state, JobState::Running);
    job
}

#[test]
fn the_head_of_a_thin_volume_repairs_the_layers_it_writes() {
    // Big enough that each layer's legs sit on disks of their own.
    let mut c = PoolSpec::new(4, 2).chunk_bytes(CHUNK).chunks(8).build();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    let head = server(&c, "s0");
    let top = top_of(&c, "v");
    // The written top is repaired by the head, through its mirror.
    let job = repair_leg_of(&mut c, top, &mut s);
    assert_eq!(c.job_executor(job), Some(Executor::Head(head)));
    c.check_invariants().unwrap();
    // While it freezes, the head still writes it and still repairs it.
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    assert_eq!(c.job_executor(job), Some(Executor::Head(head)));
    // Once the head switched, nothing writes it: the storage agent copies,
    // after the job went back to the queue (it restarts from zero).
    c.finish_freeze(head, "v").unwrap();
    assert_eq!(c.job(job).unwrap().state, JobState::Queued);
    c.start_jobs(2);
    assert!(matches!(c.job_executor(job), Some(Executor::Storage(_))));
    c.check_invariants().unwrap();
    // The new top's repair is the head's; releasing the volume stops it
    // (the head tears down), and the end of the attachment hands it to a
    // storage agent.
    let new_top = top_of(&c, "v");
    let job = repair_leg_of(&mut c, new_top, &mut s);
    assert_eq!(c.job_executor(job), Some(Executor::Head(head)));
    c.release_volume("v").unwrap();
    assert_eq!(c.job(job).unwrap().state, JobState::Queued);
    c.start_jobs(2);
    assert_eq!(c.job_executor(job), None, "nothing starts while releasing");
    c.check_invariants().unwrap();
    c.head_reports_assembled(head, Some(&[]), &mut s).unwrap();
    c.start_jobs(2);
    assert!(matches!(c.job_executor(job), Some(Executor::Storage(_))));
    // Attaching again gives it back to the head.
    c.attach_volume("v", "s0").unwrap();
    c.start_jobs(2);
    assert_eq!(c.job_executor(job), Some(Executor::Head(head)));
    c.check_invariants().unwrap();
}

#[test]
fn a_release_ends_once_the_head_has_no_layer_it_wrote_left() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    let v = thin(&mut c, "v", 64 * MIB, &mut s);
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    c.attach_volume("v", "s0").unwrap();
    let head = server(&c, "s0");
    let top = c.volume(top_of(&c, "v")).unwrap().name.clone();
    let base = c.volume(c.chain(v)[1]).unwrap().name.clone();
    c.release_volume("v").unwrap();
    // The volume's own device is gone, but its top is still assembled:
    // another head must not assemble that layer writable yet.
    for still in [vec![top.clone()], vec![top.clone(), base.clone()]] {
        let (released, _) = c
            .head_reports_assembled(head, Some(&still), &mut s)
            .unwrap();
        assert!(released.is_empty(), "{still:?}");
        assert!(c.volume_by_name("v").unwrap().attachment.is_some());
        // Nothing to apply: the manager skips writing such heartbeats.
        assert!(c.heartbeat_is_quiet(head, &report_assembled(still)));
    }
    // A base it only read does not hold the release.
    assert!(!c.heartbeat_is_quiet(head, &report_assembled(vec![base.clone()])));
    let (released, _) = c
        .head_reports_assembled(head, Some(std::slice::from_ref(&base)), &mut s)
        .unwrap();
    assert_eq!(released, ["v"]);
    assert!(c.volume_by_name("v").unwrap().attachment.is_none());
    c.check_invariants().unwrap();
}

fn report_assembled(assembled: Vec<String>) -> AgentReport {
    AgentReport {
        assembled: Some(assembled),
        ..Default::default()
    }
}

fn chain_of(c: &Cluster, head: &str, volume: &str) -> Vec<(String, agent_view::LayerForm)> {
    let view = c.agent_view(server(c, head));
    let spec = view.volumes.iter().find(|v| v.name == volume).unwrap();
    assert!(
        spec.mirrored_disks.is_empty(),
        "a thin volume's data is its chain"
    );
    for pair in spec.chain.windows(2) {
        assert_eq!(pair[0].parent.as_ref(), Some(&pair[1].name));
    }
    assert_eq!(spec.chain.last().unwrap().parent, None);
    // A layer's legs are imported over NBD, also from the head's own disk.
    for leg in spec
        .chain
        .iter()
        .flat_map(|l| l.mirrored_disks.iter().flatten())
    {
        assert!(
            leg.local_disk_path.is_none(),
            "{head} maps {leg:?} in place"
        );
    }
    spec.chain
        .iter()
        .map(|l| (l.name.clone(), l.form))
        .collect()
}

#[test]
fn a_head_is_told_each_layer_of_its_volumes_chains_and_how_to_assemble_it() {
    use agent_view::LayerForm::{Base, Freezing, Top};
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    let t = layer_name(top_of(&c, "v"));
    assert_eq!(chain_of(&c, "s0", "v"), vec![(t.clone(), Top)]);
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    let n = layer_name(top_of(&c, "v"));
    assert_eq!(
        chain_of(&c, "s0", "v"),
        vec![(n.clone(), Top), (t.clone(), Freezing)]
    );
    c.finish_freeze(server(&c, "s0"), "v").unwrap();
    assert_eq!(
        chain_of(&c, "s0", "v"),
        vec![(n.clone(), Top), (t.clone(), Base)]
    );
    // A clone on another head reads the same base.
    c.clone_volume("snap", "c", 2, &mut s).unwrap();
    c.attach_volume("c", "s1").unwrap();
    let ct = layer_name(top_of(&c, "c"));
    assert_eq!(chain_of(&c, "s1", "c"), vec![(ct, Top), (t.clone(), Base)]);
    // No other server is told any layer.
    assert!(c.agent_view(server(&c, "s2")).volumes.is_empty());
    // A base's failed leg is listed without its secret; the leg a head
    // reads with is still there.
    let base = c.volume_by_name("snap").unwrap().role.clone();
    let VolumeRole::Snapshot { layer, .. } = base else {
        unreachable!()
    };
    c.report_leg_failed(server(&c, "s1"), &t, 0, 0).unwrap();
    let view = c.agent_view(server(&c, "s1"));
    let spec = view.volumes.iter().find(|v| v.name == "c").unwrap();
    let legs = &spec.chain[1].mirrored_disks[0];
    assert!(legs[0].export_name.is_empty());
    assert_eq!(legs[1].export_name, leg_names(&c, layer)[1]);
    c.check_invariants().unwrap();
}

#[test]
fn heads_report_failed_legs_of_the_layers_they_assemble_only() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    let top = top_of(&c, "v");
    let name = layer_name(top);
    // Not attached: nobody assembles it.
    assert!(matches!(
        c.report_leg_failed(server(&c, "s0"), &name, 0, 0),
        Err(ModelError::Conflict(_))
    ));
    c.attach_volume("v", "s0").unwrap();
    assert!(matches!(
        c.report_leg_failed(server(&c, "s1"), &name, 0, 0),
        Err(ModelError::Conflict(_))
    ));
    assert!(c.report_leg_failed(server(&c, "s0"), &name, 0, 9).is_err());
    c.report_leg_failed(server(&c, "s0"), &name, 0, 1).unwrap();
    let leg = &c.volume(top).unwrap().mirrored_disks[0].legs[1];
    assert_eq!(leg.state, LegState::Failed);
    // A handle's own name has no legs to report.
    assert!(c.report_leg_failed(server(&c, "s0"), "v", 0, 0).is_err());
    c.check_invariants().unwrap();
}

#[test]
fn clones_come_from_snapshots_and_detached_volumes_only() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    let v = thin(&mut c, "tmpl", 64 * MIB, &mut s);
    let base = top_of(&c, "tmpl");
    // A detached volume: its top is frozen under the clone and under the
    // volume's own new top.
    let (c1, _) = c.clone_volume("tmpl", "vm1", 1, &mut s).unwrap();
    assert_eq!(c.chain(c1)[1..], [base]);
    assert_eq!(c.chain(v)[1..], [base]);
    assert_eq!(layer(&c, base).state, LayerState::Frozen);
    let clone = c.volume(c1).unwrap();
    assert_eq!(clone.size_bytes, 64 * MIB);
    assert!(clone.attachment.is_none());
    // Clones of one base attach on different heads at once.
    c.attach_volume("vm1", "s0").unwrap();
    let (snap, _) = c.snapshot_volume("tmpl", "tmpl-snap", 2, &mut s).unwrap();
    let (c2, _) = c.clone_volume("tmpl-snap", "vm2", 3, &mut s).unwrap();
    c.attach_volume("vm2", "s1").unwrap();
    assert_eq!(c.chain(c2)[1..], c.chain(snap)[..]);
    c.check_invariants().unwrap();
    // An attached volume is refused, and so are thick volumes.
    let refusal = c.clone_volume("vm1", "x", 4, &mut s).unwrap_err();
    assert!(refusal.to_string().contains("snapshot it"), "{refusal}");
    let thick = NewVolume {
        name: "thick".into(),
        size_bytes: MIB,
        ..Default::default()
    };
    c.create_volume(thick, &mut s).unwrap();
    for refusal in [
        c.clone_volume("thick", "x", 4, &mut s).unwrap_err(),
        c.snapshot_volume("thick", "x", 4, &mut s).unwrap_err(),
        c.revert_volume("thick", "tmpl-snap", &mut s).unwrap_err(),
    ] {
        assert!(refusal.to_string().contains("thick"), "{refusal}");
    }
    // Names are checked like any volume's.
    assert!(matches!(
        c.clone_volume("tmpl-snap", "vm1", 5, &mut s),
        Err(ModelError::AlreadyExists { .. })
    ));
    assert!(c.clone_volume("tmpl-snap", "-x", 5, &mut s).is_err());
    c.check_invariants().unwrap();
}

#[test]
fn a_refused_clone_changes_nothing() {
    // Room for exactly one more mirrored disk: the clone's top fits, the
    // volume's own new top does not.
    let mut c = PoolSpec::new(2, 1).chunk_bytes(CHUNK).chunks(2).build();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    let before = format!("{:?}", c.records());
    let next = c.next_id();
    let err = c.clone_volume("v", "c", 1, &mut s).unwrap_err();
    assert!(matches!(err, ModelError::NotEnoughChunks { .. }), "{err}");
    assert_eq!(format!("{:?}", c.records()), before);
    assert_eq!(c.next_id(), next);
    c.check_invariants().unwrap();
    // The snapshot needs one mirrored disk, and gets it.
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    c.check_invariants().unwrap();
}

#[test]
fn revert_needs_a_detached_volume_and_releases_its_old_top() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    let v = thin(&mut c, "v", 64 * MIB, &mut s);
    let (snap, _) = c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    let grace = std::time::Duration::from_secs(30);
    let silent = |_| std::time::Duration::ZERO;
    c.resize_volume("v", 128 * MIB, &silent, grace, &mut s)
        .unwrap();
    c.attach_volume("v", "s0").unwrap();
    let refusal = c.revert_volume("v", "snap", &mut s).unwrap_err();
    assert!(
        refusal.to_string().contains("shut its VM down"),
        "{refusal}"
    );
    c.release_volume("v").unwrap();
    c.head_reports_assembled(server(&c, "s0"), Some(&[]), &mut s)
        .unwrap();
    let old_top = top_of(&c, "v");
    let released = releasing_chunks(&c);
    c.revert_volume("v", "snap", &mut s).unwrap();
    assert!(c.volume(old_top).is_none());
    assert_eq!(releasing_chunks(&c), released + 2);
    assert_eq!(c.chain(v)[1..], c.chain(snap)[..]);
    assert_eq!(
        c.volume(v).unwrap().size_bytes,
        64 * MIB,
        "the snapshot's size"
    );
    assert!(c.revert_volume("v", "v", &mut s).is_err());
    assert!(c.revert_volume("snap", "snap", &mut s).is_err());
    // Only to its own snapshots: another volume's would give it other data.
    thin(&mut c, "w", 64 * MIB, &mut s);
    c.snapshot_volume("w", "w-snap", 2, &mut s).unwrap();
    let chain = c.chain(v);
    let err = c.revert_volume("v", "w-snap", &mut s).unwrap_err();
    assert!(err.to_string().contains("not of 'v'"), "{err}");
    assert_eq!(c.chain(v), chain, "nothing changed");
    c.check_invariants().unwrap();
}

#[test]
fn clones_of_a_volume_nothing_wrote_since_read_its_frozen_layer() {
    // xapi's clone-on-boot: at every start of a VM whose disk resets on
    // boot, the detached disk is cloned and the clone destroyed at
    // shutdown; a template's disk is cloned at every fast clone.
    let mut c = pool();
    let mut s = CountingSecrets::default();
    let v = thin(&mut c, "disk", 64 * MIB, &mut s);
    c.attach_volume("disk", "s0").unwrap();
    c.force_detach_volume("disk", &mut s).unwrap();
    c.clone_volume("disk", "boot0", 1, &mut s).unwrap();
    let depth = c.chain(v).len();
    assert_eq!(depth, 2, "the first clone froze the written top");
    let used = used_chunks(&c);
    for i in 1..40 {
        let name = format!("boot{i}");
        c.clone_volume("disk", &name, 1 + i, &mut s).unwrap();
        c.delete_volume(&format!("boot{}", i - 1)).unwrap();
        assert_eq!(c.chain(v).len(), depth, "boot {i}: the chain grew");
        assert_eq!(used_chunks(&c), used, "boot {i}: chunks taken");
        c.check_invariants().unwrap();
    }
    // Written again (attached), the next clone freezes its top once more.
    c.attach_volume("disk", "s0").unwrap();
    assert!(!layer(&c, top_of(&c, "disk")).unwritten);
    c.force_detach_volume("disk", &mut s).unwrap();
    c.clone_volume("disk", "after", 99, &mut s).unwrap();
    assert_eq!(c.chain(v).len(), depth + 1);
    c.check_invariants().unwrap();
}

#[test]
fn chains_are_bounded() {
    let mut c = PoolSpec::new(3, 2).chunk_bytes(CHUNK).chunks(64).build();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    for i in 0..limits::CHAIN_DEPTH_MAX {
        c.snapshot_volume("v", &format!("s{i}"), i as u64, &mut s)
            .unwrap();
    }
    let next = c.next_id();
    let refusal = c.snapshot_volume("v", "one-more", 99, &mut s).unwrap_err();
    assert!(
        refusal.to_string().contains("delete older snapshots"),
        "{refusal}"
    );
    assert_eq!(c.next_id(), next);
    // Written since, its clone would freeze its top once more: refused.
    c.attach_volume("v", "s0").unwrap();
    c.force_detach_volume("v", &mut s).unwrap();
    let refusal = c.clone_volume("v", "one-more", 99, &mut s).unwrap_err();
    assert!(
        refusal.to_string().contains("delete older snapshots"),
        "{refusal}"
    );
    // The deepest snapshot's clone is as deep as the volume's top: allowed.
    let deepest = format!("s{}", limits::CHAIN_DEPTH_MAX - 1);
    c.clone_volume(&deepest, "c", 100, &mut s).unwrap();
    c.check_invariants().unwrap();
}

#[test]
fn deleting_in_any_order_releases_each_layer_when_nothing_reads_it() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    let t0 = top_of(&c, "v");
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    c.clone_volume("snap", "c", 2, &mut s).unwrap();
    // The snapshot goes; its layer stays: two volumes read through it.
    c.delete_volume("snap").unwrap();
    assert!(c.volume(t0).is_some());
    c.check_invariants().unwrap();
    // The volume goes: its top is released; the base stays for the clone.
    c.delete_volume("v").unwrap();
    assert!(c.volume(t0).is_some());
    assert_eq!(c.volumes().count(), 3, "clone, its top, the base");
    c.check_invariants().unwrap();
    // The clone goes: its top, then the base nothing names any more.
    c.delete_volume("c").unwrap();
    assert_eq!(c.volumes().count(), 0);
    assert_eq!(used_chunks(&c), 0);
    c.check_invariants().unwrap();
}

#[test]
fn thin_records_survive_the_store_and_older_records_load_thick() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.attach_volume("v", "s0").unwrap();
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    let records = c.records();
    let volumes = common::volumes_through_the_store(&records);
    let loaded = Cluster::load(Records {
        volumes,
        ..records.clone()
    })
    .unwrap();
    assert_eq!(format!("{:?}", loaded.records()), format!("{records:?}"));
    loaded.check_invariants().unwrap();
    // A record without a role is thick, and a thick one is stored without.
    let mut c = pool();
    let (id, _) = c
        .create_volume(
            NewVolume {
                name: "old".into(),
                size_bytes: MIB,
                ..Default::default()
            },
            &mut s,
        )
        .unwrap();
    let json = serde_json::to_value(c.volume(id).unwrap()).unwrap();
    assert!(json.get("role").is_none());
    let back: Volume = serde_json::from_value(json).unwrap();
    assert_eq!(back.role, VolumeRole::Thick);
}

/// Records of a cluster with a volume over a snapshot, broken by `f`.
fn load_broken(f: impl FnOnce(&mut Vec<Volume>)) -> Result<Cluster, ModelError> {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", 64 * MIB, &mut s);
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    let mut records = c.records();
    f(&mut records.volumes);
    Cluster::load(records)
}

fn layer_mut(volumes: &mut [Volume], pick: impl Fn(&LayerInfo) -> bool) -> &mut LayerInfo {
    volumes
        .iter_mut()
        .find_map(|v| match &mut v.role {
            VolumeRole::Layer(info) if pick(info) => Some(info),
            _ => None,
        })
        .unwrap()
}

#[test]
fn load_refuses_chains_that_break_a_rule() {
    load_broken(|_| {}).unwrap();
    let corrupt = |r: Result<Cluster, ModelError>| {
        assert!(matches!(r, Err(ModelError::Corrupt(_))), "{r:?}");
    };
    // A writable parent.
    corrupt(load_broken(|v| {
        layer_mut(v, |l| l.parent.is_none()).state = LayerState::Writable;
    }));
    // A parent cycle.
    corrupt(load_broken(|v| {
        let top = v
            .iter()
            .find_map(|x| match x.role {
                VolumeRole::Thin { top } => Some(top),
                _ => None,
            })
            .unwrap();
        layer_mut(v, |l| l.parent.is_none()).parent = Some(top);
    }));
    // A layer nothing names (the snapshot record lost, the top too).
    corrupt(load_broken(|v| {
        v.retain(|x| {
            !matches!(
                x.role,
                VolumeRole::Snapshot { .. } | VolumeRole::Thin { .. }
            )
        });
    }));
    // A snapshot of a volume that is not a layer.
    corrupt(load_broken(|v| {
        let thin = v
            .iter()
            .find(|x| matches!(x.role, VolumeRole::Thin { .. }))
            .unwrap()
            .id;
        for x in v.iter_mut() {
            if let VolumeRole::Snapshot { layer, .. } = &mut x.role {
                *layer = thin;
            }
        }
    }));
    // A thin volume with chunks of its own.
    corrupt(load_broken(|v| {
        let legs = v
            .iter()
            .find(|x| x.role.layer().is_some())
            .unwrap()
            .mirrored_disks
            .clone();
        let t = v
            .iter_mut()
            .find(|x| matches!(x.role, VolumeRole::Thin { .. }))
            .unwrap();
        t.mirrored_disks = legs;
    }));
    // A frozen layer that names a writer.
    corrupt(load_broken(|v| {
        let handle = v
            .iter()
            .find(|x| matches!(x.role, VolumeRole::Thin { .. }))
            .unwrap()
            .id;
        layer_mut(v, |l| l.state == LayerState::Frozen).writer = Some(handle);
    }));
    // A top that names no writer.
    corrupt(load_broken(|v| {
        layer_mut(v, |l| l.state == LayerState::Writable).writer = None;
    }));
    // A top whose thin device is not the volume's size.
    corrupt(load_broken(|v| {
        layer_mut(v, |l| l.state == LayerState::Writable).thin_size_bytes += 4096;
    }));
}
