//! The alert lifecycle: which alerts are firing now, by identity ([`AlertKey`]).
//!
//! An alert fires once when its condition appears (and again only when what it says changes:
//! the same drift found every interval pages once), stays active while the condition holds,
//! and resolves when it is gone (drift corrected or gone, the host back, the check passing,
//! a rollout converged). While firing, Alertmanager is told an `endsAt` a few re-send
//! intervals ahead and the alert is re-sent before then ([`ActiveAlerts::due_resends`]), so
//! an alert plumb stopped telling about (plumb itself down) ends on its own; a resolution is
//! sent with `endsAt` = now. Pure bookkeeping: no I/O, the caller sends what it returns.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Alert, AlertError, AlertEvent, AlertKey, AlertStatus, ChainHead};

/// An active alert as the state keeps it across restarts: everything it says, and when it
/// started (RFC 3339), so that it is re-sent after a restart as the same alert (same identity,
/// same `startsAt`), never paged again as new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAlert {
    pub event: AlertEvent,
    pub environment: Option<String>,
    pub commit: Option<String>,
    pub hosts: Vec<String>,
    pub message: String,
    pub details: serde_json::Value,
    /// When it first fired.
    pub time: String,
    pub link: Option<String>,
    pub audit_head: Option<ChainHead>,
    pub signer: Option<String>,
    pub subject: Option<String>,
}

impl From<&Alert> for StoredAlert {
    fn from(a: &Alert) -> StoredAlert {
        StoredAlert {
            event: a.event,
            environment: a.environment.clone(),
            commit: a.commit.clone(),
            hosts: a.hosts.clone(),
            message: a.message.clone(),
            details: a.details.clone(),
            time: super::rfc3339(a.time),
            link: a.link.clone(),
            audit_head: a.audit_head.clone(),
            signer: a.signer.clone(),
            subject: a.subject.clone(),
        }
    }
}

impl TryFrom<StoredAlert> for Alert {
    type Error = AlertError;

    /// The stored alert, firing again (its `endsAt` is set when it is re-sent).
    fn try_from(s: StoredAlert) -> Result<Alert, AlertError> {
        let time = OffsetDateTime::parse(&s.time, &Rfc3339).map_err(|e| {
            AlertError::Stored(format!(
                "{} alert: time {:?}: {e}",
                s.event.as_str(),
                s.time
            ))
        })?;
        Ok(Alert {
            event: s.event,
            environment: s.environment,
            commit: s.commit,
            hosts: s.hosts,
            message: s.message,
            details: s.details,
            time,
            link: s.link,
            audit_head: s.audit_head,
            signer: s.signer,
            subject: s.subject,
            status: AlertStatus::Firing,
            ends_at: None,
        })
    }
}

/// How many re-send intervals ahead a firing alert's `endsAt` lies.
pub const ENDS_AFTER_RESENDS: u32 = 4;

/// The alerts firing now, with when each was last sent.
#[derive(Debug, Default)]
pub struct ActiveAlerts {
    active: BTreeMap<AlertKey, (Alert, OffsetDateTime)>,
}

fn ends_at(now: OffsetDateTime, resend: Duration) -> OffsetDateTime {
    now + resend.saturating_mul(ENDS_AFTER_RESENDS)
}

/// Details equal but for `run` (each check is a new run: the same condition found again is
/// not news).
fn same_details(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("run");
        }
        v
    };
    strip(a) == strip(b)
}

impl ActiveAlerts {
    /// `alert` holds now. Returns it to send (with its first `time` kept and `endsAt` set)
    /// when it is new or its message or details changed; `None` when it is already firing
    /// and says the same.
    pub fn fire(&mut self, mut alert: Alert, resend: Duration) -> Option<Alert> {
        let key = alert.key();
        let now = alert.time;
        alert.status = AlertStatus::Firing;
        alert.ends_at = Some(ends_at(now, resend));
        if let Some((old, _)) = self.active.get(&key) {
            if old.message == alert.message && same_details(&old.details, &alert.details) {
                return None;
            }
            // The same alert, updated: it started when it first fired.
            alert.time = old.time;
        }
        self.active.insert(key, (alert.clone(), now));
        Some(alert)
    }

    /// An alert that was firing when the daemon stopped (read back from the state): active
    /// again with its first `time`, and due to be re-sent at once (Alertmanager learns it
    /// still holds); not paged again as new. A later [`ActiveAlerts::fire`] saying the same is
    /// news to no one; a check that finds its condition gone resolves it.
    pub fn restore(&mut self, alert: Alert) {
        let key = alert.key();
        if key.event.one_off() {
            return;
        }
        self.active.insert(key, (alert, OffsetDateTime::UNIX_EPOCH));
    }

    /// The condition of `key` is gone: returns the resolution to send, if it was firing.
    pub fn resolve(&mut self, key: &AlertKey, now: OffsetDateTime) -> Option<Alert> {
        let (mut alert, _) = self.active.remove(key)?;
        alert.status = AlertStatus::Resolved;
        alert.ends_at = Some(now);
        Some(alert)
    }

    /// Resolves every active alert `which` selects; returns the resolutions to send.
    pub fn resolve_where(
        &mut self,
        which: impl Fn(&AlertKey) -> bool,
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let keys: Vec<AlertKey> = self.active.keys().filter(|k| which(k)).cloned().collect();
        keys.iter().filter_map(|k| self.resolve(k, now)).collect()
    }

    /// Alerts still firing that were last sent at least `resend` ago, with a new `endsAt`:
    /// to re-send to Alertmanager.
    pub fn due_resends(&mut self, now: OffsetDateTime, resend: Duration) -> Vec<Alert> {
        let mut out = Vec::new();
        for (alert, sent) in self.active.values_mut() {
            if now - *sent >= resend {
                *sent = now;
                alert.ends_at = Some(ends_at(now, resend));
                out.push(alert.clone());
            }
        }
        out
    }

    /// Whether `key` is firing.
    pub fn is_active(&self, key: &AlertKey) -> bool {
        self.active.contains_key(key)
    }

    /// Every active alert's identity.
    pub fn keys(&self) -> impl Iterator<Item = &AlertKey> {
        self.active.keys()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::AlertEvent;
    use super::*;

    fn drift(host: &str, message: &str, at: OffsetDateTime) -> Alert {
        Alert {
            event: AlertEvent::DriftFound,
            environment: Some("prod".into()),
            commit: Some("c0ffee".into()),
            hosts: vec![host.into()],
            message: message.into(),
            details: json!({"n": message}),
            time: at,
            link: None,
            audit_head: None,
            signer: Some("alice".into()),
            subject: None,
            status: AlertStatus::Firing,
            ends_at: None,
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn an_alert_fires_once_updates_keep_its_start_and_it_resolves_once() {
        let t0 = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        let mut a = ActiveAlerts::default();
        let first = a
            .fire(drift("web-1", "1 drifted", t0), MIN)
            .expect("a new alert is sent");
        assert_eq!(first.ends_at, Some(t0 + MIN * 4));
        // The same condition again (found by another run): nothing new to say.
        let mut again = drift("web-1", "1 drifted", t0 + MIN);
        again.details["run"] = "r2".into();
        assert_eq!(a.fire(again, MIN), None);
        // Another host is another alert.
        assert!(a.fire(drift("web-2", "1 drifted", t0), MIN).is_some());
        // What it says changed: sent again, same start.
        let updated = a
            .fire(drift("web-1", "2 drifted", t0 + MIN * 2), MIN)
            .expect("an update is sent");
        assert_eq!(updated.time, t0);
        let resolved = a
            .resolve(&updated.key(), t0 + MIN * 3)
            .expect("it was firing");
        assert_eq!(resolved.status, AlertStatus::Resolved);
        assert_eq!(resolved.ends_at, Some(t0 + MIN * 3));
        assert_eq!(resolved.time, t0);
        assert_eq!(a.resolve(&updated.key(), t0 + MIN * 4), None, "only once");
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn a_restored_alert_is_due_at_once_and_keeps_its_start() {
        let t0 = time::macros::datetime!(2026-01-01 00:00:00.123456789 UTC);
        let mut before = ActiveAlerts::default();
        let sent = before
            .fire(drift("web-1", "1 drifted", t0), MIN)
            .expect("new");
        // What the state keeps, read back after a restart.
        let stored = StoredAlert::from(&sent);
        let text = serde_json::to_string(&stored).expect("json");
        let back: StoredAlert = serde_json::from_str(&text).expect("parses");
        let alert = Alert::try_from(back).expect("an alert");
        assert_eq!(alert.time, t0, "the start survives to the nanosecond");
        assert_eq!(alert.key(), sent.key());
        assert_eq!(
            (alert.message.as_str(), &alert.details),
            (sent.message.as_str(), &sent.details)
        );
        let mut after = ActiveAlerts::default();
        after.restore(alert);
        assert!(after.is_active(&sent.key()));
        // Re-sent at the first tick (Alertmanager learns it still holds), with its start.
        let t1 = t0 + MIN * 30;
        let due = after.due_resends(t1, MIN);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].time, t0);
        assert_eq!(due[0].ends_at, Some(t1 + MIN * 4));
        // Found again saying the same: not news. Gone: resolved, with its start.
        assert_eq!(after.fire(drift("web-1", "1 drifted", t1), MIN), None);
        let gone = after.resolve(&sent.key(), t1).expect("was firing");
        assert_eq!((gone.status, gone.time), (AlertStatus::Resolved, t0));
        // One-off alerts are never active.
        let mut once = drift("web-1", "x", t0);
        once.event = AlertEvent::BreakGlass;
        after.restore(once);
        assert!(after.is_empty());
        // A stored time that does not parse is an error naming it.
        let mut bad = stored.clone();
        bad.time = "yesterday".into();
        let err = Alert::try_from(bad).unwrap_err();
        assert_eq!(err.code(), "stored");
        assert!(err.to_string().contains("yesterday"), "{err}");
    }

    #[test]
    fn firing_alerts_are_resent_each_interval_with_a_later_end() {
        let t0 = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        let mut a = ActiveAlerts::default();
        a.fire(drift("web-1", "1", t0), MIN);
        assert!(a.due_resends(t0 + MIN / 2, MIN).is_empty());
        let again = a.due_resends(t0 + MIN, MIN);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].ends_at, Some(t0 + MIN * 5));
        assert_eq!(again[0].status, AlertStatus::Firing);
        assert!(a.due_resends(t0 + MIN + MIN / 2, MIN).is_empty());
        let gone = a.resolve_where(|k| k.host.as_deref() == Some("web-1"), t0 + MIN * 2);
        assert_eq!(gone.len(), 1);
        assert!(a.due_resends(t0 + MIN * 10, MIN).is_empty());
    }
}
