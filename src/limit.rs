//! `--limit`: which hosts of an environment a command works on.
//!
//! A limit is parsed once into a [`Limit`]: a label selector when it holds `=`
//! (`role=web,tier!=canary`: every condition holds), else a comma-separated list of host
//! names and globs (`web-1,db-*`; `*` any run of characters, `?` one). Several `--limit`s
//! select the union of their hosts. A limit that selects no host is an error naming it:
//! a typo must never turn into a successful run on nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::model::Host;

/// Longest limit accepted (bytes).
const MAX_LIMIT_LEN: usize = 4096;

/// One `--limit` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    raw: String,
    kind: LimitKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LimitKind {
    /// Names and globs: a host matching any of them.
    Names(Vec<Pattern>),
    /// Label conditions: a host matching all of them.
    Labels(Vec<LabelCond>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Glob(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelCond {
    key: String,
    value: String,
    equal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("empty limit; give host names, globs (`web-*`) or labels (`role=web,tier!=canary`)")]
    Empty,
    #[error("limit `{0}` is longer than {MAX_LIMIT_LEN} bytes")]
    TooLong(String),
    #[error("limit `{limit}`: `{part}` is not `key=value` or `key!=value` (a label selector cannot mix host names)")]
    BadLabel { limit: String, part: String },
    #[error("limit `{limit}` selects no host in environment `{env}`")]
    SelectsNothing { limit: String, env: String },
}

impl LimitError {
    pub fn code(&self) -> &'static str {
        match self {
            LimitError::Empty => "limit_empty",
            LimitError::TooLong(_) => "limit_too_long",
            LimitError::BadLabel { .. } => "limit_bad_label",
            LimitError::SelectsNothing { .. } => "limit_selects_nothing",
        }
    }
}

impl FromStr for Limit {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Limit, LimitError> {
        let raw = s.trim();
        if raw.len() > MAX_LIMIT_LEN {
            return Err(LimitError::TooLong(raw.chars().take(40).collect()));
        }
        let parts: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(LimitError::Empty);
        }
        let kind = if raw.contains('=') {
            let conds = parts
                .iter()
                .map(|p| {
                    let (key, value, equal) = match p.split_once("!=") {
                        Some((k, v)) => (k, v, false),
                        None => match p.split_once('=') {
                            Some((k, v)) => (k, v, true),
                            None => ("", "", true),
                        },
                    };
                    let (key, value) = (key.trim(), value.trim());
                    if key.is_empty() || value.is_empty() {
                        return Err(LimitError::BadLabel {
                            limit: raw.to_string(),
                            part: (*p).to_string(),
                        });
                    }
                    Ok(LabelCond {
                        key: key.to_string(),
                        value: value.to_string(),
                        equal,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            LimitKind::Labels(conds)
        } else {
            LimitKind::Names(
                parts
                    .iter()
                    .map(|p| {
                        if p.contains(['*', '?']) {
                            Pattern::Glob((*p).to_string())
                        } else {
                            Pattern::Exact((*p).to_string())
                        }
                    })
                    .collect(),
            )
        };
        Ok(Limit {
            raw: raw.to_string(),
            kind,
        })
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// `*` and `?` globbing, in O(pattern × name) time whatever the input.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Limit {
    /// Whether this limit selects a host with this name and these labels.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.kind {
            LimitKind::Names(patterns) => patterns.iter().any(|p| match p {
                Pattern::Exact(e) => e == name,
                Pattern::Glob(g) => glob_matches(g, name),
            }),
            LimitKind::Labels(conds) => conds
                .iter()
                .all(|c| (labels.get(&c.key) == Some(&c.value)) == c.equal),
        }
    }
}

/// Every `--limit` of a command: the union of what each selects; none means every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits(pub Vec<Limit>);

impl Limits {
    pub fn all() -> Limits {
        Limits(Vec::new())
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, host: &Host) -> bool {
        self.is_all() || self.0.iter().any(|l| l.matches(&host.name, &host.labels))
    }

    /// The hosts selected, in inventory order; the first limit that selects none of `hosts`
    /// is an error.
    pub fn select<'a>(&self, env: &str, hosts: &'a [Host]) -> Result<Vec<&'a Host>, LimitError> {
        for l in &self.0 {
            if !hosts.iter().any(|h| l.matches(&h.name, &h.labels)) {
                return Err(LimitError::SelectsNothing {
                    limit: l.raw.clone(),
                    env: env.to_string(),
                });
            }
        }
        Ok(hosts.iter().filter(|h| self.matches(h)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn l(s: &str) -> Limit {
        s.parse().expect("parses")
    }

    #[test]
    fn names_globs_and_labels() {
        let none = labels(&[]);
        assert!(l("web-1").matches("web-1", &none));
        assert!(!l("web-1").matches("web-10", &none));
        assert!(l("web-*").matches("web-10", &none));
        assert!(l("db-1,web-?").matches("web-3", &none));
        assert!(!l("web-?").matches("web-10", &none));
        let web = labels(&[("role", "web"), ("tier", "main")]);
        let canary = labels(&[("role", "web"), ("tier", "canary")]);
        assert!(l("role=web,tier!=canary").matches("a", &web));
        assert!(!l("role=web,tier!=canary").matches("a", &canary));
        assert!(
            l("tier!=canary").matches("a", &none),
            "no label is not canary"
        );
        assert!(!l("role=db").matches("a", &web));
    }

    #[test]
    fn bad_limits_are_refused_when_parsed() {
        assert_eq!("".parse::<Limit>(), Err(LimitError::Empty));
        assert_eq!(" , ".parse::<Limit>(), Err(LimitError::Empty));
        assert_eq!(
            "role=web,db-1".parse::<Limit>(),
            Err(LimitError::BadLabel {
                limit: "role=web,db-1".into(),
                part: "db-1".into()
            })
        );
        assert!(matches!(
            "=x".parse::<Limit>(),
            Err(LimitError::BadLabel { .. })
        ));
    }

    #[test]
    fn glob_is_linear_on_hostile_patterns() {
        let name = "a".repeat(4000);
        assert!(!glob_matches(&format!("{}b", "*a".repeat(1000)), &name));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    proptest! {
        /// A name always matches itself, and `*` matches everything.
        #[test]
        fn names_match_themselves(name in "[a-z0-9.-]{1,40}") {
            prop_assert!(l(&name).matches(&name, &BTreeMap::new()));
            prop_assert!(glob_matches("*", &name));
            let prefix = format!("{}*", &name[..1]);
            prop_assert!(glob_matches(&prefix, &name));
        }
    }
}
