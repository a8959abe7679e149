//! Alert sinks: where the daemon tells people that a run failed, a signature was refused, or
//! drift was found. Configured in the daemon config as a list of [`Sink`]s:
//!
//! ```yaml
//! alerts:
//!   - kind: slack
//!     url: https://hooks.slack.com/services/T000/B000/XXXX
//!     events: [run_failed, drift_found]
//!   - kind: alertmanager
//!     url: http://alertmanager.internal:9093
//!   - kind: webhook
//!     url: https://ops.example.com/plumb
//!     timeout: 5s
//! ```
//!
//! - `webhook`: POST of the generic JSON document ([`webhook_payload`]);
//! - `slack`: an incoming-webhook message, `{"text", "blocks"}` ([`slack_payload`]);
//! - `alertmanager`: POST `<url>/api/v2/alerts` with one alert per host ([`alertmanager_payload`]).
//!
//! Sending never fails reconciliation: [`Alerter::send`] posts to every sink at once, each
//! bounded by its timeout, and logs failures; [`Alerter::spawn`] does it in the background.
//! Sink URLs may hold secrets (Slack's do): logs name only their scheme and host.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use reqwest::Url;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::model::HumanDuration;

pub mod lifecycle;

/// Most hosts named in a Slack message.
const SLACK_MAX_HOSTS: usize = 20;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A run failed: a host, a step or a health check (the rollout stopped).
    RunFailed,
    /// A commit without a good signature of an allowed signer, or a rollback, was refused.
    SignatureRefused,
    /// A drift check found hosts that differ from the applied commit.
    DriftFound,
    /// A failed wave's hosts were brought back to their last good commit.
    RolledBack,
    /// A host could not be observed during a drift check: whether it drifted is unknown.
    HostUnreachable,
    /// One of the environment's health checks failed on a host between deploys.
    HealthCheckFailed,
    /// A backup's latest snapshot or restore test is older than twice its interval, its
    /// restore test failed, or its repository is gone or unreachable.
    BackupFailed,
    /// A person applied with `plumb apply --break-glass "<reason>"`: the trust root's gate
    /// (signed, committed changes only) was bypassed. Sent once per such run.
    BreakGlass,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::RunFailed => "run_failed",
            AlertEvent::SignatureRefused => "signature_refused",
            AlertEvent::DriftFound => "drift_found",
            AlertEvent::RolledBack => "rolled_back",
            AlertEvent::HostUnreachable => "host_unreachable",
            AlertEvent::HealthCheckFailed => "health_check_failed",
            AlertEvent::BackupFailed => "backup_failed",
            AlertEvent::BreakGlass => "break_glass",
        }
    }
    /// Whether the alert tells of something that happened rather than a condition that holds:
    /// sent once, never active, never resolved.
    pub fn one_off(self) -> bool {
        matches!(self, AlertEvent::RolledBack | AlertEvent::BreakGlass)
    }
    /// Whether the alert is about one host (its identity then includes the host, and each
    /// host's alert fires and resolves on its own).
    pub fn per_host(self) -> bool {
        matches!(
            self,
            AlertEvent::DriftFound
                | AlertEvent::HostUnreachable
                | AlertEvent::HealthCheckFailed
                | AlertEvent::BackupFailed
        )
    }
    /// Alertmanager's `alertname`.
    pub fn alertname(self) -> &'static str {
        match self {
            AlertEvent::RunFailed => "PlumbRunFailed",
            AlertEvent::SignatureRefused => "PlumbSignatureRefused",
            AlertEvent::DriftFound => "PlumbDriftFound",
            AlertEvent::RolledBack => "PlumbRolledBack",
            AlertEvent::HostUnreachable => "PlumbHostUnreachable",
            AlertEvent::HealthCheckFailed => "PlumbHealthCheckFailed",
            AlertEvent::BackupFailed => "PlumbBackupFailed",
            AlertEvent::BreakGlass => "PlumbBreakGlass",
        }
    }
    pub fn severity(self) -> &'static str {
        match self {
            AlertEvent::RunFailed
            | AlertEvent::SignatureRefused
            | AlertEvent::HostUnreachable
            | AlertEvent::HealthCheckFailed
            | AlertEvent::BackupFailed
            | AlertEvent::BreakGlass => "critical",
            AlertEvent::DriftFound | AlertEvent::RolledBack => "warning",
        }
    }
    fn title(self) -> &'static str {
        match self {
            AlertEvent::RunFailed => "Run failed",
            AlertEvent::SignatureRefused => "Signature refused",
            AlertEvent::DriftFound => "Drift found",
            AlertEvent::RolledBack => "Rolled back",
            AlertEvent::HostUnreachable => "Host unreachable",
            AlertEvent::HealthCheckFailed => "Health check failed",
            AlertEvent::BackupFailed => "Backup failed",
            AlertEvent::BreakGlass => "Break glass",
        }
    }
}

/// Whether an alert is still true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    /// What the alert said is no longer true (drift corrected or gone, the host back, the
    /// check passing, a rollout converged).
    Resolved,
}

/// An alert's stable identity: the same condition is the same alert from the moment it
/// fires until it resolves, whatever its message says meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlertKey {
    pub event: AlertEvent,
    pub environment: Option<String>,
    /// The host, for per-host events ([`AlertEvent::per_host`]).
    pub host: Option<String>,
    /// What on the host (a health check's name).
    pub subject: Option<String>,
}

impl Ord for AlertEvent {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for AlertEvent {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for AlertKey {
    /// `event/environment/host/subject` (absent parts left out): the alert's `id`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.event.as_str())?;
        for part in [&self.environment, &self.host, &self.subject]
            .into_iter()
            .flatten()
        {
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub event: AlertEvent,
    /// `None` when the alert is about the whole repo (e.g. a refused commit).
    pub environment: Option<String>,
    pub commit: Option<String>,
    /// Hosts concerned (failed, drifted); may be empty.
    pub hosts: Vec<String>,
    /// One line, for humans.
    pub message: String,
    /// Anything structured: run id, failing steps, drifted resources...
    pub details: Value,
    pub time: OffsetDateTime,
    /// A link back to plumb (Alertmanager's `generatorURL`), e.g. the run in the API.
    pub link: Option<String>,
    /// The audit chain's head when the alert was raised, so every alert anchors the chain
    /// somewhere outside the plumb machine (`plumb audit verify --expect-head SEQ:HASH`).
    pub audit_head: Option<ChainHead>,
    /// Who signed `commit`, when known.
    pub signer: Option<String>,
    /// What on the host the alert is about (a health check's name); part of its identity.
    pub subject: Option<String>,
    pub status: AlertStatus,
    /// When Alertmanager should consider it over: in the future while firing (re-sent before
    /// then), the resolution time once resolved. `None`: not sent (one-off alerts).
    pub ends_at: Option<OffsetDateTime>,
}

/// The newest record of the audit chain: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl fmt::Display for ChainHead {
    /// `SEQ:HASH`, the form `plumb audit verify --expect-head` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl Alert {
    /// "Run failed in prod", "Signature refused", "Resolved: Drift found in prod on web-1".
    pub fn summary(&self) -> String {
        let mut s = match &self.environment {
            Some(e) => format!("{} in {e}", self.event.title()),
            None => self.event.title().to_string(),
        };
        if let (Some(h), true) = (self.hosts.first(), self.event.per_host()) {
            s.push_str(&format!(" on {h}"));
        }
        if self.status == AlertStatus::Resolved {
            s = format!("Resolved: {s}");
        }
        s
    }

    /// The alert's identity (see [`AlertKey`]).
    pub fn key(&self) -> AlertKey {
        AlertKey {
            event: self.event,
            environment: self.environment.clone(),
            host: self
                .event
                .per_host()
                .then(|| self.hosts.first().cloned())
                .flatten(),
            subject: self.subject.clone(),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The `webhook` sink's document.
pub fn webhook_payload(alert: &Alert) -> Value {
    json!({
        "id": alert.key().to_string(),
        "event": alert.event.as_str(),
        "status": alert.status,
        "environment": alert.environment,
        "commit": alert.commit,
        "signer": alert.signer,
        "hosts": alert.hosts,
        "check": alert.subject,
        "message": alert.message,
        "details": alert.details,
        "link": alert.link,
        "time": rfc3339(alert.time),
        "ends_at": alert.ends_at.map(rfc3339),
        "audit_head": alert.audit_head,
    })
}

/// Escapes Slack mrkdwn's control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The `slack` sink's message: a header, the message, and a context line.
pub fn slack_payload(alert: &Alert) -> Value {
    let summary = alert.summary();
    let mut context = Vec::new();
    if let Some(e) = &alert.environment {
        context.push(format!("*environment:* {}", slack_escape(e)));
    }
    if let Some(c) = &alert.commit {
        context.push(format!("*commit:* `{}`", slack_escape(c)));
    }
    if let Some(s) = &alert.signer {
        context.push(format!("*signed by:* {}", slack_escape(s)));
    }
    if let Some(c) = &alert.subject {
        context.push(format!("*check:* {}", slack_escape(c)));
    }
    if !alert.hosts.is_empty() {
        let mut hosts: Vec<_> = alert
            .hosts
            .iter()
            .take(SLACK_MAX_HOSTS)
            .map(|h| slack_escape(h))
            .collect();
        if alert.hosts.len() > SLACK_MAX_HOSTS {
            hosts.push(format!("and {} more", alert.hosts.len() - SLACK_MAX_HOSTS));
        }
        context.push(format!("*hosts:* {}", hosts.join(", ")));
    }
    context.push(format!("*time:* {}", rfc3339(alert.time)));
    if let Some(head) = &alert.audit_head {
        context.push(format!(
            "*audit head:* `{}`",
            slack_escape(&head.to_string())
        ));
    }
    let mut section = match alert.status {
        AlertStatus::Firing => slack_escape(&alert.message),
        AlertStatus::Resolved => format!("Resolved: {}", slack_escape(&alert.message)),
    };
    if let Some(link) = &alert.link {
        section.push_str(&format!("\n<{}|Details>", slack_escape(link)));
    }
    json!({
        "text": truncate(&format!("[plumb] {summary}: {}", alert.message), 3000),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": truncate(&format!("plumb: {summary}"), 150) } },
            { "type": "section", "text": { "type": "mrkdwn", "text": truncate(&section, 3000) } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": truncate(&context.join("  ·  "), 3000) } ] },
        ],
    })
}

/// The `alertmanager` sink's alerts: one per host (one without `host` when there is none).
pub fn alertmanager_payload(alert: &Alert) -> Value {
    let hosts: Vec<Option<&String>> = if alert.hosts.is_empty() {
        vec![None]
    } else {
        alert.hosts.iter().map(Some).collect()
    };
    let mut description = alert.message.clone();
    if let Some(c) = &alert.commit {
        description.push_str(&format!(" (commit {c})"));
    }
    let alerts: Vec<Value> = hosts
        .into_iter()
        .map(|host| {
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), alert.event.alertname().into());
            if let Some(e) = &alert.environment {
                labels.insert("environment".into(), e.clone().into());
            }
            if let Some(h) = host {
                labels.insert("host".into(), h.clone().into());
            }
            if let Some(c) = &alert.subject {
                labels.insert("check".into(), c.clone().into());
            }
            labels.insert("severity".into(), alert.event.severity().into());
            let mut a = json!({
                "labels": labels,
                "annotations": { "summary": alert.summary(), "description": description },
                "startsAt": rfc3339(alert.time),
            });
            if let (Some(link), Some(obj)) = (&alert.link, a.as_object_mut()) {
                obj.insert("generatorURL".into(), link.clone().into());
            }
            if let Some(head) = &alert.audit_head {
                a["annotations"]["audit_head"] = head.to_string().into();
            }
            if let Some(s) = &alert.signer {
                a["annotations"]["signer"] = s.clone().into();
            }
            if let Some(end) = alert.ends_at {
                a["endsAt"] = rfc3339(end).into();
            }
            a
        })
        .collect();
    Value::Array(alerts)
}

/// Kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// POST the generic JSON document.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// Alertmanager (API v2); `url` is its base URL.
    Alertmanager,
}

/// One alert sink, as configured in the daemon config.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    pub kind: SinkKind,
    /// Where to POST (http or https). For `alertmanager`, the base URL: plumb posts to
    /// `<url>/api/v2/alerts`.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Events sent to this sink. Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<AlertEvent>>,
    /// Bound on each POST, e.g. "10s".
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("kind", &self.kind)
            .field("url", &redacted(&self.url))
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `scheme://host[:port]/…`: what logs may show of a URL.
pub fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        Err(_) => "<invalid URL>".to_string(),
    }
}

/// Why an alert could not be delivered (or a sink is misconfigured). `code()` is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("invalid sink: {0}")]
    Config(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("the sink answered HTTP {0}")]
    Status(u16),
    /// An alert kept in the state (active across a restart) that cannot be read back.
    #[error("a stored alert cannot be read back: {0}")]
    Stored(String),
}

impl AlertError {
    pub fn code(&self) -> &'static str {
        match self {
            AlertError::Config(_) => "config",
            AlertError::Timeout(_) => "timeout",
            AlertError::Request(_) => "request",
            AlertError::Status(_) => "http_status",
            AlertError::Stored(_) => "stored",
        }
    }
}

impl Sink {
    /// Whether this sink wants this event.
    pub fn accepts(&self, event: AlertEvent) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event))
    }

    /// Checks the URL and the timeout; the daemon calls it when it loads its config.
    pub fn validate(&self) -> Result<(), AlertError> {
        self.endpoint()?;
        self.timeout_duration()?;
        Ok(())
    }

    pub fn timeout_duration(&self) -> Result<Duration, AlertError> {
        Some(self.timeout.get())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                AlertError::Config(format!("timeout {} must be longer than zero", self.timeout))
            })
    }

    /// The URL plumb posts to.
    pub fn endpoint(&self) -> Result<Url, AlertError> {
        let mut url = Url::parse(&self.url)
            .map_err(|e| AlertError::Config(format!("invalid url {}: {e}", redacted(&self.url))))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(AlertError::Config(format!(
                "url {} must be http or https",
                redacted(&self.url)
            )));
        }
        if self.kind == SinkKind::Alertmanager {
            let path = format!("{}/api/v2/alerts", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        Ok(url)
    }

    /// The JSON this sink posts for an alert.
    pub fn payload(&self, alert: &Alert) -> Value {
        match self.kind {
            SinkKind::Webhook => webhook_payload(alert),
            SinkKind::Slack => slack_payload(alert),
            SinkKind::Alertmanager => alertmanager_payload(alert),
        }
    }

    /// Posts an alert to this sink (whatever its event filter says).
    pub async fn post(&self, client: &reqwest::Client, alert: &Alert) -> Result<(), AlertError> {
        let url = self.endpoint()?;
        let timeout = self.timeout_duration()?;
        let resp = client
            .post(url)
            .timeout(timeout)
            .json(&self.payload(alert))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    AlertError::Timeout(timeout)
                } else {
                    // Without the URL: it may hold a secret.
                    AlertError::Request(crate::diag::error_chain(&e.without_url()))
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(AlertError::Status(status.as_u16()))
        }
    }
}

/// Which sinks an alert goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every sink that accepts the event.
    All,
    /// Only Alertmanager sinks: a re-send of an alert still firing (Alertmanager forgets an
    /// alert not re-sent before its `endsAt`; Slack and webhooks were told once).
    Resend,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Alertmanager => "alertmanager",
        }
    }
}

/// Sends alerts to the configured sinks.
#[derive(Debug, Clone)]
pub struct Alerter {
    sinks: Arc<[Sink]>,
    client: reqwest::Client,
}

impl Alerter {
    /// Checks every sink. An HTTP client is built once; it follows no redirects and uses the
    /// proxy from the environment (`HTTPS_PROXY`...), as reaching Slack often needs one.
    pub fn new(sinks: Vec<Sink>) -> Result<Alerter, AlertError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("plumb/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AlertError::Config(crate::diag::error_chain(&e)))?;
        Alerter::with_client(sinks, client)
    }

    /// Like [`Alerter::new`], with the caller's HTTP client.
    pub fn with_client(sinks: Vec<Sink>, client: reqwest::Client) -> Result<Alerter, AlertError> {
        for s in &sinks {
            s.validate()?;
        }
        Ok(Alerter {
            sinks: sinks.into(),
            client,
        })
    }

    pub fn sinks(&self) -> &[Sink] {
        &self.sinks
    }

    /// Posts an alert to every sink that accepts its event, all at once. Failures are logged
    /// and returned (one result per accepting sink, in config order); they never propagate.
    pub async fn send(&self, alert: &Alert) -> Vec<Result<(), AlertError>> {
        self.send_each(alert, Delivery::All)
            .await
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// Like [`Alerter::send`], to the sinks `delivery` selects, each result with its sink's kind.
    pub async fn send_each(
        &self,
        alert: &Alert,
        delivery: Delivery,
    ) -> Vec<(SinkKind, Result<(), AlertError>)> {
        let futs = self
            .sinks
            .iter()
            .filter(|s| s.accepts(alert.event))
            .filter(|s| delivery == Delivery::All || s.kind == SinkKind::Alertmanager)
            .map(|sink| async move {
                let res = sink.post(&self.client, alert).await;
                match &res {
                    Ok(()) => tracing::debug!(
                        event = alert.event.as_str(), sink = ?sink.kind, url = %redacted(&sink.url),
                        "alert sent"
                    ),
                    Err(e) => tracing::warn!(
                        event = alert.event.as_str(), sink = ?sink.kind, url = %redacted(&sink.url),
                        code = e.code(), error = %e, "alert not delivered"
                    ),
                }
                (sink.kind, res)
            });
        join_all(futs).await
    }

    /// Sends in the background: the caller never waits on a sink.
    pub fn spawn(&self, alert: Alert) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            this.send(&alert).await;
        })
    }
}

#[cfg(test)]
mod tests;
