//! cluster-ha-rebuild: two managers on etcd; a storage server dies, its
//! legs are being rebuilt (rate-limited so the rebuild takes a while), and
//! the leading manager is killed -9 in the middle. The standby takes over,
//! the rebuild completes under it, and the data is intact.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use vsky_api::types::RebuildState;

use crate::api::{all_active_without, legs_on, server_in};
use crate::data::{self, device};
use crate::faults::{Failure, fail_server_during_write};
use crate::fixture::{Cluster, Config};
use crate::kernel;
use crate::out::{say, secs, show};
use crate::wait::{self, wait_for};

pub fn run_scenario() -> Result<String> {
    let v = "vh";
    let dev = device(v);
    let mut c = Cluster::up(Config {
        servers: 4,
        ha: true,
        resync_rate: Some("1MiB"),
        ..Config::default()
    })?;
    c.api.create_volume(v, 48)?;
    c.attach_wait(v)?;
    let pat = Arc::new(data::random(48)?);
    let legs = c.api.legs(v)?;
    let victim = server_in(&legs, 0, 1)?;
    let n = legs_on(&legs, &victim).count();
    fail_server_during_write(&mut c, v, &pat, &victim, Failure::Kill)?;
    wait_for(
        &format!("a rebuild of {victim}'s legs to run"),
        wait::secs(120),
        || {
            Ok(c.api
                .rebuilds(false)?
                .iter()
                .any(|r| r.state == RebuildState::Running))
        },
    )?;
    let roles: Vec<(u16, String)> = [8080, 8081]
        .into_iter()
        .map(|port| (port, c.role_of(port).unwrap_or_else(|e| format!("{e:#}"))))
        .collect();
    let Some(leader) = roles.iter().find(|(_, r)| r == "leader").map(|(p, _)| *p) else {
        bail!("no manager reports itself leader: {roles:?}");
    };
    let standby = if leader == 8080 { 8081 } else { 8080 };
    c.kill_manager(leader)?;
    let start = Instant::now();
    say(format!(
        "a rebuild is running; killed -9 the leading manager (:{leader})"
    ));
    wait_for(
        &format!("the standby (:{standby}) to lead"),
        wait::secs(30),
        || Ok(c.role_of(standby)? == "leader"),
    )?;
    say(format!(
        "manager :{standby} leads {}s after the kill",
        secs(start)
    ));
    wait_for(
        &format!("the {n} legs of {victim} to be rebuilt under the new leader"),
        wait::secs(180),
        || Ok(all_active_without(&c.api.legs(v)?, &victim)),
    )?;
    let took = secs(start);
    wait_for(
        "the mirrors to be in sync",
        wait::secs(60),
        kernel::mirrors_in_sync,
    )?;
    show(&c.vsky_text(&["rebuild", "list", "--all"])?);
    let done = c
        .api
        .rebuilds(true)?
        .iter()
        .filter(|r| r.state == RebuildState::Done)
        .count();
    ensure!(
        done == n,
        "{done} rebuilds done for {n} lost legs (a rebuild was lost or run twice)"
    );
    data::expect_same(&dev, 0, &pat, "data read back after the failover")?;
    c.detach_wait(v)?;
    c.finish();
    Ok(format!(
        "two managers on etcd; {victim} killed under write load (no I/O error); leader :{leader} killed -9 during the rebuild; :{standby} took over and the {n} rebuilds completed ({took}s after the kill), exactly {n} done, mirrors in sync, all 48 MiB match"
    ))
}
