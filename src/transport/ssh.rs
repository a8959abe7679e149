//! SSH through the system OpenSSH client (the `openssh` crate): the user's `~/.ssh/config`,
//! agent and keys apply; one ControlMaster per host multiplexes every round trip over one
//! connection; host keys are checked strictly by default.
//!
//! No orphans: every master runs with `ControlPersist` set to an idle timeout (so even a
//! master whose plumb was SIGKILLed exits on its own), its socket lives in plumb's own
//! directory (0700, one subdirectory per plumb process), a master is closed when its
//! transport is dropped (end of command, error, interrupt), and stale sockets of dead plumb
//! processes are closed and removed the next time plumb starts.

use std::num::NonZeroUsize;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tokio::sync::Mutex;

use super::{
    read_capped, shell_argv, Output, PhaseTimeouts, RunFuture, Transport, TransportError,
    MAX_SCRIPT_OUTPUT,
};
use crate::model::{Host, HumanDuration};

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
    /// Longest each phase's round trip may take.
    pub timeouts: PhaseTimeouts,
    /// How long an idle master connection stays up (`ControlPersist`). Default `2m`.
    pub control_persist: HumanDuration,
    /// Where ControlMaster sockets live (plumb makes it 0700 and uses one subdirectory per
    /// process). Default: `$XDG_RUNTIME_DIR/plumb-ssh`, else `<tmp>/plumb-ssh-<uid>`.
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
            timeouts: PhaseTimeouts::default(),
            control_persist: HumanDuration::from_secs(120),
            control_dir: None,
        }
    }
}

/// The control directory used when none is configured.
pub fn default_control_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("plumb-ssh"),
        // SAFETY: getuid(2) cannot fail and touches no memory.
        _ => std::env::temp_dir().join(format!("plumb-ssh-{}", unsafe { libc::getuid() })),
    }
}

/// Makes `dir` plumb's own: created 0700 if missing; refused when another user owns it;
/// tightened to 0700 when it is ours but open to others.
fn own_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))),
        Err(e) => Err(e),
        Ok(m) => {
            // SAFETY: getuid(2) cannot fail and touches no memory.
            let uid = unsafe { libc::getuid() };
            if !m.is_dir() || m.uid() != uid {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory owned by this user (uid {uid}); remove it or set another control directory",
                    dir.display()
                )));
            }
            if m.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
    }
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists but belongs to someone else.
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Closes the masters left behind by plumb processes that no longer run (SIGKILL), and
/// removes their sockets. Returns how many process directories were cleaned.
pub fn clean_stale(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || pid_alive(pid) {
            continue;
        }
        close_masters_in(&entry.path());
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            cleaned += 1;
        }
    }
    cleaned
}

/// Asks every master whose socket is under `dir` to exit (`ssh -O exit`).
fn close_masters_in(dir: &Path) {
    let Ok(conns) = std::fs::read_dir(dir) else {
        return;
    };
    for c in conns.flatten() {
        let socket = c.path().join("master");
        if std::fs::symlink_metadata(&socket).is_ok() {
            let _ = std::process::Command::new("ssh")
                .arg("-S")
                .arg(&socket)
                .args(["-O", "exit", "plumb-stale-master"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// This process's control directory under `base`: created once (with stale directories of
/// dead processes cleaned first).
fn process_control_dir(base: &Path) -> Result<PathBuf, String> {
    static DIRS: OnceLock<std::sync::Mutex<Vec<PathBuf>>> = OnceLock::new();
    let dirs = DIRS.get_or_init(|| std::sync::Mutex::new(Vec::new()));
    let mine = base.join(std::process::id().to_string());
    let mut known = dirs.lock().unwrap_or_else(|p| p.into_inner());
    if known.contains(&mine) {
        return Ok(mine);
    }
    let describe = |e: std::io::Error| format!("control directory {}: {e}", base.display());
    own_dir(base).map_err(describe)?;
    let cleaned = clean_stale(base);
    if cleaned > 0 {
        tracing::info!(dir = %base.display(), cleaned, "closed ssh masters left by plumb processes that were killed");
    }
    own_dir(&mine).map_err(describe)?;
    known.push(mine.clone());
    Ok(mine)
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

    fn builder(&self, control_dir: &Path) -> SessionBuilder {
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
        b.control_directory(control_dir);
        let persist = usize::try_from(self.options.control_persist.get().as_secs())
            .ok()
            .and_then(NonZeroUsize::new)
            .map_or(
                ControlPersist::ClosedAfterInitialConnection,
                ControlPersist::IdleFor,
            );
        b.control_persist(persist);
        b
    }

    async fn connect(&self) -> Result<Session, TransportError> {
        let base = self
            .options
            .control_dir
            .clone()
            .unwrap_or_else(default_control_dir);
        let dir = process_control_dir(&base).map_err(|message| TransportError::Connect {
            host: self.label(),
            message,
        })?;
        let builder = self.builder(&dir);
        let fut = builder.connect(&self.host.address);
        match tokio::time::timeout(self.options.connect_timeout + Duration::from_secs(5), fut).await
        {
            // Not connected: the host is unreachable (a timeout is for a running script).
            Err(_) => Err(TransportError::Connect {
                host: self.label(),
                message: format!(
                    "no connection within {:?} (--connect-timeout)",
                    self.options.connect_timeout
                ),
            }),
            Ok(Err(e)) => Err(TransportError::Connect {
                host: self.label(),
                message: describe(&e),
            }),
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// The live session, connecting (again) when there is none or its master has exited
    /// (e.g. after its `ControlPersist` idle timeout).
    async fn session<'g>(
        &self,
        guard: &'g mut Option<Session>,
    ) -> Result<&'g Session, TransportError> {
        if let Some(s) = guard.as_ref() {
            if s.check().await.is_err() {
                *guard = None;
            }
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        guard.as_ref().ok_or_else(|| TransportError::Connect {
            host: self.label(),
            message: "no session".into(),
        })
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

/// Runs one script on a session, reading at most [`MAX_SCRIPT_OUTPUT`] per stream.
async fn exec(
    session: &Session,
    become_: bool,
    script: &[u8],
    label: &str,
) -> Result<Output, TransportError> {
    let exec_err = |e: openssh::Error| TransportError::Exec {
        host: label.to_string(),
        message: describe(&e),
    };
    let argv = shell_argv(become_);
    let mut cmd = session.command(argv[0]);
    cmd.args(&argv[1..]);
    cmd.stdin(openssh::Stdio::piped())
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::piped());
    let mut child = cmd.spawn().await.map_err(exec_err)?;
    let mut stdin = child.stdin().take();
    let stdout = child.stdout().take();
    let stderr = child.stderr().take();
    let writer = async move {
        if let Some(s) = stdin.as_mut() {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(script).await;
            let _ = s.shutdown().await;
        }
        drop(stdin);
        Ok(())
    };
    let (_, out, err) = tokio::try_join!(
        writer,
        read_capped(stdout, MAX_SCRIPT_OUTPUT),
        read_capped(stderr, MAX_SCRIPT_OUTPUT)
    )
    .map_err(|e| e.into_transport(label))?;
    let status = child.wait().await.map_err(exec_err)?;
    Ok(Output {
        stdout: out,
        stderr: err,
        status: status.code(),
    })
}

impl Transport for SshTransport {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
        Box::pin(async move {
            let mut guard = self.session.lock().await;
            let session = self.session(&mut guard).await?;
            let label = self.label();
            let result =
                tokio::time::timeout(timeout, exec(session, self.host.become_, script, &label))
                    .await
                    .unwrap_or_else(|_| {
                        Err(TransportError::Timeout {
                            host: label.clone(),
                            timeout,
                        })
                    });
            match result {
                Err(e) => {
                    // Timed out, flooded, or the master is dead: kill the session (its
                    // channel and everything on it); the next use reconnects.
                    if let Some(s) = guard.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(10), s.close()).await;
                    }
                    Err(e)
                }
                // ssh exits 255 when the connection itself failed.
                Ok(o) if o.status == Some(255) && o.stdout.is_empty() => {
                    *guard = None;
                    Err(TransportError::Exec {
                        host: label,
                        message: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    })
                }
                Ok(o) => Ok(o),
            }
        })
    }

    fn timeouts(&self) -> PhaseTimeouts {
        self.options.timeouts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_dir_is_private_and_stale_process_dirs_are_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("ssh");
        std::fs::create_dir(&base).expect("mkdir");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // A directory left by a plumb process that no longer exists (pid 2^22+1 is above
        // Linux's pid_max default and never alive), with a socket-like file in it.
        let stale = base.join("4194305").join(".ssh-connectionX");
        std::fs::create_dir_all(&stale).expect("mkdir");
        std::fs::write(stale.join("master"), b"").expect("write");
        let mine = process_control_dir(&base).expect("own dir");
        assert_eq!(mine, base.join(std::process::id().to_string()));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").mode() & 0o777;
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(&mine), 0o700);
        assert!(!base.join("4194305").exists(), "stale directory kept");
    }

    #[test]
    fn a_control_dir_that_is_not_a_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").expect("write");
        assert!(own_dir(&file).is_err());
    }
}
