//! Whole-host scripts. Each phase sends one script: every step's fragment runs in its own
//! subshell with stdin from /dev/null (the script itself arrives on stdin), and its stdout
//! and stderr are captured to files and emitted base64-encoded in one frame line:
//!
//! ```text
//! @@plumb <tag> <exit status> <duration ms> <base64 stdout> <base64 stderr>
//! ```
//!
//! Nothing a step prints can forge a frame, because everything it prints is base64 inside
//! one. The script ends with `@@plumb-done <ok|failed>`; a missing end line means the
//! connection was lost mid-script.

use base64::Engine as _;

use crate::modules::ProbeResult;

// Process creation dominates a probe script's cost on the host (~1-2 ms per fork+exec in
// a small VM or container), so the per-step framing spawns as little as it can: one `date`
// per step (a step's end is the next step's start, so a step's duration includes the
// framing of the previous one), `base64 -w 0` where it exists instead of `base64 | tr`, and
// nothing at all for an empty stream (e.g. the usual empty stderr).
const PRELUDE: &str = r#"umask 022
PLUMB_T=$(mktemp -d "${TMPDIR:-/tmp}/plumb.XXXXXXXX") || { echo "@@plumb-fatal cannot create a temporary directory"; exit 0; }
trap 'rm -rf "$PLUMB_T"' EXIT
plumb_now() { n=$(date +%s%N 2>/dev/null); case $n in ''|*[!0-9]*) echo 0;; *) echo "$n";; esac; }
if [ "$(printf x | base64 -w 0 2>/dev/null)" = eA== ]; then plumb_b64() { base64 -w 0 < "$1"; }
else plumb_b64() { base64 < "$1" | tr -d '\n'; }; fi
plumb_frame() {
  e=$(plumb_now); d=0; if [ "$3" != 0 ] && [ "$e" != 0 ]; then d=$(( (e - $3) / 1000000 )); fi
  printf '@@plumb %s %s %s ' "$1" "$2" "$d"
  if [ -s "$PLUMB_T/o" ]; then plumb_b64 "$PLUMB_T/o"; fi
  printf ' '
  if [ -s "$PLUMB_T/e" ]; then plumb_b64 "$PLUMB_T/e"; fi
  printf '\n'
  s=$e
}
s=$(plumb_now)
"#;

/// What a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// A step's probe (by index in the host's ordered steps).
    Probe(usize),
    /// A step's apply.
    Apply(usize),
    /// A handler: the refresh of a step.
    Refresh(usize),
}

impl Tag {
    fn render(self) -> String {
        match self {
            Tag::Probe(i) => format!("p{i}"),
            Tag::Apply(i) => format!("a{i}"),
            Tag::Refresh(i) => format!("h{i}"),
        }
    }

    fn parse(s: &str) -> Option<Tag> {
        let (k, n) = s.split_at_checked(1)?;
        let n: usize = n.parse().ok()?;
        match k {
            "p" => Some(Tag::Probe(n)),
            "a" => Some(Tag::Apply(n)),
            "h" => Some(Tag::Refresh(n)),
            _ => None,
        }
    }
}

/// Builds a script from `(tag, fragment)` pairs. With `stop_on_failure`, the first fragment
/// that exits non-zero ends the script (`@@plumb-done failed`).
pub fn build(fragments: &[(Tag, String)], stop_on_failure: bool) -> String {
    let mut s = String::with_capacity(
        PRELUDE.len() + fragments.iter().map(|(_, f)| f.len() + 160).sum::<usize>(),
    );
    s.push_str(PRELUDE);
    for (tag, fragment) in fragments {
        let t = tag.render();
        s.push_str("(\n");
        // `( )` is a syntax error in sh: an empty fragment is a no-op.
        s.push_str(if fragment.trim().is_empty() {
            ":"
        } else {
            fragment
        });
        if !fragment.ends_with('\n') {
            s.push('\n');
        }
        s.push(')');
        s.push_str(" >\"$PLUMB_T/o\" 2>\"$PLUMB_T/e\" </dev/null\n");
        s.push_str(&format!("rc=$?; plumb_frame {t} $rc $s\n"));
        if stop_on_failure {
            s.push_str("if [ $rc -ne 0 ]; then echo '@@plumb-done failed'; exit 0; fi\n");
        }
    }
    s.push_str("echo '@@plumb-done ok'\n");
    s
}

/// One captured fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: Tag,
    pub result: ProbeResult,
    pub duration_ms: u64,
}

/// The frames of a script's output, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub frames: Vec<Frame>,
    /// `Some(true)` ended normally, `Some(false)` stopped at a failure, `None` cut short.
    pub completed: Option<bool>,
    /// Set when the script could not even start (e.g. no temporary directory).
    pub fatal: Option<String>,
}

impl Parsed {
    pub fn get(&self, tag: Tag) -> Option<&Frame> {
        self.frames.iter().find(|f| f.tag == tag)
    }
}

/// Parses a script's stdout. Lines that are not frames are ignored.
pub fn parse(stdout: &[u8]) -> Parsed {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Parsed::default();
    for line in stdout.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("@@plumb-done ") {
            out.completed = Some(rest.trim() == "ok");
            continue;
        }
        if let Some(rest) = line.strip_prefix("@@plumb-fatal ") {
            out.fatal = Some(rest.to_string());
            continue;
        }
        let Some(rest) = line.strip_prefix("@@plumb ") else {
            continue;
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        let [tag, rc, ms, o, e] = parts.as_slice() else {
            continue;
        };
        let (Some(tag), Ok(status), Ok(duration_ms)) =
            (Tag::parse(tag), rc.parse::<i32>(), ms.parse::<u64>())
        else {
            continue;
        };
        let (Ok(stdout), Ok(stderr)) = (b64.decode(o), b64.decode(e)) else {
            continue;
        };
        out.frames.push(Frame {
            tag,
            result: ProbeResult {
                stdout,
                stderr,
                status,
            },
            duration_ms,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_sh(script: &str) -> Vec<u8> {
        let mut child = std::process::Command::new("sh")
            .arg("-s")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        child.wait_with_output().expect("wait").stdout
    }

    #[test]
    fn frames_round_trip_through_sh() {
        let script = build(
            &[
                (
                    Tag::Probe(0),
                    "printf 'hello\\n@@plumb-done ok\\n'; echo oops >&2; exit 4".to_string(),
                ),
                (Tag::Probe(1), "cat; echo read-nothing".to_string()),
            ],
            false,
        );
        let p = parse(&run_sh(&script));
        assert_eq!(p.completed, Some(true));
        let f0 = p.get(Tag::Probe(0)).expect("frame 0");
        assert_eq!(f0.result.stdout, b"hello\n@@plumb-done ok\n");
        assert_eq!(f0.result.stderr, b"oops\n");
        assert_eq!(f0.result.status, 4);
        // stdin is /dev/null: a fragment cannot swallow the rest of the script.
        assert_eq!(
            p.get(Tag::Probe(1)).expect("frame 1").result.stdout,
            b"read-nothing\n"
        );
    }

    #[test]
    fn empty_fragments_are_no_ops() {
        let p = parse(&run_sh(&build(
            &[
                (Tag::Probe(0), String::new()),
                (Tag::Probe(1), " \n".into()),
            ],
            false,
        )));
        assert_eq!(p.completed, Some(true));
        assert_eq!(p.frames.len(), 2);
    }

    #[test]
    fn stop_on_failure_skips_the_rest() {
        let script = build(
            &[
                (Tag::Apply(0), "exit 1".into()),
                (Tag::Apply(1), "echo never".into()),
            ],
            true,
        );
        let p = parse(&run_sh(&script));
        assert_eq!(p.completed, Some(false));
        assert_eq!(p.frames.len(), 1);
    }

    #[test]
    fn truncated_output_is_not_completed() {
        let p = parse(b"@@plumb p0 0 0 aGk= \n");
        assert_eq!(p.completed, None);
        assert_eq!(p.frames[0].result.stdout, b"hi");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        /// Whatever bytes a fragment prints, they come back exactly.
        #[test]
        fn arbitrary_output_survives(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            let script = build(&[(Tag::Probe(0), format!("printf '%s' '{b64}' | base64 -d"))], false);
            let p = parse(&run_sh(&script));
            prop_assert_eq!(&p.get(Tag::Probe(0)).expect("frame").result.stdout, &data);
        }
    }
}
