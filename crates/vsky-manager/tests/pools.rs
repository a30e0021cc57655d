//! Thin pools that grow, over REST against a real `vsky-manager` process:
//! the head's pool reports grow a filling pool (event, desired state,
//! `volume show`, metrics), the cluster summary shows over-commit, and a
//! pool that cannot grow says so once. The growth rules are the model's
//! (`crates/vsky-model/tests/pools.rs`); the kernel half runs in the VM
//! lab (`cluster-thin-grow`).

mod common;

use common::*;
use vsky_api::types::*;

const BLOCK: u64 = 64 << 10;

fn thin(name: &str, size_bytes: u64) -> CreateVolume {
    CreateVolume {
        thin: true,
        ..volume(name, size_bytes)
    }
}

/// s0's heartbeat with `v` assembled and one pool report about `layer`.
fn report(layer: &str, used_blocks: u64, total_blocks: u64) -> Heartbeat {
    let mut beat = common::agents::beat("s0");
    beat.assembled = Some(vec!["v".into(), layer.into()]);
    beat.pools = vec![PoolReport {
        layer: layer.into(),
        used_data_blocks: used_blocks,
        total_data_blocks: total_blocks,
        used_meta_blocks: 20,
        total_meta_blocks: 512,
        out_of_data_space: used_blocks == total_blocks,
    }];
    beat
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filling_pool_grows_and_an_exhausted_one_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    // 3 servers of one disk: 8 chunks each.
    register_pool(&admin, &pool(3, 1)).await;
    let v = admin.create_volume(&thin("v", 64 * MIB)).await.unwrap();
    assert_eq!(v.volume.mirrored_disks, 1);
    let summary = admin.cluster().await.unwrap();
    assert_eq!(summary.provisioned_bytes, 64 * MIB);
    assert_eq!(summary.thin_allocated_bytes, 7 * MIB);
    assert_eq!(summary.volumes, 1, "layers are not volumes");
    admin.attach_volume("v", "s0").await.unwrap();
    let layer = admin.volume("v").await.unwrap().layers[0].name.clone();
    let agent = m.client(AGENT_TOKEN);

    // 7 MiB of data less 2 MiB of metadata: 80 blocks. Half empty: quiet.
    agent.heartbeat(&report(&layer, 20, 80)).await.unwrap();
    let shown = admin.volume("v").await.unwrap();
    assert_eq!(shown.volume.mirrored_disks, 1);
    let pool = shown.layers[0].pool.clone().expect("its head's report");
    assert_eq!(
        (pool.mapped_bytes, pool.data_bytes, pool.full),
        (20 * BLOCK, 80 * BLOCK, false)
    );
    // Nearly full: a mirrored disk more, in the head's desired state.
    agent.heartbeat(&report(&layer, 75, 80)).await.unwrap();
    let shown = admin.volume("v").await.unwrap();
    assert_eq!(shown.layers[0].layout.len(), 2);
    let desired = agent
        .desired_state("s0", None, std::time::Duration::ZERO)
        .await
        .unwrap();
    let chain = &desired
        .volumes
        .iter()
        .find(|s| s.name == "v")
        .unwrap()
        .chain;
    assert_eq!(chain[0].mirrored_disks.len(), 2);
    assert_eq!(chain[0].added_meta_bytes, BLOCK);
    common::agents::eventually("the pool_grown event", async || {
        let kinds = common::agents::kinds(&admin).await;
        kinds.contains(&"pool_grown".to_string()).then_some(())
    })
    .await;
    let metrics = metrics(&m).await;
    assert!(
        metrics.contains("vsky_thin_pool_mapped_bytes{volume=\"v\"}"),
        "{metrics}"
    );
    // The same report again (the head has not applied the growth): no more.
    agent.heartbeat(&report(&layer, 75, 80)).await.unwrap();
    assert_eq!(admin.volume("v").await.unwrap().layers[0].layout.len(), 2);

    // The cluster full: the next growth cannot happen, and says so once.
    let free = admin.cluster().await.unwrap().free_bytes;
    let filler = volume("filler", free / 2 / CHUNK * 7 * MIB);
    admin.create_volume(&filler).await.unwrap();
    assert!(admin.cluster().await.unwrap().free_bytes < 2 * CHUNK);
    // 80 + 111 blocks on two disks (the second has 64 KiB of metadata).
    for _ in 0..3 {
        agent.heartbeat(&report(&layer, 191, 191)).await.unwrap();
    }
    common::agents::eventually("the pool_exhausted event", async || {
        let kinds = common::agents::kinds(&admin).await;
        kinds.contains(&"pool_exhausted".to_string()).then_some(())
    })
    .await;
    let told = common::agents::kinds(&admin)
        .await
        .iter()
        .filter(|k| *k == "pool_exhausted")
        .count();
    assert_eq!(told, 1, "said once");
    let shown = admin.volume("v").await.unwrap();
    assert_eq!(shown.layers[0].layout.len(), 2, "nothing changed");
    assert!(shown.layers[0].pool.as_ref().unwrap().full);
}

/// The admin hears of the pool's free space running low before any thin
/// pool is full: `capacity_low` under 15 % free, `capacity_critical` under
/// 5 %.
#[tokio::test(flavor = "multi_thread")]
async fn low_capacity_is_told_before_it_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    // 48 chunks of 8 MiB (7 MiB of data each).
    register_pool(&admin, &pool(3, 1)).await;
    let seen = async |kind: &str| {
        let kind = kind.to_string();
        common::agents::eventually(&format!("a {kind} event"), async || {
            common::agents::kinds(&admin)
                .await
                .contains(&kind)
                .then_some(())
        })
        .await
    };
    // 20 mirrored disks: 40 of 48 chunks, 16.7 % free.
    admin
        .create_volume(&volume("a", 20 * 7 * MIB))
        .await
        .unwrap();
    // 21: 12.5 % free.
    admin.create_volume(&volume("b", 7 * MIB)).await.unwrap();
    seen("capacity_low").await;
    let kinds = common::agents::kinds(&admin).await;
    assert!(
        !kinds.contains(&"capacity_critical".to_string()),
        "{kinds:?}"
    );
    // 23: 4.2 % free.
    admin
        .create_volume(&volume("c", 2 * 7 * MIB))
        .await
        .unwrap();
    seen("capacity_critical").await;
}
