//! Query filters of `plumb history`, `plumb drift-history`, `GET /api/runs` and
//! `GET /api/drift`, parsed once from `name=value` pairs into [`RunFilter`] / [`DriftFilter`].
//! An unknown name, a name given twice or a malformed value is a [`FilterError`] naming it
//! (HTTP 400, exit 1): a typo never silently widens an auditor's answer.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::types::{RunKind, RunResult};

/// Longest host name, signer or environment accepted in a filter.
const MAX_TEXT: usize = 256;
/// Shortest commit prefix accepted (shorter ones match too much to be a question).
pub const MIN_COMMIT_PREFIX: usize = 4;

/// A filter that could not be parsed: which one, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter `{param}`: {message}")]
pub struct FilterError {
    pub param: String,
    pub message: String,
}

impl FilterError {
    fn new(param: &str, message: impl fmt::Display) -> FilterError {
        FilterError {
            param: param.chars().take(64).collect(),
            message: message.to_string(),
        }
    }

    /// Stable code for the API's error body.
    pub fn code(&self) -> &'static str {
        "bad_query"
    }
}

/// A commit id prefix: 4 to 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrefix(String);

impl CommitPrefix {
    pub fn parse(s: &str) -> Result<CommitPrefix, String> {
        let ok_len = (MIN_COMMIT_PREFIX..=64).contains(&s.len());
        if ok_len && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(CommitPrefix(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{s:?} is not a commit id prefix ({MIN_COMMIT_PREFIX} to 64 hex digits)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A point in time as Unix milliseconds, written as RFC 3339 (`2026-11-30T09:00:00Z`) or
/// relative to now (`90m`, `12h`, `7d`, `2w`: that long ago).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBound(pub i64);

impl TimeBound {
    pub fn parse(s: &str, now_ms: i64) -> Result<TimeBound, String> {
        let help = "write RFC 3339 (2026-11-30T09:00:00Z) or a time ago: 90m, 12h, 7d, 2w";
        if let Ok(t) =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        {
            let ms = t.unix_timestamp_nanos() / 1_000_000;
            return i64::try_from(ms)
                .map(TimeBound)
                .map_err(|_| format!("{s:?} is out of range"));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let unit_ms: i64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(format!("{s:?} is not a time: {help}")),
        };
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a time: {help}"))?;
        n.checked_mul(unit_ms)
            .and_then(|ago| now_ms.checked_sub(ago))
            .map(TimeBound)
            .ok_or_else(|| format!("{s:?} is out of range"))
    }
}

/// Which runs [`StateDb::runs`](super::StateDb::runs) lists (newest first). Every field
/// narrows; `None` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub environment: Option<String>,
    /// Runs that have a result for this host.
    pub host: Option<String>,
    pub commit: Option<CommitPrefix>,
    /// The signer's principal or key fingerprint, exactly.
    pub signer: Option<String>,
    pub kind: Option<RunKind>,
    pub result: Option<RunResult>,
    /// Started at or after.
    pub since: Option<TimeBound>,
    /// Started before.
    pub until: Option<TimeBound>,
    pub limit: Option<usize>,
}

/// Which drift findings are listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DriftState {
    Open,
    Resolved,
    /// Open and resolved.
    #[default]
    All,
}

/// Which drift findings [`StateDb::drift_history`](super::StateDb::drift_history) lists
/// (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftFilter {
    pub environment: Option<String>,
    pub host: Option<String>,
    pub status: DriftState,
    /// Still open at or resolved after this time.
    pub since: Option<TimeBound>,
    /// First seen before this time.
    pub until: Option<TimeBound>,
    pub limit: Option<usize>,
}

/// What the pair parsers accept beyond the filters themselves.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// `limit` when none is given.
    pub default_limit: usize,
    /// Largest `limit` accepted.
    pub max_limit: usize,
    /// Now, Unix milliseconds (relative times count back from it).
    pub now_ms: i64,
}

/// The pairs, each name at most once, every name known.
struct Pairs<'a> {
    pairs: &'a [(String, String)],
    known: &'static [&'static str],
}

impl<'a> Pairs<'a> {
    fn new(
        pairs: &'a [(String, String)],
        known: &'static [&'static str],
    ) -> Result<Pairs<'a>, FilterError> {
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(FilterError::new(
                    name,
                    format!("unknown filter; known filters: {}", known.join(", ")),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(FilterError::new(name, "given more than once"));
            }
        }
        Ok(Pairs { pairs, known })
    }

    /// The value of `name`; an empty value counts as absent.
    fn get(&self, name: &'static str) -> Option<&'a str> {
        debug_assert!(self.known.contains(&name));
        self.pairs
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn text(&self, name: &'static str) -> Result<Option<String>, FilterError> {
        match self.get(name) {
            Some(v) if v.len() > MAX_TEXT || v.chars().any(char::is_control) => Err(
                FilterError::new(name, format!("at most {MAX_TEXT} printable characters")),
            ),
            v => Ok(v.map(str::to_string)),
        }
    }

    fn parsed<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, FilterError> {
        self.get(name)
            .map(|v| f(v).map_err(|m| FilterError::new(name, m)))
            .transpose()
    }

    fn limit(&self, l: FilterLimits) -> Result<usize, FilterError> {
        let max = l.max_limit;
        Ok(self
            .parsed("limit", |v| match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("must be an integer in 1..={max}")),
            })?
            .unwrap_or(l.default_limit))
    }
}

/// A status enum from its serde name, the error listing the accepted names.
fn enum_value<T: DeserializeOwned>(s: &str, names: &[&str]) -> Result<T, String> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| format!("{s:?} is not one of {}", names.join(", ")))
}

pub const RUN_KINDS: &[&str] = &[
    "apply",
    "correction",
    "drift_check",
    "refused",
    "state_reset",
];
pub const RUN_RESULTS: &[&str] = &[
    "converged",
    "failed",
    "refused",
    "no_change",
    "drift_found",
    "interrupted",
    "running",
];

/// Parses a run kind (`apply`, `drift_check`...).
pub fn parse_kind(s: &str) -> Result<RunKind, String> {
    enum_value(s, RUN_KINDS)
}

/// Parses a run result (`converged`, `failed`...).
pub fn parse_result(s: &str) -> Result<RunResult, String> {
    enum_value(s, RUN_RESULTS)
}

impl RunFilter {
    /// The filter names [`RunFilter::from_pairs`] knows.
    pub const NAMES: &'static [&'static str] = &[
        "env", "host", "commit", "signer", "kind", "result", "since", "until", "limit",
    ];

    /// Parses `name=value` pairs (a query string's, or the command line's).
    pub fn from_pairs(pairs: &[(String, String)], l: FilterLimits) -> Result<Self, FilterError> {
        let p = Pairs::new(pairs, Self::NAMES)?;
        Ok(RunFilter {
            environment: p.text("env")?,
            host: p.text("host")?,
            commit: p.parsed("commit", CommitPrefix::parse)?,
            signer: p.text("signer")?,
            kind: p.parsed("kind", parse_kind)?,
            result: p.parsed("result", parse_result)?,
            since: p.parsed("since", |v| TimeBound::parse(v, l.now_ms))?,
            until: p.parsed("until", |v| TimeBound::parse(v, l.now_ms))?,
            limit: Some(p.limit(l)?),
        })
    }
}

impl DriftFilter {
    /// The filter names [`DriftFilter::from_pairs`] knows.
    pub const NAMES: &'static [&'static str] =
        &["env", "host", "status", "since", "until", "limit"];

    /// Parses `name=value` pairs (a query string's, or the command line's).
    pub fn from_pairs(pairs: &[(String, String)], l: FilterLimits) -> Result<Self, FilterError> {
        let p = Pairs::new(pairs, Self::NAMES)?;
        Ok(DriftFilter {
            environment: p.text("env")?,
            host: p.text("host")?,
            status: p
                .parsed("status", |v| match v {
                    "open" => Ok(DriftState::Open),
                    "resolved" => Ok(DriftState::Resolved),
                    "all" => Ok(DriftState::All),
                    _ => Err(format!("{v:?} is not one of open, resolved, all")),
                })?
                .unwrap_or_default(),
            since: p.parsed("since", |v| TimeBound::parse(v, l.now_ms))?,
            until: p.parsed("until", |v| TimeBound::parse(v, l.now_ms))?,
            limit: Some(p.limit(l)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const L: FilterLimits = FilterLimits {
        default_limit: 20,
        max_limit: 1000,
        now_ms: NOW,
    };

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn every_run_filter_parses_into_its_type() {
        let f = RunFilter::from_pairs(
            &pairs(&[
                ("env", "prod"),
                ("host", "web-1"),
                ("commit", "ABCD12"),
                ("signer", "alice@example.com"),
                ("kind", "drift_check"),
                ("result", "failed"),
                ("since", "7d"),
                ("until", "2026-11-30T09:00:00Z"),
                ("limit", "5"),
            ]),
            L,
        )
        .unwrap();
        assert_eq!(f.commit.as_ref().map(CommitPrefix::as_str), Some("abcd12"));
        assert_eq!(f.kind, Some(RunKind::DriftCheck));
        assert_eq!(f.result, Some(RunResult::Failed));
        assert_eq!(f.since, Some(TimeBound(NOW - 7 * 86_400_000)));
        assert_eq!(f.until, Some(TimeBound(1_796_029_200_000)));
        assert_eq!(f.limit, Some(5));
        assert_eq!(f.host.as_deref(), Some("web-1"));
    }

    #[test]
    fn empty_values_are_absent_and_limit_defaults() {
        let f = RunFilter::from_pairs(&pairs(&[("env", ""), ("limit", "")]), L).unwrap();
        assert_eq!(
            f,
            RunFilter {
                limit: Some(20),
                ..RunFilter::default()
            }
        );
    }

    #[test]
    fn unknown_repeated_and_malformed_filters_are_named() {
        for (input, param, needle) in [
            (vec![("hots", "web-1")], "hots", "unknown filter"),
            (vec![("host", "a"), ("host", "b")], "host", "more than once"),
            (vec![("commit", "abc")], "commit", "hex digits"),
            (vec![("commit", "zzzz")], "commit", "hex digits"),
            (vec![("kind", "deploy")], "kind", "drift_check"),
            (vec![("result", "ok")], "result", "converged"),
            (vec![("since", "yesterday")], "since", "RFC 3339"),
            (vec![("until", "7y")], "until", "RFC 3339"),
            (
                vec![("since", "99999999999999999w")],
                "since",
                "out of range",
            ),
            (vec![("limit", "0")], "limit", "1..=1000"),
            (vec![("limit", "1001")], "limit", "1..=1000"),
            (vec![("host", "a\nb")], "host", "printable"),
        ] {
            let e = RunFilter::from_pairs(&pairs(&input), L).unwrap_err();
            assert_eq!(e.param, param, "{input:?}");
            assert!(e.to_string().contains(needle), "{input:?}: {e}");
            assert!(e.to_string().contains(&format!("`{param}`")), "{e}");
        }
    }

    #[test]
    fn drift_filters_parse_and_refuse_run_only_names() {
        let f =
            DriftFilter::from_pairs(&pairs(&[("status", "resolved"), ("host", "h")]), L).unwrap();
        assert_eq!(f.status, DriftState::Resolved);
        let e = DriftFilter::from_pairs(&pairs(&[("signer", "alice")]), L).unwrap_err();
        assert_eq!(e.param, "signer");
        let e = DriftFilter::from_pairs(&pairs(&[("status", "closed")]), L).unwrap_err();
        assert_eq!(e.param, "status");
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(name in "[a-z]{0,8}", value in "\\PC{0,40}") {
            let p = vec![(name, value)];
            let _ = RunFilter::from_pairs(&p, L);
            let _ = DriftFilter::from_pairs(&p, L);
        }

        #[test]
        fn relative_times_count_back_from_now(n in 0i64..100_000, unit in "[smhdw]") {
            let t = TimeBound::parse(&format!("{n}{unit}"), NOW).unwrap();
            proptest::prop_assert!(t.0 <= NOW);
        }
    }
}
