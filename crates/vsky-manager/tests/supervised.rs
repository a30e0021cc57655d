//! The manager's background recovery loop is supervised: a panic in one of
//! its passes is logged and counted, and the loop starts again, so failures
//! are still handled afterwards (without supervision the loop would end
//! for good while the REST API kept answering). The panic is injected
//! through `RecoveryConfig::inject_panic` in an in-process manager.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::agents::{KeepAlive, eventually, legs_on, server_failed};
use common::*;
use vsky_manager::RecoveryConfig;
use vsky_testkit::in_process::InProcessManager;

#[tokio::test]
async fn the_recovery_loop_survives_a_panic_and_keeps_handling_failures() {
    let dir = tempfile::tempdir().unwrap();
    let inject = Arc::new(AtomicBool::new(false));
    let recovery = RecoveryConfig {
        server_grace: Duration::from_secs(2),
        inject_panic: Arc::clone(&inject),
        ..RecoveryConfig::default()
    };
    let m = InProcessManager::start_with(dir.path(), 8 * MIB, recovery).await;
    let (admin, agent) = (m.client(ADMIN_TOKEN), m.client(AGENT_TOKEN));
    register_pool(&admin, &pool(4, 1)).await;
    let _alive = KeepAlive::start(agent, vec!["s0".into(), "s1".into(), "s2".into()]);
    // The panic comes before the failure it must not stop the handling of.
    inject.store(true, Ordering::SeqCst);
    eventually("the recovery loop to take the injected panic", async || {
        (!inject.load(Ordering::SeqCst)).then_some(())
    })
    .await;
    let mut req = volume("v", 4 * 7 * MIB);
    req.replicas = Some(2);
    admin.create_volume(&req).await.unwrap();
    let lost = legs_on(&admin, "v", "s3").await;
    assert!(lost > 0, "fixture: s3 holds legs");

    // s3 never speaks: the restarted loop declares it failed and rebuilds.
    server_failed(&admin, "s3", "s3 declared failed after the panic").await;
    eventually("the lost legs' rebuilds to be planned", async || {
        let list = admin.rebuilds(false).await.unwrap();
        (list.running + list.queued == lost).then_some(())
    })
    .await;
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", m.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let restarts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vsky_task_restarts "))
        .expect("vsky_task_restarts is exported");
    assert!(
        restarts.trim().parse::<f64>().unwrap() >= 1.0,
        "the restart is counted: {restarts}"
    );
    // The silent server's age is exported; a speaking one's stays small.
    let age = |server: &str| {
        let prefix = format!("vsky_server_heartbeat_age_seconds{{server=\"{server}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no heartbeat age for {server}"))
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    assert!(age("s3") >= 2.0, "s3 has been silent past its grace");
    assert!(age("s0") < age("s3"), "s0 speaks");
}
