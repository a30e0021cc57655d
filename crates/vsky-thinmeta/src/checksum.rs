//! The checksum of a metadata block.
//!
//! Every block persistent-data writes starts with a little-endian `u32`
//! checksum of the rest of the block (bytes 4 to 4095). It is CRC-32C
//! (Castagnoli, the polynomial iSCSI and ext4 use) started at `!0`, *without*
//! the final inversion of the standard CRC-32C (Linux's `crc32c()` returns
//! the running register), then xor-ed with a salt that names the block's
//! type, so that a block of one type never passes as another
//! (`dm_bm_checksum` in `persistent-data/dm-block-manager.c`; the salts are
//! `SUPERBLOCK_CSUM_XOR` in `dm-thin-metadata.c` and `BTREE_CSUM_XOR` in
//! `dm-btree-spine.c`).
//!
//! The CRC is table-driven, one byte per step: a metadata walk checks each
//! block once, so this is nowhere near the cost of reading the block.

use crate::block::{BLOCK_SIZE, Block};

/// The types of metadata block this crate reads, each with its salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// The pool's superblock, block 0.
    Superblock,
    /// A node of one of the btrees (device details, the mapping trees).
    BtreeNode,
}

impl BlockKind {
    /// The value xor-ed into the CRC for this type of block.
    pub(crate) fn salt(self) -> u32 {
        match self {
            BlockKind::Superblock => 160_774,
            BlockKind::BtreeNode => 121_107,
        }
    }
}

impl std::fmt::Display for BlockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockKind::Superblock => "superblock",
            BlockKind::BtreeNode => "btree node",
        })
    }
}

/// The reflected CRC-32C polynomial.
const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// Runs the CRC-32C register over `data`, with no inversion on the way in
/// or out (the caller chooses the start value).
fn crc32c_register(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The standard CRC-32C of `data` (as iSCSI defines it).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_register(!0, data)
}

/// The checksum persistent-data stores in the first 4 bytes of `block`.
pub(crate) fn block_checksum(kind: BlockKind, block: &Block) -> u32 {
    crc32c_register(!0, &block[4..BLOCK_SIZE]) ^ kind.salt()
}

/// The checksum `block` carries in its first 4 bytes.
pub(crate) fn stored_checksum(block: &Block) -> u32 {
    u32::from_le_bytes([block[0], block[1], block[2], block[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // The "check" value of the CRC catalogue, and RFC 3720's (iSCSI)
        // appendix B.4 examples.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn the_block_checksum_skips_its_own_field_and_adds_the_salt() {
        let mut block = [0u8; BLOCK_SIZE];
        block[100] = 7;
        let node = block_checksum(BlockKind::BtreeNode, &block);
        let superblock = block_checksum(BlockKind::Superblock, &block);
        assert_eq!(node ^ superblock, 121_107 ^ 160_774);
        // The stored checksum itself is not covered.
        block[..4].copy_from_slice(&node.to_le_bytes());
        assert_eq!(block_checksum(BlockKind::BtreeNode, &block), node);
        assert_eq!(stored_checksum(&block), node);
        // Without the salt it is the inverted standard CRC of bytes 4..
        assert_eq!(node ^ 121_107, !crc32c(&block[4..]));
    }
}
