//! cluster-nbd-backend-file: the head keeps which NBD device imports which
//! leg in its own file, as it must on kernels before 5.14 (XCP-ng's 4.19
//! drops the backend identifier and has no /sys/block/nbdN/backend;
//! docs/kernel-floor.md, A6). The agent is forced onto that path
//! (`--nbd-backend-file-always`) on the lab's 6.1 kernel, which still keeps
//! the identifiers: so the kernel's own view checks the file at every step.
//! Attach, SIGTERM/SIGKILL restarts under writes (adoption through the
//! file: nothing recreated or duplicated), a degraded restart, detach (the
//! imports disconnected through the file, which ends empty).

use std::sync::Arc;

use anyhow::{Context, Result, ensure};

use crate::data;
use crate::fixture::{Cluster, Config, NBD_BACKEND_FILE};
use crate::kernel;
use crate::out::say;
use crate::scenario::agent_restart::{Mirrors, VOLUME, restart_head, restart_head_degraded};

/// The head's file as (`nbdN`, backend), sorted like `kernel::nbd_backends`.
fn file_entries() -> Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(NBD_BACKEND_FILE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {NBD_BACKEND_FILE}")),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let t: Vec<&str> = line.split_whitespace().collect();
        let [index, _size, backend] = t.as_slice() else {
            anyhow::bail!("{NBD_BACKEND_FILE}: malformed line {line:?}");
        };
        out.push((format!("nbd{index}"), backend.to_string()));
    }
    out.sort();
    Ok(out)
}

/// The head's file lists exactly the NBD devices the kernel has connected,
/// with the backends the kernel holds for them.
pub(crate) fn file_matches_kernel(when: &str) -> Result<usize> {
    let file = file_entries()?;
    let kernel = kernel::nbd_backends()?;
    ensure!(
        file == kernel,
        "{when}: the head's NBD backend file {file:?} differs from the kernel's backends {kernel:?}"
    );
    Ok(file.len())
}

pub fn run_scenario() -> Result<String> {
    let v = VOLUME;
    let mut c = Cluster::up(Config {
        nbd_backend_file: true,
        ..Config::default()
    })?;
    c.api.create_volume(v, 40)?;
    c.attach_wait(v)?;
    let attached = file_matches_kernel("after attach")?;
    ensure!(attached > 0, "no NBD import recorded after attach");
    say(format!(
        "attached: the head's file lists the {attached} NBD imports the kernel has"
    ));
    for signal in ["TERM", "KILL"] {
        restart_head(
            &mut c,
            signal,
            Mirrors::Healthy,
            &Arc::new(data::random(40)?),
        )?;
        file_matches_kernel(&format!("after the SIG{signal} restart"))?;
    }
    let (victim, after) = restart_head_degraded(&mut c, v)?;
    let degraded = file_matches_kernel("after the degraded restart")?;
    c.detach_wait(v)?;
    let left = file_entries()?;
    ensure!(
        left.is_empty(),
        "after detach the head's NBD backend file still lists {left:?}"
    );
    c.finish();
    Ok(format!(
        "head keeping its NBD imports in its own file (forced, as on kernels before 5.14): attach recorded {attached} imports matching the kernel's; SIGTERM, SIGKILL and degraded SIGKILL ({victim} dead) restarts during O_DIRECT writes adopted them through the file: same dm ({} dm) and NBD ({degraded} connected, file = kernel), writer without I/O error, data matches; detach disconnected every import and emptied the file",
        after.dm
    ))
}
