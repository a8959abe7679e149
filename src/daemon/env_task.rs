//! One task per environment. Each owns its environment's schedule (drift checks) and takes
//! the newest fetched tip from a shared channel: a host hanging in one environment delays
//! neither another environment's next rollout nor its drift checks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::policy::{self, NextDrift};
use super::{Daemon, Wake, SHUTDOWN_GRACE};

/// (host, step address) of each drifted resource.
pub(super) type Drifted = BTreeSet<(String, String)>;

/// A fetched branch tip, handed to every environment's task (the newest replaces one not
/// taken yet: an environment busy with a long rollout then goes straight to the newest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tip {
    pub oid: git2::Oid,
    pub wake: Wake,
}

/// What one environment's task remembers between runs.
#[derive(Debug, Default)]
pub(super) struct EnvState {
    /// When each health check with its own `interval:` is due next, by name.
    pub next_health: std::collections::BTreeMap<String, Instant>,
    /// When the next drift check is due (`None`: none scheduled, e.g. nothing applied yet).
    pub next_drift: Option<Instant>,
    /// The drift interval last used (for retries after a failed check).
    pub drift_interval: Option<Duration>,
}

impl EnvState {
    /// Carries out a drift schedule decision.
    pub fn schedule(&mut self, next: NextDrift) {
        let now = Instant::now();
        match next {
            NextDrift::Keep => {}
            NextDrift::KeepOr(after) => {
                self.next_drift.get_or_insert(now + after);
            }
            NextDrift::After(after) => {
                self.drift_interval = Some(after);
                self.next_drift = Some(now + after);
            }
            NextDrift::Stop => self.next_drift = None,
        }
    }
}

/// Marks the daemon ready once every environment finished its first reconcile.
#[derive(Debug)]
pub(super) struct FirstRuns {
    remaining: AtomicUsize,
    ready: crate::server::Readiness,
}

impl FirstRuns {
    pub fn new(environments: usize, ready: crate::server::Readiness) -> Arc<FirstRuns> {
        if environments == 0 {
            ready.set_ready(true);
        }
        Arc::new(FirstRuns {
            remaining: AtomicUsize::new(environments),
            ready,
        })
    }

    fn done(&self) {
        let before = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if before == Ok(1) {
            self.ready.set_ready(true);
        }
    }
}

/// What an environment's task does next.
enum EnvWork {
    Reconcile(Tip),
    Drift,
    /// Health checks with their own `interval:` are due.
    Health,
}

/// Channels an environment's task listens on.
pub(super) struct EnvChannels {
    /// The daemon as configured now (replaced on SIGHUP, taken between runs).
    pub daemon: watch::Receiver<Arc<Daemon>>,
    pub tips: watch::Receiver<Option<Tip>>,
    pub stop: watch::Receiver<bool>,
    pub first: Arc<FirstRuns>,
}

/// Runs `env` until the daemon stops or a reload drops the environment. A run in flight
/// when the daemon stops gets [`SHUTDOWN_GRACE`] to finish (then it is abandoned and marked
/// interrupted at the next start).
pub(super) async fn run_env(env: String, mut ch: EnvChannels) {
    let mut state = EnvState::default();
    let mut first_done = false;
    if ch.tips.borrow().is_some() {
        // Added by a reload after a tip was fetched: reconcile it now.
        ch.tips.mark_changed();
    }
    loop {
        let daemon = ch.daemon.borrow_and_update().clone();
        if !daemon.config.environments.contains(&env) {
            tracing::info!(environment = %env, "environment removed from the config: its task stops");
            return;
        }
        let due = state.next_drift;
        let health_due = state.next_health.values().min().copied();
        let work = tokio::select! {
            _ = ch.stop.wait_for(|s| *s) => return,
            changed = ch.tips.changed() => {
                if changed.is_err() {
                    return;
                }
                match *ch.tips.borrow_and_update() {
                    Some(tip) => EnvWork::Reconcile(tip),
                    None => continue,
                }
            }
            _ = ch.daemon.changed() => continue,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => EnvWork::Drift,
            _ = tokio::time::sleep_until(health_due.unwrap_or_else(Instant::now).into()), if health_due.is_some() => EnvWork::Health,
        };
        let reconciled = matches!(work, EnvWork::Reconcile(_));
        let job = async {
            match work {
                EnvWork::Reconcile(tip) => daemon.reconcile_one(&env, &mut state, tip).await,
                EnvWork::Drift => daemon.drift_check(&env, &mut state).await,
                EnvWork::Health => daemon.health_check(&env, &mut state).await,
            }
        };
        tokio::pin!(job);
        let stopping = tokio::select! {
            _ = &mut job => false,
            _ = ch.stop.wait_for(|s| *s) => true,
        };
        if stopping {
            if tokio::time::timeout(SHUTDOWN_GRACE, job).await.is_err() {
                tracing::warn!(environment = %env, "the run in flight did not finish in time: abandoned (it is marked interrupted at the next start)");
            }
            return;
        }
        if reconciled && !first_done {
            first_done = true;
            ch.first.done();
        }
    }
}

/// The drift schedule after a check, from its result and the last interval used.
pub(super) fn after_drift_check(
    state: &mut EnvState,
    result: &Result<policy::DriftCheck, super::DaemonError>,
) {
    let next = policy::drift_schedule(result, state.drift_interval);
    state.schedule(next);
}
