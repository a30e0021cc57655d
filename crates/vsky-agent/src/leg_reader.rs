//! Reading one leg's chunk, for the storage agent's own work on detached
//! volumes: copies (`copy.rs`) read a healthy source leg, scrubs
//! (`compare.rs`) read every leg of a mirrored disk.
//!
//! A leg on this server's own disk (`LegSpec::local_disk_path`) is read in
//! place; any other over NBD from the storage agent that exports it, under
//! its secret export name, as a head would. Errors say whether the leg
//! itself failed the read (its disk returned an I/O error: the data there
//! is unreadable) or only the way to it did (a connection lost: try
//! again).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vsky_api::types::LegSpec;

/// How long connecting to a leg's storage agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read over NBD may take before the connection is given up
/// (and reopened by the caller).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The leg's disk failed the read (an I/O error, or a chunk cut short).
    #[error("the leg cannot be read: {0}")]
    Unreadable(String),
    /// The connection to the leg failed; the leg itself may be fine.
    #[error("{0}")]
    Transport(String),
}

/// An open leg.
pub enum LegReader {
    Local {
        file: Arc<File>,
        path: String,
        /// The chunk's offset on the disk.
        base: u64,
    },
    Nbd(vsky_nbd::client::Client),
}

impl LegReader {
    /// Opens `leg`, a chunk of `chunk_size_bytes`: in place if it is on
    /// this server's disk, else over NBD (checking the export's size).
    pub async fn open(leg: &LegSpec, chunk_size_bytes: u64) -> Result<Self, String> {
        if let Some(path) = &leg.local_disk_path {
            let file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
            return Ok(LegReader::Local {
                file: Arc::new(file),
                path: path.clone(),
                base: leg.offset_bytes,
            });
        }
        let connect =
            vsky_nbd::client::Client::connect(leg.server_address.as_str(), &leg.export_name);
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("connection timed out after {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                format!(
                    "cannot open the leg on {} ({}): {e}",
                    leg.server, leg.server_address
                )
            })?;
        if client.info().size_bytes != chunk_size_bytes {
            return Err(format!(
                "the leg on {} exports {} bytes, expected a {chunk_size_bytes}-byte chunk",
                leg.server,
                client.info().size_bytes
            ));
        }
        Ok(LegReader::Nbd(client))
    }

    /// Reads `len` bytes at `offset` within the chunk.
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, ReadError> {
        match self {
            LegReader::Local { file, path, base } => {
                let (file, at) = (file.clone(), *base + offset);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .map_err(|e| ReadError::Transport(format!("read task: {e}")))?;
                read.map_err(|e| {
                    ReadError::Unreadable(format!("reading {path} at {}: {e}", *base + offset))
                })
            }
            LegReader::Nbd(client) => {
                let read = tokio::time::timeout(READ_TIMEOUT, client.read(offset, len))
                    .await
                    .map_err(|_| {
                        ReadError::Transport(format!(
                            "reading at {offset}: no answer within {READ_TIMEOUT:?}"
                        ))
                    })?;
                read.map_err(|e| match e {
                    // The storage agent answered: its disk failed the read.
                    vsky_nbd::NbdError::Request { .. } => ReadError::Unreadable(e.to_string()),
                    e => ReadError::Transport(format!("reading at {offset}: {e}")),
                })
            }
        }
    }

    /// Closes the leg (politely, for NBD).
    pub async fn close(self) {
        if let LegReader::Nbd(client) = self {
            let _ = client.disconnect().await;
        }
    }
}

/// Keeps `done` bytes since `started` under `rate` bytes per second (0: no
/// limit) by sleeping as long as needed. False if `stop` turned true
/// meanwhile.
pub async fn pace(
    started: Instant,
    done: u64,
    rate: u64,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if rate == 0 {
        return true;
    }
    let due = Duration::from_secs_f64(done as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
    true
}

/// Serving a test disk file over our NBD server, for the unit tests of the
/// modules that read legs (`copy.rs`, `compare.rs`).
#[cfg(test)]
pub(crate) mod test_export {
    use vsky_nbd::{Export, ExportTable, ServerConfig};

    /// Serves `size_bytes` of `path` from `offset_bytes` under export
    /// `name` on a loopback port; returns `host:port`.
    pub(crate) async fn serve(
        path: &std::path::Path,
        name: &str,
        offset_bytes: u64,
        size_bytes: u64,
    ) -> String {
        let exports = ExportTable::new();
        exports.insert(
            name.into(),
            Export {
                path: path.to_path_buf(),
                offset_bytes,
                size_bytes,
                read_only: false,
                writable_bytes: None,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(vsky_nbd::serve(
            listener,
            exports,
            ServerConfig::default(),
            std::future::pending(),
        ));
        address
    }
}
