//! Diagnostics: what is wrong, where (`path:line:col`), and what to do.
//!
//! Every layer that reads user input reports through [`Diagnostic`]. Rendering to text is
//! plain here (for snapshots, pipes and JSON); colour is added by `cli` only.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about the config repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable, low-cardinality code, e.g. `schema`, `yaml`, `cycle`, `undefined-variable`.
    pub code: &'static str,
    /// Path relative to the repo root, with `/` separators.
    pub path: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
    /// What to do about it, when there is more to say than the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(
        code: &'static str,
        path: impl Into<String>,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            path: path.into(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(
        code: &'static str,
        path: impl Into<String>,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, path, pos, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }
}

/// A collection of diagnostics, kept in a stable order (file, line, column).
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        if !self.items.contains(&d) {
            self.items.push(d);
        }
    }
    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        for d in other {
            self.push(d);
        }
    }
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
    pub fn warning_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Sorted by path, line, column, then severity.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by(|a, b| {
            (&a.path, a.line, a.col, a.severity, &a.message)
                .cmp(&(&b.path, b.line, b.col, b.severity, &b.message))
        });
        self.items
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
}

/// The text of every file read, so diagnostics can quote the offending line.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: BTreeMap<String, String>,
    /// Prefix for paths in text output (the repo as the user named it), so that
    /// `path:line:col` opens from where plumb was run. JSON keeps repo-relative paths.
    display_root: Option<String>,
}

impl SourceMap {
    /// Text output names files as `<root>/<path>`; `.` or empty keeps repo-relative paths.
    pub fn set_display_root(&mut self, root: &str) {
        let root = root.trim_end_matches('/');
        self.display_root = match root {
            "" | "." => None,
            r => Some(r.to_string()),
        };
    }
    /// How text output names `path`.
    pub fn display(&self, path: &str) -> String {
        match &self.display_root {
            Some(r) => format!("{r}/{path}"),
            None => path.to_string(),
        }
    }
    pub fn insert(&mut self, path: impl Into<String>, text: impl Into<String>) {
        self.files.insert(path.into(), text.into());
    }
    pub fn get(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }
    pub fn line(&self, path: &str, line: u32) -> Option<&str> {
        let idx = usize::try_from(line).ok()?.checked_sub(1)?;
        self.get(path)?.lines().nth(idx)
    }
}

/// An error and its sources on one line, skipping a source whose text is already shown
/// (libraries often hide the cause, e.g. reqwest's and openssh's own messages).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// Renders a diagnostic as `path:line:col: severity: message`, the source line and a caret.
pub fn render_plain(d: &Diagnostic, sources: &SourceMap) -> String {
    let sev = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut out = format!(
        "{}:{}:{}: {sev}: {}\n",
        sources.display(&d.path),
        d.line,
        d.col,
        d.message
    );
    if let Some(src) = sources.line(&d.path, d.line) {
        let gutter = d.line.to_string();
        let (shown, caret_at) = window(src.trim_end(), d.col.saturating_sub(1) as usize);
        let _ = writeln!(out, "{gutter} | {shown}");
        // Columns count characters; keep tabs so the caret lines up under them.
        let prefix: String = shown
            .chars()
            .take(caret_at)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let _ = writeln!(out, "{} | {prefix}^", " ".repeat(gutter.len()));
    }
    if let Some(h) = &d.hint {
        let _ = writeln!(out, "  = help: {h}");
    }
    out
}

/// Widest source line quoted in a diagnostic, in characters.
const MAX_QUOTED: usize = 100;

/// The part of `line` to quote around the 0-based character `col`, and the caret's
/// character offset in it. Long lines are cut to a window marked with `...`.
pub fn window(line: &str, col: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= MAX_QUOTED {
        return (line.to_string(), col);
    }
    let col = col.min(chars.len());
    let start = col.saturating_sub(MAX_QUOTED / 2);
    let end = (start + MAX_QUOTED).min(chars.len());
    let mut shown = String::new();
    let mut caret = col - start;
    if start > 0 {
        shown.push_str("...");
        caret += 3;
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push_str("...");
    }
    (shown, caret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, col: u32) -> Diagnostic {
        Diagnostic::error("t", "f.yaml", Pos { line, col }, "m")
    }

    #[test]
    fn caret_under_column() {
        let mut s = SourceMap::default();
        s.insert("f.yaml", "key: value\n");
        let out = render_plain(&at(1, 6), &s);
        assert_eq!(out, "f.yaml:1:6: error: m\n1 | key: value\n  |      ^\n");
    }

    #[test]
    fn long_lines_are_cut_around_the_column() {
        let mut s = SourceMap::default();
        let line = format!("{}X{}", "a".repeat(5000), "b".repeat(5000));
        s.insert("f.yaml", line);
        let out = render_plain(&at(1, 5001), &s);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].len() < 120, "{}", lines[1]);
        let x = lines[1].find('X').expect("column shown");
        assert_eq!(lines[2].find('^'), Some(x));
    }
}
