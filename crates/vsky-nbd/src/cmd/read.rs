//! `NBD_CMD_READ`: positional read of a confined range.

use crate::backing::{Backing, Geometry, nbd_error_from_io};
use crate::buffer::BufferPool;
use crate::proto::{self, CMD_FLAG_FUA, RequestHeader};

use super::Outcome;

/// Largest cached read the connection thread copies itself. Larger reads go
/// to the blocking pool, where several copies run in parallel and overlap
/// with receiving the next requests; they amortise the hand-off.
const INLINE_READ_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) struct Read {
    file_offset: u64,
    length: u32,
}

impl Read {
    pub fn parse(header: &RequestHeader, geometry: Geometry) -> Result<Self, u32> {
        // Clients are known to set FUA on reads; it is meaningless here and
        // the specification says to accept it.
        super::check_flags(header, CMD_FLAG_FUA)?;
        // Refused before the reply buffer is sized from the client's number.
        if header.length > proto::MAX_PAYLOAD_BYTES {
            return Err(proto::EINVAL);
        }
        let file_offset = super::confine(header, geometry, proto::EINVAL)?;
        Ok(Self {
            file_offset,
            length: header.length,
        })
    }

    /// Serves the read from the page cache without blocking, if the range is
    /// small and cached; `None` means "run [`Read::apply`] on a thread".
    pub fn try_cached(&self, backing: &Backing, buffers: &BufferPool) -> Option<Outcome> {
        let length = self.length as usize;
        if length > INLINE_READ_MAX_BYTES {
            return None;
        }
        match backing.try_read_cached(self.file_offset, length, buffers.take(length)) {
            Ok(data) => Some(Outcome {
                error: 0,
                data: Some(data),
            }),
            Err(buffer) => {
                buffers.give(buffer);
                None
            }
        }
    }

    pub fn apply(self, backing: &Backing, buffers: &BufferPool) -> Outcome {
        let length = self.length as usize;
        match backing.read(self.file_offset, length, buffers.take(length)) {
            Ok(data) => Outcome {
                error: 0,
                data: Some(data),
            },
            Err(error) => Outcome::failed(nbd_error_from_io(&error)),
        }
    }
}
