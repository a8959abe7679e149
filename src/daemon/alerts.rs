//! The daemon's side of the alert lifecycle ([`crate::alert::lifecycle`]): every alert gets a
//! link (the console page of its run or host under `external_url`), the audit head, and an
//! identity; alerts that describe a condition (drift on a host, a host unreachable, a health
//! check failing, a rollout failed or a commit refused) stay active until the condition is
//! gone and are then resolved; active alerts are re-sent to Alertmanager every
//! `alert_resend_interval`. Sending is in the background; a sink that fails is counted
//! (`plumb_alert_delivery_failures_total{sink}`) and logged, never more.

use serde_json::Value;
use time::OffsetDateTime;

use crate::alert::lifecycle::StoredAlert;
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
    /// to Alertmanager until resolved, kept in the state so a restart neither pages it again
    /// nor forgets it); a one-off (`rolled_back`, `break_glass`) is sent once.
    pub(super) fn alert(&self, alert: Alert) {
        if alert.event.one_off() {
            self.deliver(alert, Delivery::All);
            return;
        }
        let resend = self.config.alert_resend_interval.get();
        let fired = lock_any(&self.alerts).fire(alert, resend);
        if let Some(a) = fired {
            self.keep_active(&a);
            self.deliver(a, Delivery::All);
        }
    }

    /// Resolves the active alerts `which` selects (their condition is gone).
    pub(super) fn resolve_alerts(&self, which: impl Fn(&AlertKey) -> bool) {
        let resolved = lock_any(&self.alerts).resolve_where(which, OffsetDateTime::now_utc());
        for a in resolved {
            let id = a.key().to_string();
            tracing::info!(alert = %id, "alert resolved");
            if let Err(e) = lock(&self.db).delete_active_alert(&id) {
                tracing::error!(alert = %id, error = %e, code = e.code(), "cannot forget a resolved alert in the state: it is re-sent after a restart until a check resolves it again");
            }
            self.deliver(a, Delivery::All);
        }
    }

    /// Writes a firing alert to the state (`active_alerts`).
    fn keep_active(&self, a: &Alert) {
        let id = a.key().to_string();
        let fired_at = i64::try_from(a.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        if let Err(e) = lock(&self.db).save_active_alert(&id, &StoredAlert::from(a), fired_at) {
            tracing::error!(alert = %id, error = %e, code = e.code(), "cannot keep a firing alert in the state: a restart would page it again");
        }
    }

    /// The alerts that were firing when the daemon last stopped, read back from the state:
    /// active again with their first time (re-sent to Alertmanager at the first tick, not
    /// paged again as new), resolved by the first check that finds their condition gone.
    /// Returns how many. A row that cannot be read is logged and left alone.
    pub(super) fn restore_alerts(&self) -> usize {
        let rows = match lock(&self.db).active_alerts::<StoredAlert>() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "cannot read the alerts that were firing: they are not re-sent, and fire again as new if their condition holds");
                return 0;
            }
        };
        let mut active = lock_any(&self.alerts);
        let mut n = 0;
        for row in rows {
            match Alert::try_from(row.alert) {
                Ok(a) => {
                    active.restore(a);
                    n += 1;
                }
                Err(e) => {
                    tracing::error!(alert = %row.id, error = %e, code = e.code(), "a stored alert cannot be read back: not restored")
                }
            }
        }
        if n > 0 {
            tracing::info!(alerts = n, "alerts still firing from before the restart: re-sent, resolved when their condition is gone");
        }
        n
    }

    /// Resolves the active alerts of environments the daemon no longer manages (removed from
    /// the config while it was down or by a reload): nothing checks them any more.
    pub(super) fn resolve_unmanaged_alerts(&self) {
        let envs = &self.config.environments;
        self.resolve_alerts(|k| k.environment.as_ref().is_some_and(|e| !envs.contains(e)));
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
