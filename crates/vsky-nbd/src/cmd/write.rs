//! `NBD_CMD_WRITE`: positional write of the request payload, durable before
//! the reply when FUA is set.

use crate::backing::{Backing, Geometry};
use crate::buffer::{Buffer, BufferPool};
use crate::proto::{self, CMD_FLAG_FUA, RequestHeader};

use super::Outcome;

#[derive(Debug)]
pub(crate) struct Write {
    file_offset: u64,
    /// Read off the socket straight into a pooled buffer.
    data: Buffer,
    fua: bool,
}

impl Write {
    /// The payload has always been read off the socket by now (even for a
    /// refused write), so refusing keeps the stream in sync.
    pub fn parse(header: &RequestHeader, data: Buffer, geometry: Geometry) -> Result<Self, u32> {
        super::check_flags(header, CMD_FLAG_FUA)?;
        super::check_writable(geometry)?;
        let file_offset = super::confine(header, geometry, proto::ENOSPC)?;
        debug_assert_eq!(data.len(), header.length as usize);
        Ok(Self {
            file_offset,
            data,
            fua: header.flags & CMD_FLAG_FUA != 0,
        })
    }

    /// FUA writes wait for the device; the connection runs them on the pool.
    pub fn fua(&self) -> bool {
        self.fua
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn apply(self, backing: &Backing, buffers: &BufferPool) -> Outcome {
        let outcome = Outcome::from_io(backing.write(self.file_offset, &self.data, self.fua));
        buffers.give(self.data);
        outcome
    }
}
