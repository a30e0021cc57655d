//! The crate's one error type, [`NbdError`].
//!
//! One variant per kind of failure, each carrying the facts needed to act on
//! it, and each message ending with what to do next. The server only logs
//! these (a misbehaving client must never take the server down); the client
//! and the head-side handshake return them to the agent.

use crate::proto;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed (connect, read or write).
    #[error(
        "NBD connection I/O failed: {0}; check that the storage agent is running and reachable"
    )]
    Io(#[from] std::io::Error),

    /// The peer closed the connection where the protocol expected more.
    #[error(
        "NBD peer closed the connection during {during}; check the peer's log for why it gave up"
    )]
    ConnectionClosed { during: &'static str },

    /// The peer does not speak the NBD fixed newstyle protocol.
    #[error(
        "not an NBD server or client: expected magic {expected:#x} during {during}, got {found:#x}; check the address and port"
    )]
    BadMagic {
        during: &'static str,
        expected: u64,
        found: u64,
    },

    /// The server does not offer fixed newstyle negotiation.
    #[error(
        "NBD server offers handshake flags {flags:#06x} without FIXED_NEWSTYLE; use a newer NBD server"
    )]
    NotFixedNewstyle { flags: u16 },

    /// The client sent flags this server does not know; the specification
    /// requires dropping the connection.
    #[error("NBD client sent unknown client flags {flags:#010x}; upgrade or fix the client")]
    UnknownClientFlags { flags: u32 },

    /// A message announced more payload than the protocol allows.
    #[error(
        "NBD {what} announced {length_bytes} bytes, more than the limit of {limit_bytes}; the peer is broken or hostile"
    )]
    TooLarge {
        what: &'static str,
        length_bytes: u64,
        limit_bytes: u64,
    },

    /// The server does not export this name (or refused to say whether it does).
    #[error(
        "NBD server does not export {name:?}; check the leg's export name and that the storage agent still holds the chunk"
    )]
    UnknownExport { name: String },

    /// The server refused an option for another reason.
    #[error("NBD server rejected option {option} with {reply} ({reply_type:#x}){}; check the server's log", if message.is_empty() { String::new() } else { format!(": {message}") })]
    OptionRejected {
        option: u32,
        reply_type: u32,
        reply: &'static str,
        message: String,
    },

    /// The peer violated the protocol in a way that has no dedicated variant.
    #[error("NBD protocol violation: {detail}; the peer is broken or not an NBD implementation")]
    Protocol { detail: String },

    /// The server answered a transmission request with an error.
    #[error("NBD server failed {command} at offset {offset} length {length}: {}; check the storage agent's log and the export's size", proto::error_name(*error))]
    Request {
        command: &'static str,
        offset: u64,
        length: u64,
        error: u32,
    },

    /// A client-side argument cannot be sent (for example a READ longer than
    /// the largest payload).
    #[error("invalid NBD request: {detail}; split the request or fix the caller")]
    InvalidRequest { detail: String },

    /// The server's handshake took longer than its configured limit.
    #[error("NBD handshake did not finish within {seconds} s; the client is too slow or stuck")]
    HandshakeTimeout { seconds: u64 },
}

impl NbdError {
    pub(crate) fn protocol(detail: impl Into<String>) -> Self {
        Self::Protocol {
            detail: detail.into(),
        }
    }

    /// Maps an unexpected EOF to [`NbdError::ConnectionClosed`], so callers can
    /// tell a peer that hung up from one whose network failed.
    pub(crate) fn from_read(error: std::io::Error, during: &'static str) -> Self {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::ConnectionClosed { during }
        } else {
            Self::Io(error)
        }
    }
}
