//! `plumb daemon`: continuous reconciliation.
//!
//! One loop wakes on a trigger (a push noticed in a local repository, a poll of a remote, a
//! webhook, startup, a fetch retry) or a drift timer. A reconcile fetches once, then runs
//! every environment at once (each once, so never two runs of one environment), each
//! recording its outcome as soon as it is done: a host hanging in one environment does not
//! delay another's rollout. A host that several inventories share (same address and port)
//! is applied by one environment at a time ([`HostLocks`]).
//!
//! - **reconcile** (`reconcile.rs`): fetch → resolve the branch tip → per environment: verify
//!   every commit since the last applied one (refuse unsigned commits and rollbacks) → check
//!   out the tip → validate and render (a bad commit touches nothing) → apply in rollout
//!   waves, each followed by its health checks (a failure stops the rollout). It returns an
//!   [`Outcome`]; the pure [`policy`] turns it into [`Effects`] (record, mark the commit failed
//!   or applied, alert, when to check drift), which the daemon carries out, recording first.
//! - **drift check** (`drift.rs`): observe every host against the last applied commit (one
//!   round trip per host); every difference is drift. `report` mode records and alerts;
//!   `correct` mode also re-applies, recorded as a correction.
//!
//! The reconcile never knows why it runs: it always observes first, so a daemon killed in the
//! middle of an apply converges on restart (the interrupted run stays in the history).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::alert::{Alert, AlertEvent, Alerter};
use crate::engine::{CachedConnector, SshConnector};
use crate::server::{self, AppState, Metrics, Readiness, WebhookSecrets};
use crate::source::Source;
use crate::state::{self, StateDb, Trigger};

pub mod audit_tail;
pub mod config;
mod drift;
pub mod error;
pub mod policy;
mod reconcile;
pub mod status;
pub mod waves;

#[cfg(test)]
mod tests;

pub use config::DaemonConfig;
pub use error::DaemonError;
pub use policy::{policy, Effects, Outcome};

/// How long a fetch may take before the attempt is abandoned (and retried).
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// First pause before a failed fetch is tried again; doubled on each failure up to
/// [`FETCH_RETRY_MAX`], reset by a fetch that succeeds.
pub const FETCH_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause between two fetch attempts while fetches fail.
pub const FETCH_RETRY_MAX: Duration = Duration::from_secs(300);

/// On SIGTERM/SIGINT, how long the run in flight may still take before it is abandoned (it
/// is then marked `interrupted` at the next start, and the next run converges).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the loop woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Startup,
    Push,
    Poll,
    Webhook,
}

impl Wake {
    fn trigger(self) -> Trigger {
        match self {
            Wake::Startup => Trigger::Startup,
            Wake::Push => Trigger::Push,
            Wake::Poll => Trigger::Poll,
            Wake::Webhook => Trigger::Webhook,
        }
    }
}

/// One thing the loop does at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Reconcile(Wake),
    Drift,
    Reload,
}

/// A fetch that failed, to be tried again (with the trigger it served, so none is lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FetchRetry {
    at: Instant,
    delay: Duration,
    wake: Wake,
}

/// The next pause after a failed fetch: doubles, bounded by [`FETCH_RETRY_MAX`].
fn next_fetch_delay(previous: Option<Duration>) -> Duration {
    previous
        .map(|d| d.saturating_mul(2))
        .unwrap_or(FETCH_RETRY_MIN)
        .min(FETCH_RETRY_MAX)
}

/// How the daemon is started (command-line flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// `--accept-state-reset`: start although the state database is empty or missing while
    /// the daemon key or mirror show the daemon ran before (the reset is recorded).
    pub accept_state_reset: bool,
}

/// The daemon's state between runs.
pub struct Daemon {
    config_path: PathBuf,
    config: DaemonConfig,
    signers: crate::source::Trust,
    source: Arc<Source>,
    db: Arc<Mutex<StateDb>>,
    metrics: Arc<Metrics>,
    alerter: Alerter,
    connector: CachedConnector<SshConnector>,
    ready: Readiness,
    /// Drift already alerted, per environment: alert again only when it changes.
    alerted_drift: HashMap<String, BTreeSet<(String, String)>>,
    next_drift: HashMap<String, Instant>,
    /// The drift interval last used per environment (for retries after a failed check).
    drift_intervals: HashMap<String, Duration>,
    fetch_retry: Option<FetchRetry>,
    /// One apply per host at a time, across environments.
    host_locks: HostLocks,
}

/// A lock per host (`address:port`), held for the host's apply, so two environments whose
/// inventories share a host never apply it at the same time. One entry per distinct host
/// of the inventories (bounded by them).
#[derive(Debug, Clone, Default)]
pub(crate) struct HostLocks(Arc<Mutex<HashMap<HostKey, Arc<tokio::sync::Mutex<()>>>>>);

/// A host as the network sees it: address and port.
type HostKey = (String, u16);

impl HostLocks {
    /// Waits until no one else applies `address:port`; the host is ours until the guard drops.
    pub(crate) async fn lock(&self, address: &str, port: u16) -> tokio::sync::OwnedMutexGuard<()> {
        let host = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry((address.to_string(), port)).or_default().clone()
        };
        host.lock_owned().await
    }
}

fn lock(db: &Mutex<StateDb>) -> std::sync::MutexGuard<'_, StateDb> {
    db.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_secret(path: &Option<PathBuf>) -> Result<Vec<Vec<u8>>, DaemonError> {
    match path {
        None => Ok(Vec::new()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(DaemonError::io("reading the webhook secret", p))?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.as_bytes().to_vec())
                .collect())
        }
    }
}

impl Daemon {
    /// Opens state and checks everything that can be checked before the loop starts.
    pub fn new(
        config_path: &Path,
        config: DaemonConfig,
        options: StartOptions,
    ) -> Result<Daemon, DaemonError> {
        // StateDb::open creates the state directory (0700) and refuses one others may read;
        // a state directory whose history was deleted is refused before it is recreated.
        crate::state::check_not_reset(&config.state_dir, options.accept_state_reset)?;
        let signers = config.trust()?;
        let db = StateDb::open(&config.state_dir)?;
        let source = Source::new(&config.repository, &config.state_dir)?
            .with_auth(config.repository_auth.clone().unwrap_or_default());
        let alerter = Alerter::new(config.alerts.clone())?;
        let ssh = config.ssh_options();
        if let Some(dir) = &ssh.control_dir {
            std::fs::create_dir_all(dir)
                .map_err(DaemonError::io("creating the ssh control directory", dir))?;
        }
        let connector = CachedConnector::new(SshConnector { options: ssh });
        let daemon = Daemon {
            config_path: config_path.to_path_buf(),
            signers,
            source: Arc::new(source),
            db: Arc::new(Mutex::new(db)),
            metrics: Arc::new(Metrics::new()),
            alerter,
            connector,
            ready: Readiness::new(),
            alerted_drift: HashMap::new(),
            next_drift: HashMap::new(),
            drift_intervals: HashMap::new(),
            fetch_retry: None,
            host_locks: HostLocks::default(),
            config,
        };
        daemon.anchor_audit_head();
        Ok(daemon)
    }

    fn checkouts_dir(&self) -> PathBuf {
        self.config.state_dir.join("checkouts")
    }

    /// Starts the HTTP server; returns its task and the sender that stops it.
    async fn start_server(
        &self,
        hook_tx: mpsc::Sender<server::Trigger>,
    ) -> Result<
        (
            tokio::task::JoinHandle<()>,
            tokio::sync::watch::Sender<bool>,
        ),
        DaemonError,
    > {
        let addr = self.config.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        tracing::info!(listen = %addr, repository = %self.config.repository, "plumb daemon started");
        let secrets = WebhookSecrets {
            github: read_secret(&self.config.webhooks.github_secret_file)?,
            generic: read_secret(&self.config.webhooks.generic_secret_file)?,
        };
        let status = status::StateStatus {
            db: Arc::new(Mutex::new(lock(&self.db).handle()?)),
            environments: self.config.environments.clone(),
        };
        let app = AppState {
            metrics: self.metrics.clone(),
            triggers: hook_tx,
            secrets: Arc::new(secrets),
            ready: self.ready.clone(),
            status: Arc::new(status),
            on_refusal: Some(webhook_refusal_alerts(self.alerter.clone())),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut server_stop = stop_rx;
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server::serve(listener, app, shutdown).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        Ok((task, stop_tx))
    }

    /// Runs until SIGTERM/SIGINT. The run in flight gets [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(mut self) -> Result<(), DaemonError> {
        let (hook_tx, mut hook_rx) = mpsc::channel::<server::Trigger>(1);
        let (server_task, stop_tx) = self.start_server(hook_tx).await?;
        let poll = match self.source.origin {
            crate::source::Origin::Local(_) => None,
            crate::source::Origin::Remote(_) => Some(self.config.poll()),
        };
        let (_watch, mut watch_rx) = self.source.watch(poll)?;
        let signal = |kind: tokio::signal::unix::SignalKind, name: &'static str| {
            tokio::signal::unix::signal(kind).map_err(|source| DaemonError::Signal {
                signal: name,
                source,
            })
        };
        use tokio::signal::unix::SignalKind;
        let mut term = signal(SignalKind::terminate(), "SIGTERM")?;
        let mut int = signal(SignalKind::interrupt(), "SIGINT")?;
        let mut hup = signal(SignalKind::hangup(), "SIGHUP")?;

        let mut work = Work::Reconcile(Wake::Startup);
        loop {
            let stop = {
                let job = self.work(work);
                tokio::pin!(job);
                let interrupted = tokio::select! {
                    _ = &mut job => false,
                    _ = term.recv() => true,
                    _ = int.recv() => true,
                };
                if interrupted {
                    tracing::info!(grace = ?SHUTDOWN_GRACE, "stopping: letting the run in flight finish");
                    if tokio::time::timeout(SHUTDOWN_GRACE, job).await.is_err() {
                        tracing::warn!("the run in flight did not finish in time: abandoned (it is marked interrupted at the next start)");
                    }
                }
                interrupted
            };
            if stop {
                break;
            }
            let drift_due = self.next_drift_due();
            let retry = self.fetch_retry;
            work = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => Work::Reload,
                Some(ev) = watch_rx.recv() => Work::Reconcile(match ev {
                    crate::source::watch::WatchEvent::RefsChanged => Wake::Push,
                    crate::source::watch::WatchEvent::Poll => Wake::Poll,
                    crate::source::watch::WatchEvent::Triggered => Wake::Webhook,
                }),
                Some(hook) = hook_rx.recv() => {
                    let server::Trigger::Webhook(event) = hook;
                    tracing::info!(event = %event.event, delivery = ?event.delivery, "webhook: fetching");
                    Work::Reconcile(Wake::Webhook)
                }
                _ = tokio::time::sleep_until(retry.map_or(drift_due, |r| r.at).into()), if retry.is_some() => {
                    Work::Reconcile(retry.map_or(Wake::Poll, |r| r.wake))
                }
                _ = tokio::time::sleep_until(drift_due.into()) => Work::Drift,
            };
        }
        let _ = stop_tx.send(true);
        let _ = server_task.await;
        tracing::info!("plumb daemon stopped");
        Ok(())
    }

    async fn work(&mut self, work: Work) {
        match work {
            Work::Reconcile(wake) => self.reconcile(wake).await,
            Work::Drift => self.drift_due().await,
            Work::Reload => self.reload(),
        }
    }

    /// SIGHUP: re-read the config; keep the old one when the new one is invalid. The listen
    /// address and state directory need a restart. The drift schedule is kept.
    fn reload(&mut self) {
        let new = match DaemonConfig::load(&self.config_path) {
            Ok(new) => new,
            Err((diags, _)) => {
                for d in diags.iter() {
                    tracing::error!(path = %d.path, line = d.line, col = d.col, "{}", d.message);
                }
                tracing::error!("SIGHUP: the new config is invalid; keeping the running one");
                return;
            }
        };
        let loaded = new
            .trust()
            .map_err(DaemonError::from)
            .and_then(|s| Ok((s, Alerter::new(new.alerts.clone())?)));
        let (signers, alerter) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "SIGHUP: keeping the running config");
                return;
            }
        };
        if new.listen != self.config.listen
            || new.state_dir != self.config.state_dir
            || new.repository != self.config.repository
            || new.repository_auth != self.config.repository_auth
        {
            tracing::warn!(
                "SIGHUP: listen, state_dir, repository and repository_auth changes take effect on restart"
            );
        }
        self.signers = signers;
        self.alerter = alerter;
        self.connector = CachedConnector::new(SshConnector {
            options: new.ssh_options(),
        });
        self.config = DaemonConfig {
            listen: self.config.listen,
            state_dir: self.config.state_dir.clone(),
            repository: self.config.repository.clone(),
            ..new
        };
        // The schedule stays: every environment is still checked at its next due time (a
        // reload that cleared it stopped drift checks until the next push).
        tracing::info!("SIGHUP: configuration reloaded");
    }

    fn next_drift_due(&self) -> Instant {
        self.next_drift
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Carries out a drift schedule decision for `env`.
    fn schedule_drift(&mut self, env: &str, next: policy::NextDrift) {
        use policy::NextDrift;
        let now = Instant::now();
        match next {
            NextDrift::Keep => {}
            NextDrift::KeepOr(after) => {
                self.next_drift
                    .entry(env.to_string())
                    .or_insert(now + after);
            }
            NextDrift::After(after) => {
                self.drift_intervals.insert(env.to_string(), after);
                self.next_drift.insert(env.to_string(), now + after);
            }
            NextDrift::Stop => {
                self.next_drift.remove(env);
            }
        }
    }

    async fn drift_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .next_drift
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(e, _)| e.clone())
            .collect();
        for env in due {
            self.drift_check(&env).await;
        }
    }

    /// The audit chain's head, after a record: to `/metrics` and the configured head file.
    fn anchor_audit_head(&self) {
        let head = match audit_tail::audit_head(&lock(&self.db)) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "cannot read the audit chain's head");
                return;
            }
        };
        self.metrics.set_audit_head(head.seq, &head.hash);
        if let Some(file) = self
            .config
            .audit
            .as_ref()
            .and_then(|a| a.head_file.as_ref())
        {
            if let Err(e) = audit_tail::append_head(file, &head) {
                tracing::error!(error = %e, code = e.code(), "cannot append the audit head");
            }
        }
    }

    fn alert(
        &self,
        event: AlertEvent,
        env: Option<&str>,
        commit: Option<&str>,
        hosts: Vec<String>,
        message: String,
        details: Value,
    ) {
        if self.alerter.sinks().is_empty() {
            return;
        }
        let audit_head = audit_tail::audit_head(&lock(&self.db)).ok().flatten();
        self.alerter.spawn(Alert {
            event,
            environment: env.map(str::to_string),
            commit: commit.map(str::to_string),
            hosts,
            message,
            details,
            time: OffsetDateTime::now_utc(),
            link: None,
            audit_head,
        });
    }

    /// Removes checkouts no environment needs any more.
    fn prune_checkouts(&self, keep: &BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(self.checkouts_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && !name.starts_with('.') {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Alerts on refused webhook requests, at most once a minute (the metric counts every one),
/// so a flood of forged requests cannot become a flood of pages. Uses the sinks configured
/// at start (a SIGHUP does not change them for this alert).
fn webhook_refusal_alerts(alerter: Alerter) -> server::RefusalHook {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |hook: &str, code: &str| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) || alerter.sinks().is_empty()
        {
            return;
        }
        *last = Some(Instant::now());
        alerter.spawn(Alert {
            event: AlertEvent::SignatureRefused,
            environment: None,
            commit: None,
            hosts: Vec::new(),
            message: format!("a request to /hooks/{hook} was refused: {code} (bad or missing HMAC); nothing was fetched"),
            details: json!({"hook": hook, "code": code}),
            time: OffsetDateTime::now_utc(),
            link: None,
            audit_head: None,
        });
    })
}

fn signer_of(s: &crate::source::signature::Signer) -> state::Signer {
    state::Signer {
        principal: s.principal.clone(),
        fingerprint: s.fingerprint.clone(),
    }
}
