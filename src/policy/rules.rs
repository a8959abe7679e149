//! What a policy file declares, read from its text: its package, and the line of the first
//! definition of each `deny*`, `violation*`, `warn*` and `test_*` rule (conftest's and
//! `opa test`'s conventions). Rules are heads at the start of a line.

/// What a rule is for, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `deny`, `deny_*`: a message (or object) per violation.
    Deny,
    /// `violation`, `violation_*`: structured (`{"msg": ..., "step": ...}`).
    Violation,
    /// `warn`, `warn_*`: advisory.
    Warn,
    /// `test_*`: a test (`plumb policy test`).
    Test,
}

/// One rule of one package, where it is first defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecl {
    /// `plumb.ssh` (the Rego package).
    pub package: String,
    /// `deny_remove`.
    pub name: String,
    pub kind: RuleKind,
    /// The policy file, as shown to people.
    pub path: String,
    /// 1-based.
    pub line: usize,
}

impl RuleDecl {
    /// The rule's id in messages and `Plumb-Override:` trailers: the package without its
    /// `plumb.` prefix, a dot, the rule name (`ssh.deny_remove`).
    pub fn id(&self) -> String {
        let pkg = self.package.strip_prefix("plumb.").unwrap_or(&self.package);
        format!("{pkg}.{}", self.name)
    }

    /// `data.<package>.<name>`.
    pub fn data_path(&self) -> String {
        format!("data.{}.{}", self.package, self.name)
    }

    pub fn location(&self) -> String {
        format!("{}:{}", self.path, self.line)
    }
}

fn ident_end(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

fn kind_of(name: &str) -> Option<RuleKind> {
    let is = |base: &str| name == base || name.starts_with(&format!("{base}_"));
    if is("deny") {
        Some(RuleKind::Deny)
    } else if is("violation") {
        Some(RuleKind::Violation)
    } else if is("warn") {
        Some(RuleKind::Warn)
    } else if name.starts_with("test_") {
        Some(RuleKind::Test)
    } else {
        None
    }
}

/// The rules `text` declares in packages under `plumb` (other packages are libraries).
pub fn scan(path: &str, text: &str) -> Vec<RuleDecl> {
    let mut package: Option<String> = None;
    let mut out: Vec<RuleDecl> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("package ") {
            let p = rest.trim();
            let end = p
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(p.len());
            package = Some(p[..end].to_string());
            continue;
        }
        let Some(pkg) = package.as_deref() else {
            continue;
        };
        if pkg != "plumb" && !pkg.starts_with("plumb.") {
            continue;
        }
        let name = &line[..ident_end(line)];
        let Some(kind) = kind_of(name) else {
            continue;
        };
        if out.iter().any(|r| r.package == pkg && r.name == name) {
            continue;
        }
        out.push(RuleDecl {
            package: pkg.to_string(),
            name: name.to_string(),
            kind,
            path: path.to_string(),
            line: i + 1,
        });
    }
    out
}

/// The `input` fields that are the same for every host judged together (one environment,
/// commit, mode and time): the rest (`host`) is the host's own.
pub const SHARED_INPUT: &[&str] = &["mode", "environment", "commit", "steps", "now"];

/// The package `text` declares.
pub fn package_of(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let p = line.strip_prefix("package ")?.trim();
        let end = p
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(p.len());
        Some(&p[..end])
    })
}

/// Whether `text` reads nothing of `input` but [`SHARED_INPUT`], and no other package's
/// rules: then its rules give the same values on two hosts with equal steps. Decided by its
/// words, conservatively: any `input` not followed by `.` and a shared field (`input.host`,
/// `input[k]`, `x := input`, `with input as`), and any `data.` or `data[`, counts as
/// reading more, even in a comment or a string.
pub fn reads_only_shared(text: &str) -> bool {
    static WORDS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let words =
        WORDS.get_or_init(|| regex::Regex::new(r"\b(input|data)\b").expect("a valid regex"));
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    words.find_iter(text).all(|m| {
        let rest = &text[m.end()..];
        if m.as_str() == "data" {
            return !rest.starts_with(['.', '[']);
        }
        let Some(field) = rest.strip_prefix('.') else {
            return false;
        };
        let end = field.find(|c: char| !ident(c)).unwrap_or(field.len());
        SHARED_INPUT.contains(&&field[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_found_with_their_first_line() {
        let text =
            "package plumb.ssh\n\nimport rego.v1\n\ndeny_remove contains msg if {\n  true\n}\n\
                    deny_remove contains msg if {\n  false\n}\nwarn contains 1 if true\n\
                    test_it if true\nhelper := 1\n";
        let rules = scan("p/ssh.rego", text);
        let ids: Vec<(String, usize)> = rules.iter().map(|r| (r.id(), r.line)).collect();
        assert_eq!(
            ids,
            vec![
                ("ssh.deny_remove".to_string(), 5),
                ("ssh.warn".to_string(), 11),
                ("ssh.test_it".to_string(), 12)
            ]
        );
        assert!(scan("x.rego", "package lib\ndeny if true\n").is_empty());
        assert_eq!(scan("x.rego", "package plumb\ndenyx := 1\n").len(), 0);
    }

    #[test]
    fn only_a_package_that_reads_the_shared_input_alone_is_shared() {
        let shared = "package plumb.a\ndeny contains m if { some s in input.steps; input.environment.name == \"x\"; m := s.address }";
        assert!(reads_only_shared(shared));
        for more in [
            "package plumb.a\ndeny contains m if { m := input.host.name }",
            "package plumb.a\ndeny contains m if { x := input; m := x.host.name }",
            "package plumb.a\ndeny contains m if { m := input[\"host\"].name }",
            "package plumb.a\ndeny contains m if { m := data.plumb.b.name }",
            "package plumb.a\ndeny contains m if { m := object.get(input, \"host\", 1) }",
            "package plumb.a\n# input\ndeny := 1",
        ] {
            assert!(!reads_only_shared(more), "{more}");
        }
        assert_eq!(package_of("# c\npackage plumb.a.b\n"), Some("plumb.a.b"));
    }
}
