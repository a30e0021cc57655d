//! Serves one export until Ctrl-C: the benchmark's server and a handy manual
//! test target.
//!
//! Usage: `serve ADDR NAME PATH [OFFSET_BYTES [SIZE_BYTES]]`. SIZE defaults to
//! the rest of the file after OFFSET. Example:
//! `cargo run --release -p vsky-nbd --example serve -- 127.0.0.1:10809 leg0 /tmp/disk.img`
//! `VSKY_NBD_MAX_INFLIGHT=N` overrides `max_inflight_per_connection`.

use std::io::{Seek, SeekFrom};

use vsky_nbd::{Export, ExportTable, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, name, path, rest @ ..] = args.as_slice() else {
        return Err("usage: serve ADDR NAME PATH [OFFSET_BYTES [SIZE_BYTES]]".into());
    };
    let offset_bytes: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let file_bytes = std::fs::File::open(path)?.seek(SeekFrom::End(0))?;
    let size_bytes: u64 = match rest.get(1) {
        Some(size) => size.parse()?,
        None => file_bytes
            .checked_sub(offset_bytes)
            .ok_or("OFFSET_BYTES is past the end of the file")?,
    };
    let exports = ExportTable::new();
    exports.insert(
        name.clone(),
        Export {
            path: path.into(),
            offset_bytes,
            size_bytes,
            read_only: false,
            writable_bytes: None,
        },
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "serving {path} [{offset_bytes}, +{size_bytes}) on {}",
        listener.local_addr()?
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut config = ServerConfig::default();
    // Tuning experiments without a rebuild.
    if let Ok(value) = std::env::var("VSKY_NBD_MAX_INFLIGHT") {
        config.max_inflight_per_connection = value.parse()?;
    }
    vsky_nbd::serve(listener, exports, config, shutdown).await?;
    Ok(())
}
