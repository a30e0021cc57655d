//! cluster-xapi: the SMAPIv3 plugins as xapi drives them, on the real
//! kernel. scripts/install-plugins put them under
//! /usr/libexec/xapi-storage-script at initramfs build time; xapi-tests
//! (crates/xapi-tests) plays xapi: SR.create + SR.attach, Volume.create,
//! then VM start (Datapath.open, attach, activate twice) and checks the
//! answered /dev/mapper device is a block device of the volume's size;
//! writes and reads back 1 MiB patterns at three offsets; VM shutdown
//! (deactivate twice, detach, close) must leave no device and the volume
//! unattached; with the volume attached to another head (other-head, added
//! by the admin with no agent running: the storage servers run
//! --storage-only and may hold no attachment), activate here must fail with
//! Activated_on_another_host and deactivate/detach here must leave that
//! attachment alone; a second start reads the patterns back. This scenario
//! checks around it what xapi-tests cannot see: the kernel state.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::fixture::{Cluster, Config, HEAD_API};
use crate::kernel;
use crate::out::{say, secs};

const PLUGINS: &str = "/usr/libexec/xapi-storage-script";

pub fn run_scenario() -> Result<String> {
    let c = Cluster::up(Config {
        head_api: true,
        disk_mib: 128,
        // other-head has no agent: it must keep the volume it is given
        // however slowly the VM runs (past the grace, an activate would
        // rightly take the volume over from it).
        head_grace: "1h",
        ..Config::default()
    })?;
    // The head's local API answers before the plugin is pointed at it.
    c.head_api_up()?;
    // As packaging/etc/vsky/datapath.json, with the lab's token file.
    let config = c.work.join("datapath.json");
    std::fs::write(
        &config,
        format!(
            "{{\"agent_url\": \"http://{HEAD_API}\", \"token_file\": \"{}\"}}\n",
            c.work.join("agent-api.token").display()
        ),
    )?;
    let activate = format!("{PLUGINS}/datapath/vsky/Datapath.activate");
    ensure!(
        std::fs::metadata(&activate).is_ok_and(|m| m.permissions().mode() & 0o111 != 0),
        "the datapath plugin is not installed under {PLUGINS} (scripts/install-plugins)"
    );
    c.api.add_server("other-head", "127.0.0.1:9")?;
    let (dm0, nbd0) = (kernel::dm_count()?, kernel::nbd_connected()?);
    let start = Instant::now();
    // What the kernel holds while xapi-tests runs: proves the device was
    // the head's real dm-raid assembly, not just a path in an answer.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_seen = Arc::clone(&stop);
    let sampler = std::thread::spawn(move || {
        let (mut mirrors, mut tops) = (0, 0);
        while !stop_seen.load(Ordering::SeqCst) {
            mirrors = mirrors.max(kernel::mirrors().map_or(0, |m| m.len()));
            tops = tops.max(kernel::top_devices().map_or(0, |t| t.len()));
            std::thread::sleep(Duration::from_millis(300));
        }
        (mirrors, tops)
    });
    // 32 MiB at 2 replicas over two 128 MiB disks (8 MiB chunks, less the
    // dm-raid metadata each: 5 mirrors). Bounded like every wait here: each
    // plugin call may take up to 150 s, a hung datapath must not use up the
    // lab's own timeout.
    let out = Command::new("timeout")
        .arg("420")
        .arg(c.bin("xapi-tests"))
        .args(["datapath", "--plugins", PLUGINS, "--state-dir"])
        .arg(c.work.join("sr"))
        .args(["--manager", "http://127.0.0.1:8080", "--token-file"])
        .arg(c.work.join("admin.token"))
        .arg("--datapath-config")
        .arg(&config)
        .args([
            "--size",
            &(32u64 << 20).to_string(),
            "--other-server",
            "other-head",
        ])
        .output()
        .context("run xapi-tests")?;
    stop.store(true, Ordering::SeqCst);
    let (mirrors, tops) = sampler.join().unwrap_or((0, 0));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        say(format!("  xapi-tests: {line}"));
    }
    if !out.status.success() {
        let not_ok: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(": ok "))
            .take(3)
            .collect();
        bail!(
            "xapi-tests datapath failed ({}; 124 = killed after 420 s): {}",
            out.status,
            not_ok.join(" ")
        );
    }
    let ok = text.lines().filter(|l| l.contains(": ok ")).count();
    ensure!(
        ok == 4,
        "xapi-tests datapath exited 0 but reported {ok} of 4 steps ok"
    );
    let took = secs(start);
    ensure!(
        mirrors > 0 && tops > 0,
        "no dm-raid mirror or /dev/mapper/vsky- device was ever seen while xapi-tests ran"
    );
    // Every start was undone by its shutdown: nothing assembled, nothing
    // connected, no vsky device node, no volume left attached.
    let (dm, nbd) = (kernel::dm_count()?, kernel::nbd_connected()?);
    ensure!(
        dm == dm0 && nbd == nbd0,
        "kernel devices left after xapi-tests: {dm} dm (was {dm0}), {nbd} NBD connected (was {nbd0})"
    );
    let nodes = kernel::mapper()?;
    ensure!(nodes.is_empty(), "device nodes left: {}", nodes.join(" "));
    let volumes = c.api.volumes()?;
    ensure!(
        volumes.is_empty(),
        "xapi-tests left volumes behind: {:?}",
        volumes.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    // The head really assembled through its local API, at least once per
    // VM start (a later reconcile may log it again).
    let n = c.assembled_count();
    ensure!(
        n >= 2,
        "the head assembled the volume {n} times; expected one per VM start (2)"
    );
    c.finish();
    Ok(format!(
        "xapi-tests datapath through the installed plugins in {took}s: VM start (open/attach/activate) → {mirrors} dm-raid raid1 mirrors under block device /dev/mapper/vsky-<vdi> of 32 MiB, 3 MiB written and read back; VM shutdown (deactivate ×2, detach, close) → device, dm and NBD gone; activate refused (Activated_on_another_host) while other-head holds it, other-head kept it; restart → data intact; Volume.resize of the running VM's disk → the device grew before the call returned, new end written and read back; nothing left attached"
    ))
}
