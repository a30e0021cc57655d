//! Transmission commands: one small struct per command, as in mini-redis's
//! `cmd/`.
//!
//! Each command validates its own request (flags, read-only, bounds) in
//! `parse`, producing either a ready-to-run value or the NBD error to answer
//! with, and runs itself against the [`Backing`] in `apply`. [`Command`] only
//! dispatches. Validation happens before any I/O and before any buffer is
//! sized from client input, so a hostile request costs nothing but its reply.
//!
//! Error choices follow the specification: unknown commands and flags get
//! `EINVAL`; data-writing requests past the end get `ENOSPC`, other
//! out-of-range requests `EINVAL`; writes to read-only exports `EPERM`.
//! Zero-length requests are refused with `EINVAL` (clients should not send
//! them, and accepting them would need its own bounds rules).

mod cache;
mod flush;
mod read;
mod trim;
mod write;
mod write_zeroes;

use crate::backing::{Backing, Geometry, nbd_error_from_io};
use crate::buffer::{Buffer, BufferPool};
use crate::proto::{self, CommandType, RequestHeader};

pub(crate) use cache::Cache;
pub(crate) use flush::Flush;
pub(crate) use read::Read;
pub(crate) use trim::Trim;
pub(crate) use write::Write;
pub(crate) use write_zeroes::WriteZeroes;

/// A validated request, or the error it is refused with.
#[derive(Debug)]
pub(crate) enum Command {
    Read(Read),
    Write(Write),
    Flush(Flush),
    Trim(Trim),
    WriteZeroes(WriteZeroes),
    Cache(Cache),
    /// Refused without I/O; carries the NBD error value.
    Refused(u32),
}

/// What a command produced: the reply's error value and, for a successful
/// READ, the data that follows the reply header.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub error: u32,
    pub data: Option<Buffer>,
}

impl Outcome {
    pub fn ok() -> Self {
        Self {
            error: 0,
            data: None,
        }
    }

    pub fn failed(error: u32) -> Self {
        Self { error, data: None }
    }

    fn from_io(result: std::io::Result<()>) -> Self {
        match result {
            Ok(()) => Self::ok(),
            Err(error) => Self::failed(nbd_error_from_io(&error)),
        }
    }
}

impl Command {
    /// Validates a request. `payload` is the WRITE data (empty otherwise).
    /// `NBD_CMD_DISC` is handled by the connection loop and never gets here.
    pub fn from_request(header: &RequestHeader, payload: Buffer, geometry: Geometry) -> Self {
        let parsed = match header.command {
            CommandType::Read => Read::parse(header, geometry).map(Self::Read),
            CommandType::Write => Write::parse(header, payload, geometry).map(Self::Write),
            CommandType::Flush => Flush::parse(header, geometry).map(Self::Flush),
            CommandType::Trim => Trim::parse(header, geometry).map(Self::Trim),
            CommandType::WriteZeroes => WriteZeroes::parse(header, geometry).map(Self::WriteZeroes),
            CommandType::Cache => Cache::parse(header, geometry).map(Self::Cache),
            // BLOCK_STATUS needs structured replies, which are never
            // negotiated; DISC is the loop's business.
            CommandType::BlockStatus | CommandType::Disconnect | CommandType::Unknown(_) => {
                Err(proto::EINVAL)
            }
        };
        parsed.unwrap_or_else(Self::Refused)
    }

    /// Runs the command. Blocks: never call it on an async worker.
    pub fn apply(self, backing: &Backing, buffers: &BufferPool) -> Outcome {
        match self {
            Self::Read(cmd) => cmd.apply(backing, buffers),
            Self::Write(cmd) => cmd.apply(backing, buffers),
            Self::Flush(cmd) => cmd.apply(backing),
            Self::Trim(cmd) => cmd.apply(backing),
            Self::WriteZeroes(cmd) => cmd.apply(backing),
            Self::Cache(cmd) => cmd.apply(backing),
            Self::Refused(error) => Outcome::failed(error),
        }
    }
}

/// Refuses flags outside `allowed` for this command.
fn check_flags(header: &RequestHeader, allowed: u16) -> Result<(), u32> {
    if header.flags & !allowed != 0 {
        return Err(proto::EINVAL);
    }
    Ok(())
}

/// Refuses data-changing commands on read-only exports.
fn check_writable(geometry: Geometry) -> Result<(), u32> {
    if geometry.read_only {
        return Err(proto::EPERM);
    }
    Ok(())
}

/// Bounds-checks a non-empty range; `beyond_end` is the error for ranges that
/// start or end past the export.
fn confine(header: &RequestHeader, geometry: Geometry, beyond_end: u32) -> Result<u64, u32> {
    if header.length == 0 {
        return Err(proto::EINVAL);
    }
    geometry
        .confine(header.offset, u64::from(header.length))
        .ok_or(beyond_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{
        CMD_FLAG_DF, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, EINVAL, ENOSPC, EPERM,
    };

    const SIZE: u64 = 1 << 20;

    fn geometry(read_only: bool) -> Geometry {
        Geometry {
            base_bytes: 4096,
            size_bytes: SIZE,
            read_only,
        }
    }

    fn request(command: CommandType, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 7,
            offset,
            length,
        }
    }

    fn refusal(header: RequestHeader, read_only: bool) -> Option<u32> {
        let payload = if header.command == CommandType::Write {
            Buffer::from(vec![0u8; header.length as usize])
        } else {
            Buffer::default()
        };
        match Command::from_request(&header, payload, geometry(read_only)) {
            Command::Refused(error) => Some(error),
            _ => None,
        }
    }

    // Table of requests and the error each must get (None = accepted). This
    // is the validation contract in one place: flags per command, read-only,
    // zero length, bounds with overflow, oversized reads.
    #[test]
    fn validation_table() {
        use CommandType::*;
        // (command, flags, offset, length, read_only, expected refusal)
        type Case = (CommandType, u16, u64, u32, bool, Option<u32>);
        let cases: &[Case] = &[
            (Read, 0, 0, 4096, false, None),
            (Read, CMD_FLAG_FUA, SIZE - 1, 1, true, None),
            (Read, 0, SIZE, 1, false, Some(EINVAL)),
            (Read, 0, u64::MAX, 1, false, Some(EINVAL)),
            (Read, 0, 0, u32::MAX, false, Some(EINVAL)),
            (
                Read,
                0,
                0,
                proto::MAX_PAYLOAD_BYTES + 1,
                false,
                Some(EINVAL),
            ),
            (Read, 0, 0, 0, false, Some(EINVAL)),
            (Read, CMD_FLAG_DF, 0, 512, false, Some(EINVAL)),
            (Read, 1 << 15, 0, 512, false, Some(EINVAL)),
            (Write, CMD_FLAG_FUA, 0, 4096, false, None),
            (Write, 0, SIZE - 4096, 4096, false, None),
            (Write, 0, SIZE - 4095, 4096, false, Some(ENOSPC)),
            (Write, 0, u64::MAX - 1, 4, false, Some(ENOSPC)),
            (Write, 0, 0, 4096, true, Some(EPERM)),
            (Write, CMD_FLAG_NO_HOLE, 0, 4096, false, Some(EINVAL)),
            (Flush, 0, 0, 0, false, None),
            (Flush, CMD_FLAG_FUA, 0, 0, true, None),
            (Flush, 0, 1, 0, false, Some(EINVAL)),
            (Flush, 0, 0, 1, false, Some(EINVAL)),
            (Trim, 0, 0, u32::MAX, false, Some(EINVAL)),
            (Trim, CMD_FLAG_FUA, 0, 65536, false, None),
            (Trim, 0, 0, 65536, true, Some(EPERM)),
            (Trim, CMD_FLAG_NO_HOLE, 0, 65536, false, Some(EINVAL)),
            (
                WriteZeroes,
                CMD_FLAG_NO_HOLE | CMD_FLAG_FUA,
                0,
                65536,
                false,
                None,
            ),
            (WriteZeroes, 0, SIZE, 1, false, Some(ENOSPC)),
            (WriteZeroes, CMD_FLAG_FAST_ZERO, 0, 1, false, Some(EINVAL)),
            (WriteZeroes, 0, 0, 1, true, Some(EPERM)),
            (Cache, 0, 0, 4096, true, None),
            (Cache, 0, SIZE, 1, true, Some(EINVAL)),
            (BlockStatus, 0, 0, 512, false, Some(EINVAL)),
            (Unknown(99), 0, 0, 512, false, Some(EINVAL)),
        ];
        for &(command, flags, offset, length, read_only, expected) in cases {
            let header = request(command, flags, offset, length);
            // Oversized WRITE payloads never reach here (the frame check
            // closes the connection), so only build small ones.
            assert_eq!(
                refusal(header, read_only),
                expected,
                "{command:?} flags {flags:#x} offset {offset} length {length} ro {read_only}"
            );
        }
    }

    // Proves commands run end to end against a real file, confined to the
    // export's range: a write lands at base + offset and nowhere else.
    #[test]
    fn apply_writes_inside_the_range_only() {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&vec![0x55u8; 3 * 4096]).expect("fill");
        let export = crate::Export {
            path: file.path().to_owned(),
            offset_bytes: 4096,
            size_bytes: 4096,
            read_only: false,
            writable_bytes: None,
        };
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let limit = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let backing = Backing::open(&export, flag, limit).expect("open");
        let pool = BufferPool::new(1 << 20);
        let write = request(CommandType::Write, CMD_FLAG_FUA, 0, 4096);
        let outcome =
            Command::from_request(&write, Buffer::from(vec![0xaa; 4096]), backing.geometry())
                .apply(&backing, &pool);
        assert_eq!(outcome.error, 0);
        let read = request(CommandType::Read, 0, 4095, 1);
        let outcome = Command::from_request(&read, Buffer::default(), backing.geometry())
            .apply(&backing, &pool);
        assert_eq!(outcome.data.as_deref(), Some(&[0xaa][..]));
        let contents = std::fs::read(file.path()).expect("read back");
        assert!(contents[..4096].iter().all(|&b| b == 0x55));
        assert!(contents[4096..8192].iter().all(|&b| b == 0xaa));
        assert!(contents[8192..].iter().all(|&b| b == 0x55));
    }
}
