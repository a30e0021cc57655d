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

/// The median of the benchmarks' samples (NaN for none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => v[l / 2],
        l => (v[l / 2 - 1] + v[l / 2]) / 2.0,
    }
}

/// Seconds since `start`, as the scenarios report timings: `12.3`.
pub fn secs(start: Instant) -> String {
    format!("{:.1}", start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median([]).is_nan());
    }
}
