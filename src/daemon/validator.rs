//! Each new commit is validated first in a child process (`plumb validate` under resource
//! limits) before the daemon loads it. Templates are a language: a commit can build a string
//! that doubles in a loop, which no per-operation bound of the template engine stops in
//! time. The child sets its own address-space and CPU limits before it reads the checkout,
//! so such a commit kills only the child; the daemon records it refused with reason `limit`
//! and goes on. A commit the child survives renders in the daemon within the same bounds
//! (rendering is deterministic).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use super::config::ValidationLimits;
use super::policy::Refusal;
use crate::model::{ByteSize, HumanDuration};

/// Slack on top of the CPU limit before the child is killed by the wall clock (a child
/// that waits instead of computing).
const WALL_SLACK: Duration = Duration::from_secs(5);

/// How to validate a commit in a child process.
#[derive(Debug, Clone)]
pub struct Validator {
    exe: PathBuf,
    memory: ByteSize,
    timeout: HumanDuration,
}

impl Validator {
    pub fn new(exe: PathBuf, limits: &ValidationLimits) -> Validator {
        Validator {
            exe,
            memory: limits.memory_limit,
            timeout: limits.timeout,
        }
    }

    /// The `plumb` executable run as the validator.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Validates the checkout at `dir` in a child process. `Ok` when the child finished
    /// (valid or not: the daemon then validates in process and records the errors);
    /// [`Refusal::Limit`] when it went past a limit; [`Refusal::Internal`] when it could not
    /// run or crashed.
    pub async fn check(&self, dir: &Path) -> Result<(), Refusal> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("validate")
            .arg(dir)
            .args(["--output", "json", "--memory-limit"])
            .arg(self.memory.to_string())
            .arg("--time-limit")
            .arg(self.timeout.to_string())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| Refusal::Internal {
            error: format!(
                "cannot start the validator {}: {e}",
                self.exe.to_string_lossy()
            ),
        })?;
        let wall = self.timeout.get() + WALL_SLACK;
        let status = match tokio::time::timeout(wall, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(Refusal::Internal {
                    error: format!("waiting for the validator: {e}"),
                })
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(Refusal::Limit {
                    error: format!(
                        "validating the commit took longer than {} (validation.timeout): the commit is not loaded",
                        self.timeout
                    ),
                });
            }
        };
        self.verdict(status)
    }

    /// What the child's exit status says about the commit.
    fn verdict(&self, status: ExitStatus) -> Result<(), Refusal> {
        let memory = || {
            Refusal::Limit {
            error: format!(
                "validating the commit needed more than {} of memory (validation.memory_limit): the commit is not loaded",
                self.memory
            ),
        }
        };
        let cpu = || {
            Refusal::Limit {
            error: format!(
                "validating the commit used more than {} of CPU time (validation.timeout): the commit is not loaded",
                self.timeout
            ),
        }
        };
        match (status.code(), status.signal()) {
            (Some(0 | 1), _) => Ok(()),
            // Rust aborts when an allocation fails (past RLIMIT_AS).
            (_, Some(libc::SIGABRT)) | (Some(134), _) => Err(memory()),
            (_, Some(libc::SIGXCPU | libc::SIGKILL)) => Err(cpu()),
            (Some(code), _) => Err(Refusal::Internal {
                error: format!(
                    "the validator exited with status {code} (a crash: please report it)"
                ),
            }),
            (None, signal) => Err(Refusal::Internal {
                error: format!("the validator was killed by signal {}", signal.unwrap_or(0)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(PathBuf::from("plumb"), &ValidationLimits::default())
    }

    #[test]
    fn exit_codes_and_signals_map_to_verdicts() {
        let v = validator();
        let code = |c: i32| v.verdict(ExitStatus::from_raw(c << 8));
        let signal = |s: i32| v.verdict(ExitStatus::from_raw(s));
        assert_eq!(code(0), Ok(()));
        assert_eq!(code(1), Ok(()), "an invalid commit is reported in process");
        let limit = |r: Result<(), Refusal>| match r {
            Err(Refusal::Limit { error }) => error,
            other => panic!("{other:?}"),
        };
        assert!(limit(signal(libc::SIGABRT)).contains("2GiB of memory"));
        assert!(limit(signal(libc::SIGXCPU)).contains("2m of CPU time"));
        assert!(matches!(code(101), Err(Refusal::Internal { .. })));
    }
}
