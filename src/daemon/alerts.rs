//! The daemon's side of the alert lifecycle ([`crate::alert::lifecycle`]): every alert gets a
//! link (the console page of its run or host under `external_url`), the audit head, and an
//! identity; alerts that describe a condition (drift on a host, a host unreachable, a health
//! check failing, a rollout failed or a commit refused) stay active until the condition is
//! gone and are then resolved; active alerts are re-sent to Alertmanager every
//! `alert_resend_interval`. Sending is in the background; a sink that fails is counted
//! (`plumb_alert_delivery_failures_total{sink}`) and logged, never more.

use serde_json::Value;
use time::OffsetDateTime;

use crate::alert::{Alert, AlertEvent, AlertKey, AlertStatus, Delivery};

use super::{audit_tail, lock, lock_any, Daemon};

impl Daemon {
    /// The base URL alerts link to: `external_url`, else the daemon's own listen address.
    pub(super) fn external_url(&self) -> String {
        match &self.config.external_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.config.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", self.config.listen)
            }
        }
    }

    /// The console page an alert is about: its run (`/runs/{id}`), else the host's page,
    /// else the fleet.
    fn link(
        &self,
        event: AlertEvent,
        env: Option<&str>,
        hosts: &[String],
        details: &Value,
    ) -> String {
        let base = self.external_url();
        if let Some(run) = details.get("run").and_then(Value::as_str) {
            return format!("{base}/runs/{run}");
        }
        match (env, hosts.first(), event.per_host()) {
            (Some(e), Some(h), true) => format!("{base}/hosts/{e}/{h}"),
            _ => format!("{base}/"),
        }
    }

    /// An alert about now, with its link and the audit chain's head; firing, no signer.
    pub(super) fn new_alert(
        &self,
        event: AlertEvent,
        env: Option<&str>,
        commit: Option<&str>,
        hosts: Vec<String>,
        message: String,
        details: Value,
    ) -> Alert {
        let audit_head = audit_tail::audit_head(&lock(&self.db)).ok().flatten();
        Alert {
            event,
            environment: env.map(str::to_string),
            commit: commit.map(str::to_string),
            link: Some(self.link(event, env, &hosts, &details)),
            hosts,
            message,
            details,
            time: OffsetDateTime::now_utc(),
            audit_head,
            signer: None,
            subject: None,
            status: AlertStatus::Firing,
            ends_at: None,
        }
    }

    /// Raises an alert: a condition alert becomes active (sent when new or changed, re-sent
    /// to Alertmanager until resolved); a one-off (`rolled_back`) is sent once.
    pub(super) fn alert(&self, alert: Alert) {
        if alert.event == AlertEvent::RolledBack {
            self.deliver(alert, Delivery::All);
            return;
        }
        let resend = self.config.alert_resend_interval.get();
        let fired = lock_any(&self.alerts).fire(alert, resend);
        if let Some(a) = fired {
            self.deliver(a, Delivery::All);
        }
    }

    /// Resolves the active alerts `which` selects (their condition is gone).
    pub(super) fn resolve_alerts(&self, which: impl Fn(&AlertKey) -> bool) {
        let resolved = lock_any(&self.alerts).resolve_where(which, OffsetDateTime::now_utc());
        for a in resolved {
            tracing::info!(alert = %a.key(), "alert resolved");
            self.deliver(a, Delivery::All);
        }
    }

    /// Resolves `event` alerts of `env` on `host` (any subject).
    pub(super) fn resolve_host_alerts(&self, event: AlertEvent, env: &str, host: &str) {
        self.resolve_alerts(|k| {
            k.event == event
                && k.environment.as_deref() == Some(env)
                && k.host.as_deref() == Some(host)
        });
    }

    /// Re-sends the active alerts due (to Alertmanager only).
    pub(super) fn resend_alerts(&self) {
        let resend = self.config.alert_resend_interval.get();
        let due = lock_any(&self.alerts).due_resends(OffsetDateTime::now_utc(), resend);
        for a in due {
            self.deliver(a, Delivery::Resend);
        }
    }

    /// Sends in the background; a failed delivery is counted by sink.
    fn deliver(&self, alert: Alert, delivery: Delivery) {
        if self.alerter.sinks().is_empty() {
            return;
        }
        let alerter = self.alerter.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            for (kind, res) in alerter.send_each(&alert, delivery).await {
                if res.is_err() {
                    metrics.alert_delivery_failed(kind.as_str());
                }
            }
        });
    }
}
