//! `plumb history` report.

use schemars::JsonSchema;
use serde::Serialize;

use super::{RunKind, RunRecord, RunResult, Signer, Trigger};

/// One run in `plumb history`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryEntry {
    pub id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub environment: String,
    pub kind: RunKind,
    pub trigger: Trigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
    pub hosts: usize,
    pub failed_hosts: usize,
    /// Steps changed (apply, correction) or found drifted (drift check).
    pub changes: usize,
    /// Of `changes`, those that were drift rather than intended.
    pub drift: usize,
    /// `converged`, `failed`, `refused`, `no_change`, `drift_found`, `interrupted` (the daemon
    /// stopped mid-run), `running`.
    pub result: RunResult,
    /// Position in the audit chain, once finished and signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_seq: Option<i64>,
    pub summary: serde_json::Value,
}

/// `plumb history --output json`: runs, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryReport {
    pub runs: Vec<HistoryEntry>,
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

impl HistoryReport {
    pub fn new(runs: &[RunRecord]) -> HistoryReport {
        HistoryReport {
            runs: runs
                .iter()
                .map(|r| HistoryEntry {
                    id: r.id.0.clone(),
                    started_at: rfc3339(r.started_at),
                    finished_at: r.finished_at.map(rfc3339),
                    environment: r.environment.clone(),
                    kind: r.kind,
                    trigger: r.trigger,
                    commit: r.commit.clone(),
                    signer: r.signer.clone(),
                    hosts: r.hosts,
                    failed_hosts: r.failed_hosts,
                    changes: r.changes,
                    drift: r.drift,
                    result: r.result,
                    chain_seq: r.chain_seq,
                    summary: r.summary.clone(),
                })
                .collect(),
        }
    }

    /// A table: id, time, env, kind, commit, signer, hosts, result, changes.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<[String; 9]> = vec![[
            "ID".into(),
            "STARTED (UTC)".into(),
            "ENV".into(),
            "KIND".into(),
            "COMMIT".into(),
            "SIGNER".into(),
            "HOSTS".into(),
            "RESULT".into(),
            "CHANGES".into(),
        ]];
        for r in &self.runs {
            let hosts = if r.failed_hosts > 0 {
                format!("{} ({} failed)", r.hosts, r.failed_hosts)
            } else {
                r.hosts.to_string()
            };
            let changes = if r.drift > 0 {
                format!("{} ({} drift)", r.changes, r.drift)
            } else {
                r.changes.to_string()
            };
            rows.push([
                r.id.clone(),
                r.started_at
                    .get(..19)
                    .unwrap_or(&r.started_at)
                    .replace('T', " "),
                r.environment.clone(),
                r.kind.to_string(),
                r.commit
                    .as_deref()
                    .map(|c| c.get(..12).unwrap_or(c).to_string())
                    .unwrap_or_else(|| "-".into()),
                r.signer
                    .as_ref()
                    .map(|s| s.principal.clone())
                    .unwrap_or_else(|| "-".into()),
                hosts,
                r.result.to_string(),
                changes,
            ]);
        }
        let mut widths = [0usize; 9];
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        // Seals (issue 14): the commit that vouched for the history below it, and why.
        for r in &self.runs {
            let commits = r.summary.get("commits").and_then(|c| c.as_array());
            for c in commits.into_iter().flatten() {
                if let Some(seal) = c.get("seal") {
                    out.push_str(&format!(
                        "{}: sealed by {} at {}: {} (allowed by {})\n",
                        r.id,
                        c["signer"].as_str().unwrap_or("-"),
                        c["commit"]
                            .as_str()
                            .map_or("-", |s| s.get(..12).unwrap_or(s)),
                        seal["reason"].as_str().unwrap_or(""),
                        seal["sealer"].as_str().unwrap_or("-"),
                    ));
                }
            }
        }
        if self.runs.is_empty() {
            out.push_str("(no runs recorded)\n");
        }
        out
    }
}
