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
//!
//! What one fragment prints is bounded **on the host**, so a step that floods its output
//! (`yes`) neither fills the host's disk nor plumb's memory: each stream is cut just past
//! [`MAX_FRAME_BYTES`], and [`parse`] reports such a frame as [`Parsed::oversize`]. Probe
//! fragments (which must change nothing) run under `ulimit -f`, which costs no process;
//! apply fragments may legitimately write large files (packages, content), so their
//! streams go through `head -c` instead. A consequence, as with any tool that captures
//! output: a process an apply fragment starts in the background must not keep the
//! fragment's stdout/stderr open (`cmd >/dev/null 2>&1 &`), or the step waits for it.

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
trap 'exit 129' HUP; trap 'exit 141' PIPE; trap 'exit 143' TERM
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

/// Most bytes one fragment may print on stdout, and on stderr. Over it, the host fails
/// with a clear error: a probe prints state, an apply a short message; megabytes mean a
/// step is flooding.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// How a script runs its fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Probes: run every fragment; output bounded with `ulimit -f`.
    Observe,
    /// Changes and handlers: stop at the first fragment that fails; output bounded with
    /// `head -c` (a fragment may write large files itself).
    Apply,
}

/// What a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// A step's probe (by index in the host's ordered steps).
    Probe(usize),
    /// A step's apply.
    Apply(usize),
    /// A handler: the refresh of a step.
    Refresh(usize),
    /// The host's facts (`facts::SCRIPT`), riding along with the probes.
    Facts,
}

impl Tag {
    fn render(self) -> String {
        match self {
            Tag::Probe(i) => format!("p{i}"),
            Tag::Apply(i) => format!("a{i}"),
            Tag::Refresh(i) => format!("h{i}"),
            Tag::Facts => "f".to_string(),
        }
    }

    fn parse(s: &str) -> Option<Tag> {
        if s == "f" {
            return Some(Tag::Facts);
        }
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

/// Builds a script from `(tag, fragment)` pairs. In [`Mode::Apply`], the first fragment
/// that exits non-zero ends the script (`@@plumb-done failed`).
pub fn build(fragments: &[(Tag, String)], mode: Mode) -> String {
    let mut s = String::with_capacity(
        PRELUDE.len() + fragments.iter().map(|(_, f)| f.len() + 300).sum::<usize>(),
    );
    s.push_str(PRELUDE);
    for (tag, fragment) in fragments {
        // `( )` is a syntax error in sh: an empty fragment is a no-op.
        let body = if fragment.trim().is_empty() {
            ":"
        } else {
            fragment.as_str()
        };
        let nl = if body.ends_with('\n') { "" } else { "\n" };
        let t = tag.render();
        match mode {
            Mode::Observe => {
                // Blocks of 512 bytes (1024 in bash's non-POSIX mode: still bounded).
                let blocks = MAX_FRAME_BYTES / 512 + 1;
                s.push_str(&format!(
                    "(\nulimit -f {blocks} 2>/dev/null\n{body}{nl}) >\"$PLUMB_T/o\" 2>\"$PLUMB_T/e\" </dev/null\n\
                     rc=$?; plumb_frame {t} $rc $s\n"
                ));
            }
            Mode::Apply => {
                let cut = MAX_FRAME_BYTES + 1;
                s.push_str(&format!(
                    ": >\"$PLUMB_T/r\"\n\
                     {{ {{ (\n{body}{nl}); echo $? >\"$PLUMB_T/r\"; }} 2>&1 >&3 3>&- </dev/null | head -c {cut} >\"$PLUMB_T/e\"; }} 3>&1 | head -c {cut} >\"$PLUMB_T/o\"\n\
                     rc=1; read rc <\"$PLUMB_T/r\"; plumb_frame {t} $rc $s\n\
                     if [ \"$rc\" != 0 ]; then echo '@@plumb-done failed'; exit 0; fi\n"
                ));
            }
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
    /// The first fragment that printed more than [`MAX_FRAME_BYTES`] on a stream (its
    /// frame is dropped).
    pub oversize: Option<Tag>,
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
        // Base64 is 4/3 of the data: anything longer is over the limit, unread.
        let b64_limit = MAX_FRAME_BYTES.div_ceil(3) * 4 + 4;
        if o.len() > b64_limit || e.len() > b64_limit {
            out.oversize.get_or_insert(tag);
            continue;
        }
        let (Ok(stdout), Ok(stderr)) = (b64.decode(o), b64.decode(e)) else {
            continue;
        };
        if stdout.len() > MAX_FRAME_BYTES || stderr.len() > MAX_FRAME_BYTES {
            out.oversize.get_or_insert(tag);
            continue;
        }
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
            Mode::Observe,
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
            Mode::Observe,
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
            Mode::Apply,
        );
        let p = parse(&run_sh(&script));
        assert_eq!(p.completed, Some(false));
        assert_eq!(p.frames.len(), 1);
    }

    #[test]
    fn apply_mode_keeps_streams_and_status() {
        let script = build(
            &[
                (Tag::Apply(0), "echo out; echo err >&2".into()),
                (Tag::Apply(1), "echo half; exit 3".into()),
                (Tag::Apply(2), "echo never".into()),
            ],
            Mode::Apply,
        );
        let p = parse(&run_sh(&script));
        assert_eq!(p.completed, Some(false));
        let f0 = p.get(Tag::Apply(0)).expect("frame 0");
        assert_eq!(
            (
                f0.result.status,
                &f0.result.stdout[..],
                &f0.result.stderr[..]
            ),
            (0, &b"out\n"[..], &b"err\n"[..])
        );
        let f1 = p.get(Tag::Apply(1)).expect("frame 1");
        assert_eq!(
            (f1.result.status, &f1.result.stdout[..]),
            (3, &b"half\n"[..])
        );
        assert!(p.get(Tag::Apply(2)).is_none());
        assert_eq!(p.oversize, None);
    }

    /// A step that floods stdout or stderr is cut on the host just past the frame limit,
    /// in both modes: the script's whole output stays bounded.
    #[test]
    fn a_flood_is_cut_on_the_host() {
        for mode in [Mode::Observe, Mode::Apply] {
            for flood in ["yes plumb", "yes plumb >&2"] {
                let script = build(
                    &[
                        (Tag::Probe(0), flood.into()),
                        (Tag::Probe(1), "echo ok".into()),
                    ],
                    mode,
                );
                let out = run_sh(&script);
                assert!(
                    out.len() < 2 * MAX_FRAME_BYTES,
                    "{mode:?} {flood}: {}",
                    out.len()
                );
                let p = parse(&out);
                assert_eq!(p.oversize, Some(Tag::Probe(0)), "{mode:?} {flood}");
                assert!(p.get(Tag::Probe(0)).is_none());
            }
        }
    }

    /// When the reader goes away (plumb killed the session), the script still removes its
    /// temporary directory on the host.
    #[test]
    fn the_temporary_directory_goes_with_the_reader() {
        use std::io::Write;
        let tmp = tempfile::tempdir().expect("tmp");
        let script = build(&[(Tag::Probe(0), "echo hi".into())], Mode::Observe);
        let mut child = std::process::Command::new("sh")
            .arg("-s")
            .env("TMPDIR", tmp.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        drop(child.stdout.take());
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(script.as_bytes());
        drop(stdin);
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(141), "{status:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").collect();
        assert!(left.is_empty(), "{left:?}");
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
            let script = build(&[(Tag::Probe(0), format!("printf '%s' '{b64}' | base64 -d"))], Mode::Observe);
            let p = parse(&run_sh(&script));
            prop_assert_eq!(&p.get(Tag::Probe(0)).expect("frame").result.stdout, &data);
        }
    }
}
