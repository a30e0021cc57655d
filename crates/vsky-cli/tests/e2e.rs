//! End to end: the real `vsky` binary against a real manager (in-process,
//! real HTTP on loopback, real redb store), walking the README quickstart:
//! register a pool of 4 servers × 2 disks, create a 2-way mirrored volume,
//! read its layout, attach, grow, and see errors become exit codes.

use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;
use vsky_testkit::in_process::InProcessManager;

struct Env {
    manager: InProcessManager,
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

/// A manager with 8 MiB chunks, served in-process on its own runtime; its
/// servers may stay silent (no agent) and are kept.
fn start_manager() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let manager = runtime.block_on(InProcessManager::start(dir.path(), 8 << 20));
    Env {
        manager,
        _dir: dir,
        runtime,
    }
}

impl Env {
    fn vsky(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vsky"))
            .env_remove("VSKY_MANAGER")
            .env_remove("VSKY_TOKEN")
            .env_remove("VSKY_TOKEN_FILE")
            .arg("--manager")
            .arg(&self.manager.url)
            .arg("--token-file")
            .arg(&self.manager.tokens.admin)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.vsky(args);
        assert!(
            out.status.success(),
            "vsky {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

#[test]
fn quickstart_through_the_cli() {
    let env = start_manager();
    for s in 0..4 {
        let name = format!("node{s}");
        let address = format!("127.0.0.1:{}", 10809 + s);
        let rack = format!("rack=r{}", s % 2);
        env.ok(&[
            "server",
            "add",
            &name,
            "--address",
            &address,
            "--label",
            &rack,
        ]);
        for d in ["/dev/vdb", "/dev/vdc"] {
            env.ok(&["disk", "add", &name, d, "--size", "129MiB"]);
        }
    }
    let status = env.ok(&["cluster", "status"]);
    assert!(
        status.contains("1 GiB"),
        "capacity 4×2×16×8 MiB = 1 GiB shown with units:\n{status}"
    );

    let created = env.json(&[
        "volume",
        "create",
        "vm-disk",
        "--size",
        "60MiB",
        "--replicas",
        "2",
    ]);
    assert_eq!(created["size_bytes"], 60u64 << 20);
    let layout = created["layout"].as_array().unwrap();
    assert_eq!(layout.len(), 9, "60 MiB over 7 MiB of data per chunk");
    for md in layout {
        let legs = md["legs"].as_array().unwrap();
        assert_eq!(legs.len(), 2);
        assert_ne!(
            legs[0]["server"], legs[1]["server"],
            "legs on distinct servers"
        );
    }
    let shown = env.ok(&["volume", "show", "vm-disk"]);
    assert!(
        shown.contains("node") && shown.contains("active"),
        "{shown}"
    );
    let listed = env.ok(&["volume", "list"]);
    assert!(listed.lines().any(|l| l.contains("vm-disk")), "{listed}");

    env.ok(&["volume", "attach", "vm-disk", "--server", "node1"]);
    // node1 has no agent here to apply the grow: --no-wait answers once
    // the manager has grown the volume (the head would serve it later).
    let grown = env.json(&[
        "volume",
        "resize",
        "vm-disk",
        "--size",
        "100MiB",
        "--no-wait",
    ]);
    assert_eq!(grown["attached_to"], "node1");
    assert!(grown["served_bytes"].is_null(), "{grown}");
    assert_eq!(grown["layout"].as_array().unwrap().len(), 15);

    // Metadata: display name, description and keys.
    env.ok(&[
        "volume",
        "set",
        "vm-disk",
        "--display-name",
        "web root",
        "--key",
        "owner=alice",
        "--key",
        "tier=gold",
    ]);
    env.ok(&["volume", "set", "vm-disk", "--unset-key", "tier"]);
    let shown = env.ok(&["volume", "show", "vm-disk"]);
    assert!(shown.contains("web root"), "{shown}");
    assert!(shown.contains("owner=alice"), "{shown}");
    assert!(!shown.contains("tier=gold"), "{shown}");
    let out = env.vsky(&["volume", "set", "vm-disk"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "nothing to change is a usage error"
    );
    let out = env.vsky(&["volume", "set", "vm-disk", "--key", "noequals"]);
    assert_eq!(out.status.code(), Some(2));

    // The manager's refusals become exit status 1 with its message.
    let out = env.vsky(&["volume", "delete", "vm-disk"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("detach it first"));
    let out = env.vsky(&["volume", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    let out = env.vsky(&["volume", "create", "x", "--size", "ten"]);
    assert_eq!(out.status.code(), Some(2), "a bad size is a usage error");

    // Groups (XAPI SRs) through the CLI: create, list, show, delete when empty.
    env.ok(&["group", "create", "lab", "--display-name", "Lab VMs"]);
    let groups = env.json(&["group", "list"]);
    assert_eq!(groups[0]["display_name"], "Lab VMs");
    assert!(env.ok(&["group", "show", "lab"]).contains("No volumes."));
    let out = env.vsky(&["group", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    env.ok(&["group", "delete", "lab"]);
    assert_eq!(env.json(&["group", "list"]), serde_json::json!([]));

    // A graceful detach waits for the head (node1, which has no agent
    // here and never reports its devices gone): it times out naming the
    // head and the way out, and the volume stays releasing.
    let out = env.vsky(&["volume", "detach", "vm-disk", "--wait-timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node1") && err.contains("vsky volume detach --force vm-disk"),
        "{err}"
    );
    let released = env.ok(&["volume", "detach", "vm-disk", "--no-wait"]);
    assert!(released.contains("Releasing volume vm-disk"), "{released}");
    assert!(env.ok(&["volume", "list"]).contains("node1 (releasing)"));
    assert_eq!(
        env.json(&["volume", "show", "vm-disk"])["attachment_state"],
        "releasing"
    );
    let out = env.vsky(&["volume", "delete", "vm-disk"]);
    assert_eq!(out.status.code(), Some(1), "not while the head releases");
    // The head is dead: fence it.
    let fenced = env.json(&["volume", "detach", "--force", "vm-disk"]);
    assert_eq!(fenced["name"], "vm-disk");
    assert_eq!(fenced["attached_to"], serde_json::Value::Null);
    env.ok(&["volume", "detach", "vm-disk"]);
    env.ok(&["volume", "delete", "vm-disk"]);
    let summary = env.json(&["cluster", "status"]);
    assert_eq!(summary["volumes"], 0);
    assert_eq!(summary["releasing_bytes"], 30u64 * (8 << 20));
    // Nothing to rebuild (no volume left): `--wait` returns at once.
    env.ok(&["server", "fail", "node3", "--wait", "--wait-timeout", "10s"]);
    assert!(env.ok(&["rebuild", "list"]).contains("No rebuilds"));
    assert_eq!(env.json(&["rebuild", "list", "--all"])["running"], 0);
    // The event log tells the story so far, oldest first.
    let events = env.ok(&["events"]);
    let order: Vec<usize> = [
        "volume_created",
        "volume_releasing",
        "volume_force_detached",
        "volume_deleted",
        "server_failed",
    ]
    .iter()
    .map(|kind| {
        events
            .find(&format!(" {kind} "))
            .unwrap_or_else(|| panic!("{kind} in {events}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{events}");
    let page = env.json(&["events", "--limit", "1"]);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let out = env.vsky(&["events", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "limit 0 is a usage error");
    let servers = env.json(&["server", "list"]);
    assert_eq!(
        servers
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "failed")
            .count(),
        1
    );
}

/// Plays every executor until the runtime stops: each running resync is
/// reported done by the server that runs it (or failed, while `fail` is
/// set). The admin token may call the agent endpoints.
fn play_executors(env: &Env, fail: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    use vsky_api::types::{Heartbeat, RebuildState, ResyncReport};
    let client = env.manager.admin();
    env.runtime.spawn(async move {
        loop {
            if let Ok(list) = client.rebuilds(false).await {
                for r in list.rebuilds {
                    let Some(server) = r.executor.filter(|_| r.state == RebuildState::Running)
                    else {
                        continue;
                    };
                    let failing = fail.load(Ordering::Relaxed);
                    let report = ResyncReport {
                        job: r.id,
                        bytes_done: if failing { 0 } else { r.bytes_total },
                        done: !failing,
                        error: failing.then(|| "test: copy refused".to_string()),
                        failed_source: None,
                    };
                    let _ = client
                        .heartbeat(&Heartbeat {
                            server,
                            resyncs: vec![report],
                            ..Default::default()
                        })
                        .await;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn drain_and_rebalance_through_the_cli() {
    let env = start_manager();
    let add = |s: usize| {
        let name = format!("node{s}");
        env.ok(&[
            "server",
            "add",
            &name,
            "--address",
            &format!("127.0.0.1:{}", 10809 + s),
        ]);
        env.json(&["disk", "add", &name, "/dev/vdb", "--size", "129MiB"])["id"]
            .as_u64()
            .unwrap()
    };
    let disks: Vec<u64> = (0..4).map(add).collect();
    // 12 mirrored disks, 24 legs: 6 on each disk of 16 chunks.
    env.ok(&[
        "volume",
        "create",
        "v",
        "--size",
        "84MiB",
        "--replicas",
        "2",
    ]);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    play_executors(&env, fail.clone());

    // Drain a disk and wait: plain progress lines (stdout is no terminal),
    // then the drained disk.
    let id = disks[0].to_string();
    let out = env.ok(&["disk", "drain", &id, "--wait", "--wait-timeout", "60s"]);
    assert!(out.contains(&format!("Disk {id} is drained")), "{out}");
    assert!(out.contains("Draining:          yes: 0 legs left"), "{out}");
    assert!(!out.contains('\r'), "no bar redrawn in a pipe: {out:?}");
    let all = env.ok(&["rebuild", "list", "--all"]);
    assert!(all.contains("move (drain)"), "{all}");
    let listed = env.ok(&["disk", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&format!("{id:>2} ")) && l.contains(" online  yes ")),
        "{listed}"
    );
    // Stopping the drain, then draining a failed server, as the manager says.
    let out = env.ok(&["disk", "drain", &id, "--stop"]);
    assert!(
        out.starts_with(&format!("Stopped draining disk {id}")),
        "{out}"
    );
    env.ok(&["disk", "remove", &id]);
    env.ok(&["server", "remove", "node0"]);

    // New servers join; a rebalance moves legs to them and waits.
    add(4);
    add(5);
    let out = env.ok(&[
        "pool",
        "rebalance",
        "--max-moves",
        "3",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert!(out.contains("3 moves done"), "{out}");
    assert!(out.contains("REBUILD  VOLUME"), "{out}");
    let all = env.ok(&["rebuild", "list", "--all"]);
    assert!(all.contains("move (rebalance)"), "{all}");

    // A move that fails makes the wait fail, naming it.
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = env.vsky(&[
        "pool",
        "rebalance",
        "--max-moves",
        "2",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 of 2 moves failed"), "{stderr}");
    assert!(stderr.contains("test: copy refused"), "{stderr}");

    // Bounds are the manager's: out of range is its 400, exit 1.
    let out = env.vsky(&["pool", "rebalance", "--max-moves", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_argument"));
    let out = env.vsky(&["disk", "drain", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}

/// A graceful detach whose head is failed (it will never report its
/// devices gone) says at once that only fencing helps, and `--force` does
/// it.
#[test]
fn detaching_from_a_failed_head_points_to_fencing() {
    let env = start_manager();
    for s in 0..3 {
        let name = format!("node{s}");
        env.ok(&[
            "server",
            "add",
            &name,
            "--address",
            &format!("127.0.0.1:{}", 10809 + s),
        ]);
        if s > 0 {
            env.ok(&["disk", "add", &name, "/dev/vdb", "--size", "129MiB"]);
        }
    }
    env.ok(&["volume", "create", "v", "--size", "4MiB", "--replicas", "2"]);
    env.ok(&["volume", "attach", "v", "node0"]);
    env.ok(&["server", "fail", "node0"]);
    // (Without the check it would wait out --wait-timeout and say less.)
    let out = env.vsky(&["volume", "detach", "v"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node0 is failed") && err.contains("vsky volume detach --force v"),
        "{err}"
    );
    assert!(
        env.ok(&["volume", "show", "v"])
            .contains("node0 (releasing)")
    );
    env.ok(&["volume", "detach", "--force", "v"]);
    env.ok(&["volume", "attach", "v", "node1"]);
}
