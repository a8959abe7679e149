//! `plumb daemon --config F`: the daemon's own settings (YAML, with a schema).

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::yaml::{Node, Pos};

/// The daemon configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "plumb daemon configuration")]
pub struct DaemonConfig {
    /// The config repo: a local path (a bare or working repository) or a git URL.
    pub repository: String,
    /// The branch to deploy.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The trust root: git's allowed-signers file (`gpg.ssh.allowedSignersFile` format).
    pub allowed_signers: PathBuf,
    /// Environments to manage (directories under `environments/`).
    #[schemars(length(min = 1))]
    pub environments: Vec<String>,
    /// State (mirror, database, daemon key).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// HTTP listen address (health, metrics, webhooks, API).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How often to poll a remote repository ("60s"); local repositories are watched.
    #[serde(default = "default_poll")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub poll_interval: String,
    /// Overrides every environment's `drift.interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub drift_interval: Option<String>,
    /// Webhook secrets (HMAC-SHA256 keys).
    #[serde(default)]
    pub webhooks: Webhooks,
    /// Where alerts go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::alert::Sink>,
    /// How to reach hosts.
    #[serde(default)]
    pub ssh: SshConfig,
    /// Hosts applied at once when a wave sets no `max_parallel`.
    #[serde(default = "default_parallel")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallel: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// File holding the secret for `/hooks/github` (`X-Hub-Signature-256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_secret_file: Option<PathBuf>,
    /// File holding the secret for `/hooks/generic` (`X-Plumb-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub connect_timeout: String,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            config_file: None,
            identity_file: None,
            known_hosts_file: None,
            connect_timeout: default_connect_timeout(),
        }
    }
}

fn default_branch() -> String {
    "main".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/plumb")
}
fn default_listen() -> String {
    "127.0.0.1:9940".into()
}
fn default_poll() -> String {
    "60s".into()
}
fn default_parallel() -> u32 {
    10
}
fn default_connect_timeout() -> String {
    "10s".into()
}

impl DaemonConfig {
    pub fn poll(&self) -> Duration {
        crate::model::parse_duration(&self.poll_interval).unwrap_or(Duration::from_secs(60))
    }

    pub fn ssh_options(&self) -> crate::transport::SshOptions {
        crate::transport::SshOptions {
            config_file: self.ssh.config_file.clone(),
            identity_file: self.ssh.identity_file.clone(),
            known_hosts_file: self.ssh.known_hosts_file.clone(),
            connect_timeout: crate::model::parse_duration(&self.ssh.connect_timeout)
                .unwrap_or(Duration::from_secs(10)),
            control_dir: Some(self.state_dir.join("ssh")),
            ..crate::transport::SshOptions::default()
        }
    }

    /// Reads and checks a config file; every problem is a positioned diagnostic.
    pub fn load(path: &Path) -> Result<DaemonConfig, (Diagnostics, crate::diag::SourceMap)> {
        let label = path.display().to_string();
        let mut diags = Diagnostics::default();
        let mut sources = crate::diag::SourceMap::default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::error(
                    "io",
                    &label,
                    Pos::START,
                    format!("cannot read the daemon config: {e}"),
                ));
                return Err((diags, sources));
            }
        };
        sources.insert(&label, text.clone());
        let node = match Node::parse(&text) {
            Ok(n) => n,
            Err(e) => {
                diags.push(Diagnostic::error("yaml", &label, e.pos, e.message));
                return Err((diags, sources));
            }
        };
        diags.extend(crate::schema::validate(
            crate::schema::Kind::Daemon,
            &node,
            &label,
        ));
        if diags.has_errors() {
            return Err((diags, sources));
        }
        let config: DaemonConfig = match serde_json::from_value(node.to_json()) {
            Ok(c) => c,
            Err(e) => {
                diags.push(Diagnostic::error("schema", &label, node.pos, e.to_string()));
                return Err((diags, sources));
            }
        };
        let at = |p: &str| node.locate(p);
        if !config.allowed_signers.is_file() {
            diags.push(
                Diagnostic::error("config", &label, at("/allowed_signers"), format!("allowed-signers file {} does not exist", config.allowed_signers.display()))
                    .with_hint("create it in git's allowed-signers format: `<principal> <key type> <base64 key>` per line"),
            );
        }
        if config.listen.parse::<std::net::SocketAddr>().is_err() {
            diags.push(
                Diagnostic::error(
                    "config",
                    &label,
                    at("/listen"),
                    format!("`{}` is not an address:port", config.listen),
                )
                .with_hint("e.g. 127.0.0.1:9940"),
            );
        }
        for (field, f) in [
            ("github_secret_file", &config.webhooks.github_secret_file),
            ("generic_secret_file", &config.webhooks.generic_secret_file),
        ] {
            if let Some(f) = f {
                if !f.is_file() {
                    diags.push(Diagnostic::error(
                        "config",
                        &label,
                        at(&format!("/webhooks/{field}")),
                        format!("secret file {} does not exist", f.display()),
                    ));
                }
            }
        }
        if diags.has_errors() {
            return Err((diags, sources));
        }
        Ok(config)
    }
}
