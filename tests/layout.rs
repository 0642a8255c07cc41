//! The source tree reads as the request path: the crate map in `src/lib.rs`
//! lists the top-level modules from the composition root down to the
//! platform's vocabulary, and every module may import only modules listed
//! BELOW it. This test reads `src/` as text (what `use crate::…` and
//! `crate::…` paths each file names, test code left out) and fails on:
//! - an import that points up the crate map (which would also be a loop);
//! - an import loop between any two files, at any depth;
//! - a top-level module missing from the crate map, or listed but gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path under `crate`, e.g. `["quota", "redis", "health"]`.
type ModPath = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` (but `main.rs`) with its module path.
fn modules() -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut mods = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().with_extension("");
        let mut path: ModPath = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path == ["main"] {
            continue;
        }
        if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
            path.pop();
        }
        mods.insert(path, file);
    }
    mods
}

/// Test-only modules (`tests.rs`, `*_tests.rs`, anything under `tests/`).
fn is_test(path: &ModPath) -> bool {
    path.iter().any(|s| s == "tests" || s.ends_with("_tests"))
}

/// The text of a file without comments and without `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the next item: a `mod x;` line, or a block to its end.
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                let code = next.split("//").next().unwrap_or("");
                depth += code.matches('{').count() as i32;
                depth -= code.matches('}').count() as i32;
                opened |= code.contains('{');
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line.split("//").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The paths a file names: `crate::a::b` and `super::x`, with one level of
/// `{a, b::c}` groups expanded, made absolute.
fn named_paths(module: &ModPath, code: &str) -> Vec<ModPath> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0 && code[..at].ends_with(ident) {
                continue;
            }
            // Read `seg::seg::…` and an optional `{…}` group.
            let rest = &code[at..];
            let mut segs: Vec<String> = Vec::new();
            let mut i = 0;
            loop {
                let seg: String = rest[i..].chars().take_while(|&c| ident(c)).collect();
                if seg.is_empty() {
                    break;
                }
                i += seg.len();
                segs.push(seg);
                if rest[i..].starts_with("::") {
                    i += 2;
                } else {
                    break;
                }
            }
            let mut heads = vec![segs.clone()];
            if rest[i..].starts_with('{') {
                let group = &rest[i + 1..rest[i..].find('}').map_or(i + 1, |e| i + e)];
                heads = group
                    .split(',')
                    .map(|item| {
                        let head: String = item.trim().chars().take_while(|&c| ident(c)).collect();
                        let mut p = segs.clone();
                        if !head.is_empty() && head != "self" {
                            p.push(head);
                        }
                        p
                    })
                    .collect();
            }
            for mut p in heads {
                let absolute = if p.first().map(String::as_str) == Some("crate") {
                    p.remove(0);
                    p
                } else {
                    // `super` from `a/b.rs` and from `a/b/mod.rs` is `a`.
                    let mut base = module.clone();
                    base.pop();
                    let mut q = p.into_iter().peekable();
                    q.next(); // the first `super`
                    while q.peek().map(String::as_str) == Some("super") {
                        q.next();
                        base.pop();
                    }
                    base.extend(q);
                    base
                };
                found.push(absolute);
            }
        }
    }
    found
}

/// The longest module that is a prefix of `path`.
fn resolve(mods: &BTreeMap<ModPath, PathBuf>, path: &ModPath) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| mods.contains_key(p))
}

/// Edges between files (module paths), parents and children excluded.
fn file_edges() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mods = modules();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, file) in &mods {
        if is_test(module) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for path in named_paths(module, &code) {
            let Some(target) = resolve(&mods, &path) else {
                continue;
            };
            if is_test(&target) || target.starts_with(module) || module.starts_with(&target) {
                continue;
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }
    edges
}

/// The top-level modules in the order of the crate map in `src/lib.rs`.
fn crate_map() -> Vec<String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! | [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_import_points_down_the_crate_map() {
    let order = crate_map();
    assert!(
        order.len() > 10,
        "crate map not found in src/lib.rs: {order:?}"
    );
    let rank = |m: &str| order.iter().position(|o| o == m);
    let top: BTreeSet<String> = modules()
        .keys()
        .filter(|p| p.len() == 1)
        .map(|p| p[0].clone())
        .collect();
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        top, listed,
        "top-level modules vs the crate map in src/lib.rs"
    );
    let mut up = Vec::new();
    for (from, targets) in file_edges() {
        for to in targets {
            let (a, b) = (&from[0], &to[0]);
            if a != b && rank(a) > rank(b) {
                up.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        up.is_empty(),
        "imports pointing up the crate map:\n{}",
        up.join("\n")
    );
}

#[test]
fn no_import_loop_between_files() {
    let edges = file_edges();
    // Depth-first search for a back edge; report the loop it closes.
    fn visit(
        node: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        state: &mut BTreeMap<ModPath, u8>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    return Some(stack[at..].to_vec());
                }
                0 => {
                    if let Some(found) = visit(next, edges, state, stack) {
                        return Some(found);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(found) = visit(node, &edges, &mut state, &mut Vec::new()) {
                let names: Vec<String> = found.iter().map(|m| m.join("::")).collect();
                panic!("import loop: {} -> {}", names.join(" -> "), names[0]);
            }
        }
    }
    // The check sees the tree: the request path's main imports are there.
    let proxy = edges
        .get(&vec!["proxy".to_string()])
        .expect("proxy imports");
    assert!(proxy.contains(&vec!["quota".to_string()]), "{proxy:?}");
}

#[test]
fn the_parser_reads_groups_and_super_and_skips_test_code() {
    // The parser on a made-up file: `a::b` naming `crate::c::d` and
    // `super::e`, with a group and a test module that must be ignored.
    let code = code_of(
        "use crate::c::{d, e::f};\nuse super::g;\nfn x() { crate::h::i(); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::z;\n}\n",
    );
    let named = named_paths(&vec!["a".into(), "b".into()], &code);
    let names: BTreeSet<String> = named.iter().map(|p| p.join("::")).collect();
    for want in ["c::d", "c::e", "a::g", "h::i"] {
        assert!(names.contains(want), "{want} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with('z')), "{names:?}");
}
