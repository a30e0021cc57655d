//! Scrubs of detached volumes: comparing the legs of a mirrored disk that
//! no head assembles.
//!
//! A head checks the mirrors it assembles with dm-raid's `check` when the
//! manager asks (`scrub.rs`). A detached volume has no mirror anywhere, so the manager
//! asks the storage agent holding a mirrored disk's first leg to compare
//! the legs itself (`ScrubSpec`, scheduled under the per-disk limit with
//! the resyncs): a task per scrub reads the data area of every leg in
//! 1 MiB pieces (its own chunk in place, the others over NBD, in parallel;
//! `leg_reader.rs`), no faster per leg than the cluster's resync rate,
//! counts the 512-byte sectors where the legs that could be read differ,
//! and notes the legs whose reads fail. The metadata area at the front of
//! each chunk is skipped: it holds each slot's own dm-raid superblock and
//! bitmap, which legitimately differ.
//!
//! The verdict is reported with every heartbeat until the manager stops
//! listing the scrub; the manager fails the unreadable legs, so they are
//! replaced. A leg that cannot be reached (its server away) is retried a
//! few times, then the scrub is reported failed and the manager tries
//! again later. Scrubs only read, so [`Scrubs::retain`] drops a stopped
//! one where it is: no write has to land first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use vsky_api::types::{ScrubReport, ScrubSpec};
use vsky_sync::LockExt;

use crate::copy::Notifier;
use crate::leg_reader::{LegReader, ReadError, pace};

/// Bytes read from each leg per step.
const PIECE: u64 = 1 << 20;
/// Sectors are counted in these units (dm-raid's mismatch count is too).
const SECTOR: usize = 512;
/// Wait before reconnecting after a leg could not be reached.
const RETRY: Duration = Duration::from_secs(3);
/// Attempts in a row without progress before a scrub is reported failed.
const ATTEMPTS: u32 = 5;

/// The scrubs this agent runs, by scrub id.
pub struct Scrubs {
    running: BTreeMap<u64, Running>,
    /// Verdicts of finished scrubs, for the heartbeat.
    reports: Arc<Mutex<BTreeMap<u64, ScrubReport>>>,
    /// Woken when a scrub ends, so the heartbeat carries it at once.
    ended: Arc<dyn Notifier>,
}

struct Running {
    /// The spec it runs (a new manager process may reuse an id for another
    /// scrub: a different spec under a known id starts over).
    spec: ScrubSpec,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Scrubs {
    pub fn new(reports: Arc<Mutex<BTreeMap<u64, ScrubReport>>>, ended: Arc<dyn Notifier>) -> Self {
        Scrubs {
            running: BTreeMap::new(),
            reports,
            ended,
        }
    }

    /// Stops every scrub not listed in `keep` as it runs, and forgets
    /// their verdicts. Scrubs only read, so a stopped one is dropped where
    /// it is (even in the middle of connecting to an unreachable leg).
    pub fn retain(&mut self, keep: &[ScrubSpec]) {
        let gone: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| !keep.contains(&r.spec))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let r = self.running.remove(&id).expect("listed");
            let _ = r.stop.send(true);
            r.task.abort();
            self.reports.lock_unpoisoned().remove(&id);
            tracing::info!(scrub = id, volume = %r.spec.volume, "scrub stopped");
        }
        let running = &self.running;
        self.reports
            .lock_unpoisoned()
            .retain(|id, _| running.contains_key(id));
    }

    /// Starts the listed scrubs that are not running yet, reading each leg
    /// at no more than `rate_bytes_per_second` (0: no limit). A finished
    /// scrub stays known until the manager stops listing it, so it is not
    /// started twice.
    pub fn start(&mut self, scrubs: &[ScrubSpec], rate_bytes_per_second: u64) {
        for spec in scrubs {
            if self.running.contains_key(&spec.scrub) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let reports = self.reports.clone();
            let ended = self.ended.clone();
            let id = spec.scrub;
            tracing::info!(scrub = id, volume = %spec.volume, mirrored_disk = spec.mirrored_disk, "scrub started");
            let task = tokio::spawn({
                let spec = spec.clone();
                async move {
                    let report = match scrub_with_retries(&spec, rate_bytes_per_second, stop_rx)
                        .await
                    {
                        Ok(Some(verdict)) => {
                            tracing::info!(scrub = id, volume = %spec.volume, mirrored_disk = spec.mirrored_disk,
                                mismatched_sectors = verdict.mismatched_sectors,
                                unreadable_legs = ?verdict.unreadable_legs, "scrub done");
                            ScrubReport {
                                volume: spec.volume.clone(),
                                mirrored_disk: spec.mirrored_disk,
                                mismatched_sectors: verdict.mismatched_sectors,
                                scrub: Some(id),
                                unreadable_legs: verdict.unreadable_legs.into_iter().collect(),
                                error: None,
                            }
                        }
                        Ok(None) => return, // stopped
                        Err(e) => {
                            tracing::warn!(scrub = id, volume = %spec.volume, error = %e, "scrub failed");
                            ScrubReport {
                                volume: spec.volume.clone(),
                                mirrored_disk: spec.mirrored_disk,
                                mismatched_sectors: 0,
                                scrub: Some(id),
                                unreadable_legs: Vec::new(),
                                error: Some(e),
                            }
                        }
                    };
                    reports.lock_unpoisoned().insert(id, report);
                    ended.notify();
                }
            });
            self.running.insert(
                id,
                Running {
                    spec: spec.clone(),
                    stop,
                    task,
                },
            );
        }
    }

    /// The verdicts to send with the next heartbeat.
    pub fn reports(&self) -> Vec<ScrubReport> {
        self.reports.lock_unpoisoned().values().cloned().collect()
    }
}

/// What a scrub found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub mismatched_sectors: u64,
    /// Slots of the legs that failed a read.
    pub unreadable_legs: BTreeSet<u8>,
}

/// How far a scrub got: kept across reconnections, so a retry resumes.
#[derive(Default)]
struct Progress {
    /// Bytes of the data area compared.
    done: u64,
    verdict: Verdict,
}

/// The 512-byte sectors in which the `copies` (equally long) do not all
/// agree.
pub fn mismatched_sectors(copies: &[&[u8]]) -> u64 {
    let Some((first, rest)) = copies.split_first() else {
        return 0;
    };
    if rest.iter().all(|c| c == first) {
        return 0;
    }
    first
        .chunks(SECTOR)
        .enumerate()
        .filter(|(i, sector)| {
            let at = i * SECTOR;
            rest.iter()
                .any(|c| c.get(at..at + sector.len()) != Some(*sector))
        })
        .count() as u64
}

/// Runs a scrub, reconnecting after transport errors. Ok(None): stopped.
async fn scrub_with_retries(
    spec: &ScrubSpec,
    rate: u64,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<Verdict>, String> {
    let (meta, chunk) = (spec.leg_meta_bytes, spec.chunk_size_bytes);
    if meta >= chunk || spec.legs.len() > usize::from(u8::MAX) {
        return Err(format!(
            "bad scrub spec: {meta}-byte metadata in a {chunk}-byte chunk, {} legs",
            spec.legs.len()
        ));
    }
    let mut progress = Progress::default();
    let mut failures = 0;
    loop {
        let before = progress.done;
        match scrub_from(spec, rate, &mut stop, &mut progress).await {
            Ok(true) => return Ok(Some(progress.verdict)),
            Ok(false) => return Ok(None),
            Err(e) => {
                if progress.done > before {
                    failures = 0;
                }
                failures += 1;
                tracing::warn!(scrub = spec.scrub, attempt = failures, error = %e, "scrub attempt failed");
                if failures >= ATTEMPTS {
                    return Err(format!("gave up after {ATTEMPTS} attempts: {e}"));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

/// Opens the legs not known unreadable and compares from `progress.done`
/// to the end. Ok(true): done; Ok(false): stopped; Err: a leg could not be
/// reached (`progress` holds what was compared).
async fn scrub_from(
    spec: &ScrubSpec,
    rate: u64,
    stop: &mut watch::Receiver<bool>,
    progress: &mut Progress,
) -> Result<bool, String> {
    let meta = spec.leg_meta_bytes;
    let data = spec.chunk_size_bytes - meta;
    let mut legs: Vec<(u8, LegReader)> = Vec::new();
    for (slot, leg) in spec.legs.iter().enumerate() {
        let slot = slot as u8;
        if progress.verdict.unreadable_legs.contains(&slot) {
            continue;
        }
        let reader = LegReader::open(leg, spec.chunk_size_bytes)
            .await
            .map_err(|e| format!("leg {slot}: {e}"))?;
        legs.push((slot, reader));
    }
    // Pace from where this attempt starts.
    let (started, start) = (Instant::now(), progress.done);
    while progress.done < data {
        if *stop.borrow() {
            return Ok(false);
        }
        let len = PIECE.min(data - progress.done);
        let offset = meta + progress.done;
        let mut reads = JoinSet::new();
        for (slot, mut reader) in legs.drain(..) {
            reads.spawn(async move {
                let read = reader.read(offset, len as u32).await;
                (slot, reader, read)
            });
        }
        let mut copies: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut lost = None;
        while let Some(joined) = reads.join_next().await {
            let (slot, reader, read) = joined.map_err(|e| format!("read task: {e}"))?;
            match read {
                Ok(buf) => {
                    copies.push((slot, buf));
                    legs.push((slot, reader));
                }
                Err(ReadError::Unreadable(e)) => {
                    tracing::warn!(scrub = spec.scrub, volume = %spec.volume, leg = slot, error = %e, "leg unreadable");
                    progress.verdict.unreadable_legs.insert(slot);
                    reader.close().await;
                }
                Err(ReadError::Transport(e)) => lost = Some(format!("leg {slot}: {e}")),
            }
        }
        if let Some(e) = lost {
            for (_, reader) in legs.drain(..) {
                reader.close().await;
            }
            return Err(e);
        }
        // Slot order, so the comparison does not depend on which read
        // finished first.
        legs.sort_by_key(|(slot, _)| *slot);
        copies.sort_by_key(|(slot, _)| *slot);
        let bufs: Vec<&[u8]> = copies.iter().map(|(_, b)| b.as_slice()).collect();
        progress.verdict.mismatched_sectors += mismatched_sectors(&bufs);
        progress.done += len;
        if !pace(started, progress.done - start, rate, stop).await {
            return Ok(false);
        }
    }
    for (_, reader) in legs {
        reader.close().await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vsky_api::types::{ChunkId, LegSpec, LegState};

    const MIB: u64 = 1 << 20;
    const CHUNK: u64 = 4 * MIB;

    #[test]
    fn counts_the_sectors_where_any_copy_differs() {
        let a = vec![7u8; 4 * SECTOR];
        let same = a.clone();
        assert_eq!(mismatched_sectors(&[&a[..], &same[..], &same[..]]), 0);
        assert_eq!(
            mismatched_sectors(&[&a[..]]),
            0,
            "one copy agrees with itself"
        );
        assert_eq!(mismatched_sectors(&[]), 0);
        let mut b = a.clone();
        b[0] = 0; // sector 0
        b[SECTOR - 1] = 0; // sector 0 again
        b[3 * SECTOR + 5] = 0; // sector 3
        assert_eq!(mismatched_sectors(&[&a[..], &b[..]]), 2);
        let mut c = a.clone();
        c[SECTOR] = 1; // sector 1, in the third copy only
        assert_eq!(mismatched_sectors(&[&a[..], &b[..], &c[..]]), 3);
        assert_eq!(
            mismatched_sectors(&[&b[..], &a[..], &c[..]]),
            3,
            "any copy may be first"
        );
        // A short last sector counts too.
        let (d, mut e) = (vec![1u8; SECTOR + 10], vec![1u8; SECTOR + 10]);
        e[SECTOR + 9] = 2;
        assert_eq!(mismatched_sectors(&[&d[..], &e[..]]), 1);
    }

    /// A disk file with one chunk at `MIB`: its metadata area filled with
    /// `meta_byte`, its data area with a pattern.
    fn disk(path: &std::path::Path, meta_byte: u8) {
        let mut bytes = vec![0u8; (MIB + CHUNK) as usize];
        bytes[MIB as usize..2 * MIB as usize].fill(meta_byte);
        for (i, b) in bytes[2 * MIB as usize..].iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Serves the chunk of `path` over NBD under `name`.
    async fn serve(path: &std::path::Path, name: &str) -> String {
        crate::leg_reader::test_export::serve(path, name, MIB, CHUNK).await
    }

    fn leg(i: u8, address: String, local: Option<&std::path::Path>) -> LegSpec {
        LegSpec {
            chunk: ChunkId {
                disk_id: u64::from(i) + 1,
                index: 0,
            },
            server: format!("s{i}"),
            server_address: address,
            export_name: format!("leg{i}"),
            local_disk_path: local.map(|p| p.display().to_string()),
            offset_bytes: MIB,
            state: LegState::Active,
            resync_job: None,
        }
    }

    /// Three legs: 0 local, 1 and 2 over NBD, each with its own metadata.
    async fn three_legs(dir: &std::path::Path) -> (ScrubSpec, Vec<std::path::PathBuf>) {
        let mut legs = Vec::new();
        let mut paths = Vec::new();
        for i in 0..3u8 {
            let path = dir.join(format!("disk{i}"));
            disk(&path, 0x10 + i);
            let spec = if i == 0 {
                leg(i, "127.0.0.1:1".into(), Some(&path))
            } else {
                let address = serve(&path, &format!("leg{i}")).await;
                leg(i, address, None)
            };
            legs.push(spec);
            paths.push(path);
        }
        let spec = ScrubSpec {
            scrub: 9,
            method: vsky_api::types::ScrubMethod::CompareLegs,
            volume: "v".into(),
            mirrored_disk: 2,
            legs,
            leg_meta_bytes: MIB,
            chunk_size_bytes: CHUNK,
        };
        (spec, paths)
    }

    async fn verdict(spec: &ScrubSpec, rate: u64) -> ScrubReport {
        let mut scrubs = Scrubs::new(Default::default(), Arc::new(()));
        scrubs.start(std::slice::from_ref(spec), rate);
        loop {
            if let Some(r) = scrubs.reports().pop() {
                // Still listed: not started again.
                scrubs.start(std::slice::from_ref(spec), rate);
                assert_eq!(scrubs.reports().len(), 1);
                scrubs.retain(&[]);
                assert!(scrubs.reports().is_empty(), "unlisted: forgotten");
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn legs_that_agree_pass_whatever_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = three_legs(dir.path()).await;
        let r = verdict(&spec, 0).await;
        assert_eq!(
            (r.scrub, r.volume.as_str(), r.mirrored_disk),
            (Some(9), "v", 2)
        );
        assert_eq!(r.mismatched_sectors, 0, "{r:?}");
        assert!(r.unreadable_legs.is_empty() && r.error.is_none(), "{r:?}");
    }

    #[tokio::test]
    async fn differing_sectors_of_the_data_area_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, paths) = three_legs(dir.path()).await;
        let data = 2 * MIB; // where the data area of the chunk starts
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[1])
            .unwrap();
        // Two sectors of the first piece, one of the last (a remote leg).
        f.write_all_at(&[0xff; 3], data).unwrap();
        f.write_all_at(&[0xff; 600], data + 4096).unwrap();
        f.write_all_at(&[0xff], MIB + CHUNK - 1).unwrap();
        // One sector of the local leg, in the second piece.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[0])
            .unwrap()
            .write_all_at(&[0xff], data + MIB + 512)
            .unwrap();
        let r = verdict(&spec, 0).await;
        // 600 bytes at 4096 touch sectors 8 and 9.
        assert_eq!(r.mismatched_sectors, 5, "{r:?}");
        assert!(r.unreadable_legs.is_empty(), "{r:?}");
    }

    #[tokio::test]
    async fn a_leg_that_fails_to_read_is_named_and_the_others_compared() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, paths) = three_legs(dir.path()).await;
        // The local leg's disk ends in the middle of its data area.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[0])
            .unwrap();
        f.set_len(3 * MIB).unwrap();
        // The two others differ in one sector past that point.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[2])
            .unwrap()
            .write_all_at(&[0xff], 4 * MIB)
            .unwrap();
        let r = verdict(&spec, 0).await;
        assert_eq!(r.unreadable_legs, vec![0], "{r:?}");
        assert_eq!(r.mismatched_sectors, 1, "{r:?}");
        assert!(r.error.is_none());
    }

    #[tokio::test]
    async fn an_unreachable_leg_stops_nothing_until_unlisted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spec, _) = three_legs(dir.path()).await;
        spec.legs[2].server_address = "127.0.0.1:1".into();
        let mut scrubs = Scrubs::new(Default::default(), Arc::new(()));
        scrubs.start(std::slice::from_ref(&spec), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(scrubs.reports().is_empty(), "still retrying");
        // A new spec under the same id (a restarted manager) starts over.
        let mut other = spec.clone();
        other.mirrored_disk = 0;
        other.legs[2] = spec.legs[1].clone();
        scrubs.retain(std::slice::from_ref(&other));
        scrubs.start(std::slice::from_ref(&other), 0);
        let r = loop {
            if let Some(r) = scrubs.reports().pop() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!((r.mirrored_disk, r.mismatched_sectors), (0, 0), "{r:?}");
    }

    #[tokio::test]
    async fn the_rate_limit_paces_each_leg() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, _) = three_legs(dir.path()).await;
        let started = Instant::now();
        // 3 MiB of data at 6 MiB/s: at least about half a second.
        let r = verdict(&spec, 6 * MIB).await;
        assert_eq!(r.mismatched_sectors, 0);
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}
