//! `command`: run a command, guarded so that it is idempotent.
//!
//! Probe output: `refresh_only=yes` for a handler (nothing else is evaluated); otherwise
//! `chdir=ok|missing` (when `chdir` is set), `creates=exists|missing`, `unless=ok|failed`,
//! `onlyif=ok|failed` for each guard that is set. Guards run in `chdir`, with stdin from
//! /dev/null and their output discarded; they must only observe (they run at every probe).
//!
//! The apply runs `<run>` with the host's `sh` (evaluated in a subshell, so the text never
//! appears as a process argument) in `chdir` with stdin from /dev/null; its exit status is
//! the step's. Guards are evaluated the same way. A command with no guard at all runs on every apply (the plan notes it).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    Resource, Runs,
};

/// A shell command (run by the host's `sh`, in a subshell). Guards make it idempotent: it runs only when
/// `creates` does not exist, `unless` fails, and `onlyif` succeeds. With
/// `refresh_only: true` it runs only when a step that notifies it changed (a handler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The command, run by `sh` (like `sh -c <run>`, without showing it in the process list).
    #[schemars(length(min = 1))]
    pub run: String,
    /// Skip when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
    /// Skip when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<String>,
    /// Run only when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onlyif: Option<String>,
    /// Run only when notified by a changed step.
    #[serde(default)]
    pub refresh_only: bool,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub chdir: Option<String>,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Command {
    pub params: Params,
}

impl super::FromParams for Command {
    type Params = Params;
    fn from_params(params: Params) -> Result<Command, BuildError> {
        if params.run.trim().is_empty() {
            return Err(BuildError::at("/run", "must not be empty"));
        }
        for (ptr, v) in [
            ("/creates", &params.creates),
            ("/unless", &params.unless),
            ("/onlyif", &params.onlyif),
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(BuildError::at(ptr, "must not be empty"));
            }
        }
        Ok(Command { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Command>(
    "command",
    "A guarded command (creates, unless, onlyif), or a handler (refresh_only).",
    Runs::Local { rooted: None },
    &["refresh_only", "chdir", "creates", "unless", "onlyif"],
    &[
        Example {
            name: "creates, in chdir",
            setup: &[],
            steps: &[step(
                r#"{"run": "printf ran > \"done 'x'\"", "creates": "done 'x'", "chdir": "{root}"}"#,
                ChangeKind::Create,
            )],
        },
        Example {
            name: "unless and onlyif",
            setup: &[],
            steps: &[step(
                r#"{"run": "echo x >> count", "unless": "grep -q x count", "onlyif": "true", "chdir": "{root}"}"#,
                ChangeKind::Create,
            )],
        },
        Example {
            name: "a handler is in sync in every plan",
            setup: &[],
            steps: &[step(
                r#"{"run": "echo h >> count", "refresh_only": true, "chdir": "{root}"}"#,
                ChangeKind::InSync,
            )],
        },
    ],
).refreshable()
.reversibility(super::Reversibility::Some(irreversible))
.prune(super::Prune::Never("a command leaves no resource to remove"));

/// A command that ran cannot be undone by applying an older state (commands have no `undo:`).
fn irreversible(change: &Change) -> Option<&'static str> {
    (change.kind != ChangeKind::InSync).then_some("a command ran (commands have no undo)")
}

/// A guard command as a shell condition, evaluated in a subshell (never an argument of a
/// process), its output discarded.
fn guard(cmd: &str) -> String {
    format!(
        "( plumb_guard={}; eval \"$plumb_guard\" ) </dev/null >/dev/null 2>&1",
        quote(cmd)
    )
}

impl Command {
    fn cd(&self) -> String {
        match &self.params.chdir {
            Some(d) => format!("cd {} || exit 1\n", quote(d)),
            None => String::new(),
        }
    }
    /// Runs the command: its text is a shell variable of the script (which reaches the host
    /// on the shell's stdin) evaluated in a subshell, so it never appears as an argument in
    /// the host's process list (as `sh -c '<text>'` would).
    fn run(&self) -> String {
        format!(
            "plumb_run={}\n( eval \"$plumb_run\" ) </dev/null || exit\n",
            quote(&self.params.run)
        )
    }
    /// A shell condition that holds when the guards let the command run.
    fn guards(&self) -> Option<String> {
        let mut conds = Vec::new();
        if let Some(c) = &self.params.creates {
            let c = quote(c);
            conds.push(format!("[ ! -e {c} ] && [ ! -L {c} ]"));
        }
        if let Some(u) = &self.params.unless {
            conds.push(format!("! {}", guard(u)));
        }
        if let Some(o) = &self.params.onlyif {
            conds.push(guard(o));
        }
        if conds.is_empty() {
            None
        } else {
            Some(conds.join(" && "))
        }
    }
}

impl Resource for Command {
    fn target(&self) -> String {
        let first = self.params.run.lines().next().unwrap_or_default();
        let mut t: String = first.chars().take(60).collect();
        if t.len() < self.params.run.len() {
            t.push('…');
        }
        t
    }
    /// A command may change anything, and its guards (`unless`, `onlyif`) may read anything.
    fn touches(&self) -> super::Touches {
        super::Touches::Anything
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        if self.params.refresh_only {
            return "echo refresh_only=yes".into();
        }
        let mut s = String::new();
        if let Some(d) = &self.params.chdir {
            s += &format!(
                "if cd {} 2>/dev/null; then echo chdir=ok; else echo chdir=missing; fi\n",
                quote(d)
            );
        }
        if let Some(c) = &self.params.creates {
            let c = quote(c);
            s += &format!("if [ -e {c} ] || [ -L {c} ]; then echo creates=exists; else echo creates=missing; fi\n");
        }
        for (key, v) in [
            ("unless", &self.params.unless),
            ("onlyif", &self.params.onlyif),
        ] {
            if let Some(v) = v {
                s += &format!(
                    "if {}; then echo {key}=ok; else echo {key}=failed; fi\n",
                    guard(v)
                );
            }
        }
        if s.is_empty() {
            s = ":".into();
        }
        s
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        if self.params.refresh_only {
            return Ok(Change::in_sync());
        }
        let o = Observed::parse(observed)?;
        let mut notes = Vec::new();
        if let Some(c) = &self.params.creates {
            match o.req("creates")? {
                "exists" => return Ok(Change::in_sync()),
                "missing" => notes.push(format!("{c} does not exist")),
                v => return Err(ProbeError::new(format!("bad `creates` value {v:?}"))),
            }
        }
        if self.params.unless.is_some() {
            match o.req("unless")? {
                "ok" => return Ok(Change::in_sync()),
                "failed" => notes.push("`unless` failed".to_string()),
                v => return Err(ProbeError::new(format!("bad `unless` value {v:?}"))),
            }
        }
        if self.params.onlyif.is_some() {
            match o.req("onlyif")? {
                "failed" => return Ok(Change::in_sync()),
                "ok" => notes.push("`onlyif` succeeded".to_string()),
                v => return Err(ProbeError::new(format!("bad `onlyif` value {v:?}"))),
            }
        }
        let mut c =
            Change::new(ChangeKind::Create).field(Field::Run, None, Some(self.params.run.clone()));
        if self.guards().is_none() {
            c = c.note("no guard (creates, unless, onlyif): the command runs on every apply");
        }
        if let (Some(d), Some("missing")) = (&self.params.chdir, o.get("chdir")) {
            c = c.note(format!(
                "chdir {d} does not exist yet: an earlier step must create it"
            ));
        }
        for n in notes {
            c = c.note(n);
        }
        Ok(c)
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        format!("{}{}", self.cd(), self.run())
    }
    fn refresh(&self) -> Option<String> {
        Some(match self.guards() {
            None => format!("{}{}", self.cd(), self.run()),
            Some(g) => format!("{}if {g}; then\n{}fi\n", self.cd(), self.run()),
        })
    }
    fn refresh_only(&self) -> bool {
        self.params.refresh_only
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn cmd(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn guards() {
        let c = cmd(
            serde_json::json!({"run": "make install", "creates": "/usr/local/bin/app", "unless": "test -f /x", "onlyif": "true", "chdir": "/src/app"}),
        );
        insta::assert_snapshot!("command_probe", c.probe());
        assert_eq!(
            c.diff(&out("chdir=ok\ncreates=exists\nunless=failed\nonlyif=ok\n"))
                .unwrap(),
            Change::in_sync()
        );
        assert_eq!(
            c.diff(&out("chdir=ok\ncreates=missing\nunless=ok\nonlyif=ok\n"))
                .unwrap(),
            Change::in_sync()
        );
        assert_eq!(
            c.diff(&out(
                "chdir=ok\ncreates=missing\nunless=failed\nonlyif=failed\n"
            ))
            .unwrap(),
            Change::in_sync()
        );
        let ch = c
            .diff(&out(
                "chdir=missing\ncreates=missing\nunless=failed\nonlyif=ok\n",
            ))
            .unwrap();
        insta::assert_debug_snapshot!("command_change", ch);
        insta::assert_snapshot!("command_apply", c.apply(&ch));
        assert!(c.diff(&out("chdir=ok\ncreates=maybe\n")).is_err());
        assert!(c.diff(&out("chdir=ok\n")).is_err());
        assert!(!c.refresh_only());
    }

    #[test]
    fn unguarded_and_handlers() {
        let c = cmd(serde_json::json!({"run": "date"}));
        let ch = c.diff(&out("")).unwrap();
        assert_eq!(ch.kind, ChangeKind::Create);
        assert!(ch.notes[0].contains("every apply"));
        let h = cmd(
            serde_json::json!({"run": "systemctl daemon-reload", "refresh_only": true, "unless": "false"}),
        );
        assert!(h.refresh_only());
        assert_eq!(
            h.diff(&out("refresh_only=yes\n")).unwrap(),
            Change::in_sync()
        );
        assert_eq!(h.diff(&out("garbage")).unwrap(), Change::in_sync());
        insta::assert_snapshot!("command_refresh", h.refresh().unwrap_or_default());
        assert!((DEF.build)(serde_json::json!({"run": " "}), &mut NoRepo).is_err());
    }

    #[test]
    fn command_text_and_guards_never_reach_a_process_argument() {
        // The wrappers see arguments: the old form would have shown its text.
        let (_, log) = run_logging_argv("sh -c 'true CANARY-OLD-FORM'");
        assert!(log.contains("CANARY-OLD-FORM"), "{log}");

        let dir = tempfile::tempdir().unwrap();
        let c = cmd(serde_json::json!({
            "run": "printf %s SECRET-RUN > out; sh -c true",
            "unless": "test -e SECRET-UNLESS",
            "onlyif": "printf %s SECRET-ONLYIF >/dev/null",
            "chdir": dir.path().display().to_string(),
        }));
        let (probe, log) = run_logging_argv(&c.probe());
        let ch = c.diff(&probe).unwrap();
        assert_eq!(ch.kind, ChangeKind::Create);
        let (applied, log2) = run_logging_argv(&c.apply(&ch));
        assert_eq!(
            applied.status,
            0,
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let (refreshed, log3) = run_logging_argv(&c.refresh().unwrap_or_default());
        assert_eq!(refreshed.status, 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "SECRET-RUN"
        );
        let all = format!("{log}{log2}{log3}");
        // The command's own `sh -c true` ran under the wrapper: the log is live.
        assert!(all.contains("sh -c true"), "{all}");
        assert!(!all.contains("SECRET"), "a secret reached argv:\n{all}");
    }
}
