//! The web console's routes: server-rendered pages (no JavaScript needed; one stylesheet and
//! a few lines of script for auto-refresh, both served from here), and the login form.
//!
//! | route                      | page                                                 |
//! |----------------------------|------------------------------------------------------|
//! | `GET /`                    | fleet: every environment and host (`?label=k=v`)     |
//! | `GET /environments/{env}`  | an environment: its rollouts and runs (`?before=RUN`, `?after=RUN`) |
//! | `GET /runs/{id}`           | a run: per host and step, changes, timings, errors   |
//! | `GET /hosts/{env}/{host}`  | a host: its history and drift (`?before=RUN`, `?after=RUN`) |
//! | `GET /drift`               | drift findings, open and resolved (`?env=`)          |
//! | `GET /commits/{id}`        | where a commit (or a prefix) went                    |
//! | `GET /audit`               | the audit chain: verification and head               |
//! | `GET/POST /login`, `POST /logout` | the login form (protected mode)               |
//!
//! The pages come from a [`ConsoleSource`] (the daemon renders them from its state); this
//! module routes, applies the access rule ([`super::access`]) and sets the headers.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;

use super::access::{self, AccessRule, Principal};
use super::{AppState, StatusError};
pub use crate::state::console::PageAt;

/// A page of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    Fleet {
        label: Option<(String, String)>,
    },
    Environment {
        name: String,
        at: PageAt,
    },
    Run {
        id: String,
    },
    Host {
        env: String,
        name: String,
        at: PageAt,
    },
    Drift {
        env: Option<String>,
    },
    Commit {
        id: String,
    },
    Audit,
}

/// Renders the console's pages (the daemon, from its state). Methods may block.
pub trait ConsoleSource: Send + Sync + 'static {
    /// The page's HTML; `None` when what it names does not exist (404).
    fn page(&self, page: &Page, who: &Principal) -> Result<Option<String>, StatusError>;
    /// The login form, with an error line after a failed attempt.
    fn login(&self, next: &str, failed: bool) -> String;
}

/// The console's stylesheet (one file, no framework).
pub const CSS: &str = include_str!("console.css");
/// Reloads pages marked `data-refresh` every 10 s while visible (the pages work without it).
pub const JS: &str = include_str!("console.js");

/// The console's routes (the pages answer 404 when the daemon has no console source).
pub fn routes(state: &AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/", get(fleet))
        .route("/environments/{env}", get(environment))
        .route("/runs/{id}", get(run))
        .route("/hosts/{env}/{host}", get(host))
        .route("/drift", get(drift))
        .route("/commits/{id}", get(commit))
        .route("/audit", get(audit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            access::require,
        ));
    Router::new()
        .merge(protected)
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
}

#[derive(Debug, Deserialize)]
struct PageParams {
    /// Keyset pagination: the runs older (`before`) or newer (`after`) than this run.
    before: Option<String>,
    after: Option<String>,
    label: Option<String>,
    env: Option<String>,
}

impl PageParams {
    fn at(&self) -> PageAt {
        use crate::state::RunId;
        match (&self.before, &self.after) {
            (Some(id), _) => PageAt::Before(RunId(id.clone())),
            (None, Some(id)) => PageAt::After(RunId(id.clone())),
            (None, None) => PageAt::Newest,
        }
    }
}

async fn render(s: &AppState, page: Page, who: Principal) -> Response {
    let Some(source) = s.console.clone() else {
        return (StatusCode::NOT_FOUND, "the console is not enabled").into_response();
    };
    let res = tokio::task::spawn_blocking(move || source.page(&page, &who)).await;
    match res {
        Ok(Ok(Some(html))) => Html(html).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, Html(not_found())).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, code = e.code(), "console page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (see the daemon log)",
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "console page panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (see the daemon log)",
            )
                .into_response()
        }
    }
}

fn not_found() -> String {
    "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found · plumb</title>\
     <link rel=\"stylesheet\" href=\"/static/console.css\"></head><body><main><h1>Not found</h1>\
     <p><a href=\"/\">Back to the fleet</a></p></main></body></html>"
        .to_string()
}

async fn fleet(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<PageParams>,
) -> Response {
    let label = q.label.and_then(|l| {
        l.split_once('=')
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
    });
    render(&s, Page::Fleet { label }, who).await
}

async fn environment(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<PageParams>,
) -> Response {
    let at = q.at();
    render(&s, Page::Environment { name, at }, who).await
}

async fn run(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    render(&s, Page::Run { id }, who).await
}

async fn host(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((env, name)): Path<(String, String)>,
    Query(q): Query<PageParams>,
) -> Response {
    let at = q.at();
    render(&s, Page::Host { env, name, at }, who).await
}

async fn drift(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<PageParams>,
) -> Response {
    render(&s, Page::Drift { env: q.env }, who).await
}

async fn commit(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    render(&s, Page::Commit { id }, who).await
}

async fn audit(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    render(&s, Page::Audit, who).await
}

#[derive(Debug, Deserialize)]
struct NextParam {
    next: Option<String>,
}

async fn login_form(State(s): State<AppState>, Query(q): Query<NextParam>) -> Response {
    let next = access::login_next(q.next.as_deref().unwrap_or("/"));
    match &s.console {
        Some(c) => Html(c.login(&next, false)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

async fn login(State(s): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let next = access::login_next(form.next.as_deref().unwrap_or("/"));
    let (AccessRule::Protected(a), Some(console)) = (&s.access, &s.console) else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    };
    // argon2 is deliberately slow: verify on the blocking pool.
    let (a2, user, password) = (a.clone(), form.user.clone(), form.password);
    let who = tokio::task::spawn_blocking(move || a2.check_login(&user, &password))
        .await
        .ok()
        .flatten();
    let Some(who) = who else {
        tracing::warn!(user = %form.user.chars().take(64).collect::<String>(), "console login refused");
        return (StatusCode::UNAUTHORIZED, Html(console.login(&next, true))).into_response();
    };
    let Some(id) = a.open_session(&who) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many sessions; try again later",
        )
            .into_response();
    };
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    if let Ok(v) = HeaderValue::from_str(&a.cookie(&id)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    if let AccessRule::Protected(a) = &s.access {
        if let Some(id) = access::session_cookie(&headers) {
            a.close_session(&id);
        }
        if let Ok(v) = HeaderValue::from_str(&a.clear_cookie()) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    res
}

async fn css() -> Response {
    static_asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    static_asset(JS, "text/javascript; charset=utf-8")
}

fn static_asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Shared handle type.
pub type Console = Arc<dyn ConsoleSource>;
