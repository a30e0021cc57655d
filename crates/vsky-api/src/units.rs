//! Human-readable sizes and durations.
//!
//! Sizes: binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`, `PiB`,
//! and the bare `K`/`M`/`G`/`T`/`P` that LVM and qemu-img use) are powers of
//! 1024; decimal suffixes (`kB`, `MB`, `GB`, `TB`, `PB`) are powers of 1000.
//! A bare number is bytes. Fractions are allowed when the result is whole
//! bytes (`1.5GiB`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size '{input}': {reason} (examples: 10GiB, 512MiB, 1.5TiB, 4096)")]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

fn multiplier(suffix: &str) -> Option<u64> {
    let s = suffix.to_ascii_lowercase();
    Some(match s.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => return None,
    })
}

/// Parses a size such as `10GiB` into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let mult = multiplier(suffix.trim()).ok_or_else(|| err("unknown unit"))?;
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(err("no number"));
    }
    if frac.len() > 9 || frac.contains('.') {
        return Err(err("too many decimals"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| err("number too large"))?
    };
    let mut bytes = whole.checked_mul(mult).ok_or_else(|| err("too large"))?;
    if !frac.is_empty() {
        let digits: u64 = frac.parse().map_err(|_| err("bad fraction"))?;
        let scale = 10u64.pow(frac.len() as u32);
        let part = u128::from(digits) * u128::from(mult);
        if part % u128::from(scale) != 0 {
            return Err(err("fraction is not a whole number of bytes"));
        }
        let part = u64::try_from(part / u128::from(scale)).map_err(|_| err("too large"))?;
        bytes = bytes.checked_add(part).ok_or_else(|| err("too large"))?;
    }
    Ok(bytes)
}

/// Formats bytes with the largest binary unit that keeps the number ≥ 1,
/// with up to two decimals (`1.5 GiB`, `512 MiB`, `4096 B` stays `4 KiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[unit])
}

/// Why a duration did not parse (`no number`, `unknown unit`, …).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid duration '{input}': {reason} (examples: 30s, 500ms, 2m)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl DurationError {
    /// The reason alone, for callers that name the value themselves.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Parses a duration such as `30s`, `500ms`, `2m` (also `min`), `6h`, `7d`
/// or `45` (seconds). Zero is refused: every duration VastSky takes is a wait or a
/// period that must be positive.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, DurationError> {
    use std::time::Duration;
    let bad = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let n: u64 = number.parse().map_err(|_| bad("number too large"))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60).ok_or_else(|| bad("too large"))?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(|| bad("too large"))?),
        "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(|| bad("too large"))?),
        _ => return Err(bad("unknown unit")),
    };
    if duration.is_zero() {
        return Err(bad("must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        use std::time::Duration;
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        for (bad, why) in [
            ("", "no number"),
            ("0s", "must be more than zero"),
            ("1w", "unknown unit"),
            ("-1s", "no number"),
            ("99999999999999999999", "number too large"),
            ("999999999999999999m", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            assert_eq!(parse_duration(bad).unwrap_err().reason(), why, "{bad:?}");
        }
        assert!(
            parse_duration("x")
                .unwrap_err()
                .to_string()
                .contains("examples")
        );
    }
    use super::*;

    #[test]
    fn parses_binary_decimal_and_fractions() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 TiB "), Ok(2 << 40));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
    }

    #[test]
    fn refuses_garbage_and_overflow() {
        for bad in [
            "",
            "GiB",
            "1.2.3G",
            "10XB",
            "-1",
            "99999999999PiB",
            "0.3B",
            "1.0000000001G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_readably() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(10 << 40), "10 TiB");
    }
}
