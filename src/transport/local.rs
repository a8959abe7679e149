//! Runs scripts on this machine: for tests, and for a pull-mode agent.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{
    read_capped, shell_argv, Output, PhaseTimeouts, RunFuture, Transport, TransportError,
    MAX_SCRIPT_OUTPUT,
};

#[derive(Debug, Clone, Default)]
pub struct LocalTransport {
    pub become_: bool,
    pub timeouts: PhaseTimeouts,
}

impl LocalTransport {
    pub fn new() -> LocalTransport {
        LocalTransport::default()
    }
}

/// Kills the whole process group of a script (the shell and everything it started), so a
/// script that timed out or flooded its output leaves nothing running.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory
        // effects. The group is the child's own (`process_group(0)` at spawn).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Runs a child that reads `script` on stdin, reading at most [`MAX_SCRIPT_OUTPUT`] bytes
/// per stream and for at most `timeout`; on either limit the child's process group is killed.
pub(crate) async fn run_child(
    mut cmd: tokio::process::Command,
    script: &[u8],
    host: &str,
    timeout: Duration,
) -> Result<Output, TransportError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| TransportError::Connect {
        host: host.to_string(),
        message: e.to_string(),
    })?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let writer = async move {
        if let Some(s) = stdin.as_mut() {
            // A script that exits early closes its stdin: that is not an error of ours.
            let _ = s.write_all(script).await;
            let _ = s.shutdown().await;
        }
        drop(stdin);
        Ok(())
    };
    let run = async {
        let (_, out, err) = tokio::try_join!(
            writer,
            read_capped(stdout, MAX_SCRIPT_OUTPUT),
            read_capped(stderr, MAX_SCRIPT_OUTPUT)
        )?;
        Ok((out, err))
    };
    let result = match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(TransportError::Timeout {
            host: host.to_string(),
            timeout,
        }),
        Ok(Err(e)) => Err(super::ReadError::into_transport(e, host)),
        Ok(Ok(streams)) => Ok(streams),
    };
    let (stdout, stderr) = match result {
        Ok(s) => s,
        Err(e) => {
            kill_group(pid);
            let _ = child.wait().await;
            return Err(e);
        }
    };
    let status = child.wait().await.map_err(|e| TransportError::Exec {
        host: host.to_string(),
        message: e.to_string(),
    })?;
    Ok(Output {
        stdout,
        stderr,
        status: status.code(),
    })
}

impl Transport for LocalTransport {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
        Box::pin(async move {
            let argv = shell_argv(self.become_);
            let mut cmd = tokio::process::Command::new(argv[0]);
            cmd.args(&argv[1..]);
            run_child(cmd, script, "localhost", timeout).await
        })
    }

    fn timeouts(&self) -> PhaseTimeouts {
        self.timeouts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn runs_a_script() {
        let t = LocalTransport::new();
        let out = t
            .run(b"printf 'a b'; echo err >&2; exit 3")
            .await
            .expect("runs");
        assert_eq!(out.stdout, b"a b");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status, Some(3));
    }

    #[tokio::test]
    async fn a_flood_fails_at_the_limit_and_is_killed() {
        let t = LocalTransport::new();
        let err = t
            .run_within(b"yes plumb", Duration::from_secs(60))
            .await
            .expect_err("over the limit");
        assert!(
            matches!(err, TransportError::OutputLimit { limit, .. } if limit == MAX_SCRIPT_OUTPUT),
            "{err}"
        );
        assert_eq!(err.code(), "output_limit");
    }

    #[tokio::test]
    async fn a_stderr_flood_fails_too() {
        let err = LocalTransport::new()
            .run_within(b"yes plumb >&2", Duration::from_secs(60))
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), "output_limit");
    }

    #[tokio::test]
    async fn a_hung_script_is_bounded_by_the_timeout_and_its_children_killed() {
        let dir = tempfile::tempdir().expect("tmp");
        let marker = dir.path().join("late");
        let script = format!("sleep 1; touch '{}'", marker.display());
        let start = Instant::now();
        let err = LocalTransport::new()
            .run_within(script.as_bytes(), Duration::from_millis(200))
            .await
            .expect_err("times out");
        assert_eq!(err.code(), "timeout");
        assert!(start.elapsed() < Duration::from_millis(900));
        // The whole group died: the script never reaches its next command.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "the script kept running after its timeout"
        );
    }
}
