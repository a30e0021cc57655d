//! `vsky-manager`: parses flags, opens the store, serves the API. All the
//! logic lives in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use vsky_manager::etcd_client::EtcdConfig;
use vsky_manager::leader::{self, Election, ElectionHandle};
use vsky_manager::store::Store;
use vsky_manager::store::etcd::EtcdStore;
use vsky_manager::store::redb::RedbStore;
use vsky_manager::{Manager, Tokens};
use vsky_model::Settings;

/// The VastSky manager: cluster model, durable metadata store and REST API.
///
/// It keeps the cluster's servers, disks, chunks and volumes in a store,
/// committing every change durably before answering: by default a redb file
/// under --data-dir (one manager), or etcd with --store etcd://… (several
/// managers, one elected leader, the others standbys that answer reads and
/// send writes to the leader). Admins use it through the `vsky` CLI, agents
/// and SMAPIv3 plugins through REST API v1 (OpenAPI document at
/// /api/v1/openapi.json, Prometheus metrics at /metrics).
#[derive(Parser, Debug, Clone)]
#[command(
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  vsky-manager --listen 0.0.0.0:8080 --data-dir /var/lib/vsky-manager \\\n      --token-file /etc/vsky/admin.token --agent-token-file /etc/vsky/agent.tokens\n\n  # HA: run this on two or more hosts, each with its own --advertise-url\n  vsky-manager --listen 0.0.0.0:8080 --advertise-url http://mgr1:8080 \\\n      --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 \\\n      --token-file /etc/vsky/admin.token --agent-token-file /etc/vsky/agent.tokens\n\n  vsky-manager migrate --from /var/lib/vsky-manager --to etcd://10.0.0.1:2379"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address and port to serve the REST API on (port 0 picks a free one;
    /// the chosen address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080", env = "VSKY_MANAGER_LISTEN")]
    listen: SocketAddr,

    /// Directory of the embedded metadata store (created if missing). One
    /// manager per directory. Give either --data-dir or --store.
    #[arg(
        long,
        env = "VSKY_MANAGER_DATA_DIR",
        required_unless_present = "store",
        conflicts_with = "store"
    )]
    data_dir: Option<PathBuf>,

    /// etcd store for several managers: etcd://HOST:PORT[,HOST:PORT…][/PREFIX]
    /// (etcds:// for TLS). The managers elect one leader; the others are
    /// standbys that answer reads and refuse writes with `not_leader`,
    /// naming the leader. PREFIX (default /vastsky) separates clusters
    /// sharing one etcd.
    #[arg(long, env = "VSKY_MANAGER_STORE")]
    store: Option<String>,

    /// The URL clients use to reach this manager, published while it leads
    /// so standbys can point clients at it (e.g. https://mgr1.example:8080).
    /// Default: the --listen address, which must then not be 0.0.0.0.
    #[arg(long, env = "VSKY_MANAGER_ADVERTISE_URL", requires = "store")]
    advertise_url: Option<String>,

    /// Leader lease time-to-live in seconds (2 to 60, with --store). A
    /// standby takes over within about this long after the leader dies; a
    /// leader cut off from etcd for this long stops accepting writes.
    #[arg(long, default_value = "6", value_parser = parse_ttl, env = "VSKY_MANAGER_LEASE_TTL")]
    lease_ttl: Duration,

    #[command(flatten)]
    etcd: EtcdArgs,

    /// File holding the admin bearer token(s), one per line (`#` comments
    /// allowed; at least 16 characters each).
    #[arg(long, env = "VSKY_MANAGER_TOKEN_FILE", required = true)]
    token_file: Option<PathBuf>,

    /// File holding agent bearer token(s): lines `TOKEN` (any server),
    /// `SERVER-NAME TOKEN` (bound to one server) or `SERVER-NAME TOKEN
    /// storage-only` (bound to a server that may not head volumes: it cannot
    /// attach them, and its agent must run with --storage-only). Agent tokens
    /// may only call /api/v1/agent/ endpoints.
    #[arg(long, env = "VSKY_MANAGER_AGENT_TOKEN_FILE")]
    agent_token_file: Option<PathBuf>,

    /// File holding token(s) for metrics scrapers, one per line: they may
    /// read /metrics and nothing else (give Prometheus one of these, not the
    /// admin token).
    #[arg(long, env = "VSKY_MANAGER_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,

    /// Chunk size for a new cluster (e.g. 1GiB, 64MiB; a whole number of MiB,
    /// at least 2 MiB). Fixed once the store exists; giving a different
    /// value for an existing store is an error.
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,

    /// PEM certificate chain for TLS (with --tls-key). Without both, the API
    /// is plain HTTP: use that only on loopback or a trusted lab network.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// How long a client may take to send a request's line and headers, and
    /// how long a keep-alive connection may sit idle between requests,
    /// before the connection is closed (e.g. 15s, 500ms). Keep it above
    /// 10 s, the idle time after which VastSky's own clients drop a pooled
    /// connection.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "VSKY_MANAGER_HEADER_TIMEOUT")]
    header_timeout: Duration,

    /// How long a client may take to send a whole request body after its
    /// headers (answered 408 `request_timeout` after that), and to accept
    /// the bytes of an answer (the connection is dropped after a stall this
    /// long). Long-polls are not affected: they wait on the manager, not on
    /// the client.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "VSKY_MANAGER_BODY_TIMEOUT")]
    body_timeout: Duration,

    /// How long a client may take to finish its TLS handshake (with
    /// --tls-cert).
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "VSKY_MANAGER_TLS_HANDSHAKE_TIMEOUT")]
    tls_handshake_timeout: Duration,

    /// Open client connections at most; more are closed at once (and
    /// logged). Every agent keeps about two open (a long-poll for its
    /// desired state and one for heartbeats and reports), so size this to
    /// at least 3 × servers + 200 for admins and plugin calls; the default
    /// fits about 1300 servers. The manager raises its open-file limit to
    /// fit, or warns and serves fewer.
    #[arg(long, default_value_t = vsky_manager::serve::MAX_CONNECTIONS_DEFAULT, value_parser = parse_connections, env = "VSKY_MANAGER_MAX_CONNECTIONS")]
    max_connections: usize,

    /// Open connections one source address may hold at most (IPv6: one
    /// /64); more are closed at once (and logged). One host's agent and its
    /// concurrent plugin calls need far fewer than the default.
    #[arg(long, default_value_t = vsky_manager::serve::MAX_CONNECTIONS_PER_SOURCE_DEFAULT, value_parser = parse_connections, env = "VSKY_MANAGER_MAX_CONNECTIONS_PER_SOURCE")]
    max_connections_per_source: usize,

    /// Resyncs one physical disk takes part in at a time, as source or
    /// target (k). With k = 1 a rebuild never takes more than half a disk
    /// from the volumes on it (`vsky-sim foreground`: with VMs asking half
    /// a disk, k = 1 loses none of their I/O where an unscheduled rebuild
    /// loses 82 %, at the price of a rebuild twice as long). Use 2 where
    /// the volumes' I/O stays under a third of a disk: as fast, and it
    /// still keeps a third for them. See docs/benchmarks.md.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    resyncs_per_disk: u32,

    /// How long a server may miss heartbeats before it is declared failed
    /// and its legs are replaced (e.g. 60s, 5m, 90m). Legs a head reports
    /// failed on a server that has gone silent wait this long too; a server
    /// back within it keeps its legs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    server_grace: std::time::Duration,

    /// How long a head (an agent that assembles volumes) may miss
    /// heartbeats before another server's attach of one of its volumes
    /// takes the volume over: the legs get new secret export names first
    /// (the old head is fenced: I/O errors, never a write), then the
    /// volume moves (event volume_taken_over). While the head speaks, its
    /// volumes stay (Activated_on_another_host in xapi). Keep it below
    /// XCP-ng HA's host failure timeout, so that HA's restart of a dead
    /// host's VMs on another host finds the volumes free (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_head_grace)]
    head_grace: std::time::Duration,

    /// Per-resync copy rate limit in bytes per second (e.g. 100MiB; 0 for
    /// none). Heads apply it to the dm-raid mirrors they assemble
    /// (max_recovery_rate), storage agents to copies of detached volumes.
    /// --resyncs-per-disk already shares each disk with its volumes; set a
    /// rate only to cap the network a rebuild takes (e.g. a link shared
    /// with VM traffic): each copy then runs at most this fast, and a
    /// rebuild takes at least chunk size ÷ rate per round.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    resync_rate: u64,

    /// Background rebalancing: while the fullest and the emptiest disk's
    /// fill differ by more than this many percent and no rebuild or drain
    /// is under way, the leader moves legs from full disks to empty ones
    /// (as `vsky pool rebalance` does), e.g. after new servers join. It
    /// keeps a window of moves queued or running (see
    /// --auto-rebalance-moves) and stops for any failure. Off unless given.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    auto_rebalance: Option<u8>,

    /// Background rebalance moves queued or running at most; topped up once
    /// half are done. Default: sized to the pool, --resyncs-per-disk times
    /// the disks emptier than the mean (as many as can receive at once).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000))]
    auto_rebalance_moves: Option<u32>,

    /// How often each mirrored disk is scrubbed (e.g. 7d, 12h; 0 turns it
    /// off): its legs are read and compared, under --resyncs-per-disk
    /// together with rebuilds (which go first). An attached volume's head
    /// runs dm-raid's check on the mirror; for a detached volume, the
    /// storage agent holding its first leg reads the legs at no more than
    /// --resync-rate each. Mismatches become `scrub_mismatch` events; a leg
    /// that cannot be read is replaced.
    #[arg(long, default_value = "7d", value_parser = parse_interval)]
    scrub_interval: std::time::Duration,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log filter (tracing EnvFilter syntax), also read from RUST_LOG.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log: String,
}

/// How to reach and log in to etcd (with --store, or migrate's etcd side).
#[derive(clap::Args, Debug, Clone)]
struct EtcdArgs {
    /// PEM CA bundle that signs the etcd members' certificates (etcds://).
    #[arg(long, env = "VSKY_MANAGER_ETCD_CA_FILE")]
    etcd_ca_file: Option<PathBuf>,

    /// PEM client certificate for etcd's --client-cert-auth (with
    /// --etcd-key-file).
    #[arg(long, env = "VSKY_MANAGER_ETCD_CERT_FILE", requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,

    /// PEM private key of --etcd-cert-file.
    #[arg(long, env = "VSKY_MANAGER_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,

    /// etcd user, when etcd has authentication enabled (with
    /// --etcd-password-file). It needs read/write access to the prefix.
    #[arg(long, env = "VSKY_MANAGER_ETCD_USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,

    /// File holding the etcd user's password (one line).
    #[arg(long, env = "VSKY_MANAGER_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Command {
    /// Copies the whole cluster from one store to another, e.g. from a
    /// single manager's --data-dir into etcd before running an HA pair, or
    /// back. Stop every manager of both stores first; the target must be
    /// empty. The copy is read back and compared before it is reported done.
    #[command(
        after_help = "Examples:\n  vsky-manager migrate --from /var/lib/vsky-manager --to etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379\n  vsky-manager migrate --from etcd://10.0.0.1:2379 --to /var/lib/vsky-manager-new"
    )]
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct MigrateArgs {
    /// The store to copy from: a --data-dir directory or an etcd://… URL.
    #[arg(long)]
    from: String,

    /// The store to copy into (empty): a directory or an etcd://… URL.
    #[arg(long)]
    to: String,

    #[command(flatten)]
    etcd: EtcdArgs,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let secs: u64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
    let ttl = Duration::from_secs(secs);
    if ttl < leader::LEASE_TTL_MIN || ttl > leader::LEASE_TTL_MAX {
        return Err(format!(
            "the lease TTL must be {} to {} seconds",
            leader::LEASE_TTL_MIN.as_secs(),
            leader::LEASE_TTL_MAX.as_secs()
        ));
    }
    Ok(ttl)
}

fn etcd_config(url: &str, args: &EtcdArgs) -> anyhow::Result<EtcdConfig> {
    let mut config = EtcdConfig::from_url(url).map_err(anyhow::Error::msg)?;
    config.ca_file = args.etcd_ca_file.clone();
    config.cert_file = args.etcd_cert_file.clone();
    config.key_file = args.etcd_key_file.clone();
    config.user = args.etcd_user.clone();
    config.password_file = args.etcd_password_file.clone();
    Ok(config)
}

fn is_etcd_url(s: &str) -> bool {
    s.starts_with("etcd://") || s.starts_with("etcds://")
}

/// Opens a migration side: an etcd URL or a redb directory. An etcd
/// source with a running manager is refused, since the copy would miss its
/// later writes.
fn open_for_migration(
    location: &str,
    args: &EtcdArgs,
    source: bool,
) -> anyhow::Result<Box<dyn Store>> {
    if is_etcd_url(location) {
        let store = EtcdStore::connect(&etcd_config(location, args)?)?;
        if source && store.has_leader()? {
            bail!(
                "a vsky-manager is running against {location}; stop every manager before migrating, so no change is left behind"
            );
        }
        return Ok(Box::new(store));
    }
    let dir = PathBuf::from(location);
    if source && !dir.join("vastsky.redb").is_file() {
        bail!(
            "{} holds no vastsky.redb; give the --data-dir of the manager to migrate from",
            dir.display()
        );
    }
    // The store's own error says what is wrong: locked by a running
    // manager, damaged, or unreadable.
    Ok(Box::new(RedbStore::open(&dir).with_context(|| {
        format!("cannot use {} as a store", dir.display())
    })?))
}

fn run_migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let source = open_for_migration(&args.from, &args.etcd, true)?;
    let target = open_for_migration(&args.to, &args.etcd, false)?;
    let copied = vsky_manager::migrate::migrate(source.as_ref(), target.as_ref())?;
    println!("migrated {copied} from {} to {}", args.from, args.to);
    println!(
        "the source is unchanged; start the managers on the new store, and remove the old one once they run"
    );
    Ok(())
}

/// Opens the etcd store and takes part in the election. Returns once this
/// manager can hold a cluster: it leads (and initialises an empty store),
/// or the store is initialised (it starts as a standby).
fn open_etcd(
    url: &str,
    args: &Args,
    advertise: String,
    settings: Settings,
) -> anyhow::Result<(Manager, Election)> {
    let store = EtcdStore::connect(&etcd_config(url, &args.etcd)?)?;
    let mut election = Election::new(store.clone(), advertise, args.lease_ttl);
    let mut waiting_logged = false;
    loop {
        if election.try_acquire()? || store.load()?.is_some() {
            break;
        }
        if !waiting_logged {
            tracing::info!("waiting for the leading manager to initialise the etcd store");
            waiting_logged = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let manager = Manager::open(Box::new(store), settings, args.chunk_size.is_some())?;
    Ok((manager, election))
}

/// The URL this manager publishes while it leads.
fn advertise_url(args: &Args, local: SocketAddr, scheme: &str) -> anyhow::Result<String> {
    if let Some(url) = &args.advertise_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--advertise-url '{url}' must start with http:// or https://");
        }
        return Ok(url.trim_end_matches('/').to_string());
    }
    if local.ip().is_unspecified() {
        bail!(
            "--listen {} binds every address, so clients' URL for this manager is unknown; give --advertise-url (e.g. {scheme}://mgr1.example:{})",
            args.listen,
            local.port()
        );
    }
    Ok(format!("{scheme}://{local}"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    vsky_api::units::parse_duration(s).map_err(|e| e.to_string())
}

/// `--head-grace`: a duration of at least `HEAD_GRACE_SECONDS_MIN`.
fn parse_head_grace(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    let min = vsky_model::limits::HEAD_GRACE_SECONDS_MIN;
    if d < std::time::Duration::from_secs(min) {
        return Err(format!(
            "'{s}' is too short: a head grace under {min}s would let any attach take a volume from a live head; use e.g. 30s"
        ));
    }
    Ok(d)
}

/// A duration, or `0` for "never".
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(s)
}

fn parse_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a connection count from 1 to 1000000")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    vsky_api::units::parse_size(s).map_err(|e| e.to_string())
}

fn init_tracing(args: &Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter '{}'", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args)?;
    if let Some(Command::Migrate(m)) = &args.command {
        let m = m.clone();
        return tokio::task::spawn_blocking(move || run_migrate(&m)).await?;
    }
    let token_file = args
        .token_file
        .clone()
        .context("--token-file is required")?;
    let mut tokens =
        Tokens::load(&token_file, args.agent_token_file.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(path) = &args.metrics_token_file {
        tokens = tokens.with_metrics_file(path).map_err(anyhow::Error::msg)?;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(vsky_manager::tls::server_config(cert, key).map_err(anyhow::Error::msg)?)
        }
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let settings = Settings::new(
        args.chunk_size
            .unwrap_or(vsky_model::limits::CHUNK_SIZE_BYTES_DEFAULT),
    );
    // Bind first: with etcd, the advertised URL needs the real port.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (manager, election) = match (&args.data_dir, &args.store) {
        (Some(dir), None) => {
            let store = RedbStore::open(dir)?;
            let manager = Manager::open(Box::new(store), settings, args.chunk_size.is_some())?;
            (manager, None)
        }
        (None, Some(url)) => {
            let advertise = advertise_url(&args, local, scheme)?;
            let url = url.clone();
            let args = args.clone();
            let (manager, election) =
                tokio::task::spawn_blocking(move || open_etcd(&url, &args, advertise, settings))
                    .await??;
            (manager, Some(election))
        }
        _ => bail!("give either --data-dir (one manager) or --store etcd://… (several)"),
    };
    let manager = Arc::new(manager);
    let election: Option<ElectionHandle> = election.map(|e| e.spawn(Arc::clone(&manager)));
    let store_name = match (&args.data_dir, &args.store) {
        (Some(dir), _) => dir.display().to_string(),
        (_, Some(url)) => url.clone(),
        _ => String::new(),
    };
    tracing::info!(address = %local, tls = tls.is_some(), store = %store_name, role = manager.role().name(), "vsky-manager serving");
    // Scripts and tests read the bound address from this line.
    println!("listening on {scheme}://{local}");
    std::io::stdout().flush()?;
    vsky_manager::run_with_limits(
        manager,
        tokens,
        listener,
        tls,
        vsky_manager::RecoveryConfig {
            per_disk_limit: args.resyncs_per_disk,
            server_grace: args.server_grace,
            head_grace: args.head_grace,
            rate_bytes_per_second: args.resync_rate,
            auto_rebalance: args.auto_rebalance.map(|p| vsky_model::AutoRebalance {
                spread: f64::from(p) / 100.0,
                window: args.auto_rebalance_moves.map(|n| n as usize),
            }),
            scrub_interval: (!args.scrub_interval.is_zero()).then_some(args.scrub_interval),
            ..Default::default()
        },
        vsky_manager::ServeLimits {
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            tls_handshake_timeout: args.tls_handshake_timeout,
            max_connections: args.max_connections,
            max_connections_per_source: args.max_connections_per_source,
        },
        shutdown_signal(),
    )
    .await?;
    if let Some(e) = election {
        tokio::task::spawn_blocking(move || e.resign()).await?;
    }
    Ok(())
}
