//! Step identity: `<unit>/<id>`, unique on a host.

use std::fmt;

use serde::{Serialize, Serializer};

/// Where a step is declared: its unit and its id. Displayed (and serialized) as `unit/id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepAddress {
    pub unit: String,
    pub id: String,
}

impl StepAddress {
    pub fn new(unit: impl Into<String>, id: impl Into<String>) -> StepAddress {
        StepAddress {
            unit: unit.into(),
            id: id.into(),
        }
    }

    /// Resolves a step reference written in `unit`: `id` is in the same unit, `other/id`
    /// names another unit's step.
    pub fn qualify(unit: &str, reference: &str) -> StepAddress {
        match reference.split_once('/') {
            Some((u, id)) => StepAddress::new(u, id),
            None => StepAddress::new(unit, reference),
        }
    }

    /// Parses `unit/id`; `None` without a `/`.
    pub fn parse(text: &str) -> Option<StepAddress> {
        let (u, id) = text.split_once('/')?;
        Some(StepAddress::new(u, id))
    }
}

impl fmt::Display for StepAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.unit, self.id)
    }
}

impl Serialize for StepAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_and_displays() {
        assert_eq!(StepAddress::qualify("web", "conf").to_string(), "web/conf");
        assert_eq!(
            StepAddress::qualify("web", "base/pkg").to_string(),
            "base/pkg"
        );
        assert_eq!(StepAddress::parse("a/b"), Some(StepAddress::new("a", "b")));
        assert_eq!(StepAddress::parse("ab"), None);
        assert_eq!(
            serde_json::to_string(&StepAddress::new("u", "i")).expect("json"),
            "\"u/i\""
        );
    }
}
