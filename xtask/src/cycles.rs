//! `cargo xtask cycles`: import circles between the source files of each library crate.
//!
//! A file imports another when it names an item of the other's module through a path: `crate::`,
//! `super::`, `self::` or a child module's name, in a `use` or inline. Re-exports are followed to
//! the file that defines the item, so `crate::Isa` counts as an import of `dispatch.rs`, not of
//! `lib.rs`; `mod child;` declarations do not count. A circle is a set of files that reach each
//! other through imports (a strongly connected component of more than one file).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's files: module path (`["elementwise", "lut"]`) to what the file says.
struct Crate {
    files: BTreeMap<Vec<String>, Source>,
}

/// One file: where it is, the paths it names, and what it re-exports (name to full path; `None`
/// for an item of another crate).
struct Source {
    path: PathBuf,
    references: Vec<Vec<String>>,
    reexports: BTreeMap<String, Option<Vec<String>>>,
}

/// The import circles of every crate under `crates/`, each as its files (relative to `root`),
/// sorted.
pub fn find(root: &Path) -> Result<Vec<Vec<String>>, String> {
    let mut circles = Vec::new();
    let crates = std::fs::read_dir(root.join("crates")).map_err(|e| format!("crates/: {e}"))?;
    let mut dirs: Vec<PathBuf> = crates.filter_map(|e| e.ok()).map(|e| e.path().join("src")).collect();
    dirs.sort();
    for src in dirs.into_iter().filter(|d| d.join("lib.rs").is_file()) {
        let krate = read_crate(&src)?;
        for circle in krate.circles() {
            let mut files: Vec<String> = circle
                .iter()
                .map(|m| {
                    krate.files[m]
                        .path
                        .strip_prefix(root)
                        .unwrap_or(&krate.files[m].path)
                        .display()
                        .to_string()
                })
                .collect();
            files.sort();
            circles.push(files);
        }
    }
    circles.sort();
    Ok(circles)
}

/// `cargo xtask cycles`: prints every circle; fails if there is one.
pub fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace root")?;
    let circles = find(root)?;
    for circle in &circles {
        println!("import circle: {}", circle.join(" <-> "));
    }
    if circles.is_empty() {
        println!("no import circles between files");
        Ok(())
    } else {
        Err(format!("{} import circle(s)", circles.len()))
    }
}

fn read_crate(src: &Path) -> Result<Crate, String> {
    let mut paths = Vec::new();
    collect_rs(src, &mut paths)?;
    let modules: Vec<(Vec<String>, PathBuf)> = paths.into_iter().map(|p| (module_of(src, &p), p)).collect();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut files = BTreeMap::new();
    for (module, path) in modules {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let source = parse(&strip_comments_and_strings(&text), &module, &known);
        files.insert(module, Source { path, ..source });
    }
    Ok(Crate { files })
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` is the root (empty path).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The text with comments (doc comments included) and string and char literals blanked out.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1).copied()) {
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            ('"', _) => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            ('\'', _) if chars.get(i + 2) == Some(&'\'') || chars.get(i + 1) == Some(&'\\') => {
                // A char literal ('a', '\n', '\u{..}'); a lifetime has no closing quote.
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("' '");
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        let token = match c {
            ':' if chars.get(i + 1) == Some(&':') => {
                i += 1;
                Token::PathSep
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            '*' => Token::Star,
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            _ => Token::Other,
        };
        tokens.push(token);
        i += 1;
    }
    tokens
}

/// The paths a file names (made absolute from the crate root) and its re-exports. Inline
/// modules (`mod tests { use super::*; }`) resolve their paths from where they stand.
fn parse(text: &str, file_module: &[String], known: &BTreeSet<Vec<String>>) -> Source {
    let tokens = tokenize(text);
    let mut references = Vec::new();
    let mut reexports = BTreeMap::new();
    let mut module = file_module.to_vec();
    // Inline modules entered, with the brace depth their body closes back to.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&depth) {
                    inline.pop();
                    module.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Open)) = (tokens.get(i + 1), tokens.get(i + 2))
                {
                    module.push(name.clone());
                    inline.push(depth);
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Token::Ident(word) if word == "use" => {
                let public = i > 0 && is_pub(&tokens[..i]);
                let mut leaves = Vec::new();
                i = use_tree(&tokens, i + 1, Vec::new(), &mut leaves);
                for (path, alias) in leaves {
                    let absolute = absolute(&path, &module, known);
                    if public
                        && inline.is_empty()
                        && let Some(name) = alias.or_else(|| path.last().cloned())
                    {
                        reexports.insert(name, absolute.clone());
                    }
                    references.extend(absolute);
                }
                continue;
            }
            Token::Ident(first) => {
                let after_sep = i > 0 && tokens[i - 1] == Token::PathSep;
                if !after_sep
                    && tokens.get(i + 1) == Some(&Token::PathSep)
                    && starts_path(first, &module, known)
                {
                    let mut path = vec![first.clone()];
                    let mut j = i + 1;
                    while tokens.get(j) == Some(&Token::PathSep) {
                        match tokens.get(j + 1) {
                            Some(Token::Ident(segment)) => path.push(segment.clone()),
                            _ => break,
                        }
                        j += 2;
                    }
                    if let Some(absolute) = absolute(&path, &module, known) {
                        references.push(absolute);
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Source { path: PathBuf::new(), references, reexports }
}

/// Whether the tokens before a `use` make it public (`pub`, `pub(crate)`, `pub(super)`).
fn is_pub(before: &[Token]) -> bool {
    let n = before.len();
    before[n - 1] == Token::Ident("pub".into())
        || (n >= 4 && before[n - 4] == Token::Ident("pub".into()) && before[n - 1] == Token::Other)
}

/// Reads one use tree starting at `i` under `prefix`, pushing `(path, alias)` leaves; returns the
/// index after it (after the `;` for a top-level tree).
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    loop {
        match tokens.get(i) {
            Some(Token::Ident(s)) if s == "as" => {
                let alias = match tokens.get(i + 1) {
                    Some(Token::Ident(a)) if a != "_" => Some(a.clone()),
                    _ => None,
                };
                leaves.push((prefix, alias));
                return i + 2;
            }
            Some(Token::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
                if tokens.get(i) == Some(&Token::PathSep) {
                    i += 1;
                    continue;
                }
                if tokens.get(i) == Some(&Token::Ident("as".into())) {
                    continue;
                }
                leaves.push((prefix, None));
                return i;
            }
            Some(Token::Star) => {
                leaves.push((prefix, None));
                return i + 1;
            }
            Some(Token::Open) => {
                i += 1;
                while !matches!(tokens.get(i), Some(Token::Close) | None) {
                    i = use_tree(tokens, i, prefix.clone(), leaves);
                    if tokens.get(i) == Some(&Token::Comma) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            _ => return i,
        }
    }
}

/// Whether a path starting with `first` names something of this crate.
fn starts_path(first: &str, module: &[String], known: &BTreeSet<Vec<String>>) -> bool {
    matches!(first, "crate" | "super" | "self" | "$crate") || is_child(first, module, known)
}

fn is_child(name: &str, module: &[String], known: &BTreeSet<Vec<String>>) -> bool {
    let mut child = module.to_vec();
    child.push(name.to_string());
    known.contains(&child)
}

/// `path` made absolute from the crate root, or `None` if it leaves the crate.
fn absolute(path: &[String], module: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" | "$crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => {
            let mut base = module.to_vec();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            return Some(base);
        }
        name if is_child(name, module, known) => {
            let mut base = module.to_vec();
            base.push(name.to_string());
            base.extend(path[1..].iter().cloned());
            return Some(base);
        }
        _ => return None,
    };
    base.extend(path[1..].iter().cloned());
    Some(base)
}

impl Crate {
    /// The file a path points into: the longest module prefix, following re-exports of the
    /// item it names.
    fn target(&self, path: &[String], depth: usize) -> Option<Vec<String>> {
        let split = (0..=path.len()).rev().find(|&n| self.files.contains_key(&path[..n]))?;
        let module = path[..split].to_vec();
        if let (Some(item), true) = (path.get(split), depth < 8)
            && let Some(reexported) = self.files[&module].reexports.get(item)
        {
            // An item of another crate, re-exported: no file of this one.
            let mut followed = reexported.clone()?;
            followed.extend(path[split + 1..].iter().cloned());
            if followed != path {
                return self.target(&followed, depth + 1).or(Some(module));
            }
        }
        Some(module)
    }

    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, source) in &self.files {
            let targets = edges.entry(module.clone()).or_default();
            for path in &source.references {
                if let Some(target) = self.target(path, 0).filter(|t| t != module) {
                    targets.insert(target);
                }
            }
        }
        edges
    }

    /// Strongly connected components of more than one file (Tarjan's algorithm).
    fn circles(&self) -> Vec<Vec<Vec<String>>> {
        let edges = self.edges();
        let nodes: Vec<&Vec<String>> = edges.keys().collect();
        let index_of: BTreeMap<&Vec<String>, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let adjacency: Vec<Vec<usize>> = nodes
            .iter()
            .map(|n| edges[*n].iter().filter_map(|t| index_of.get(t).copied()).collect())
            .collect();
        let mut tarjan = Tarjan::new(adjacency.len());
        for v in 0..adjacency.len() {
            if tarjan.index[v].is_none() {
                tarjan.visit(v, &adjacency);
            }
        }
        tarjan
            .components
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| c.into_iter().map(|i| nodes[i].clone()).collect())
            .collect()
    }
}

struct Tarjan {
    next: usize,
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    components: Vec<Vec<usize>>,
}

impl Tarjan {
    fn new(n: usize) -> Self {
        Self {
            next: 0,
            index: vec![None; n],
            low: vec![0; n],
            on_stack: vec![false; n],
            stack: Vec::new(),
            components: Vec::new(),
        }
    }

    fn visit(&mut self, v: usize, adjacency: &[Vec<usize>]) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &adjacency[v] {
            match self.index[w] {
                None => {
                    self.visit(w, adjacency);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_has_no_import_circles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let found: Vec<String> = find(root).expect("sources").iter().map(|c| c.join(" <-> ")).collect();
        assert!(found.is_empty(), "import circles between files: {found:#?}");
    }

    fn known(modules: &[&[&str]]) -> BTreeSet<Vec<String>> {
        modules.iter().map(|m| m.iter().map(|s| s.to_string()).collect()).collect()
    }

    #[test]
    fn inline_modules_resolve_from_where_they_stand() {
        let known = known(&[&[], &["a"]]);
        let text = "fn f() {} mod tests { use super::*; fn g() { super::f() } } use super::h;";
        let source = parse(&strip_comments_and_strings(text), &["a".to_string()], &known);
        let rendered: Vec<String> = source.references.iter().map(|p| p.join("::")).collect();
        assert_eq!(rendered, ["a", "a::f", "h"]);
    }

    #[test]
    fn use_trees_expand_to_absolute_paths() {
        let known = known(&[&[], &["a"], &["a", "b"], &["c"]]);
        let text = "use crate::{x::Y, a::{b::Z, W as V}}; use super::q; pub use b::Inner; fn f() { crate::c::go(); }";
        let source = parse(&strip_comments_and_strings(text), &["a".to_string()], &known);
        let rendered: Vec<String> = source.references.iter().map(|p| p.join("::")).collect();
        assert_eq!(rendered, ["x::Y", "a::b::Z", "a::W", "q", "a::b::Inner", "c::go"]);
        assert_eq!(
            source.reexports["Inner"].as_deref(),
            Some(["a", "b", "Inner"].map(String::from).as_slice())
        );
    }

    #[test]
    fn comments_and_strings_name_nothing() {
        let text = "// use crate::a::X;\n/// [`crate::a`]\nlet s = \"crate::a::b\"; let c = '\"';";
        let known = known(&[&[], &["a"]]);
        assert!(parse(&strip_comments_and_strings(text), &[], &known).references.is_empty());
    }

    #[test]
    fn reexports_lead_to_the_defining_file_and_circles_are_found() {
        let crate_of = |files: Vec<(&[&str], &str)>| {
            let known = known(&files.iter().map(|(m, _)| *m).collect::<Vec<_>>());
            let files = files
                .into_iter()
                .map(|(m, text)| {
                    let module: Vec<String> = m.iter().map(|s| s.to_string()).collect();
                    let source = parse(&strip_comments_and_strings(text), &module, &known);
                    (module, source)
                })
                .collect();
            Crate { files }
        };
        // lib re-exports Isa from isa; a uses crate::Isa, isa uses nothing: no circle through lib.
        let krate = crate_of(vec![
            (&[], "mod a; mod b; mod isa; pub use isa::Isa;"),
            (&["a"], "use crate::Isa; use crate::b::f;"),
            (&["b"], "use crate::Isa;"),
            (&["isa"], "pub struct Isa;"),
        ]);
        assert!(krate.circles().is_empty());
        let krate = crate_of(vec![
            (&[], "mod a; mod b;"),
            (&["a"], "use crate::b::f; pub fn g() {}"),
            (&["b"], "pub fn f() { crate::a::g() }"),
        ]);
        assert_eq!(krate.circles().len(), 1);
    }
}
