//! `NBD_CMD_CACHE`: a read-ahead hint, passed to the kernel as
//! `POSIX_FADV_WILLNEED`. A failing hint still succeeds: nothing was promised.

use crate::backing::{Backing, Geometry};
use crate::proto::{self, CMD_FLAG_FUA, RequestHeader};

use super::Outcome;

#[derive(Debug)]
pub(crate) struct Cache {
    file_offset: u64,
    length: u32,
}

impl Cache {
    pub fn parse(header: &RequestHeader, geometry: Geometry) -> Result<Self, u32> {
        super::check_flags(header, CMD_FLAG_FUA)?;
        let file_offset = super::confine(header, geometry, proto::EINVAL)?;
        Ok(Self {
            file_offset,
            length: header.length,
        })
    }

    pub fn apply(self, backing: &Backing) -> Outcome {
        if let Err(error) = backing.cache(self.file_offset, u64::from(self.length)) {
            tracing::debug!(%error, "NBD_CMD_CACHE hint failed; ignored");
        }
        Outcome::ok()
    }
}
