//! `xapi-tests`: plays xapi-storage-script against installed SMAPIv3
//! plugins (see the library docs). Exit status 0 when every scenario
//! passed, 1 on the first failure (printed), 2 on bad usage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use xapi_tests::runner::{Kind, discover};
use xapi_tests::scenarios::{self, ManagerAdmin, Rig};
use xapi_tests::{bad_input, datapath, snapshots};

#[derive(Parser)]
#[command(
    version,
    about = "Plays xapi-storage-script against installed SMAPIv3 plugins and checks every answer",
    after_help = "Examples:\n  xapi-tests query --plugins /usr/libexec/xapi-storage-script\n  xapi-tests volume --plugins /tmp/p/usr/libexec/xapi-storage-script --manager http://127.0.0.1:8080 --token-file admin.token\n  xapi-tests datapath --plugins /usr/libexec/xapi-storage-script --manager http://10.0.2.2:8080 --token-file admin.token --other-server node2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plugin.Query of every plugin found: registration as xapi does it.
    Query {
        #[command(flatten)]
        plugins: Plugins,
    },
    /// SR and VDI scenarios plus bad input of every kind (needs a manager
    /// with storage; no kernel devices).
    Volume {
        #[command(flatten)]
        plugins: Plugins,
        #[command(flatten)]
        manager: ManagerArgs,
    },
    /// Per-call latency of the plugin executables (process start to
    /// answer) next to a minimal Python script doing the same REST call.
    Bench {
        #[command(flatten)]
        plugins: Plugins,
        #[command(flatten)]
        manager: ManagerArgs,
        /// Calls per row.
        #[arg(long, default_value_t = 100)]
        iterations: usize,
    },
    /// VM start and shutdown through the datapath plugin on a head host
    /// (needs a local vsky-agent with the head role: the lab VM or dom0).
    Datapath {
        #[command(flatten)]
        plugins: Plugins,
        #[command(flatten)]
        manager: ManagerArgs,
        /// Size of the test volume in bytes.
        #[arg(long, default_value_t = 64 << 20)]
        size: u64,
        /// Name of another registered server that may head volumes (not one
        /// whose agent runs with --storage-only): the volume is attached
        /// there to check that activation here is refused
        /// (Activated_on_another_host).
        #[arg(long)]
        other_server: Option<String>,
        /// The datapath plugin's config file (VSKY_DATAPATH_CONFIG); by
        /// default the plugin reads /etc/vsky/datapath.json.
        #[arg(long)]
        datapath_config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Plugins {
    /// Root holding volume/<name>/ and datapath/<name>/ folders.
    #[arg(long, default_value = "/usr/libexec/xapi-storage-script")]
    plugins: PathBuf,
    /// The volume plugin's folder name.
    #[arg(long, default_value = "org.xen.xapi.storage.vastsky")]
    volume_plugin: String,
    /// SR state dir given to the volume plugin (VSKY_SR_STATE_DIR); by
    /// default the plugin uses /var/lib/vsky/sr.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ManagerArgs {
    /// Manager URL, used as the SRs' device-config:manager.
    #[arg(long)]
    manager: String,
    /// Admin token file, used as device-config:token_file.
    #[arg(long)]
    token_file: PathBuf,
    /// device-config:replicas for the test SRs.
    #[arg(long)]
    replicas: Option<u8>,
}

fn rig(
    p: &Plugins,
    m: Option<&ManagerArgs>,
    datapath_config: Option<&PathBuf>,
) -> Result<Rig, String> {
    let found = discover(&p.plugins).map_err(|e| format!("{}: {e}", p.plugins.display()))?;
    let mut volume = found
        .iter()
        .find(|d| d.kind == Kind::Volume && d.name == p.volume_plugin)
        .cloned()
        .ok_or_else(|| {
            format!(
                "no volume plugin {} under {}/volume",
                p.volume_plugin,
                p.plugins.display()
            )
        })?;
    if let Some(s) = &p.state_dir {
        volume = volume.with_env("VSKY_SR_STATE_DIR", s.display().to_string());
    }
    let datapaths = found
        .into_iter()
        .filter(|d| d.kind == Kind::Datapath)
        .map(|d| match datapath_config {
            Some(c) => d.with_env("VSKY_DATAPATH_CONFIG", c.display().to_string()),
            None => d,
        })
        .collect();
    let mut device_config = BTreeMap::new();
    if let Some(m) = m {
        device_config.insert("manager".to_string(), m.manager.clone());
        device_config.insert("token_file".to_string(), m.token_file.display().to_string());
        if let Some(r) = m.replicas {
            device_config.insert("replicas".to_string(), r.to_string());
        }
    }
    Ok(Rig {
        volume,
        datapaths,
        device_config,
    })
}

fn read_token(m: &ManagerArgs) -> Result<String, String> {
    let text = std::fs::read_to_string(&m.token_file)
        .map_err(|e| format!("{}: {e}", m.token_file.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .ok_or_else(|| format!("{} holds no token", m.token_file.display()))
}

fn admin(m: &ManagerArgs) -> Result<ManagerAdmin, String> {
    ManagerAdmin::new(&m.manager, &read_token(m)?)
}

fn step(name: &str, f: impl FnOnce() -> Result<String, String>) -> Result<(), String> {
    let start = std::time::Instant::now();
    let detail = f().map_err(|e| format!("{name}: FAILED\n{e}"))?;
    println!(
        "{name}: ok {detail}({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Query { plugins } => {
            let r = rig(&plugins, None, None)?;
            step("query", || scenarios::query(&r).map(|_| String::new()))
        }
        Command::Volume { plugins, manager } => {
            let r = rig(&plugins, Some(&manager), None)?;
            let a = admin(&manager)?;
            step("query", || scenarios::query(&r).map(|_| String::new()))?;
            step("sr lifecycle", || {
                scenarios::sr_lifecycle(&r).map(|_| String::new())
            })?;
            step("vdi lifecycle", || {
                scenarios::vdi_lifecycle(&r).map(|_| String::new())
            })?;
            step("snapshots, clones, reverts", || {
                snapshots::chains_on_the_control_plane(&r, &a).map(|_| String::new())
            })?;
            step("bad input changes nothing", || {
                bad_input::bad_input_changes_nothing(&r, &a, "xapi-tests-wrong-token-000000")
                    .map(|n| format!("[{n} cases] "))
            })
        }
        Command::Bench {
            plugins,
            manager,
            iterations,
        } => {
            let r = rig(&plugins, Some(&manager), None)?;
            let token = read_token(&manager)?;
            let (rows, ratio) =
                xapi_tests::bench::run(&r, &manager.manager, &token, iterations.max(1))?;
            println!(
                "{:<44} {:>9} {:>9} {:>9}",
                "call (process start to answer)", "median", "p90", "min"
            );
            for s in rows {
                println!(
                    "{:<44} {:>7.2}ms {:>7.2}ms {:>7.2}ms",
                    s.what,
                    s.median.as_secs_f64() * 1e3,
                    s.p90.as_secs_f64() * 1e3,
                    s.min.as_secs_f64() * 1e3
                );
            }
            println!("python / Volume.stat median ratio: {ratio:.1}x");
            Ok(())
        }
        Command::Datapath {
            plugins,
            manager,
            size,
            other_server,
            datapath_config,
        } => {
            let r = rig(&plugins, Some(&manager), datapath_config.as_ref())?;
            let a = admin(&manager)?;
            step("query", || scenarios::query(&r).map(|_| String::new()))?;
            step("vm start/stop", || {
                datapath::vm_start_stop(&r, &a, size, other_server.as_deref())
                    .map(|_| String::new())
            })?;
            step("vm snapshot, clone, revert", || {
                snapshots::vm_snapshot(&r, &a, size).map(|_| String::new())
            })?;
            step("backup of a running vm", || {
                snapshots::backup(&r, &a, size).map(|_| String::new())
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
