//! Sizes as people write them in config files and flags: `512MiB`, `2GiB`, `1048576`.
//!
//! Parsed once: a [`ByteSize`] that exists is valid.

use std::fmt;
use std::str::FromStr;

/// The pattern the schema enforces.
pub const SIZE_PATTERN: &str = r"^[0-9]+(B|KiB|MiB|GiB)?$";

/// A number of bytes written `<digits>[unit]`, unit one of `B`, `KiB`, `MiB`, `GiB`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteSize(u64);

/// Why a size could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {0:?}: write a number and an optional unit, e.g. 512MiB, 2GiB")]
    Syntax(String),
    #[error("size {0:?} is too large")]
    Overflow(String),
}

impl ByteSize {
    pub const fn from_mib(mib: u64) -> ByteSize {
        ByteSize(mib * 1024 * 1024)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<ByteSize, SizeError> {
        let syntax = || SizeError::Syntax(s.to_string());
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        if n.is_empty() {
            return Err(syntax());
        }
        let n: u64 = n.parse().map_err(|_| SizeError::Overflow(s.to_string()))?;
        let mul: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(syntax()),
        };
        n.checked_mul(mul)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    /// The largest exact unit: `2147483648` prints as `2GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mul) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 != 0 && self.0.is_multiple_of(mul) {
                return write!(f, "{}{unit}", self.0 / mul);
            }
        }
        write!(f, "{}B", self.0)
    }
}

super::text_value::text_value!(
    ByteSize,
    name: "ByteSize",
    pattern: SIZE_PATTERN,
    description: "A size in bytes with an optional unit (B, KiB, MiB, GiB), e.g. \"2GiB\"."
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        let p = |s: &str| s.parse::<ByteSize>().map(ByteSize::bytes);
        assert_eq!(p("512"), Ok(512));
        assert_eq!(p("512B"), Ok(512));
        assert_eq!(p("2KiB"), Ok(2048));
        assert_eq!(p("3MiB"), Ok(3 << 20));
        assert_eq!(p("2GiB"), Ok(2 << 30));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in ["", "GiB", "2 GiB", "2GB", "-1", "1.5GiB", "2gib"] {
            assert!(
                matches!(bad.parse::<ByteSize>(), Err(SizeError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "99999999999GiB".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }

    proptest! {
        #[test]
        fn display_parses_back(n in 0u64..(1 << 50)) {
            let s = ByteSize(n);
            prop_assert_eq!(s.to_string().parse::<ByteSize>(), Ok(s));
        }

        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = s.parse::<ByteSize>();
        }
    }
}
