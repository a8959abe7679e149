//! The daemon config's HTTP exposure: `tls`, `behind_tls_proxy` and `access`. On a loopback
//! address with no access configured the console and the API are open (only this machine
//! reaches them); any other `listen` address needs HTTPS (served by the daemon, or a TLS
//! proxy in front, stated explicitly) and access configured, or the daemon does not start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::yaml::Pos;
use crate::server::access::{Access, User};
use crate::server::AccessRule;

use super::{DaemonConfig, DaemonError};

/// `tls:` — the daemon serves HTTPS with this certificate chain and key (PEM).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `access:` — who may read the console, `/api/*` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// A file holding a bearer token (`Authorization: Bearer <token>`; also accepted as the
    /// password of the login form with an empty user). Readable by its owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Users of the login form, with argon2 password hashes (`$argon2id$...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
}

/// One console user.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An argon2 PHC string, e.g. from `argon2` the command or any argon2 library.
    pub password_hash: String,
}

impl AccessConfig {
    fn configured(&self) -> bool {
        self.token_file.is_some() || !self.users.is_empty()
    }
}

/// Checks the exposure rules and the access settings; every problem is located.
pub(super) fn check(
    config: &DaemonConfig,
    label: &str,
    at: &dyn Fn(&str) -> Pos,
    diags: &mut Diagnostics,
) {
    let access = config.access.as_ref().filter(|a| a.configured());
    if !config.listen.ip().is_loopback() {
        if config.tls.is_none() && !config.behind_tls_proxy {
            diags.push(
                Diagnostic::error("config", label, at("/listen"), format!("`{}` is not a loopback address, and the daemon would serve plain HTTP", config.listen))
                    .with_hint("set `tls: {cert_file, key_file}`, or `behind_tls_proxy: true` when a proxy terminates TLS in front of the daemon"),
            );
        }
        if access.is_none() {
            diags.push(
                Diagnostic::error(
                    "config",
                    label,
                    at("/listen"),
                    format!(
                        "`{}` is not a loopback address, and no access is configured",
                        config.listen
                    ),
                )
                .with_hint(
                    "set `access: {token_file: ...}` or `access: {users: [{name, password_hash}]}`",
                ),
            );
        }
    }
    if let Some(a) = &config.access {
        for (i, u) in a.users.iter().enumerate() {
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                diags.push(
                    Diagnostic::error("config", label, at(&format!("/access/users/{i}/password_hash")), format!("the password hash of user `{}` is not a PHC string", u.name))
                        .with_hint("store an argon2 hash such as `$argon2id$v=19$m=19456,t=2,p=1$...`, never the password"),
                );
            }
        }
        if let Some(f) = &a.token_file {
            if let Err(problem) = check_private_file(f) {
                diags.push(Diagnostic::error(
                    "config",
                    label,
                    at("/access/token_file"),
                    problem,
                ));
            }
        }
    }
    if let Some(t) = &config.tls {
        for (field, f) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if !f.is_file() {
                diags.push(Diagnostic::error(
                    "config",
                    label,
                    at(&format!("/tls/{field}")),
                    format!("{} does not exist", f.display()),
                ));
            }
        }
    }
}

/// A secret file must exist and be readable by its owner only.
fn check_private_file(f: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}): run `chmod 600 {}`",
            f.display(),
            meta.permissions().mode() & 0o777,
            f.display()
        ));
    }
    Ok(())
}

/// The access rule the server applies, with the token read from its file.
pub(super) fn access_rule(config: &DaemonConfig) -> Result<AccessRule, DaemonError> {
    let Some(a) = config.access.as_ref().filter(|a| a.configured()) else {
        return Ok(AccessRule::Open);
    };
    let token = match &a.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(DaemonError::io("reading the access token", f))?;
            if t.trim().is_empty() {
                return Err(DaemonError::io("reading the access token", f)(
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
                ));
            }
            Some(t)
        }
        None => None,
    };
    let users = a
        .users
        .iter()
        .map(|u| User {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
        })
        .collect();
    let secure = config.tls.is_some() || config.behind_tls_proxy;
    Ok(AccessRule::Protected(Arc::new(Access::new(
        token.as_deref(),
        users,
        secure,
    ))))
}
