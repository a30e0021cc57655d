//! `vsky-agent`: parses flags and runs the agent library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use vsky_agent::disks::DiskArg;
use vsky_agent::head::NbdTimeouts;
use vsky_api::ClientConfig;

/// The VastSky agent: runs on every server of the pool.
///
/// It registers the server and its disks with the manager, serves the chunks
/// allocated on those disks over NBD, wipes chunks freed by deleted volumes,
/// and (unless --storage-only) assembles the volumes attached to this server
/// as /dev/mapper/vsky-<volume> (kernel NBD + dm-raid raid1 + linear/striped).
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Example:\n  vsky-agent --manager https://mgr:8080 --ca-file /etc/vsky/ca.pem --token-file /etc/vsky/agent.token \\\n      --server-name node1 --listen 0.0.0.0:10809 --advertise 10.0.0.11:10809 --disk /dev/sdb --disk /dev/nvme0n1,class=nvme"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Manager base URL; several comma-separated for managers on etcd (the
    /// agent follows the leader and fails over on its own).
    #[arg(long, env = "VSKY_MANAGER", value_name = "URL[,URL…]", required = true)]
    manager: Option<String>,
    /// File holding this agent's bearer token (first non-comment line).
    #[arg(long, env = "VSKY_TOKEN_FILE", required = true)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the manager's TLS certificate.
    #[arg(long, env = "VSKY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// This server's name in the cluster (letters, digits, '.', '_', '-').
    #[arg(long, required = true)]
    server_name: Option<String>,
    /// Address the NBD server listens on.
    #[arg(long, default_value = "0.0.0.0:10809")]
    listen: SocketAddr,
    /// host:port other servers reach this NBD server at (defaults to
    /// --listen when that is not a wildcard address).
    #[arg(long)]
    advertise: Option<String>,
    /// A disk to serve: block device or file, optionally with a class
    /// (`/dev/sdb`, `/dev/nvme0n1,class=nvme`). Repeat for several disks.
    /// A blank disk is labelled with the cluster, disk and server it belongs
    /// to; a disk labelled for another cluster or server, or that cannot be
    /// used, is refused (the others still serve): see `reinitialize-disk`.
    #[arg(long = "disk")]
    disks: Vec<DiskArg>,
    /// Server label KEY=VALUE (e.g. rack=r1: legs of a mirror go to
    /// distinct racks). Repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 5)]
    heartbeat_interval: u64,
    /// Serve chunks only; do not assemble volumes (no nbd/dm modules needed).
    /// The manager then refuses to attach volumes to this server.
    #[arg(long)]
    storage_only: bool,
    /// Seconds an NBD request to a leg may take before the leg is failed.
    #[arg(long, default_value_t = 10)]
    nbd_timeout: u64,
    /// Seconds I/O waits for a dead leg's connection to come back before it
    /// fails (and the mirror degrades).
    #[arg(long, default_value_t = 2)]
    dead_connection_timeout: u64,
    /// File where the head keeps which /dev/nbdN imports which leg, on
    /// kernels that do not keep NBD backend identifiers (before Linux 5.14,
    /// such as XCP-ng's 4.19). Keep it on a tmpfs such as /run: it must be
    /// empty after a reboot, when the NBD devices are gone too.
    #[arg(long, default_value = vsky_kernel::nbd::DEFAULT_BACKEND_FILE)]
    nbd_backend_file: PathBuf,
    /// Use --nbd-backend-file even on a kernel that keeps backend
    /// identifiers. For tests: it runs the path of kernels before 5.14 on
    /// a newer one, where the kernel can check it.
    #[arg(long, env = "VSKY_NBD_BACKEND_FILE_ALWAYS")]
    nbd_backend_file_always: bool,
    /// Prefix of this agent's kernel object names: device-mapper devices
    /// `<prefix>-<volume>…`, NBD backend identifiers `<prefix>:…`. Keep
    /// the default: the datapath plugin only knows `vsky`. Another prefix
    /// lets a second head agent share one kernel without seeing or touching
    /// the first one's devices (the VM lab's two heads); 1-8 lowercase
    /// letters and digits.
    #[arg(long, default_value = vsky_kernel::dm::DEFAULT_NAME_PREFIX)]
    kernel_name_prefix: String,
    /// Address of the local API for the datapath plugin (attach, detach,
    /// status). Enabled only together with --api-token-file.
    #[arg(long, default_value = "127.0.0.1:10810")]
    api_listen: SocketAddr,
    /// File holding the bearer token local callers (the datapath plugin)
    /// must present to the local API. Without it the local API is off.
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// File where the local API keeps which domains (VMs, dom0 readers)
    /// activated each volume on this host, so that a deactivate tears a
    /// device down only with its last activation, also across agent
    /// restarts. Keep it on a tmpfs such as /run: it must be empty after a
    /// reboot, when the devices are gone too.
    #[arg(long, default_value = vsky_agent::activations::DEFAULT_FILE)]
    activations_file: PathBuf,
    /// No longer used: the manager schedules every scrub
    /// (`vsky-manager --scrub-interval`). Accepted so that existing unit
    /// files keep working; a warning says it is ignored.
    #[arg(long, hide = true)]
    scrub_interval: Option<u64>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (tracing EnvFilter syntax), also read from RUST_LOG.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log: String,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Zero a whole disk, destroying all its data and its label, so that it
    /// joins the cluster as a new, blank disk.
    #[command(
        long_about = "Zero a whole disk (block device or file), destroying all its data and its \
            VastSky label, then exit. The agent refuses a disk whose label names another \
            cluster, another server, or not the disk the manager has at that path; this is \
            the one way to use such a disk anyway. Its old data is gone for good: a disk of a \
            cluster whose manager lost its store still holds that cluster's volumes, so start \
            that manager on its store instead if they are wanted.\n\n\
            Stop the agent that serves the disk first. Then start the agent: it registers the \
            disk as a new, blank disk and labels it. If the manager still has a disk at this \
            path on this server, it fails that disk (its legs are rebuilt elsewhere); remove it \
            with `vsky disk remove` once it holds no legs, and restart the agent to add the \
            new one. Zeroing takes seconds on files and devices that discard to zeros, and \
            as long as writing the whole disk on others.",
        after_help = "Example:\n  vsky-agent reinitialize-disk --destroy-data /dev/sdb"
    )]
    ReinitializeDisk {
        /// The block device or file to zero.
        path: PathBuf,
        /// Confirms that all data on the disk may be destroyed (required).
        #[arg(long)]
        destroy_data: bool,
    },
}

/// `vsky-agent reinitialize-disk`: zero the disk and say what it held.
fn reinitialize_disk(path: &std::path::Path, destroy_data: bool) -> anyhow::Result<()> {
    if !destroy_data {
        bail!(
            "reinitializing {} destroys all its data; add --destroy-data to confirm",
            path.display()
        );
    }
    let (before, size) = vsky_agent::disks::reinitialize(path)?;
    let was = match before {
        vsky_agent::label::Decoded::Blank => "it carried no label".to_string(),
        vsky_agent::label::Decoded::Label(l) => format!(
            "it was disk {} of server '{}' in cluster {}",
            l.disk_id, l.server, l.cluster_id
        ),
        vsky_agent::label::Decoded::Unusable(why) => format!("before: {why}"),
    };
    println!(
        "zeroed {} ({size} bytes; {was}); start the agent to register it as a new disk",
        path.display()
    );
    Ok(())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label '{s}' must be KEY=VALUE"))
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .with_context(|| format!("token file {} holds no token", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::ReinitializeDisk { path, destroy_data }) = &args.command {
        return reinitialize_disk(path, *destroy_data);
    }
    // Required by clap unless a subcommand is given.
    let (Some(manager), Some(token_file), Some(server_name)) =
        (args.manager, args.token_file, args.server_name)
    else {
        bail!("--manager, --token-file and --server-name are required");
    };
    // Before any device name is made.
    vsky_kernel::dm::set_name_prefix(&args.kernel_name_prefix)
        .context("invalid --kernel-name-prefix")?;
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    if args.scrub_interval.is_some() {
        tracing::warn!(
            "--scrub-interval is ignored: the manager schedules every scrub now (vsky-manager --scrub-interval); remove it from the agent's command line"
        );
    }
    let advertise = match args.advertise {
        Some(a) => a,
        None if !args.listen.ip().is_unspecified() => args.listen.to_string(),
        None => bail!(
            "--listen {} is a wildcard address: give --advertise HOST:PORT that other servers can reach",
            args.listen
        ),
    };
    if args.heartbeat_interval == 0 || args.nbd_timeout == 0 || args.dead_connection_timeout == 0 {
        bail!(
            "--heartbeat-interval, --nbd-timeout and --dead-connection-timeout must be at least 1 second"
        );
    }
    let mut labels = BTreeMap::new();
    for (k, v) in args.labels {
        if labels.insert(k.clone(), v).is_some() {
            bail!("label '{k}' given twice");
        }
    }
    let config = vsky_agent::Config {
        client: ClientConfig {
            manager_url: manager,
            token: Some(read_token(&token_file)?),
            ca_file: args.ca_file,
            timeout: None,
        },
        server_name,
        nbd_listen: args.listen,
        advertise,
        disks: args.disks,
        labels,
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
        head: !args.storage_only,
        timeouts: NbdTimeouts {
            request: Duration::from_secs(args.nbd_timeout),
            dead_connection: Duration::from_secs(args.dead_connection_timeout),
            connect: Duration::from_secs(5),
        },
        nbd_backends: vsky_agent::head::NbdBackendFile {
            path: args.nbd_backend_file,
            always: args.nbd_backend_file_always,
        },
        api: match &args.api_token_file {
            Some(path) => Some(vsky_agent::api::ApiConfig {
                listen: args.api_listen,
                token: read_token(path)?,
                activations_file: args.activations_file.clone(),
            }),
            None => None,
        },
    };
    vsky_agent::run(config, shutdown_signal()).await
}
