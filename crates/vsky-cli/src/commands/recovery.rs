//! `vsky rebuild list` and `vsky events`: watching the cluster repair
//! itself.
//!
//! Two commands here stream instead of returning one answer: `rebuild list
//! --wait` prints a progress line every couple of seconds until nothing is
//! left to rebuild, and `events --follow` prints events as they happen.
//! They write to stdout as they go (a closed pipe ends them quietly) and
//! return only the final part.

use std::io;
use std::time::{Duration, Instant};

use vsky_api::Client;
use vsky_api::types::{ChunkLocation, Event, Rebuild, RebuildList, RebuildState};

use crate::args::RebuildCommand;
use crate::error::CliError;
use crate::render::{self, Align, Table};

/// How often `--wait` polls the manager.
const POLL: Duration = Duration::from_secs(2);
/// How long one `--follow` request waits for a new event.
const FOLLOW_WAIT: Duration = Duration::from_secs(25);

pub async fn rebuild(
    cmd: &RebuildCommand,
    client: &Client,
    json: bool,
) -> Result<String, CliError> {
    let RebuildCommand::List {
        all,
        wait,
        wait_timeout,
    } = cmd;
    if *wait && !wait_for_rebuilds(client, *wait_timeout, json).await? {
        return Ok(String::new());
    }
    let list = client.rebuilds(*all || *wait).await?;
    Ok(if json {
        render::json(&list)
    } else if list.rebuilds.is_empty() {
        "No rebuilds: every mirrored disk has all its legs.\n".to_string()
    } else {
        render_rebuild_table(&list)
    })
}

/// Prints a progress line every couple of seconds until no rebuild is
/// queued or running. Returns false if stdout's reader went away; fails
/// when `timeout` passes first.
pub async fn wait_for_rebuilds(
    client: &Client,
    timeout: Duration,
    json: bool,
) -> Result<bool, CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = client.rebuilds(false).await?;
        if list.queued + list.running == 0 {
            return Ok(true);
        }
        if !json && !emit(&format!("{}\n", progress_line(&list)))? {
            return Ok(false);
        }
        if Instant::now() >= deadline {
            return Err(CliError::WaitTimedOut(format!(
                "rebuilds still {} running and {} queued after {} s; `vsky rebuild list` shows them, `vsky events` says why",
                list.running,
                list.queued,
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn events(
    client: &Client,
    since: u64,
    limit: Option<usize>,
    follow: bool,
    json: bool,
) -> Result<String, CliError> {
    if !follow {
        let page = client.events(since, limit, Duration::ZERO).await?;
        return Ok(if json {
            render::json(&page)
        } else if page.events.is_empty() {
            "No events.\n".to_string()
        } else {
            let mut out = String::new();
            if page.truncated {
                out.push_str("(older events were dropped from the manager's log)\n");
            }
            for e in &page.events {
                out.push_str(&event_line(e));
            }
            out
        });
    }
    let mut since = since;
    loop {
        let page = client.events(since, limit, FOLLOW_WAIT).await?;
        let mut text = String::new();
        for e in &page.events {
            if json {
                text.push_str(&serde_json::to_string(e).unwrap_or_default());
                text.push('\n');
            } else {
                text.push_str(&event_line(e));
            }
        }
        if !text.is_empty() && !emit(&text)? {
            return Ok(String::new());
        }
        since = page.next;
    }
}

/// Writes streamed output; false when the reader has gone away.
fn emit(text: &str) -> Result<bool, CliError> {
    use io::Write;
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Config(format!("cannot write to stdout: {e}"))),
    }
}

/// `[#########...........]  45%  2 running, 3 queued, 1.1 GiB left, ETA 2m 10s`
pub fn progress_line(list: &RebuildList) -> String {
    let total: u64 = list.rebuilds.iter().map(|r| r.bytes_total).sum();
    let done: u64 = list.rebuilds.iter().map(|r| r.bytes_done).sum();
    let fraction = if total == 0 {
        0.0
    } else {
        done as f64 / total as f64
    };
    const WIDTH: usize = 24;
    let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
    let rate: f64 = list
        .rebuilds
        .iter()
        .filter_map(|r| r.rate_bytes_per_second)
        .sum();
    let left = total.saturating_sub(done);
    let eta = if rate > 0.0 {
        format!(", ETA {}", duration(left as f64 / rate))
    } else {
        String::new()
    };
    format!(
        "[{}{}] {:>3.0}%  {} running, {} queued, {} left{eta}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        fraction * 100.0,
        list.running,
        list.queued,
        render::size(left),
    )
}

pub fn render_rebuild_table(list: &RebuildList) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("VOLUME", Align::Left),
        ("MD/LEG", Align::Left),
        ("STATE", Align::Left),
        ("FROM", Align::Left),
        ("TO", Align::Left),
        ("BY", Align::Left),
        ("DONE", Align::Right),
        ("RATE", Align::Right),
        ("ETA", Align::Right),
    ]);
    for r in &list.rebuilds {
        t.row(vec![
            r.id.to_string(),
            render::clean(&r.volume),
            format!("{}/{}", r.mirrored_disk, r.leg),
            state_cell(r),
            r.source
                .as_ref()
                .map(location)
                .unwrap_or_else(|| "-".into()),
            location(&r.target),
            render::opt(r.executor.as_deref()),
            percent(r),
            r.rate_bytes_per_second
                .map(|b| format!("{}/s", render::size(b as u64)))
                .unwrap_or_else(|| "-".into()),
            r.eta_seconds.map(duration).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = t.render();
    out.push_str(&format!(
        "{} running, {} queued.\n",
        list.running, list.queued
    ));
    for r in list.rebuilds.iter().filter(|r| r.error.is_some()) {
        out.push_str(&format!(
            "rebuild {}: {}\n",
            r.id,
            render::clean(r.error.as_deref().unwrap_or_default())
        ));
    }
    out
}

fn state_cell(r: &Rebuild) -> String {
    match r.state {
        RebuildState::Failed => "failed".into(),
        other => render::state(&other),
    }
}

fn percent(r: &Rebuild) -> String {
    if r.bytes_total == 0 {
        return "-".into();
    }
    format!("{:.0}%", r.bytes_done as f64 * 100.0 / r.bytes_total as f64)
}

/// `server:disk#chunk`
fn location(l: &ChunkLocation) -> String {
    let server = if l.server.is_empty() { "?" } else { &l.server };
    format!("{}:{}#{}", render::clean(server), l.disk_id, l.chunk_index)
}

/// `45s`, `3m 20s`, `2h 5m`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// `#12  2026-11-30 04:12:33Z  warning  leg_failed  message`
pub fn event_line(e: &Event) -> String {
    format!(
        "#{:<5} {}  {:<7}  {:<15}  {}\n",
        e.seq,
        utc(e.time_unix_ms),
        e.severity,
        e.kind,
        render::clean(&e.message)
    )
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC), from the
/// civil-from-days algorithm, so the CLI needs no time-zone crate.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rebuild(id: u64, state: RebuildState, done: u64, rate: Option<f64>) -> Rebuild {
        let at = |server: &str, disk_id| ChunkLocation {
            server: server.into(),
            disk_id,
            chunk_index: 3,
        };
        Rebuild {
            id,
            volume: "v1".into(),
            mirrored_disk: 0,
            leg: 1,
            state,
            source: Some(at("s1", 7)),
            target: at("s4", 12),
            replaced: at("s2", 9),
            executor: Some("head1".into()),
            bytes_total: 1 << 30,
            bytes_done: done,
            rate_bytes_per_second: rate,
            eta_seconds: rate.map(|r| ((1u64 << 30) - done) as f64 / r),
            error: None,
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_012_345_000), "2026-11-30 04:19:05Z");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(4.4), "4s");
        assert_eq!(duration(200.0), "3m 20s");
        assert_eq!(duration(7500.0), "2h 5m");
        assert_eq!(duration(-1.0), "0s");
    }

    #[test]
    fn the_progress_line_sums_jobs() {
        let list = RebuildList {
            queued: 1,
            running: 1,
            rebuilds: vec![
                rebuild(1, RebuildState::Running, 1 << 29, Some(100.0 * 1048576.0)),
                rebuild(2, RebuildState::Queued, 0, None),
            ],
        };
        let line = progress_line(&list);
        assert!(
            line.starts_with("[######..................]  25%"),
            "{line}"
        );
        assert!(
            line.contains("1 running, 1 queued, 1.5 GiB left, ETA 15s"),
            "{line}"
        );
    }

    #[test]
    fn the_table_names_where_from_where_to_and_who() {
        let mut failed = rebuild(3, RebuildState::Failed, 0, None);
        failed.error = Some("target 12 failed".into());
        let list = RebuildList {
            queued: 0,
            running: 1,
            rebuilds: vec![
                rebuild(1, RebuildState::Running, 1 << 29, Some(1048576.0)),
                failed,
            ],
        };
        let text = render_rebuild_table(&list);
        assert!(text.contains("s1:7#3"), "{text}");
        assert!(text.contains("s4:12#3"), "{text}");
        assert!(text.contains("head1"), "{text}");
        assert!(text.contains("50%"), "{text}");
        assert!(text.contains("1 MiB/s"), "{text}");
        assert!(text.contains("rebuild 3: target 12 failed"), "{text}");
    }

    #[test]
    fn event_lines_are_one_line_even_with_control_characters() {
        let e = Event {
            seq: 12,
            time_unix_ms: 0,
            severity: "warning".into(),
            kind: "leg_failed".into(),
            server: None,
            volume: None,
            rebuild: None,
            message: "evil\nline".into(),
        };
        let line = event_line(&e);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains("leg_failed"));
    }
}
