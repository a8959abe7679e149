//! The daemon's main loop around the environment tasks: it fetches (with backoff on
//! failure), hands the tip to every environment's task, reloads the config on SIGHUP and
//! stops the tasks on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::env_task::{run_env, EnvChannels, FirstRuns, Tip};
use super::{next_fetch_delay, Daemon, FetchRetry, Wake, SHUTDOWN_GRACE};

/// Fetches and remembers a failed fetch's retry (with the trigger it served).
#[derive(Debug, Default)]
pub(super) struct Fetcher {
    pub retry: Option<FetchRetry>,
}

impl Fetcher {
    /// Fetches and resolves the branch tip; a failure schedules a retry with backoff.
    pub async fn fetch(&mut self, daemon: &Daemon, wake: Wake) -> Option<Tip> {
        match daemon.fetch().await {
            Ok(oid) => {
                self.retry = None;
                Some(Tip { oid, wake })
            }
            Err(e) => {
                let delay = next_fetch_delay(self.retry.map(|r| r.delay));
                tracing::error!(error = %e, code = e.code(), retry_in = ?delay, "fetch failed; retrying with backoff");
                self.retry = Some(FetchRetry {
                    at: Instant::now() + delay,
                    delay,
                    wake,
                });
                None
            }
        }
    }
}

/// The environment tasks and the channels that drive them.
pub(super) struct Supervisor {
    daemon_tx: watch::Sender<Arc<Daemon>>,
    tips: watch::Sender<Option<Tip>>,
    stop: watch::Sender<bool>,
    first: Arc<FirstRuns>,
    tasks: HashMap<String, JoinHandle<()>>,
    pub fetcher: Fetcher,
}

impl Supervisor {
    /// Starts one task per configured environment (they wait for the first tip).
    pub fn start(daemon: Daemon) -> Supervisor {
        let first = FirstRuns::new(daemon.config.environments.len(), daemon.ready.clone());
        let (daemon_tx, _) = watch::channel(Arc::new(daemon));
        let (tips, _) = watch::channel(None);
        let (stop, _) = watch::channel(false);
        let mut sup = Supervisor {
            daemon_tx,
            tips,
            stop,
            first,
            tasks: HashMap::new(),
            fetcher: Fetcher::default(),
        };
        sup.spawn_missing();
        sup
    }

    /// The daemon as configured now.
    pub fn daemon(&self) -> Arc<Daemon> {
        self.daemon_tx.borrow().clone()
    }

    /// A task for every configured environment that has none (at start, after a reload).
    fn spawn_missing(&mut self) {
        self.tasks.retain(|_, t| !t.is_finished());
        let envs = self.daemon().config.environments.clone();
        for env in envs {
            if self.tasks.contains_key(&env) {
                continue;
            }
            let ch = EnvChannels {
                daemon: self.daemon_tx.subscribe(),
                tips: self.tips.subscribe(),
                stop: self.stop.subscribe(),
                first: self.first.clone(),
            };
            let task = tokio::spawn(run_env(env.clone(), ch));
            self.tasks.insert(env, task);
        }
    }

    /// Fetches; on success every environment's task gets the tip.
    pub async fn fetch_and_dispatch(&mut self, wake: Wake) {
        let daemon = self.daemon();
        if let Some(tip) = self.fetcher.fetch(&daemon, wake).await {
            self.tips.send_replace(Some(tip));
        }
    }

    /// SIGHUP: the new config goes to every task (taken between runs); environments added
    /// get a task, removed ones stop after their run in flight.
    pub fn reload(&mut self) {
        if let Some(new) = self.daemon().reloaded() {
            new.resolve_unmanaged_alerts();
            self.daemon_tx.send_replace(Arc::new(new));
            self.spawn_missing();
        }
    }

    /// When the pending fetch retry is due, if any.
    pub fn retry_at(&self) -> Option<(Instant, Wake)> {
        self.fetcher.retry.map(|r| (r.at, r.wake))
    }

    /// Stops every task; a run in flight gets [`SHUTDOWN_GRACE`] to finish.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let until = tokio::time::Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(1);
        for (env, task) in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(until, task).await.is_err() {
                tracing::warn!(environment = %env, "environment task did not stop in time; aborted");
                abort.abort();
            }
        }
    }
}
