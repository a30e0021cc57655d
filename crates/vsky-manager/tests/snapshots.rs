//! Thin volumes, snapshots, clones and reverts over REST against a real
//! `vsky-manager` process: what each answer says, what is refused and that
//! a refusal changes nothing. The chain rules themselves are the model's
//! (`crates/vsky-model/tests/chains.rs`); the kernel half runs in the VM
//! lab (`cluster-thin`).

mod common;

use common::*;
use vsky_api::ClientError;
use vsky_api::types::*;

fn status(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        other => panic!("not an API error: {other}"),
    }
}

fn thin(name: &str, size_bytes: u64) -> CreateVolume {
    CreateVolume {
        thin: true,
        ..volume(name, size_bytes)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_clones_and_reverts_of_thin_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1)).await;

    // 8 MiB chunks: 7 MiB of data, 2 MiB of it pool metadata. Thin
    // volumes take one mirrored disk whatever their size (`tests/pools.rs`
    // has their growth), up to what a pool can grow to.
    let too_big = admin
        .create_volume(&thin("big", 1 << 50))
        .await
        .unwrap_err();
    assert_eq!(status(&too_big), 400, "{too_big}");
    assert!(
        too_big.to_string().contains("bigger chunk size"),
        "{too_big}"
    );
    let v = admin.create_volume(&thin("v", 4 * MIB)).await.unwrap();
    assert!(v.volume.thin);
    assert_eq!(v.volume.mirrored_disks, 1);
    assert!(v.layout.is_empty(), "a thin volume's legs are its layers'");
    let used = admin.cluster().await.unwrap().used_bytes;
    assert_eq!(used, 2 * CHUNK, "one mirrored disk of two legs");

    // An attached volume's snapshot waits for its head to switch (the
    // test plays the head): the answer comes once the heartbeat says so.
    admin.attach_volume("v", "s0").await.unwrap();
    // The head reports the old top it switched off, by the layer's name.
    let old_top = admin.volume("v").await.unwrap().layers[0].name.clone();
    let agent = m.client(AGENT_TOKEN);
    let head = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let mut beat = common::agents::beat("s0");
            beat.assembled = Some(vec!["v".into()]);
            beat.switched = vec![old_top.clone()];
            let _ = agent.heartbeat(&beat).await;
        }
    });
    let live = admin.snapshot_volume("v", "live").await.unwrap();
    head.abort();
    assert_eq!(live.volume.snapshot_of.as_deref(), Some("v"));
    // The heartbeat's answer logs the event after the state changed.
    common::agents::eventually("the volume_switched event", async || {
        let kinds = common::agents::kinds(&admin).await;
        kinds.contains(&"volume_switched".to_string()).then_some(())
    })
    .await;
    admin.force_detach_volume("v").await.unwrap();
    admin.delete_volume("live").await.unwrap();
    let used = admin.cluster().await.unwrap().used_bytes;

    let snap = admin.snapshot_volume("v", "snap").await.unwrap();
    assert_eq!(snap.volume.snapshot_of.as_deref(), Some("v"));
    assert!(snap.volume.snapshot_time_unix_s.is_some());
    assert!(snap.volume.thin);
    assert_eq!(snap.volume.size_bytes, 4 * MIB);
    // The volume went on over a new, empty top: one more mirrored disk.
    let v = admin.volume("v").await.unwrap();
    assert_eq!(v.volume.mirrored_disks, 3, "its top over two frozen layers");
    assert_eq!(admin.cluster().await.unwrap().used_bytes, used + 2 * CHUNK);
    // A snapshot is read-only.
    let attach = admin.attach_volume("snap", "s0").await.unwrap_err();
    assert_eq!(status(&attach), 400, "{attach}");

    let clone = admin.clone_volume("snap", "vm1").await.unwrap();
    assert!(clone.volume.thin && clone.volume.snapshot_of.is_none());
    assert_eq!(
        clone.volume.mirrored_disks, 3,
        "its top and the two shared bases"
    );
    // Its layers, top first: its own, then the two it shares.
    let states: Vec<LayerState> = clone.layers.iter().map(|l| l.state).collect();
    assert_eq!(
        states,
        [LayerState::Writable, LayerState::Frozen, LayerState::Frozen]
    );
    assert_eq!(clone.layers[0].shared_by, ["vm1"]);
    let mut below = clone.layers[1].shared_by.clone();
    below.sort();
    assert_eq!(below, ["snap", "v", "vm1"]);
    assert!(clone.layers.iter().all(|l| l.layout.len() == 1));
    assert!(clone.layers[1].frozen_at_unix_s.is_some());
    let taken = admin.clone_volume("snap", "vm1").await.unwrap_err();
    assert_eq!(status(&taken), 409, "{taken}");

    let reverted = admin.revert_volume("v", "snap").await.unwrap();
    assert_eq!(reverted.volume.size_bytes, 4 * MIB);
    let unknown = admin.revert_volume("v", "nope").await.unwrap_err();
    assert_eq!(status(&unknown), 404, "{unknown}");

    // Thick volumes have no snapshots.
    admin
        .create_volume(&volume("thick", 4 * MIB))
        .await
        .unwrap();
    let thick = admin.snapshot_volume("thick", "t1").await.unwrap_err();
    assert_eq!(status(&thick), 400, "{thick}");

    // Deleted in any order, every chunk goes.
    for name in ["snap", "v", "vm1", "thick"] {
        admin.delete_volume(name).await.unwrap();
    }
    assert_eq!(admin.cluster().await.unwrap().used_bytes, 0);
}

/// A backup's read of a snapshot, as the datapath plugin asks for it
/// through each host's agent (`Datapath.activate_readonly`): any number of
/// hosts read the snapshot while its volume stays attached elsewhere, each
/// is told every layer read-only, and the snapshot is kept while read.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_are_read_on_several_hosts_through_their_agents() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1)).await;
    admin.create_volume(&thin("v", 4 * MIB)).await.unwrap();
    admin.snapshot_volume("v", "snap").await.unwrap();
    let agent = m.client(AGENT_TOKEN);
    // The volume runs on s0; its snapshot is read on s1 and s2.
    agent.agent_attach("s0", "v", false).await.unwrap();
    for reader in ["s1", "s2"] {
        let d = agent.agent_attach(reader, "snap", true).await.unwrap();
        assert_eq!(d.volume.attached_to, None, "a reader is not a head");
    }
    let d = agent.agent_attach("s1", "snap", true).await.unwrap();
    assert_eq!(d.volume.read_on, ["s1", "s2"], "again: the same reader");
    let desired = agent
        .desired_state("s1", None, std::time::Duration::ZERO)
        .await
        .unwrap();
    let [spec] = &desired.volumes[..] else {
        panic!("s1 is told {:?}", desired.volumes)
    };
    assert_eq!(spec.name, "snap");
    assert!(spec.read_only);
    assert!(spec.chain.iter().all(|l| l.form == LayerForm::Base));
    // The snapshot cannot be written, nor deleted while read.
    let rw = agent.agent_attach("s1", "snap", false).await.unwrap_err();
    assert_eq!(status(&rw), 400, "{rw}");
    let busy = admin.delete_volume("snap").await.unwrap_err();
    assert_eq!(status(&busy), 409, "{busy}");
    assert!(busy.to_string().contains("s1, s2"), "{busy}");
    // A read-only attach of a volume that is not a snapshot is its one
    // attachment: refused while it runs elsewhere.
    let other = agent.agent_attach("s1", "v", true).await.unwrap_err();
    assert_eq!(status(&other), 409, "{other}");
    // Each reader's detach ends its read at once.
    let d = agent.agent_detach("s1", "snap").await.unwrap();
    assert_eq!(d.volume.read_on, ["s2"]);
    let desired = agent
        .desired_state("s1", None, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(desired.volumes.is_empty());
    // The admin reads it too (`vsky volume attach --read-only`), and ends
    // a read by naming the server; unnamed, a read snapshot is refused.
    let d = admin.attach_volume_as("snap", "s0", true).await.unwrap();
    assert_eq!(d.volume.read_on, ["s0", "s2"]);
    let unnamed = admin.detach_volume("snap").await.unwrap_err();
    assert_eq!(status(&unnamed), 409, "{unnamed}");
    let d = admin.detach_from("snap", "s0").await.unwrap();
    assert_eq!(d.volume.read_on, ["s2"]);
    // The admin's forced detach ends every read (a backup host gone).
    admin.force_detach_volume("snap").await.unwrap();
    assert!(
        admin
            .volume("snap")
            .await
            .unwrap()
            .volume
            .read_on
            .is_empty()
    );
    admin.delete_volume("snap").await.unwrap();
    let kinds = common::agents::kinds(&admin).await;
    assert!(kinds.contains(&"snapshot_read".to_string()), "{kinds:?}");
}
