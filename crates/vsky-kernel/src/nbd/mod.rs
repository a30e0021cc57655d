//! The kernel NBD client, driven over generic netlink (family `"nbd"`).
//!
//! The head imports every remote chunk as a `/dev/nbdN` device. Userspace does
//! the NBD handshake (see `vsky_nbd::client::handshake`), then hands the TCP
//! socket to the kernel with [`NbdNetlink::connect`]; from then on the kernel
//! owns the transmission phase and our process may exit. Netlink rather than
//! the ioctl interface because it needs no blocking `NBD_DO_IT` thread per
//! device, lets the kernel choose a free index, replaces a dead socket in place
//! ([`NbdNetlink::reconfigure`]) and tags the device with a backend identifier
//! that survives an agent restart ([`find_by_backend`]).
//!
//! [`NbdEvents`] subscribes to the family's multicast group and reports
//! `LINK_DEAD` (a device lost its socket), the agent's cue to reconnect or to
//! replace the mirror leg.
//!
//! Why a small hand-written codec instead of `neli`: we send five commands
//! (four nbd ones plus the controller's family lookup) whose attributes are
//! flat integers plus one nested socket list, and parse three reply shapes.
//! The codec (`codec`) is ~330 lines with unit tests on exact bytes; neli 0.7
//! would add a large generic API whose builder types changed between every
//! minor release (0.5 → 0.6 → 0.7), for no gain in safety here: every parse is
//! bounds-checked and malformed input becomes [`NbdError::Malformed`], never a
//! panic. The unsafe code is limited to the libc calls on the socket.
//!
//! Kernel facts this relies on (drivers/block/nbd.c, 6.1):
//! - CONNECT replies with a message carrying `NBD_ATTR_INDEX`, then the ACK.
//! - `TIMEOUT` and `DEAD_CONN_TIMEOUT` are seconds. With a finite timeout a
//!   stuck request marks the socket dead and is requeued; after
//!   `dead_conn_timeout` without a RECONFIGURE it fails with EIO, which is what
//!   lets md raid1 degrade instead of hanging.
//! - RECONFIGURE requires the same `BACKEND_IDENTIFIER` as CONNECT, and a new
//!   socket only replaces a *dead* slot (otherwise the kernel silently ignores
//!   it).
//! - `/sys/block/nbdN/backend` exists while the device is connected and holds
//!   the identifier followed by a newline.
//!
//! Before Linux 5.14 (XCP-ng's 4.19) the kernel has no backend identifier:
//! it drops the attribute without an error, has no `backend` file and does
//! not check identity on RECONFIGURE. [`NbdNetlink::open_with_backend_file`]
//! probes for it (`CTRL_ATTR_MAXATTR`) and then keeps the map in a file of
//! its own (`backends`), checked against `NBD_CMD_STATUS` and the device
//! size before use; [`NbdNetlink::list_backends`] reads whichever applies.
//! On 4.19 a single-socket timeout also fails the request at once instead of
//! requeueing it (docs/kernel-floor.md, A4), which md handles the same way.
//!
//! Modules: `netlink` holds the socket and the commands (the only unsafe
//! code, libc calls on the socket), `codec` the message encoding and
//! decoding (pure, tested on exact bytes), `sysfs` the discovery of
//! connected devices through `/sys/block` (tested on a fake tree), and
//! `backends` the agent-kept map for kernels without identifiers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use devicemapper::Device;

mod backends;
mod codec;
mod netlink;
mod sysfs;

pub use backends::{BackendEntry, BackendFile, DEFAULT_BACKEND_FILE, verified};
pub use netlink::{BackendLookup, NbdEvents, NbdNetlink};
pub use sysfs::{
    device_number, device_size_bytes, find_by_backend, find_by_backend_in, list_backends,
    list_backends_in,
};

/// Errors of the NBD netlink client. Each message says what to check next.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("generic netlink family \"nbd\" not found: load the nbd kernel module (modprobe nbd)")]
    FamilyNotFound,
    #[error("netlink socket {op} failed: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel rejected NBD {cmd}: {source} (see dmesg; EPERM needs CAP_SYS_ADMIN, \
         EINVAL often means a wrong index, a busy device or a backend mismatch)"
    )]
    Kernel {
        cmd: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink message from the kernel: {0}")]
    Malformed(String),
    #[error("no reply from the kernel to NBD {0} within the netlink timeout")]
    NoReply(&'static str),
    #[error("invalid NBD connect request: {0}")]
    InvalidRequest(String),
    #[error(
        "NBD backend file {path}: {reason} (the head keeps which /dev/nbdN imports which leg \
         there, because this kernel (before Linux 5.14) does not keep backend identifiers)"
    )]
    BackendFile { path: PathBuf, reason: String },
    #[error("reading {path}: {source}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = NbdError> = std::result::Result<T, E>;

/// Index of a kernel NBD device: `/dev/nbd<index>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NbdIndex(pub u32);

impl NbdIndex {
    /// The devtmpfs node, `/dev/nbdN`.
    pub fn dev_path(self) -> PathBuf {
        PathBuf::from(format!("/dev/nbd{}", self.0))
    }

    /// The device number, read from sysfs. Not computed from the index,
    /// because the minor depends on the module's `max_part` parameter.
    pub fn device(self) -> Result<Device> {
        device_number(Path::new("/sys/block"), self)
    }
}

impl std::fmt::Display for NbdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nbd{}", self.0)
    }
}

/// NBD transmission flags (the u16 the server announces), as the kernel wants
/// them in `SERVER_FLAGS`.
pub mod flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// What to connect. Build with [`ConnectRequest::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `None` lets the kernel pick (or create) a free device.
    pub index: Option<u32>,
    pub size_bytes: u64,
    /// Logical block size; 4096 so md and filesystems never issue sub-page I/O.
    pub block_size_bytes: u64,
    /// Transmission flags from the handshake (`ExportInfo::transmission_flags`).
    pub server_flags: u16,
    /// Per-request timeout, in whole seconds (the kernel's unit; fractions are
    /// dropped). Must be ≥ 1 s: zero means "never fail" in the kernel, which
    /// would hang the mirror on a dead leg.
    pub timeout: Duration,
    /// How long I/O waits for a RECONFIGURE after the socket died, before it
    /// fails with EIO, in whole seconds (0 = fail at once). Short for mirror
    /// legs, so md degrades quickly.
    pub dead_conn_timeout: Duration,
    /// Stored by the kernel and shown in `/sys/block/nbdN/backend`: lets a
    /// restarted agent find its devices again. Required by RECONFIGURE.
    pub backend_identifier: String,
}

impl ConnectRequest {
    pub fn new(size_bytes: u64, server_flags: u16, backend_identifier: impl Into<String>) -> Self {
        ConnectRequest {
            index: None,
            size_bytes,
            block_size_bytes: 4096,
            server_flags,
            timeout: Duration::from_secs(10),
            dead_conn_timeout: Duration::from_secs(2),
            backend_identifier: backend_identifier.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NbdError::InvalidRequest(m));
        if !self.block_size_bytes.is_power_of_two()
            || !(512..=4096).contains(&self.block_size_bytes)
        {
            return bad(format!(
                "block size {} must be a power of two between 512 and 4096",
                self.block_size_bytes
            ));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(self.block_size_bytes) {
            return bad(format!(
                "size {} must be a non-zero multiple of the block size {}",
                self.size_bytes, self.block_size_bytes
            ));
        }
        if self.timeout.as_secs() == 0 {
            return bad(
                "timeout must be at least 1 s (0 means the kernel never fails a request)".into(),
            );
        }
        validate_backend_identifier(&self.backend_identifier)?;
        if self.server_flags & flags::HAS_FLAGS == 0 {
            return bad("server flags lack HAS_FLAGS: pass the flags from the handshake".into());
        }
        Ok(())
    }
}

pub(super) fn validate_backend_identifier(id: &str) -> Result<()> {
    // The sysfs file is line-oriented and netlink strings are NUL-terminated.
    if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_control() || c == ' ') {
        return Err(NbdError::InvalidRequest(format!(
            "backend identifier {id:?} must be 1-255 printable characters without spaces"
        )));
    }
    Ok(())
}

/// Events of the nbd multicast group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdEvent {
    /// A socket of this device died; I/O waits `dead_conn_timeout` for a
    /// RECONFIGURE, then fails.
    LinkDead(NbdIndex),
}

/// One entry of [`NbdNetlink::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdDeviceStatus {
    pub index: NbdIndex,
    /// The device has a configuration (was connected and not yet
    /// disconnected). A device whose server died stays "connected" until it is
    /// disconnected.
    pub connected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn request() -> ConnectRequest {
        let mut r = ConnectRequest::new(
            64 << 20,
            flags::HAS_FLAGS | flags::SEND_FLUSH,
            "srv-a/chunk-7",
        );
        r.timeout = Duration::from_secs(5);
        r.dead_conn_timeout = Duration::from_secs(1);
        r
    }

    /// Requests the kernel would accept but that would hurt us are refused.
    #[test]
    fn connect_request_validation() {
        assert!(request().validate().is_ok());
        let mut r = request();
        r.timeout = Duration::ZERO;
        assert!(r.validate().unwrap_err().to_string().contains("timeout"));
        let mut r = request();
        r.block_size_bytes = 3000;
        assert!(r.validate().is_err());
        let mut r = request();
        r.size_bytes = 4097;
        assert!(r.validate().is_err());
        let mut r = request();
        r.backend_identifier = "a b".into();
        assert!(r.validate().is_err());
        let mut r = request();
        r.server_flags = 0;
        assert!(r.validate().is_err());
    }
}
