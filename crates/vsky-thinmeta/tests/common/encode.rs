//! A test-only encoder: writes a [`Pool`] as dm-thin metadata, with trees
//! of chosen node sizes, so that tests get deep trees from few mappings and
//! can build broken ones node by node. It is written from the format's
//! description, independently of the crate (its own CRC-32C), and
//! writes no space maps (the crate does not read them; only their sizes).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::model::{Device, Pool};

pub const BLOCK: usize = 4096;
pub const SUPERBLOCK_SALT: u32 = 160_774;
pub const NODE_SALT: u32 = 121_107;
pub const INTERNAL: u32 = 1;
pub const LEAF: u32 = 2;

/// CRC-32C with no inversions (the caller's start value), from a table
/// built bit by bit on first use.
fn crc_register(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0u32..256)
            .map(|byte| {
                (0..8).fold(byte, |crc, _| {
                    if crc & 1 == 1 {
                        (crc >> 1) ^ 0x82F6_3B78
                    } else {
                        crc >> 1
                    }
                })
            })
            .collect()
    });
    for &byte in data {
        crc = table[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The checksum persistent-data stores in a block.
pub fn checksum(block: &[u8], salt: u32) -> u32 {
    crc_register(!0, &block[4..BLOCK]) ^ salt
}

/// How full the encoder packs nodes, and how big it says they are.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// `max_entries` of mapping leaves and internal nodes (value size 8).
    pub max_entries: u32,
    /// `max_entries` of device details leaves (value size 24).
    pub details_max_entries: u32,
    /// Entries put in each node, at most the above.
    pub fill: u32,
}

/// What the kernel writes: full nodes of the kernel's sizes.
pub const KERNEL: Shape = Shape {
    max_entries: 252,
    details_max_entries: 126,
    fill: 126,
};

/// Tiny nodes: three entries each, so a few mappings make a deep tree.
pub const TINY: Shape = Shape {
    max_entries: 3,
    details_max_entries: 3,
    fill: 3,
};

/// A metadata image being written.
pub struct Image {
    pub bytes: Vec<u8>,
}

impl Image {
    /// An image with only block 0 (the superblock, not written yet).
    pub fn new() -> Image {
        Image {
            bytes: vec![0; BLOCK],
        }
    }

    pub fn nr_blocks(&self) -> u64 {
        (self.bytes.len() / BLOCK) as u64
    }

    /// A new zeroed block.
    pub fn allocate(&mut self) -> u64 {
        let block = self.nr_blocks();
        self.bytes.resize(self.bytes.len() + BLOCK, 0);
        block
    }

    pub fn block_mut(&mut self, block: u64) -> &mut [u8] {
        let at = block as usize * BLOCK;
        &mut self.bytes[at..at + BLOCK]
    }

    /// Writes a node into `block`, sealed.
    pub fn write_node(
        &mut self,
        block: u64,
        flags: u32,
        max_entries: u32,
        value_size: u32,
        entries: &[(u64, Vec<u8>)],
    ) {
        let b = self.block_mut(block);
        b.fill(0);
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&block.to_le_bytes());
        b[16..20].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        b[20..24].copy_from_slice(&max_entries.to_le_bytes());
        b[24..28].copy_from_slice(&value_size.to_le_bytes());
        let values_at = 32 + 8 * max_entries as usize;
        for (i, (key, value)) in entries.iter().enumerate() {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&key.to_le_bytes());
            let at = values_at + value_size as usize * i;
            b[at..at + value.len()].copy_from_slice(value);
        }
        self.seal_node(block);
    }

    /// Recomputes a node's checksum.
    pub fn seal_node(&mut self, block: u64) {
        let b = self.block_mut(block);
        let csum = checksum(b, NODE_SALT);
        b[0..4].copy_from_slice(&csum.to_le_bytes());
    }

    /// Recomputes the superblock's checksum.
    pub fn seal_superblock(&mut self) {
        let b = self.block_mut(0);
        let csum = checksum(b, SUPERBLOCK_SALT);
        b[0..4].copy_from_slice(&csum.to_le_bytes());
    }

    /// Writes a btree of `entries` (ascending keys) and returns its root.
    pub fn write_tree(
        &mut self,
        entries: Vec<(u64, Vec<u8>)>,
        value_size: u32,
        leaf_max: u32,
        internal_max: u32,
        fill: u32,
    ) -> u64 {
        let fill = fill.max(2) as usize;
        if entries.is_empty() {
            let block = self.allocate();
            self.write_node(block, LEAF, leaf_max, value_size, &[]);
            return block;
        }
        let mut level: Vec<(u64, u64)> = Vec::new();
        for chunk in entries.chunks(fill.min(leaf_max as usize)) {
            let block = self.allocate();
            self.write_node(block, LEAF, leaf_max, value_size, chunk);
            level.push((chunk[0].0, block));
        }
        while level.len() > 1 {
            let mut next = Vec::new();
            for chunk in level.chunks(fill.min(internal_max as usize)) {
                let block = self.allocate();
                let children: Vec<(u64, Vec<u8>)> = chunk
                    .iter()
                    .map(|(key, child)| (*key, child.to_le_bytes().to_vec()))
                    .collect();
                self.write_node(block, INTERNAL, internal_max, 8, &children);
                next.push((chunk[0].0, block));
            }
            level = next;
        }
        level[0].1
    }
}

/// Where the encoder put things, for tests that break them.
pub struct Layout {
    /// Each device's mapping tree root.
    pub roots: HashMap<u64, u64>,
    pub top_root: u64,
    pub details_root: u64,
}

/// Writes `pool` in `shape`. Devices with identical mappings share one
/// tree, as a snapshot with no writes since shares its origin's.
pub fn encode(pool: &Pool, shape: Shape) -> (Vec<u8>, Layout) {
    let mut image = Image::new();
    let mut roots = HashMap::new();
    // The trees written so far: whose mappings, and their roots.
    let mut written: Vec<(&Device, u64)> = Vec::new();
    for (id, device) in &pool.devices {
        let shared = written.iter().find(|(d, _)| d.mappings == device.mappings);
        let root = match shared {
            Some((_, root)) => *root,
            None => {
                let entries = device
                    .mappings
                    .iter()
                    .map(|(v, (d, t))| (*v, ((d << 24) | u64::from(*t)).to_le_bytes().to_vec()))
                    .collect();
                let root =
                    image.write_tree(entries, 8, shape.max_entries, shape.max_entries, shape.fill);
                written.push((device, root));
                root
            }
        };
        roots.insert(*id, root);
    }
    let top = pool
        .devices
        .keys()
        .map(|id| (*id, roots[id].to_le_bytes().to_vec()))
        .collect();
    let top_root = image.write_tree(top, 8, shape.max_entries, shape.max_entries, shape.fill);
    let details = pool
        .devices
        .iter()
        .map(|(id, d)| {
            let mut value = Vec::new();
            value.extend_from_slice(&(d.mappings.len() as u64).to_le_bytes());
            value.extend_from_slice(&d.transaction.to_le_bytes());
            value.extend_from_slice(&d.creation_time.to_le_bytes());
            value.extend_from_slice(&d.snap_time.to_le_bytes());
            (*id, value)
        })
        .collect();
    let details_root = image.write_tree(
        details,
        24,
        shape.details_max_entries,
        shape.max_entries,
        shape.fill,
    );
    // Two spare blocks past the trees, as a real device has free space.
    image.allocate();
    image.allocate();
    let nr_blocks = image.nr_blocks();
    let sb = image.block_mut(0);
    sb[32..40].copy_from_slice(&27_022_010u64.to_le_bytes());
    sb[40..44].copy_from_slice(&2u32.to_le_bytes());
    sb[44..48].copy_from_slice(&pool.time.to_le_bytes());
    sb[48..56].copy_from_slice(&pool.transaction.to_le_bytes());
    sb[64..72].copy_from_slice(&pool.data_blocks.to_le_bytes());
    sb[192..200].copy_from_slice(&nr_blocks.to_le_bytes());
    sb[320..328].copy_from_slice(&top_root.to_le_bytes());
    sb[328..336].copy_from_slice(&details_root.to_le_bytes());
    sb[336..340].copy_from_slice(&pool.data_block_sectors.to_le_bytes());
    sb[340..344].copy_from_slice(&8u32.to_le_bytes());
    sb[344..352].copy_from_slice(&nr_blocks.to_le_bytes());
    image.seal_superblock();
    (
        image.bytes,
        Layout {
            roots,
            top_root,
            details_root,
        },
    )
}

/// Sets a superblock field and reseals it.
pub fn patch_superblock(bytes: &mut Vec<u8>, at: usize, value: &[u8]) {
    let mut image = Image {
        bytes: std::mem::take(bytes),
    };
    image.block_mut(0)[at..at + value.len()].copy_from_slice(value);
    image.seal_superblock();
    *bytes = image.bytes;
}

/// Recomputes the checksum of `block` of a raw image, as a superblock for
/// block 0 and as a node for any other.
pub fn reseal(bytes: &mut [u8], block: u64) {
    let at = block as usize * BLOCK;
    let Some(b) = bytes.get_mut(at..at + BLOCK) else {
        return;
    };
    let salt = if block == 0 {
        SUPERBLOCK_SALT
    } else {
        NODE_SALT
    };
    let csum = checksum(b, salt);
    b[0..4].copy_from_slice(&csum.to_le_bytes());
}

/// Entry `index` of the node at `block`: its key and where its value is.
pub fn entry_at(bytes: &[u8], block: u64, index: usize) -> (u64, usize) {
    let at = block as usize * BLOCK;
    let word4 = |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
    let (max, value_size) = (word4(20) as usize, word4(24) as usize);
    let key_at = at + 32 + 8 * index;
    let key = u64::from_le_bytes(bytes[key_at..key_at + 8].try_into().unwrap());
    (key, at + 32 + 8 * max + value_size * index)
}

/// Points device `dev` of a single-leaf top level at `root`, and makes
/// the metadata as long as the image (blocks may have been appended).
pub fn repoint(bytes: &mut Vec<u8>, layout: &Layout, dev: u64, root: u64) {
    let top = layout.top_root;
    let at = top as usize * BLOCK;
    let nr_entries = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
    let index = (0..nr_entries)
        .find(|i| entry_at(bytes, top, *i).0 == dev)
        .expect("device in the top-level leaf");
    let (_, value_at) = entry_at(bytes, top, index);
    bytes[value_at..value_at + 8].copy_from_slice(&root.to_le_bytes());
    reseal(bytes, top);
    let nr_blocks = (bytes.len() / BLOCK) as u64;
    patch_superblock(bytes, 192, &nr_blocks.to_le_bytes());
}
