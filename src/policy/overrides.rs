//! `Plumb-Override: <rule> <reason>` trailers, and the verdict on a plan's findings: an
//! overridable denial is lifted only by a trailer naming its rule on a commit whose signer is
//! one of the operator's approvers. The repo cannot name approvers (they live in the
//! operator's config, like the trust root).

use schemars::JsonSchema;
use serde::Serialize;

use super::{Finding, Level};

/// The trailer's key.
pub const TRAILER: &str = "Plumb-Override:";
/// Trailers read from one commit message.
const MAX_OVERRIDES: usize = 50;

/// One `Plumb-Override:` trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Override {
    pub rule: String,
    pub reason: String,
}

/// The overrides a commit message carries (a trailer without a reason is ignored: a reason
/// is required).
pub fn parse(message: &str) -> Vec<Override> {
    message
        .lines()
        .filter_map(|l| l.trim().strip_prefix(TRAILER))
        .filter_map(|rest| {
            let rest = rest.trim();
            let (rule, reason) = rest.split_once(char::is_whitespace)?;
            let reason = reason.trim();
            (!rule.is_empty() && !reason.is_empty()).then(|| Override {
                rule: rule.to_string(),
                reason: reason.chars().take(500).collect(),
            })
        })
        .take(MAX_OVERRIDES)
        .collect()
}

/// What became of an override trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct OverrideDecision {
    pub rule: String,
    pub reason: String,
    /// The commit's signer (who overrides).
    pub by: Option<String>,
    /// Accepted: the signer is an approver and the rule is overridable.
    pub accepted: bool,
    /// Why it was refused, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_because: Option<String>,
}

/// Every finding of a plan, with the overrides applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Verdict {
    /// What blocks the apply.
    pub denied: Vec<Finding>,
    /// Overridable denials an approver lifted.
    pub overridden: Vec<Finding>,
    /// Advisory findings.
    pub warnings: Vec<Finding>,
    pub overrides: Vec<OverrideDecision>,
}

impl Verdict {
    pub fn is_denied(&self) -> bool {
        !self.denied.is_empty()
    }

    /// Judges `findings`: `signer` is the commit's principal, `approvers` the operator's.
    pub fn judge(
        findings: Vec<Finding>,
        overrides: &[Override],
        signer: Option<&str>,
        approvers: &[String],
    ) -> Verdict {
        let approved = signer.is_some_and(|s| approvers.iter().any(|a| a == s));
        let mut v = Verdict::default();
        for o in overrides {
            let overridable = findings
                .iter()
                .any(|f| f.rule == o.rule && f.level == Level::Overridable);
            let mandatory = findings
                .iter()
                .any(|f| f.rule == o.rule && f.level == Level::Mandatory);
            let refused_because = if !approved {
                Some(format!(
                    "{} is not an approver in the operator's policies config",
                    signer.unwrap_or("an unsigned commit")
                ))
            } else if mandatory {
                Some(format!("{} is mandatory: it cannot be overridden", o.rule))
            } else if !overridable {
                Some(format!("{} denied nothing in this plan", o.rule))
            } else {
                None
            };
            v.overrides.push(OverrideDecision {
                rule: o.rule.clone(),
                reason: o.reason.clone(),
                by: signer.map(str::to_string),
                accepted: refused_because.is_none(),
                refused_because,
            });
        }
        for f in findings {
            let lifted = f.level == Level::Overridable
                && v.overrides.iter().any(|o| o.accepted && o.rule == f.rule);
            match f.level {
                Level::Advisory => v.warnings.push(f),
                _ if lifted => v.overridden.push(f),
                _ => v.denied.push(f),
            }
        }
        v
    }
}
