//! The `plumb verify` report (`--output json`; schema `schemas/output/verify.schema.json`).

use std::fmt::Write as _;

use git2::Oid;
use serde::Serialize;

use super::policy::{short, Rejection, Seal, VerifiedRange};
use super::signature::{Reason, Signer};

/// Gives the text of a trust-root entry from its `FILE:LINE` (for `--explain`).
pub type EntryText<'a> = &'a dyn Fn(&str) -> Option<String>;

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
    /// Set on a `Plumb-Seal:` commit that ended verification: the history below it is
    /// vouched for by the sealer and was not verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FailureReport {
    pub id: String,
    pub short: String,
    pub subject: String,
    /// Stable code: unsigned, unknown-key, not-ssh-or-openpgp, bad-signature, expired,
    /// revoked, not-yet-valid, namespace-not-allowed, not-descendant, seal-not-allowed.
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
                    seal: c.seal,
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

    /// Plain text: one line per verified commit; the failure last. With `explain`, each
    /// commit also gets its format, key, and the trust-root entry that admitted it
    /// (`entry_text` gives that line's text from `FILE:LINE`, when readable).
    pub fn to_text_with(&self, explain: Option<EntryText<'_>>) -> String {
        let mut out = String::new();
        for c in &self.commits {
            let _ = writeln!(
                out,
                "{} {}  signed by {} ({} {})",
                c.short, c.subject, c.signer.principal, c.signer.key_type, c.signer.fingerprint
            );
            if let Some(seal) = &c.seal {
                let _ = writeln!(
                    out,
                    "  seal ({}): {:?}; allowed by {}; the history below it was not verified",
                    c.short, seal.reason, seal.sealer
                );
            }
            if let Some(entry_text) = explain {
                let s = &c.signer;
                let fmt = match s.format {
                    super::SignatureFormat::Ssh => "ssh",
                    super::SignatureFormat::Openpgp => "openpgp",
                };
                let _ = writeln!(out, "  format: {fmt}");
                let _ = writeln!(out, "  key: {} {}", s.key_type, s.fingerprint);
                if let Some(sub) = &s.signing_key {
                    let _ = writeln!(out, "  signing subkey: {sub}");
                }
                let _ = writeln!(out, "  admitted by: {}", s.trust_root);
                if let Some(line) = entry_text(&s.trust_root) {
                    let _ = writeln!(out, "    {line}");
                }
            }
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

    /// Plain text without `--explain`.
    pub fn to_text(&self) -> String {
        self.to_text_with(None)
    }
}
