//! Modules are layered one way: within each crate, no two top-level
//! modules name each other through `crate::` paths, directly or around a
//! longer circle (`crate::a` uses `crate::b`, which uses `crate::a`). A
//! circle means two modules can only be understood together; break it by
//! moving the shared item down a layer (as the agent's `shared.rs`, the
//! manager's `http/state.rs` and the NBD server's `shutdown.rs` do).
//!
//! A file's top-level module is its first path component under `src/`;
//! `lib.rs` and `main.rs` (the roots that wire everything) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate roots and `src/bin`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a source text names as `crate::x` or in a
/// `crate::{x, y::z}` group. Comments are skipped.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            // `vsky_crate::` and the like are other paths.
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 && c == ',' {
                        out.insert(ident(item.trim()));
                        item.clear();
                    } else if depth == 0 {
                        item.push(c);
                    }
                }
                out.insert(ident(item.trim()));
            } else {
                out.insert(ident(rest));
            }
        }
    }
    out.retain(|m| !m.is_empty() && m.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    out
}

/// A circle in the graph, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn crate_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = top_module(src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for to in named_modules(&text) {
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    let (mut crates, mut edges) = (0, 0);
    for e in std::fs::read_dir(repo().join("crates")).unwrap().flatten() {
        let src = e.path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        let graph = crate_graph(&src);
        edges += graph.values().map(BTreeSet::len).sum::<usize>();
        if let Some(c) = find_cycle(&graph) {
            circles.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                c.join(" -> ")
            ));
        }
    }
    assert!(crates >= 10, "found only {crates} crates under crates/");
    // The workspace's modules do use each other: a scanner that finds no
    // edge would pass any tree.
    assert!(edges >= 50, "found only {edges} uses between modules");
    assert!(
        circles.is_empty(),
        "modules that use each other (move the shared item into a module both can use):\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_groups_and_circles() {
    let text = "use crate::a::X;\nuse crate::{b, c::{D, E}};\n// crate::zz in a comment\nlet x = vsky_crate::q; crate::d::f();";
    let found: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let mut acyclic = graph.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}
