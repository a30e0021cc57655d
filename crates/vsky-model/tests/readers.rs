//! Read-only attachments (`cluster/readers.rs`): snapshots read on several
//! hosts at once while their volume keeps running elsewhere, what each
//! reader is told, what a read-only attach of another volume is, and what
//! keeps a snapshot in use.

mod common;

use vsky_model::agent_view::LayerForm;
use vsky_model::*;
use vsky_testkit::pool::{MIB, PoolSpec};

const CHUNK: u64 = 256 * MIB;

fn pool() -> Cluster {
    PoolSpec::new(4, 2).chunk_bytes(CHUNK).chunks(32).build()
}

fn server(c: &Cluster, name: &str) -> ServerId {
    c.server_by_name(name).unwrap().id
}

fn thin(c: &mut Cluster, name: &str, s: &mut CountingSecrets) {
    let new = NewVolume {
        name: name.into(),
        size_bytes: 64 * MIB,
        thin: true,
        ..Default::default()
    };
    c.create_volume(new, s).unwrap();
}

/// A thin volume `v` attached to s0 with a ready snapshot `snap`.
fn volume_with_snapshot() -> (Cluster, CountingSecrets) {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", &mut s);
    c.attach_volume("v", "s0").unwrap();
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    c.finish_freeze(server(&c, "s0"), "v").unwrap();
    (c, s)
}

fn read(c: &mut Cluster, name: &str, on: &str) -> ReadOnlyAttach {
    c.attach_read_only(name, on).unwrap().0
}

#[test]
fn a_snapshot_is_read_on_several_hosts_while_its_volume_runs_elsewhere() {
    let (mut c, _) = volume_with_snapshot();
    assert_eq!(read(&mut c, "snap", "s1"), ReadOnlyAttach::Reader);
    assert_eq!(read(&mut c, "snap", "s2"), ReadOnlyAttach::Reader);
    // Again: the same reader.
    let (again, changes) = c.attach_read_only("snap", "s1").unwrap();
    assert_eq!(again, ReadOnlyAttach::Reader);
    assert!(changes.is_empty());
    let snap = c.volume_by_name("snap").unwrap();
    assert_eq!(snap.readers.len(), 2);
    assert!(snap.attachment.is_none(), "readers are not a head");
    // The writer is untouched.
    let v = c.volume_by_name("v").unwrap();
    assert_eq!(v.attachment.as_ref().unwrap().head, server(&c, "s0"));
    // Each reader is told the snapshot read-only, every layer in base form,
    // under the layers' own export names (what a clone's head is told).
    let VolumeRole::Snapshot { layer, .. } = snap.role else {
        unreachable!()
    };
    for on in ["s1", "s2"] {
        let view = c.agent_view(server(&c, on));
        let [spec] = &view.volumes[..] else {
            panic!("{on} is told {:?}", view.volumes)
        };
        assert_eq!(spec.name, "snap");
        assert!(spec.read_only);
        assert!(spec.mirrored_disks.is_empty());
        assert_eq!(spec.size_bytes, 64 * MIB);
        assert!(spec.chain.iter().all(|l| l.form == LayerForm::Base));
        assert_eq!(spec.chain[0].name, layer_name(layer));
        assert_eq!(spec.chain[0].thin_size_bytes, spec.size_bytes);
        // Every leg over NBD, also one on the reader's own disk: only an
        // import is cut when the layer's export goes.
        assert!(
            spec.chain
                .iter()
                .flat_map(|l| l.mirrored_disks.iter().flatten())
                .all(|l| l.local_disk_path.is_none())
        );
        let told: Vec<&str> = spec.chain[0].mirrored_disks[0]
            .iter()
            .map(|l| l.export_name.as_str())
            .filter(|n| !n.is_empty())
            .collect();
        let legs: Vec<&str> = c.volume(layer).unwrap().mirrored_disks[0]
            .legs
            .iter()
            .filter(|l| told.contains(&l.export_name.as_str()))
            .map(|l| l.export_name.as_str())
            .collect();
        assert_eq!(told, legs);
    }
    // The head of the volume is told its own volume only.
    let view = c.agent_view(server(&c, "s0"));
    assert_eq!(
        view.volumes.iter().map(|v| &v.name[..]).collect::<Vec<_>>(),
        ["v"]
    );
    assert!(!view.volumes[0].read_only);
    // A reader reports failed legs of the base it assembles.
    c.report_leg_failed(server(&c, "s1"), &layer_name(layer), 0, 0)
        .unwrap();
    // Ending one reader leaves the other, and draws no new names.
    let names: Vec<String> = c.volume(layer).unwrap().mirrored_disks[0]
        .legs
        .iter()
        .map(|l| l.export_name.clone())
        .collect();
    let (ended, _) = c.end_reader("snap", "s1").unwrap();
    assert!(ended);
    assert!(!c.end_reader("snap", "s1").unwrap().0, "idempotent");
    assert!(c.agent_view(server(&c, "s1")).volumes.is_empty());
    assert_eq!(c.agent_view(server(&c, "s2")).volumes.len(), 1);
    let after: Vec<String> = c.volume(layer).unwrap().mirrored_disks[0]
        .legs
        .iter()
        .map(|l| l.export_name.clone())
        .collect();
    assert_eq!(names[1], after[1]);
    c.check_invariants().unwrap();
}

#[test]
fn a_read_only_attach_of_another_volume_is_its_one_attachment() {
    let (mut c, mut s) = volume_with_snapshot();
    // Attached to s0: another head reading it is refused, as a write is.
    assert!(matches!(
        c.attach_read_only("v", "s1"),
        Err(ModelError::AttachedElsewhere { .. })
    ));
    // Not even from a failed head: a read never fences a head.
    c.fail_server("s0").unwrap();
    assert!(matches!(
        c.attach_read_only("v", "s1"),
        Err(ModelError::AttachedElsewhere { .. })
    ));
    // A detached one becomes attached to the reader.
    thin(&mut c, "w", &mut s);
    assert_eq!(
        read(&mut c, "w", "s1"),
        ReadOnlyAttach::Head { taken_from: None }
    );
    let w = c.volume_by_name("w").unwrap();
    assert_eq!(w.attachment.as_ref().unwrap().head, server(&c, "s1"));
    assert!(w.readers.is_empty());
    // Only snapshots have readers.
    assert!(matches!(
        c.attach_reader("w", "s2"),
        Err(ModelError::Invalid { .. })
    ));
    c.check_invariants().unwrap();
}

#[test]
fn readers_are_refused_where_they_could_not_read() {
    let mut c = pool();
    let mut s = CountingSecrets::default();
    thin(&mut c, "v", &mut s);
    c.attach_volume("v", "s0").unwrap();
    c.snapshot_volume("v", "snap", 1, &mut s).unwrap();
    // Pending: the head has not switched yet.
    assert!(matches!(
        c.attach_reader("snap", "s1"),
        Err(ModelError::Conflict(_))
    ));
    c.finish_freeze(server(&c, "s0"), "v").unwrap();
    c.fail_server("s3").unwrap();
    assert!(matches!(
        c.attach_reader("snap", "s3"),
        Err(ModelError::Conflict(_))
    ));
    c.set_storage_only(server(&c, "s2"), true).unwrap();
    assert!(matches!(
        c.attach_reader("snap", "s2"),
        Err(ModelError::StorageOnly { .. })
    ));
    assert!(matches!(
        c.attach_reader("snap", "nope"),
        Err(ModelError::NotFound { .. })
    ));
    assert!(matches!(
        c.attach_reader("nope", "s1"),
        Err(ModelError::NotFound { .. })
    ));
    // A refused reader changed nothing.
    assert!(c.volume_by_name("snap").unwrap().readers.is_empty());
    c.check_invariants().unwrap();
}

#[test]
fn a_snapshot_being_read_is_kept_until_its_readers_end_or_die() {
    let (mut c, mut s) = volume_with_snapshot();
    c.attach_reader("snap", "s1").unwrap();
    c.attach_reader("snap", "s2").unwrap();
    let err = c.delete_volume("snap").unwrap_err();
    assert!(
        matches!(err, ModelError::Conflict(ref m) if m.contains("s1, s2")),
        "{err}"
    );
    c.end_reader("snap", "s1").unwrap();
    assert!(c.delete_volume("snap").is_err());
    // A reader on a failed server reads nothing any more.
    c.fail_server("s2").unwrap();
    c.delete_volume("snap").unwrap();
    assert!(c.volume_by_name("snap").is_err());
    c.check_invariants().unwrap();

    // The admin's forced detach ends every reader.
    c.snapshot_volume("v", "snap2", 2, &mut s).unwrap();
    c.finish_freeze(server(&c, "s0"), "v").unwrap();
    c.attach_reader("snap2", "s1").unwrap();
    let (ended, _) = c.force_detach_volume("snap2", &mut s).unwrap();
    assert!(ended);
    assert!(c.volume_by_name("snap2").unwrap().readers.is_empty());
    assert!(!c.force_detach_volume("snap2", &mut s).unwrap().0);
    c.check_invariants().unwrap();

    // A server that leaves the cluster reads nothing: remove one that holds
    // no legs.
    let spec = PoolSpec::new(4, 2).chunk_bytes(CHUNK).chunks(32);
    spec.add_server(&mut c, 4, 1);
    c.attach_reader("snap2", "s4").unwrap();
    c.remove_server("s4").unwrap();
    assert!(c.volume_by_name("snap2").unwrap().readers.is_empty());
    c.check_invariants().unwrap();
}

#[test]
fn readers_survive_the_store_and_bad_ones_are_refused() {
    let (mut c, _) = volume_with_snapshot();
    c.attach_reader("snap", "s1").unwrap();
    let records = c.records();
    common::volumes_through_the_store(&records);
    let loaded = Cluster::load(records.clone()).unwrap();
    assert!(loaded.is_reader("snap", server(&c, "s1")));
    // A volume that is not a snapshot, or an unknown server, is corrupt.
    for broken in ["v", "unknown"] {
        let mut r = records.clone();
        let target = if broken == "v" { "v" } else { "snap" };
        let v = r.volumes.iter_mut().find(|v| v.name == target).unwrap();
        v.readers.insert(if broken == "v" {
            ServerId(0)
        } else {
            ServerId(999)
        });
        assert!(
            matches!(Cluster::load(r), Err(ModelError::Corrupt(_))),
            "{broken}"
        );
    }
}

#[test]
fn an_admin_detach_names_the_reader_whose_read_ends() {
    let (mut c, mut s) = volume_with_snapshot();
    // Read everywhere: the servers holding the layer's legs import them
    // over NBD too.
    let mut holders = 0;
    for on in ["s0", "s1", "s2", "s3"] {
        c.attach_reader("snap", on).unwrap();
        let view = c.agent_view(server(&c, on));
        let spec = view.volumes.iter().find(|v| v.name == "snap").unwrap();
        for leg in spec
            .chain
            .iter()
            .flat_map(|l| l.mirrored_disks.iter().flatten())
        {
            assert!(leg.local_disk_path.is_none(), "{on} maps {leg:?} in place");
            holders += usize::from(leg.server == server(&c, on));
        }
    }
    assert!(holders >= 2, "no reader held a leg of its own");
    for on in ["s0", "s3"] {
        c.end_reader("snap", on).unwrap();
    }
    // Unnamed, a read snapshot is refused: ending every read is --force.
    let err = c.release_or_end_read("snap", None).unwrap_err();
    assert!(
        matches!(err, ModelError::Conflict(ref m) if m.contains("s1, s2")),
        "{err}"
    );
    // A server that neither reads nor heads it.
    assert!(matches!(
        c.release_or_end_read("snap", Some("s3")),
        Err(ModelError::Conflict(_))
    ));
    c.release_or_end_read("snap", Some("s1")).unwrap();
    assert_eq!(
        c.volume_by_name("snap").unwrap().readers.len(),
        1,
        "only s1's read ended"
    );
    // Naming the head of a volume releases it, as without a name.
    c.release_or_end_read("v", Some("s0")).unwrap();
    assert!(
        c.volume_by_name("v")
            .unwrap()
            .attachment
            .as_ref()
            .unwrap()
            .is_releasing()
    );
    c.force_detach_volume("v", &mut s).unwrap();
    c.check_invariants().unwrap();
}
