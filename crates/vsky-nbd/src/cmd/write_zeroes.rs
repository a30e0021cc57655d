//! `NBD_CMD_WRITE_ZEROES`: makes a range read as zeroes, keeping it allocated
//! when the client sets NO_HOLE.

use crate::backing::{Backing, Geometry};
use crate::proto::{self, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, RequestHeader};

use super::Outcome;

#[derive(Debug)]
pub(crate) struct WriteZeroes {
    file_offset: u64,
    length: u32,
    may_punch: bool,
    fua: bool,
}

impl WriteZeroes {
    pub fn parse(header: &RequestHeader, geometry: Geometry) -> Result<Self, u32> {
        // FAST_ZERO is not advertised, so it is refused like any unknown flag.
        super::check_flags(header, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE)?;
        super::check_writable(geometry)?;
        let file_offset = super::confine(header, geometry, proto::ENOSPC)?;
        Ok(Self {
            file_offset,
            length: header.length,
            may_punch: header.flags & CMD_FLAG_NO_HOLE == 0,
            fua: header.flags & CMD_FLAG_FUA != 0,
        })
    }

    pub fn apply(self, backing: &Backing) -> Outcome {
        Outcome::from_io(backing.zero(
            self.file_offset,
            u64::from(self.length),
            self.may_punch,
            self.fua,
        ))
    }
}
