//! The event log: every state change an admin may want to follow (a server
//! or leg failing, a rebuild queued, started, done or failed, …), with a
//! sequence number, served by `GET /api/v1/events` and `vsky events`.
//!
//! The log is bounded and lives in the manager's memory: it is a window
//! onto recent changes, not the truth. The truth (legs, jobs and their
//! states) is in the store, and every event is also written to the
//! manager's log through `tracing`, so log collectors keep the full
//! history. A restarted manager starts a new window (sequence numbers go
//! on from 1; clients notice because `next` goes backwards).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use vsky_api::types::Event;
use vsky_sync::LockExt;

/// Events kept for readers; older ones are dropped first.
pub const EVENTS_KEPT: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// An event to record; the log stamps its sequence number and time.
#[derive(Debug)]
pub struct NewEvent {
    pub severity: Severity,
    pub kind: &'static str,
    pub server: Option<String>,
    pub volume: Option<String>,
    pub rebuild: Option<u64>,
    pub message: String,
}

impl NewEvent {
    pub fn new(severity: Severity, kind: &'static str, message: impl Into<String>) -> Self {
        NewEvent {
            severity,
            kind,
            server: None,
            volume: None,
            rebuild: None,
            message: message.into(),
        }
    }
    pub fn server(mut self, name: impl Into<String>) -> Self {
        self.server = Some(name.into());
        self
    }
    pub fn volume(mut self, name: impl Into<String>) -> Self {
        self.volume = Some(name.into());
        self
    }
    pub fn rebuild(mut self, id: u64) -> Self {
        self.rebuild = Some(id);
        self
    }
}

pub struct EventLog {
    inner: Mutex<Inner>,
    /// The last sequence number; followers long-poll on it.
    last: watch::Sender<u64>,
}

struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
    capacity: usize,
}

/// One page of the log, for a reader that has seen up to `since`.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Event>,
    pub next: u64,
    pub truncated: bool,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::with_capacity(EVENTS_KEPT)
    }
}

impl EventLog {
    pub fn with_capacity(capacity: usize) -> Self {
        EventLog {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
                capacity: capacity.max(1),
            }),
            last: watch::channel(0).0,
        }
    }

    /// Records an event and mirrors it into the manager's log.
    pub fn record(&self, e: NewEvent) {
        match e.severity {
            Severity::Info => tracing::info!(kind = e.kind, server = ?e.server, volume = ?e.volume,
                rebuild = ?e.rebuild, "{}", e.message),
            Severity::Warning => {
                tracing::warn!(kind = e.kind, server = ?e.server, volume = ?e.volume,
                rebuild = ?e.rebuild, "{}", e.message)
            }
            Severity::Error => {
                tracing::error!(kind = e.kind, server = ?e.server, volume = ?e.volume,
                rebuild = ?e.rebuild, "{}", e.message)
            }
        }
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seq = {
            let mut inner = self.inner.lock_unpoisoned();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            if inner.events.len() == inner.capacity {
                inner.events.pop_front();
            }
            inner.events.push_back(Event {
                seq,
                time_unix_ms,
                severity: e.severity.as_str().to_string(),
                kind: e.kind.to_string(),
                server: e.server,
                volume: e.volume,
                rebuild: e.rebuild,
                message: e.message,
            });
            seq
        };
        self.last.send_replace(seq);
    }

    /// Events after `since`, at most `limit` of them, oldest first.
    pub fn page(&self, since: u64, limit: usize) -> Page {
        let inner = self.inner.lock_unpoisoned();
        let oldest = inner.events.front().map(|e| e.seq);
        let events: Vec<Event> = inner
            .events
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect();
        let next = events.last().map(|e| e.seq).unwrap_or_else(|| {
            // Nothing new: keep the reader's position, unless it is ahead
            // of this log (the manager restarted), then resync to its end.
            since.min(inner.next_seq - 1)
        });
        Page {
            truncated: oldest.is_some_and(|o| o > since + 1),
            events,
            next,
        }
    }

    /// A receiver that changes whenever an event is recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> NewEvent {
        NewEvent::new(Severity::Info, "test", format!("event {n}"))
    }

    #[test]
    fn pages_follow_sequence_numbers() {
        let log = EventLog::with_capacity(100);
        for n in 0..5 {
            log.record(ev(n));
        }
        let p = log.page(0, 3);
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(p.next, 3);
        assert!(!p.truncated);
        let p = log.page(p.next, 10);
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        let p = log.page(5, 10);
        assert!(p.events.is_empty());
        assert_eq!(p.next, 5);
    }

    #[test]
    fn the_log_is_bounded_and_says_when_a_reader_missed_events() {
        let log = EventLog::with_capacity(3);
        for n in 0..10 {
            log.record(ev(n));
        }
        let p = log.page(0, 100);
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert!(p.truncated);
        assert!(!log.page(7, 100).truncated);
    }

    #[test]
    fn a_reader_ahead_of_a_restarted_log_is_brought_back() {
        let log = EventLog::with_capacity(10);
        log.record(ev(0));
        let p = log.page(500, 10);
        assert!(p.events.is_empty());
        assert_eq!(p.next, 1);
    }
}
