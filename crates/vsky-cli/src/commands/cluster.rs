//! `vsky cluster …`: the pool-wide summary.
//!
//! The summary is computed by the manager (one consistent snapshot); the
//! CLI only lays it out, grouping counts with their failed/degraded
//! companions so that trouble is visible on the line it concerns.

use vsky_api::Client;
use vsky_api::types::ClusterSummary;

use crate::args::ClusterCommand;
use crate::error::CliError;
use crate::render::{self, KeyValue};

pub async fn run(cmd: &ClusterCommand, client: &Client, json: bool) -> Result<String, CliError> {
    match cmd {
        ClusterCommand::Status => {
            let summary = client.cluster().await?;
            Ok(if json {
                render::json(&summary)
            } else {
                render_summary(&summary, client.base_url())
            })
        }
    }
}

pub fn render_summary(s: &ClusterSummary, manager: &str) -> String {
    let mut kv = KeyValue::new();
    kv.add("Manager", manager.trim_end_matches('/'))
        .add("Cluster id", s.cluster_id.as_str())
        .add(
            "Servers",
            format!("{} ({} failed)", s.servers, s.servers_failed),
        )
        .add("Disks", format!("{} ({} failed)", s.disks, s.disks_failed))
        .add("Chunk size", render::size(s.chunk_size_bytes))
        .add("Capacity", render::size(s.capacity_bytes))
        .add("Used", with_share(s.used_bytes, s.capacity_bytes))
        .add("Free", with_share(s.free_bytes, s.capacity_bytes))
        .add("Releasing", with_share(s.releasing_bytes, s.capacity_bytes));
    if s.unavailable_bytes > 0 {
        // On failed disks or servers: outside the capacity above.
        kv.add("Unavailable", render::size(s.unavailable_bytes));
    }
    kv.add(
        "Volumes",
        format!("{} ({} attached)", s.volumes, s.volumes_attached),
    )
    .add("Provisioned", provisioned(s));
    if s.thin_allocated_bytes > 0 {
        kv.add("Thin pools", render::size(s.thin_allocated_bytes));
    }
    kv.add("Mirrored disks", s.mirrored_disks.to_string())
        .add("Degraded", s.mirrored_disks_degraded.to_string())
        .add("Rebuilding", s.mirrored_disks_rebuilding.to_string());
    kv.render()
}

/// `3 TiB (1.50× the usable capacity)`: the volumes' sizes against what
/// the pool holds at the default replicas, so over-commit shows.
fn provisioned(s: &ClusterSummary) -> String {
    let usable = s.capacity_bytes / u64::from(s.default_replicas.max(1));
    if usable == 0 {
        return render::size(s.provisioned_bytes);
    }
    format!(
        "{} ({:.2}× the usable capacity at {} replicas)",
        render::size(s.provisioned_bytes),
        s.provisioned_bytes as f64 / usable as f64,
        s.default_replicas
    )
}

/// `1.5 TiB (37.5%)`: the share of capacity, so a nearly full pool shows.
fn with_share(bytes: u64, capacity: u64) -> String {
    if capacity == 0 {
        return render::size(bytes);
    }
    let percent = bytes as f64 * 100.0 / capacity as f64;
    format!("{} ({percent:.1}%)", render::size(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_shows_units_shares_and_trouble() {
        let s = ClusterSummary {
            cluster_id: "5f0c1d2e3a4b5c6d7e8f901a2b3c4d5e".into(),
            servers: 4,
            servers_failed: 1,
            disks: 12,
            disks_failed: 2,
            chunk_size_bytes: 1 << 30,
            default_replicas: 2,
            capacity_bytes: 4 << 40,
            free_bytes: 3 << 40,
            used_bytes: 1 << 39,
            releasing_bytes: 1 << 39,
            unavailable_bytes: 1 << 40,
            volumes: 7,
            volumes_attached: 3,
            provisioned_bytes: 3 << 40,
            thin_allocated_bytes: 1 << 38,
            mirrored_disks: 40,
            mirrored_disks_degraded: 5,
            mirrored_disks_rebuilding: 2,
        };
        assert_eq!(
            render_summary(&s, "http://m:8080/"),
            "Manager:         http://m:8080\n\
             Cluster id:      5f0c1d2e3a4b5c6d7e8f901a2b3c4d5e\n\
             Servers:         4 (1 failed)\n\
             Disks:           12 (2 failed)\n\
             Chunk size:      1 GiB\n\
             Capacity:        4 TiB\n\
             Used:            512 GiB (12.5%)\n\
             Free:            3 TiB (75.0%)\n\
             Releasing:       512 GiB (12.5%)\n\
             Unavailable:     1 TiB\n\
             Volumes:         7 (3 attached)\n\
             Provisioned:     3 TiB (1.50× the usable capacity at 2 replicas)\n\
             Thin pools:      256 GiB\n\
             Mirrored disks:  40\n\
             Degraded:        5\n\
             Rebuilding:      2\n"
        );
    }

    #[test]
    fn empty_pool_has_no_division_by_zero() {
        let s = ClusterSummary {
            cluster_id: "5f0c1d2e3a4b5c6d7e8f901a2b3c4d5e".into(),
            servers: 0,
            servers_failed: 0,
            disks: 0,
            disks_failed: 0,
            chunk_size_bytes: 1 << 30,
            default_replicas: 2,
            capacity_bytes: 0,
            free_bytes: 0,
            used_bytes: 0,
            releasing_bytes: 0,
            unavailable_bytes: 0,
            volumes: 0,
            volumes_attached: 0,
            provisioned_bytes: 0,
            thin_allocated_bytes: 0,
            mirrored_disks: 0,
            mirrored_disks_degraded: 0,
            mirrored_disks_rebuilding: 0,
        };
        let text = render_summary(&s, "http://m");
        assert!(text.contains("Used:            0 B\n"), "{text}");
    }
}
