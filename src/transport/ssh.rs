//! SSH through the system OpenSSH client (the `openssh` crate): the user's `~/.ssh/config`,
//! agent and keys apply; one ControlMaster per host multiplexes every round trip over one
//! connection; host keys are checked strictly by default.

use std::path::PathBuf;
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder};
use tokio::sync::Mutex;

use super::{shell_argv, Output, RunFuture, Transport, TransportError};
use crate::model::Host;

/// Connection settings shared by all hosts of a run.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// An ssh_config file instead of `~/.ssh/config`.
    pub config_file: Option<PathBuf>,
    /// Private key to offer (besides the agent's and the config's).
    pub identity_file: Option<PathBuf>,
    /// known_hosts file instead of `~/.ssh/known_hosts`.
    pub known_hosts_file: Option<PathBuf>,
    /// Accept unknown host keys on first use (never changed ones). Default: strict.
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Longest one round trip may take.
    pub run_timeout: Duration,
    /// Where ControlMaster sockets live.
    pub control_dir: Option<PathBuf>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            config_file: None,
            identity_file: None,
            known_hosts_file: None,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            run_timeout: Duration::from_secs(1800),
            control_dir: None,
        }
    }
}

/// One host over SSH; connects on first use and keeps the master connection.
#[derive(Debug)]
pub struct SshTransport {
    host: Host,
    options: SshOptions,
    session: Mutex<Option<Session>>,
}

impl SshTransport {
    pub fn new(host: Host, options: SshOptions) -> SshTransport {
        SshTransport {
            host,
            options,
            session: Mutex::new(None),
        }
    }

    fn label(&self) -> String {
        format!(
            "{} ({}:{})",
            self.host.name, self.host.address, self.host.port
        )
    }

    async fn connect(&self) -> Result<Session, TransportError> {
        let mut b = SessionBuilder::default();
        b.port(self.host.port);
        if let Some(u) = &self.host.user {
            b.user(u.clone());
        }
        b.known_hosts_check(if self.options.accept_new_host_keys {
            KnownHosts::Accept
        } else {
            KnownHosts::Strict
        });
        b.connect_timeout(self.options.connect_timeout);
        b.server_alive_interval(Duration::from_secs(5));
        if let Some(f) = &self.options.config_file {
            b.config_file(f);
        }
        if let Some(k) = &self.options.identity_file {
            b.keyfile(k);
        }
        if let Some(k) = &self.options.known_hosts_file {
            b.user_known_hosts_file(k);
        }
        if let Some(d) = &self.options.control_dir {
            b.control_directory(d);
        }
        let fut = b.connect(&self.host.address);
        match tokio::time::timeout(self.options.connect_timeout + Duration::from_secs(5), fut).await
        {
            Err(_) => Err(TransportError::Timeout {
                host: self.label(),
                timeout: self.options.connect_timeout,
            }),
            Ok(Err(e)) => Err(TransportError::Connect {
                host: self.label(),
                message: describe(&e),
            }),
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// Closes the master connection.
    pub async fn close(&self) {
        if let Some(s) = self.session.lock().await.take() {
            let _ = s.close().await;
        }
    }
}

fn describe(e: &openssh::Error) -> String {
    crate::diag::error_chain(e)
}

impl Transport for SshTransport {
    fn run<'a>(&'a self, script: &'a [u8]) -> RunFuture<'a> {
        Box::pin(async move {
            let mut guard = self.session.lock().await;
            if guard.is_none() {
                *guard = Some(self.connect().await?);
            }
            let Some(session) = guard.as_ref() else {
                return Err(TransportError::Connect {
                    host: self.label(),
                    message: "no session".into(),
                });
            };
            let argv = shell_argv(self.host.become_);
            let mut cmd = session.command(argv[0]);
            cmd.args(&argv[1..]);
            cmd.stdin(openssh::Stdio::piped())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped());
            let label = self.label();
            let run = async {
                let mut child = cmd.spawn().await.map_err(|e| TransportError::Exec {
                    host: label.clone(),
                    message: describe(&e),
                })?;
                if let Some(mut stdin) = child.stdin().take() {
                    use tokio::io::AsyncWriteExt;
                    let _ = stdin.write_all(script).await;
                    let _ = stdin.shutdown().await;
                }
                child
                    .wait_with_output()
                    .await
                    .map_err(|e| TransportError::Exec {
                        host: label.clone(),
                        message: describe(&e),
                    })
            };
            let result = tokio::time::timeout(self.options.run_timeout, run).await;
            match result {
                Err(_) => {
                    *guard = None;
                    Err(TransportError::Timeout {
                        host: label,
                        timeout: self.options.run_timeout,
                    })
                }
                Ok(Err(e)) => {
                    // The master may be dead (host gone); reconnect next time.
                    *guard = None;
                    Err(e)
                }
                Ok(Ok(o)) => {
                    // ssh exits 255 when the connection itself failed.
                    if o.status.code() == Some(255) && o.stdout.is_empty() {
                        *guard = None;
                        return Err(TransportError::Exec {
                            host: label,
                            message: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        });
                    }
                    Ok(Output {
                        stdout: o.stdout,
                        stderr: o.stderr,
                        status: o.status.code(),
                    })
                }
            }
        })
    }
}
