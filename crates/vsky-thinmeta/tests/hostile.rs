//! Whatever the bytes, the parser answers: a block map or a typed error,
//! never a panic, an endless loop or an unbounded allocation.
//!
//! Three sources of bad input: arbitrary bytes; images of random but
//! well-sealed nodes (right checksums and locations, so the walk goes past
//! the first checks and into trees with cycles, shared children, wild
//! pointers, keys in any order and nonsense headers); and a valid image
//! mutated (bits flipped, with and without resealed checksums, truncated,
//! blocks replaced by random nodes or copied over others).

mod common;

use proptest::prelude::*;

use common::encode::{self, BLOCK, Image, KERNEL, SUPERBLOCK_SALT, Shape, TINY, checksum, reseal};
use common::model;
use common::read_everything;

/// Device ids worth asking for in a random image.
const IDS: [u64; 5] = [0, 1, 2, 3, u64::MAX];

/// A sealed superblock with the given roots and sizes.
fn superblock(bytes: &mut [u8], mapping_root: u64, details_root: u64, nr_blocks: u64, data: u64) {
    let sb = &mut bytes[..BLOCK];
    sb.fill(0);
    sb[32..40].copy_from_slice(&27_022_010u64.to_le_bytes());
    sb[40..44].copy_from_slice(&2u32.to_le_bytes());
    sb[64..72].copy_from_slice(&data.to_le_bytes());
    sb[192..200].copy_from_slice(&nr_blocks.to_le_bytes());
    sb[320..328].copy_from_slice(&mapping_root.to_le_bytes());
    sb[328..336].copy_from_slice(&details_root.to_le_bytes());
    sb[336..340].copy_from_slice(&128u32.to_le_bytes());
    sb[340..344].copy_from_slice(&8u32.to_le_bytes());
    let csum = checksum(sb, SUPERBLOCK_SALT);
    sb[0..4].copy_from_slice(&csum.to_le_bytes());
}

/// A random node's header and entries.
#[derive(Clone, Debug)]
struct RandomNode {
    flags: u32,
    max_entries: u32,
    value_size: u32,
    nr_entries: u32,
    keys: Vec<u64>,
    values: Vec<u64>,
    sort_keys: bool,
}

fn arb_node(nr_blocks: u64) -> impl Strategy<Value = RandomNode> {
    let small = prop_oneof![4 => 0u64..16, 4 => 0u64..nr_blocks + 2, 1 => any::<u64>()];
    (
        prop_oneof![4 => Just(1u32), 4 => Just(2u32), 1 => Just(0u32), 1 => Just(3u32), 1 => any::<u32>()],
        prop_oneof![4 => 1u32..8, 2 => 100u32..=254, 1 => any::<u32>()],
        prop_oneof![4 => Just(8u32), 2 => Just(24u32), 1 => 0u32..64, 1 => any::<u32>()],
        prop_oneof![4 => 0u32..8, 1 => any::<u32>()],
        proptest::collection::vec(small.clone(), 0..8),
        proptest::collection::vec(small, 0..8),
        any::<bool>(),
    )
        .prop_map(|(flags, max_entries, value_size, nr_entries, keys, values, sort_keys)| {
            RandomNode {
                flags,
                max_entries,
                value_size,
                nr_entries,
                keys,
                values,
                sort_keys,
            }
        })
}

/// Writes `node` into `block` of `bytes`, with the right location and
/// checksum, whatever its header says.
fn write_random(bytes: &mut [u8], block: u64, node: &RandomNode) {
    let at = block as usize * BLOCK;
    let b = &mut bytes[at..at + BLOCK];
    b.fill(0);
    b[4..8].copy_from_slice(&node.flags.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b[16..20].copy_from_slice(&node.nr_entries.to_le_bytes());
    b[20..24].copy_from_slice(&node.max_entries.to_le_bytes());
    b[24..28].copy_from_slice(&node.value_size.to_le_bytes());
    let mut keys = node.keys.clone();
    if node.sort_keys {
        keys.sort_unstable();
    }
    for (i, key) in keys.iter().enumerate() {
        b[32 + 8 * i..40 + 8 * i].copy_from_slice(&key.to_le_bytes());
    }
    // Values where the header puts them, if that is inside the block.
    let values_at = 32usize.saturating_add(8usize.saturating_mul(node.max_entries as usize));
    for (i, value) in node.values.iter().enumerate() {
        let start = values_at.saturating_add((node.value_size as usize).saturating_mul(i));
        if let Some(slot) = b.get_mut(start..start.saturating_add(8)) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    }
    reseal(bytes, block);
}

/// Mutations of a valid image.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        bit: u8,
        reseal: bool,
    },
    Truncate {
        to: prop::sample::Index,
    },
    Random {
        block: prop::sample::Index,
        node: RandomNode,
    },
    Copy {
        from: prop::sample::Index,
        to: prop::sample::Index,
        fix_location: bool,
    },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        4 => (index(), 0u8..8, any::<bool>()).prop_map(|(at, bit, reseal)| Mutation::Flip { at, bit, reseal }),
        1 => index().prop_map(|to| Mutation::Truncate { to }),
        3 => (index(), arb_node(64)).prop_map(|(block, node)| Mutation::Random { block, node }),
        2 => (index(), index(), any::<bool>())
            .prop_map(|(from, to, fix_location)| Mutation::Copy { from, to, fix_location }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let nr_blocks = bytes.len() / BLOCK;
    if nr_blocks == 0 {
        return;
    }
    match mutation {
        Mutation::Flip {
            at,
            bit,
            reseal: fix,
        } => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            if *fix {
                reseal(bytes, (at / BLOCK) as u64);
            }
        }
        Mutation::Truncate { to } => bytes.truncate(to.index(bytes.len())),
        Mutation::Random { block, node } => {
            // Block 0 stays the superblock: the point is to go deep.
            let block = 1 + block.index(nr_blocks.max(2) - 1) as u64;
            if (block as usize) < nr_blocks {
                write_random(bytes, block, node);
            }
        }
        Mutation::Copy {
            from,
            to,
            fix_location,
        } => {
            let (from, to) = (from.index(nr_blocks), to.index(nr_blocks));
            bytes.copy_within(from * BLOCK..(from + 1) * BLOCK, to * BLOCK);
            if *fix_location && to != 0 {
                bytes[to * BLOCK + 8..to * BLOCK + 16].copy_from_slice(&(to as u64).to_le_bytes());
                reseal(bytes, to as u64);
            }
        }
    }
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(TINY),
        Just(KERNEL),
        Just(Shape {
            max_entries: 5,
            details_max_entries: 4,
            fill: 4
        })
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes, with or without a valid superblock in front.
    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..6 * BLOCK),
        with_superblock in any::<bool>(),
        roots in (0u64..8, 0u64..8, 0u64..10, any::<u64>()),
        id in any::<u64>(),
    ) {
        if with_superblock && bytes.len() >= BLOCK {
            let (mapping, details, nr_blocks, data) = roots;
            superblock(&mut bytes, mapping, details, nr_blocks, data);
        }
        read_everything(bytes.as_slice(), &[id, 0, 1]);
    }

    /// Images made of random, correctly sealed nodes.
    #[test]
    fn random_sealed_nodes_never_panic(
        nodes in proptest::collection::vec(arb_node(12), 1..12),
        roots in (0u64..14, 0u64..14),
        nr_blocks in prop_oneof![Just(None), (0u64..20).prop_map(Some)],
        data_blocks in prop_oneof![Just(u64::MAX), 0u64..1 << 20],
    ) {
        let mut image = Image::new();
        for node in &nodes {
            let block = image.allocate();
            write_random(&mut image.bytes, block, node);
        }
        let blocks = nr_blocks.unwrap_or(image.nr_blocks());
        superblock(&mut image.bytes, roots.0, roots.1, blocks, data_blocks);
        read_everything(image.bytes.as_slice(), &IDS);
    }

    /// A valid image, mutated.
    #[test]
    fn mutated_images_never_panic(
        pool in model::arb_pool(40, 40),
        shape in arb_shape(),
        mutations in proptest::collection::vec(arb_mutation(), 1..6),
    ) {
        let (mut bytes, _) = encode::encode(&pool, shape);
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        let ids: Vec<u64> = pool.devices.keys().copied().chain(IDS).collect();
        read_everything(bytes.as_slice(), &ids);
    }
}
