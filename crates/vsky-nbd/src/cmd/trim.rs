//! `NBD_CMD_TRIM`: deallocates a range. The specification makes TRIM a hint,
//! but our head's dm-raid resync relies on discarded ranges reading back as
//! zeroes, so TRIM punches a hole (or zeroes) rather than being ignored.

use crate::backing::{Backing, Geometry};
use crate::proto::{self, CMD_FLAG_FUA, RequestHeader};

use super::Outcome;

#[derive(Debug)]
pub(crate) struct Trim {
    file_offset: u64,
    length: u32,
    fua: bool,
}

impl Trim {
    pub fn parse(header: &RequestHeader, geometry: Geometry) -> Result<Self, u32> {
        super::check_flags(header, CMD_FLAG_FUA)?;
        super::check_writable(geometry)?;
        let file_offset = super::confine(header, geometry, proto::EINVAL)?;
        Ok(Self {
            file_offset,
            length: header.length,
            fua: header.flags & CMD_FLAG_FUA != 0,
        })
    }

    pub fn apply(self, backing: &Backing) -> Outcome {
        Outcome::from_io(backing.zero(self.file_offset, u64::from(self.length), true, self.fua))
    }
}
