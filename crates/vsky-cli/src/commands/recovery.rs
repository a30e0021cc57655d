//! `vsky rebuild list` and `vsky events`: watching the cluster repair
//! itself, and the `--wait` of every command that starts resyncs.
//!
//! Commands here stream instead of returning one answer: `--wait` (of
//! `rebuild list`, `disk|server fail`, `disk|server drain` and `pool
//! rebalance`) shows progress every couple of seconds until the work is
//! done, and `events --follow` prints events as they happen. They write to
//! stdout as they go (a closed pipe ends them quietly) and return only the
//! final part. On a terminal the progress is one bar redrawn in place;
//! otherwise (a pipe, a log file) it is one plain line per poll.
//!
//! [`wait_with_progress`] is the one polling loop; each wait supplies a
//! poll that says whether it is done and, if not, its progress line.
//!
//! Size: about 650 lines of code and 200 of tests of the progress
//! rendering, kept beside the loop they test.

use std::collections::HashSet;
use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use vsky_api::Client;
use vsky_api::types::{
    ChunkLocation, Event, MoveReason, Rebuild, RebuildKind, RebuildList, RebuildState,
};

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

/// Shows progress until no rebuild (or move) is queued or running.
/// Returns false if stdout's reader went away; fails when `timeout` passes
/// first.
pub async fn wait_for_rebuilds(
    client: &Client,
    timeout: Duration,
    json: bool,
) -> Result<bool, CliError> {
    wait_with_progress(timeout, json, async || {
        let list = client.rebuilds(false).await?;
        if list.queued + list.running == 0 {
            return Ok(Poll::Done);
        }
        Ok(Poll::Working {
            line: progress_line(&list),
            timeout: format!(
                "rebuilds still {} running and {} queued after {} s; `vsky rebuild list` shows them, `vsky events` says why",
                list.running,
                list.queued,
                timeout.as_secs()
            ),
        })
    })
    .await
}

/// What is being drained, for [`wait_for_drain`].
#[derive(Clone, Copy, Debug)]
pub enum Drained<'a> {
    Disk(u64),
    Server(&'a str),
}

impl Drained<'_> {
    fn describe(&self) -> String {
        match self {
            Drained::Disk(id) => format!("disk {id}"),
            Drained::Server(name) => format!("server {}", render::clean(name)),
        }
    }

    /// Whether a chunk sits on it.
    fn holds(&self, at: &ChunkLocation) -> bool {
        match self {
            Drained::Disk(id) => at.disk_id == *id,
            Drained::Server(name) => at.server == *name,
        }
    }
}

/// Shows a drain's progress until the disk or server holds no leg: legs
/// left, moves running and queued, bytes copied by the running ones.
/// `legs_at_start` is what it held when the drain was asked for (the
/// 0 % mark). Fails when the drain is stopped (by someone else) or
/// `timeout` passes first; false if stdout's reader went away.
pub async fn wait_for_drain(
    client: &Client,
    what: Drained<'_>,
    legs_at_start: u64,
    timeout: Duration,
    json: bool,
) -> Result<bool, CliError> {
    let mut start = legs_at_start;
    wait_with_progress(timeout, json, async || {
        let (draining, left) = match what {
            Drained::Disk(id) => {
                let d = client.disk(id).await?;
                (d.draining, d.legs_left)
            }
            Drained::Server(name) => {
                let s = client.server(name).await?;
                (s.draining, s.legs_left)
            }
        };
        if left == 0 {
            return Ok(Poll::Done);
        }
        if !draining {
            return Err(CliError::Incomplete(format!(
                "the drain of {} was stopped with {left} legs left on it",
                what.describe()
            )));
        }
        start = start.max(left);
        let list = client.rebuilds(false).await?;
        let moves: Vec<&Rebuild> = list
            .rebuilds
            .iter()
            .filter(|r| r.kind == RebuildKind::Move && what.holds(&r.replaced))
            .collect();
        Ok(Poll::Working {
            line: drain_line(start, left, &moves),
            timeout: format!(
                "{} still holds {left} legs after {} s; `vsky rebuild list` shows the moves, `vsky events` says why others wait (degraded mirrored disks, no room on other servers)",
                what.describe(),
                timeout.as_secs()
            ),
        })
    })
    .await
}

/// Shows the progress of the jobs `ids` (a rebalance's moves) until each
/// is done or failed. Fails naming the failed ones, if any, or when
/// `timeout` passes first; false if stdout's reader went away.
pub async fn wait_for_jobs(
    client: &Client,
    ids: &[u64],
    timeout: Duration,
    json: bool,
) -> Result<bool, CliError> {
    let wanted: HashSet<u64> = ids.iter().copied().collect();
    let mut last = Tally::default();
    let finished = wait_with_progress(timeout, json, async || {
        let list = client.rebuilds(true).await?;
        last = Tally::of(&list, &wanted);
        if last.finished() == wanted.len() {
            return Ok(Poll::Done);
        }
        Ok(Poll::Working {
            line: jobs_line(&last, wanted.len()),
            timeout: format!(
                "{} of {} moves still running or queued after {} s; `vsky rebuild list` shows them",
                last.running + last.queued,
                wanted.len(),
                timeout.as_secs()
            ),
        })
    })
    .await?;
    if finished && !last.failed.is_empty() {
        let which: Vec<String> = last
            .failed
            .iter()
            .map(|(id, error)| format!("rebuild {id}: {}", render::clean(error)))
            .collect();
        return Err(CliError::Incomplete(format!(
            "{} of {} moves failed ({}); their legs stayed where they were. `vsky events` has the details; `vsky pool rebalance` plans new moves",
            last.failed.len(),
            wanted.len(),
            which.join("; ")
        )));
    }
    Ok(finished)
}

/// Where a set of jobs stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub done: usize,
    /// Failed jobs with their errors.
    pub failed: Vec<(u64, String)>,
    pub running: usize,
    pub queued: usize,
    /// No longer listed (the manager keeps the 1000 most recent finished
    /// jobs): finished, outcome unknown.
    pub gone: usize,
    /// Bytes copied and to copy by the running ones.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Tally {
    pub fn of(list: &RebuildList, wanted: &HashSet<u64>) -> Self {
        let mut t = Tally::default();
        let mut seen = 0;
        for r in list.rebuilds.iter().filter(|r| wanted.contains(&r.id)) {
            seen += 1;
            match r.state {
                RebuildState::Done => t.done += 1,
                RebuildState::Failed => t
                    .failed
                    .push((r.id, r.error.clone().unwrap_or_else(|| "failed".into()))),
                RebuildState::Running => {
                    t.running += 1;
                    t.bytes_done += r.bytes_done;
                    t.bytes_total += r.bytes_total;
                }
                RebuildState::Queued => t.queued += 1,
            }
        }
        t.gone = wanted.len() - seen;
        t
    }

    pub fn finished(&self) -> usize {
        self.done + self.failed.len() + self.gone
    }
}

/// What one poll of a `--wait` found.
pub enum Poll {
    Done,
    /// Still going: the progress line to show, and the message should
    /// the wait run out of time.
    Working {
        line: String,
        timeout: String,
    },
}

/// Calls `poll` every couple of seconds, showing its progress line, until
/// it says done (true), stdout's reader goes away (false), it fails, or
/// `timeout` passes (an error with the poll's message). With `json`
/// nothing is shown, so stdout holds only the final JSON.
pub async fn wait_with_progress(
    timeout: Duration,
    json: bool,
    mut poll: impl AsyncFnMut() -> Result<Poll, CliError>,
) -> Result<bool, CliError> {
    let deadline = Instant::now() + timeout;
    let mut shown = Progress::new(if json {
        Mode::Quiet
    } else if io::stdout().is_terminal() {
        Mode::Bar
    } else {
        Mode::Lines
    });
    loop {
        let step = match poll().await {
            Ok(step) => step,
            Err(e) => {
                shown.finish()?;
                return Err(e);
            }
        };
        match step {
            Poll::Done => return shown.finish(),
            Poll::Working { line, timeout } => {
                if !shown.show(&line)? {
                    return Ok(false);
                }
                if Instant::now() >= deadline {
                    shown.finish()?;
                    return Err(CliError::WaitTimedOut(timeout));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nothing (JSON output).
    Quiet,
    /// One line per poll, for pipes and logs.
    Lines,
    /// One line redrawn in place, for a terminal.
    Bar,
}

/// The progress display of one wait.
pub struct Progress {
    mode: Mode,
    /// A bar is on screen (the cursor is at its end).
    drawn: bool,
}

impl Progress {
    pub fn new(mode: Mode) -> Self {
        Progress { mode, drawn: false }
    }

    /// The text that shows `line`.
    pub fn frame(&mut self, line: &str) -> String {
        match self.mode {
            Mode::Quiet => String::new(),
            Mode::Lines => format!("{line}\n"),
            Mode::Bar => {
                self.drawn = true;
                // Back to the line's start, the new text, erase the rest.
                format!("\r{line}\x1b[K")
            }
        }
    }

    /// The text that ends the display: a bar is erased, so what the
    /// command prints next starts on a clean line.
    pub fn closing(&mut self) -> String {
        if std::mem::take(&mut self.drawn) {
            "\r\x1b[K".to_string()
        } else {
            String::new()
        }
    }

    fn show(&mut self, line: &str) -> Result<bool, CliError> {
        let text = self.frame(line);
        if text.is_empty() {
            return Ok(true);
        }
        emit(&text)
    }

    fn finish(&mut self) -> Result<bool, CliError> {
        let text = self.closing();
        if text.is_empty() {
            return Ok(true);
        }
        emit(&text)
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

/// `[#########...............]  45%`
pub fn bar(fraction: f64) -> String {
    const WIDTH: usize = 24;
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        fraction * 100.0
    )
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
        "{}  {} running, {} queued, {} left{eta}",
        bar(fraction),
        list.running,
        list.queued,
        render::size(left),
    )
}

/// A drain's progress: `[######..................]  25%  12 legs left,
/// 2 moves running (10 MiB of 14 MiB), 3 queued, ETA 1m 5s`. A leg
/// counts as moved once it left; a running move counts by its bytes.
pub fn drain_line(legs_at_start: u64, legs_left: u64, moves: &[&Rebuild]) -> String {
    let running: Vec<&&Rebuild> = moves
        .iter()
        .filter(|r| r.state == RebuildState::Running)
        .collect();
    let queued = moves
        .iter()
        .filter(|r| r.state == RebuildState::Queued)
        .count();
    let done: u64 = running.iter().map(|r| r.bytes_done).sum();
    let total: u64 = running.iter().map(|r| r.bytes_total).sum();
    let partial: f64 = running
        .iter()
        .filter(|r| r.bytes_total > 0)
        .map(|r| r.bytes_done.min(r.bytes_total) as f64 / r.bytes_total as f64)
        .sum();
    let fraction = if legs_at_start == 0 {
        1.0
    } else {
        (legs_at_start.saturating_sub(legs_left) as f64 + partial) / legs_at_start as f64
    };
    let mut line = format!(
        "{}  {legs_left} {} left, {} {} running",
        bar(fraction),
        plural(legs_left, "leg", "legs"),
        running.len(),
        plural(running.len() as u64, "move", "moves"),
    );
    if !running.is_empty() {
        line.push_str(&format!(
            " ({} of {})",
            render::size(done),
            render::size(total)
        ));
    }
    line.push_str(&format!(", {queued} queued"));
    let rate: f64 = running.iter().filter_map(|r| r.rate_bytes_per_second).sum();
    let per_leg = moves.iter().map(|r| r.bytes_total).max().unwrap_or(0);
    if rate > 0.0 && per_leg > 0 {
        let left = (legs_left * per_leg).saturating_sub(done);
        line.push_str(&format!(", ETA {}", duration(left as f64 / rate)));
    }
    line
}

/// A set of jobs' progress: `[####....]  30%  3 of 10 moves done,
/// 2 running (10 MiB of 14 MiB), 5 queued, 1 failed`.
pub fn jobs_line(t: &Tally, of: usize) -> String {
    let partial = if t.bytes_total > 0 {
        t.running as f64 * t.bytes_done as f64 / t.bytes_total as f64
    } else {
        0.0
    };
    let fraction = if of == 0 {
        1.0
    } else {
        (t.finished() as f64 + partial) / of as f64
    };
    let mut line = format!(
        "{}  {} of {of} {} done, {} running",
        bar(fraction),
        t.done + t.gone,
        plural(of as u64, "move", "moves"),
        t.running
    );
    if t.running > 0 {
        line.push_str(&format!(
            " ({} of {})",
            render::size(t.bytes_done),
            render::size(t.bytes_total)
        ));
    }
    line.push_str(&format!(", {} queued", t.queued));
    if !t.failed.is_empty() {
        line.push_str(&format!(", {} failed", t.failed.len()));
    }
    line
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

pub fn render_rebuild_table(list: &RebuildList) -> String {
    // KIND goes last: scripts read the columns before it by position,
    // and its values may hold a space.
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
        ("KIND", Align::Left),
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
            kind_cell(r),
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

/// `repair`, `move (drain)` or `move (rebalance)`.
pub fn kind_cell(r: &Rebuild) -> String {
    match (r.kind, r.reason) {
        (RebuildKind::Repair, _) => "repair".into(),
        (RebuildKind::Move, Some(MoveReason::Drain)) => "move (drain)".into(),
        (RebuildKind::Move, Some(MoveReason::Rebalance)) => "move (rebalance)".into(),
        (RebuildKind::Move, None) => "move".into(),
    }
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
pub fn location(l: &ChunkLocation) -> String {
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
        render::utc(e.time_unix_ms),
        e.severity,
        e.kind,
        render::clean(&e.message)
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
            kind: RebuildKind::Repair,
            reason: None,
            from_leg: None,
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

    fn moving(id: u64, state: RebuildState, done: u64, reason: MoveReason) -> Rebuild {
        let mut r = rebuild(id, state, done, None);
        r.kind = RebuildKind::Move;
        r.reason = Some(reason);
        r.from_leg = Some(0);
        r.leg = 2;
        r
    }

    #[test]
    fn the_bar_is_clamped() {
        assert_eq!(bar(0.0), "[........................]   0%");
        assert_eq!(bar(1.0), "[########################] 100%");
        assert_eq!(bar(2.0), bar(1.0));
        assert_eq!(bar(f64::NAN), bar(0.0));
    }

    #[test]
    fn the_drain_line_counts_legs_moves_and_bytes() {
        let running = moving(1, RebuildState::Running, 1 << 29, MoveReason::Drain);
        let queued = moving(2, RebuildState::Queued, 0, MoveReason::Drain);
        // 10 legs at the start, 6 left, one half copied: 4.5 of 10.
        let line = drain_line(10, 6, &[&running, &queued]);
        assert!(line.starts_with(&bar(0.45)), "{line}");
        assert!(
            line.ends_with("6 legs left, 1 move running (512 MiB of 1 GiB), 1 queued"),
            "{line}"
        );
        let mut fast = running.clone();
        fast.rate_bytes_per_second = Some((1u64 << 29) as f64);
        let line = drain_line(10, 1, &[&fast]);
        assert!(line.ends_with(", 0 queued, ETA 1s"), "{line}");
        assert!(drain_line(0, 0, &[]).starts_with(&bar(1.0)));
    }

    #[test]
    fn a_tally_follows_only_the_wanted_jobs() {
        let mut failed = moving(3, RebuildState::Failed, 0, MoveReason::Rebalance);
        failed.error = Some("target 12 failed".into());
        let list = RebuildList {
            queued: 1,
            running: 1,
            rebuilds: vec![
                moving(1, RebuildState::Done, 1 << 30, MoveReason::Rebalance),
                moving(2, RebuildState::Running, 1 << 29, MoveReason::Rebalance),
                failed,
                moving(4, RebuildState::Queued, 0, MoveReason::Rebalance),
                rebuild(5, RebuildState::Running, 0, None),
            ],
        };
        let wanted: HashSet<u64> = [1, 2, 3, 4, 9].into_iter().collect();
        let t = Tally::of(&list, &wanted);
        assert_eq!((t.done, t.running, t.queued, t.gone), (1, 1, 1, 1));
        assert_eq!(t.failed, vec![(3, "target 12 failed".to_string())]);
        assert_eq!(t.finished(), 3);
        let line = jobs_line(&t, 5);
        assert!(line.starts_with(&bar(0.7)), "{line}");
        assert!(
            line.ends_with("2 of 5 moves done, 1 running (512 MiB of 1 GiB), 1 queued, 1 failed"),
            "{line}"
        );
    }

    #[test]
    fn kinds_name_repairs_and_why_legs_move() {
        assert_eq!(
            kind_cell(&rebuild(1, RebuildState::Queued, 0, None)),
            "repair"
        );
        assert_eq!(
            kind_cell(&moving(1, RebuildState::Queued, 0, MoveReason::Drain)),
            "move (drain)"
        );
        let list = RebuildList {
            queued: 1,
            running: 0,
            rebuilds: vec![moving(1, RebuildState::Queued, 0, MoveReason::Rebalance)],
        };
        let text = render_rebuild_table(&list);
        assert!(text.starts_with("ID  VOLUME  MD/LEG  STATE"), "{text}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.ends_with("  move (rebalance)"), "{text}");
        // Scripts read the state as the fourth field.
        assert_eq!(row.split_whitespace().nth(3), Some("queued"), "{text}");
    }

    #[test]
    fn progress_is_a_bar_on_a_terminal_and_lines_elsewhere() {
        let mut lines = Progress::new(Mode::Lines);
        assert_eq!(lines.frame("a"), "a\n");
        assert_eq!(lines.closing(), "");
        let mut bar = Progress::new(Mode::Bar);
        assert_eq!(bar.closing(), "", "nothing drawn, nothing to erase");
        assert_eq!(bar.frame("a"), "\ra\x1b[K");
        assert_eq!(bar.frame("b"), "\rb\x1b[K");
        assert_eq!(bar.closing(), "\r\x1b[K");
        assert_eq!(bar.closing(), "");
        let mut quiet = Progress::new(Mode::Quiet);
        assert_eq!(quiet.frame("a"), "");
        assert_eq!(quiet.closing(), "");
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
