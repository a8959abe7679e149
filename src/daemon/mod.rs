//! `plumb daemon`: continuous reconciliation.
//!
//! The main loop wakes on a trigger (a push noticed in a local repository, a poll of a
//! remote, a webhook, startup, a fetch retry), fetches once and hands the branch tip to one
//! task per environment (`env_task.rs`, driven by `supervisor.rs`). Each environment's task
//! runs its own reconciles and its own drift checks, one at a time (never two runs of one
//! environment), and takes the newest tip when it is free: a host hanging in one environment
//! delays neither another environment's rollout nor its drift checks. A host that several
//! inventories share (same address and port) is applied by one environment at a time
//! ([`HostLocks`]), by rollouts and drift corrections alike.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::alert::{Alert, AlertEvent, Alerter};
use crate::engine::{CachedConnector, SshConnector};
use crate::server::{self, AppState, Metrics, Readiness, WebhookSecrets};
use crate::source::Source;
use crate::state::{self, StateDb, Trigger};

mod alerts;
mod attribution;
pub mod audit_tail;
pub mod backups;
pub mod config;
pub mod console;
mod drift;
mod env_task;
pub mod error;
mod guard;
mod health_watch;
pub mod http_config;
mod leases;
mod manual_runs;
pub mod memory;
mod pins;
pub mod policy;
mod reconcile;
mod rollback;
pub mod status;
mod supervisor;
pub mod validator;

#[cfg(test)]
mod tests;

pub use config::DaemonConfig;
pub use error::DaemonError;
pub use policy::{policy, Effects, Outcome};

/// How often the daemon looks for active alerts due to be re-sent.
const ALERT_RESEND_TICK: Duration = Duration::from_secs(1);

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
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `--accept-state-reset`: start although the state database is empty or missing while
    /// the daemon key or mirror show the daemon ran before (the reset is recorded).
    pub accept_state_reset: bool,
    /// The executable that validates each new commit in a child process under resource
    /// limits before the daemon loads it (`plumb` itself; `None` in unit tests, which load
    /// in process only).
    pub validator: Option<PathBuf>,
}

/// What every environment's task shares: the configuration, trust root, state, and the
/// means to reach hosts. Replaced as a whole on SIGHUP (tasks take the new one between runs).
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
    /// One apply per host at a time, across environments.
    host_locks: HostLocks,
    /// The commit each environment is loading or rolling out now: its checkout is kept.
    in_use: Arc<Mutex<BTreeMap<String, String>>>,
    /// Bounded validation of each new commit in a child process.
    validator: Option<validator::Validator>,
    /// The newest tip fetched (its checkout is kept).
    latest_tip: Arc<Mutex<Option<git2::Oid>>>,
    /// Each environment's hosts and labels, for the console.
    inventory: console::Inventory,
    /// Decrypts the repo's secrets (`secrets_identity:`).
    secrets: Option<Arc<crate::secrets::SecretIdentity>>,
    /// The alerts firing now, by identity (kept across reloads).
    alerts: Arc<Mutex<crate::alert::lifecycle::ActiveAlerts>>,
    /// The backups the last drift check of each environment observed.
    backups: backups::BackupBoard,
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
    lock_any(db)
}

/// A mutex's guard; a poisoned mutex (a panic elsewhere) is still used: every value behind
/// these locks stays consistent between statements.
fn lock_any<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let secrets = config.load_secrets_identity()?;
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
            host_locks: HostLocks::default(),
            in_use: Arc::default(),
            validator: options
                .validator
                .map(|exe| validator::Validator::new(exe, &config.validation)),
            latest_tip: Arc::default(),
            inventory: Arc::default(),
            secrets,
            alerts: Arc::default(),
            backups: Arc::default(),
            config,
        };
        // The whole chain first (kept), then the head: carrying the kept status forward to
        // it costs nothing.
        daemon.check_audit_chain();
        daemon.restore_alerts();
        daemon.anchor_audit_head();
        Ok(daemon)
    }

    fn checkouts_dir(&self) -> PathBuf {
        self.config.state_dir.join("checkouts")
    }

    /// The daemon's facts: cached under `<state>/facts`, gathered through its connector.
    fn facts_source(&self, fresh: bool) -> reconcile::FactsSource<'_> {
        reconcile::FactsSource {
            connector: &self.connector,
            cache: crate::facts::cache::FactsCache::new(self.config.state_dir.join("facts")),
            parallel: self.config.parallel as usize,
            fresh,
        }
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
            backups: self.backups.clone(),
        };
        let console = console::ConsoleState {
            db: Arc::new(Mutex::new(lock(&self.db).handle()?)),
            environments: self.config.environments.clone(),
            inventory: self.inventory.clone(),
        };
        let app = AppState {
            metrics: self.metrics.clone(),
            triggers: hook_tx,
            secrets: Arc::new(secrets),
            ready: self.ready.clone(),
            status: Arc::new(status),
            on_refusal: Some(webhook_refusal_alerts(self.alerter.clone())),
            access: http_config::access_rule(&self.config)?,
            console: Some(Arc::new(console)),
        };
        let tls = match &self.config.tls {
            Some(t) => Some(crate::server::tls::acceptor(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut server_stop = stop_rx;
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            let limits = server::Limits::default();
            let served = match tls {
                Some(acceptor) => {
                    server::serve_tls(listener, app, limits, acceptor, shutdown).await
                }
                None => server::serve_with(listener, app, limits, shutdown).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        Ok((task, stop_tx))
    }

    /// Runs until SIGTERM/SIGINT. The runs in flight get [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(self) -> Result<(), DaemonError> {
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

        // Alerts restored from the state about environments no longer managed end now.
        self.resolve_unmanaged_alerts();
        let mut sup = supervisor::Supervisor::start(self);
        let mut wake = Some(Wake::Startup);
        // Active alerts are re-sent when due (each alert's own interval decides), and manual
        // runs recorded by `plumb apply --state` (beside the daemon or while it was down) are
        // looked at: each break-glass run is alerted once.
        let mut resend = tokio::time::interval(ALERT_RESEND_TICK);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim = tokio::time::interval(memory::TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(w) = wake.take() {
                // A fetch is bounded by FETCH_TIMEOUT; a signal does not wait for it.
                let stop = tokio::select! {
                    _ = sup.fetch_and_dispatch(w) => false,
                    _ = term.recv() => true,
                    _ = int.recv() => true,
                };
                if stop {
                    break;
                }
            }
            let retry = sup.retry_at();
            let retry_at = retry.map_or_else(Instant::now, |r| r.0);
            wake = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => { sup.reload(); None }
                _ = resend.tick() => {
                    let d = sup.daemon();
                    d.resend_alerts();
                    d.alert_manual_runs();
                    None
                }
                _ = trim.tick() => { memory::trim(); None }
                Some(ev) = watch_rx.recv() => Some(match ev {
                    crate::source::watch::WatchEvent::RefsChanged => Wake::Push,
                    crate::source::watch::WatchEvent::Poll => Wake::Poll,
                    crate::source::watch::WatchEvent::Triggered => Wake::Webhook,
                }),
                Some(hook) = hook_rx.recv() => {
                    let server::Trigger::Webhook(event) = hook;
                    tracing::info!(event = %event.event, delivery = ?event.delivery, "webhook: fetching");
                    Some(Wake::Webhook)
                }
                _ = tokio::time::sleep_until(retry_at.into()), if retry.is_some() => {
                    retry.map(|r| r.1)
                }
            };
        }
        tracing::info!(grace = ?SHUTDOWN_GRACE, "stopping: letting the runs in flight finish");
        sup.stop().await;
        let _ = stop_tx.send(true);
        let _ = server_task.await;
        tracing::info!("plumb daemon stopped");
        Ok(())
    }

    /// SIGHUP: the config re-read, as a new [`Daemon`] sharing this one's state, metrics,
    /// readiness and host locks; `None` (the running config is kept) when the new one is
    /// invalid. The listen address, state directory and repository need a restart. Each
    /// environment's drift schedule stays with its task.
    fn reloaded(&self) -> Option<Daemon> {
        let new = match DaemonConfig::load(&self.config_path) {
            Ok(new) => new,
            Err((diags, _)) => {
                for d in diags.iter() {
                    tracing::error!(path = %d.path, line = d.line, col = d.col, "{}", d.message);
                }
                tracing::error!("SIGHUP: the new config is invalid; keeping the running one");
                return None;
            }
        };
        let loaded = new
            .trust()
            .map_err(DaemonError::from)
            .and_then(|s| Ok((s, Alerter::new(new.alerts.clone())?)))
            .and_then(|(s, a)| Ok((s, a, new.load_secrets_identity()?)));
        let (signers, alerter, secrets) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "SIGHUP: keeping the running config");
                return None;
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
        let config = DaemonConfig {
            listen: self.config.listen,
            state_dir: self.config.state_dir.clone(),
            repository: self.config.repository.clone(),
            ..new
        };
        tracing::info!("SIGHUP: configuration reloaded");
        Some(Daemon {
            config_path: self.config_path.clone(),
            signers,
            source: self.source.clone(),
            db: self.db.clone(),
            metrics: self.metrics.clone(),
            alerter,
            connector: CachedConnector::new(SshConnector {
                options: config.ssh_options(),
            }),
            ready: self.ready.clone(),
            host_locks: self.host_locks.clone(),
            in_use: self.in_use.clone(),
            validator: self
                .validator
                .as_ref()
                .map(|v| validator::Validator::new(v.exe().to_path_buf(), &config.validation)),
            latest_tip: self.latest_tip.clone(),
            inventory: self.inventory.clone(),
            secrets,
            alerts: self.alerts.clone(),
            backups: self.backups.clone(),
            config,
        })
    }

    /// Verifies the whole audit chain with the daemon key: `plumb_audit_chain_ok`, and a
    /// broken chain keeps `/readyz` failing (the daemon still records, on top of the chain).
    /// The result is kept (for the console and [`Daemon::anchor_audit_head`], which carry it
    /// forward record by record).
    fn check_audit_chain(&self) {
        let status = lock(&self.db).check_chain();
        self.note_chain_status(status, true);
    }

    /// Publishes a chain status: the metric and readiness; logs the verification at start,
    /// and a break found later once (the status stays broken until a restart).
    fn note_chain_status(
        &self,
        status: Result<Option<crate::state::ChainStatus>, crate::state::StateError>,
        at_start: bool,
    ) {
        let report = match status {
            Ok(Some(s)) => s.report,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "cannot read the audit chain to verify it");
                if at_start {
                    self.metrics.set_audit_chain_ok(false);
                    self.ready.set_chain_broken(true);
                }
                return;
            }
        };
        let was_broken = self.ready.chain_broken();
        match report.error_text() {
            None if at_start => {
                tracing::info!(records = report.records, "audit chain verified");
            }
            None => {}
            Some(e) if at_start || !was_broken => {
                tracing::error!(error = %e, code = report.error_code.as_deref().unwrap_or("audit.broken"), "the audit chain is broken: not ready until it is repaired; see `plumb audit verify`");
            }
            Some(_) => {}
        }
        self.metrics.set_audit_chain_ok(report.ok);
        self.ready.set_chain_broken(!report.ok);
    }

    /// Notes `env`'s hosts and labels (for the console), stops reporting the metric series
    /// of hosts that left its inventory and resolves their alerts.
    fn note_inventory(&self, env: &str, hosts: &[crate::render::DesiredHost]) {
        self.metrics
            .retain_hosts(env, hosts.iter().map(|h| h.host.name.as_str()));
        // A host that left the inventory has no condition left to alert about.
        self.resolve_alerts(|k| {
            k.environment.as_deref() == Some(env)
                && k.host
                    .as_deref()
                    .is_some_and(|gone| !hosts.iter().any(|h| h.host.name == gone))
        });
        let entry = hosts
            .iter()
            .map(|h| (h.host.name.clone(), h.host.labels.clone()))
            .collect();
        lock_any(&self.inventory).insert(env.to_string(), entry);
    }

    /// After a record: the kept chain status carried forward (metric, readiness), and the
    /// chain's head to `/metrics` and the configured head file.
    fn anchor_audit_head(&self) {
        // The new records verified as they are written: the console's audit page and
        // `plumb_audit_chain_ok` then cost nothing, and a break (a truncation to nothing
        // too) shows at once.
        let status = lock(&self.db).chain_status();
        self.note_chain_status(status, false);
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

    /// Removes checkouts no environment needs any more: every environment's last applied
    /// commit, the commits environments are working on now and the newest tip stay.
    fn prune_checkouts(&self) {
        let mut keep: BTreeSet<String> = lock_any(&self.in_use).values().cloned().collect();
        keep.extend(lock_any(&self.latest_tip).map(|t| t.to_string()));
        for env in &self.config.environments {
            match lock(&self.db).last_applied(env) {
                Ok(Some(l)) => {
                    keep.insert(l.commit);
                }
                Ok(None) => {}
                // Unsure what is needed: remove nothing.
                Err(_) => return,
            }
        }
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
            signer: None,
            subject: None,
            status: crate::alert::AlertStatus::Firing,
            ends_at: None,
        });
    })
}

fn signer_of(s: &crate::source::signature::Signer) -> state::Signer {
    state::Signer {
        principal: s.principal.clone(),
        fingerprint: s.fingerprint.clone(),
    }
}
