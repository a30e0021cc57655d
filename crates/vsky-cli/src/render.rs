//! Human output: aligned tables for lists, key/value blocks for single
//! objects, and the few value formats they share (sizes, optional values).
//!
//! Everything renders into a `String` rather than printing, so that the
//! caller writes the output once (and can treat a closed pipe as success),
//! and so that tests can compare exact text. Column widths count characters,
//! not bytes, so a non-ASCII name does not shift the columns after it.
//! Strings that come from the cluster (names, labels, paths) pass through
//! [`clean`] first: a control character in a label must not be able to
//! move the cursor or recolour the admin's terminal.

use std::fmt::Write as _;

use vsky_api::units::format_size;

/// Placeholder for an absent value, so columns never look shifted.
pub const NONE: &str = "-";

/// How a column's cells sit in their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers and sizes: right-aligned so magnitudes line up.
    Right,
}

/// A table with a header row; columns are separated by two spaces and
/// padded to their widest cell. The last column is never padded on the
/// right, so lines carry no trailing whitespace.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these `(header, alignment)` columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            headers: columns.iter().map(|(h, _)| *h).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column (a programming error
    /// otherwise, caught by the tests of every command's renderer).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.headers.len(),
            "row width differs from header"
        );
        self.rows
            .push(cells.into_iter().map(|c| clean(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.align[i] {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i + 1 < columns {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A block of `Key:  value` lines with the values aligned.
#[derive(Debug, Default)]
pub struct KeyValue {
    pairs: Vec<(&'static str, String)>,
}

impl KeyValue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        self.pairs.push((key, clean(&value.into())));
        self
    }

    pub fn render(&self) -> String {
        let width = self
            .pairs
            .iter()
            .map(|(k, _)| k.chars().count() + 1)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.pairs {
            let label = format!("{key}:");
            let line = format!("{label:<width$}  {value}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// A size for people: `1.5 GiB`.
pub fn size(bytes: u64) -> String {
    format_size(bytes)
}

/// A size for people with the exact byte count, for show pages where an
/// admin may need to compare against `blockdev --getsize64`.
pub fn size_exact(bytes: u64) -> String {
    if bytes < 1024 {
        format_size(bytes)
    } else {
        format!("{} ({bytes} bytes)", format_size(bytes))
    }
}

/// An optional string, or [`NONE`].
pub fn opt(value: Option<&str>) -> String {
    value.unwrap_or(NONE).to_string()
}

/// A stripe layout as `4 x 64 KiB`, or `none`.
pub fn stripe(stripe: Option<&vsky_api::types::Stripe>) -> String {
    match stripe {
        Some(s) => format!("{} x {}", s.width, format_size(s.unit_bytes)),
        None => "none".to_string(),
    }
}

/// `k1=v1,k2=v2` (labels come sorted from a `BTreeMap`), or [`NONE`].
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return NONE.to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lower-case wire name of a state enum (`online`, `syncing`, …), so
/// human output uses the same words as `--json` and the manager's messages.
pub fn state<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// Machine output: pretty JSON with a final newline. Serialising the API
/// types cannot fail (no maps with non-string keys, no custom serialisers),
/// but a failure must still not panic, so it degrades to `null`.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_string());
    text.push('\n');
    text
}

/// Replaces control characters (escape sequences, newlines, tabs) with
/// their visible `\u{..}` form.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC), from the
/// civil-from-days algorithm, so the CLI needs no time-zone crate.
pub fn utc(ms: u64) -> String {
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

    #[test]
    fn table_columns_align_and_lines_have_no_trailing_spaces() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("STATE", Align::Left),
        ]);
        t.row(vec!["a".into(), size(10 << 30), "online".into()]);
        t.row(vec!["longer-name".into(), size(512 << 20), "failed".into()]);
        t.row(vec!["é".into(), size(0), "x".into()]);
        assert_eq!(
            t.render(),
            "NAME            SIZE  STATE\n\
             a             10 GiB  online\n\
             longer-name  512 MiB  failed\n\
             é                0 B  x\n"
        );
    }

    #[test]
    fn empty_last_column_and_empty_table() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A  B\n");
        t.row(vec!["xyz".into(), String::new()]);
        assert_eq!(t.render(), "A    B\nxyz\n");
    }

    #[test]
    fn key_value_aligns_values() {
        let mut kv = KeyValue::new();
        kv.add("Name", "v1")
            .add("Attached to", "-")
            .add("Size", size_exact(3 << 29));
        assert_eq!(
            kv.render(),
            "Name:         v1\n\
             Attached to:  -\n\
             Size:         1.5 GiB (1610612736 bytes)\n"
        );
    }

    #[test]
    fn sizes_and_small_formats() {
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size_exact(100), "100 B");
        assert_eq!(size_exact(1 << 40), "1 TiB (1099511627776 bytes)");
        assert_eq!(
            stripe(Some(&vsky_api::types::Stripe {
                width: 4,
                unit_bytes: 64 << 10
            })),
            "4 x 64 KiB"
        );
        assert_eq!(stripe(None), "none");
        assert_eq!(opt(None), "-");
        let mut l = std::collections::BTreeMap::new();
        assert_eq!(labels(&l), "-");
        l.insert("room".to_string(), "b".to_string());
        l.insert("rack".to_string(), "r1".to_string());
        assert_eq!(labels(&l), "rack=r1,room=b");
        assert_eq!(state(&vsky_api::types::LegState::Syncing), "syncing");
    }

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(clean("plain"), "plain");
        assert_eq!(clean("a\x1b[31mb\n"), "a\\u{1b}[31mb\\u{a}");
        let mut t = Table::new(&[("X", Align::Left)]);
        t.row(vec!["\x07".into()]);
        assert_eq!(t.render(), "X\n\\u{7}\n");
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_012_345_000), "2026-11-30 04:19:05Z");
    }
}
