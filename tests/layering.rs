//! The layout `src/lib.rs` draws, checked over the source text: the
//! library's top-level modules import each other without circles, the
//! bottom layer (`config`, `error` and the plain data they are made of)
//! imports nothing above it, and no source file outside tests is over
//! 1,000 lines.
//!
//! Imports are read from the text, not the compiler: every `crate::X`
//! (paths and `use crate::{X, ...}` groups, `//` comments skipped) in a
//! file under `src/X/` or `src/X.rs` of the library makes an edge from the
//! file's top-level module to `X`. Test code does not count: a trailing
//! `#[cfg(test)] mod tests { ... }` block, and files declared as
//! `#[cfg(test)] mod name;`. The binary (`main.rs`, `cli/`) is checked for
//! size only.
//!
//! The allow-lists below name the debt left: they may only shrink. A new
//! edge that closes a circle, a new upward import from the bottom layer or
//! a new long file fails here; when a listed one is fixed, the test says
//! to remove it from the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The bottom layer: these import only each other.
const BOTTOM: &[&str] = &["config", "error", "access", "names", "sketch_params"];

/// Imports from the bottom layer to modules above it, still to be removed.
const BOTTOM_DEBT: &[(&str, &str)] = &[];

/// Edges that close a circle between top-level modules, still to be removed.
const CYCLE_DEBT: &[(&str, &str)] = &[];

/// Longest source file outside tests, in lines.
const MAX_LINES: usize = 1_000;

/// Files still over [`MAX_LINES`] (paths under `src/`).
const LONG_FILES_DEBT: &[&str] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src/`.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
}

/// A source file: its lines outside the trailing test module, and the
/// files it declares as test-only (`#[cfg(test)] mod name;`).
struct Source {
    lines: Vec<String>,
    test_children: Vec<PathBuf>,
}

fn read_source(src: &Path, rel: &Path) -> Source {
    let text = std::fs::read_to_string(src.join(rel)).unwrap();
    let all: Vec<&str> = text.lines().collect();
    // The directory a file's child modules live in.
    let stem = rel.file_stem().unwrap().to_str().unwrap();
    let parent = rel.parent().unwrap_or(Path::new(""));
    let module_dir = if matches!(stem, "mod" | "lib" | "main") {
        parent.to_owned()
    } else {
        parent.join(stem)
    };
    let mut lines = Vec::new();
    let mut test_children = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let line = all[i];
        if line.trim() == "#[cfg(test)]" {
            if let Some(next) = all.get(i + 1).map(|l| l.trim()) {
                if next.starts_with("mod ") && next.ends_with(" {") && !all[i + 1].starts_with(' ')
                {
                    // A test module written out: skip to its closing brace,
                    // the next line that is `}` at column 0 (rustfmt).
                    let end = all[i + 2..]
                        .iter()
                        .position(|l| *l == "}")
                        .map_or(all.len(), |p| i + 2 + p + 1);
                    i = end;
                    continue;
                }
                if let Some(name) = next.strip_prefix("mod ").and_then(|n| n.strip_suffix(';')) {
                    test_children.push(module_dir.join(format!("{name}.rs")));
                    test_children.push(module_dir.join(name).join("mod.rs"));
                }
            }
        }
        lines.push(line.to_owned());
        i += 1;
    }
    Source {
        lines,
        test_children,
    }
}

/// The top-level modules a piece of code names with `crate::`.
fn crate_imports(lines: &[String]) -> BTreeSet<String> {
    let code: String = lines
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let ident = |from: usize| -> String {
        code[from..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = code[at..].find("crate::") {
        let start = at + found;
        at = start + "crate::".len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue;
        }
        if bytes.get(at) == Some(&b'{') {
            // `crate::{a, b::c, d::{e, f}}`: the names at depth 1.
            let mut depth = 0;
            let mut expect_name = true;
            for (k, c) in code[at..].char_indices() {
                match c {
                    '{' => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if expect_name && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident(at + k));
                        expect_name = false;
                    }
                    c if c.is_whitespace() => {}
                    _ if depth == 1 => expect_name = false,
                    _ => {}
                }
            }
        } else {
            let name = ident(at);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

struct Tree {
    /// Source files (relative to `src/`) that are not test-only.
    files: Vec<(PathBuf, Source)>,
}

fn tree() -> Tree {
    let src = src_dir();
    let mut paths = Vec::new();
    rust_files(&src, &src, &mut paths);
    let sources: Vec<(PathBuf, Source)> = paths
        .into_iter()
        .map(|p| {
            let s = read_source(&src, &p);
            (p, s)
        })
        .collect();
    let test_only: BTreeSet<PathBuf> = sources
        .iter()
        .flat_map(|(_, s)| s.test_children.iter().cloned())
        .collect();
    Tree {
        files: sources
            .into_iter()
            .filter(|(p, _)| !test_only.contains(p))
            .collect(),
    }
}

/// The library's top-level module of a file, `None` for the binary and
/// `lib.rs`.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    if rel.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return (!matches!(stem, "lib" | "main")).then(|| stem.to_owned());
    }
    (first != "cli").then(|| first.to_owned())
}

/// Top-level module -> the modules it imports -> the files importing them.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>;

fn graph(tree: &Tree) -> Graph {
    let mut g = Graph::new();
    for (rel, source) in &tree.files {
        let Some(top) = top_module(rel) else { continue };
        let entry = g.entry(top.clone()).or_default();
        for to in crate_imports(&source.lines) {
            if to != top {
                entry.entry(to).or_default().insert(rel.clone());
            }
        }
    }
    g
}

fn show(edges: &BTreeMap<String, BTreeSet<PathBuf>>, to: &str) -> String {
    edges[to]
        .iter()
        .map(|p| format!("src/{}", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn imports_read_from_text_are_the_top_level_modules() {
    let lines: Vec<String> = [
        "use crate::error::{Error, Result};",
        "use crate::{access::Role, names::{self, validate_name},",
        "    sketch};",
        "// crate::commented",
        "let x = crate::store::DEFAULT; macro: $crate::inner, notcrate::x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let got: Vec<String> = crate_imports(&lines).into_iter().collect();
    assert_eq!(got, ["access", "error", "names", "sketch", "store"]);
}

#[test]
fn the_bottom_layer_imports_only_itself() {
    let g = graph(&tree());
    let mut failures = Vec::new();
    for &from in BOTTOM {
        let Some(edges) = g.get(from) else { continue };
        for to in edges.keys() {
            let allowed = BOTTOM.contains(&to.as_str()) || BOTTOM_DEBT.contains(&(from, to));
            if !allowed {
                failures.push(format!(
                    "`{from}` imports `{to}`, above it ({})",
                    show(edges, to)
                ));
            }
        }
    }
    for &(from, to) in BOTTOM_DEBT {
        if !g.get(from).is_some_and(|e| e.contains_key(to)) {
            failures.push(format!(
                "`{from}` no longer imports `{to}`: remove it from BOTTOM_DEBT"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn top_level_modules_import_each_other_without_circles() {
    let g = graph(&tree());
    let mut failures = Vec::new();
    for &(from, to) in CYCLE_DEBT {
        if !g.get(from).is_some_and(|e| e.contains_key(to)) {
            failures.push(format!(
                "`{from}` no longer imports `{to}`: remove it from CYCLE_DEBT"
            ));
        }
    }
    // Depth-first search over the edges not listed as debt; a grey node
    // met again closes a circle.
    fn visit<'a>(
        g: &'a Graph,
        node: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node);
            circles.push(circle.join(" -> "));
            return;
        }
        path.push(node);
        for to in g.get(node).into_iter().flat_map(|e| e.keys()) {
            if !CYCLE_DEBT.contains(&(node, to.as_str())) {
                visit(g, to, path, done, circles);
            }
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    let mut circles = Vec::new();
    for node in g.keys() {
        visit(&g, node, &mut Vec::new(), &mut done, &mut circles);
    }
    for circle in circles {
        failures.push(format!("import circle: {circle}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_source_file_outside_tests_is_over_1000_lines() {
    let tree = tree();
    let mut failures = Vec::new();
    for (rel, source) in &tree.files {
        let name = rel.to_str().unwrap();
        let n = source.lines.len();
        let listed = LONG_FILES_DEBT.contains(&name);
        if n > MAX_LINES && !listed {
            failures.push(format!(
                "src/{name} has {n} lines outside tests (at most {MAX_LINES}): split it by concept"
            ));
        }
        if n <= MAX_LINES && listed {
            failures.push(format!(
                "src/{name} has {n} lines: remove it from LONG_FILES_DEBT"
            ));
        }
    }
    for name in LONG_FILES_DEBT {
        if !tree.files.iter().any(|(p, _)| p.to_str() == Some(name)) {
            failures.push(format!(
                "src/{name} is gone: remove it from LONG_FILES_DEBT"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
