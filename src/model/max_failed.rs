//! `max_failed:` of a rollout wave: how many of its hosts may fail before the wave does.
//!
//! Written `N` (a count of hosts) or `N%` (a share of the wave's hosts, rounded down), parsed
//! once when env.yaml is loaded: a [`MaxFailed`] that exists is valid.

use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the schema enforces on the string form.
pub const MAX_FAILED_PATTERN: &str = r"^(100|[1-9]?[0-9])%$|^[0-9]+$";

/// How many hosts of a wave may fail (a step, the host, or a health check on it) while the
/// wave still passes. The default, `0`, stops the rollout at the first failed host.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxFailed {
    /// At most this many hosts.
    Count(u32),
    /// At most this share of the wave's hosts (0..=100), rounded down.
    Percent(u8),
}

impl Default for MaxFailed {
    /// No host may fail.
    fn default() -> MaxFailed {
        MaxFailed::Count(0)
    }
}

/// Why a `max_failed` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaxFailedError {
    #[error("invalid max_failed {0:?}: write a number of hosts (`1`) or a percentage of the wave (`10%`, at most 100%)")]
    Syntax(String),
}

impl MaxFailed {
    /// How many of a wave's `hosts` may fail.
    pub fn allowed(self, hosts: usize) -> usize {
        match self {
            MaxFailed::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            MaxFailed::Percent(p) => hosts.saturating_mul(usize::from(p)) / 100,
        }
    }

    /// Whether `failed` of `hosts` hosts is more than allowed (the wave fails).
    pub fn exceeded(self, failed: usize, hosts: usize) -> bool {
        failed > self.allowed(hosts)
    }
}

impl FromStr for MaxFailed {
    type Err = MaxFailedError;
    fn from_str(s: &str) -> Result<MaxFailed, MaxFailedError> {
        let syntax = || MaxFailedError::Syntax(s.to_string());
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if let Some(p) = s.strip_suffix('%') {
            if !digits(p) {
                return Err(syntax());
            }
            return match p.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(MaxFailed::Percent(p)),
                _ => Err(syntax()),
            };
        }
        if !digits(s) {
            return Err(syntax());
        }
        s.parse::<u32>().map(MaxFailed::Count).map_err(|_| syntax())
    }
}

impl fmt::Display for MaxFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxFailed::Count(n) => write!(f, "{n}"),
            MaxFailed::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl fmt::Debug for MaxFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MaxFailed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MaxFailed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MaxFailed, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => u32::try_from(n)
                .map(MaxFailed::Count)
                .map_err(|_| serde::de::Error::custom(MaxFailedError::Syntax(n.to_string()))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for MaxFailed {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MaxFailed".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Hosts of the wave that may fail while it still passes: a number (`1`) or a percentage of the wave's hosts, rounded down (`10%`). Default 0.",
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                {"type": "string", "pattern": MAX_FAILED_PATTERN}
            ]
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages_parse_once() {
        assert_eq!("2".parse::<MaxFailed>(), Ok(MaxFailed::Count(2)));
        assert_eq!("0".parse::<MaxFailed>(), Ok(MaxFailed::Count(0)));
        assert_eq!("25%".parse::<MaxFailed>(), Ok(MaxFailed::Percent(25)));
        assert_eq!("100%".parse::<MaxFailed>(), Ok(MaxFailed::Percent(100)));
        for bad in [
            "",
            "%",
            "-1",
            "1.5",
            "101%",
            "10 %",
            "x%",
            "1%%",
            "99999999999",
        ] {
            assert!(bad.parse::<MaxFailed>().is_err(), "{bad:?}");
        }
        let re = regex::Regex::new(MAX_FAILED_PATTERN).expect("pattern");
        for ok in ["0", "3", "0%", "9%", "50%", "100%"] {
            assert!(re.is_match(ok), "{ok}");
            assert!(ok.parse::<MaxFailed>().is_ok(), "{ok}");
        }
        for bad in ["101%", "1.5", "%", "-1"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn a_wave_fails_when_more_hosts_fail_than_allowed() {
        // The default: the first failed host fails the wave.
        assert!(!MaxFailed::default().exceeded(0, 10));
        assert!(MaxFailed::default().exceeded(1, 10));
        assert!(!MaxFailed::Count(2).exceeded(2, 3));
        assert!(MaxFailed::Count(2).exceeded(3, 3));
        // A share of the wave, rounded down: 25% of 10 hosts is 2.
        assert_eq!(MaxFailed::Percent(25).allowed(10), 2);
        assert!(!MaxFailed::Percent(25).exceeded(2, 10));
        assert!(MaxFailed::Percent(25).exceeded(3, 10));
        // 10% of 5 hosts is 0: any failure fails it.
        assert!(MaxFailed::Percent(10).exceeded(1, 5));
        assert!(!MaxFailed::Percent(100).exceeded(5, 5));
    }

    #[test]
    fn yaml_numbers_and_strings_both_deserialize() {
        let n: MaxFailed = serde_json::from_value(serde_json::json!(3)).expect("number");
        assert_eq!(n, MaxFailed::Count(3));
        let p: MaxFailed = serde_json::from_value(serde_json::json!("20%")).expect("string");
        assert_eq!(p, MaxFailed::Percent(20));
        assert!(serde_json::from_value::<MaxFailed>(serde_json::json!("lots")).is_err());
        assert_eq!(serde_json::to_value(p).expect("ser"), "20%");
    }
}
