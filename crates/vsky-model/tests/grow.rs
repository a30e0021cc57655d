//! Growing volumes (`Cluster::resize_volume`), and online while attached:
//! a grow needs a head that has been heard from, is all or nothing, and is
//! applied once the head reports serving the new size
//! (`Attachment::served_bytes`, `HeartbeatEvent::GrowApplied`).

mod common;

use std::time::Duration;

use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec, server_name};

const DATA: u64 = CHUNK - MIB;
/// The manager's `--head-grace` in these tests: longer than the limit.
const GRACE: Duration = Duration::from_secs(600);

fn live(_: ServerId) -> Duration {
    Duration::ZERO
}

fn silent(_: ServerId) -> Duration {
    Duration::from_secs(limits::GROW_HEAD_SILENCE_SECONDS_MAX)
}

fn serves(c: &mut Cluster, server: &str, volume: &str, size: u64) -> HeartbeatOutcome {
    let report = AgentReport {
        assembled: Some(vec![volume.to_string()]),
        served: vec![(volume.to_string(), size)],
        ..AgentReport::default()
    };
    let id = c.server_by_name(server).unwrap().id;
    c.apply_heartbeat(id, &report, 1000, &mut CountingSecrets::default())
        .unwrap()
        .0
}

fn served(c: &Cluster, volume: &str) -> Option<u64> {
    c.volume_by_name(volume)
        .unwrap()
        .attachment
        .as_ref()
        .unwrap()
        .served_bytes
}

fn grow_events(out: &HeartbeatOutcome) -> Vec<&HeartbeatEvent> {
    out.events
        .iter()
        .filter(|e| matches!(e, HeartbeatEvent::GrowApplied { .. }))
        .collect()
}

/// An attached volume grows while its head is heard from; the head's
/// reports of the size it serves are recorded, and the grow counts as
/// applied once, when the head first serves the new size.
#[test]
fn an_attached_volume_grows_and_the_head_reports_it_applied() {
    let mut c = PoolSpec::new(4, 2).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let head = server_name(0);
    c.attach_volume("v", &head).unwrap();
    assert!(grow_events(&serves(&mut c, &head, "v", DATA)).is_empty());
    assert_eq!(served(&c, "v"), Some(DATA));

    c.resize_volume("v", 3 * DATA, &live, GRACE, &mut secrets)
        .unwrap();
    c.check_invariants().unwrap();
    let v = c.volume_by_name("v").unwrap();
    assert_eq!((v.size_bytes, v.mirrored_disks.len()), (3 * DATA, 3));
    // Not applied until the head says so.
    assert_eq!(served(&c, "v"), Some(DATA));
    assert!(grow_events(&serves(&mut c, &head, "v", DATA)).is_empty());
    let out = serves(&mut c, &head, "v", 3 * DATA);
    assert_eq!(
        grow_events(&out),
        [&HeartbeatEvent::GrowApplied {
            volume: "v".into(),
            size_bytes: 3 * DATA
        }]
    );
    // The same report again changes nothing and tells nothing.
    let generation = c.generation();
    let id = c.server_by_name(&head).unwrap().id;
    let again = AgentReport {
        assembled: Some(vec!["v".into()]),
        served: vec![("v".into(), 3 * DATA)],
        ..AgentReport::default()
    };
    assert!(c.heartbeat_is_quiet(id, &again));
    assert!(grow_events(&serves(&mut c, &head, "v", 3 * DATA)).is_empty());
    assert_eq!(c.generation(), generation);
    c.check_invariants().unwrap();
}

/// A grow of a volume whose head has been silent too long is refused
/// before anything is allocated; the error says what to do.
#[test]
fn a_silent_head_refuses_the_grow_and_changes_nothing() {
    let mut c = PoolSpec::new(4, 2).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let head = server_name(1);
    c.attach_volume("v", &head).unwrap();
    let records = format!("{:?}", c.records());
    let generation = c.generation();
    let e = c
        .resize_volume("v", 3 * DATA, &silent, GRACE, &mut secrets)
        .unwrap_err();
    assert!(matches!(e, ModelError::Conflict(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains(&head) && text.contains("silent"), "{text}");
    assert!(text.contains("vsky volume detach --force v"), "{text}");
    assert_eq!(format!("{:?}", c.records()), records);
    assert_eq!(c.generation(), generation);
    // Just under the limit it is allowed; detached, the head's silence
    // does not matter.
    let almost = |_: ServerId| Duration::from_secs(limits::GROW_HEAD_SILENCE_SECONDS_MAX - 1);
    c.resize_volume("v", 2 * DATA, &almost, GRACE, &mut secrets)
        .unwrap();
    common::volume(&mut c, "d", 1, 2, &mut secrets);
    c.resize_volume("d", 2 * DATA, &silent, GRACE, &mut secrets)
        .unwrap();
    c.check_invariants().unwrap();
}

/// No space: the grow of an attached volume fails whole, the volume keeps
/// its size, its layout and what its head serves.
#[test]
fn a_grow_without_space_changes_nothing() {
    let mut c = PoolSpec::new(2, 1).chunks(4).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 2, 2, &mut secrets);
    let head = server_name(0);
    c.attach_volume("v", &head).unwrap();
    serves(&mut c, &head, "v", 2 * DATA);
    let records = format!("{:?}", c.records());
    let e = c
        .resize_volume("v", 8 * DATA, &live, GRACE, &mut secrets)
        .unwrap_err();
    assert!(matches!(e, ModelError::NotEnoughChunks { .. }), "{e}");
    assert_eq!(format!("{:?}", c.records()), records);
    assert_eq!(served(&c, "v"), Some(2 * DATA));
}

/// Only the head's report counts: another server's, or a report about a
/// volume being released, records nothing.
#[test]
fn only_the_attached_head_reports_served_sizes() {
    let mut c = PoolSpec::new(4, 2).build();
    let mut secrets = CountingSecrets::default();
    common::volume(&mut c, "v", 1, 2, &mut secrets);
    let head = server_name(0);
    c.attach_volume("v", &head).unwrap();
    let other = server_name(2);
    let id = c.server_by_name(&other).unwrap().id;
    let report = AgentReport {
        assembled: Some(vec!["v".into()]),
        served: vec![("v".into(), DATA), ("nosuch".into(), DATA)],
        ..AgentReport::default()
    };
    assert!(c.heartbeat_is_quiet(id, &report));
    serves(&mut c, &other, "v", DATA);
    assert_eq!(served(&c, "v"), None);
    c.release_volume("v").unwrap();
    serves(&mut c, &head, "v", DATA);
    let a = c.volume_by_name("v").unwrap().attachment.clone().unwrap();
    assert!(a.is_releasing());
    assert_eq!(a.served_bytes, None);
}
