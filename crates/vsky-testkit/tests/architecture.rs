//! ARCHITECTURE.md is checked against the tree, so the map cannot drift
//! silently: every path it names must exist, and every crate under
//! `crates/` must be on it.
//!
//! A path is a code span (backticks) that contains a `/` or ends in a
//! source or document extension, such as `crates/vsky-model/src/alloc.rs`,
//! `lab/run` or `tests/nbd/`; spans with spaces, `::`, wildcards or
//! placeholders (`/dev/mapper/vsky-<volume>`, `kernel-*`, `GET /api/v1/…`)
//! are prose, not paths, and so are spans that start with `/` (device nodes
//! and URLs). Relative links (`[text](path)`) are paths too. A path is
//! resolved against the repository root and, inside a crate's section (a
//! `###` heading that names `crates/<name>`), also against that crate's
//! directory and its `src/`, so a section can say `run.rs` for
//! `crates/vsky-agent/src/run.rs`.
//!
//! The checker lives in this dev-only crate because it needs nothing but
//! `std` and the repository root (`CARGO_MANIFEST_DIR/../..`).

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn architecture() -> String {
    let path = repo_root().join("ARCHITECTURE.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Whether a code span names a file or directory of the repository.
fn looks_like_path(span: &str) -> bool {
    const EXTENSIONS: [&str; 6] = [".rs", ".md", ".sh", ".toml", ".json", ".yml"];
    const PROSE: [char; 14] = [
        '<', '>', '|', '*', '{', '}', ':', '…', '?', '=', '(', ')', '[', ']',
    ];
    if span.is_empty()
        || span.starts_with('/')
        || span.starts_with('-')
        || span.contains(char::is_whitespace)
        || span.contains(PROSE)
    {
        return false;
    }
    span.contains('/') || EXTENSIONS.iter().any(|ext| span.ends_with(ext))
}

/// The crate directories a `###` heading names (`crates/<name>`), against
/// which the paths of its section also resolve.
fn section_crates(heading: &str) -> Vec<String> {
    code_spans(heading)
        .into_iter()
        .map(|(_, span)| span)
        .filter(|span| span.starts_with("crates/") && span.matches('/').count() == 1)
        .collect()
}

/// Every code span of `text` with the byte offset of its opening backtick.
/// Spans may wrap onto the next line, as Markdown allows.
fn code_spans(text: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let span = after[..close].split_whitespace().collect::<Vec<_>>();
        // A wrapped span is one space in Markdown: rejoin it as such.
        spans.push((offset + open, span.join(" ")));
        let consumed = open + 1 + close + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    spans
}

/// Targets of relative Markdown links, `[text](target)`, with their offsets.
fn relative_links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("](") {
        let start = from + found + 2;
        let Some(len) = text[start..].find(')') else {
            break;
        };
        let target = text[start..start + len].split('#').next().unwrap_or("");
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            links.push((start, target.to_string()));
        }
        from = start + len;
    }
    links
}

/// The paths `doc` names that do not exist under `root`, each with its
/// line number, in document order.
fn missing_paths(doc: &str, root: &Path) -> Vec<String> {
    // The crates of the section each offset falls in: `###` headings that
    // name a crate open a crate section; any other heading closes it.
    let mut sections: Vec<(usize, Vec<String>)> = vec![(0, Vec::new())];
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        if line.starts_with('#') {
            let crates = if line.starts_with("### ") {
                section_crates(line)
            } else {
                Vec::new()
            };
            sections.push((offset, crates));
        }
        offset += line.len();
    }
    let crates_at = |at: usize| -> &[String] {
        let index = sections.partition_point(|(start, _)| *start <= at);
        &sections[index - 1].1
    };
    let line_of = |at: usize| doc[..at].matches('\n').count() + 1;

    let mut named: Vec<(usize, String)> = code_spans(doc)
        .into_iter()
        .filter(|(_, span)| looks_like_path(span))
        .collect();
    named.extend(relative_links(doc));
    named.sort();

    let mut missing = Vec::new();
    for (at, path) in named {
        let mut candidates = vec![root.join(&path)];
        for dir in crates_at(at) {
            candidates.push(root.join(dir).join(&path));
            candidates.push(root.join(dir).join("src").join(&path));
        }
        if !candidates.iter().any(|c| c.exists()) {
            missing.push(format!("line {}: `{path}`", line_of(at)));
        }
    }
    missing
}

/// The crates under `crates/` that `doc` never names as `crates/<name>`.
fn crates_left_off(doc: &str, root: &Path) -> Vec<String> {
    let dir = root.join("crates");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut left_off = Vec::new();
    for entry in entries {
        let entry = entry.expect("a readable entry of crates/");
        if !entry.path().join("Cargo.toml").is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let named = |after: char| doc.contains(&format!("crates/{name}{after}"));
        if !named('`') && !named('/') {
            left_off.push(name);
        }
    }
    left_off.sort();
    left_off
}

#[test]
fn every_path_the_map_names_exists() {
    let missing = missing_paths(&architecture(), &repo_root());
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist; fix the map (or the \
         path, if a file moved):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_crate_is_on_the_map() {
    let left_off = crates_left_off(&architecture(), &repo_root());
    assert!(
        left_off.is_empty(),
        "ARCHITECTURE.md does not mention these crates; give each a section \
         in the code map (`crates/<name>`): {left_off:?}"
    );
}

/// The checker itself: a made-up document against the real tree reports
/// exactly its bogus paths, resolves section-relative ones, and leaves
/// prose alone. Without this, a checker that finds nothing would pass.
#[test]
fn the_check_reports_exactly_the_missing_paths() {
    let doc = "\
# Title

See [`README.md`](README.md) and [gone](docs/gone.md#part).
`lab/run`, `scripts/test`, `crates/vsky-model/src/alloc.rs`,
`crates/vsky-model/src/no_such_file.rs`, `no_such_dir/`.
Prose: `/dev/mapper/vsky-<volume>`, `Cluster::load`, `kernel-*`,
`GET /api/v1/events`, `vsky volume detach --force`, `x-request-id`.

### `crates/vsky-agent`

`run.rs`, `head/plan.rs`, `tests/churn.rs`, `Cargo.toml`, `missing.rs`,
`cargo fmt
--check`.

## Next

`run.rs` is not resolved here.
";
    let missing = missing_paths(doc, &repo_root());
    assert_eq!(
        missing,
        [
            "line 3: `docs/gone.md`",
            "line 5: `crates/vsky-model/src/no_such_file.rs`",
            "line 5: `no_such_dir/`",
            "line 11: `missing.rs`",
            "line 17: `run.rs`",
        ]
    );
    assert_eq!(
        crates_left_off(
            "`crates/vsky-model` and crates/vsky-agent/src",
            &repo_root()
        )
        .iter()
        .filter(|name| ["vsky-model", "vsky-agent"].contains(&name.as_str()))
        .count(),
        0
    );
    assert!(crates_left_off("nothing", &repo_root()).contains(&"vsky-testkit".to_string()));
}
