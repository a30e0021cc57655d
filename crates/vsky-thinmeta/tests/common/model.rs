//! What a pool's metadata holds, as plain maps, and pools to test with.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vsky_thinmeta::ThinDevice;

/// A pool: the superblock fields the tests set, and its thin devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub time: u32,
    pub transaction: u64,
    pub data_block_sectors: u32,
    pub data_blocks: u64,
    pub devices: BTreeMap<u64, Device>,
}

/// A thin device: its details and its mappings (virtual block → data
/// block and time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub transaction: u64,
    pub creation_time: u32,
    pub snap_time: u32,
    pub mappings: BTreeMap<u64, (u64, u32)>,
}

impl Pool {
    /// A pool with no devices.
    pub fn empty(data_blocks: u64) -> Pool {
        Pool {
            time: 0,
            transaction: 0,
            data_block_sectors: 128,
            data_blocks,
            devices: BTreeMap::new(),
        }
    }

    /// The devices as the crate reports them.
    pub fn thin_devices(&self) -> Vec<ThinDevice> {
        self.devices
            .iter()
            .map(|(id, d)| ThinDevice {
                id: *id,
                mapped_blocks: d.mappings.len() as u64,
                transaction_id: d.transaction,
                creation_time: d.creation_time,
                snapshotted_time: d.snap_time,
            })
            .collect()
    }

    /// The number of mappings over all devices.
    pub fn nr_mappings(&self) -> usize {
        self.devices.values().map(|d| d.mappings.len()).sum()
    }
}

/// A small deterministic generator (xorshift), for fixtures that must not
/// depend on proptest's seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fixture of the design's step 9: devices of every shape a fold
/// meets.
/// - 0: empty;
/// - 1: long contiguous runs (a volume written sequentially);
/// - 2: thousands of scattered mappings, enough for a three-level tree;
/// - 3: a snapshot of 2, sharing most of its data blocks, with some
///   blocks broken away (rewritten after the snapshot) and some new ones;
/// - 4: a snapshot of 1 taken with no writes since (identical mappings);
/// - 16777215: the largest id dm-thin allows (24 bits), a few mappings.
pub fn fixture() -> Pool {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut pool = Pool::empty(1 << 20);
    pool.time = 2;
    pool.transaction = 41;
    let mut next_data = 0u64;
    let mut take = |n: u64| {
        let first = next_data;
        next_data += n;
        first
    };
    pool.devices.insert(0, Device::default());

    let mut sequential = Device::default();
    for (begin, len) in [(0u64, 5000u64), (10_000, 7000), (100_000, 3000)] {
        let data = take(len);
        for i in 0..len {
            sequential.mappings.insert(begin + i, (data + i, 0));
        }
    }
    pool.devices.insert(1, sequential.clone());

    let mut scattered = Device {
        transaction: 3,
        creation_time: 1,
        snap_time: 2,
        ..Device::default()
    };
    while scattered.mappings.len() < 40_000 {
        let v = rng.below(1 << 26);
        let d = take(1);
        scattered.mappings.insert(v, (d, 1));
    }
    pool.devices.insert(2, scattered.clone());

    let mut snapshot = scattered;
    snapshot.transaction = 40;
    snapshot.creation_time = 2;
    let keys: Vec<u64> = snapshot.mappings.keys().copied().collect();
    for v in keys.iter().step_by(7) {
        let d = take(1);
        snapshot.mappings.insert(*v, (d, 2));
    }
    for _ in 0..500 {
        let v = (1 << 26) + rng.below(1 << 20);
        let d = take(1);
        snapshot.mappings.insert(v, (d, 2));
    }
    pool.devices.insert(3, snapshot);

    let mut copy = sequential;
    copy.creation_time = 1;
    copy.snap_time = 1;
    pool.devices.insert(4, copy);

    let mut last = Device::default();
    for v in [0u64, 1, 2, 1 << 30, (1 << 40) - 1] {
        let d = take(1);
        last.mappings.insert(v, (d, 0));
    }
    pool.devices.insert(16_777_215, last);
    assert!(next_data < pool.data_blocks);
    pool
}

/// Random pools: up to 5 devices, each with up to `max_scattered`
/// scattered mappings and up to 3 runs of up to `max_run` blocks; data
/// blocks overlap between devices, as a snapshot's do with its origin's.
pub fn arb_pool(max_scattered: usize, max_run: u64) -> impl Strategy<Value = Pool> {
    let device = (
        proptest::collection::vec((0u64..1 << 24, 1u64..max_run, 0u64..1 << 16, 0u32..4), 0..4),
        proptest::collection::btree_map(0u64..1 << 32, (0u64..1 << 16, 0u32..4), 0..max_scattered),
        0u64..100,
        0u32..4,
    )
        .prop_map(|(runs, mut scattered, transaction, creation_time)| {
            for (v, len, d, t) in runs {
                for i in 0..len {
                    scattered.insert(v + i, (d + i, t));
                }
            }
            Device {
                transaction,
                creation_time,
                snap_time: creation_time,
                mappings: scattered,
            }
        });
    (
        proptest::collection::btree_map(0u64..1 << 24, device, 0..5),
        0u32..8,
        0u64..1000,
        prop_oneof![Just(128u32), Just(256), Just(2048)],
    )
        .prop_map(|(devices, time, transaction, data_block_sectors)| Pool {
            time,
            transaction,
            data_block_sectors,
            data_blocks: 1 << 17,
            devices,
        })
}
