//! Prometheus metrics at `/metrics` (OpenMetrics text).
//!
//! Request counters and latency histograms are updated by the request
//! pipeline; cluster gauges (capacity, free, degraded, …) are computed from
//! the model at scrape time, so they can never drift from the truth.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::service::{Manager, ServiceError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
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
    servers: Gauge,
    servers_failed: Gauge,
    disks: Gauge,
    disks_failed: Gauge,
    volumes: Gauge,
    mirrored_disks: Gauge,
    degraded: Gauge,
    rebuilding: Gauge,
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
        let gauges: [(&str, &str, &Gauge); 12] = [
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
            ("servers", "Registered servers", &g.servers),
            ("servers_failed", "Servers marked failed", &g.servers_failed),
            ("disks", "Registered disks", &g.disks),
            ("disks_failed", "Disks marked failed", &g.disks_failed),
            ("volumes", "Volumes", &g.volumes),
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
        Metrics {
            registry,
            requests,
            latency,
            gauges: g,
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

    pub fn render(&self, manager: &Manager) -> Result<String, ServiceError> {
        let s = manager.read(|c| c.summary())?;
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let g = &self.gauges;
        let set = |gauge: &Gauge, v: u64| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&g.capacity, s.capacity_bytes);
        set(&g.free, s.free_bytes);
        set(&g.used, s.used_bytes);
        set(&g.releasing, s.releasing_bytes);
        set(&g.servers, s.servers as u64);
        set(&g.servers_failed, s.servers_failed as u64);
        set(&g.disks, s.disks as u64);
        set(&g.disks_failed, s.disks_failed as u64);
        set(&g.volumes, s.volumes as u64);
        set(&g.mirrored_disks, s.mirrored_disks as u64);
        set(&g.degraded, s.mirrored_disks_degraded as u64);
        set(&g.rebuilding, s.mirrored_disks_rebuilding as u64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        Ok(out)
    }
}
