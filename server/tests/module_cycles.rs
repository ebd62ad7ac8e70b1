//! No module cycles: in every crate of the workspace, the modules that share a parent must
//! depend on each other in one direction only, so construction order stays explicit and a
//! newcomer can read the code bottom-up.
//!
//! The check reads the sources: a reference is a `crate::a::b` or `super::x` path in code (not
//! in comments, not in `#[cfg(test)]` code). A reference from module `p::x::...` to `p::y::...`
//! is an edge `x -> y` among the children of `p`; a cycle among the edges of any parent fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source roots of the workspace's crates, relative to the workspace root.
const CRATES: &[&str] = &[
    "collector/model/src",
    "collector/src",
    "server/storage/src",
    "server/query/src",
    "server/provenance/src",
    "server/budget/src",
    "server/mesh/src",
    "server/src",
];

type Module = Vec<String>;

#[test]
fn no_crate_has_a_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cycles = Vec::new();
    for krate in CRATES {
        let src = root.join(krate);
        let mut edges: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        let mut files = 0;
        for file in rust_files(&src) {
            files += 1;
            let from = module_of(&src, &file);
            let text = std::fs::read_to_string(&file).unwrap();
            for to in references(&from, &code_of(&text)) {
                if let Some((parent, a, b)) = siblings(&from, &to) {
                    edges
                        .entry(parent)
                        .or_default()
                        .entry(a)
                        .or_default()
                        .insert(b);
                }
            }
        }
        assert!(files > 0, "no sources under {}", src.display());
        for (parent, graph) in &edges {
            if let Some(cycle) = find_cycle(graph) {
                cycles.push(format!(
                    "{krate}: in `{}`: {}",
                    parent.join("::"),
                    cycle.join(" -> ")
                ));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_a_cycle() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
    let from = vec!["decode".to_string(), "otlp".to_string()];
    let refs = references(
        &from,
        "use super::otlp_wire::decode;\nuse crate::{wal, decode::ids};",
    );
    assert!(refs.contains(&vec!["decode".into(), "otlp_wire".into(), "decode".into()]));
    assert!(refs.contains(&vec!["wal".into()]));
    assert!(refs.contains(&vec!["decode".into(), "ids".into()]));
    assert_eq!(
        siblings(&from, &vec!["decode".into(), "otlp_wire".into()]),
        Some((vec!["decode".into()], "otlp".into(), "otlp_wire".into()))
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                out.extend(rust_files(&path));
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
    out
}

/// The module path of a file: `a/b.rs` and `a/b/mod.rs` are `a::b`; `lib.rs`, `main.rs` root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text of a file up to its first `#[cfg(test)]`, without line comments.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if !line.starts_with("//") {
            code.push_str(line.split(" // ").next().unwrap_or(""));
            code.push('\n');
        }
    }
    code
}

/// The modules named by `crate::` and `super::` paths in `code`, written in module `from`.
fn references(from: &Module, code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent(from))] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for path in paths(rest) {
                let mut m = base.clone();
                m.extend(path);
                out.push(m);
            }
        }
    }
    out
}

/// The identifier paths at the start of `text`: `a::b::c` gives one, `{a, b::c}` one per item.
fn paths(text: &str) -> Vec<Module> {
    if let Some(group) = text.strip_prefix('{') {
        let (mut depth, mut items, mut start) = (0, Vec::new(), 0);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items.iter().flat_map(|s| paths(s.trim_start())).collect();
    }
    let mut path = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        path.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if !next.starts_with('{') => rest = next,
            _ => break,
        }
    }
    vec![path]
}

fn parent(m: &Module) -> Module {
    m[..m.len().saturating_sub(1)].to_vec()
}

/// For a reference `from -> to`, the common parent and the two distinct children of it.
fn siblings(from: &Module, to: &Module) -> Option<(Module, String, String)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let (a, b) = (from.get(common)?, to.get(common)?);
    Some((from[..common].to_vec(), a.clone(), b.clone()))
}

/// A cycle in `graph` as the names along it (first repeated at the end), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}
