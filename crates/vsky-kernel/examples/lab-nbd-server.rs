//! A minimal storage-server stand-in for the VM lab: serves byte ranges of
//! files over NBD with `vsky_nbd::serve` until killed. The lab runs one
//! process per "server" so a scenario can `kill -9` one, exactly like a crashed
//! storage node (an in-process task would die with the test).
//!
//! Usage: `lab-nbd-server <listen-addr> <name>=<path>:<offset_bytes>:<size_bytes>[:ro]…`
//! (`:ro` exports the range read-only: the handshake carries READ_ONLY, so
//! the kernel client marks the disk read-only and refuses writes itself).

use std::path::PathBuf;

fn parse_export(arg: &str) -> Result<(String, vsky_nbd::Export), String> {
    let (name, rest) = arg
        .split_once('=')
        .ok_or("expected name=path:offset:size[:ro]")?;
    let (rest, read_only) = match rest.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let mut parts = rest.rsplitn(3, ':');
    let size = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad size")?;
    let offset = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad offset")?;
    let path = parts.next().ok_or("missing path")?;
    Ok((
        name.to_string(),
        vsky_nbd::Export {
            path: PathBuf::from(path),
            offset_bytes: offset,
            size_bytes: size,
            read_only,
            writable_bytes: None,
        },
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: lab-nbd-server <listen-addr> <name>=<path>:<offset>:<size>[:ro]…");
        std::process::exit(2);
    }
    let exports = vsky_nbd::ExportTable::new();
    for a in &args[1..] {
        match parse_export(a) {
            Ok((name, e)) => exports.insert(name, e),
            Err(e) => {
                eprintln!("lab-nbd-server: {a:?}: {e}");
                std::process::exit(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab-nbd-server: runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&args[0]).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lab-nbd-server: bind {}: {e}", args[0]);
                std::process::exit(1);
            }
        };
        let outcome = vsky_nbd::serve(
            listener,
            exports,
            vsky_nbd::ServerConfig::default(),
            std::future::pending::<()>(),
        )
        .await;
        eprintln!("lab-nbd-server: stopped: {outcome:?}");
    });
}
