//! Groups (XAPI SRs) and volume metadata through the public `Cluster` API.

use vsky_model::*;
use vsky_testkit::pool::{MIB, PoolSpec};

const U1: &str = "0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e31";
const U2: &str = "0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e32";
const U3: &str = "0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e33";

fn group(name: &str, uuid: &str) -> Group {
    Group {
        name: name.into(),
        uuid: Some(uuid.into()),
        display_name: format!("SR {name}"),
        description: String::new(),
    }
}

fn volume_in(name: &str, group: Option<&str>) -> NewVolume {
    NewVolume {
        name: name.into(),
        size_bytes: MIB,
        meta: VolumeMeta {
            group: group.map(String::from),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A retried create with the same uuid succeeds without change; another
/// uuid under the same name is a conflict.
#[test]
fn group_create_is_idempotent_per_uuid() {
    let mut c = PoolSpec::new(2, 1).build();
    assert!(!c.create_group(group("sr1", U1)).unwrap().is_empty());
    assert!(c.create_group(group("sr1", U1)).unwrap().is_empty());
    assert_eq!(
        c.create_group(group("sr1", U2)).unwrap_err().code(),
        "already_exists"
    );
    assert_eq!(
        c.create_group(group("bad name", U3)).unwrap_err().code(),
        "invalid_argument"
    );
}

/// A group's uuid is a UUID (XAPI's SR uuid), refused with a clear error
/// otherwise, and nothing changes.
#[test]
fn group_uuid_must_be_a_uuid() {
    let mut c = PoolSpec::new(2, 1).build();
    for bad in [
        "",
        "u1",
        "0d6c5e1e-sr",
        "0d6c5e1e4b0f4a399a3e2f6f0c1d2e31",
        "0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e3g",
        "{0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e31}",
        "0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2e31 ",
        "0d6c5e1e-4b0f-4a39-9a3e-2f6f0c1d2é",
    ] {
        let e = c.create_group(group("sr1", bad)).unwrap_err();
        assert_eq!(e.code(), "invalid_argument", "{bad:?}");
        assert!(e.to_string().contains("group uuid"), "{bad:?}: {e}");
        assert!(c.group("sr1").is_err(), "{bad:?} created a group");
    }
    c.create_group(group("sr1", &U1.to_ascii_uppercase()))
        .unwrap();
    let mut without = group("sr2", U2);
    without.uuid = None;
    c.create_group(without).unwrap();
}

/// Volumes join existing groups only; a group with volumes cannot go.
#[test]
fn volumes_belong_to_existing_groups() {
    let mut c = PoolSpec::new(2, 1).build();
    let mut secrets = CountingSecrets::default();
    assert_eq!(
        c.create_volume(volume_in("v", Some("nope")), &mut secrets)
            .unwrap_err()
            .code(),
        "not_found"
    );
    c.create_group(group("sr1", U1)).unwrap();
    c.create_volume(volume_in("v", Some("sr1")), &mut secrets)
        .unwrap();
    c.create_volume(volume_in("w", None), &mut secrets).unwrap();
    assert_eq!(
        c.volumes_in("sr1")
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["v"]
    );
    assert_eq!(c.delete_group("sr1").unwrap_err().code(), "conflict");
    c.delete_volume("v").unwrap();
    c.delete_group("sr1").unwrap();
    assert_eq!(c.group("sr1").unwrap_err().code(), "not_found");
}

/// Keys are set and unset verbatim; bad metadata changes nothing.
#[test]
fn volume_metadata_updates() {
    let mut c = PoolSpec::new(2, 1).build();
    c.create_volume(volume_in("v", None), &mut CountingSecrets::default())
        .unwrap();
    let mut update = VolumeMetaUpdate {
        display_name: Some("Disk 0 of my VM".into()),
        ..Default::default()
    };
    update.set_keys.insert("vdi-type".into(), "user".into());
    update.set_keys.insert("content_id".into(), "abc".into());
    c.update_volume_meta("v", update).unwrap();
    let meta = &c.volume_by_name("v").unwrap().meta;
    assert_eq!(meta.display_name.as_deref(), Some("Disk 0 of my VM"));
    assert_eq!(meta.keys.len(), 2);
    let unset = VolumeMetaUpdate {
        unset_keys: vec!["content_id".into(), "absent".into()],
        ..Default::default()
    };
    c.update_volume_meta("v", unset).unwrap();
    assert_eq!(
        c.volume_by_name("v")
            .unwrap()
            .meta
            .keys
            .keys()
            .collect::<Vec<_>>(),
        ["vdi-type"]
    );
    let before = c.volume_by_name("v").unwrap().clone();
    let mut bad = VolumeMetaUpdate {
        description: Some("fine".into()),
        ..Default::default()
    };
    bad.set_keys.insert(String::new(), "empty key".into());
    assert_eq!(
        c.update_volume_meta("v", bad).unwrap_err().code(),
        "invalid_argument"
    );
    assert_eq!(c.volume_by_name("v").unwrap(), &before);
    assert!(
        c.update_volume_meta("v", VolumeMetaUpdate::default())
            .unwrap()
            .is_empty()
    );
}
