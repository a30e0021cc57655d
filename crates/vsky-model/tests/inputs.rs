//! Arbitrary input at the model's front door: every validator and every
//! mutation that takes user text (names, labels, paths, addresses,
//! descriptions, keys, group uuids) answers `Ok` or a `ModelError`, never
//! panics, and a refused mutation leaves the cluster exactly as it was.
//!
//! The REST handlers and the agent endpoints only translate into these
//! calls, so this is where a bad name is caught for all of them.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use vsky_model::*;
use vsky_testkit::pool::{CHUNK, MIB, PoolSpec};

/// Any Unicode text, from empty to well past every length limit, with
/// multi-byte characters anywhere (a slice at a fixed byte offset of such a
/// string panics).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter),
        // Valid-looking names with a multi-byte character somewhere in
        // the first bytes, long enough to hit the "too long" branch.
        (0usize..70, 60usize..200, any::<char>()).prop_map(|(at, len, c)| {
            let mut s: String = "a".repeat(len);
            s.insert(at.min(len), c);
            s
        }),
    ]
}

/// The state a refused mutation must leave alone: every record and the
/// generation agents watch.
fn snapshot(c: &Cluster) -> (String, u64) {
    (format!("{:?}", c.records()), c.generation())
}

/// Runs `mutation` on `c`: a refusal must change nothing; an acceptance
/// must keep every invariant.
fn refused_changes_nothing<T>(
    c: &mut Cluster,
    mutation: impl FnOnce(&mut Cluster) -> Result<T, ModelError>,
) -> Result<(), TestCaseError> {
    let before = snapshot(c);
    match mutation(c) {
        Ok(_) => prop_assert_eq!(c.check_invariants(), Ok(())),
        Err(_) => prop_assert_eq!(snapshot(c), before),
    }
    Ok(())
}

/// A pool with something in it, so refusals have state to disturb.
fn populated() -> (Cluster, CountingSecrets) {
    let mut c = PoolSpec::new(3, 2).build();
    let mut secrets = CountingSecrets::default();
    volume(&mut c, "v0", 2, 2, &mut secrets);
    c.create_group(Group {
        name: "g0".into(),
        uuid: None,
        display_name: "g0".into(),
        description: String::new(),
    })
    .unwrap();
    (c, secrets)
}

/// Regression: a name over the length limit with a multi-byte character
/// across byte 16 used to panic the validator (it sliced `&name[..16]`),
/// which the manager answered with a 503 and a full reload from its store.
#[test]
fn an_overlong_name_with_a_multibyte_character_is_refused_not_panicked() {
    let name = format!("{}é{}", "a".repeat(15), "b".repeat(60));
    assert!(!name.is_char_boundary(16));
    let err = ids::validate_name("volume name", &name).unwrap_err();
    assert!(err.to_string().contains("longer than 64"), "{err}");
    let (mut c, mut secrets) = populated();
    let before = snapshot(&c);
    let new = NewVolume {
        name,
        size_bytes: CHUNK,
        ..Default::default()
    };
    assert!(c.create_volume(new, &mut secrets).is_err());
    assert_eq!(snapshot(&c), before);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validators_never_panic(s in text(), t in text()) {
        let _ = ids::validate_name("name", &s);
        let _ = ids::validate_label(&s, &t);
        let _ = ids::validate_device_path(&s);
        let _ = ids::validate_address(&s);
        let _ = ids::validate_description(&s);
        // The preview quoted in errors is a prefix of the input.
        prop_assert!(s.starts_with(ids::preview(&s)));
    }

    #[test]
    fn server_registration_refuses_bad_text_cleanly(
        name in text(), address in text(), key in text(), value in text(),
    ) {
        let (mut c, _) = populated();
        let labels = BTreeMap::from([(key, value)]);
        let new = NewServer { name: name.clone(), address: address.clone(), labels: labels.clone() };
        refused_changes_nothing(&mut c, |c| c.register_server(new))?;
        let new = NewServer { name, address, labels };
        refused_changes_nothing(&mut c, |c| c.add_server(new))?;
    }

    #[test]
    fn disk_registration_refuses_bad_text_cleanly(
        server in prop_oneof![Just("s0".to_string()), text()],
        path in text(),
        class in proptest::option::of(text()),
    ) {
        let (mut c, _) = populated();
        let new = NewDisk { server: server.clone(), path: path.clone(), size_bytes: MIB + 4 * CHUNK, class: class.clone() };
        refused_changes_nothing(&mut c, |c| c.register_disk(new))?;
        let new = NewDisk { server, path, size_bytes: MIB + 4 * CHUNK, class };
        refused_changes_nothing(&mut c, |c| c.add_disk(new))?;
    }

    #[test]
    fn volume_creation_refuses_bad_text_cleanly(
        name in text(),
        class in proptest::option::of(text()),
        near in proptest::option::of(text()),
        group in proptest::option::of(prop_oneof![Just("g0".to_string()), text()]),
        display in proptest::option::of(text()),
        description in text(),
        key in text(),
        value in text(),
    ) {
        let (mut c, mut secrets) = populated();
        let new = NewVolume {
            name,
            size_bytes: CHUNK,
            class,
            near_server: near,
            meta: VolumeMeta {
                group,
                display_name: display,
                description,
                keys: BTreeMap::from([(key, value)]),
                sharable: false,
            },
            ..Default::default()
        };
        refused_changes_nothing(&mut c, |c| c.create_volume(new, &mut secrets))?;
    }

    #[test]
    fn metadata_updates_refuse_bad_text_cleanly(
        volume in prop_oneof![Just("v0".to_string()), text()],
        display in proptest::option::of(text()),
        description in proptest::option::of(text()),
        key in text(),
        value in text(),
        unset in text(),
    ) {
        let (mut c, _) = populated();
        let update = VolumeMetaUpdate {
            display_name: display.clone(),
            description: description.clone(),
            set_keys: BTreeMap::from([(key, value)]),
            unset_keys: vec![unset],
        };
        refused_changes_nothing(&mut c, |c| c.update_volume_meta(&volume, update))?;
        let update = GroupUpdate { display_name: display, description };
        refused_changes_nothing(&mut c, |c| c.update_group("g0", update))?;
    }

    #[test]
    fn group_creation_refuses_bad_text_cleanly(
        name in text(),
        uuid in proptest::option::of(text()),
        display in text(),
        description in text(),
    ) {
        let (mut c, _) = populated();
        let group = Group { name, uuid, display_name: display, description };
        refused_changes_nothing(&mut c, |c| c.create_group(group))?;
    }

    #[test]
    fn lookups_by_arbitrary_name_never_panic(name in text()) {
        let (mut c, _) = populated();
        let _ = c.server_by_name(&name);
        let _ = c.volume_by_name(&name);
        let _ = c.group(&name);
        refused_changes_nothing(&mut c, |c| c.delete_volume(&name))?;
        refused_changes_nothing(&mut c, |c| c.release_volume(&name))?;
        refused_changes_nothing(&mut c, |c| c.force_detach_volume(&name, &mut CountingSecrets::default()).map(|(_, ch)| ch))?;
        refused_changes_nothing(&mut c, |c| c.attach_volume(&name, &name))?;
        refused_changes_nothing(&mut c, |c| c.fail_server(&name))?;
        refused_changes_nothing(&mut c, |c| c.delete_group(&name))?;
    }
}
