//! The generic netlink socket and the nbd family's commands: connect,
//! disconnect, reconfigure and status ([`NbdNetlink`]), and the link-dead
//! notices of its multicast group ([`NbdEvents`]). The libc calls on the
//! socket are the only unsafe code of the NBD client.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::backends::{BackendEntry, BackendFile, verified};
use super::codec::*;
use super::{
    ConnectRequest, NbdDeviceStatus, NbdError, NbdEvent, NbdIndex, Result, flags, sysfs,
    validate_backend_identifier,
};

/// A generic netlink socket bound to the kernel's "nbd" family, for
/// commands. Blocking: call it from a blocking thread in async code.
pub struct NbdNetlink {
    sock: NlSocket,
    family_id: u16,
    /// Whether the kernel keeps backend identifiers (Linux ≥ 5.14).
    kernel_backends: bool,
    /// Where devices are looked up by backend.
    lookup: BackendLookup,
}

/// Where [`NbdNetlink::list_backends`] finds which device imports which
/// backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendLookup {
    /// The kernel's `/sys/block/nbdN/backend` (Linux ≥ 5.14).
    Kernel,
    /// The agent's own map, checked against the kernel before use (for
    /// kernels without identifiers; see the `backends` module).
    File(BackendFile),
}

impl std::fmt::Display for BackendLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendLookup::Kernel => write!(f, "the kernel (/sys/block/nbdN/backend)"),
            BackendLookup::File(file) => write!(f, "the agent's file {}", file.path().display()),
        }
    }
}

/// Replies larger than this are truncated by recv; the STATUS reply for the
/// maximum of 2^20 devices is far larger, but 64 KiB covers ~5000 devices.
const RECV_BUF_BYTES: usize = 64 * 1024;
/// Bound on how long we wait for the kernel (disconnect flushes a workqueue).
const NETLINK_TIMEOUT: Duration = Duration::from_secs(60);

impl NbdNetlink {
    /// Opens a netlink socket and resolves the "nbd" family id. Devices
    /// are looked up through the kernel's backend identifiers.
    pub fn open() -> Result<Self> {
        let (sock, family) = NlSocket::open_nbd()?;
        Ok(NbdNetlink {
            sock,
            family_id: family.id,
            kernel_backends: family.has_backend_identifier(),
            lookup: BackendLookup::Kernel,
        })
    }

    /// [`NbdNetlink::open`] for the head: probes whether the kernel keeps
    /// backend identifiers (`CTRL_ATTR_MAXATTR` of the family reaches
    /// `NBD_ATTR_BACKEND_IDENTIFIER`), and if not, keeps the map in `file`
    /// instead. `always_file` uses the file on any kernel, so that the
    /// fallback runs where a newer kernel can check it (the lab).
    pub fn open_with_backend_file(file: BackendFile, always_file: bool) -> Result<Self> {
        let mut nl = Self::open()?;
        if always_file || !nl.kernel_backends {
            nl.lookup = BackendLookup::File(file);
        }
        Ok(nl)
    }

    /// Whether the kernel keeps backend identifiers (Linux ≥ 5.14).
    pub fn kernel_keeps_backends(&self) -> bool {
        self.kernel_backends
    }

    /// Where devices are looked up by backend.
    pub fn backend_lookup(&self) -> &BackendLookup {
        &self.lookup
    }

    /// Every connected device with its backend identifier, sorted by index.
    /// With [`BackendLookup::File`], only entries the kernel confirms
    /// (connected, with the recorded size) count, and the others are
    /// dropped from the file.
    pub fn list_backends(&mut self) -> Result<Vec<(NbdIndex, String)>> {
        let file = match &self.lookup {
            BackendLookup::Kernel => return sysfs::list_backends(),
            BackendLookup::File(file) => file.clone(),
        };
        let _file = BackendFile::lock();
        let entries = file.load()?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let connected = self.connected()?;
        let sys_block = Path::new("/sys/block");
        let kept = verified(&entries, &connected, |i| {
            sysfs::device_size_bytes(sys_block, i).ok()
        });
        if kept.len() != entries.len() {
            for gone in entries.iter().filter(|e| !kept.contains(e)) {
                tracing::info!(device = %gone.index, backend = %gone.backend,
                    "NBD device no longer holds its recorded import; forgetting it");
            }
            file.store(&kept)?;
        }
        Ok(kept.into_iter().map(|e| (e.index, e.backend)).collect())
    }

    /// The connected device whose backend identifier is `id`.
    pub fn find_by_backend(&mut self, id: &str) -> Result<Option<NbdIndex>> {
        Ok(self
            .list_backends()?
            .into_iter()
            .find(|(_, b)| b == id)
            .map(|(i, _)| i))
    }

    pub fn connect(
        &mut self,
        req: &ConnectRequest,
        sockets: &[BorrowedFd<'_>],
    ) -> Result<NbdIndex> {
        req.validate()?;
        if sockets.is_empty() {
            return Err(NbdError::InvalidRequest(
                "at least one socket is required".into(),
            ));
        }
        if sockets.len() > 1 && req.server_flags & flags::CAN_MULTI_CONN == 0 {
            return Err(NbdError::InvalidRequest(
                "several sockets need a server that announces CAN_MULTI_CONN".into(),
            ));
        }
        for s in sockets {
            set_blocking(*s)?;
        }
        let attrs = encode_connect(req, sockets.iter().map(|s| s.as_raw_fd() as u32));
        let replies = self.sock.transact(
            self.family_id,
            NBD_CMD_CONNECT,
            NBD_GENL_VERSION,
            &attrs,
            "CONNECT",
        )?;
        let mut index = None;
        for msg in &replies {
            for a in Attrs::new(&msg.attrs) {
                let a = a?;
                if a.kind == NBD_ATTR_INDEX && index.is_none() {
                    index = Some(NbdIndex(a.u32()?));
                }
            }
        }
        let index = index
            .ok_or_else(|| NbdError::Malformed("CONNECT reply without NBD_ATTR_INDEX".into()))?;
        if let BackendLookup::File(file) = &self.lookup {
            let recorded = file.record(BackendEntry {
                index,
                size_bytes: req.size_bytes,
                backend: req.backend_identifier.clone(),
            });
            if let Err(e) = recorded {
                // A device nobody can find again would leak: undo it.
                if let Err(undo) = self.disconnect_device(index) {
                    tracing::warn!(device = %index, error = %undo,
                        "cannot disconnect an NBD device whose import could not be recorded");
                }
                return Err(e);
            }
        }
        Ok(index)
    }

    /// Disconnects a device: the kernel sends NBD_CMD_DISC, shuts the sockets
    /// down and fails queued I/O. Disconnecting an unconfigured device is a
    /// no-op in the kernel; an unknown index is an error (EINVAL).
    pub fn disconnect(&mut self, index: NbdIndex) -> Result<()> {
        self.disconnect_device(index)?;
        if let BackendLookup::File(file) = &self.lookup {
            file.forget(index)?;
        }
        Ok(())
    }

    fn disconnect_device(&mut self, index: NbdIndex) -> Result<()> {
        let mut attrs = AttrWriter::default();
        attrs.u32(NBD_ATTR_INDEX, index.0);
        self.sock.transact(
            self.family_id,
            NBD_CMD_DISCONNECT,
            NBD_GENL_VERSION,
            &attrs,
            "DISCONNECT",
        )?;
        Ok(())
    }

    /// Replaces a dead socket of a connected device with a fresh handshaken
    /// one. The kernel only fills *dead* slots: if no slot is dead it ignores
    /// the socket and still returns success, so callers should check that the
    /// link was reported dead (I/O errors, status) before relying on it.
    pub fn reconfigure(
        &mut self,
        index: NbdIndex,
        backend_identifier: &str,
        sockets: &[BorrowedFd<'_>],
    ) -> Result<()> {
        validate_backend_identifier(backend_identifier)?;
        for s in sockets {
            set_blocking(*s)?;
        }
        let mut attrs = AttrWriter::default();
        attrs.u32(NBD_ATTR_INDEX, index.0);
        attrs.string(NBD_ATTR_BACKEND_IDENTIFIER, backend_identifier);
        encode_sockets(&mut attrs, sockets.iter().map(|s| s.as_raw_fd() as u32));
        self.sock.transact(
            self.family_id,
            NBD_CMD_RECONFIGURE,
            NBD_GENL_VERSION,
            &attrs,
            "RECONFIGURE",
        )?;
        Ok(())
    }

    /// All NBD devices the kernel knows, with their connected state.
    pub fn status(&mut self) -> Result<Vec<NbdDeviceStatus>> {
        let attrs = AttrWriter::default();
        let replies = self.sock.transact(
            self.family_id,
            NBD_CMD_STATUS,
            NBD_GENL_VERSION,
            &attrs,
            "STATUS",
        )?;
        let mut out = Vec::new();
        for msg in &replies {
            out.extend(decode_status(&msg.attrs)?);
        }
        Ok(out)
    }

    /// The indexes of all connected devices.
    pub fn connected(&mut self) -> Result<Vec<NbdIndex>> {
        Ok(self
            .status()?
            .into_iter()
            .filter(|d| d.connected)
            .map(|d| d.index)
            .collect())
    }
}

/// A raw NETLINK_GENERIC socket with request/ACK bookkeeping.
struct NlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NlSocket {
    fn open() -> Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(sock_err("socket"));
        }
        // SAFETY: raw is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(NlSocket { fd, seq: 0 })
    }

    /// A socket on which the "nbd" family resolves, and the family. Kernels
    /// register that family in the initial network namespace only (it is
    /// not `netnsok`, checked on 6.1), so an agent running in a network
    /// namespace of its own (a container's; the VM lab's second head) opens
    /// the socket there instead, on a thread that enters it only for that
    /// (CAP_SYS_ADMIN, which the head role needs anyway). The NBD sockets
    /// it hands the kernel stay in the agent's own namespace.
    fn open_nbd() -> Result<(Self, FamilyInfo)> {
        // Once found there, every later socket goes straight to the
        // initial namespace (a head opens one per assembly worker).
        static IN_INITIAL_NETNS: std::sync::atomic::AtomicBool =
            std::sync::atomic::AtomicBool::new(false);
        use std::sync::atomic::Ordering::Relaxed;
        if !IN_INITIAL_NETNS.load(Relaxed) {
            let mut sock = NlSocket::open()?;
            match sock.resolve_family() {
                Err(NbdError::FamilyNotFound) => {}
                other => return other.map(|family| (sock, family)),
            }
        }
        let Some(mut sock) = NlSocket::open_in_initial_netns()? else {
            return Err(NbdError::FamilyNotFound);
        };
        let family = sock.resolve_family()?;
        IN_INITIAL_NETNS.store(true, Relaxed);
        Ok((sock, family))
    }

    /// A socket in PID 1's network namespace, or `None` when that is ours
    /// already (or cannot be looked at).
    fn open_in_initial_netns() -> Result<Option<Self>> {
        let ns_of = |path: &str| std::fs::read_link(path).ok();
        let initial = ns_of("/proc/1/ns/net");
        if initial.is_none() || initial == ns_of("/proc/thread-self/ns/net") {
            return Ok(None);
        }
        let ns = std::fs::File::open("/proc/1/ns/net").map_err(|source| NbdError::Socket {
            op: "open /proc/1/ns/net",
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a namespace descriptor we hold open;
                // it moves this short-lived thread only, which opens the
                // socket and ends.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(sock_err("setns into the initial network namespace"));
                }
                NlSocket::open().map(Some)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NbdError::Socket {
                    op: "open in the initial network namespace",
                    source: std::io::Error::other("the opening thread panicked"),
                })
            })
        })
    }

    fn resolve_family(&mut self) -> Result<FamilyInfo> {
        let mut attrs = AttrWriter::default();
        attrs.string(CTRL_ATTR_FAMILY_NAME, NBD_FAMILY_NAME);
        let replies =
            match self.transact(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, &attrs, "family lookup") {
                Err(NbdError::Kernel { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Err(NbdError::FamilyNotFound);
                }
                other => other?,
            };
        replies
            .iter()
            .find_map(|m| decode_family(&m.attrs).transpose())
            .unwrap_or(Err(NbdError::FamilyNotFound))
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        // SAFETY: sending an initialised buffer to the kernel (a zeroed
        // sockaddr_nl is pid 0, the kernel).
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(sock_err("sendto"));
        }
        Ok(())
    }

    /// Receives one datagram, waiting at most `timeout`; `None` on timeout.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NbdError::Socket {
                    op: "poll",
                    source: e,
                });
            }
            if rc == 0 {
                return Ok(None);
            }
            // SAFETY: recv into our own buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                    _ => {
                        return Err(NbdError::Socket {
                            op: "recv",
                            source: e,
                        });
                    }
                }
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(NbdError::Malformed(format!(
                    "a netlink message of {n} bytes exceeds the {}-byte buffer",
                    buf.len()
                )));
            }
            return Ok(Some(n));
        }
    }

    /// Sends one request with NLM_F_ACK and collects the genl replies up to
    /// the ACK (or the error that replaces it).
    fn transact(
        &mut self,
        family: u16,
        cmd: u8,
        version: u8,
        attrs: &AttrWriter,
        what: &'static str,
    ) -> Result<Vec<GenlMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(&encode_request(family, cmd, version, seq, attrs))?;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; RECV_BUF_BYTES];
        let deadline = std::time::Instant::now() + NETLINK_TIMEOUT;
        // Bounded by the deadline: the kernel sends a reply and an ACK per
        // request; messages for other sequence numbers are skipped.
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(n) = self.recv(&mut buf, left)? else {
                return Err(NbdError::NoReply(what));
            };
            for m in decode_messages(&buf[..n])? {
                if m.seq != seq {
                    continue;
                }
                match m.body {
                    NlBody::Ack | NlBody::Done => return Ok(replies),
                    NlBody::Error(errno) => {
                        return Err(NbdError::Kernel {
                            cmd: what,
                            source: std::io::Error::from_raw_os_error(errno),
                        });
                    }
                    NlBody::Genl(g) => replies.push(g),
                }
            }
        }
    }
}

/// Subscription to the kernel's `nbd_mc_group`: it multicasts LINK_DEAD with
/// the device index whenever a socket of a connected device dies (server
/// crash, timeout). The agent reacts by reconnecting the socket
/// ([`NbdNetlink::reconfigure`]) or, for a mirror leg, by replacing the leg.
pub struct NbdEvents {
    sock: NlSocket,
    family_id: u16,
}

impl NbdEvents {
    /// Joins the "nbd_mc_group" multicast group on a socket of its own (so
    /// command replies and events never mix).
    pub fn subscribe() -> Result<Self> {
        let (sock, family) = NlSocket::open_nbd()?;
        let group = family
            .groups
            .iter()
            .find(|(n, _)| n == NBD_MCAST_GROUP)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                NbdError::Malformed(format!("the nbd family has no {NBD_MCAST_GROUP:?} group"))
            })?;
        // SAFETY: setsockopt with a u32 group id.
        let rc = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(sock_err("setsockopt(NETLINK_ADD_MEMBERSHIP)"));
        }
        Ok(NbdEvents {
            sock,
            family_id: family.id,
        })
    }

    /// The next event, or `None` if none arrived within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<NbdEvent>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(n) = self.sock.recv(&mut buf, left)? else {
                return Ok(None);
            };
            for m in decode_messages(&buf[..n])? {
                if let Some(e) = decode_event(self.family_id, &m)? {
                    return Ok(Some(e));
                }
            }
        }
    }
}

fn sock_err(op: &'static str) -> NbdError {
    NbdError::Socket {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// The kernel's socket I/O does not depend on O_NONBLOCK, but a socket from
/// tokio is non-blocking, and nbd-client hands over blocking sockets; clear it
/// so the kernel sees exactly what it was tested with.
fn set_blocking(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: fcntl on a borrowed, open descriptor.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 {
            return Err(sock_err("fcntl(F_GETFL) on the NBD socket"));
        }
        if fl & libc::O_NONBLOCK != 0
            && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0
        {
            return Err(sock_err("fcntl(F_SETFL) on the NBD socket"));
        }
    }
    Ok(())
}
