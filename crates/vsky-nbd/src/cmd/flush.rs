//! `NBD_CMD_FLUSH`: every write replied to so far becomes durable.

use crate::backing::{Backing, Geometry};
use crate::proto::{self, CMD_FLAG_FUA, RequestHeader};

use super::Outcome;

#[derive(Debug)]
pub(crate) struct Flush;

impl Flush {
    pub fn parse(header: &RequestHeader, _geometry: Geometry) -> Result<Self, u32> {
        super::check_flags(header, CMD_FLAG_FUA)?;
        // The specification reserves offset and length and requires zeroes.
        if header.offset != 0 || header.length != 0 {
            return Err(proto::EINVAL);
        }
        Ok(Self)
    }

    pub fn apply(self, backing: &Backing) -> Outcome {
        Outcome::from_io(backing.flush())
    }
}
