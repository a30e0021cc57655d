//! `vsky-manager`: parses flags, opens the store, serves the API. All the
//! logic lives in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use vsky_manager::store::redb::RedbStore;
use vsky_manager::{Manager, Tokens};
use vsky_model::Settings;

/// The VastSky manager: cluster model, durable metadata store and REST API.
///
/// It keeps the cluster's servers, disks, chunks and volumes in a redb file
/// under --data-dir, committing every change to disk before answering. Admins
/// use it through the `vsky` CLI, agents and SMAPIv3 plugins through REST API
/// v1 (OpenAPI document at /api/v1/openapi.json, Prometheus metrics at
/// /metrics).
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  vsky-manager --listen 0.0.0.0:8080 --data-dir /var/lib/vsky-manager \\\n      --token-file /etc/vsky/admin.token --agent-token-file /etc/vsky/agent.tokens"
)]
struct Args {
    /// Address and port to serve the REST API on (port 0 picks a free one;
    /// the chosen address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080", env = "VSKY_MANAGER_LISTEN")]
    listen: SocketAddr,

    /// Directory of the metadata store (created if missing). One manager per
    /// directory.
    #[arg(long, env = "VSKY_MANAGER_DATA_DIR")]
    data_dir: PathBuf,

    /// File holding the admin bearer token(s), one per line (`#` comments
    /// allowed; at least 16 characters each).
    #[arg(long, env = "VSKY_MANAGER_TOKEN_FILE")]
    token_file: PathBuf,

    /// File holding agent bearer token(s): lines `TOKEN` (any server) or
    /// `SERVER-NAME TOKEN` (bound to one server). Agent tokens may only call
    /// /api/v1/agent/ endpoints.
    #[arg(long, env = "VSKY_MANAGER_AGENT_TOKEN_FILE")]
    agent_token_file: Option<PathBuf>,

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

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log filter (tracing EnvFilter syntax), also read from RUST_LOG.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log: String,
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
    let tokens = Tokens::load(&args.token_file, args.agent_token_file.as_deref())
        .map_err(anyhow::Error::msg)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(vsky_manager::tls::server_config(cert, key).map_err(anyhow::Error::msg)?)
        }
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let store = RedbStore::open(&args.data_dir)?;
    let settings = Settings::new(
        args.chunk_size
            .unwrap_or(vsky_model::limits::CHUNK_SIZE_BYTES_DEFAULT),
    );
    let manager = Arc::new(Manager::open(
        Box::new(store),
        settings,
        args.chunk_size.is_some(),
    )?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %local, tls = tls.is_some(), data_dir = %args.data_dir.display(), "vsky-manager serving");
    // Scripts and tests read the bound address from this line.
    println!("listening on {scheme}://{local}");
    std::io::stdout().flush()?;
    vsky_manager::run(manager, tokens, listener, tls, shutdown_signal()).await?;
    Ok(())
}
