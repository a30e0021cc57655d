//! The parser against the reference tools: metadata written by
//! `thin_restore` from a known pool must read back exactly, and exactly as
//! `thin_dump` reads it.
//!
//! These tests fail when the tools are missing (run scripts/install-deps),
//! unless `VSKY_SKIP_THIN_TOOLS` is set.

mod common;

use std::fs::File;
use std::sync::OnceLock;

use proptest::prelude::*;
use vsky_thinmeta::{Error, ReadSeekSource, ThinMetadata};

use common::model::{self, Pool};
use common::tools::{Scratch, Tools, tools};

/// Levels of the tree at `root` in a raw image, down its first children.
fn depth(image: &[u8], root: u64) -> usize {
    let word = |at: usize, len: usize| {
        let mut bytes = [0u8; 8];
        bytes[..len].copy_from_slice(&image[at..at + len]);
        u64::from_le_bytes(bytes)
    };
    let mut block = root as usize * 4096;
    let mut levels = 1;
    while word(block + 4, 4) == 1 {
        let max = word(block + 20, 4) as usize;
        block = word(block + 32 + 8 * max, 8) as usize * 4096;
        levels += 1;
    }
    levels
}

/// The root of device `dev`'s tree in a raw image whose top level is one
/// leaf.
fn device_root(image: &[u8], dev: u64) -> u64 {
    let mut meta = ThinMetadata::open(image).unwrap();
    let top = meta.superblock().mapping_root as usize * 4096;
    assert!(meta.device(dev).is_ok());
    let word = |at: usize| u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
    let half = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
    let (nr, max) = (half(top + 16), half(top + 20));
    let index = (0..nr).find(|i| word(top + 32 + 8 * i) == dev).unwrap();
    word(top + 32 + 8 * max + 8 * index)
}

#[test]
fn reads_every_mapping_thin_restore_writes_as_thin_dump_does() {
    let Some(tools) = tools() else { return };
    let pool = model::fixture();
    let meta = tools.restore(&pool, 0, 2);

    // The fixture has the shapes it promises: a multi-level tree for the
    // long runs, three levels for the scattered mappings.
    let image = std::fs::read(&meta.0).unwrap();
    assert!(depth(&image, device_root(&image, 1)) >= 2);
    assert!(depth(&image, device_root(&image, 2)) >= 3);
    assert!(depth(&image, device_root(&image, 3)) >= 3);

    // thin_dump reads the pool that was written...
    let dumped = tools.dump(&meta.0);
    assert!(
        dumped == pool,
        "thin_dump reads another pool than the one restored"
    );
    // ...and so does the crate, from a file and from memory.
    let file = ReadSeekSource::new(File::open(&meta.0).unwrap()).unwrap();
    common::assert_reads_as(file, &pool);
    common::assert_reads_as(image.as_slice(), &dumped);

    let mut parsed = ThinMetadata::open(image.as_slice()).unwrap();
    assert_eq!(parsed.superblock().version, 2);
    assert_eq!(parsed.superblock().metadata_snap, None);
    assert_eq!(
        parsed.superblock().metadata_blocks,
        image.len() as u64 / 4096
    );
    assert!(matches!(
        parsed.mapped_runs(5),
        Err(Error::UnknownDevice { dev: 5 })
    ));
    assert!(parsed.mapped_runs(0).unwrap().is_empty());
    assert_eq!(parsed.mappings(1).unwrap().len(), 3);
}

#[test]
fn reads_version_1_and_refuses_needs_check() {
    let Some(tools) = tools() else { return };
    let pool = model::fixture();
    let mut small = Pool::empty(pool.data_blocks);
    small.devices.insert(1, pool.devices[&16_777_215].clone());

    let meta = tools.restore(&small, 0, 1);
    let mut parsed = ThinMetadata::open(
        File::open(&meta.0)
            .map(ReadSeekSource::new)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(parsed.superblock().version, 1);
    assert_eq!(parsed.mapped_runs(1).unwrap().len(), 3);

    let meta = tools.restore(&small, 1, 2);
    let image = std::fs::read(&meta.0).unwrap();
    assert!(matches!(
        ThinMetadata::open(image.as_slice()),
        Err(Error::NeedsCheck)
    ));
}

#[test]
fn a_truncated_device_is_an_error_not_a_panic() {
    let Some(tools) = tools() else { return };
    let meta = tools.restore(&model::fixture(), 0, 2);
    let image = std::fs::read(&meta.0).unwrap();
    // Cut through the trees: some device's walk reaches past the end.
    let used = image
        .chunks(4096)
        .rposition(|block| block.iter().any(|b| *b != 0))
        .unwrap();
    let cut = &image[..used / 2 * 4096];
    let mut parsed = ThinMetadata::open(cut).unwrap();
    let mut errors: Vec<Error> = [0u64, 1, 2, 3, 4, 16_777_215]
        .into_iter()
        .filter_map(|dev| parsed.mapped_runs(dev).err())
        .collect();
    errors.extend(parsed.devices().err());
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, Error::BlockPastEnd { .. })),
        "{errors:?}"
    );
}

/// Reads a metadata image written elsewhere (a kernel's: copy a frozen
/// layer's `tmeta` in the lab) and checks that the crate reads exactly
/// what thin_dump reads:
/// `VSKY_THINMETA_IMAGE=<file> cargo test -p vsky-thinmeta --test thin_tools -- --ignored`.
#[test]
#[ignore = "needs VSKY_THINMETA_IMAGE, a metadata image to check"]
fn reads_an_image_from_elsewhere_as_thin_dump_does() {
    let path = std::env::var_os("VSKY_THINMETA_IMAGE").expect("set VSKY_THINMETA_IMAGE");
    let Some(tools) = tools() else { return };
    let dumped = tools.dump(std::path::Path::new(&path));
    let source = ReadSeekSource::new(File::open(&path).expect("open the image")).unwrap();
    common::assert_reads_as(source, &dumped);
    eprintln!(
        "{} devices, {} mappings: the crate reads them as thin_dump does",
        dumped.devices.len(),
        dumped.nr_mappings()
    );
}

/// One image thin_restore wrote, for the mutation property.
fn restored_image() -> Option<&'static (Pool, Vec<u8>)> {
    static IMAGE: OnceLock<Option<(Pool, Vec<u8>)>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let tools = tools()?;
            let mut pool = model::fixture();
            // Keep it small enough to parse hundreds of times.
            for device in pool.devices.values_mut() {
                let keep: Vec<u64> = device.mappings.keys().copied().step_by(40).collect();
                device.mappings.retain(|v, _| keep.binary_search(v).is_ok());
            }
            let meta = tools.restore(&pool, 0, 2);
            let image = std::fs::read(&meta.0).unwrap();
            let used = image
                .chunks(4096)
                .rposition(|block| block.iter().any(|b| *b != 0))
                .unwrap();
            Some((pool, image[..(used + 1) * 4096].to_vec()))
        })
        .as_ref()
}

fn tools_or_skip() -> Option<Tools> {
    static TOOLS: OnceLock<Option<Tools>> = OnceLock::new();
    TOOLS.get_or_init(tools).clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random pools through thin_restore read back exactly, and as
    /// thin_dump reads them.
    #[test]
    fn random_pools_round_trip_through_thin_restore(pool in model::arb_pool(2000, 300)) {
        let Some(tools) = tools_or_skip() else { return Ok(()) };
        let meta: Scratch = tools.restore(&pool, 0, 2);
        let image = std::fs::read(&meta.0).unwrap();
        common::assert_reads_as(image.as_slice(), &pool);
        prop_assert_eq!(tools.dump(&meta.0), pool);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Flipped bits in a real image, checksums recomputed or not, give an
    /// answer or a typed error, never a panic.
    #[test]
    fn flipped_bits_in_a_restored_image_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
        reseal in any::<bool>(),
    ) {
        let Some((pool, image)) = restored_image() else { return Ok(()) };
        let mut bytes = image.clone();
        let mut touched = Vec::new();
        for (index, bit) in flips {
            let at = index.index(bytes.len());
            bytes[at] ^= 1 << bit;
            touched.push((at / 4096) as u64);
        }
        if reseal {
            for block in touched {
                common::encode::reseal(&mut bytes, block);
            }
        }
        let ids: Vec<u64> = pool.devices.keys().copied().collect();
        common::read_everything(bytes.as_slice(), &ids);
    }
}
