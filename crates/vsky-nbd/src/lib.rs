//! VastSky's NBD implementation: the server storage agents use to export
//! chunks, the client-side handshake the head agent runs before handing a
//! socket to the Linux kernel NBD client, and a small async client.
//!
//! # A tour
//!
//! A storage agent fills an [`ExportTable`] with [`Export`]s, each a byte
//! range of a disk file or block device registered under a secret per-leg
//! name, and runs [`serve`] on a listener. A connection goes through:
//!
//! 1. `handshake`: fixed newstyle option haggling; `NBD_OPT_GO`/`INFO`/
//!    `EXPORT_NAME` select an export by name, everything fancy is refused, and
//!    names are never listed.
//! 2. `connection`: the transmission phase, on a thread of its own with an
//!    async supervisor; [`proto`] turns bytes into request headers (check,
//!    then parse), `cmd` turns headers into validated commands, and `backing`
//!    runs them with positional I/O confined to the export's range: cheap
//!    ones on the connection thread, slow ones on tokio's blocking pool, many
//!    at a time. Each finished request sends its own simple reply through
//!    `reply`; payload buffers are recycled through `buffer`.
//! 3. `server`: the accept loop, connection cap and graceful shutdown.
//!
//! On the head, [`client::handshake`] negotiates a socket the kernel can take
//! over (simple replies only), and [`client::Client`] offers
//! read/write/flush/trim/write_zeroes for tests and tools.
//!
//! # Invariants
//!
//! - Only `[offset_bytes, offset_bytes + size_bytes)` of a backing file is
//!   ever read or written; bounds are checked with overflow-safe arithmetic
//!   before any I/O or allocation.
//! - No client input sizes an allocation beyond the protocol's limits
//!   ([`proto::MAX_PAYLOAD_BYTES`], [`proto::MAX_OPTION_BYTES`]).
//! - Export names never leave the server; `NBD_OPT_LIST` is always empty.
//! - There is no userspace cache: FLUSH and FUA are `fdatasync`, and
//!   CAN_MULTI_CONN is advertised because that holds across connections.
//! - Removing an export cuts its connections; shutdown drains them.
//!
//! # Errors
//!
//! [`NbdError`] is the one error type. The server never returns per-connection
//! errors to its caller; it logs them with `tracing` and keeps serving.

mod backing;
mod buffer;
pub mod client;
mod cmd;
mod connection;
mod error;
mod export;
mod handshake;
pub mod proto;
mod reply;
mod server;
mod shutdown;

pub use error::NbdError;
pub use export::{Export, ExportTable};
pub use server::{ServerConfig, serve};
