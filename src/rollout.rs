//! Rollout waves, shared by the daemon and `plumb apply`: which hosts go together, in which
//! order, and whether a wave that ran lets the rollout go on (its hosts' results, its health
//! checks, its `max_failed`). Pure: the callers apply, check and record. [`rollback`]: what
//! becomes of a failed wave's hosts (shared by the daemon and `plumb apply` too).

pub mod rollback;

use schemars::JsonSchema;
use serde::Serialize;

use crate::health::CheckResult;
use crate::model::{selector_matches, EnvFile, Host, MaxFailed};

/// One wave: its name, its hosts (indices into the hosts given), how many at once, how many
/// may fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    pub name: String,
    pub hosts: Vec<usize>,
    pub max_parallel: usize,
    pub max_failed: MaxFailed,
}

/// Splits hosts into waves: a host goes in the first wave that selects it; without a rollout
/// every host is in one wave. Empty waves are dropped, so with a subset of the inventory
/// (`plumb apply --limit`) the waves hold the selected hosts only.
pub fn plan_waves(settings: &EnvFile, hosts: &[Host], default_parallel: usize) -> Vec<WavePlan> {
    let Some(rollout) = &settings.rollout else {
        return vec![one_wave(hosts.len(), default_parallel)];
    };
    let mut taken = vec![false; hosts.len()];
    let mut out = Vec::new();
    for w in &rollout.waves {
        let mut members = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            if !taken[i] && selector_matches(&w.selector, &h.labels) {
                taken[i] = true;
                members.push(i);
            }
        }
        if !members.is_empty() {
            out.push(WavePlan {
                name: w.name.clone(),
                hosts: members,
                max_parallel: w
                    .max_parallel
                    .map(|p| p as usize)
                    .unwrap_or(default_parallel)
                    .max(1),
                max_failed: w.max_failed.unwrap_or_default(),
            });
        }
    }
    // Validation refuses hosts in no wave; be safe anyway: they go last.
    let rest: Vec<usize> = (0..hosts.len()).filter(|i| !taken[*i]).collect();
    if !rest.is_empty() {
        out.push(WavePlan {
            name: "unassigned".into(),
            hosts: rest,
            max_parallel: default_parallel,
            max_failed: MaxFailed::default(),
        });
    }
    out
}

/// Every one of `hosts` hosts in one wave, `all` (no rollout, or `plumb apply --no-waves`).
pub fn one_wave(hosts: usize, parallel: usize) -> WavePlan {
    WavePlan {
        name: "all".into(),
        hosts: (0..hosts).collect(),
        max_parallel: parallel.max(1),
        max_failed: MaxFailed::default(),
    }
}

/// One wave of a rollout, as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WaveSummary {
    pub name: String,
    pub hosts: Vec<String>,
    /// Hosts whose apply failed or that were unreachable.
    pub failed_hosts: Vec<String>,
    /// Health check results (absent when the wave had no checks or more hosts failed than
    /// its `max_failed` allows).
    pub health: Option<Vec<CheckResult>>,
}

/// Whether every check that did not pass was inconclusive (and one was).
pub fn only_inconclusive(wave: &WaveSummary) -> bool {
    let mut not_ok = wave.health.iter().flatten().filter(|r| !r.ok).peekable();
    not_ok.peek().is_some() && not_ok.all(|r| r.inconclusive)
}

/// Every host of the wave that failed: its apply, or a health check on it (in wave order).
pub fn unhealthy_hosts(wave: &WaveSummary) -> Vec<String> {
    let mut out = wave.failed_hosts.clone();
    for r in wave.health.iter().flatten().filter(|r| !r.ok) {
        if !out.contains(&r.host) {
            out.push(r.host.clone());
        }
    }
    out
}

/// Whether the wave's health checks should run: fewer hosts failed than the wave tolerates
/// (the checks then run on the hosts that converged).
pub fn health_due(failed: usize, hosts: usize, max_failed: MaxFailed) -> bool {
    !max_failed.exceeded(failed, hosts) && failed < hosts
}

/// Why a wave stops the rollout, and the hosts to blame; `None` when it passed: no more
/// hosts failed (an apply, or a health check on the host) than its `max_failed` allows.
/// An inconclusive check (a Prometheus query with no data) always stops it: it pauses.
pub fn stop_reason(wave: &WaveSummary, max_failed: MaxFailed) -> Option<(String, Vec<String>)> {
    let total = wave.hosts.len();
    let tolerance = if max_failed == MaxFailed::default() {
        String::new()
    } else {
        format!(" (more than max_failed {max_failed} of {total})")
    };
    if max_failed.exceeded(wave.failed_hosts.len(), total) {
        let reason = format!(
            "wave `{}`: host(s) {} failed{tolerance}",
            wave.name,
            wave.failed_hosts.join(", ")
        );
        return Some((reason, wave.failed_hosts.clone()));
    }
    let failures: Vec<_> = wave.health.iter().flatten().filter(|r| !r.ok).collect();
    let unhealthy = unhealthy_hosts(wave);
    let inconclusive = only_inconclusive(wave);
    if failures.is_empty() || (!inconclusive && !max_failed.exceeded(unhealthy.len(), total)) {
        return None;
    }
    let listed: Vec<serde_json::Value> = failures
        .iter()
        .map(|f| serde_json::json!({"check": f.check, "host": f.host, "error": f.error}))
        .collect();
    let verdict = if inconclusive {
        "inconclusive"
    } else {
        "failed"
    };
    let reason = format!(
        "wave `{}`: health checks {verdict}{tolerance}: {}",
        wave.name,
        serde_json::Value::Array(listed)
    );
    let mut hosts: Vec<String> = Vec::new();
    for f in failures {
        if !hosts.contains(&f.host) {
            hosts.push(f.host.clone());
        }
    }
    Some((reason, hosts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::yaml::Pos;
    use crate::model::{LabelMatch, Rollout, Wave};

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        Host {
            name: name.into(),
            address: "10.0.0.1".into(),
            port: 22,
            user: None,
            become_: false,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vars: Default::default(),
            path: String::new(),
            pos: Pos::START,
        }
    }

    #[test]
    fn canary_first_then_rest() {
        let hosts = vec![
            host("a", &[("role", "web")]),
            host("b", &[("role", "web"), ("canary", "true")]),
            host("c", &[]),
        ];
        let settings = EnvFile {
            rollout: Some(Rollout {
                waves: vec![
                    Wave {
                        name: "canary".into(),
                        selector: [("canary".to_string(), LabelMatch::One("true".into()))].into(),
                        max_parallel: Some(1),
                        max_failed: None,
                    },
                    Wave {
                        name: "rest".into(),
                        selector: Default::default(),
                        max_parallel: None,
                        max_failed: Some(MaxFailed::Percent(50)),
                    },
                ],
            }),
            ..EnvFile::default()
        };
        let w = plan_waves(&settings, &hosts, 5);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].name.as_str(), w[0].hosts.clone(), w[0].max_parallel),
            ("canary", vec![1], 1)
        );
        assert_eq!((w[1].hosts.clone(), w[1].max_parallel), (vec![0, 2], 5));
        assert_eq!(w[1].max_failed, MaxFailed::Percent(50));
        // A subset of the hosts (`--limit`): only the waves that select one of them.
        let w = plan_waves(&settings, &hosts[..1], 5);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].name.as_str(), w[0].hosts.clone()), ("rest", vec![0]));
    }

    #[test]
    fn no_rollout_is_one_wave() {
        let hosts = vec![host("a", &[]), host("b", &[])];
        assert_eq!(
            plan_waves(&EnvFile::default(), &hosts, 3)[0].hosts,
            vec![0, 1]
        );
    }

    fn check(host: &str, ok: bool, inconclusive: bool) -> CheckResult {
        CheckResult {
            check: "app".into(),
            kind: "command".into(),
            host: host.into(),
            ok,
            inconclusive,
            code: (!ok).then(|| "exit".into()),
            error: (!ok).then(|| "unhealthy".into()),
            attempts: 1,
            duration_ms: 1,
        }
    }

    fn wave(failed: &[&str], unhealthy: &[&str]) -> WaveSummary {
        let hosts = ["a", "b", "c", "d"];
        WaveSummary {
            name: "rest".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            failed_hosts: failed.iter().map(|h| h.to_string()).collect(),
            health: Some(
                hosts
                    .iter()
                    .filter(|h| !failed.contains(h))
                    .map(|h| check(h, !unhealthy.contains(h), false))
                    .collect(),
            ),
        }
    }

    #[test]
    fn max_failed_counts_apply_and_health_failures_over_the_whole_wave() {
        let zero = MaxFailed::default();
        assert_eq!(stop_reason(&wave(&[], &[]), zero), None);
        let (reason, hosts) = stop_reason(&wave(&["a"], &[]), zero).expect("stops");
        assert_eq!(hosts, vec!["a".to_string()]);
        assert_eq!(reason, "wave `rest`: host(s) a failed");
        assert!(stop_reason(&wave(&[], &["b"]), zero).is_some());

        // One failed apply and one failed check: two hosts of four.
        let two = wave(&["a"], &["b"]);
        assert_eq!(
            unhealthy_hosts(&two),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(stop_reason(&two, MaxFailed::Count(2)), None);
        assert_eq!(stop_reason(&two, MaxFailed::Percent(50)), None);
        let (reason, hosts) = stop_reason(&two, MaxFailed::Count(1)).expect("stops");
        assert!(
            reason.starts_with("wave `rest`: health checks failed (more than max_failed 1 of 4)"),
            "{reason}"
        );
        assert_eq!(hosts, vec!["b".to_string()]);
        let (reason, _) =
            stop_reason(&wave(&["a", "b"], &[]), MaxFailed::Percent(25)).expect("stops");
        assert_eq!(
            reason,
            "wave `rest`: host(s) a, b failed (more than max_failed 25% of 4)"
        );
        // Health checks run while the failures stay within the tolerance.
        assert!(health_due(1, 4, MaxFailed::Count(1)));
        assert!(!health_due(2, 4, MaxFailed::Count(1)));
        assert!(!health_due(0, 0, MaxFailed::Count(1)));
    }

    #[test]
    fn an_inconclusive_check_pauses_whatever_max_failed_says() {
        let mut w = wave(&[], &[]);
        w.health = Some(vec![check("a", false, true)]);
        let (reason, _) = stop_reason(&w, MaxFailed::Percent(100)).expect("pauses");
        assert!(reason.contains("health checks inconclusive"), "{reason}");
        assert!(only_inconclusive(&w));
    }
}
