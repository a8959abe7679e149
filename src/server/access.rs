//! Who may read the console, the JSON API and the metrics.
//!
//! - **Open** ([`AccessRule::Open`]): only when the daemon listens on a loopback address and no
//!   access is configured (the daemon refuses any other address without access and TLS).
//! - **Protected**: a request passes with `Authorization: Bearer <token>` (the token file's
//!   contents, compared through SHA-256 so timing says nothing of the token), or with a
//!   session cookie from the login form (a user and password checked against its argon2
//!   hash, or the token). Sessions are random 256-bit ids kept in memory (at most
//!   [`MAX_SESSIONS`], each valid [`SESSION_TTL`]); the cookie is `HttpOnly`,
//!   `SameSite=Strict`, and `Secure` when the daemon serves TLS or sits behind a TLS proxy.
//!
//! `/healthz`, `/readyz` and the webhooks (HMAC) are outside this rule. Every answer carries
//! a strict Content-Security-Policy, `X-Frame-Options: DENY` and `nosniff`
//! ([`security_headers`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore as _;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Sessions kept at once; a login past it first drops expired ones, then is refused.
pub const MAX_SESSIONS: usize = 1024;
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "plumb_session";

/// The Content-Security-Policy of every answer: nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A user of the login form.
#[derive(Clone)]
pub struct User {
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$...`), checked when the config is loaded.
    pub password_hash: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The protected mode's credentials and sessions.
pub struct Access {
    /// SHA-256 of the bearer token, when one is configured.
    token_hash: Option<[u8; 32]>,
    users: Vec<User>,
    /// Cookies get `Secure` (the daemon serves TLS, or a TLS proxy is in front).
    pub secure_cookies: bool,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    expires: Instant,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token_hash.map(|_| "[redacted]"))
            .field("users", &self.users)
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

/// Who a request is, once it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Open mode (loopback, no access configured).
    Anonymous,
    Token,
    User(String),
}

/// The access rule of the console, the API and the metrics.
#[derive(Debug, Clone)]
pub enum AccessRule {
    Open,
    Protected(Arc<Access>),
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Access {
    pub fn new(token: Option<&str>, users: Vec<User>, secure_cookies: bool) -> Access {
        Access {
            token_hash: token.map(|t| sha256(t.trim().as_bytes())),
            users,
            secure_cookies,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn token_matches(&self, presented: &str) -> bool {
        self.token_hash
            .is_some_and(|h| h == sha256(presented.trim().as_bytes()))
    }

    /// The user a name and password belong to; argon2 for users, the token as a password too.
    pub fn check_login(&self, user: &str, password: &str) -> Option<Principal> {
        if let Some(u) = self.users.iter().find(|u| u.name == user) {
            let hash = PasswordHash::new(&u.password_hash).ok()?;
            return Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
                .then(|| Principal::User(u.name.clone()));
        }
        (user.is_empty() && self.token_matches(password)).then_some(Principal::Token)
    }

    /// A new session for `who`; `None` when [`MAX_SESSIONS`] live sessions exist.
    pub fn open_session(&self, who: &Principal) -> Option<String> {
        let mut sessions = self.sessions();
        let now = Instant::now();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            return None;
        }
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let user = match who {
            Principal::User(u) => u.clone(),
            Principal::Token | Principal::Anonymous => String::new(),
        };
        sessions.insert(
            hex::encode(sha256(id.as_bytes())),
            Session {
                user,
                expires: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    pub fn close_session(&self, id: &str) {
        self.sessions().remove(&hex::encode(sha256(id.as_bytes())));
    }

    fn session(&self, id: &str) -> Option<Principal> {
        let key = hex::encode(sha256(id.as_bytes()));
        let mut sessions = self.sessions();
        let s = sessions.get(&key)?.clone();
        if s.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        Some(if s.user.is_empty() {
            Principal::Token
        } else {
            Principal::User(s.user)
        })
    }

    /// Who the request's credentials name, if anyone.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Principal> {
        if let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(token) = auth.strip_prefix("Bearer ") {
                return self.token_matches(token).then_some(Principal::Token);
            }
        }
        session_cookie(headers).and_then(|id| self.session(&id))
    }

    /// The `Set-Cookie` value of a new session.
    pub fn cookie(&self, id: &str) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }
}

/// The session id of the request's cookie.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a request wants a page (then a refusal redirects to the login form) rather than
/// data (then it is a 401).
fn wants_page(req: &Request) -> bool {
    let path = req.uri().path();
    let api = path.starts_with("/api/") || path == "/metrics";
    !api && req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Middleware: a request without valid credentials gets 401 (data) or a redirect to the
/// login form (pages); a valid one goes on with its [`Principal`] as an extension.
pub async fn require(State(rule): State<AccessRule>, mut req: Request, next: Next) -> Response {
    let who = match &rule {
        AccessRule::Open => Some(Principal::Anonymous),
        AccessRule::Protected(access) => access.authenticate(req.headers()),
    };
    match who {
        Some(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        None if wants_page(&req) => {
            let next_path = login_next(req.uri().path());
            let location = format!("/login?next={}", urlencode(&next_path));
            (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"plumb\"")],
            Json(json!({"error": {"code": "unauthorized", "message": "a bearer token or a session is required"}})),
        )
            .into_response(),
    }
}

/// Where to go after logging in: a local path only (never another site).
pub fn login_next(path: &str) -> String {
    let local = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.len() <= 512
        && !path.chars().any(char::is_control);
    if local {
        path.to_string()
    } else {
        "/".to_string()
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Middleware: the security headers of every answer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};

    fn hash(pw: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(pw.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    fn access() -> Access {
        Access::new(
            Some("s3cret-token\n"),
            vec![User {
                name: "alice".into(),
                password_hash: hash("correct horse"),
            }],
            true,
        )
    }

    #[test]
    fn tokens_users_and_sessions() {
        let a = access();
        let mut h = HeaderMap::new();
        assert_eq!(a.authenticate(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert_eq!(a.authenticate(&h), None);
        h.insert(
            header::AUTHORIZATION,
            "Bearer s3cret-token".parse().unwrap(),
        );
        assert_eq!(a.authenticate(&h), Some(Principal::Token));

        assert_eq!(a.check_login("alice", "wrong"), None);
        assert_eq!(a.check_login("bob", "correct horse"), None);
        let alice = a.check_login("alice", "correct horse").expect("alice");
        assert_eq!(alice, Principal::User("alice".into()));
        assert_eq!(a.check_login("", "s3cret-token"), Some(Principal::Token));

        let id = a.open_session(&alice).expect("session");
        let cookie = a.cookie(&id);
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(cookie.contains(flag), "{cookie}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(a.authenticate(&h), Some(alice));
        a.close_session(&id);
        assert_eq!(a.authenticate(&h), None, "closed");
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            format!("{COOKIE}={}", "0".repeat(64)).parse().unwrap(),
        );
        assert_eq!(a.authenticate(&forged), None);
    }

    #[test]
    fn sessions_are_bounded() {
        let a = Access::new(Some("t"), vec![], false);
        for _ in 0..MAX_SESSIONS {
            assert!(a.open_session(&Principal::Token).is_some());
        }
        assert_eq!(a.open_session(&Principal::Token), None);
        assert!(!a.cookie("x").contains("Secure"));
    }

    #[test]
    fn login_redirects_stay_on_this_site() {
        assert_eq!(login_next("/runs/01ABC"), "/runs/01ABC");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(login_next(bad), "/", "{bad:?}");
        }
        assert_eq!(urlencode("/a b?c"), "/a%20b%3Fc");
    }
}
