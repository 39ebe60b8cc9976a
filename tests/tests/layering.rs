//! No import circles: in every crate of the workspace, a module imports only from modules below
//! it. The check reads the sources: every `crate::a::b`, `super::x` and `self::x` path (in `use`
//! lines and inline) is an arrow from the module that writes it to the module it names (the
//! longest module prefix of the path); a `use super::{Item}` is an arrow to the parent. Comments
//! and `#[cfg(test)]` modules are left out. A circle fails the test with every arrow in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The source roots whose modules must form no circle.
const ROOTS: [&str; 4] = ["bus/src", "bus-macros/src", "bus-cli/src", "benches/src"];

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = Vec::new();
    for root in ROOTS {
        let graph = Graph::read(&workspace.join(root));
        assert!(
            graph.arrows.len() > 3,
            "{root}: too few modules read ({}); is the path right?",
            graph.arrows.len()
        );
        for circle in graph.circles() {
            report.push(format!("{root}: circle {circle:?}"));
            for &from in &circle {
                for to in &graph.arrows[from] {
                    if circle.contains(&to.as_str()) {
                        report.push(format!("    {from} -> {to}"));
                    }
                }
            }
        }
    }
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

/// A known circle is found: the check can fail.
#[test]
fn a_circle_is_found() {
    let mut graph = Graph::default();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .arrows
            .entry(from.into())
            .or_default()
            .insert(to.into());
        graph.arrows.entry(to.into()).or_default();
    }
    assert_eq!(graph.circles(), vec![vec!["a", "b", "c"]]);
}

#[derive(Default)]
struct Graph {
    /// Module path (`outbox::store`; the root is `""`) -> the modules it imports from.
    arrows: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read(root: &Path) -> Graph {
        let mut files = Vec::new();
        collect(root, &mut files);
        let mut modules = BTreeMap::new();
        for file in &files {
            let rel = file.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let is_dir = matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            );
            if is_dir {
                parts.pop();
            }
            if parts.last().map(String::as_str) == Some("tests") {
                continue;
            }
            modules.insert(parts.join("::"), (file.clone(), parts, is_dir));
        }
        // `#[path = "bus.rs"] mod handle;`: the module is named by its declaration.
        for (declaring, _) in modules
            .clone()
            .values()
            .filter(|m| m.2)
            .map(|m| (m.0.clone(), ()))
        {
            let source = std::fs::read_to_string(&declaring).unwrap();
            let mut lines = source.lines();
            while let Some(line) = lines.next() {
                let Some(file) = line
                    .trim()
                    .strip_prefix("#[path = \"")
                    .and_then(|l| l.strip_suffix("\"]"))
                else {
                    continue;
                };
                let Some(name) = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("mod "))
                    .and_then(|l| l.strip_suffix(';'))
                else {
                    continue;
                };
                let stem = file.trim_end_matches(".rs");
                if let Some((path, mut parts, is_dir)) = modules.remove(stem) {
                    *parts.last_mut().unwrap() = name.to_owned();
                    modules.insert(parts.join("::"), (path, parts, is_dir));
                }
            }
        }
        let names: BTreeSet<String> = modules.keys().cloned().collect();
        let mut graph = Graph::default();
        for (name, (file, parts, is_dir)) in &modules {
            let source = code_of(&std::fs::read_to_string(file).unwrap());
            let parent: Vec<String> = if *is_dir {
                parts[..parts.len().saturating_sub(1)].to_vec()
            } else {
                parts[..parts.len() - 1].to_vec()
            };
            let here: &[String] = if *is_dir {
                parts
            } else {
                &parts[..parts.len() - 1]
            };
            let mut to = BTreeSet::new();
            for (kind, rest) in paths(&source) {
                let mut target: Vec<String> = match kind {
                    "crate" => Vec::new(),
                    "super" => parent.clone(),
                    _ => here.to_vec(),
                };
                match rest {
                    Some(rest) => target.extend(rest.split("::").map(str::to_owned)),
                    // `super::{Item}` or `super::Item`: the parent itself.
                    None if kind == "super" => {}
                    None => continue,
                }
                if let Some(found) = longest_module(&target, &names) {
                    if &found != name {
                        to.insert(found);
                    }
                }
            }
            graph.arrows.insert(name.clone(), to);
        }
        graph
    }

    /// Every group of two or more modules that reach each other (Tarjan), each sorted.
    fn circles(&self) -> Vec<Vec<&str>> {
        struct Walk<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<Vec<&'a str>>,
        }
        impl<'a> Walk<'a> {
            fn visit(&mut self, v: &'a str) {
                let i = self.index.len();
                self.index.insert(v, i);
                self.low.insert(v, i);
                self.stack.push(v);
                self.on_stack.insert(v);
                for w in self.graph.arrows.get(v).into_iter().flatten() {
                    let w = w.as_str();
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let low = self.low[v].min(self.low[w]);
                        self.low.insert(v, low);
                    } else if self.on_stack.contains(w) {
                        let low = self.low[v].min(self.index[w]);
                        self.low.insert(v, low);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut group = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack.remove(w);
                        group.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if group.len() > 1 {
                        group.sort_unstable();
                        self.found.push(group);
                    }
                }
            }
        }
        let mut walk = Walk {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for v in self.arrows.keys() {
            if !walk.index.contains_key(v.as_str()) {
                walk.visit(v);
            }
        }
        walk.found
    }
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The source without comments, `#[cfg(test)]` modules, and with `super::` inside an inline
/// `mod x { .. }` block turned into a path of this file (it names the file's own module).
fn code_of(source: &str) -> String {
    let mut code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(i) = code.find("#[cfg(test)]") {
        code.truncate(i);
    }
    let mut out = String::with_capacity(code.len());
    let mut depth_of_inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut rest = code.as_str();
    while !rest.is_empty() {
        if rest.starts_with("mod ") && is_inline_mod(rest) {
            depth_of_inline.push(depth + 1);
        }
        if !depth_of_inline.is_empty() && rest.starts_with("super::") {
            out.push_str("inline::");
            rest = &rest["super::".len()..];
            continue;
        }
        let c = rest.chars().next().unwrap();
        match c {
            '{' => depth += 1,
            '}' => {
                if depth_of_inline.last() == Some(&depth) {
                    depth_of_inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `mod name {` (an inline module), not `mod name;`.
fn is_inline_mod(s: &str) -> bool {
    let line = s.lines().next().unwrap_or("");
    line.trim_end().ends_with('{') && !line.contains(';')
}

/// Every `crate::…`, `super::…` and `self::…` path: its kind and the lower-case segments after
/// it (`None` when the next segment is an item or a `{` list).
fn paths(source: &str) -> Vec<(&'static str, Option<String>)> {
    let mut found = Vec::new();
    for kind in ["crate", "super", "self"] {
        let pattern = format!("{kind}::");
        let mut from = 0;
        while let Some(i) = source[from..].find(&pattern) {
            let start = from + i;
            from = start + pattern.len();
            let before = source[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail = &source[from..];
            let segments: Vec<&str> = tail
                .split("::")
                .map(|s| {
                    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")
                })
                .take_while(|s| s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
                .collect();
            // A path's segments run while `::` follows each one directly.
            let mut taken = Vec::new();
            let mut cursor = tail;
            for s in segments {
                if !cursor.starts_with(s) {
                    break;
                }
                taken.push(s);
                cursor = &cursor[s.len()..];
                match cursor.strip_prefix("::") {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
            let kind: &'static str = match kind {
                "crate" => "crate",
                "super" => "super",
                _ => "self",
            };
            found.push((kind, (!taken.is_empty()).then(|| taken.join("::"))));
        }
    }
    found
}

/// The longest prefix of `target` that is a module.
fn longest_module(target: &[String], names: &BTreeSet<String>) -> Option<String> {
    (0..=target.len())
        .rev()
        .map(|k| target[..k].join("::"))
        .find(|candidate| names.contains(candidate))
}
