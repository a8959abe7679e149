//! The web console's pages, rendered from the state database with maud (every value escaped
//! by the template engine). Sensitive steps are redacted before they are stored, so a page
//! can only show what the state keeps: exactly what the reports show.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use time::OffsetDateTime;

use crate::server::{ConsoleSource, Page, Principal, StatusError};
use crate::state::console::{HostLatest, PageAt, RunsPage};
use crate::state::{DriftFilter, DriftFinding, DriftState, HostRecord, RunId, RunRecord, StateDb};

use super::lock_any;

/// Rows per page of a list.
pub const PAGE_SIZE: usize = 50;

/// Each environment's hosts and their labels, as of its last rollout or drift check.
pub type Inventory = Arc<Mutex<BTreeMap<String, Vec<(String, BTreeMap<String, String>)>>>>;

/// The console's view of the daemon: a read handle on the state and the inventory.
pub struct ConsoleState {
    pub db: Arc<Mutex<StateDb>>,
    pub environments: Vec<String>,
    pub inventory: Inventory,
}

fn internal(e: impl std::fmt::Display) -> StatusError {
    StatusError::Internal(e.to_string())
}

impl ConsoleSource for ConsoleState {
    fn page(&self, page: &Page, who: &Principal) -> Result<Option<String>, StatusError> {
        let now = OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let db = lock_any(&self.db);
        let body = match page {
            Page::Fleet { label } => Some(self.fleet(&db, label.as_ref(), now)?),
            Page::Environment { name, at } => self.environment(&db, name, at, now)?,
            Page::Run { id } => run_page(&db, id, now)?,
            Page::Host { env, name, at } => self.host(&db, env, name, at, now)?,
            Page::Drift { env } => Some(drift_page(&db, env.as_deref(), now)?),
            Page::Commit { id } => commit_page(&db, id, now)?,
            Page::Audit => Some(audit_page(&db, now)?),
        };
        Ok(body.map(|(title, refresh, main)| layout(&title, refresh, who, main).into_string()))
    }

    fn login(&self, next: &str, failed: bool) -> String {
        let main = html! {
            h1 { "Sign in" }
            @if failed { p.error role="alert" { "Wrong user, password or token." } }
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="user" { "User" }
                input id="user" name="user" autocomplete="username";
                label for="password" { "Password (or the access token, with no user)" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        };
        layout("Sign in", false, &Principal::Anonymous, main).into_string()
    }
}

type Rendered = (String, bool, Markup);

fn layout(title: &str, refresh: bool, who: &Principal, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · plumb" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body data-refresh[refresh] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "plumb" }
                    nav aria-label="Main" {
                        ul {
                            li { a href="/" { "Fleet" } }
                            li { a href="/drift" { "Drift" } }
                            li { a href="/audit" { "Audit" } }
                        }
                    }
                    @match who {
                        Principal::User(u) => { span.muted { "Signed in as " (u) } (logout()) }
                        Principal::Token => { span.muted { "Signed in with the token" } (logout()) }
                        Principal::Anonymous => {}
                    }
                }
                main id="main" { (main) }
            }
        }
    }
}

fn logout() -> Markup {
    html! { form method="post" action="/logout" { button type="submit" { "Sign out" } } }
}

/// `2026-11-30 09:41:07 UTC` and `5 min ago`, in a `<time>` element.
fn when(ms: i64, now: i64) -> Markup {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return html! { "?" };
    };
    let iso = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let abs = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    html! { time datetime=(iso) title=(abs) { (ago(now - ms)) } " " span.muted { "(" (abs) ")" } }
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn commit_link(commit: Option<&str>) -> Markup {
    match commit {
        Some(c) => html! { a.mono href={ "/commits/" (c) } { (short(c)) } },
        None => html! { span.muted { "—" } },
    }
}

fn run_link(id: &RunId) -> Markup {
    html! { a.mono href={ "/runs/" (id.0) } { (id.0) } }
}

fn host_link(env: &str, host: &str) -> Markup {
    html! { a href={ "/hosts/" (env) "/" (host) } { (host) } }
}

/// A status word with its colour class (text says it too: colour is never the only cue).
fn status(word: &str) -> Markup {
    let class = match word {
        "converged" | "in_sync" | "no_change" | "ok" | "applied" => "ok",
        "drifted" | "drift_found" | "running" | "interrupted" | "orphaned" => "warn",
        _ => "bad",
    };
    html! { span class={ "status " (class) } { (word.replace('_', " ")) } }
}

fn signer(run: &RunRecord) -> Markup {
    match &run.signer {
        Some(s) => html! { span title=(s.fingerprint) { (s.principal) } },
        None => html! { span.muted { "—" } },
    }
}

fn runs_table(runs: &[RunRecord], now: i64) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th { "Run" } th { "Environment" } th { "Kind" } th { "Result" } th { "Commit" } th { "Signer" } th { "Changes" } th { "Started" } } }
            tbody { @for r in runs { tr {
                td { (run_link(&r.id)) }
                td { a href={ "/environments/" (r.environment) } { (r.environment) } }
                td { (r.kind.to_string().replace('_', " ")) }
                td { (status(&r.result.to_string())) }
                td { (commit_link(r.commit.as_deref())) }
                td { (signer(r)) }
                td { (r.changes) }
                td { (when(r.started_at, now)) }
            } } }
        } }
    }
}

impl ConsoleState {
    fn labels(&self, env: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        lock_any(&self.inventory)
            .get(env)
            .map(|hosts| hosts.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn fleet(
        &self,
        db: &StateDb,
        label: Option<&(String, String)>,
        now: i64,
    ) -> Result<Rendered, StatusError> {
        let mut sections = Vec::new();
        for env in &self.environments {
            let applied = db.last_applied(env).map_err(internal)?;
            let applied_run = match applied.as_ref().and_then(|a| a.run_id.clone()) {
                Some(id) => db.run_record(&id).map_err(internal)?,
                None => None,
            };
            let latest: BTreeMap<String, HostLatest> = db
                .latest_host_results(env)
                .map_err(internal)?
                .into_iter()
                .map(|h| (h.host.clone(), h))
                .collect();
            let mut open: BTreeMap<String, usize> = BTreeMap::new();
            for d in db.open_drift(env).map_err(internal)? {
                *open.entry(d.host).or_default() += 1;
            }
            let labels = self.labels(env);
            let mut names: BTreeSet<String> = labels.keys().cloned().collect();
            names.extend(latest.keys().cloned());
            let rows: Vec<(String, Option<&HostLatest>, usize)> = names
                .into_iter()
                .filter(|n| {
                    label.is_none_or(|(k, v)| {
                        labels.get(n).and_then(|l| l.get(k)).is_some_and(|x| x == v)
                    })
                })
                .map(|n| {
                    let drift = open.get(&n).copied().unwrap_or(0);
                    let l = latest.get(&n);
                    (n, l, drift)
                })
                .collect();
            sections.push(fleet_section(
                env,
                applied_run.as_ref(),
                &rows,
                &labels,
                now,
            ));
        }
        let filter = label.map(|(k, v)| format!("{k}={v}")).unwrap_or_default();
        let main = html! {
            h1 { "Fleet" }
            form method="get" action="/" {
                label for="label" { "Filter by label " }
                input id="label" name="label" placeholder="role=web" value=(filter);
                " " button type="submit" { "Filter" }
            }
            @for s in sections { (s) }
        };
        Ok(("Fleet".into(), true, main))
    }

    fn environment(
        &self,
        db: &StateDb,
        name: &str,
        at: &PageAt,
        now: i64,
    ) -> Result<Option<Rendered>, StatusError> {
        if !self.environments.iter().any(|e| e == name) {
            return Ok(None);
        }
        let applied = db.last_applied(name).map_err(internal)?;
        let last_apply = db
            .latest_run(name, crate::state::RunKind::Apply)
            .map_err(internal)?;
        let runs = db.runs_page(name, at, PAGE_SIZE).map_err(internal)?;
        let main = html! {
            h1 { "Environment " (name) }
            p { "Last applied: " (commit_link(applied.as_ref().map(|a| a.commit.as_str())))
                @if let Some(a) = &applied { " · " (when(a.applied_at, now)) } }
            @if let Some(r) = &last_apply { (rollout_view(r, now)) }
            h2 { "Runs" }
            (runs_table(&runs.items, now))
            (pager(&format!("/environments/{name}"), &runs, |r| &r.id))
        };
        Ok(Some((format!("Environment {name}"), true, main)))
    }

    fn host(
        &self,
        db: &StateDb,
        env: &str,
        name: &str,
        at: &PageAt,
        now: i64,
    ) -> Result<Option<Rendered>, StatusError> {
        let runs = db.host_runs(env, name, at, PAGE_SIZE).map_err(internal)?;
        let labels = self.labels(env).remove(name);
        if runs.items.is_empty() && labels.is_none() && *at == PageAt::Newest {
            return Ok(None);
        }
        let drift = db
            .drift_history(&drift_filter(
                Some(env),
                Some(name),
                DriftState::All,
                PAGE_SIZE,
            ))
            .map_err(internal)?;
        let main = html! {
            h1 { "Host " (name) }
            p { "Environment " a href={ "/environments/" (env) } { (env) }
                @if let Some(l) = &labels { @for (k, v) in l { " " span.status { (k) "=" (v) } } } }
            h2 { "Drift" }
            (drift_table(&drift, now))
            h2 { "History" }
            div.scroll { table {
                thead { tr { th { "Run" } th { "Kind" } th { "This host" } th { "Changed" } th { "Commit" } th { "Signer" } th { "Started" } th { "Error" } } }
                tbody { @for h in &runs.items { tr {
                    td { (run_link(&h.run.id)) }
                    td { (h.run.kind.to_string().replace('_', " ")) }
                    td { (status(&h.status.to_string())) }
                    td { (h.changed) }
                    td { (commit_link(h.run.commit.as_deref())) }
                    td { (signer(&h.run)) }
                    td { (when(h.run.started_at, now)) }
                    td { @if let Some(e) = &h.error { code { (e) } } }
                } } }
            } }
            (pager(&format!("/hosts/{env}/{name}"), &runs, |h| &h.run.id))
        };
        Ok(Some((format!("Host {name}"), true, main)))
    }
}

fn fleet_section(
    env: &str,
    applied: Option<&RunRecord>,
    rows: &[(String, Option<&HostLatest>, usize)],
    labels: &BTreeMap<String, BTreeMap<String, String>>,
    now: i64,
) -> Markup {
    html! {
        section aria-labelledby={ "env-" (env) } {
            h2 id={ "env-" (env) } { a href={ "/environments/" (env) } { (env) } }
            p {
                "Last applied: "
                @match applied {
                    Some(r) => { (commit_link(r.commit.as_deref())) " by " (signer(r)) " · " (when(r.started_at, now)) }
                    None => { span.muted { "nothing yet" } }
                }
            }
            div.scroll { table {
                thead { tr { th { "Host" } th { "State" } th { "Open drift" } th { "Labels" } th { "Last seen" } th { "Error" } } }
                tbody { @for (name, latest, drift) in rows { tr {
                    td { (host_link(env, name)) }
                    td { (status(&host_state(*latest, *drift))) }
                    td { (drift) }
                    td { @if let Some(l) = labels.get(name) { @for (k, v) in l { span.status { (k) "=" (v) } " " } } }
                    td { @if let Some(l) = latest { a href={ "/runs/" (l.run.0) } { (when(l.at, now)) } } @else { span.muted { "never" } } }
                    td { @if let Some(e) = latest.and_then(|l| l.error.as_deref()) { code { (e) } } }
                } } }
            } }
        }
    }
}

/// in sync / drifted / failed / unreachable / unknown, from the newest result and open drift.
fn host_state(latest: Option<&HostLatest>, open_drift: usize) -> String {
    use crate::state::HostResultStatus as S;
    match latest.map(|l| l.status) {
        None => "unknown".into(),
        Some(S::Unreachable) => "unreachable".into(),
        Some(S::Unknown) => "unknown".into(),
        Some(S::Failed) => "failed".into(),
        Some(S::NotReached) => "not_reached".into(),
        Some(S::Unhealthy) => "unhealthy".into(),
        Some(_) if open_drift > 0 => "drifted".into(),
        Some(S::Drifted) => "drifted".into(),
        Some(S::Converged | S::InSync) => "in_sync".into(),
    }
}

/// Links to the newer and older pages: each carries the run it continues from (keyset
/// pagination: a page costs the same however deep it is).
fn pager<T>(base: &str, page: &RunsPage<T>, id: impl Fn(&T) -> &RunId) -> Markup {
    let first = page.items.first().map(&id);
    let last = page.items.last().map(&id);
    html! {
        nav.pager aria-label="Pages" {
            @if page.newer {
                a href=(base) { "⇤ Newest" } " "
                @if let Some(f) = first { a href={ (base) "?after=" (f.0) } rel="prev" { "← Newer" } " " }
            }
            @if let (true, Some(l)) = (page.older, last) { a href={ (base) "?before=" (l.0) } rel="next" { "Older →" } }
        }
    }
}

/// The waves of an apply run and their health checks, from its stored summary.
fn rollout_view(run: &RunRecord, now: i64) -> Markup {
    let waves = run.summary["waves"].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    html! {
        h2 { "Latest rollout " (run_link(&run.id)) }
        p { (status(&run.result.to_string())) " · commit " (commit_link(run.commit.as_deref())) " by " (signer(run)) " · " (when(run.started_at, now)) }
        @if let Some(reason) = run.summary["reason"].as_str() { p.error { (reason) } }
        div.cards { @for w in &waves { div.card {
            h3 { "Wave " (text(&w["name"])) }
            p { "Hosts: " @for h in w["hosts"].as_array().into_iter().flatten() { (host_link(&run.environment, &text(h))) " " } }
            @let failed = w["failed_hosts"].as_array().map(Vec::len).unwrap_or(0);
            @if failed > 0 { p.error { (failed) " host(s) failed" } }
            @if let Some(checks) = w["health"].as_array() {
                ul { @for c in checks { li {
                    (status(if c["ok"] == Value::Bool(true) { "ok" } else { "failed" })) " "
                    (text(&c["check"])) " on " (text(&c["host"]))
                    @if let Some(e) = c["error"].as_str() { " — " code { (e) } }
                } } }
            }
        } } }
    }
}

fn run_page(db: &StateDb, id: &str, now: i64) -> Result<Option<Rendered>, StatusError> {
    let Some(detail) = db.run(&RunId(id.to_string())).map_err(internal)? else {
        return Ok(None);
    };
    let r = &detail.run;
    let main = html! {
        h1 { "Run " span.mono { (r.id.0) } }
        div.scroll { table { tbody {
            tr { th scope="row" { "Environment" } td { a href={ "/environments/" (r.environment) } { (r.environment) } } }
            tr { th scope="row" { "Kind" } td { (r.kind.to_string().replace('_', " ")) } }
            tr { th scope="row" { "Trigger" } td { (r.trigger.to_string()) } }
            tr { th scope="row" { "Result" } td { (status(&r.result.to_string())) } }
            tr { th scope="row" { "Commit" } td { (commit_link(r.commit.as_deref())) } }
            tr { th scope="row" { "Signer" } td { (signer(r)) @if let Some(s) = &r.signer { " " span.mono.muted { (s.fingerprint) } } } }
            tr { th scope="row" { "Started" } td { (when(r.started_at, now)) } }
            tr { th scope="row" { "Finished" } td { @if let Some(f) = r.finished_at { (when(f, now)) " (" ((f - r.started_at) as f64 / 1000.0) " s)" } } }
            tr { th scope="row" { "Audit record" } td { @if let Some(seq) = r.chain_seq { "#" (seq) " " span.mono.muted { (r.hash.as_deref().unwrap_or_default()) } } } }
        } } }
        @if let Some(m) = r.summary["message"].as_str() { p { (m) } }
        @if let Some(reason) = r.summary["reason"].as_str() { p.error { "Reason: " (reason) } }
        @if let Some(errors) = r.summary["errors"].as_array() { ul { @for e in errors { li { code { (e.as_str().unwrap_or_default()) } } } } }
        @if r.kind == crate::state::RunKind::Apply { (rollout_view(r, now)) }
        @for h in &detail.hosts { (host_result(&r.environment, h)) }
    };
    Ok(Some((
        format!("Run {}", r.id.0),
        r.finished_at.is_none(),
        main,
    )))
}

fn host_result(env: &str, h: &HostRecord) -> Markup {
    html! {
        section aria-label={ "Host " (h.host) } {
            h2 { (host_link(env, &h.host)) " " (status(&h.status.to_string())) }
            p.muted { (h.changed) " changed · " (h.in_sync) " in sync · " (h.duration_ms) " ms · round trips " code { (h.round_trips.to_string()) } }
            @if let Some(e) = &h.error { pre { (e) } }
            @if !h.steps.is_empty() { div.scroll { table {
                thead { tr { th { "Step" } th { "Module" } th { "Status" } th { "Change" } th { "Fields" } th { "ms" } } }
                tbody { @for s in &h.steps { tr {
                    td.mono { (s.address) }
                    td { (s.module) }
                    td { (status(&s.status.to_string())) @if s.drift { " " span.status.warn { "drift" } } }
                    td { @if let Some(c) = s.change { (c.to_string()) } }
                    td { @for f in &s.fields { div { b { (f.field.to_string()) } ": "
                        @if let Some(from) = &f.from { span.diff-del { "− " (from) } " " }
                        @if let Some(to) = &f.to { span.diff-add { "+ " (to) } } } }
                        @if let Some(e) = &s.error { pre { (e) } } }
                    td { (s.duration_ms) }
                } } }
            } } }
        }
    }
}

fn drift_table(findings: &[DriftFinding], now: i64) -> Markup {
    html! {
        @if findings.is_empty() { p.muted { "No drift recorded." } } @else {
        div.scroll { table {
            thead { tr { th { "Host" } th { "Resource" } th { "Change" } th { "What differs" } th { "Since" } th { "Resolved" } } }
            tbody { @for d in findings { tr {
                td { (host_link(&d.environment, &d.host)) }
                td.mono { (d.address) }
                td { (d.change.to_string()) }
                td { @for f in &d.fields { div { b { (f.field.to_string()) } ": "
                    @if let Some(from) = &f.from { span.diff-del { "− " (from) } " " }
                    @if let Some(to) = &f.to { span.diff-add { "+ " (to) } } } } }
                td { (when(d.first_seen, now)) }
                td { @match d.resolved_at { Some(t) => { (status("ok")) " " (when(t, now)) }, None => { (status("open")) } } }
            } } }
        } } }
    }
}

/// The newest `limit` drift findings (by first seen) of an environment and host, when given.
fn drift_filter(
    env: Option<&str>,
    host: Option<&str>,
    status: DriftState,
    limit: usize,
) -> DriftFilter {
    DriftFilter {
        environment: env.map(str::to_string),
        host: host.map(str::to_string),
        status,
        since: None,
        until: None,
        limit: Some(limit),
    }
}

fn drift_page(db: &StateDb, env: Option<&str>, now: i64) -> Result<Rendered, StatusError> {
    let open = db
        .drift_history(&drift_filter(env, None, DriftState::Open, PAGE_SIZE * 4))
        .map_err(internal)?;
    let resolved = db
        .drift_history(&drift_filter(env, None, DriftState::Resolved, PAGE_SIZE))
        .map_err(internal)?;
    let main = html! {
        h1 { "Drift" @if let Some(e) = env { " in " (e) } }
        h2 { "Open (" (open.len()) ")" }
        (drift_table(&open, now))
        h2 { "Recently resolved" }
        (drift_table(&resolved, now))
    };
    Ok(("Drift".into(), true, main))
}

fn commit_page(db: &StateDb, id: &str, now: i64) -> Result<Option<Rendered>, StatusError> {
    if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let runs = db.commit_runs(id, PAGE_SIZE).map_err(internal)?;
    if runs.is_empty() {
        return Ok(None);
    }
    let reached = db.commit_hosts(id, PAGE_SIZE).map_err(internal)?;
    let main = html! {
        h1 { "Commit " span.mono { (short(id)) } }
        p.mono.muted { (runs[0].commit.as_deref().unwrap_or(id)) }
        @if let Some(r) = runs.first() { p { "Signed by " (signer(r)) } }
        h2 { "Hosts it reached" }
        div.scroll { table {
            thead { tr { th { "Environment" } th { "Host" } th { "Latest result" } th { "Run" } } }
            tbody { @for h in &reached { tr {
                td { (h.environment) } td { (host_link(&h.environment, &h.host)) } td { (status(&h.status.to_string())) } td { (run_link(&h.run)) }
            } } }
        } }
        h2 { "Runs" }
        (runs_table(&runs, now))
    };
    Ok(Some((format!("Commit {}", short(id)), false, main)))
}

/// The chain's status as the daemon keeps it: verified in full at start-up, then each new
/// record as it was written ([`StateDb::chain_status`]): a render reads the new records only.
fn audit_page(db: &StateDb, now: i64) -> Result<Rendered, StatusError> {
    let chain = db.chain_status().map_err(internal)?;
    let main = html! {
        h1 { "Audit trail" }
        @match &chain {
            None => { p.muted { "No audit key: this state has no signed records yet." } }
            Some(s) => {
                @let r = &s.report;
                p { "Chain: " @if r.ok { (status("ok")) } @else { (status("broken")) } " · " (r.records) " records verified" }
                p.muted { "The whole chain was verified " (when(s.full_at, now)) "; "
                    (s.since_full) " records written since were verified as they came; last checked " (when(s.checked_at, now)) "." }
                p { "Head: " @if let (Some(seq), Some(h)) = (r.head_seq, &r.head) { code { (seq) ":" (h) } } }
                p { "Key: " code { (r.key_fingerprint) } }
                @if let Some(b) = &r.broken { p.error { "First broken record: #" (b.seq) " (" (run_link(&RunId(b.run_id.clone()))) "): " (b.reason) } }
                @if let Some(e) = &r.anchor_error { p.error { (e) } }
                p.muted { "Check it all again offline: " code { "plumb audit verify --state DIR --public-key daemon.pub --expect-head SEQ:HASH" } }
            }
        }
    };
    Ok(("Audit".into(), false, main))
}
