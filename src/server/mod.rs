//! The daemon's HTTP server: probes, metrics, webhooks and a read-only status API.
//!
//! | route                   | answer                                                        |
//! |-------------------------|---------------------------------------------------------------|
//! | `GET /healthz`          | 200 while the process serves                                  |
//! | `GET /readyz`           | 200 once the first fetch + verify completed and the audit chain verified at start-up, else 503 |
//! | `GET /metrics`          | OpenMetrics text ([`metrics::CONTENT_TYPE`])                  |
//! | `POST /hooks/github`    | `X-Hub-Signature-256`; push → 202 + trigger, ping → 200       |
//! | `POST /hooks/generic`   | `X-Plumb-Signature`; → 202 + trigger                          |
//! | `GET /api/status`       | [`StatusSource::status`]                                      |
//! | `GET /api/runs`         | `?env=&host=&commit=&signer=&kind=&result=&since=&until=&limit=` → [`StatusSource::runs`] |
//! | `GET /api/runs/{id}`    | [`StatusSource::run`], 404 when unknown                       |
//! | `GET /api/drift`        | `?env=&host=&status=open\|resolved\|all&since=&until=&limit=` → [`StatusSource::drift`] |
//!
//! Query parameters are parsed by [`crate::state::filter`]: an unknown, repeated or
//! malformed one is answered 400 `bad_query` naming it, never ignored.
//!
//! **Webhooks only wake the reconcile loop.** Their payload is never trusted for what to
//! apply: the loop fetches the branch and verifies every new commit's signature itself. A
//! webhook's HMAC (`sha256=<hex>` of the raw body, keyed by the configured secret) is checked in
//! constant time; a bad or missing one is answered 401, triggers nothing and counts in
//! `plumb_signature_refusals_total{source="webhook"}`. A hook with no secret configured is
//! disabled (404). Bodies are limited to [`MAX_BODY_BYTES`] (413 beyond).
//!
//! **Triggers** go through a `tokio::sync::mpsc::Sender<Trigger>` the daemon's loop receives
//! from. The server never waits on it: when the channel is full a reconcile is already pending,
//! which will fetch the newest tip anyway, so the hook is coalesced into it (still 202). Create
//! the channel with a small capacity (1 coalesces best). A closed channel answers 503.
//!
//! **Connections** are bounded ([`Limits`]): a cap on concurrent connections, a header-read
//! timeout from accept and an idle timeout between requests; a client that connects and
//! sends nothing is dropped.
//!
//! **Status** comes from a [`StatusSource`], which the daemon implements over its state
//! database; its (blocking) methods run on tokio's blocking pool.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

pub mod access;
pub mod console;
pub mod limits;
pub mod metrics;
pub mod tls;

pub use access::{AccessRule, Principal};
pub use console::{ConsoleSource, Page};
pub use limits::Limits;
pub use metrics::{Metrics, RefusalSource, RunResult};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `GET /api/runs` returns this many runs unless `limit` says otherwise.
pub const DEFAULT_RUNS_LIMIT: usize = 20;
/// The largest `limit` accepted by `GET /api/runs`.
pub const MAX_RUNS_LIMIT: usize = 1000;

/// Which webhook endpoint a trigger came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookSource {
    GitHub,
    Generic,
}

/// A verified webhook request. Hints only: the loop fetches and verifies on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub source: HookSource,
    /// `X-GitHub-Event` (e.g. `push`), or `generic`.
    pub event: String,
    /// `X-GitHub-Delivery`, for logs.
    pub delivery: Option<String>,
    /// The pushed ref (`refs/heads/main`), when the payload says.
    pub git_ref: Option<String>,
    /// The pushed tip, when the payload says.
    pub after: Option<String>,
}

/// Why the reconcile loop should run now. The daemon may send its own variants' worth of
/// reasons through the same channel (timers, file watches) by extending this enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Webhook(HookEvent),
}

/// Webhook HMAC secrets. Several per hook may be set (rotation): any one of them matches.
/// An empty list disables that hook.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    pub github: Vec<Vec<u8>>,
    pub generic: Vec<Vec<u8>>,
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("github", &format_args!("[{} redacted]", self.github.len()))
            .field(
                "generic",
                &format_args!("[{} redacted]", self.generic.len()),
            )
            .finish()
    }
}

/// Set once the first fetch and verify completed; `GET /readyz` reads it. A broken audit
/// chain (found at start-up) keeps the daemon unready whatever else happens.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    chain_broken: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    /// Marks the audit chain broken (or repaired).
    pub fn set_chain_broken(&self, broken: bool) {
        self.chain_broken.store(broken, Ordering::Release);
    }
    pub fn chain_broken(&self) -> bool {
        self.chain_broken.load(Ordering::Acquire)
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.chain_broken()
    }
}

/// Why a status query failed. `code()` is stable; it is also the `error.code` of the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// Unknown environment or run (404).
    #[error("{0}")]
    NotFound(String),
    /// The state is not available yet, or the database is busy (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500; the message is logged, not returned).
    #[error("{0}")]
    Internal(String),
}

impl StatusError {
    pub fn code(&self) -> &'static str {
        match self {
            StatusError::NotFound(_) => "not_found",
            StatusError::Unavailable(_) => "unavailable",
            StatusError::Internal(_) => "internal",
        }
    }
}

/// `GET /api/drift` parameters, checked; `limit` is always set (1..=[`MAX_RUNS_LIMIT`]).
pub use crate::state::DriftFilter as DriftQuery;
/// `GET /api/runs` parameters, checked; `limit` is always set (1..=[`MAX_RUNS_LIMIT`]).
pub use crate::state::RunFilter as RunsQuery;

/// Read-only state for the API, implemented by the daemon over its state database. Methods
/// may block (they run on tokio's blocking pool). The JSON shapes are the daemon's to define.
pub trait StatusSource: Send + Sync + 'static {
    /// Per environment: last applied commit and signer, last run, drift summary, suspended...
    fn status(&self) -> Result<Value, StatusError>;
    /// Runs, newest first.
    fn runs(&self, query: &RunsQuery) -> Result<Value, StatusError>;
    /// One run with its per-host, per-step results; `None` when there is no such run.
    fn run(&self, id: &str) -> Result<Option<Value>, StatusError>;
    /// Drift findings, open and resolved, newest first.
    fn drift(&self, query: &DriftQuery) -> Result<Value, StatusError>;
}

/// Called with the hook name and the refusal code of a refused webhook request.
pub type RefusalHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub triggers: mpsc::Sender<Trigger>,
    pub secrets: Arc<WebhookSecrets>,
    pub ready: Readiness,
    pub status: Arc<dyn StatusSource>,
    /// Called for every refused webhook request with the hook name and the refusal code
    /// (the daemon raises an alert from it).
    pub on_refusal: Option<RefusalHook>,
    /// Who may read the console, `/api/*` and `/metrics`.
    pub access: AccessRule,
    /// The console's pages; `None`: no console (its routes answer 404).
    pub console: Option<console::Console>,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("secrets", &self.secrets)
            .field("ready", &self.ready.is_ready())
            .finish_non_exhaustive()
    }
}

/// The daemon's router. The console, `/api/*` and `/metrics` follow the access rule;
/// probes and webhooks (HMAC) do not. Every answer gets the security headers.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(api_status))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{id}", get(api_run))
        .route("/api/drift", get(api_drift))
        .route_layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            access::require,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/hooks/github", post(hook_github))
        .route("/hooks/generic", post(hook_generic))
        .merge(protected)
        .merge(console::routes(&state))
        .layer(axum::middleware::from_fn(access::security_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the router on `listener` until `shutdown` resolves, with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Limits::default(), shutdown).await
}

/// Serves the router on `listener` until `shutdown` resolves: at most
/// `limits.max_connections` connections at once, each dropped when no complete request
/// arrives within the header timeout (after accept) or the idle timeout (after a response).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = limits::GuardedListener::new(listener, limits);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Like [`serve_with`], over TLS (`tls::acceptor`).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tls::TlsListener::new(limits::GuardedListener::new(listener, limits), acceptor);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, code: &str, message: impl fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message.to_string() } })),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.chain_broken() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_chain_broken",
            "the audit chain failed verification at start-up: run `plumb audit verify` (see the daemon log)",
        );
    }
    if s.ready.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the first fetch and verify has not completed",
        )
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot encode metrics",
            )
        }
    }
}

/// Why a webhook signature was refused. `code()` is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature header")]
    Missing,
    #[error("malformed signature header (expected sha256=<64 hex digits>)")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Checks `sha256=<hex>` against HMAC-SHA256(secret, body) for each secret, in constant time.
pub fn verify_signature(
    secrets: &[Vec<u8>],
    header: Option<&HeaderValue>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_sig = header
        .to_str()
        .ok()
        .and_then(|h| h.trim().strip_prefix("sha256="))
        .ok_or(SignatureError::Malformed)?;
    let sig = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    if sig.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let mut matched = false;
    for secret in secrets {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            continue;
        };
        mac.update(body);
        // Every secret is tried, so timing does not tell which one matched.
        matched |= mac.verify_slice(&sig).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}

/// Checks a hook's signature; on failure counts the refusal and returns the answer to give.
fn authenticate(
    s: &AppState,
    hook: &str,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    header_name: &str,
    body: &[u8],
) -> Option<Response> {
    if secrets.is_empty() {
        return Some(error(
            StatusCode::NOT_FOUND,
            "hook_disabled",
            format!("the {hook} webhook has no secret configured"),
        ));
    }
    let e = verify_signature(secrets, headers.get(header_name), body).err()?;
    s.metrics.signature_refused(None, RefusalSource::Webhook);
    if let Some(f) = &s.on_refusal {
        f(hook, e.code());
    }
    tracing::warn!(
        hook,
        code = e.code(),
        delivery = header_str(headers, "x-github-delivery")
            .as_deref()
            .unwrap_or(""),
        "webhook refused: {e}"
    );
    Some(error(StatusCode::UNAUTHORIZED, e.code(), e))
}

/// `ref` and `after` of a JSON payload, when it is one.
fn push_hints(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Push {
        #[serde(rename = "ref")]
        git_ref: Option<String>,
        after: Option<String>,
    }
    match serde_json::from_slice::<Push>(body) {
        Ok(p) => (p.git_ref, p.after),
        Err(_) => (None, None),
    }
}

fn send_trigger(s: &AppState, trigger: Trigger) -> Response {
    match s.triggers.try_send(trigger) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "status": "triggered" }))).into_response(),
        Err(mpsc::error::TrySendError::Full(t)) => {
            tracing::debug!(trigger = ?t, "reconcile already pending: webhook coalesced");
            (StatusCode::ACCEPTED, Json(json!({ "status": "coalesced" }))).into_response()
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            tracing::error!("webhook accepted but the reconcile loop is gone");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "loop_stopped",
                "the reconcile loop is not running",
            )
        }
    }
}

async fn hook_github(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let secrets = Arc::clone(&s.secrets);
    if let Some(r) = authenticate(
        &s,
        "github",
        &secrets.github,
        &headers,
        "x-hub-signature-256",
        &body,
    ) {
        return r;
    }
    let Some(event) = header_str(&headers, "x-github-event") else {
        return error(
            StatusCode::BAD_REQUEST,
            "event_missing",
            "missing X-GitHub-Event header",
        );
    };
    let delivery = header_str(&headers, "x-github-delivery");
    match event.as_str() {
        "ping" => {
            tracing::info!(delivery = delivery.as_deref().unwrap_or(""), "github ping");
            Json(json!({ "status": "pong" })).into_response()
        }
        "push" => {
            let (git_ref, after) = push_hints(&body);
            tracing::info!(
                delivery = delivery.as_deref().unwrap_or(""),
                git_ref = git_ref.as_deref().unwrap_or(""),
                "github push: triggering a reconcile"
            );
            send_trigger(
                &s,
                Trigger::Webhook(HookEvent {
                    source: HookSource::GitHub,
                    event,
                    delivery,
                    git_ref,
                    after,
                }),
            )
        }
        _ => Json(json!({ "status": "ignored", "event": event })).into_response(),
    }
}

async fn hook_generic(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let secrets = Arc::clone(&s.secrets);
    if let Some(r) = authenticate(
        &s,
        "generic",
        &secrets.generic,
        &headers,
        "x-plumb-signature",
        &body,
    ) {
        return r;
    }
    let (git_ref, after) = push_hints(&body);
    tracing::info!("generic webhook: triggering a reconcile");
    send_trigger(
        &s,
        Trigger::Webhook(HookEvent {
            source: HookSource::Generic,
            event: "generic".into(),
            delivery: None,
            git_ref,
            after,
        }),
    )
}

/// Runs a status query on the blocking pool and answers with its JSON or its error.
async fn query<F>(s: &AppState, f: F) -> Response
where
    F: FnOnce(&dyn StatusSource) -> Result<Option<Value>, StatusError> + Send + 'static,
{
    let source = Arc::clone(&s.status);
    let res = tokio::task::spawn_blocking(move || f(source.as_ref())).await;
    match res {
        Ok(Ok(Some(v))) => Json(v).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "not_found", "no such run"),
        Ok(Err(e)) => {
            let status = match e {
                StatusError::NotFound(_) => StatusCode::NOT_FOUND,
                StatusError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                StatusError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if let StatusError::Internal(m) = &e {
                tracing::error!(error = %m, "status query failed");
                return error(status, e.code(), "internal error (see the daemon log)");
            }
            error(status, e.code(), e)
        }
        Err(e) => {
            tracing::error!(error = %e, "status query panicked");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error (see the daemon log)",
            )
        }
    }
}

/// Query parameters as `name=value` pairs, in order (so a repeated one is seen).
type Pairs = Vec<(String, String)>;

fn bad_query(e: QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
}

fn filter_limits() -> crate::state::FilterLimits {
    crate::state::FilterLimits {
        default_limit: DEFAULT_RUNS_LIMIT,
        max_limit: MAX_RUNS_LIMIT,
        now_ms: crate::state::now_ms(),
    }
}

async fn api_status(State(s): State<AppState>) -> Response {
    query(&s, |src| src.status().map(Some)).await
}

async fn api_runs(
    State(s): State<AppState>,
    params: Result<Query<Pairs>, QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    match RunsQuery::from_pairs(&p, filter_limits()) {
        Ok(q) => query(&s, move |src| src.runs(&q).map(Some)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.code(), e),
    }
}

async fn api_run(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    query(&s, move |src| src.run(&id)).await
}

async fn api_drift(
    State(s): State<AppState>,
    params: Result<Query<Pairs>, QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    match DriftQuery::from_pairs(&p, filter_limits()) {
        Ok(q) => query(&s, move |src| src.drift(&q).map(Some)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.code(), e),
    }
}

#[cfg(test)]
mod tests;
