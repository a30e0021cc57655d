//! NBD wire format: constants, fixed-size headers, and check-then-parse.
//!
//! Everything that turns bytes into protocol values (and back) lives here and
//! nowhere else, so the handshake, the connection loop and the client never
//! index into raw buffers. Parsing is split in two steps, as in mini-redis's
//! `frame.rs`: [`RequestHeader::check`] looks at a buffer and says whether a
//! whole, well-formed header is present (or how many bytes are still missing)
//! without allocating; only then does [`RequestHeader::parse`] build the value.
//! The payload length in a header is validated here, before anybody allocates a
//! buffer of that size.
//!
//! Numbers are big-endian on the wire. Names follow the NBD specification
//! (`doc/proto.md` of NetworkBlockDevice/nbd) so they can be grepped for there.

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply the server sends in fixed newstyle.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server to client, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flags (client to server, 32 bits). Any other bit makes the server
/// drop the connection, as the specification requires.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

/// Transmission flags (16 bits), sent with the export size.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Option codes (client to server).
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply types. Bit 31 marks an error.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Information types inside `NBD_REP_INFO` and in `NBD_OPT_INFO`/`GO` requests.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags (16 bits) in a request.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Error values in a simple reply. The specification fixes these numbers; they
/// are not the host's errno values, even where they happen to coincide.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Largest READ or WRITE payload the server accepts, and the maximum block
/// size it advertises. The Linux kernel client never sends more (its
/// `max_hw_sectors` is 65536 sectors), and a client that does gets an error
/// before any buffer of that size exists.
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;
/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`: the page size,
/// below which buffered I/O turns into read-modify-write.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// Minimum block size advertised: the server does positional I/O at any byte
/// offset, so it imposes no alignment.
pub const MIN_BLOCK_BYTES: u32 = 1;

/// Longest option payload the server reads. The largest legitimate option is
/// `NBD_OPT_GO` with a 4096-byte name (the specification's limit on strings)
/// plus a short list of information requests; anything longer is a hostile or
/// broken client, and the connection is dropped without reading the payload.
pub const MAX_OPTION_BYTES: u32 = 4096 + 4 + 2 + 2 * 64;
/// Longest export name, from the specification's limit on strings.
pub const MAX_NAME_BYTES: usize = 4096;

/// Sizes of the fixed headers.
pub const REQUEST_HEADER_BYTES: usize = 28;
pub const SIMPLE_REPLY_BYTES: usize = 16;
pub const OPTION_HEADER_BYTES: usize = 16;
pub const OPTION_REPLY_HEADER_BYTES: usize = 20;

/// Transmission command types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandType {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// A type this server does not know; answered with `EINVAL`.
    Unknown(u16),
}

impl CommandType {
    pub fn from_wire(value: u16) -> Self {
        match value {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disconnect,
            3 => Self::Flush,
            4 => Self::Trim,
            5 => Self::Cache,
            6 => Self::WriteZeroes,
            7 => Self::BlockStatus,
            other => Self::Unknown(other),
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Disconnect => 2,
            Self::Flush => 3,
            Self::Trim => 4,
            Self::Cache => 5,
            Self::WriteZeroes => 6,
            Self::BlockStatus => 7,
            Self::Unknown(other) => other,
        }
    }

    /// The specification's name, for logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "NBD_CMD_READ",
            Self::Write => "NBD_CMD_WRITE",
            Self::Disconnect => "NBD_CMD_DISC",
            Self::Flush => "NBD_CMD_FLUSH",
            Self::Trim => "NBD_CMD_TRIM",
            Self::Cache => "NBD_CMD_CACHE",
            Self::WriteZeroes => "NBD_CMD_WRITE_ZEROES",
            Self::BlockStatus => "NBD_CMD_BLOCK_STATUS",
            Self::Unknown(_) => "unknown command",
        }
    }
}

/// Why a buffer does not (yet) hold a valid frame. `Incomplete` is the normal
/// "read more" outcome and carries no allocation, hence a small enum rather
/// than a boxed error (see mini-redis `frame.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// At least this many more bytes are needed.
    Incomplete { missing_bytes: usize },
    /// The frame does not start with the expected magic number: the peer is
    /// not speaking NBD or the stream lost sync; the connection must close.
    BadMagic { found: u64 },
    /// A WRITE announces a payload larger than [`MAX_PAYLOAD_BYTES`]. The
    /// payload cannot be skipped cheaply, so the connection must close.
    PayloadTooLarge { length_bytes: u32 },
}

/// A transmission request header (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: CommandType,
    /// Opaque to the server; echoed unchanged in the reply. The kernel packs a
    /// per-command counter and its tag in here.
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    /// Checks that `buf` starts with a complete, acceptable request header.
    /// Returns the number of payload bytes that follow the header (non-zero
    /// only for WRITE). Never allocates.
    pub fn check(buf: &[u8]) -> Result<u32, FrameError> {
        if buf.len() < REQUEST_HEADER_BYTES {
            return Err(FrameError::Incomplete {
                missing_bytes: REQUEST_HEADER_BYTES - buf.len(),
            });
        }
        let magic = be_u32(buf, 0);
        if magic != REQUEST_MAGIC {
            return Err(FrameError::BadMagic {
                found: u64::from(magic),
            });
        }
        let command = CommandType::from_wire(be_u16(buf, 6));
        let length = be_u32(buf, 24);
        if command == CommandType::Write {
            if length > MAX_PAYLOAD_BYTES {
                return Err(FrameError::PayloadTooLarge {
                    length_bytes: length,
                });
            }
            return Ok(length);
        }
        Ok(0)
    }

    /// Parses a header that [`RequestHeader::check`] accepted.
    pub fn parse(buf: &[u8; REQUEST_HEADER_BYTES]) -> Self {
        Self {
            flags: be_u16(buf, 4),
            command: CommandType::from_wire(be_u16(buf, 6)),
            cookie: be_u64(buf, 8),
            offset: be_u64(buf, 16),
            length: be_u32(buf, 24),
        }
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        let mut out = [0u8; REQUEST_HEADER_BYTES];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_wire().to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A simple reply header (16 bytes); READ data follows a successful one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_BYTES] {
        let mut out = [0u8; SIMPLE_REPLY_BYTES];
        out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.error.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out
    }

    pub fn parse(buf: &[u8; SIMPLE_REPLY_BYTES]) -> Result<Self, FrameError> {
        let magic = be_u32(buf, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(FrameError::BadMagic {
                found: u64::from(magic),
            });
        }
        Ok(Self {
            error: be_u32(buf, 4),
            cookie: be_u64(buf, 8),
        })
    }
}

/// A client option header (16 bytes); `length` bytes of option data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    /// Checks the magic and bounds the payload length before anything is
    /// allocated for it.
    pub fn parse(buf: &[u8; OPTION_HEADER_BYTES]) -> Result<Self, FrameError> {
        let magic = be_u64(buf, 0);
        if magic != IHAVEOPT {
            return Err(FrameError::BadMagic { found: magic });
        }
        let header = Self {
            option: be_u32(buf, 8),
            length: be_u32(buf, 12),
        };
        if header.length > MAX_OPTION_BYTES {
            return Err(FrameError::PayloadTooLarge {
                length_bytes: header.length,
            });
        }
        Ok(header)
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_BYTES] {
        let mut out = [0u8; OPTION_HEADER_BYTES];
        out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// An option reply header (20 bytes); `length` bytes of reply data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_BYTES] {
        let mut out = [0u8; OPTION_REPLY_HEADER_BYTES];
        out[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        out[16..20].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn parse(buf: &[u8; OPTION_REPLY_HEADER_BYTES]) -> Result<Self, FrameError> {
        let magic = be_u64(buf, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        Ok(Self {
            option: be_u32(buf, 8),
            reply_type: be_u32(buf, 12),
            length: be_u32(buf, 16),
        })
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and a list of
/// information requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Parses option data; `None` if the lengths inside do not add up, which
    /// the server answers with `NBD_REP_ERR_INVALID`.
    pub fn parse(data: &[u8]) -> Option<Self> {
        if data.len() < 6 {
            return None;
        }
        let name_len = usize::try_from(be_u32(data, 0)).ok()?;
        let after_name = name_len.checked_add(4)?;
        if name_len > MAX_NAME_BYTES || after_name.checked_add(2)? > data.len() {
            return None;
        }
        let name = data[4..after_name].to_vec();
        let count = usize::from(be_u16(data, after_name));
        let list = &data[after_name + 2..];
        if list.len() != count * 2 {
            return None;
        }
        let requests = list.chunks_exact(2).map(|c| be_u16(c, 0)).collect();
        Some(Self { name, requests })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.name.len() + 2 * self.requests.len());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for request in &self.requests {
            out.extend_from_slice(&request.to_be_bytes());
        }
        out
    }
}

/// Payload of `NBD_REP_INFO` carrying `NBD_INFO_EXPORT`.
pub fn encode_info_export(size_bytes: u64, transmission_flags: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size_bytes.to_be_bytes());
    out[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// Payload of `NBD_REP_INFO` carrying `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(minimum: u32, preferred: u32, maximum: u32) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&minimum.to_be_bytes());
    out[6..10].copy_from_slice(&preferred.to_be_bytes());
    out[10..14].copy_from_slice(&maximum.to_be_bytes());
    out
}

/// Name of an option reply error, for messages.
pub fn reply_type_name(reply_type: u32) -> &'static str {
    match reply_type {
        REP_ACK => "NBD_REP_ACK",
        REP_SERVER => "NBD_REP_SERVER",
        REP_INFO => "NBD_REP_INFO",
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        _ => "unknown reply type",
    }
}

/// Name of a transmission error value, for messages.
pub fn error_name(error: u32) -> &'static str {
    match error {
        0 => "success",
        EPERM => "EPERM (operation not permitted)",
        EIO => "EIO (input/output error)",
        ENOMEM => "ENOMEM (out of memory)",
        EINVAL => "EINVAL (invalid argument)",
        ENOSPC => "ENOSPC (beyond the end of the export, or no space left)",
        EOVERFLOW => "EOVERFLOW (value too large)",
        ENOTSUP => "ENOTSUP (not supported)",
        ESHUTDOWN => "ESHUTDOWN (server shutting down)",
        _ => "unknown error value",
    }
}

// The callers guarantee the lengths (fixed-size arrays or checked slices), so
// these index without re-checking.
fn be_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads a big-endian u64 from a checked slice; shared with the client.
pub(crate) fn read_be_u64(buf: &[u8], at: usize) -> u64 {
    be_u64(buf, at)
}

/// Reads a big-endian u32 from a checked slice; shared with the client.
pub(crate) fn read_be_u32(buf: &[u8], at: usize) -> u32 {
    be_u32(buf, at)
}

/// Reads a big-endian u16 from a checked slice; shared with the client.
pub(crate) fn read_be_u16(buf: &[u8], at: usize) -> u16 {
    be_u16(buf, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: CommandType, length: u32) -> RequestHeader {
        RequestHeader {
            flags: CMD_FLAG_FUA,
            command,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1122_3344_5566_7788,
            length,
        }
    }

    // Proves check reports exactly how many bytes are missing for every
    // truncation of a header, so the connection reads no more than it needs.
    #[test]
    fn check_reports_missing_bytes_for_short_buffers() {
        let bytes = header(CommandType::Read, 512).encode();
        for len in 0..REQUEST_HEADER_BYTES {
            assert_eq!(
                RequestHeader::check(&bytes[..len]),
                Err(FrameError::Incomplete {
                    missing_bytes: REQUEST_HEADER_BYTES - len
                })
            );
        }
        assert_eq!(RequestHeader::check(&bytes), Ok(0));
    }

    // Proves a header survives encode/parse unchanged, cookie included.
    #[test]
    fn request_round_trips() {
        let original = header(CommandType::Write, 4096);
        let bytes = original.encode();
        assert_eq!(RequestHeader::check(&bytes), Ok(4096));
        assert_eq!(RequestHeader::parse(&bytes), original);
    }

    // Proves a wrong magic is rejected before anything else is looked at.
    #[test]
    fn check_rejects_bad_magic() {
        let mut bytes = header(CommandType::Read, 1).encode();
        bytes[0] ^= 0xff;
        assert!(matches!(
            RequestHeader::check(&bytes),
            Err(FrameError::BadMagic { .. })
        ));
    }

    // Proves an oversized WRITE is refused from the header alone, while an
    // oversized READ passes the frame check (it has no payload to skip and is
    // answered with EINVAL later).
    #[test]
    fn check_bounds_write_payload_only() {
        let at_limit = header(CommandType::Write, MAX_PAYLOAD_BYTES).encode();
        assert_eq!(RequestHeader::check(&at_limit), Ok(MAX_PAYLOAD_BYTES));
        let huge = header(CommandType::Write, u32::MAX).encode();
        assert_eq!(
            RequestHeader::check(&huge),
            Err(FrameError::PayloadTooLarge {
                length_bytes: u32::MAX
            })
        );
        let huge_read = header(CommandType::Read, u32::MAX).encode();
        assert_eq!(RequestHeader::check(&huge_read), Ok(0));
    }

    // Proves unknown command numbers are kept (for the EINVAL reply) rather
    // than rejected at the frame level.
    #[test]
    fn unknown_command_types_survive_parsing() {
        let bytes = header(CommandType::Unknown(42), 0).encode();
        assert_eq!(
            RequestHeader::parse(&bytes).command,
            CommandType::Unknown(42)
        );
        for wire in 0..8u16 {
            assert_eq!(CommandType::from_wire(wire).to_wire(), wire);
        }
    }

    // Proves option headers check magic and bound the length before the
    // payload is read.
    #[test]
    fn option_header_rejects_bad_magic_and_huge_length() {
        let good = OptionHeader {
            option: OPT_GO,
            length: 10,
        };
        assert_eq!(OptionHeader::parse(&good.encode()), Ok(good));
        let huge = OptionHeader {
            option: OPT_GO,
            length: u32::MAX,
        };
        assert!(matches!(
            OptionHeader::parse(&huge.encode()),
            Err(FrameError::PayloadTooLarge { .. })
        ));
        let mut bad = good.encode();
        bad[7] ^= 1;
        assert!(matches!(
            OptionHeader::parse(&bad),
            Err(FrameError::BadMagic { .. })
        ));
    }

    // Proves INFO/GO data parsing accepts exact lengths and refuses every
    // inconsistent one, including a name length that would overflow.
    #[test]
    fn info_request_parsing() {
        let request = InfoRequest {
            name: b"leg-secret".to_vec(),
            requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let bytes = request.encode();
        assert_eq!(InfoRequest::parse(&bytes), Some(request.clone()));
        // Any truncation or extension breaks the length arithmetic.
        for len in 0..bytes.len() {
            assert_eq!(InfoRequest::parse(&bytes[..len]), None, "len {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(InfoRequest::parse(&longer), None);
        // A name length near u32::MAX must not overflow or allocate.
        let mut hostile = bytes.clone();
        hostile[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(InfoRequest::parse(&hostile), None);
        // Empty name, no requests: the smallest valid form.
        assert_eq!(
            InfoRequest::parse(&[0, 0, 0, 0, 0, 0]),
            Some(InfoRequest {
                name: vec![],
                requests: vec![]
            })
        );
    }

    // Proves replies encode the magic and cookie where clients look for them.
    #[test]
    fn replies_round_trip() {
        let reply = SimpleReply {
            error: EINVAL,
            cookie: u64::MAX - 7,
        };
        assert_eq!(SimpleReply::parse(&reply.encode()), Ok(reply));
        let option_reply = OptionReplyHeader {
            option: OPT_GO,
            reply_type: REP_ERR_UNKNOWN,
            length: 0,
        };
        assert_eq!(
            OptionReplyHeader::parse(&option_reply.encode()),
            Ok(option_reply)
        );
        let info = encode_info_export(1 << 40, TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH);
        assert_eq!(&info[0..2], &[0, 0]);
        assert_eq!(read_be_u64(&info, 2), 1 << 40);
        assert_eq!(read_be_u16(&info, 10), TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH);
    }
}
