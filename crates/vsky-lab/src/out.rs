//! Progress lines on the console. Every line a scenario prints starts with
//! its prefix (`cluster:`, or `demo:` for the demo, whose lines
//! `scripts/demo` shows to the user), so they stand out from kernel messages.

use std::sync::OnceLock;
use std::time::Instant;

static PREFIX: OnceLock<&'static str> = OnceLock::new();

/// Sets the prefix once, before the scenario starts.
pub fn set_prefix(prefix: &'static str) {
    let _ = PREFIX.set(prefix);
}

pub fn prefix() -> &'static str {
    PREFIX.get().copied().unwrap_or("cluster")
}

/// One progress line.
pub fn say(msg: impl AsRef<str>) {
    println!("{}: {}", prefix(), msg.as_ref());
}

/// Each line of `text` as an indented progress line (a CLI table shown to
/// the reader, never parsed).
pub fn show(text: &str) {
    for line in text.lines() {
        println!("{}:   {line}", prefix());
    }
}

/// Seconds since `start`, as the scenarios report timings: `12.3`.
pub fn secs(start: Instant) -> String {
    format!("{:.1}", start.elapsed().as_secs_f64())
}
