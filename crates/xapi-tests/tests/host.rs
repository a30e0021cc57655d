//! The host-side conformance suite: both plugins installed by
//! `scripts/install-plugins` into a temp prefix, driven exactly as
//! xapi-storage-script drives them, against a real manager (redb store,
//! HTTP on loopback) and three real storage agents with file-backed disks.
//! One agent also serves the local API the datapath plugin uses; it runs
//! storage-only (this host has no device-mapper), so VM start must fail
//! cleanly at activate. The kernel path runs in the lab VM through
//! `xapi-tests datapath`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vsky_agent::api::ApiConfig;
use vsky_sync::LockExt;
use vsky_testkit::agents::{AgentHandle, disk_image, storage_agent_config};
use vsky_testkit::free_port;
use vsky_testkit::in_process::InProcessManager;
use vsky_testkit::pool::MIB;
use vsky_testkit::tokens::ADMIN_TOKEN;
use xapi_tests::runner::{Kind, PluginDir, discover};
use xapi_tests::scenarios::{self, ManagerAdmin, Rig};
use xapi_tests::{bad_input, datapath};

const LOCAL_API: &str = "xapi-tests-local-api-token-0123";

/// Dropped in this order: the agents and the manager shut down before
/// their runtime and scratch directory go.
struct Cluster {
    url: String,
    plugins: PathBuf,
    _agents: Vec<AgentHandle>,
    _manager: InProcessManager,
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

/// 8 MiB chunks: 7 MiB of data each, enough for a thin volume's pool (the
/// SR's default provisioning).
const CHUNK: u64 = 8 * MIB;

/// Builds the plugin binaries of the profile this test was built with and
/// answers the folder holding them. `cargo test -p xapi-tests` alone does
/// not build other packages' binaries, so we ask cargo (a no-op when they
/// are fresh).
fn plugin_binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/host-<hash>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo gives this test process the variables it sets for a package
    // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …). Build scripts (ring's) track
    // some of them, so passing them on would rebuild half the tree.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ]
        .iter()
        .any(|p| k.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "-p", "volume-plugin", "-p", "datapath-plugin"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the plugins failed");
    profile_dir
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn install_plugins(prefix: &Path) -> PathBuf {
    let out = Command::new(workspace_root().join("scripts/install-plugins"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--bin-dir")
        .arg(plugin_binaries())
        .output()
        .expect("the installer runs");
    assert!(
        out.status.success(),
        "install-plugins failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    prefix.join("usr/libexec/xapi-storage-script")
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("api.token"), LOCAL_API).unwrap();
    let api_port = free_port();
    std::fs::write(
        d.join("datapath.json"),
        format!(
            r#"{{"agent_url": "http://127.0.0.1:{api_port}", "token_file": "{}"}}"#,
            d.join("api.token").display()
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Its servers may stay silent (no agent, as "other-head" below): kept.
    let manager = runtime.block_on(InProcessManager::start(d, CHUNK));
    let url = manager.url.clone();
    let agents: Vec<AgentHandle> = runtime.block_on(async {
        (0..3)
            .map(|s| {
                let disk = disk_image(&d.join(format!("disk{s}.img")), 32, CHUNK);
                let config = vsky_agent::Config {
                    api: (s == 0).then(|| ApiConfig {
                        listen: format!("127.0.0.1:{api_port}").parse().unwrap(),
                        token: LOCAL_API.into(),
                        activations_file: d.join("activations.json"),
                    }),
                    ..storage_agent_config(&url, &format!("s{s}"), free_port(), disk)
                };
                AgentHandle::spawn(config)
            })
            .collect()
    });
    let admin = manager.admin();
    let begin = Instant::now();
    while !runtime
        .block_on(admin.cluster())
        .is_ok_and(|c| c.disks == 3)
    {
        assert!(
            begin.elapsed() < Duration::from_secs(30),
            "agents never registered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another head, as an admin adds it before its agent runs: the
    // datapath scenarios attach volumes there to play "held by another
    // host" (the storage-only agents here may hold no attachment).
    runtime
        .block_on(admin.create_server(&vsky_api::types::CreateServer {
            name: "other-head".into(),
            address: "127.0.0.1:9".into(),
            labels: Default::default(),
        }))
        .unwrap();
    // The local API must answer before the datapath scenarios run.
    while std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err() {
        assert!(
            begin.elapsed() < Duration::from_secs(30),
            "local API never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let plugins = install_plugins(&d.join("prefix"));
    Cluster {
        url,
        plugins,
        _agents: agents,
        _manager: manager,
        _runtime: runtime,
        dir,
    }
}

/// One cluster for all tests of this file. Tests hold the returned guard
/// for their whole run: scenarios compare the manager's state before and
/// after refused calls, which another test's SRs would disturb.
fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock_unpoisoned();
    (CLUSTER.get_or_init(start), guard)
}

fn rig(c: &Cluster) -> Rig {
    let found = discover(&c.plugins).unwrap();
    let d = c.dir.path();
    let volume = found
        .iter()
        .find(|p| p.kind == Kind::Volume)
        .unwrap()
        .clone()
        .with_env(
            "VSKY_SR_STATE_DIR",
            d.join("sr-state").display().to_string(),
        );
    let datapaths: Vec<PluginDir> = found
        .into_iter()
        .filter(|p| p.kind == Kind::Datapath)
        .map(|p| {
            p.with_env(
                "VSKY_DATAPATH_CONFIG",
                d.join("datapath.json").display().to_string(),
            )
        })
        .collect();
    Rig {
        volume,
        datapaths,
        device_config: [
            ("manager".to_string(), c.url.clone()),
            (
                "token_file".to_string(),
                d.join("admin.token").display().to_string(),
            ),
        ]
        .into(),
    }
}

fn admin(c: &Cluster) -> ManagerAdmin {
    ManagerAdmin::new(&c.url, ADMIN_TOKEN).unwrap()
}

#[test]
fn the_installer_lays_out_folders_xapi_discovers() {
    let (c, _serial) = cluster();
    let found = discover(&c.plugins).unwrap();
    let names: Vec<(Kind, &str)> = found.iter().map(|p| (p.kind, p.name.as_str())).collect();
    assert_eq!(
        names,
        [
            (Kind::Volume, "org.xen.xapi.storage.vastsky"),
            (Kind::Datapath, "vsky")
        ]
    );
    let volume = &found[0];
    let calls = volume.calls().unwrap();
    assert_eq!(calls.len(), 23, "{calls:?}");
    for absent in ["Volume.copy", "Volume.compose"] {
        assert!(!calls.iter().any(|c| c == absent));
    }
    for call in &calls {
        let link = std::fs::read_link(volume.path.join(call)).unwrap();
        assert_eq!(link, Path::new("vsky-volume-plugin"), "relative symlink");
    }
    assert_eq!(found[1].calls().unwrap().len(), 8);
    // Installing again is idempotent and removes stale call links.
    std::os::unix::fs::symlink("vsky-volume-plugin", volume.path.join("Volume.copy")).unwrap();
    let prefix = c
        .plugins
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    install_plugins(prefix);
    assert_eq!(volume.calls().unwrap(), calls);
}

#[test]
fn query_answers_register_both_plugins() {
    let (c, _serial) = cluster();
    scenarios::query(&rig(c)).unwrap();
}

#[test]
fn vm_snapshot_fast_clone_revert_and_clone_on_boot_calls() {
    let (c, _serial) = cluster();
    xapi_tests::snapshots::chains_on_the_control_plane(&rig(c), &admin(c)).unwrap();
}

#[test]
fn sr_create_attach_stat_ls_detach_destroy() {
    let (c, _serial) = cluster();
    scenarios::sr_lifecycle(&rig(c)).unwrap();
}

#[test]
fn vdi_create_stat_set_unset_resize_destroy() {
    let (c, _serial) = cluster();
    scenarios::vdi_lifecycle(&rig(c)).unwrap();
}

#[test]
fn bad_input_of_every_kind_is_refused_and_changes_nothing() {
    let (c, _serial) = cluster();
    let n =
        bad_input::bad_input_changes_nothing(&rig(c), &admin(c), "wrong-token-wrong-token-0000")
            .unwrap();
    assert!(n > 150, "{n} cases");
}

#[test]
fn vm_start_on_a_storage_only_host_fails_cleanly_at_activate() {
    let (c, _serial) = cluster();
    datapath::datapath_without_head(&rig(c), &admin(c), Some("other-head")).unwrap();
}

#[test]
fn sr_stat_reports_recovering_once_a_leg_fails() {
    // A cluster of its own: failing a disk would disturb the other tests.
    let c = start();
    scenarios::health_follows_mirrors(&rig(&c), &admin(&c)).unwrap();
}
