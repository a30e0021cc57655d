//! The monitoring files an admin installs (`packaging/monitoring/`: the
//! Prometheus alert rules and the Grafana dashboard) against a real
//! manager: every `vsky_…` metric name their expressions use must be one
//! the manager exports at `/metrics`, so a renamed metric fails here rather
//! than silently in someone's alerting.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;

fn monitoring_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/monitoring")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The PromQL expressions of the alert rules. The rules file keeps each
/// `expr:` on one line (its header says so), so a line scan finds them all
/// without a YAML parser.
fn alert_exprs(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

/// The alert names of the rules file.
fn alert_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert:"))
        .map(|a| a.trim().to_string())
        .collect()
}

/// The PromQL expressions of every panel target in the dashboard.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    panels
        .iter()
        .flat_map(|p| {
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
            targets.iter().map(|t| {
                t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a target of panel {} has no expr", p["title"]))
                    .to_string()
            })
        })
        .collect()
}

/// The `vsky_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("vsky_") {
        // A match inside a longer identifier (e.g. `my_vsky_x`) is not ours.
        let preceded_by_ident = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every series name the exposition text offers: the sample lines' names,
/// and from each `# TYPE` line the names its type produces (a labelled
/// family with no samples yet, such as a rebuild's bytes left while nothing
/// rebuilds, still declares its type).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("malformed TYPE line {line:?}");
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn the_name_scanner_finds_whole_identifiers_only() {
    assert_eq!(
        metric_names("vsky_free_bytes / vsky_capacity_bytes < 0.15 and my_vsky_x > 0"),
        BTreeSet::from([
            "vsky_capacity_bytes".to_string(),
            "vsky_free_bytes".to_string()
        ])
    );
    assert_eq!(
        metric_names("rate(vsky_http_requests_total{route=\"/v1/volumes\"}[5m])"),
        BTreeSet::from(["vsky_http_requests_total".to_string()])
    );
}

/// The rules cover what an admin must hear about: degraded mirrors, a
/// rebuild without progress, a silent server, low pool space and a scrub
/// mismatch.
#[test]
fn the_alert_rules_cover_the_failures_an_admin_must_hear_about() {
    let rules = monitoring_file("vastsky-alerts.yml");
    let names = alert_names(&rules);
    for alert in [
        "VastskyMirrorsDegraded",
        "VastskyRebuildStalled",
        "VastskyServerSilent",
        "VastskyServerFailed",
        "VastskyPoolLowSpace",
        "VastskyScrubMismatch",
    ] {
        assert!(
            names.contains(alert),
            "{alert} missing from the rules: {names:?}"
        );
    }
    assert_eq!(
        alert_exprs(&rules).len(),
        names.len(),
        "every alert has exactly one one-line expr"
    );
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let m = ManagerProcess::start(MANAGER, dir.path(), &["--chunk-size", "8MiB"]);
    let admin = m.admin();
    register_pool(&admin, &pool(3, 1)).await;
    admin.create_volume(&volume("v", 7 * MIB)).await.unwrap();
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", m.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = exported_names(&text);
    // The scrape reflects the cluster just made, so the parse is not empty
    // by accident.
    assert!(text.contains("vsky_servers 3"), "{text}");
    assert!(text.contains("vsky_volumes 1"), "{text}");

    let rules = monitoring_file("vastsky-alerts.yml");
    let dashboard: serde_json::Value =
        serde_json::from_str(&monitoring_file("vastsky-dashboard.json"))
            .expect("the dashboard is valid JSON");
    let mut used = BTreeSet::new();
    for (source, exprs) in [
        ("vastsky-alerts.yml", alert_exprs(&rules)),
        ("vastsky-dashboard.json", dashboard_exprs(&dashboard)),
    ] {
        assert!(!exprs.is_empty(), "{source} has no expressions");
        for expr in exprs {
            for name in metric_names(&expr) {
                assert!(
                    exported.contains(&name),
                    "{source} uses {name} (in `{expr}`), which the manager does not export; \
                     exported: {exported:?}"
                );
                used.insert(name);
            }
        }
    }
    // Both files together watch the health gauges the alerts are about.
    for name in [
        "vsky_mirrored_disks_degraded",
        "vsky_rebuild_bytes_left",
        "vsky_servers_failed",
        "vsky_free_bytes",
        "vsky_scrub_mismatches",
    ] {
        assert!(used.contains(name), "no rule or panel uses {name}");
    }
}
