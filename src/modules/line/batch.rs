//! Several `line` steps on one file, applied in one rewrite of it.
//!
//! The engine hands [`apply`] the changes of consecutive changed `line` steps on one path
//! (see [`super::super::Batch`]). The fragment does what their applies would do one after
//! the other (each with the change its own probe found: `Create` appends, `Modify` replaces
//! the last line matching the regexp or appends, `Remove` drops every matching or equal
//! line), but reads the file once, edits it in memory with one `awk` and writes it once,
//! through the same safe path ([`sh::enter_parent`], a private directory, `mv -T`), keeping
//! the file's mode and ownership. If any part fails, nothing is written and every step of
//! the batch fails.
//!
//! Matching stays `grep`'s: for each step that matches by regexp, one `grep -n -E` over the
//! file and over the batch's lines tells which lines match (a line of the file in the middle
//! of the edits is always one of those), so a regexp means exactly what it means in the
//! probe (GNU `grep -E` in the C locale, back-references included). Exact lines are compared
//! as byte strings by `awk`, as the probe counts them. The values and regexps reach `awk` and
//! `grep` through files of the private directory (written by `printf`, a shell builtin),
//! never through arguments: the process list shows only indexes.
//!
//! Processes: those of the safe path, one `tail -c 1`, one `awk`, plus one `grep` per step
//! that matches by regexp (`Modify` and `Remove` with `regexp`): none per line.

use super::{rewrite, Line};
use crate::modules::sh::{self, quote};
use crate::modules::{Change, ChangeKind, Resource};

/// `awk`, on the files of the private directory: `v` (the batch's lines, one per step, in
/// step order), `mt` (`@<step>` followed by that step's `grep -n` output over `o` and `v`)
/// and `o` (the file). `spec` lists the edits (`A:<j>` append line j, `R:<k>:<j>` replace the
/// last line matching step k's regexp by line j, else append, `X:<k>` remove the lines
/// matching step k's regexp, `E:<j>` remove the lines equal to line j); `nonl` is 1 when the
/// file's last line has no newline. Every item remembers where it came from (`o<n>`: line n
/// of the file, `v<j>`: line j of the batch), which is what `mt` tells matches about.
/// Strings are compared with `""` appended, so `awk` never compares them as numbers.
const AWK: &str = r#"function app(j) { nonl = 0; n++; L[n] = V[j]; S[n] = "v" j }
function drop(k, j,   i, m, gone) {
  m = 0
  for (i = 1; i <= n; i++) {
    if (k > 0) gone = ((k, S[i]) in M); else gone = ((L[i] "") == (V[j] ""))
    if (!gone) { m++; L[m] = L[i]; S[m] = S[i] }
  }
  for (i = m + 1; i <= n; i++) { delete L[i]; delete S[i] }
  n = m; nonl = 0
}
BEGIN {
  while ((g = (getline l < "v")) > 0) V[++nv] = l
  if (g < 0) exit 2
  while ((g = (getline l < "mt")) > 0) {
    if (substr(l, 1, 1) == "@") k = substr(l, 2) + 0
    else if (substr(l, 2, 1) == ":") {
      r = substr(l, 3); c = index(r, ":")
      if (c > 1) M[k, substr(l, 1, 1) substr(r, 1, c - 1)] = 1
    }
  }
  if (g < 0) exit 2
  while ((g = (getline l < "o")) > 0) { n++; L[n] = l; S[n] = "o" n }
  if (g < 0) exit 2
  t = split(spec, E, " ")
  for (e = 1; e <= t; e++) {
    split(E[e], a, ":")
    if (a[1] == "A") app(a[2] + 0)
    else if (a[1] == "X") drop(a[2] + 0, 0)
    else if (a[1] == "E") drop(0, a[2] + 0)
    else if (a[1] == "R") {
      for (i = n; i > 0; i--) if ((a[2] + 0, S[i]) in M) break
      if (i > 0) { L[i] = V[a[3] + 0]; S[i] = "v" (a[3] + 0); if (i == n) nonl = 0 }
      else app(a[3] + 0)
    }
    else exit 3
  }
  for (i = 1; i <= n; i++) { printf "%s", L[i]; if (i < n || !nonl) printf "\n" }
  exit 0
}"#;

/// One edit of the batch, as its own apply would make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    /// Append the step's line.
    Append,
    /// Replace the last line matching the step's regexp by its line, or append it.
    Replace,
    /// Remove every line matching the step's regexp.
    RemoveMatching,
    /// Remove every line equal to the step's line.
    RemoveEqual,
    /// Nothing (an in-sync change).
    None,
}

impl Edit {
    fn of(l: &Line, c: &Change) -> Edit {
        match (c.kind, &l.params.regexp) {
            (ChangeKind::InSync, _) => Edit::None,
            (ChangeKind::Modify, Some(_)) => Edit::Replace,
            (ChangeKind::Create | ChangeKind::Modify, _) => Edit::Append,
            (ChangeKind::Remove, Some(_)) => Edit::RemoveMatching,
            (ChangeKind::Remove, None) => Edit::RemoveEqual,
        }
    }

    /// Whether it needs the lines its step's regexp matches.
    fn matches(self) -> bool {
        matches!(self, Edit::Replace | Edit::RemoveMatching)
    }

    /// Its `spec` word for step `k` (1-based), or `None`.
    fn word(self, k: usize) -> Option<String> {
        match self {
            Edit::Append => Some(format!("A:{k}")),
            Edit::Replace => Some(format!("R:{k}:{k}")),
            Edit::RemoveMatching => Some(format!("X:{k}")),
            Edit::RemoveEqual => Some(format!("E:{k}")),
            Edit::None => None,
        }
    }
}

/// The [`crate::modules::Batch`] key of a `line` step: its path.
pub(super) fn key(r: &dyn Resource) -> Option<String> {
    r.as_any()
        .downcast_ref::<Line>()
        .map(|l| l.params.path.clone())
}

/// One fragment applying every change of `items` (`line` steps on one path) in order; `None`
/// when one is not a `line` step, or they do not share a path.
pub(super) fn apply(items: &[(&dyn Resource, &Change)]) -> Option<String> {
    let steps = items
        .iter()
        .map(|(r, c)| Some((r.as_any().downcast_ref::<Line>()?, *c)))
        .collect::<Option<Vec<(&Line, &Change)>>>()?;
    let first = steps.first()?.0;
    let path = &first.params.path;
    if steps.iter().any(|(l, _)| &l.params.path != path) {
        return None;
    }
    let edits: Vec<Edit> = steps.iter().map(|(l, c)| Edit::of(l, c)).collect();
    let mut s = String::from("LC_ALL=C; export LC_ALL\n");
    for (k, (l, e)) in steps.iter().map(|(l, _)| l).zip(&edits).enumerate() {
        s += &format!("v{}={}\n", k + 1, quote(l.line()));
        if let (true, Some(re)) = (e.matches(), &l.params.regexp) {
            s += &format!("r{}={}\n", k + 1, quote(re));
        }
    }
    s += &sh::enter_parent(path, sh::Missing::Fail(&first.missing_parent()));
    s += &format!(
        "if [ ! -e \"./$b\" ] && [ ! -L \"./$b\" ]; then\n{}\nelse\n{}fi\n",
        missing(&steps, &edits),
        rewrite(path, &edit(&edits, None)),
    );
    Some(s)
}

/// What the batch does when the file does not exist: its removals before the first step
/// that adds a line change nothing; that step creates the file (`create: true`, mode 0644)
/// and the rest edit it, or it fails as its own apply would.
fn missing(steps: &[(&Line, &Change)], edits: &[Edit]) -> String {
    let Some(f) = edits
        .iter()
        .position(|e| matches!(e, Edit::Append | Edit::Replace))
    else {
        return ":".into();
    };
    let (l, _) = steps[f];
    if !l.params.create {
        return sh::fail(&format!(
            "{} does not exist; create it in an earlier step or set `create: true`",
            l.params.path
        ));
    }
    format!(
        "{}: > o || exit 1\n{}\nchmod 0644 f || exit 1\nmv -f -T -- f \"../$b\" || exit 1",
        sh::PRIVATE_DIR,
        edit(edits, Some(f))
    )
}

/// Writes `f` from `o` with the edits. `created`: the file was missing and the edit at that
/// index creates it (it appends, whatever it would replace), those before it are skipped.
fn edit(edits: &[Edit], created: Option<usize>) -> String {
    let vars: Vec<String> = (1..=edits.len()).map(|k| format!("\"$v{k}\"")).collect();
    let mut s = format!(
        "printf '%s\\n' {} > v || exit 1\n: > mt || exit 1\n",
        vars.join(" ")
    );
    let mut spec = Vec::new();
    for (k, e) in edits.iter().enumerate().skip(created.unwrap_or(0)) {
        let e = if Some(k) == created { Edit::Append } else { *e };
        if e.matches() {
            s += &format!(
                "printf '%s\\n' \"$r{n}\" > r || exit 1\necho @{n} >> mt || exit 1\ngrep -n -E -f r -- o v >> mt; [ $? -le 1 ] || exit 1\n",
                n = k + 1
            );
        }
        spec.extend(e.word(k + 1));
    }
    s += &format!(
        "nonl=0; if [ -s o ] && [ -n \"$(tail -c 1 -- o)\" ]; then nonl=1; fi\n\
         awk -v nonl=\"$nonl\" -v spec='{}' '{AWK}' > f || exit 1",
        spec.join(" ")
    );
    s
}

impl Line {
    /// The message when the parent directory is missing.
    pub(super) fn missing_parent(&self) -> String {
        let path = &self.params.path;
        if self.params.create {
            format!(
                "parent directory {} does not exist; add a directory step",
                sh::parent(path)
            )
        } else {
            format!("{path} does not exist; create it in an earlier step or set `create: true`")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::{built, run_logging_argv};

    fn line(v: serde_json::Value) -> Box<dyn Resource> {
        built(super::super::DEF.build, v)
    }

    /// Probes every step, then applies the changes as one batch.
    fn batch_run(steps: &[Box<dyn Resource>]) -> (String, crate::modules::ProbeResult, String) {
        let mut changes = Vec::new();
        let mut log = String::new();
        for r in steps {
            let (probe, l) = run_logging_argv(&r.probe());
            log += &l;
            changes.push(r.diff(&probe).expect("probe parses"));
        }
        let items: Vec<(&dyn Resource, &Change)> =
            steps.iter().map(|r| r.as_ref()).zip(&changes).collect();
        let fragment = apply(&items).expect("line steps on one path");
        let (out, l) = run_logging_argv(&fragment);
        (fragment, out, log + &l)
    }

    #[test]
    fn values_and_regexps_never_reach_a_process_argument() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("conf").display().to_string();
        std::fs::write(&p, "a\nSECRET-OLD x\nSECRET-GONE\nb\n").expect("write");
        let steps = [
            line(serde_json::json!({"path": p, "regexp": "^SECRET-OLD", "line": "SECRET-NEW 1"})),
            line(serde_json::json!({"path": p, "line": "SECRET-APPENDED"})),
            line(serde_json::json!({"path": p, "regexp": "^SECRET-G", "state": "absent"})),
            line(serde_json::json!({"path": p, "line": "a", "state": "absent"})),
        ];
        let (_, out, log) = batch_run(&steps);
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert!(log.contains("awk "), "awk ran under the wrapper: {log}");
        assert!(!log.contains("SECRET"), "a value reached argv:\n{log}");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "SECRET-NEW 1\nb\nSECRET-APPENDED\n"
        );
    }

    /// However many exact lines, one `awk` and no `grep`; one `grep` per regexp edit.
    #[test]
    fn processes_do_not_grow_with_exact_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("conf").display().to_string();
        std::fs::write(&p, "Port 22\n").expect("write");
        let mut steps: Vec<Box<dyn Resource>> = (0..30)
            .map(|i| line(serde_json::json!({"path": p, "line": format!("l{i}")})))
            .collect();
        steps.push(line(
            serde_json::json!({"path": p, "regexp": "^Port", "line": "Port 2"}),
        ));
        let (fragment, out, _) = batch_run(&steps);
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(fragment.matches("awk ").count(), 1);
        assert_eq!(fragment.matches("grep ").count(), 1);
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(
            text.starts_with("Port 2\nl0\n") && text.ends_with("l29\n"),
            "{text}"
        );
    }

    /// A missing file is created by the first step that adds a line (when it may), the
    /// removals before it change nothing; without `create`, the batch fails as that step.
    #[test]
    fn a_missing_file_is_created_by_its_first_adding_step_or_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("new.conf").display().to_string();
        let steps = [
            line(serde_json::json!({"path": p, "line": "x", "state": "absent"})),
            line(serde_json::json!({"path": p, "regexp": "^a", "line": "a 1", "create": true})),
            line(serde_json::json!({"path": p, "line": "b"})),
        ];
        let changes = [
            Change::new(ChangeKind::Remove),
            Change::new(ChangeKind::Modify),
            Change::new(ChangeKind::Create),
        ];
        let items: Vec<(&dyn Resource, &Change)> =
            steps.iter().map(|r| r.as_ref()).zip(&changes).collect();
        let (out, _) = run_logging_argv(&apply(&items).expect("fragment"));
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "a 1\nb\n");
        let mode = std::fs::metadata(&p).expect("stat");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o644
        );

        let q = dir.path().join("other.conf").display().to_string();
        let no_create = [line(serde_json::json!({"path": q, "line": "b"}))];
        let items: Vec<(&dyn Resource, &Change)> = vec![(no_create[0].as_ref(), &changes[2])];
        let (out, _) = run_logging_argv(&apply(&items).expect("fragment"));
        assert_ne!(out.status, 0);
        assert!(String::from_utf8_lossy(&out.stderr).contains("set `create: true`"));
        assert!(!std::path::Path::new(&q).exists());
    }

    #[test]
    fn other_paths_or_modules_are_not_merged() {
        let a = line(serde_json::json!({"path": "/a", "line": "x"}));
        let b = line(serde_json::json!({"path": "/b", "line": "x"}));
        let c = Change::new(ChangeKind::Create);
        assert!(apply(&[(a.as_ref(), &c), (b.as_ref(), &c)]).is_none());
        let dir = built(
            crate::modules::directory::DEF.build,
            serde_json::json!({"path": "/a"}),
        );
        assert!(apply(&[(a.as_ref(), &c), (dir.as_ref(), &c)]).is_none());
        assert_eq!(key(dir.as_ref()), None);
        assert_eq!(key(a.as_ref()).as_deref(), Some("/a"));
    }
}
