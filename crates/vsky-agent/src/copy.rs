//! Server-to-server resync of a detached volume's leg.
//!
//! When a leg of a detached volume fails, no head is there to rebuild it
//! through dm-raid, yet the volume must not stay with one copy of its data.
//! The manager then asks the storage agent holding the new chunk to fill it:
//! this module reads the healthy source leg over NBD (the same secret export
//! a head would use; `leg_reader.rs`) and writes the data area into the
//! local chunk.
//!
//! Only the data area is copied. The metadata area (dm-raid's superblock and
//! bitmap) belongs to one slot of one mirror; the new chunk's stays zeroed
//! (freed chunks are wiped before reuse), so the next head to assemble the
//! volume sees a new member and resyncs it from an in-sync leg. The copy
//! restores redundancy now; that later resync keeps dm-raid's metadata
//! honest.
//!
//! A copy must never overlap a head writing the same chunk. The manager
//! lists a copy and exports the chunk to a head in mutually exclusive
//! states, and [`Copies::retain`] waits until a cancelled copy's last write
//! has landed, so the agent can stop copies before it adds exports.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use vsky_api::types::{CopySpec, ResyncReport};
use vsky_sync::LockExt;

use crate::leg_reader::{LegReader, pace};

/// Bytes read and written per step.
const PIECE: u64 = 1 << 20;
/// Wait before retrying a copy whose source could not be reached (short in
/// unit tests, which give up on purpose).
const RETRY: Duration = if cfg!(test) {
    Duration::from_millis(20)
} else {
    Duration::from_secs(3)
};
/// Attempts before a copy is reported failed (the manager then plans a new
/// replacement or another source).
const ATTEMPTS: u32 = 5;

/// The copies this agent runs, by job id.
pub struct Copies {
    running: BTreeMap<u64, Running>,
    /// Latest progress per job, for the heartbeat.
    progress: Arc<Mutex<BTreeMap<u64, ResyncReport>>>,
    /// Woken when a copy ends, so the heartbeat carries it at once.
    ended: Arc<dyn Notifier>,
}

/// Something to poke when a copy ends (the agent's heartbeat).
pub trait Notifier: Send + Sync {
    fn notify(&self);
}

impl Notifier for () {
    fn notify(&self) {}
}

struct Running {
    /// What it copies: the manager may list the same job again with
    /// another source (the first could not be read), a new copy.
    spec: CopySpec,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Why a copy failed: the source could not be read (the manager picks
/// another healthy leg), or the local target could not be written (the
/// manager replaces the target).
#[derive(Debug)]
enum CopyError {
    Source(String),
    Target(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Source(e) | CopyError::Target(e) => f.write_str(e),
        }
    }
}

impl Copies {
    pub fn new(
        progress: Arc<Mutex<BTreeMap<u64, ResyncReport>>>,
        ended: Arc<dyn Notifier>,
    ) -> Self {
        Copies {
            running: BTreeMap::new(),
            progress,
            ended,
        }
    }

    /// Stops (and waits for) every copy not in `keep` (or listed again
    /// with another spec), and forgets their reports.
    pub async fn retain(&mut self, keep: &[CopySpec]) {
        let gone: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| !keep.contains(&r.spec))
            .map(|(job, _)| *job)
            .collect();
        for job in gone {
            let r = self.running.remove(&job).expect("listed");
            let _ = r.stop.send(true);
            // Waiting (not aborting) guarantees the last write is done.
            let _ = r.task.await;
            self.progress.lock_unpoisoned().remove(&job);
            tracing::info!(job, "copy stopped");
        }
        let running = &self.running;
        self.progress
            .lock_unpoisoned()
            .retain(|job, _| running.contains_key(job));
    }

    /// Starts the listed copies that are not running yet. A copy that
    /// finished or failed stays in the progress map until the manager stops
    /// listing it, so it is not started twice.
    pub fn start(&mut self, copies: &[CopySpec]) {
        for spec in copies {
            if self.running.contains_key(&spec.job) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let progress = self.progress.clone();
            let ended = self.ended.clone();
            let spec = spec.clone();
            let job = spec.job;
            tracing::info!(job, source = %spec.source.server, "copy started");
            let task = tokio::spawn({
                let spec = spec.clone();
                async move {
                    let report = match copy_with_retries(&spec, stop_rx, &progress).await {
                        Ok(true) => ResyncReport {
                            job,
                            bytes_done: data_bytes(&spec),
                            done: true,
                            error: None,
                            failed_source: None,
                        },
                        Ok(false) => return, // stopped
                        Err(e) => {
                            tracing::error!(job, error = %e, "copy failed");
                            ResyncReport {
                                job,
                                bytes_done: 0,
                                done: false,
                                error: Some(e.to_string()),
                                failed_source: matches!(e, CopyError::Source(_))
                                    .then_some(spec.source.chunk),
                            }
                        }
                    };
                    progress.lock_unpoisoned().insert(job, report);
                    ended.notify();
                }
            });
            self.running.insert(job, Running { spec, stop, task });
        }
    }

    /// The reports to send with the next heartbeat.
    pub fn reports(&self) -> Vec<ResyncReport> {
        self.progress.lock_unpoisoned().values().cloned().collect()
    }
}

fn data_bytes(spec: &CopySpec) -> u64 {
    spec.chunk_size_bytes.saturating_sub(spec.leg_meta_bytes)
}

/// Copies, retrying transient errors. Ok(true): done; Ok(false): stopped.
/// The error says whose it was, the last attempt's.
async fn copy_with_retries(
    spec: &CopySpec,
    mut stop: watch::Receiver<bool>,
    progress: &Mutex<BTreeMap<u64, ResyncReport>>,
) -> Result<bool, CopyError> {
    let (meta, chunk) = (spec.leg_meta_bytes, spec.chunk_size_bytes);
    if meta >= chunk {
        // Retrying cannot fix this.
        return Err(CopyError::Target(format!(
            "bad copy spec: {meta}-byte metadata in a {chunk}-byte chunk"
        )));
    }
    let mut last = CopyError::Target(String::new());
    for attempt in 1..=ATTEMPTS {
        match copy_once(spec, &mut stop, progress).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::warn!(job = spec.job, attempt, error = %e, "copy attempt failed");
                last = e;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
    let gave_up = |e: String| format!("gave up after {ATTEMPTS} attempts: {e}");
    Err(match last {
        CopyError::Source(e) => CopyError::Source(gave_up(e)),
        CopyError::Target(e) => CopyError::Target(gave_up(e)),
    })
}

async fn copy_once(
    spec: &CopySpec,
    stop: &mut watch::Receiver<bool>,
    progress: &Mutex<BTreeMap<u64, ResyncReport>>,
) -> Result<bool, CopyError> {
    let meta = spec.leg_meta_bytes;
    let data = data_bytes(spec);
    let target = CopyError::Target;
    let mut source = LegReader::open(&spec.source, spec.chunk_size_bytes)
        .await
        .map_err(|e| CopyError::Source(format!("source on {}: {e}", spec.source.server)))?;
    let path = PathBuf::from(&spec.target_disk_path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| target(format!("cannot open {}: {e}", path.display())))?;
    let file = Arc::new(file);
    let base = spec.target_offset_bytes + meta;
    let started = Instant::now();
    let mut done = 0u64;
    while done < data {
        if *stop.borrow() {
            return Ok(false);
        }
        let len = PIECE.min(data - done);
        let buf = source.read(meta + done, len as u32).await.map_err(|e| {
            CopyError::Source(format!(
                "reading the source on {} at {}: {e}",
                spec.source.server,
                meta + done
            ))
        })?;
        let f = file.clone();
        let at = base + done;
        tokio::task::spawn_blocking(move || f.write_all_at(&buf, at))
            .await
            .map_err(|e| target(format!("write task: {e}")))?
            .map_err(|e| target(format!("writing {} at {at}: {e}", path.display())))?;
        done += len;
        progress.lock_unpoisoned().insert(
            spec.job,
            ResyncReport {
                job: spec.job,
                bytes_done: done,
                done: false,
                error: None,
                failed_source: None,
            },
        );
        // Stay under the rate.
        if !pace(started, done, spec.rate_bytes_per_second, stop).await {
            return Ok(false);
        }
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_data())
        .await
        .map_err(|e| target(format!("sync task: {e}")))?
        .map_err(|e| target(format!("syncing {}: {e}", path.display())))?;
    source.close().await;
    tracing::info!(
        job = spec.job,
        bytes = data,
        seconds = started.elapsed().as_secs_f64(),
        "copy done"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::{ChunkId, LegSpec, LegState};

    const MIB: u64 = 1 << 20;

    fn spec(address: String, target: &std::path::Path, rate: u64) -> CopySpec {
        CopySpec {
            job: 7,
            source: LegSpec {
                chunk: ChunkId {
                    disk_id: 1,
                    index: 1,
                },
                server: "src".into(),
                server_address: address,
                export_name: "secret".into(),
                local_disk_path: None,
                offset_bytes: 0,
                state: LegState::Active,
                resync_job: None,
            },
            target_chunk: ChunkId {
                disk_id: 2,
                index: 0,
            },
            target_disk_path: target.display().to_string(),
            target_offset_bytes: MIB,
            leg_meta_bytes: MIB,
            chunk_size_bytes: 4 * MIB,
            rate_bytes_per_second: rate,
        }
    }

    /// A source disk with a patterned 4 MiB chunk at 4 MiB, served over NBD.
    async fn source(dir: &std::path::Path) -> (String, Vec<u8>) {
        let path = dir.join("source");
        let mut bytes = vec![0u8; 12 * MIB as usize];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let address =
            crate::leg_reader::test_export::serve(&path, "secret", 4 * MIB, 4 * MIB).await;
        (address, bytes[4 * MIB as usize..8 * MIB as usize].to_vec())
    }

    /// The report of the first copy that ended (done or failed).
    async fn ended(copies: &Copies) -> ResyncReport {
        loop {
            if let Some(r) = copies
                .reports()
                .into_iter()
                .find(|r| r.done || r.error.is_some())
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn copies_the_data_area_and_leaves_the_metadata_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (address, chunk) = source(dir.path()).await;
        let target = dir.path().join("target");
        std::fs::write(&target, vec![0xeeu8; 6 * MIB as usize]).unwrap();
        let mut copies = Copies::new(Default::default(), Arc::new(()));
        let s = spec(address, &target, 0);
        copies.start(std::slice::from_ref(&s));
        let report = ended(&copies).await;
        assert!(report.done, "{report:?}");
        assert_eq!(report.bytes_done, 3 * MIB);
        let written = std::fs::read(&target).unwrap();
        let m = MIB as usize;
        // Before the chunk and its metadata area: untouched.
        assert!(written[..2 * m].iter().all(|b| *b == 0xee));
        // The data area is the source's data area.
        assert_eq!(&written[2 * m..5 * m], &chunk[m..]);
        // Past the chunk: untouched.
        assert!(written[5 * m..].iter().all(|b| *b == 0xee));
        // Still listed: not restarted; unlisted: its report is forgotten.
        copies.start(std::slice::from_ref(&s));
        copies.retain(&[]).await;
        assert!(copies.reports().is_empty());
    }

    #[tokio::test]
    async fn a_stopped_copy_writes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let (address, _) = source(dir.path()).await;
        let target = dir.path().join("target");
        std::fs::write(&target, vec![0u8; 6 * MIB as usize]).unwrap();
        let mut copies = Copies::new(Default::default(), Arc::new(()));
        // 1 MiB/s: the copy takes about 3 s, so it is stopped midway.
        copies.start(&[spec(address, &target, MIB)]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        copies.retain(&[]).await;
        let after_stop = std::fs::read(&target).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(std::fs::read(&target).unwrap(), after_stop);
        assert!(
            after_stop[5 * MIB as usize - 1] == 0,
            "the copy was stopped before its end"
        );
    }

    /// A source that cannot be reached is reported as the source's fault,
    /// naming its chunk; listed again with another source, the same job is
    /// a new copy, which completes.
    #[tokio::test]
    async fn an_unreachable_source_is_named_and_another_one_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, vec![0u8; 6 * MIB as usize]).unwrap();
        let dead = spec("127.0.0.1:1".into(), &target, 0);
        let mut copies = Copies::new(Default::default(), Arc::new(()));
        copies.start(std::slice::from_ref(&dead));
        let report = ended(&copies).await;
        assert_eq!(report.failed_source, Some(dead.source.chunk), "{report:?}");
        assert!(report.error.unwrap().contains("source on src"));
        // Still listed as it was: not started again.
        copies.retain(std::slice::from_ref(&dead)).await;
        copies.start(std::slice::from_ref(&dead));
        assert!(copies.reports()[0].error.is_some());
        // The manager lists it with a healthy leg: a new copy.
        let (address, chunk) = source(dir.path()).await;
        let mut live = spec(address, &target, 0);
        live.source.chunk.index = 2;
        copies.retain(std::slice::from_ref(&live)).await;
        assert!(copies.reports().is_empty(), "the old verdict is gone");
        copies.start(std::slice::from_ref(&live));
        let report = ended(&copies).await;
        assert!(report.done && report.failed_source.is_none(), "{report:?}");
        let written = std::fs::read(&target).unwrap();
        assert_eq!(
            &written[2 * MIB as usize..5 * MIB as usize],
            &chunk[MIB as usize..]
        );
    }

    /// A target that cannot be written is the target's fault.
    #[tokio::test]
    async fn an_unwritable_target_is_not_blamed_on_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let (address, _) = source(dir.path()).await;
        let missing = dir.path().join("no-such-disk");
        let mut copies = Copies::new(Default::default(), Arc::new(()));
        copies.start(&[spec(address, &missing, 0)]);
        let report = ended(&copies).await;
        assert_eq!(report.failed_source, None, "{report:?}");
        assert!(report.error.unwrap().contains("cannot open"));
    }

    #[tokio::test]
    async fn a_bad_spec_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, vec![0u8; 6 * MIB as usize]).unwrap();
        let mut s = spec("127.0.0.1:1".into(), &target, 0);
        s.chunk_size_bytes = MIB; // no data area
        let mut copies = Copies::new(Default::default(), Arc::new(()));
        copies.start(&[s]);
        let report = ended(&copies).await;
        assert!(!report.done);
        assert!(report.error.unwrap().contains("bad copy spec"));
    }
}
