//! Durations as people write them in config files: `500ms`, `30s`, `5m`, `2h`.
//!
//! Parsed once, when the file is loaded: a [`HumanDuration`] that exists is valid, so no
//! run-time code needs a fallback for a bad value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The pattern the schema enforces (an editor checks it as you type).
pub const DURATION_PATTERN: &str = r"^[0-9]+(ms|s|m|h)$";

/// A duration written `<digits><unit>`, unit one of `ms`, `s`, `m`, `h`. Keeps the text it
/// was written as, for messages and round trips.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration {
    value: Duration,
}

/// Why a duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: write a number and a unit, e.g. 500ms, 30s, 5m, 2h")]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration {
            value: Duration::from_secs(secs),
        }
    }
    pub const fn from_millis(ms: u64) -> HumanDuration {
        HumanDuration {
            value: Duration::from_millis(ms),
        }
    }
    pub const fn get(self) -> Duration {
        self.value
    }
    pub fn is_zero(self) -> bool {
        self.value.is_zero()
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.value
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<HumanDuration, DurationError> {
        let syntax = || DurationError::Syntax(s.to_string());
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(syntax)?;
        let (n, unit) = s.split_at(split);
        if n.is_empty() {
            return Err(syntax());
        }
        let n: u64 = n
            .parse()
            .map_err(|_| DurationError::Overflow(s.to_string()))?;
        let secs = |mul: u64| {
            n.checked_mul(mul)
                .map(Duration::from_secs)
                .ok_or_else(|| DurationError::Overflow(s.to_string()))
        };
        let value = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => secs(60)?,
            "h" => secs(3600)?,
            _ => return Err(syntax()),
        };
        Ok(HumanDuration { value })
    }
}

impl fmt::Display for HumanDuration {
    /// The shortest exact form: `300s` prints as `5m`, `1500ms` as `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.value.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let s = ms / 1000;
        if s != 0 && s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

super::text_value::text_value!(
    HumanDuration,
    name: "Duration",
    pattern: DURATION_PATTERN,
    description: "A duration: a number and a unit (ms, s, m, h), e.g. \"30s\" or \"5m\"."
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        let p = |s: &str| s.parse::<HumanDuration>().map(HumanDuration::get);
        assert_eq!(p("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(p("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(p("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(p("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in ["", "5", "m", "5 m", "-5s", "5d", "1.5s", "s5"] {
            assert!(
                matches!(bad.parse::<HumanDuration>(), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "99999999999999999999h".parse::<HumanDuration>(),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            "9999999999999999999h".parse::<HumanDuration>(),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn serde_round_trip_and_error() {
        let d: HumanDuration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5m\"");
        let e = serde_json::from_str::<HumanDuration>("\"5 minutes\"").unwrap_err();
        assert!(e.to_string().contains("e.g. 500ms"), "{e}");
    }

    proptest! {
        #[test]
        fn display_parses_back(ms in 0u64..10_000_000_000) {
            let d = HumanDuration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<HumanDuration>(), Ok(d));
        }

        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = s.parse::<HumanDuration>();
        }
    }
}
