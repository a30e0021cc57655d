//! The parser on metadata written by the test-only encoder
//! (`common/encode.rs`): round trips with trees of any node size and depth,
//! and one test per way a tree can be broken, each expecting its typed
//! error. No external tool needed.

mod common;

use std::io;

use proptest::prelude::*;
use vsky_thinmeta::{
    Block, BlockKind, BlockSource, Error, KeyBound, MAX_DEPTH, NodeProblem, ThinMetadata, Tree,
};

use common::encode::{
    self, BLOCK, INTERNAL, Image, KERNEL, LEAF, Layout, Shape, TINY, entry_at, patch_superblock,
    repoint, reseal,
};
use common::model::{self, Device, Pool};

/// A pool with device 1 holding `n` scattered mappings and device 2 a few.
fn pool(n: u64) -> Pool {
    let mut pool = Pool::empty(1 << 20);
    let mut one = Device::default();
    for i in 0..n {
        one.mappings.insert(i * 3, (1000 + i, 0));
    }
    pool.devices.insert(1, one);
    let mut two = Device::default();
    two.mappings.insert(7, (5, 1));
    pool.devices.insert(2, two);
    pool
}

fn open(bytes: &[u8]) -> ThinMetadata<&[u8]> {
    ThinMetadata::open(bytes).expect("open")
}

/// The error reading device `dev`'s mappings gives.
fn mapping_error(bytes: &[u8], dev: u64) -> Error {
    open(bytes)
        .mapped_runs(dev)
        .expect_err("a broken tree must not read")
}

/// Where child `index` of the internal node at `block` points.
fn child(bytes: &[u8], block: u64, index: usize) -> (u64, usize) {
    let (_, at) = entry_at(bytes, block, index);
    (
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()),
        at,
    )
}

fn encoded(n: u64, shape: Shape) -> (Vec<u8>, Layout) {
    encode::encode(&pool(n), shape)
}

/// Device 1 in a four-level tree of full three-entry nodes (81 mappings:
/// 27 leaves, 9 and 3 internal nodes, the root): every internal node has
/// three children.
fn tiny_tree() -> (Vec<u8>, Layout) {
    let (bytes, layout) = encoded(81, TINY);
    let root = layout.roots[&1];
    assert_eq!(
        u32::from_le_bytes(bytes[root as usize * BLOCK + 16..][..4].try_into().unwrap()),
        3
    );
    (bytes, layout)
}

#[test]
fn reads_deep_and_shallow_trees_and_shared_ones() {
    for shape in [TINY, KERNEL] {
        let mut pool = pool(2000);
        // A snapshot with no writes since shares its origin's tree.
        pool.devices.insert(9, pool.devices[&1].clone());
        let (bytes, layout) = encode::encode(&pool, shape);
        assert_eq!(layout.roots[&1], layout.roots[&9]);
        common::assert_reads_as(bytes.as_slice(), &pool);
        common::assert_reads_as(bytes, &pool);
    }
}

#[test]
fn the_smallest_sources_are_refused() {
    assert!(matches!(ThinMetadata::open(&[][..]), Err(Error::Empty)));
    assert!(matches!(
        ThinMetadata::open(&[7u8; 4095][..]),
        Err(Error::Empty)
    ));
    assert!(matches!(
        ThinMetadata::open(&[0u8; 8192][..]),
        Err(Error::Unformatted)
    ));
}

#[test]
fn superblock_fields_are_checked_through_open() {
    let (bytes, _) = encoded(10, KERNEL);
    let refused = |at: usize, value: &[u8]| {
        let mut b = bytes.clone();
        patch_superblock(&mut b, at, value);
        ThinMetadata::open(b.as_slice()).expect_err("refused")
    };
    assert!(matches!(
        refused(40, &3u32.to_le_bytes()),
        Error::UnsupportedVersion { version: 3 }
    ));
    assert!(matches!(refused(4, &1u32.to_le_bytes()), Error::NeedsCheck));
    assert!(matches!(
        refused(360, &4u32.to_le_bytes()),
        Error::UnsupportedFeatures { .. }
    ));
    let mut b = bytes.clone();
    b[1000] ^= 1;
    assert!(matches!(
        ThinMetadata::open(b.as_slice()),
        Err(Error::BadChecksum {
            block: 0,
            kind: BlockKind::Superblock,
            ..
        })
    ));
}

#[test]
fn a_node_with_a_bad_checksum_is_refused() {
    let (mut bytes, layout) = encoded(100, TINY);
    let root = layout.roots[&1];
    bytes[root as usize * BLOCK + 100] ^= 4;
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::BadChecksum { block, kind: BlockKind::BtreeNode, .. } if block == root
    ));
    // The other device's tree is intact and still reads.
    assert_eq!(open(&bytes).mapped_runs(2).unwrap().len(), 1);
}

#[test]
fn a_node_copied_to_another_block_is_refused() {
    let (mut bytes, layout) = tiny_tree();
    let root = layout.roots[&1];
    let (first, _) = child(&bytes, root, 0);
    let (second, _) = child(&bytes, root, 1);
    let from = first as usize * BLOCK;
    bytes.copy_within(from..from + BLOCK, second as usize * BLOCK);
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::WrongLocation { block, recorded, .. } if block == second && recorded == first
    ));
}

#[test]
fn a_cycle_is_found() {
    let (mut bytes, layout) = tiny_tree();
    let root = layout.roots[&1];
    let (_, at) = child(&bytes, root, 2);
    bytes[at..at + 8].copy_from_slice(&root.to_le_bytes());
    reseal(&mut bytes, root);
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::BlockVisitedTwice { tree: Tree::Mappings { dev: 1 }, block } if block == root
    ));
}

#[test]
fn a_node_with_two_parents_is_found() {
    let (mut bytes, layout) = tiny_tree();
    let root = layout.roots[&1];
    let (first, _) = child(&bytes, root, 0);
    let (_, at) = child(&bytes, root, 1);
    bytes[at..at + 8].copy_from_slice(&first.to_le_bytes());
    reseal(&mut bytes, root);
    // Child 0 is walked first, so child 1, now the same block, is its
    // second visit (before its keys are found outside child 1's range).
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::BlockVisitedTwice { block, .. } if block == first
    ));
}

/// An image whose device 1 is a chain of `levels - 1` internal nodes with
/// one child each, over a leaf with one mapping.
fn chain(levels: usize) -> Vec<u8> {
    let mut p = Pool::empty(100);
    p.devices.insert(1, Device::default());
    p.devices.get_mut(&1).unwrap().mappings.insert(5, (6, 0));
    let (bytes, layout) = encode::encode(&p, KERNEL);
    let mut image = Image { bytes };
    let mut below = image.allocate();
    image.write_node(
        below,
        LEAF,
        252,
        8,
        &[(5, (6u64 << 24).to_le_bytes().to_vec())],
    );
    for _ in 1..levels {
        let block = image.allocate();
        image.write_node(
            block,
            INTERNAL,
            252,
            8,
            &[(0, below.to_le_bytes().to_vec())],
        );
        below = block;
    }
    let mut bytes = image.bytes;
    repoint(&mut bytes, &layout, 1, below);
    bytes
}

#[test]
fn a_tree_deeper_than_any_valid_one_is_refused() {
    let bytes = chain(MAX_DEPTH);
    assert_eq!(open(&bytes).mapped_runs(1).unwrap().len(), 1);
    let bytes = chain(MAX_DEPTH + 1);
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::TooDeep {
            tree: Tree::Mappings { dev: 1 },
            max: MAX_DEPTH
        }
    ));
}

#[test]
fn a_pointer_past_the_end_is_refused() {
    let (mut bytes, layout) = tiny_tree();
    let root = layout.roots[&1];
    let (_, at) = child(&bytes, root, 1);
    bytes[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    reseal(&mut bytes, root);
    let end = (bytes.len() / BLOCK) as u64;
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::BlockPastEnd { block, end: e, .. } if block == 1 << 40 && e == end
    ));

    // The superblock's count of metadata blocks bounds reads too.
    let (mut bytes, _) = encoded(100, TINY);
    patch_superblock(&mut bytes, 192, &2u64.to_le_bytes());
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::BlockPastEnd { end: 2, .. }
    ));
}

#[test]
fn a_key_outside_its_parents_range_is_refused() {
    let (mut bytes, layout) = tiny_tree();
    let root = layout.roots[&1];
    let (low, _) = entry_at(&bytes, root, 1);
    let (second, _) = child(&bytes, root, 1);
    // Lower the first key of child 1 below the range its parent gives it.
    let key_at = second as usize * BLOCK + 32;
    bytes[key_at..key_at + 8].copy_from_slice(&(low - 1).to_le_bytes());
    reseal(&mut bytes, second);
    match mapping_error(&bytes, 1) {
        Error::KeyOutsideParent {
            tree: Tree::Mappings { dev: 1 },
            block,
            key,
            low: l,
            high: KeyBound::Below(_),
        } => assert_eq!((block, key, l), (second, low - 1, low)),
        other => panic!("{other}"),
    }
}

#[test]
fn a_miscounted_device_is_refused() {
    let (mut bytes, layout) = encoded(10, KERNEL);
    let (key, at) = entry_at(&bytes, layout.details_root, 0);
    assert_eq!(key, 1);
    bytes[at..at + 8].copy_from_slice(&11u64.to_le_bytes());
    reseal(&mut bytes, layout.details_root);
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::MappedBlocksMismatch {
            dev: 1,
            recorded: 11,
            found: 10
        }
    ));
}

#[test]
fn the_two_device_trees_must_agree() {
    let (mut bytes, layout) = encoded(10, KERNEL);
    let (key, _) = entry_at(&bytes, layout.details_root, 1);
    assert_eq!(key, 2);
    let at = layout.details_root as usize * BLOCK + 32 + 8;
    bytes[at..at + 8].copy_from_slice(&3u64.to_le_bytes());
    reseal(&mut bytes, layout.details_root);
    let mut meta = open(&bytes);
    assert!(matches!(
        meta.devices(),
        Err(Error::DeviceTreesDisagree {
            dev: 2,
            present: Tree::Devices,
            missing: Tree::Details
        })
    ));
    assert!(matches!(
        meta.mapped_runs(3),
        Err(Error::DeviceTreesDisagree {
            dev: 3,
            present: Tree::Details,
            missing: Tree::Devices
        })
    ));
    assert!(matches!(
        meta.mapped_runs(2),
        Err(Error::UnknownDevice { dev: 2 })
    ));
    assert!(matches!(
        meta.device(4),
        Err(Error::UnknownDevice { dev: 4 })
    ));
    assert_eq!(meta.device(1).unwrap().mapped_blocks, 10);
}

#[test]
fn a_mapping_past_the_data_device_is_refused() {
    let mut p = pool(10);
    p.data_blocks = 1005;
    let (bytes, _) = encode::encode(&p, KERNEL);
    assert!(matches!(
        mapping_error(&bytes, 1),
        Error::DataBlockPastEnd {
            dev: 1,
            virtual_block: 15,
            data_block: 1005,
            data_blocks: 1005
        }
    ));
}

#[test]
fn a_tree_read_as_another_is_refused_by_its_value_size() {
    let (mut bytes, layout) = encoded(10, KERNEL);
    patch_superblock(&mut bytes, 328, &layout.roots[&1].to_le_bytes());
    let mut meta = open(&bytes);
    assert!(matches!(
        meta.devices(),
        Err(Error::BadNode {
            tree: Tree::Details,
            problem: NodeProblem::WrongValueSize {
                value_size: 8,
                expected: 24
            },
            ..
        })
    ));
}

/// A source whose block 3 cannot be read.
struct Failing(Vec<u8>);

impl BlockSource for Failing {
    fn nr_blocks(&self) -> u64 {
        self.0.nr_blocks()
    }

    fn read_block(&mut self, index: u64, buf: &mut Block) -> io::Result<()> {
        if index == 3 {
            return Err(io::Error::other("medium error"));
        }
        self.0.read_block(index, buf)
    }
}

#[test]
fn an_unreadable_block_is_an_io_error() {
    let (bytes, _) = encoded(100, TINY);
    let mut meta = ThinMetadata::open(Failing(bytes)).unwrap();
    let err = meta.mapped_runs(1).unwrap_err();
    assert!(matches!(err, Error::Io { block: 3, .. }), "{err}");
    assert!(err.to_string().contains("medium error"));
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    (2u32..=252, 2u32..=126, 2u32..=252).prop_map(|(max_entries, details_max, fill)| Shape {
        max_entries,
        details_max_entries: details_max,
        fill: fill.min(max_entries).min(details_max),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any pool, in nodes of any size and fill, reads back exactly.
    #[test]
    fn encoded_pools_read_back_exactly(pool in model::arb_pool(300, 300), shape in arb_shape()) {
        let (bytes, _) = encode::encode(&pool, shape);
        common::assert_reads_as(bytes.as_slice(), &pool);
    }
}
