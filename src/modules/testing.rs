//! Helpers shared by the modules' unit tests.

use super::{BuildFn, ProbeResult, Resolve, Resource};

/// A repo with no templates and no files.
pub struct NoRepo;

impl Resolve for NoRepo {
    fn template(&mut self, _: &str) -> Result<String, String> {
        Err("none".into())
    }
    fn file(&mut self, _: &str) -> Result<Vec<u8>, String> {
        Err("none".into())
    }
}

/// Builds a resource from parameters that must be valid.
pub fn built(build: BuildFn, v: serde_json::Value) -> Box<dyn Resource> {
    match build(v, &mut NoRepo) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

/// The message of the error `r` finds in the probe output `s` (panics when it finds none).
pub fn diff_error(r: &dyn Resource, s: &str) -> String {
    match r.diff(&out(s)) {
        Ok(c) => panic!("expected an error for {s:?}, got {c:?}"),
        Err(e) => e.message,
    }
}

/// A probe that printed `s` and exited 0.
pub fn out(s: &str) -> ProbeResult {
    ProbeResult {
        stdout: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Runs `script` the way the engine sends it (`sh -s`, the script on stdin), with `sh`,
/// `grep` and `awk` on `PATH` replaced by wrappers that log every argument list they are started with
/// (what a host's process list would show). Returns the result and that log.
pub fn run_logging_argv(script: &str) -> (ProbeResult, String) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let log = dir.path().join("argv.log");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap_or_else(|e| panic!("{e}"));
    for tool in ["sh", "grep", "awk"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| format!("{d}/{tool}"))
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| panic!("no {tool}"));
        let wrapper = bin.join(tool);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"{tool} $*\" >> {}\nexec {real} \"$@\"\n",
                super::sh::quote(&log.display().to_string())
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::process::Command::new("chmod")
            .arg("0755")
            .arg(&wrapper)
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let result = run_stdin(script, Some(&path));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    (result, logged)
}

/// Runs `script` with `/bin/sh` on this machine, the script on stdin as the engine sends it.
pub fn run_sh(script: &str) -> ProbeResult {
    run_stdin(script, None)
}

/// Runs `script` as `sh -s` does for the engine (in a subshell, stdin from /dev/null), with
/// `path` as `PATH` when given.
fn run_stdin(script: &str, path: Option<&str>) -> ProbeResult {
    use std::io::Write;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-s");
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("(\n{script}\n) </dev/null\n").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    ProbeResult {
        stdout: out.stdout,
        stderr: out.stderr,
        status: out.status.code().unwrap_or(-1),
    }
}

/// Runs the probe batch `batch` of `steps` (named `names` in messages) and requires every
/// member to read what the step's own probe reads: the same stdout and status, and so the
/// same change.
pub fn batch_reads_as_one_by_one(batch: &str, steps: &[&dyn Resource], names: &[&str]) {
    let split = super::split_members(&run_sh(batch), steps.len());
    for ((r, got), name) in steps.iter().zip(split).zip(names) {
        let own = run_sh(&r.probe());
        assert_eq!(
            (String::from_utf8_lossy(&got.stdout), got.status),
            (String::from_utf8_lossy(&own.stdout), own.status),
            "{name}"
        );
        assert_eq!(
            format!("{:?}", r.diff(&got)),
            format!("{:?}", r.diff(&own)),
            "{name}"
        );
    }
}
