//! Helpers shared by the integration tests: a model of a pool's metadata,
//! a test-only encoder of it into an image, the reference tools
//! (thin_restore, thin_dump) and the checks of what the crate reads.
//!
//! Each test binary uses a part of them.
#![allow(dead_code)]

pub mod encode;
pub mod model;
pub mod tools;

use vsky_thinmeta::{BlockSource, MappedRun, Mapping, Run, ThinMetadata};

use model::Pool;

/// Checks that the crate reads exactly `pool` from `source`: the
/// superblock, the device list and every mapping, through every reader.
pub fn assert_reads_as<S: BlockSource>(source: S, pool: &Pool) {
    let mut meta = ThinMetadata::open(source).expect("open");
    let sb = meta.superblock().clone();
    assert_eq!(sb.time, pool.time, "time");
    assert_eq!(sb.transaction_id, pool.transaction, "transaction id");
    assert_eq!(
        sb.data_block_sectors, pool.data_block_sectors,
        "data block size"
    );
    assert_eq!(sb.data_blocks, pool.data_blocks, "data blocks");
    let devices = meta.devices().expect("devices");
    assert_eq!(devices, pool.thin_devices(), "devices");
    for (id, device) in &pool.devices {
        let mut seen = Vec::new();
        let details = meta
            .for_each_mapping(*id, |m| seen.push(m))
            .unwrap_or_else(|e| panic!("mappings of device {id}: {e}"));
        assert_eq!(details.mapped_blocks, device.mappings.len() as u64);
        let want: Vec<Mapping> = device
            .mappings
            .iter()
            .map(|(v, (d, t))| Mapping {
                virtual_block: *v,
                data_block: *d,
                time: *t,
            })
            .collect();
        assert_eq!(seen.len(), want.len(), "device {id}: number of mappings");
        assert!(seen == want, "device {id}: mappings differ");
        assert_eq!(
            meta.mappings(*id).unwrap(),
            expected_runs(pool, *id),
            "device {id} runs"
        );
        assert_eq!(
            meta.mapped_runs(*id).unwrap(),
            expected_mapped_runs(pool, *id),
            "device {id} mapped runs"
        );
    }
}

/// The runs of device `id`, computed from the model the simple way.
pub fn expected_runs(pool: &Pool, id: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (v, (d, _)) in &pool.devices[&id].mappings {
        match runs.last_mut() {
            Some(run) if run.virtual_begin + run.len == *v && run.data_begin + run.len == *d => {
                run.len += 1
            }
            _ => runs.push(Run {
                virtual_begin: *v,
                data_begin: *d,
                len: 1,
            }),
        }
    }
    runs
}

/// The mapped runs of device `id`, from the model.
pub fn expected_mapped_runs(pool: &Pool, id: u64) -> Vec<MappedRun> {
    let mut runs: Vec<MappedRun> = Vec::new();
    for v in pool.devices[&id].mappings.keys() {
        match runs.last_mut() {
            Some(run) if run.virtual_begin + run.len == *v => run.len += 1,
            _ => runs.push(MappedRun {
                virtual_begin: *v,
                len: 1,
            }),
        }
    }
    runs
}

/// Reads everything the crate can read from `source` and checks what it
/// returns hangs together, whatever the bytes: it must answer, not panic.
pub fn read_everything<S: BlockSource>(source: S, extra_ids: &[u64]) {
    let Ok(mut meta) = ThinMetadata::open(source) else {
        return;
    };
    let mut ids: Vec<u64> = extra_ids.to_vec();
    if let Ok(devices) = meta.devices() {
        assert!(devices.windows(2).all(|w| w[0].id < w[1].id));
        ids.extend(devices.iter().map(|d| d.id));
    }
    for id in ids {
        let _ = meta.device(id);
        let mut last = None;
        let result = meta.for_each_mapping(id, |m| {
            assert!(last < Some(m.virtual_block), "mappings out of order");
            last = Some(m.virtual_block);
        });
        if let Ok(device) = result {
            let runs = meta.mappings(id).expect("read once, read twice");
            let mapped = meta.mapped_runs(id).expect("read once, read twice");
            assert_eq!(
                runs.iter().map(|r| r.len).sum::<u64>(),
                device.mapped_blocks
            );
            assert_eq!(
                mapped.iter().map(|r| r.len).sum::<u64>(),
                device.mapped_blocks
            );
            for pair in mapped.windows(2) {
                assert!(pair[0].virtual_begin + pair[0].len < pair[1].virtual_begin);
            }
        }
    }
}
