//! Thin devices: the entries of the device details tree.
//!
//! The details tree maps a thin device's 64-bit id to 24 bytes
//! (`struct disk_device_details` in `dm-thin-metadata.c`, little-endian):
//! `mapped_blocks` (u64), `transaction_id` (u64, the pool's transaction id
//! when the device was created), `creation_time` (u32) and
//! `snapshotted_time` (u32, the pool time of the last snapshot taken of or
//! from it). The pool keeps a second tree keyed by the same ids, the top
//! level of the mapping tree; both list the same devices.

use crate::block::{le32, le64};

/// The size of a device details value.
pub(crate) const DETAILS_SIZE: u32 = 24;

/// One thin device of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinDevice {
    /// The device id (the `create_thin`/`create_snap` message's).
    pub id: u64,
    /// How many virtual blocks the device maps.
    pub mapped_blocks: u64,
    /// The pool's transaction id when the device was created.
    pub transaction_id: u64,
    /// The pool time when the device was created.
    pub creation_time: u32,
    /// The pool time of the last snapshot of, or from, this device.
    pub snapshotted_time: u32,
}

impl ThinDevice {
    /// Reads device `id`'s details value (`DETAILS_SIZE` bytes; the tree
    /// walk checked the size).
    pub(crate) fn parse(id: u64, value: &[u8]) -> ThinDevice {
        ThinDevice {
            id,
            mapped_blocks: le64(value, 0),
            transaction_id: le64(value, 8),
            creation_time: le32(value, 16),
            snapshotted_time: le32(value, 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_fields() {
        let mut value = Vec::new();
        value.extend_from_slice(&12u64.to_le_bytes());
        value.extend_from_slice(&3u64.to_le_bytes());
        value.extend_from_slice(&4u32.to_le_bytes());
        value.extend_from_slice(&5u32.to_le_bytes());
        assert_eq!(value.len(), DETAILS_SIZE as usize);
        assert_eq!(
            ThinDevice::parse(7, &value),
            ThinDevice {
                id: 7,
                mapped_blocks: 12,
                transaction_id: 3,
                creation_time: 4,
                snapshotted_time: 5,
            }
        );
    }
}
