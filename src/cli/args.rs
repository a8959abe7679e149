//! Arguments shared by several commands: the target (repo, environment, host), how hosts
//! are reached, and the output format.

use std::path::PathBuf;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// `--output text|json`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArg {
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// What a command works on: a config repo, one of its environments, optionally some hosts.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The config repo (the directory holding plumb.yaml).
    pub repo: PathBuf,
    /// Environment name (a directory under environments/).
    #[arg(long)]
    pub env: String,
    /// Only these hosts: names or globs (`web-1,db-*`), or a label selector
    /// (`role=web,tier!=canary`). Repeatable (the union). A limit that selects no host is
    /// an error. `--host NAME` is the same.
    #[arg(long, alias = "host", value_name = "LIMIT")]
    pub limit: Vec<crate::limit::Limit>,
    #[command(flatten)]
    pub facts: FactsArgs,
    /// The age identity (or unencrypted ssh-ed25519 key) that decrypts this environment's
    /// secrets; must be readable only by its owner.
    #[arg(long, env = "PLUMB_SECRETS_IDENTITY")]
    pub secrets_identity: Option<PathBuf>,
}

impl Target {
    pub fn limits(&self) -> crate::limit::Limits {
        crate::limit::Limits(self.limit.clone())
    }

    /// The secrets identity, loaded (and its file mode checked) once.
    pub fn identity(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::secrets::SecretIdentity>>> {
        crate::cli::secrets::load_identity(self.secrets_identity.as_deref())
    }
}

/// Where host facts come from when rendering.
#[derive(Debug, Clone, clap::Args)]
pub struct FactsArgs {
    /// Host facts to render with instead of the cache: a YAML or JSON map of host name to
    /// facts, or the output of `plumb facts --output json`.
    #[arg(long = "facts", value_name = "FILE")]
    pub facts_file: Option<PathBuf>,
    /// The facts cache directory (default: $PLUMB_FACTS_CACHE, else
    /// $XDG_CACHE_HOME/plumb/facts, else ~/.cache/plumb/facts).
    #[arg(long, value_name = "DIR")]
    pub facts_cache: Option<PathBuf>,
}

/// How plumb reaches hosts.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Hosts handled at once.
    #[arg(long, default_value_t = 10)]
    pub parallel: usize,
    /// `ssh` (default), or `local` to run every host's steps on this machine.
    #[arg(long, value_enum, default_value_t = Connection::Ssh)]
    pub connection: Connection,
    /// ssh_config file to use instead of ~/.ssh/config.
    #[arg(long, env = "PLUMB_SSH_CONFIG")]
    pub ssh_config: Option<PathBuf>,
    /// Private key to offer.
    #[arg(long, env = "PLUMB_SSH_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// known_hosts file to use instead of ~/.ssh/known_hosts.
    #[arg(long, env = "PLUMB_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Trust unknown host keys on first use (a changed key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Seconds to wait for a host to accept the connection.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Longest a host's probe round trip may take (e.g. 30s, 5m).
    #[arg(long, default_value = "5m")]
    pub observe_timeout: crate::model::HumanDuration,
    /// Longest a host's changes and handlers may take.
    #[arg(long, default_value = "30m")]
    pub apply_timeout: crate::model::HumanDuration,
    /// Added to --apply-timeout for the verifying probes that end the apply's round trip.
    #[arg(long, default_value = "5m")]
    pub verify_timeout: crate::model::HumanDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Connection {
    Ssh,
    Local,
}

impl ConnArgs {
    fn timeouts(&self) -> crate::transport::PhaseTimeouts {
        crate::transport::PhaseTimeouts {
            observe: self.observe_timeout,
            apply: self.apply_timeout,
            verify: self.verify_timeout,
        }
    }

    pub fn connector(&self) -> Box<dyn crate::engine::Connector> {
        match self.connection {
            Connection::Local => Box::new(crate::engine::LocalConnector {
                timeouts: self.timeouts(),
            }),
            Connection::Ssh => Box::new(crate::engine::SshConnector {
                options: crate::transport::SshOptions {
                    config_file: self.ssh_config.clone(),
                    identity_file: self.identity.clone(),
                    known_hosts_file: self.known_hosts.clone(),
                    accept_new_host_keys: self.accept_new_host_keys,
                    connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
                    timeouts: self.timeouts(),
                    ..crate::transport::SshOptions::default()
                },
            }),
        }
    }
}

/// Arguments of the commands that reach hosts (plan, drift, apply).
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub output: OutputArg,
    /// Guardrails (`plan`, `apply`, `policy eval`; ignored by `drift` and `facts`).
    #[command(flatten)]
    pub policy: super::policy::PolicyArgs,
}

/// A tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
