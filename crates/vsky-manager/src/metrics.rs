//! Prometheus metrics at `/metrics` (OpenMetrics text).
//!
//! Request counters and latency histograms are updated by the request
//! pipeline; cluster gauges (capacity, free, degraded, …) are computed from
//! the model at scrape time, so they can never drift from the truth.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use vsky_model::{JobKind, JobState, ResyncJob};
use vsky_sync::LockExt;

use crate::manager::{Manager, ManagerError};
use crate::recovery::Recovery;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RebuildLabels {
    rebuild: String,
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    gauges: Gauges,
    /// Per running rebuild: bytes left and measured rate (rebuilt at every
    /// scrape, so finished rebuilds disappear).
    rebuild_left: Family<RebuildLabels, Gauge>,
    rebuild_rate: Family<RebuildLabels, Gauge<f64, AtomicU64>>,
    /// Per server: seconds since its last heartbeat to this manager (from
    /// the manager's start for one not heard from since). Rebuilt at every
    /// scrape, so removed servers disappear.
    heartbeat_age: Family<ServerLabels, Gauge<f64, AtomicU64>>,
    /// Per thin volume written by a head: its pool's mapped and total data
    /// (rebuilt at every scrape from the heads' latest reports).
    pool_mapped: Family<PoolLabels, Gauge>,
    pool_data: Family<PoolLabels, Gauge>,
    /// Encoding needs exclusive access to nothing but the output buffer;
    /// the mutex only serialises concurrent scrapes.
    scrape: Mutex<()>,
}

#[derive(Default)]
struct Gauges {
    capacity: Gauge,
    free: Gauge,
    used: Gauge,
    releasing: Gauge,
    unavailable: Gauge,
    servers: Gauge,
    servers_failed: Gauge,
    disks: Gauge,
    disks_failed: Gauge,
    volumes: Gauge,
    provisioned: Gauge,
    thin_allocated: Gauge,
    mirrored_disks: Gauge,
    degraded: Gauge,
    rebuilding: Gauge,
    rebuilds_queued: Gauge,
    rebuilds_running: Gauge,
    scrubs: Gauge,
    scrubs_running: Gauge,
    scrub_mismatches: Gauge,
    task_restarts: Gauge,
    moves: Gauge,
    disks_draining: Gauge,
    drain_legs_left: Gauge,
    fill_spread: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vsky");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register("http_requests", "REST requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "REST request latency",
            latency.clone(),
        );
        let g = Gauges::default();
        let gauges: [(&str, &str, &Gauge); 24] = [
            (
                "moves",
                "Leg moves (drain, rebalance) queued or running; also counted in rebuilds_*",
                &g.moves,
            ),
            (
                "disks_draining",
                "Disks draining (on their own or with their server)",
                &g.disks_draining,
            ),
            (
                "drain_legs_left",
                "Legs still on draining disks",
                &g.drain_legs_left,
            ),
            (
                "scrubs_finished",
                "Mirrored disk scrubs reported finished since the manager started",
                &g.scrubs,
            ),
            (
                "scrubs_running",
                "Mirrored disk scrubs running now (they count against the per-disk limit)",
                &g.scrubs_running,
            ),
            (
                "scrub_mismatches",
                "Scrubs that found legs differing, since the manager started",
                &g.scrub_mismatches,
            ),
            (
                "task_restarts",
                "Background tasks (the recovery loop) restarted after a panic, since the manager started; any value above 0 is a bug to report",
                &g.task_restarts,
            ),
            (
                "rebuilds_queued",
                "Resyncs waiting for their disks (per-disk limit)",
                &g.rebuilds_queued,
            ),
            ("rebuilds_running", "Resyncs running", &g.rebuilds_running),
            (
                "capacity_bytes",
                "Chunk bytes on serving disks",
                &g.capacity,
            ),
            ("free_bytes", "Chunk bytes free for new legs", &g.free),
            ("used_bytes", "Chunk bytes used by legs", &g.used),
            (
                "releasing_bytes",
                "Chunk bytes freed and awaiting their wipe",
                &g.releasing,
            ),
            (
                "unavailable_bytes",
                "Chunk bytes on failed disks and failed servers' disks",
                &g.unavailable,
            ),
            ("servers", "Registered servers", &g.servers),
            ("servers_failed", "Servers marked failed", &g.servers_failed),
            ("disks", "Registered disks", &g.disks),
            ("disks_failed", "Disks marked failed", &g.disks_failed),
            ("volumes", "Volumes and snapshots", &g.volumes),
            (
                "provisioned_bytes",
                "Sizes of the writable volumes, thick and thin (over-commit when above the usable capacity)",
                &g.provisioned,
            ),
            (
                "thin_allocated_bytes",
                "Usable bytes held by the pools of thin volumes, snapshots and clones",
                &g.thin_allocated,
            ),
            (
                "mirrored_disks",
                "Mirrored disks of all volumes",
                &g.mirrored_disks,
            ),
            (
                "mirrored_disks_degraded",
                "Mirrored disks with a failed leg",
                &g.degraded,
            ),
            (
                "mirrored_disks_rebuilding",
                "Mirrored disks with a resyncing leg",
                &g.rebuilding,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "disk_fill_spread_ratio",
            "Fill (used chunks / chunks) of the fullest minus the emptiest disk taking new chunks",
            g.fill_spread.clone(),
        );
        let rebuild_left = Family::<RebuildLabels, Gauge>::default();
        let rebuild_rate = Family::<RebuildLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rebuild_bytes_left",
            "Bytes a running resync still has to copy",
            rebuild_left.clone(),
        );
        registry.register(
            "rebuild_rate_bytes_per_second",
            "Copy rate of a running resync, measured from its progress reports",
            rebuild_rate.clone(),
        );
        let heartbeat_age = Family::<ServerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "server_heartbeat_age_seconds",
            "Seconds since the server's agent last sent a heartbeat to this manager (counted from the manager's start if not since); above --head-grace its volumes may be taken over, above --server-grace its legs are replaced",
            heartbeat_age.clone(),
        );
        let pool_mapped = Family::<PoolLabels, Gauge>::default();
        let pool_data = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "thin_pool_mapped_bytes",
            "Data a thin volume's writable pool has mapped, as its head last reported",
            pool_mapped.clone(),
        );
        registry.register(
            "thin_pool_data_bytes",
            "Data a thin volume's writable pool holds now (it grows as it fills)",
            pool_data.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            gauges: g,
            rebuild_left,
            rebuild_rate,
            heartbeat_age,
            pool_mapped,
            pool_data,
            scrape: Mutex::new(()),
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.into(),
                route: route.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn render(&self, manager: &Manager, recovery: &Recovery) -> Result<String, ManagerError> {
        let usages = recovery.pool_usages();
        let (s, jobs, draining, spread, scrubs_running, servers, pools) = manager.read(|c| {
            let jobs: Vec<(ResyncJob, String)> = c
                .jobs()
                .filter(|j| j.is_active())
                .map(|j| (j.clone(), c.volume_label(j.volume)))
                .collect();
            let draining: Vec<u64> = c
                .disks()
                .filter(|d| c.is_draining(d.id))
                .map(|d| c.drain_progress(d.id).legs_left)
                .collect();
            (
                c.summary(),
                jobs,
                draining,
                c.fill_spread(),
                c.scrubs().count(),
                c.servers()
                    .map(|s| (s.id, s.name.clone()))
                    .collect::<Vec<_>>(),
                usages
                    .iter()
                    .filter_map(|u| Some((c.pool_writer(&u.layer)?, u)))
                    .map(|((volume, block), u)| {
                        let bytes = |blocks: u64| blocks.saturating_mul(block);
                        (
                            volume,
                            bytes(u.used_data_blocks),
                            bytes(u.total_data_blocks),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        })?;
        let _guard = self.scrape.lock_unpoisoned();
        let g = &self.gauges;
        let set = |gauge: &Gauge, v: u64| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&g.capacity, s.capacity_bytes);
        set(&g.free, s.free_bytes);
        set(&g.used, s.used_bytes);
        set(&g.releasing, s.releasing_bytes);
        set(&g.unavailable, s.unavailable_bytes);
        set(&g.servers, s.servers as u64);
        set(&g.servers_failed, s.servers_failed as u64);
        set(&g.disks, s.disks as u64);
        set(&g.disks_failed, s.disks_failed as u64);
        set(&g.volumes, s.volumes as u64);
        set(&g.provisioned, s.provisioned_bytes);
        set(&g.thin_allocated, s.thin_allocated_bytes);
        set(&g.mirrored_disks, s.mirrored_disks as u64);
        set(&g.degraded, s.mirrored_disks_degraded as u64);
        set(&g.rebuilding, s.mirrored_disks_rebuilding as u64);
        let (scrubs, mismatches) = recovery.scrub_counts();
        set(&g.scrubs, scrubs);
        set(&g.scrubs_running, scrubs_running as u64);
        set(&g.scrub_mismatches, mismatches);
        set(&g.task_restarts, vsky_sync::restarts());
        let running: Vec<&(ResyncJob, String)> = jobs
            .iter()
            .filter(|(j, _)| j.state == JobState::Running)
            .collect();
        set(&g.rebuilds_running, running.len() as u64);
        set(&g.rebuilds_queued, (jobs.len() - running.len()) as u64);
        set(
            &g.moves,
            jobs.iter()
                .filter(|(j, _)| matches!(j.kind, JobKind::Move { .. }))
                .count() as u64,
        );
        set(&g.disks_draining, draining.len() as u64);
        set(&g.drain_legs_left, draining.iter().sum());
        g.fill_spread.set(spread);
        self.rebuild_left.clear();
        self.rebuild_rate.clear();
        for (j, volume) in running {
            let labels = RebuildLabels {
                rebuild: j.id.0.to_string(),
                volume: volume.clone(),
            };
            set(
                &self.rebuild_left.get_or_create(&labels),
                j.bytes_total.saturating_sub(j.bytes_done),
            );
            if let Some(rate) = recovery.rate(j.id) {
                self.rebuild_rate.get_or_create(&labels).set(rate);
            }
        }
        self.heartbeat_age.clear();
        for (id, server) in servers {
            self.heartbeat_age
                .get_or_create(&ServerLabels { server })
                .set(recovery.heartbeat_age(manager, id).as_secs_f64());
        }
        self.pool_mapped.clear();
        self.pool_data.clear();
        for (volume, mapped, data) in pools {
            let labels = PoolLabels { volume };
            set(&self.pool_mapped.get_or_create(&labels), mapped);
            set(&self.pool_data.get_or_create(&labels), data);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        Ok(out)
    }
}
