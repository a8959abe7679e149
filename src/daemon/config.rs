//! `plumb daemon --config F`: the daemon's own settings (YAML, with a schema).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::yaml::{Node, Pos};
use crate::model::HumanDuration;

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
    /// The trust root for SSH signatures: git's allowed-signers file
    /// (`gpg.ssh.allowedSignersFile` format). At least one of this and `openpgp_keyring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers: Option<PathBuf>,
    /// The trust root for OpenPGP signatures: an armored public keyring
    /// (`gpg --export --armor`), outside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openpgp_keyring: Option<PathBuf>,
    /// Who may sign `Plumb-Seal:` commits: allowed-signers lines and/or OpenPGP fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_signers: Option<PathBuf>,
    /// Follow the newest signed tag matching a pattern instead of `branch`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowRef>,
    /// Credentials for fetching `repository` (deploy key and known_hosts, or a token file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_auth: Option<crate::source::RepositoryAuth>,
    /// Environments to manage (directories under `environments/`).
    #[schemars(length(min = 1))]
    pub environments: Vec<String>,
    /// State (mirror, database, daemon key).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// HTTP listen address (health, metrics, webhooks, API).
    #[serde(default = "default_listen")]
    #[schemars(with = "String", example = &"127.0.0.1:9940")]
    pub listen: SocketAddr,
    /// How often to poll a remote repository ("60s"); local repositories are watched.
    #[serde(default = "default_poll")]
    pub poll_interval: HumanDuration,
    /// Overrides every environment's `drift.interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_interval: Option<HumanDuration>,
    /// Webhook secrets (HMAC-SHA256 keys).
    #[serde(default)]
    pub webhooks: Webhooks,
    /// Where alerts go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::alert::Sink>,
    /// How often alerts still firing are re-sent to Alertmanager ("5m"); each is sent with
    /// an `endsAt` four intervals ahead, so an alert plumb stops re-sending ends by itself.
    #[serde(default = "default_alert_resend")]
    pub alert_resend_interval: HumanDuration,
    /// Where people reach this daemon's console (http or https, e.g.
    /// `https://plumb.example.com`): every alert links to its run or host page there.
    /// Unset: `http://<listen>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
    /// How to reach hosts.
    #[serde(default)]
    pub ssh: SshConfig,
    /// Hosts applied at once when a wave sets no `max_parallel`.
    #[serde(default = "default_parallel")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallel: u32,
    /// HTTPS served by the daemon (needed on a non-loopback `listen` without a TLS proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::http_config::TlsConfig>,
    /// A proxy in front terminates TLS (so a non-loopback `listen` may serve plain HTTP to it).
    #[serde(default)]
    pub behind_tls_proxy: bool,
    /// Who may read the console, `/api/*` and `/metrics` (needed on a non-loopback `listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<super::http_config::AccessConfig>,
    /// Limits for validating each new commit, in a child process, before it is loaded.
    #[serde(default)]
    pub validation: ValidationLimits,
    /// Where the audit chain's head is anchored besides `/metrics` and alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditConfig>,
    /// The age identity (or unencrypted ssh-ed25519 key) that decrypts the repo's secrets;
    /// outside the repo, readable only by the daemon's user (a group- or world-readable file
    /// is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_identity: Option<PathBuf>,
    /// Guardrails: the operator's Rego policies (outside the repo: the repo cannot weaken
    /// them) and who may override an overridable rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<PoliciesConfig>,
}

/// `policies:` in the daemon config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directories of `.rego` files (packages under `plumb`), read at every reconcile; the
    /// repo's `policies/*.rego` apply too, in an engine of their own.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Principals (allowed-signers names or OpenPGP user ids, as the commit's signer is
    /// recorded) whose signed `Plumb-Override: <rule> <reason>` trailer lifts an overridable
    /// denial.
    #[serde(default)]
    pub approvers: Vec<String>,
}

impl DaemonConfig {
    /// Loads `secrets_identity` (its mode checked), when set.
    pub fn load_secrets_identity(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::secrets::SecretIdentity>>, crate::secrets::SecretError>
    {
        self.secrets_identity
            .as_deref()
            .map(crate::secrets::SecretIdentity::load)
            .transpose()
            .map(|id| id.map(std::sync::Arc::new))
    }
}

/// `validation:` in the daemon config. A commit's templates run before anything else sees
/// it; these bound what a hostile or broken commit can cost the daemon's machine.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationLimits {
    /// Address space the validating process may use ("2GiB"); past it the commit is
    /// refused with reason `limit`.
    #[serde(default = "default_validation_memory")]
    pub memory_limit: crate::model::ByteSize,
    /// How long validating one commit may take ("2m", CPU and wall clock).
    #[serde(default = "default_validation_timeout")]
    pub timeout: HumanDuration,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        ValidationLimits {
            memory_limit: default_validation_memory(),
            timeout: default_validation_timeout(),
        }
    }
}

fn default_validation_memory() -> crate::model::ByteSize {
    crate::model::ByteSize::from_mib(2048)
}
fn default_validation_timeout() -> HumanDuration {
    HumanDuration::from_secs(120)
}

/// `ref:` in the daemon config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowRef {
    /// A glob over tag names (`*`, `?`), e.g. `v*`: the newest matching tag (by tagger time)
    /// is deployed; its signature and every commit since the last applied one are verified.
    #[schemars(length(min = 1))]
    pub tags: String,
}

impl DaemonConfig {
    /// What to deploy: `ref: {tags: ...}` or the branch.
    pub fn follow(&self) -> crate::source::tags::Follow {
        match &self.follow {
            Some(f) => crate::source::tags::Follow::Tags(f.tags.clone()),
            None => crate::source::tags::Follow::Branch(self.branch.clone()),
        }
    }

    /// Loads the trust roots (allowed signers, OpenPGP keyring, seal signers).
    pub fn trust(&self) -> Result<crate::source::Trust, crate::source::SourceError> {
        crate::source::Trust::load(
            self.allowed_signers.as_deref(),
            self.openpgp_keyring.as_deref(),
            self.seal_signers.as_deref(),
        )
    }
}

/// `audit:` in the daemon config.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file the daemon appends `<seq> <hash>` to after each audit record, e.g. on a
    /// filesystem another machine collects (an anchor for `plumb audit verify --expect-head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_file: Option<PathBuf>,
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
    pub connect_timeout: HumanDuration,
    /// Longest each phase's round trip to one host may take (`observe`, `apply`, `verify`);
    /// past it that host fails and the others go on.
    #[serde(default)]
    pub timeouts: crate::transport::PhaseTimeouts,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            config_file: None,
            identity_file: None,
            known_hosts_file: None,
            connect_timeout: default_connect_timeout(),
            timeouts: crate::transport::PhaseTimeouts::default(),
        }
    }
}

fn default_branch() -> String {
    "main".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/plumb")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9940))
}
fn default_alert_resend() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_poll() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_parallel() -> u32 {
    10
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// The trust-root files exist; at least one of allowed_signers and openpgp_keyring is given.
fn check_trust_files(
    config: &DaemonConfig,
    label: &str,
    at: &dyn Fn(&str) -> Pos,
    diags: &mut Diagnostics,
) {
    if config.allowed_signers.is_none() && config.openpgp_keyring.is_none() {
        diags.push(
            Diagnostic::error("config", label, at(""), "no trust root: neither allowed_signers nor openpgp_keyring is set")
                .with_hint("set allowed_signers: (SSH signatures) and/or openpgp_keyring: (OpenPGP signatures)"),
        );
    }
    for (i, dir) in config
        .policies
        .iter()
        .flat_map(|p| p.dirs.iter())
        .enumerate()
    {
        if !dir.is_dir() {
            diags.push(
                Diagnostic::error(
                    "config",
                    label,
                    at(&format!("/policies/dirs/{i}")),
                    format!("policies directory {} does not exist", dir.display()),
                )
                .with_hint("create it with the operator's .rego files, or remove the entry"),
            );
        }
    }
    for (field, file, hint) in [
        ("allowed_signers", &config.allowed_signers, "create it in git's allowed-signers format: `<principal> <key type> <base64 key>` per line"),
        ("openpgp_keyring", &config.openpgp_keyring, "export the signers' keys: `gpg --export --armor FINGERPRINT... > FILE`"),
        ("seal_signers", &config.seal_signers, "list allowed-signers lines and/or OpenPGP fingerprints, one a line"),
    ] {
        if let Some(f) = file {
            if !f.is_file() {
                diags.push(
                    Diagnostic::error("config", label, at(&format!("/{field}")), format!("{field} file {} does not exist", f.display()))
                        .with_hint(hint),
                );
            }
        }
    }
}

/// Durations that must not be zero (a zero poll interval would spin; a zero timeout fails
/// every attempt). JSON pointers into the config; `*` is any index of a list.
const NONZERO_DURATIONS: [&str; 6] = [
    "/poll_interval",
    "/alert_resend_interval",
    "/validation/timeout",
    "/drift_interval",
    "/ssh/connect_timeout",
    "/alerts/*/timeout",
];

/// The nodes a pointer with `*` wildcards names, with their concrete pointers.
fn nodes_at<'a>(node: &'a Node, pointer: &str) -> Vec<(String, &'a Node)> {
    let mut found = vec![(String::new(), node)];
    for token in pointer.split('/').skip(1) {
        let mut next = Vec::new();
        for (path, n) in found {
            if token == "*" {
                for (i, item) in n.as_seq().unwrap_or_default().iter().enumerate() {
                    next.push((format!("{path}/{i}"), item));
                }
            } else if let Some(child) = n.get(token) {
                next.push((format!("{path}/{token}"), child));
            }
        }
        found = next;
    }
    found
}

/// Typed checks of the values the schema only checks by shape: each duration parses (and is
/// not zero), `listen` is an address. Every problem is located.
fn check_values(node: &Node, label: &str, diags: &mut Diagnostics) {
    for pattern in NONZERO_DURATIONS {
        for (pointer, n) in nodes_at(node, pattern) {
            let Some(text) = n.as_str() else { continue };
            let problem = match text.parse::<HumanDuration>() {
                Ok(d) if d.is_zero() => format!("`{text}` must be longer than zero"),
                Ok(_) => continue,
                Err(e) => e.to_string(),
            };
            diags.push(
                Diagnostic::error("config", label, n.pos, format!("{pointer}: {problem}"))
                    .with_hint("write a number and a unit, e.g. 500ms, 30s, 5m, 2h"),
            );
        }
    }
    if let Some(listen) = node.get("listen") {
        let text = listen.as_str().unwrap_or_default();
        if text.parse::<SocketAddr>().is_err() {
            diags.push(
                Diagnostic::error(
                    "config",
                    label,
                    listen.pos,
                    format!("`{text}` is not an address:port"),
                )
                .with_hint("e.g. 127.0.0.1:9940 or [::1]:9940"),
            );
        }
    }
}

impl DaemonConfig {
    pub fn poll(&self) -> Duration {
        self.poll_interval.get()
    }

    /// How the daemon reaches hosts: a hung host is bounded by `ssh.timeouts` per phase.
    pub fn ssh_options(&self) -> crate::transport::SshOptions {
        crate::transport::SshOptions {
            config_file: self.ssh.config_file.clone(),
            identity_file: self.ssh.identity_file.clone(),
            known_hosts_file: self.ssh.known_hosts_file.clone(),
            connect_timeout: self.ssh.connect_timeout.get(),
            timeouts: self.ssh.timeouts,
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
        check_values(&node, &label, &mut diags);
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
        check_trust_files(&config, &label, &at, &mut diags);
        for (i, sink) in config.alerts.iter().enumerate() {
            if let Err(e) = sink.validate() {
                diags.push(Diagnostic::error(
                    "config",
                    &label,
                    at(&format!("/alerts/{i}")),
                    e.to_string(),
                ));
            }
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
        if let Some(u) = &config.external_url {
            let ok = reqwest::Url::parse(u)
                .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host_str().is_some());
            if !ok {
                diags.push(
                    Diagnostic::error(
                        "config",
                        &label,
                        at("/external_url"),
                        format!("external_url `{u}` is not an http or https URL"),
                    )
                    .with_hint(
                        "the console's address as people reach it, e.g. https://plumb.example.com",
                    ),
                );
            }
        }
        super::http_config::check(&config, &label, &at, &mut diags);
        if diags.has_errors() {
            return Err((diags, sources));
        }
        Ok(config)
    }
}
