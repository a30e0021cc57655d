//! Per-call latency of plugin executables, process start to answer, next
//! to a minimal Python script doing the same REST request. A benchmark,
//! not a test: timings on shared machines are noisy, so it reports
//! medians and the ratio measured in one run, and asserts nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::runner::PluginDir;
use crate::scenarios::{self, Rig, Step, ok};

/// What a Python SMAPIv3 plugin does for Volume.stat at the least: start
/// the interpreter, one authenticated GET, parse and print JSON.
pub const PYTHON_VOLUME_STAT: &str = r#"
import json, sys, urllib.request
url, token, key = sys.argv[1:4]
req = urllib.request.Request(url + "/api/v1/volumes/" + key,
                             headers={"Authorization": "Bearer " + token})
with urllib.request.urlopen(req) as r:
    v = json.load(r)
print(json.dumps({"key": v["name"], "virtual_size": v["size_bytes"], "keys": v["keys"]}))
"#;

#[derive(Clone, Debug)]
pub struct Stats {
    pub what: String,
    pub median: Duration,
    pub p90: Duration,
    pub min: Duration,
}

fn stats(what: &str, mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        what: what.to_string(),
        median: at(0.5),
        p90: at(0.9),
        min: samples[0],
    }
}

fn time_call(p: &PluginDir, call: &str, args: &Value, n: usize) -> Step<Stats> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let out = p.call(call, args).map_err(|e| e.to_string())?;
        out.result
            .map_err(|e| format!("{call}: {} {:?}", e.code, e.params))?;
        samples.push(out.elapsed);
    }
    Ok(stats(&format!("{call} ({})", p.name), samples))
}

fn time_python(url: &str, token: &str, key: &str, n: usize) -> Step<Stats> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let out = Command::new("python3")
            .args(["-c", PYTHON_VOLUME_STAT, url, token, key])
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        samples.push(start.elapsed());
        if !out.status.success() {
            return Err(format!(
                "python3 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(stats("python3 urllib GET volume", samples))
}

/// Runs the benchmark: Plugin.Query (no network: process start-up),
/// Volume.stat (one GET) and SR.stat (two GETs) against the manager, and
/// the Python equivalent of Volume.stat. Returns the rows and the
/// Python / Volume.stat median ratio.
pub fn run(rig: &Rig, url: &str, token: &str, n: usize) -> Step<(Vec<Stats>, f64)> {
    let (sr, _, _) = scenarios::create_sr(rig, "bench")?;
    let v = scenarios::create_vdi(rig, &sr, "bench", 4 << 20)?;
    let key = v["key"].as_str().unwrap_or_default().to_string();
    let stat_args = json!({"dbg": "bench", "sr": sr, "key": key});
    // Warm the page cache and the manager's connections.
    ok(&rig.volume, "Volume.stat", stat_args.clone())?;
    time_python(url, token, &key, 2)?;
    let rows = vec![
        time_call(&rig.volume, "Plugin.Query", &json!({"dbg": "bench"}), n)?,
        time_call(&rig.volume, "Volume.stat", &stat_args, n)?,
        time_call(
            &rig.volume,
            "SR.stat",
            &json!({"dbg": "bench", "sr": sr}),
            n,
        )?,
        time_python(url, token, &key, n)?,
    ];
    let ratio = rows[3].median.as_secs_f64() / rows[1].median.as_secs_f64();
    ok(&rig.volume, "Volume.destroy", stat_args)?;
    ok(&rig.volume, "SR.destroy", json!({"dbg": "bench", "sr": sr}))?;
    Ok((rows, ratio))
}
