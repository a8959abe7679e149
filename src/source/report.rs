//! The `plumb verify` report (`--output json`; schema `schemas/output/verify.schema.json`).

use std::fmt::Write as _;

use git2::Oid;
use serde::Serialize;

use super::policy::{short, Rejection, VerifiedRange};
use super::signature::{Reason, Signer};

/// Result of `plumb verify`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VerifyReport {
    /// True when every commit verified (exit 0).
    pub ok: bool,
    /// The `--from` commit (full id), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The verified revision (full id).
    pub tip: String,
    /// The commits that verified, oldest first (empty on failure).
    pub commits: Vec<VerifiedCommitReport>,
    /// The first bad commit, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureReport>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VerifiedCommitReport {
    pub id: String,
    pub short: String,
    /// First line of the commit message.
    pub subject: String,
    pub signer: Signer,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FailureReport {
    pub id: String,
    pub short: String,
    pub subject: String,
    /// Stable code: unsigned, unknown-key, bad-signature, not-yet-valid, expired,
    /// namespace-not-allowed, not-descendant.
    pub reason: Reason,
    /// What is wrong and what to do.
    pub message: String,
    /// Specifics (key fingerprint, allowed-signers line, ...).
    pub detail: String,
}

impl VerifyReport {
    pub fn new(from: Option<Oid>, tip: Oid, outcome: Result<VerifiedRange, Rejection>) -> Self {
        let (commits, failure) = match outcome {
            Ok(range) => (range.commits, None),
            Err(r) => (Vec::new(), Some(r)),
        };
        VerifyReport {
            ok: failure.is_none(),
            from: from.map(|f| f.to_string()),
            tip: tip.to_string(),
            commits: commits
                .into_iter()
                .map(|c| VerifiedCommitReport {
                    id: c.id.to_string(),
                    short: short(c.id),
                    subject: c.summary,
                    signer: c.signer,
                })
                .collect(),
            failure: failure.map(|r| FailureReport {
                id: r.commit.to_string(),
                short: short(r.commit),
                subject: r.summary,
                reason: r.failure.reason,
                message: r.failure.reason.to_string(),
                detail: r.failure.detail,
            }),
        }
    }

    /// Plain text: one line per verified commit; the failure last.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.commits {
            let _ = writeln!(
                out,
                "{} {}  signed by {} ({} {})",
                c.short, c.subject, c.signer.principal, c.signer.key_type, c.signer.fingerprint
            );
        }
        match &self.failure {
            None => {
                let _ = writeln!(out, "ok: {} commit(s) verified", self.commits.len());
            }
            Some(f) => {
                let _ = writeln!(
                    out,
                    "commit {} {:?}: {}: {}",
                    f.short,
                    f.subject,
                    f.reason.code(),
                    f.message
                );
                if !f.detail.is_empty() {
                    let _ = writeln!(out, "  {}", f.detail);
                }
            }
        }
        out
    }
}
