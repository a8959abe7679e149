//! `plumb history` report.

use schemars::JsonSchema;
use serde::Serialize;

use super::{DriftFinding, RunKind, RunRecord, RunResult, Signer, Trigger};

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
    /// Hosts pinned now by `plumb rollback` (of the environment asked for, or every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<super::Pin>,
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
            pins: Vec::new(),
        }
    }

    /// A table: id, time, env, kind, commit, signer, hosts, result, changes.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<Vec<String>> = vec![vec![
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
            rows.push(vec![
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
        let mut out = table(&rows);
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
        // Rollbacks (automatic, and a person's `plumb rollback`): from which commit to which,
        // who decided, and why.
        for r in &self.runs {
            if let Some(line) = rollback_line(r) {
                out.push_str(&line);
            }
        }
        if self.runs.is_empty() {
            out.push_str("(no runs recorded)\n");
        }
        for p in &self.pins {
            let short = |c: &str| c.get(..12).unwrap_or(c).to_string();
            out.push_str(&format!(
                "pinned: {} {} to {} since {} (until plumb unpin{})\n",
                p.environment,
                p.host,
                short(&p.commit),
                rfc3339(p.at)
                    .get(..19)
                    .unwrap_or_default()
                    .replace('T', " "),
                p.bad_commit
                    .as_deref()
                    .map(|b| format!(" or a commit newer than {}", short(b)))
                    .unwrap_or_default(),
            ));
        }
        out
    }
}

/// `ID: rolled back HOSTS from BAD to GOOD by WHO: WHY` for a `rollback` or `pin` run.
fn rollback_line(r: &HistoryEntry) -> Option<String> {
    let s = &r.summary;
    let text = |k: &str| s.get(k).and_then(|v| v.as_str());
    let short = |k: &str| text(k).map_or("-", |c| c.get(..12).unwrap_or(c));
    let (from, to, by) = match r.kind {
        RunKind::Rollback => {
            let wave = text("failed_wave")
                .map(|w| format!(" after wave `{w}` failed"))
                .unwrap_or_default();
            (
                short("rollback_of"),
                short("target"),
                format!("the daemon{wave}"),
            )
        }
        RunKind::Pin => (
            short("bad_commit"),
            short("pinned_to"),
            text("requested_by").unwrap_or("a person").to_string(),
        ),
        _ => return None,
    };
    let hosts: Vec<&str> = s
        .get("hosts")
        .and_then(|h| h.as_array())
        .map(|h| h.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    Some(format!(
        "{}: rolled back {} from {from} to {to} by {by}: {}\n",
        r.id,
        if hosts.is_empty() {
            "-".to_string()
        } else {
            hosts.join(", ")
        },
        text("reason").unwrap_or("-"),
    ))
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One CSV record (RFC 4180, CRLF-free: `\n` ends it). A cell holding a comma, quote or line
/// break is quoted; a text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab,
/// carriage return first) is prefixed with `'`, since commit authors and hosts control
/// some of these values.
pub fn csv_record(cells: &[String]) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let defused;
        let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            defused = format!("'{c}");
            &defused
        } else {
            c
        };
        if c.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&c.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(c);
        }
    }
    out.push('\n');
    out
}

fn opt(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl HistoryReport {
    /// The CSV header `--output csv` starts with; [`HistoryReport::to_csv`] follows it.
    pub const CSV_COLUMNS: [&'static str; 15] = [
        "id",
        "started_at",
        "finished_at",
        "environment",
        "kind",
        "trigger",
        "commit",
        "signer_principal",
        "signer_fingerprint",
        "hosts",
        "failed_hosts",
        "changes",
        "drift",
        "result",
        "chain_seq",
    ];

    /// `--output csv`: a header, then one record per run (the summary is left to JSON).
    pub fn to_csv(&self) -> String {
        let header: Vec<String> = Self::CSV_COLUMNS.iter().map(|c| c.to_string()).collect();
        let mut out = csv_record(&header);
        for r in &self.runs {
            out.push_str(&csv_record(&[
                r.id.clone(),
                r.started_at.clone(),
                opt(r.finished_at.as_ref()),
                r.environment.clone(),
                r.kind.to_string(),
                r.trigger.to_string(),
                opt(r.commit.as_ref()),
                opt(r.signer.as_ref().map(|s| &s.principal)),
                opt(r.signer.as_ref().map(|s| &s.fingerprint)),
                r.hosts.to_string(),
                r.failed_hosts.to_string(),
                r.changes.to_string(),
                r.drift.to_string(),
                r.result.to_string(),
                opt(r.chain_seq),
            ]));
        }
        out
    }

    /// `--output jsonl`: one [`HistoryEntry`] per line.
    pub fn to_jsonl(&self) -> Result<String, serde_json::Error> {
        jsonl(&self.runs)
    }
}

fn jsonl<T: Serialize>(items: &[T]) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for i in items {
        out.push_str(&serde_json::to_string(i)?);
        out.push('\n');
    }
    Ok(out)
}

/// `plumb drift-history --output json`: drift findings, open and resolved, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DriftHistoryReport {
    pub drift: Vec<DriftFinding>,
}

impl DriftHistoryReport {
    pub const CSV_COLUMNS: [&'static str; 11] = [
        "id",
        "environment",
        "host",
        "address",
        "change",
        "fields",
        "first_seen",
        "last_seen",
        "resolved_at",
        "first_run_id",
        "resolved_run_id",
    ];

    fn fields(f: &DriftFinding) -> String {
        let names: Vec<&str> = f.fields.iter().map(|c| c.field.as_str()).collect();
        names.join(" ")
    }

    /// A table: host, resource, change, fields, first seen, resolved.
    pub fn to_text(&self) -> String {
        let day = |ms: i64| rfc3339(ms).get(..19).unwrap_or_default().replace('T', " ");
        let mut rows = vec![[
            "ENV",
            "HOST",
            "RESOURCE",
            "CHANGE",
            "FIELDS",
            "FIRST SEEN (UTC)",
            "RESOLVED (UTC)",
        ]
        .map(String::from)
        .to_vec()];
        for f in &self.drift {
            rows.push(vec![
                f.environment.clone(),
                f.host.clone(),
                f.address.clone(),
                f.change.to_string(),
                Self::fields(f),
                day(f.first_seen),
                f.resolved_at.map(day).unwrap_or_else(|| "open".into()),
            ]);
        }
        let mut out = table(&rows);
        if self.drift.is_empty() {
            out.push_str("(no drift recorded)\n");
        }
        out
    }

    /// `--output csv`: a header, then one record per finding (times RFC 3339).
    pub fn to_csv(&self) -> String {
        let header: Vec<String> = Self::CSV_COLUMNS.iter().map(|c| c.to_string()).collect();
        let mut out = csv_record(&header);
        for f in &self.drift {
            out.push_str(&csv_record(&[
                f.id.to_string(),
                f.environment.clone(),
                f.host.clone(),
                f.address.clone(),
                f.change.to_string(),
                Self::fields(f),
                rfc3339(f.first_seen),
                rfc3339(f.last_seen),
                opt(f.resolved_at.map(rfc3339)),
                opt(f.first_run_id.as_ref()),
                opt(f.resolved_run_id.as_ref()),
            ]));
        }
        out
    }

    /// `--output jsonl`: one finding per line.
    pub fn to_jsonl(&self) -> Result<String, serde_json::Error> {
        jsonl(&self.drift)
    }
}

#[cfg(test)]
mod csv_tests {
    use super::csv_record;

    fn rec(cells: &[&str]) -> String {
        csv_record(&cells.iter().map(|c| c.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_defuses_formulas() {
        assert_eq!(rec(&["a", "b c", ""]), "a,b c,\n");
        assert_eq!(rec(&["a,b", "say \"hi\""]), "\"a,b\",\"say \"\"hi\"\"\"\n");
        assert_eq!(rec(&["line\nbreak"]), "\"line\nbreak\"\n");
        assert_eq!(
            rec(&["=HYPERLINK(1)", "@x", "-1"]),
            "'=HYPERLINK(1),'@x,'-1\n"
        );
    }

    proptest::proptest! {
        /// Every record is one CSV record: unquoting gives back the cells' text.
        #[test]
        fn csv_records_round_trip(cells in proptest::collection::vec("[a-z,\" \n]{0,8}", 1..5)) {
            let line = csv_record(&cells);
            let mut got = vec![String::new()];
            let (mut quoted, mut chars) = (false, line.chars().peekable());
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (false, '"') => quoted = true,
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        got.last_mut().unwrap().push('"');
                    }
                    (true, '"') => quoted = false,
                    (false, ',') => got.push(String::new()),
                    (false, '\n') => break,
                    (_, c) => got.last_mut().unwrap().push(c),
                }
            }
            proptest::prop_assert_eq!(got, cells);
        }
    }
}
