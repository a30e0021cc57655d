//! Who may reach a volume's legs: an attachment is handed back in two
//! phases (releasing until the head reports its devices gone, or a forced
//! detach), the end of an attachment gives every leg a new secret export
//! name (the old head's names open nothing), storage-only servers cannot
//! head volumes, and each server's desired state names only the secrets it
//! needs now (also as a property over random histories).

mod common;

use std::collections::BTreeSet;

use proptest::prelude::*;
use vsky_model::agent_view::AgentView;
use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec};

fn id(c: &Cluster, server: &str) -> ServerId {
    c.server_by_name(server).unwrap().id
}

/// Every leg's export name of a volume, in slot order.
fn leg_names(c: &Cluster, volume: &str) -> Vec<String> {
    c.volume_by_name(volume)
        .unwrap()
        .mirrored_disks
        .iter()
        .flat_map(|m| &m.legs)
        .map(|l| l.export_name.clone())
        .collect()
}

/// Every secret a view tells its agent (empty names are no secret).
fn names_in(view: &AgentView) -> BTreeSet<String> {
    let legs = view
        .volumes
        .iter()
        .flat_map(|v| v.mirrored_disks.iter().flatten())
        .chain(view.copies.iter().map(|c| &c.source))
        .chain(view.scrubs.iter().flat_map(|s| &s.legs));
    view.exports
        .iter()
        .map(|e| e.export_name.clone())
        .chain(legs.map(|l| l.export_name.clone()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The export names of the legs on `server`'s own disks.
fn own_leg_names(c: &Cluster, server: ServerId) -> BTreeSet<String> {
    c.volumes()
        .flat_map(|v| v.mirrored_disks.iter().flat_map(|m| &m.legs))
        .filter(|l| c.disk(l.chunk.disk).unwrap().server == server)
        .map(|l| l.export_name.clone())
        .collect()
}

/// The volume's attachment state, if it has an attachment.
fn state(c: &Cluster, volume: &str) -> Option<AttachmentState> {
    c.volume_by_name(volume)
        .unwrap()
        .attachment
        .as_ref()
        .map(|a| a.state)
}

fn set(names: Vec<String>) -> BTreeSet<String> {
    names.into_iter().collect()
}

#[test]
fn a_graceful_detach_rotates_the_names_only_once_the_head_reports_its_devices_gone() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 3, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    let s3 = id(&c, "s3");
    let old = set(leg_names(&c, "v"));
    assert_eq!(old.len(), 6);
    assert!(
        old.is_subset(&names_in(&c.agent_view(s3))),
        "the head knows every leg's name while attached"
    );

    // Releasing: the head is no longer told to assemble the volume, but
    // the legs stay exported under the names it knows, so its teardown
    // (dm-raid's last superblock writes) succeeds.
    let generation = c.generation();
    let changes = c.release_volume("v").unwrap();
    let v = c.volume_by_name("v").unwrap().id;
    assert!(changes.volumes.contains(&v), "the state is stored");
    assert_ne!(c.generation(), generation, "the head is told");
    assert_eq!(state(&c, "v"), Some(AttachmentState::Releasing));
    assert!(
        c.agent_view(s3).volumes.is_empty(),
        "the head tears it down"
    );
    assert_eq!(set(leg_names(&c, "v")), old, "no name changes yet");
    let exported: BTreeSet<String> = c
        .servers()
        .flat_map(|s| c.agent_view(s.id).exports)
        .map(|e| e.export_name)
        .collect();
    assert_eq!(exported, old);
    assert!(
        c.release_volume("v").unwrap().is_empty(),
        "idempotent while releasing"
    );
    Cluster::load(c.records()).unwrap();

    // A heartbeat that still lists the volume (teardown under way), or
    // another server's, ends nothing.
    let (released, changes) = c
        .head_reports_assembled(s3, Some(&["v".to_string()]), &mut secrets)
        .unwrap();
    assert!(released.is_empty() && changes.is_empty());
    let (released, _) = c
        .head_reports_assembled(id(&c, "s0"), Some(&[]), &mut secrets)
        .unwrap();
    assert!(released.is_empty());
    assert_eq!(state(&c, "v"), Some(AttachmentState::Releasing));

    // The head reports the devices gone: the attachment ends and every
    // leg gets a new name.
    let (released, changes) = c
        .head_reports_assembled(s3, Some(&[]), &mut secrets)
        .unwrap();
    assert_eq!(released, vec!["v".to_string()]);
    assert!(changes.volumes.contains(&v), "the new names are stored");
    assert_eq!(state(&c, "v"), None);
    let new = set(leg_names(&c, "v"));
    assert_eq!(new.len(), 6, "each leg has a name of its own");
    assert!(new.is_disjoint(&old), "no old name survives the release");
    for s in c.servers().map(|s| s.id).collect::<Vec<_>>() {
        let seen = names_in(&c.agent_view(s));
        assert!(seen.is_disjoint(&old), "{s:?} still exports an old name");
    }
    // The chunks stay exported under their new names, ready for the next
    // head.
    let exported: BTreeSet<String> = c
        .servers()
        .flat_map(|s| c.agent_view(s.id).exports)
        .map(|e| e.export_name)
        .collect();
    assert_eq!(exported, new);

    // Detaching a detached volume changes nothing, names included.
    assert!(c.release_volume("v").unwrap().is_empty());
    let (ended, changes) = c.force_detach_volume("v", &mut secrets).unwrap();
    assert!(!ended && changes.is_empty());
    assert_eq!(set(leg_names(&c, "v")), new);
    Cluster::load(c.records()).unwrap();
    c.check_invariants().unwrap();
}

#[test]
fn no_other_server_attaches_while_a_release_is_under_way() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    c.release_volume("v").unwrap();
    let generation = c.generation();
    let e = c.attach_volume("v", "s2").unwrap_err();
    assert_eq!(
        (e.kind(), e.code()),
        (ErrorKind::Conflict, "releasing_elsewhere")
    );
    let message = e.to_string();
    assert!(
        message.contains("'s3'") && message.contains("vsky volume detach --force v"),
        "the message names the head and the way out: {message}"
    );
    assert_eq!(c.generation(), generation, "a refusal changes nothing");
    let e = c.delete_volume("v").unwrap_err();
    assert!(e.to_string().contains("released by server 's3'"), "{e}");

    // Once released, the other server may attach.
    c.head_reports_assembled(id(&c, "s3"), Some(&[]), &mut secrets)
        .unwrap();
    c.attach_volume("v", "s2").unwrap();
    assert_eq!(state(&c, "v"), Some(AttachmentState::Attached));
}

#[test]
fn attaching_again_on_the_releasing_head_takes_the_attachment_back() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    let s3 = id(&c, "s3");
    let names = leg_names(&c, "v");
    c.release_volume("v").unwrap();
    // A deactivate failed (the device was busy) and xapi retries the
    // activate on the same host.
    let changes = c.attach_volume("v", "s3").unwrap();
    assert!(!changes.is_empty());
    assert_eq!(state(&c, "v"), Some(AttachmentState::Attached));
    assert_eq!(c.agent_view(s3).volumes.len(), 1, "assembled again");
    assert_eq!(leg_names(&c, "v"), names, "the same names: nothing ended");
    // A late heartbeat from the teardown attempt ends nothing now.
    let (released, _) = c
        .head_reports_assembled(s3, Some(&[]), &mut secrets)
        .unwrap();
    assert!(released.is_empty());
    assert_eq!(state(&c, "v"), Some(AttachmentState::Attached));
    assert!(c.attach_volume("v", "s3").unwrap().is_empty());
}

#[test]
fn a_forced_detach_ends_the_attachment_at_once_from_either_state() {
    for release_first in [false, true] {
        let mut c = PoolSpec::new(4, 1).build();
        let mut secrets = CountingSecrets::default();
        common::volume(&mut c, "v", 1, 2, &mut secrets);
        c.attach_volume("v", "s3").unwrap();
        let s3 = id(&c, "s3");
        if release_first {
            c.release_volume("v").unwrap();
            // The head died while tearing down: it is failed, and nothing
            // will confirm the release.
            c.fail_server("s3").unwrap();
            c.head_reports_assembled(id(&c, "s0"), Some(&[]), &mut secrets)
                .unwrap();
            assert_eq!(state(&c, "v"), Some(AttachmentState::Releasing));
        }
        let old = set(leg_names(&c, "v"));
        let (ended, changes) = c.force_detach_volume("v", &mut secrets).unwrap();
        assert!(ended && !changes.is_empty());
        assert_eq!(state(&c, "v"), None);
        assert!(set(leg_names(&c, "v")).is_disjoint(&old), "fenced");
        assert!(c.agent_view(s3).volumes.is_empty());
        c.attach_volume("v", "s2").unwrap();
        c.check_invariants().unwrap();
    }
}

#[test]
fn a_gone_head_is_fenced_and_replaced_by_an_attach_elsewhere() {
    for release_first in [false, true] {
        let mut c = PoolSpec::new(4, 1).build();
        let mut secrets = CountingSecrets::default();
        common::volume(&mut c, "v", 1, 2, &mut secrets);
        c.attach_volume("v", "s3").unwrap();
        let (s2, s3) = (id(&c, "s2"), id(&c, "s3"));
        if release_first {
            // The head died in the middle of its deactivate.
            c.release_volume("v").unwrap();
        }
        let old = set(leg_names(&c, "v"));
        // While the head is alive, it keeps the volume.
        let refused = c
            .attach_volume_taking_over("v", "s2", &|_| false, &mut secrets)
            .unwrap_err();
        let want = if release_first {
            "releasing_elsewhere"
        } else {
            "attached_elsewhere"
        };
        assert_eq!(refused.code(), want);
        assert_eq!(set(leg_names(&c, "v")), old);
        // A storage-only target is refused before anything is fenced.
        c.set_storage_only(id(&c, "s1"), true).unwrap();
        let refused = c
            .attach_volume_taking_over("v", "s1", &|h| h == s3, &mut secrets)
            .unwrap_err();
        assert_eq!(refused.code(), "storage_only");
        assert_eq!(set(leg_names(&c, "v")), old, "nothing fenced");
        // Gone: fenced and moved in one change.
        let (from, changes) = c
            .attach_volume_taking_over("v", "s2", &|h| h == s3, &mut secrets)
            .unwrap();
        assert_eq!(from.as_deref(), Some("s3"));
        assert!(!changes.is_empty());
        let a = c.volume_by_name("v").unwrap().attachment.clone().unwrap();
        assert_eq!((a.head, a.state), (s2, AttachmentState::Attached));
        assert!(set(leg_names(&c, "v")).is_disjoint(&old), "fenced");
        assert!(c.agent_view(s3).volumes.is_empty());
        assert!(names_in(&c.agent_view(s2)).is_disjoint(&old));
        // Idempotent on the new head: no second fence.
        let names = leg_names(&c, "v");
        let (from, _) = c
            .attach_volume_taking_over("v", "s2", &|_| true, &mut secrets)
            .unwrap();
        assert_eq!(from, None);
        assert_eq!(leg_names(&c, "v"), names);
        c.check_invariants().unwrap();
    }
}

#[test]
fn a_head_declared_failed_is_taken_over_whatever_the_clock_says() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    c.fail_server("s3").unwrap();
    let (from, _) = c
        .attach_volume_taking_over("v", "s2", &|_| false, &mut secrets)
        .unwrap();
    assert_eq!(from.as_deref(), Some("s3"));
    c.check_invariants().unwrap();
}

#[test]
fn an_agent_that_cannot_report_its_devices_releases_at_once() {
    // An agent from before two-phase detach sends no list: its releasing
    // attachments end at its next heartbeat, as its detaches did before.
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    common::volume(&mut c, "w", 1, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    c.attach_volume("w", "s3").unwrap();
    c.release_volume("v").unwrap();
    let (released, _) = c
        .head_reports_assembled(id(&c, "s3"), None, &mut secrets)
        .unwrap();
    assert_eq!(released, vec!["v".to_string()]);
    assert_eq!(
        state(&c, "w"),
        Some(AttachmentState::Attached),
        "only releasing ones"
    );
    // A list longer than any host's is refused, and changes nothing.
    c.release_volume("w").unwrap();
    let huge = vec!["x".to_string(); limits::HEARTBEAT_ASSEMBLED_MAX + 1];
    let e = c
        .head_reports_assembled(id(&c, "s3"), Some(&huge), &mut secrets)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadInput);
    assert_eq!(state(&c, "w"), Some(AttachmentState::Releasing));
}

#[test]
fn an_attachment_stored_before_two_phase_detach_loads_as_attached() {
    let a: Attachment = serde_json::from_str(r#"{"head": 3}"#).unwrap();
    assert_eq!(a.state, AttachmentState::Attached);
    let r: Attachment = serde_json::from_str(r#"{"head": 3, "state": "releasing"}"#).unwrap();
    assert!(r.is_releasing());
}

#[test]
fn no_resync_or_scrub_of_a_releasing_volume_starts() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    c.attach_volume("v", "s3").unwrap();
    let s3 = id(&c, "s3");
    let victim = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0]
        .chunk
        .disk;
    c.fail_disk(victim).unwrap();
    let (jobs, _) = c.plan_repairs(&mut secrets);
    c.start_jobs(1);
    assert_eq!(c.job_executor(jobs[0]), Some(Executor::Head(s3)));

    c.release_volume("v").unwrap();
    assert_eq!(c.job(jobs[0]).unwrap().state, JobState::Queued, "requeued");
    let (started, _) = c.start_jobs(1);
    assert!(started.is_empty(), "nobody copies while the head may write");
    assert_eq!(c.job_executor(jobs[0]), None);
    assert!(c.servers().all(|s| c.agent_view(s.id).copies.is_empty()));
    c.check_recovery_invariants(1).unwrap();

    // After the release, a storage agent copies under the new names.
    let old = set(leg_names(&c, "v"));
    c.head_reports_assembled(s3, Some(&[]), &mut secrets)
        .unwrap();
    c.start_jobs(1);
    let Some(Executor::Storage(copier)) = c.job_executor(jobs[0]) else {
        panic!("a detached volume's resync is copied by a storage agent");
    };
    let copy = &c.agent_view(copier).copies[0];
    assert!(!copy.source.export_name.is_empty());
    assert!(
        !old.contains(&copy.source.export_name),
        "the copy reads its source under its new name"
    );
    c.check_recovery_invariants(1).unwrap();

    // A healthy releasing volume is not scrubbed either (by its head or by
    // a comparison).
    let mut c = PoolSpec::new(4, 1).build();
    common::volume(&mut c, "w", 1, 2, &mut secrets);
    c.attach_volume("w", "s3").unwrap();
    assert_eq!(
        c.start_scrubs(0, 3600, 1).len(),
        1,
        "a head checks its mirror"
    );
    c.release_volume("w").unwrap();
    let w = c.volume_by_name("w").unwrap().id;
    assert!(c.scrub(w, 0).is_none(), "the check ends with the release");
    assert!(c.start_scrubs(7200, 3600, 1).is_empty());
    c.check_invariants().unwrap();
}

#[test]
fn a_storage_only_server_cannot_head_a_volume() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let s3 = id(&c, "s3");
    let changes = c.set_storage_only(s3, true).unwrap();
    assert!(changes.servers.contains(&s3), "the role is stored");
    assert!(c.set_storage_only(s3, true).unwrap().is_empty());

    let generation = c.generation();
    let e = c.attach_volume("v", "s3").unwrap_err();
    assert_eq!((e.kind(), e.code()), (ErrorKind::Conflict, "storage_only"));
    let message = e.to_string();
    assert!(
        message.contains("'s3'") && message.contains("--storage-only"),
        "{message}"
    );
    assert_eq!(c.generation(), generation, "a refusal changes nothing");
    assert!(c.volume_by_name("v").unwrap().attachment.is_none());

    // The role survives a reload, and an agent without --storage-only may
    // head again.
    let loaded = Cluster::load(c.records()).unwrap();
    assert!(loaded.server(s3).unwrap().storage_only);
    c.set_storage_only(s3, false).unwrap();
    c.attach_volume("v", "s3").unwrap();
}

#[test]
fn a_storage_only_server_is_told_only_its_own_legs_names() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 4, 2, &mut secrets);
    common::volume(&mut c, "w", 4, 3, &mut secrets);
    // Attached before its agent came back with --storage-only: the
    // attachment stays until an admin detaches it, but the server is told
    // no volume to assemble, so it learns no other server's leg names.
    c.attach_volume("v", "s3").unwrap();
    let s3 = id(&c, "s3");
    c.set_storage_only(s3, true).unwrap();
    let view = c.agent_view(s3);
    assert!(view.volumes.is_empty());
    assert!(!view.exports.is_empty(), "it still serves its chunks");
    assert_eq!(names_in(&view), own_leg_names(&c, s3));
}

#[test]
fn a_head_is_told_the_names_of_the_legs_it_imports_only() {
    let mut c = PoolSpec::new(5, 1).build();
    let mut secrets = CountingSecrets::default();
    c.create_volume(
        NewVolume {
            name: "v".into(),
            size_bytes: 2 * (CHUNK - MIB),
            replicas: Some(2),
            ..Default::default()
        },
        &mut secrets,
    )
    .unwrap();
    let head_name = (0..5)
        .map(|s| format!("s{s}"))
        .find(|s| own_leg_names(&c, id(&c, s)).is_empty())
        .expect("5 servers, 4 legs: one holds none");
    c.attach_volume("v", &head_name).unwrap();
    let head = id(&c, &head_name);
    // Leg 0 of mirrored disk 0 fails, and its replacement waits in the
    // queue (nothing started): neither is imported.
    let failed = c.volume_by_name("v").unwrap().mirrored_disks[0].legs[0].clone();
    c.report_leg_failed(head, "v", 0, 0).unwrap();
    let (jobs, _) = c.plan_repairs(&mut secrets);
    assert_eq!(jobs.len(), 1);
    let target = c.job(jobs[0]).unwrap().target;

    let view = c.agent_view(head);
    let legs: Vec<_> = view.volumes[0].mirrored_disks.iter().flatten().collect();
    for leg in &legs {
        let imported = leg.state == LegState::Active;
        assert_eq!(
            !leg.export_name.is_empty(),
            imported,
            "leg on {:?} in state {:?}",
            leg.chunk,
            leg.state
        );
    }
    assert!(!names_in(&view).contains(&failed.export_name));

    // Once the head runs the resync, it needs the new leg's name.
    c.start_jobs(1);
    let view = c.agent_view(head);
    let new_leg = view.volumes[0].mirrored_disks[0]
        .iter()
        .find(|l| l.chunk == target)
        .unwrap();
    assert_eq!(new_leg.resync_job, Some(jobs[0]));
    assert!(!new_leg.export_name.is_empty());
}

#[test]
fn a_scrub_names_only_the_legs_its_executor_reads_over_nbd() {
    let mut c = PoolSpec::new(4, 1).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 3, &mut secrets);
    // A detached volume: its first leg's server compares the legs, its own
    // in place.
    let run = c.start_scrubs(0, 3600, 1)[0].run;
    assert_eq!(run.method, ScrubMethod::CompareLegs);
    let view = c.agent_view(run.executor);
    for leg in &view.scrubs[0].legs {
        assert_eq!(
            leg.export_name.is_empty(),
            leg.local_disk_path.is_some(),
            "{leg:?}"
        );
    }
    // An attached one: the head checks its own mirror, no name needed.
    let head = (0..4)
        .map(|s| format!("s{s}"))
        .find(|s| own_leg_names(&c, id(&c, s)).is_empty())
        .unwrap();
    c.attach_volume("v", &head).unwrap();
    let run = c.start_scrubs(0, 3600, 1)[0].run;
    assert_eq!(run.method, ScrubMethod::RaidCheck);
    let view = c.agent_view(run.executor);
    assert!(view.scrubs[0].legs.iter().all(|l| l.export_name.is_empty()));
}

/// The secrets `server` may be told now, derived from the records on their
/// own: its own legs; as a head (not storage-only), the active legs of the
/// volumes attached (not releasing) to it and the new legs it rebuilds; the source of a
/// copy it runs; the legs on other servers a comparison it runs reads.
fn allowed(c: &Cluster, server: ServerId) -> BTreeSet<String> {
    let mut names = own_leg_names(c, server);
    let heads = !c.server(server).unwrap().storage_only;
    for v in c.volumes() {
        if !heads
            || !v
                .attachment
                .as_ref()
                .is_some_and(|a| a.head == server && !a.is_releasing())
        {
            continue;
        }
        for (m, md) in v.mirrored_disks.iter().enumerate() {
            for (l, leg) in md.legs.iter().enumerate() {
                let rebuilds = c
                    .active_job(v.id, m as u32, l as u8)
                    .is_some_and(|j| c.job_executor(j.id) == Some(Executor::Head(server)));
                if leg.state == LegState::Active || (leg.state == LegState::Syncing && rebuilds) {
                    names.insert(leg.export_name.clone());
                }
            }
        }
    }
    for j in c.jobs() {
        if c.job_executor(j.id) != Some(Executor::Storage(server)) {
            continue;
        }
        let v = c.volume(j.volume).unwrap();
        let md = &v.mirrored_disks[j.mirrored_disk as usize];
        names.extend(
            md.legs
                .iter()
                .filter(|l| Some(l.chunk) == j.source)
                .map(|l| l.export_name.clone()),
        );
    }
    for (volume, m, run) in c.scrubs() {
        if run.executor != server || run.method != ScrubMethod::CompareLegs {
            continue;
        }
        let v = c.volume(volume).unwrap();
        names.extend(
            v.mirrored_disks[m as usize]
                .legs
                .iter()
                .filter(|l| c.disk(l.chunk.disk).unwrap().server != server)
                .map(|l| l.export_name.clone()),
        );
    }
    names
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        mirrored: u64,
        replicas: u8,
    },
    Attach {
        volume: usize,
        server: usize,
    },
    Release(usize),
    /// A head reports what it has assembled: every attached volume, and
    /// the releasing ones it has not torn down yet (`keep`), or nothing
    /// (an older agent).
    Report {
        server: usize,
        keep: bool,
        unknown: bool,
    },
    ForceDetach(usize),
    /// An attach elsewhere while the manager's clock says the old head is
    /// (or is not) gone.
    TakeOver {
        volume: usize,
        server: usize,
        gone: bool,
    },
    Delete(usize),
    FailDisk(usize),
    Recover,
    Scrub,
    StorageOnly {
        server: usize,
        on: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..4, 2u8..4).prop_map(|(mirrored, replicas)| Op::Create { mirrored, replicas }),
        3 => (0usize..8, 0usize..6).prop_map(|(volume, server)| Op::Attach { volume, server }),
        2 => (0usize..8).prop_map(Op::Release),
        2 => (0usize..6, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(server, keep, unknown)| Op::Report { server, keep, unknown }),
        1 => (0usize..8).prop_map(Op::ForceDetach),
        2 => (0usize..8, 0usize..6, any::<bool>())
            .prop_map(|(volume, server, gone)| Op::TakeOver { volume, server, gone }),
        1 => (0usize..8).prop_map(Op::Delete),
        1 => (0usize..12).prop_map(Op::FailDisk),
        2 => Just(Op::Recover),
        1 => Just(Op::Scrub),
        1 => (0usize..6, any::<bool>()).prop_map(|(server, on)| Op::StorageOnly { server, on }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens (attach, graceful and forced detach, heads'
    /// reports, failures, resyncs, scrubs, role changes), no server is told
    /// a secret it does not need now, a head is told every leg it imports,
    /// no second head attaches while a release is under way, names change
    /// exactly when an attachment ends, and no job or scrub runs on a
    /// releasing volume (`check_invariants`).
    #[test]
    fn a_server_is_told_only_the_secrets_it_needs(ops in proptest::collection::vec(op(), 1..40)) {
        let mut c = PoolSpec::new(6, 2).build();
        let mut secrets = CountingSecrets::default();
        let mut created = 0;
        let mut now = 0;
        for op in ops {
            let names: Vec<String> = c.volumes().map(|v| v.name.clone()).collect();
            let pick = |i: usize| names.get(i % names.len().max(1)).cloned();
            match op {
                Op::Create { mirrored, replicas } => {
                    created += 1;
                    let _ = c.create_volume(
                        NewVolume {
                            name: format!("v{created}"),
                            size_bytes: mirrored * (CHUNK - MIB),
                            replicas: Some(replicas),
                            ..Default::default()
                        },
                        &mut secrets,
                    );
                }
                Op::Attach { volume, server } => {
                    if let Some(v) = pick(volume) {
                        let before = c.volume_by_name(&v).unwrap().attachment.clone();
                        let names = leg_names(&c, &v);
                        let server = format!("s{server}");
                        let r = c.attach_volume(&v, &server);
                        if let Some(a) = &before
                            && a.is_releasing()
                            && c.server(a.head).unwrap().name != server
                        {
                            // No second head while the first releases (a
                            // storage-only target is refused for that first).
                            let target_storage_only = c.server_by_name(&server).is_ok_and(|s| s.storage_only);
                            let want = if target_storage_only { "storage_only" } else { "releasing_elsewhere" };
                            prop_assert_eq!(r.as_ref().map_err(|e| e.code()).err(), Some(want));
                            prop_assert_eq!(&c.volume_by_name(&v).unwrap().attachment, &before);
                        }
                        if r.is_ok()
                            && let Some(a) = &before
                        {
                            // Same head, releasing or not: attached, and
                            // nothing ended, so no name changed.
                            prop_assert_eq!(state(&c, &v), Some(AttachmentState::Attached));
                            prop_assert_eq!(c.volume_by_name(&v).unwrap().attachment.as_ref().unwrap().head, a.head);
                        }
                        prop_assert_eq!(&leg_names(&c, &v), &names, "an attach changed a name");
                    }
                }
                Op::Release(volume) => {
                    if let Some(v) = pick(volume) {
                        let names = leg_names(&c, &v);
                        let before = state(&c, &v);
                        c.release_volume(&v).unwrap();
                        prop_assert_eq!(state(&c, &v), before.map(|_| AttachmentState::Releasing));
                        prop_assert_eq!(&leg_names(&c, &v), &names, "a release is not the end");
                    }
                }
                Op::Report { server, keep, unknown } => {
                    let id = id(&c, &format!("s{server}"));
                    let before: Vec<(String, Option<AttachmentState>, Vec<String>)> = names
                        .iter()
                        .map(|v| (v.clone(), state(&c, v), leg_names(&c, v)))
                        .collect();
                    let heads_of = |c: &Cluster, v: &str| {
                        c.volume_by_name(v).unwrap().attachment.as_ref().map(|a| a.head) == Some(id)
                    };
                    let assembled: Vec<String> = names
                        .iter()
                        .filter(|v| heads_of(&c, v) && (keep || state(&c, v) == Some(AttachmentState::Attached)))
                        .cloned()
                        .collect();
                    let (released, _) = c
                        .head_reports_assembled(id, (!unknown).then_some(assembled.as_slice()), &mut secrets)
                        .unwrap();
                    for (v, was, old) in before {
                        let ended = was.is_some() && state(&c, &v).is_none();
                        prop_assert_eq!(ended, released.contains(&v));
                        // Only releasing attachments of this head end, and
                        // only when it no longer lists them.
                        if ended {
                            prop_assert_eq!(was, Some(AttachmentState::Releasing));
                            prop_assert!(unknown || !keep);
                            let new: BTreeSet<String> = leg_names(&c, &v).into_iter().collect();
                            prop_assert!(new.is_disjoint(&old.iter().cloned().collect()), "a leg kept its name past the end");
                            for s in c.servers() {
                                prop_assert!(
                                    names_in(&c.agent_view(s.id)).is_disjoint(&old.iter().cloned().collect()),
                                    "{:?} is told a name of an ended attachment", s.id
                                );
                            }
                        } else {
                            prop_assert_eq!(leg_names(&c, &v), old, "a name changed with no end");
                        }
                    }
                }
                Op::ForceDetach(volume) => {
                    if let Some(v) = pick(volume) {
                        let old: BTreeSet<String> = leg_names(&c, &v).into_iter().collect();
                        let attached = c.volume_by_name(&v).unwrap().attachment.is_some();
                        let (ended, _) = c.force_detach_volume(&v, &mut secrets).unwrap();
                        prop_assert_eq!(ended, attached);
                        prop_assert_eq!(state(&c, &v), None);
                        let new: BTreeSet<String> = leg_names(&c, &v).into_iter().collect();
                        if attached {
                            prop_assert!(new.is_disjoint(&old), "a leg kept its name through a forced detach");
                            for s in c.servers() {
                                prop_assert!(
                                    names_in(&c.agent_view(s.id)).is_disjoint(&old),
                                    "{:?} is told a name of an ended attachment", s.id
                                );
                            }
                        } else {
                            prop_assert_eq!(new, old);
                        }
                    }
                }
                Op::TakeOver { volume, server, gone } => {
                    if let Some(v) = pick(volume) {
                        let server = format!("s{server}");
                        let new_id = id(&c, &server);
                        let before = c.volume_by_name(&v).unwrap().attachment.clone();
                        let old: BTreeSet<String> = leg_names(&c, &v).into_iter().collect();
                        let r = c.attach_volume_taking_over(&v, &server, &|_| gone, &mut secrets);
                        let after = c.volume_by_name(&v).unwrap().attachment.clone();
                        let new: BTreeSet<String> = leg_names(&c, &v).into_iter().collect();
                        match &r {
                            Ok((Some(from), _)) => {
                                // Only from another head that is gone, and
                                // only through a fence.
                                let a = before.as_ref().expect("there was an attachment");
                                prop_assert_ne!(a.head, new_id);
                                let head = c.server(a.head).unwrap();
                                prop_assert_eq!(&head.name, from);
                                prop_assert!(gone || head.state == ServerState::Failed);
                                prop_assert!(new.is_disjoint(&old), "a takeover without a fence");
                                prop_assert_eq!(after.as_ref().map(|a| (a.head, a.state)), Some((new_id, AttachmentState::Attached)));
                            }
                            Ok((None, _)) => {
                                // A plain attach: nothing fenced.
                                prop_assert_eq!(&new, &old);
                                prop_assert_eq!(after.as_ref().map(|a| a.head), Some(new_id));
                                if let Some(a) = &before {
                                    prop_assert_eq!(a.head, new_id);
                                }
                            }
                            Err(_) => {
                                // A refusal changes nothing.
                                prop_assert_eq!(&after, &before);
                                prop_assert_eq!(&new, &old);
                                if let Some(a) = &before
                                    && a.head != new_id
                                    && gone
                                {
                                    // Refused only for the new head's sake.
                                    let code = r.as_ref().map_err(|e| e.code()).err();
                                    prop_assert!(
                                        matches!(code, Some("storage_only") | Some("conflict")),
                                        "a gone head kept the volume: {:?}", code
                                    );
                                }
                            }
                        }
                    }
                }
                Op::Delete(volume) => {
                    if let Some(v) = pick(volume) {
                        let _ = c.delete_volume(&v);
                    }
                }
                Op::FailDisk(disk) => {
                    let disks: Vec<DiskId> = c.disks().map(|d| d.id).collect();
                    let _ = c.fail_disk(disks[disk % disks.len()]);
                }
                Op::Recover => {
                    c.plan_repairs(&mut secrets);
                    c.start_jobs(1);
                }
                Op::Scrub => {
                    now += 7200;
                    c.start_scrubs(now, 3600, 1);
                }
                Op::StorageOnly { server, on } => {
                    let id = id(&c, &format!("s{server}"));
                    c.set_storage_only(id, on).unwrap();
                }
            }
            for s in c.servers().map(|s| s.id).collect::<Vec<_>>() {
                let view = c.agent_view(s);
                let told = names_in(&view);
                let allowed = allowed(&c, s);
                prop_assert!(
                    told.is_subset(&allowed),
                    "{s:?} is told {:?} it does not need",
                    told.difference(&allowed).collect::<Vec<_>>()
                );
                for leg in view.volumes.iter().flat_map(|v| v.mirrored_disks.iter().flatten()) {
                    if leg.state == LegState::Active || leg.resync_job.is_some() {
                        prop_assert!(!leg.export_name.is_empty(), "a head misses a leg it imports");
                    }
                }
            }
            for v in c.volumes().filter(|v| v.attachment.as_ref().is_some_and(|a| a.is_releasing())) {
                prop_assert!(
                    c.jobs().all(|j| j.volume != v.id || j.state != JobState::Running),
                    "a job runs on releasing volume {}", v.name
                );
            }
            c.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
