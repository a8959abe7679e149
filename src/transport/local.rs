//! Runs scripts on this machine: for tests, and for a pull-mode agent.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{shell_argv, Output, RunFuture, Transport, TransportError};

#[derive(Debug, Clone)]
pub struct LocalTransport {
    pub become_: bool,
    pub timeout: Duration,
}

impl LocalTransport {
    pub fn new() -> LocalTransport {
        LocalTransport {
            become_: false,
            timeout: Duration::from_secs(3600),
        }
    }
}

impl Default for LocalTransport {
    fn default() -> Self {
        LocalTransport::new()
    }
}

pub(crate) async fn run_child(
    mut cmd: tokio::process::Command,
    script: &[u8],
    host: &str,
    timeout: Duration,
) -> Result<Output, TransportError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| TransportError::Connect {
        host: host.to_string(),
        message: e.to_string(),
    })?;
    let mut stdin = child.stdin.take();
    let script = script.to_vec();
    let writer = async move {
        if let Some(s) = stdin.as_mut() {
            // A script that exits early closes its stdin: that is not an error of ours.
            let _ = s.write_all(&script).await;
            let _ = s.shutdown().await;
        }
        drop(stdin);
    };
    let run = async {
        let (_, out) = tokio::join!(writer, child.wait_with_output());
        out
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(TransportError::Timeout {
            host: host.to_string(),
            timeout,
        }),
        Ok(Err(e)) => Err(TransportError::Exec {
            host: host.to_string(),
            message: e.to_string(),
        }),
        Ok(Ok(o)) => Ok(Output {
            stdout: o.stdout,
            stderr: o.stderr,
            status: o.status.code(),
        }),
    }
}

impl Transport for LocalTransport {
    fn run<'a>(&'a self, script: &'a [u8]) -> RunFuture<'a> {
        Box::pin(async move {
            let argv = shell_argv(self.become_);
            let mut cmd = tokio::process::Command::new(argv[0]);
            cmd.args(&argv[1..]);
            run_child(cmd, script, "localhost", self.timeout).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
