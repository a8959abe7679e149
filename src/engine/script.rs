//! Whole-host scripts. Each round trip sends one script (the probes; or the applies, the
//! handlers and then the verify probes, [`build_apply_verify`]): every fragment runs in its own
//! subshell with stdin from /dev/null (the script itself arrives on stdin), and its stdout
//! and stderr go to two files of one temporary directory on the host. Nothing a fragment
//! prints reaches the script's own output while it runs. At the end (or at the first failure
//! of an apply) the script prints, with one `wc -c` and one `cat` for the whole host:
//!
//! ```text
//! @@plumb-run <tag>                                          (before each apply fragment: a
//!                                                             gone reader ends the script)
//! @@plumb-frames <tag>:<exit status>:<duration ms> ...      (one entry per fragment run)
//! <size> o0                                                  (wc -c: two files per fragment,
//! <size> e0                                                   stdout then stderr, in order)
//! ...
//! @@plumb-data
//! <the files' bytes, concatenated in that order>
//! @@plumb-done <ok|failed>
//! ```
//!
//! The parser reads exactly the sizes `wc` gave, so nothing a step prints can forge a frame
//! (its bytes are data at a known offset, whatever they contain: NULs, newlines, fake
//! markers), and the end line must stand exactly where the sizes say: a connection lost (or a
//! file that changed size after `wc`) leaves the script not completed, never misread.
//!
//! The framing spawns two processes per script instead of two or three per step (a `date`, a
//! `base64` for each stream that printed anything): process creation dominates a no-op
//! probe's cost on the host. Durations are measured only where they are reported: an apply
//! fragment's; a probe's duration is 0. The clock is `/proc/uptime` read by the shell's own
//! `read` (no process, no subshell; centiseconds, so a duration is a multiple of 10 ms), and
//! a host without it reports 0.
//!
//! What one fragment prints is bounded **on the host**, so a step that floods its output
//! (`yes`) neither fills the host's disk nor plumb's memory: each stream is cut just past
//! [`MAX_FRAME_BYTES`], and [`parse`] reports such a frame as [`Parsed::oversize`]. Probe
//! fragments (which must change nothing) run under `ulimit -f`, which costs no process;
//! apply fragments may legitimately write large files (packages, content), so their
//! streams go through `head -c` instead. A consequence, as with any tool that captures
//! output: a process an apply fragment starts in the background must not keep the
//! fragment's stdout/stderr open (`cmd >/dev/null 2>&1 &`), or the step waits for it.

use crate::modules::ProbeResult;

const PRELUDE: &str = r#"umask 022
PLUMB_T=$(mktemp -d "${TMPDIR:-/tmp}/plumb.XXXXXXXX") || { echo "@@plumb-fatal cannot create a temporary directory"; exit 0; }
trap 'rm -rf "$PLUMB_T"' EXIT
trap 'exit 129' HUP; trap 'exit 141' PIPE; trap 'exit 143' TERM
PLUMB_S=; PLUMB_F=
plumb_now() {
  PLUMB_N=0; [ -r /proc/uptime ] || return 0
  read -r PLUMB_U PLUMB_R 2>/dev/null </proc/uptime || return 0
  case $PLUMB_U in *.*) ;; *) return 0;; esac
  PLUMB_U=${PLUMB_U%.*}${PLUMB_U#*.}; PLUMB_U=${PLUMB_U#"${PLUMB_U%%[!0]*}"}
  case $PLUMB_U in ''|*[!0-9]*) ;; *) PLUMB_N=$PLUMB_U;; esac
}
plumb_end() {
  cd "$PLUMB_T" || { echo "@@plumb-fatal cannot enter the temporary directory"; exit 0; }
  printf '@@plumb-frames%s\n' "$PLUMB_S"
  if [ -n "$PLUMB_F" ]; then wc -c $PLUMB_F || exit 0; fi
  printf '@@plumb-data\n'
  if [ -n "$PLUMB_F" ]; then cat $PLUMB_F || exit 0; fi
  printf '\n@@plumb-done %s\n' "$1"
}
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
    /// A step's probe again, after the applies and handlers of the same script.
    Verify(usize),
    /// The host's facts (`facts::SCRIPT`), riding along with the probes.
    Facts,
}

impl Tag {
    fn render(self) -> String {
        match self {
            Tag::Probe(i) => format!("p{i}"),
            Tag::Apply(i) => format!("a{i}"),
            Tag::Refresh(i) => format!("h{i}"),
            Tag::Verify(i) => format!("v{i}"),
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
            "v" => Some(Tag::Verify(n)),
            _ => None,
        }
    }
}

/// Builds a script from `(tag, fragment)` pairs. In [`Mode::Apply`], the first fragment
/// that exits non-zero ends the script (`@@plumb-done failed`).
pub fn build(fragments: &[(Tag, String)], mode: Mode) -> String {
    build_parts(&[(fragments, mode)])
}

/// Builds one script that applies `apply` (changes, then handlers) as [`Mode::Apply`] does,
/// stopping at the first failure, and then, only when every one succeeded, runs `verify`
/// (probes, tagged [`Tag::Verify`]) as [`Mode::Observe`] does. Every fragment of both parts
/// is framed the same way, so the combined output is parsed as exactly as either alone.
pub fn build_apply_verify(apply: &[(Tag, String)], verify: &[(Tag, String)]) -> String {
    build_parts(&[(apply, Mode::Apply), (verify, Mode::Observe)])
}

/// The script of consecutive parts, each run in its mode; file names count across parts.
fn build_parts(parts: &[(&[(Tag, String)], Mode)]) -> String {
    let size: usize = parts
        .iter()
        .flat_map(|(f, _)| f.iter())
        .map(|(_, f)| f.len() + 300)
        .sum();
    let mut s = String::with_capacity(PRELUDE.len() + size);
    s.push_str(PRELUDE);
    if parts
        .iter()
        .any(|(f, m)| *m == Mode::Apply && !f.is_empty())
    {
        s.push_str("plumb_now; s=$PLUMB_N\n");
    }
    let mut k = 0;
    for (fragments, mode) in parts {
        for (tag, fragment) in fragments.iter() {
            push_fragment(&mut s, k, *tag, fragment, *mode);
            k += 1;
        }
    }
    s.push_str("plumb_end ok\n");
    s
}

/// Appends fragment number `k` of a script, framed for `mode`.
fn push_fragment(s: &mut String, k: usize, tag: Tag, fragment: &str, mode: Mode) {
    // `( )` is a syntax error in sh: an empty fragment is a no-op.
    let body = if fragment.trim().is_empty() {
        ":"
    } else {
        fragment
    };
    let nl = if body.ends_with('\n') { "" } else { "\n" };
    let t = tag.render();
    let files = format!("PLUMB_F=\"$PLUMB_F o{k} e{k}\"\n");
    match mode {
        Mode::Observe => {
            // Blocks of 512 bytes (1024 in bash's non-POSIX mode: still bounded).
            let blocks = MAX_FRAME_BYTES / 512 + 1;
            s.push_str(&format!(
                "(\nulimit -f {blocks} 2>/dev/null\n{body}{nl}) >\"$PLUMB_T/o{k}\" 2>\"$PLUMB_T/e{k}\" </dev/null\n\
                 PLUMB_S=\"$PLUMB_S {t}:$?:0\"; {files}"
            ));
        }
        Mode::Apply => {
            let cut = MAX_FRAME_BYTES + 1;
            // Before each change, one line to plumb (a builtin, no process): when plumb is
            // gone (killed, its connection closed) the write raises SIGPIPE and the script
            // ends there, instead of changing the host behind the next run's back.
            s.push_str(&format!("printf '@@plumb-run {t}\\n'\n"));
            s.push_str(&format!(
                ": >\"$PLUMB_T/r\"\n\
                 {{ {{ (\n{body}{nl}); echo $? >\"$PLUMB_T/r\"; }} 2>&1 >&3 3>&- </dev/null | head -c {cut} >\"$PLUMB_T/e{k}\"; }} 3>&1 | head -c {cut} >\"$PLUMB_T/o{k}\"\n\
                 rc=1; read rc <\"$PLUMB_T/r\"\n\
                 plumb_now; e=$PLUMB_N; d=0; if [ \"$s\" != 0 ] && [ \"$e\" != 0 ]; then d=$(( (e - s) * 10 )); fi; s=$e\n\
                 PLUMB_S=\"$PLUMB_S {t}:$rc:$d\"; {files}\
                 if [ \"$rc\" != 0 ]; then plumb_end failed; exit 0; fi\n"
            ));
        }
    }
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

/// One `<tag>:<status>:<ms>` entry of the `@@plumb-frames` line.
fn frame_entry(entry: &str) -> Option<(Tag, i32, u64)> {
    let mut it = entry.split(':');
    let (tag, rc, ms) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((Tag::parse(tag)?, rc.parse().ok()?, ms.parse().ok()?))
}

/// The next `\n`-terminated line of `out` from `*at` (without the newline), advancing `*at`.
fn next_line<'a>(out: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let rest = out.get(*at..)?;
    let end = rest.iter().position(|b| *b == b'\n')?;
    *at += end + 1;
    Some(&rest[..end])
}

/// The sizes `wc -c` printed (`<size> <name>` per file, then `<size> total` when more than
/// one), in order, up to the `@@plumb-data` line. `None` when a line is anything else.
fn sizes(out: &[u8], at: &mut usize) -> Option<Vec<(String, usize)>> {
    let mut files = Vec::new();
    loop {
        let line = std::str::from_utf8(next_line(out, at)?).ok()?;
        if line == "@@plumb-data" {
            return Some(files);
        }
        let mut words = line.split_whitespace();
        let (size, name) = (words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        if name != "total" {
            files.push((name.to_string(), size.parse().ok()?));
        }
    }
}

/// Parses a script's stdout (see the module's documentation for the format). Frames whose
/// bytes arrived are returned even when the end line did not (`completed: None`).
pub fn parse(stdout: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0;
    let entries = loop {
        let Some(line) = next_line(stdout, &mut at) else {
            return out;
        };
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("@@plumb-fatal ") {
            out.fatal = Some(rest.to_string());
            return out;
        }
        if let Some(rest) = line.strip_prefix("@@plumb-frames") {
            break rest
                .split_whitespace()
                .map(frame_entry)
                .collect::<Option<Vec<_>>>();
        }
    };
    let (Some(entries), Some(files)) = (entries, sizes(stdout, &mut at)) else {
        return out;
    };
    // Two files per frame, stdout then stderr, named after the fragment's position.
    if files.len() != 2 * entries.len() {
        return out;
    }
    for ((tag, status, duration_ms), pair) in entries.into_iter().zip(files.chunks(2)) {
        let [(o_name, o_len), (e_name, e_len)] = pair else {
            return out;
        };
        if !(o_name.starts_with('o') && e_name.starts_with('e') && o_name[1..] == e_name[1..]) {
            return out;
        }
        let (Some(o), Some(e)) = (
            stdout.get(at..at.saturating_add(*o_len)),
            stdout.get(at.saturating_add(*o_len)..at.saturating_add(o_len + e_len)),
        ) else {
            return out;
        };
        at += o_len + e_len;
        if o.len() > MAX_FRAME_BYTES || e.len() > MAX_FRAME_BYTES {
            out.oversize.get_or_insert(tag);
            continue;
        }
        out.frames.push(Frame {
            tag,
            result: ProbeResult {
                stdout: o.to_vec(),
                stderr: e.to_vec(),
                status,
            },
            duration_ms,
        });
    }
    // The end line must stand exactly where the sizes say.
    let end = stdout.get(at..).unwrap_or_default();
    out.completed = match end {
        b"\n@@plumb-done ok\n" => Some(true),
        b"\n@@plumb-done failed\n" => Some(false),
        _ => None,
    };
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

    /// The verify part runs after every apply succeeded, sees what they did, and is framed
    /// like any probe; a failed apply ends the script before it.
    #[test]
    fn apply_then_verify_in_one_script() {
        let tmp = tempfile::tempdir().expect("tmp");
        let m = tmp.path().join("m");
        let m = m.display();
        let apply = [
            (Tag::Apply(0), format!("echo made; touch '{m}'")),
            (Tag::Refresh(0), "echo refreshed >&2".to_string()),
        ];
        let verify = [
            (Tag::Verify(0), format!("[ -e '{m}' ] && echo present")),
            (Tag::Verify(3), "exit 5".to_string()),
        ];
        let p = parse(&run_sh(&build_apply_verify(&apply, &verify)));
        assert_eq!(p.completed, Some(true));
        assert_eq!(p.frames.len(), 4);
        let tags: Vec<Tag> = p.frames.iter().map(|f| f.tag).collect();
        assert_eq!(
            tags,
            [
                Tag::Apply(0),
                Tag::Refresh(0),
                Tag::Verify(0),
                Tag::Verify(3)
            ]
        );
        assert_eq!(p.frames[0].result.stdout, b"made\n");
        assert_eq!(p.frames[1].result.stderr, b"refreshed\n");
        assert_eq!(p.frames[2].result.stdout, b"present\n");
        assert_eq!(p.frames[3].result.status, 5, "a probe's status is data");

        let failing = [(Tag::Apply(0), "exit 2".to_string())];
        let p = parse(&run_sh(&build_apply_verify(&failing, &verify)));
        assert_eq!(p.completed, Some(false));
        assert_eq!(p.frames.len(), 1, "no verify after a failed apply");
        assert_eq!(p.frames[0].result.status, 2);
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
        let whole =
            b"@@plumb-frames p0:0:0\n2 o0\n0 e0\n2 total\n@@plumb-data\nhi\n@@plumb-done ok\n";
        assert_eq!(parse(whole).completed, Some(true));
        let p = parse(&whole[..whole.len() - 1]);
        assert_eq!(p.completed, None);
        assert_eq!(p.frames[0].result.stdout, b"hi");
        // The end line elsewhere than where the sizes say is not an end.
        let early = b"@@plumb-frames p0:0:0\n9 o0\n0 e0\n@@plumb-data\nhi\n@@plumb-done ok\n";
        assert_eq!(parse(early).completed, None);
    }

    /// An apply whose reader is gone (plumb killed, the connection closed) stops before
    /// its next change, and still removes its temporary directory.
    #[test]
    fn an_apply_stops_when_its_reader_is_gone() {
        use std::io::Write;
        let tmp = tempfile::tempdir().expect("tmp");
        let marker = tmp.path().join("changed");
        let script = build_apply_verify(
            &[(Tag::Apply(0), format!("touch '{}'", marker.display()))],
            &[(Tag::Verify(0), "echo probe".into())],
        );
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
        assert!(!marker.exists(), "the change ran with nobody reading");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Per step, the probe framing spawns no process: only the two at the end (`wc`, `cat`)
    /// and the temporary directory's `mktemp` remain, whatever the number of steps.
    #[test]
    fn probe_framing_spawns_no_process_per_step() {
        let script = build(
            &(0..50)
                .map(|i| (Tag::Probe(i), ":".to_string()))
                .collect::<Vec<_>>(),
            Mode::Observe,
        );
        // The verify part of an apply-then-verify script is framed the same way.
        let combined = build_apply_verify(
            &[(Tag::Apply(0), ":".to_string())],
            &(0..50)
                .map(|i| (Tag::Verify(i), ":".to_string()))
                .collect::<Vec<_>>(),
        );
        let apply_end = "plumb_end failed; exit 0; fi\n";
        let verify_part =
            &combined[combined.find(apply_end).expect("apply part") + apply_end.len()..];
        assert!(verify_part.contains("v49:"), "{verify_part}");
        for body in [&script[PRELUDE.len()..], verify_part] {
            for spawner in ["date", "base64", "$(", "wc ", "cat ", "head "] {
                assert!(
                    !body.contains(spawner),
                    "{spawner} in a probe's framing:\n{body}"
                );
            }
        }
    }

    /// An applied step's duration costs no process and no subshell: the clock is the shell
    /// reading /proc/uptime (centiseconds). A step that sleeps 0.3 s reports at least 200 ms,
    /// in steps of 10 ms.
    #[test]
    fn apply_timing_spawns_no_process() {
        let fragments: Vec<(Tag, String)> = (0..20).map(|i| (Tag::Apply(i), ":".into())).collect();
        let script = build(&fragments, Mode::Apply);
        for spawner in ["date", "$(plumb_now)", "$(date"] {
            assert!(!script.contains(spawner), "{spawner} in the apply framing");
        }
        let p = parse(&run_sh(&build(
            &[(Tag::Apply(0), "sleep 0.3".into())],
            Mode::Apply,
        )));
        let d = p.get(Tag::Apply(0)).expect("frame").duration_ms;
        assert!(d >= 200 && d.is_multiple_of(10), "{d} ms");
    }

    fn b64(data: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    /// Bytes a host could print: anything, with NULs, newlines and fake framing lines mixed in.
    fn hostile() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            Just(b"\n@@plumb-done ok\n".to_vec()),
            Just(b"\n@@plumb-data\n".to_vec()),
            Just(b"@@plumb-frames p0:0:0 p1:0:0\n".to_vec()),
            Just(b"99 o0\n".to_vec()),
            Just(b"\0\0\n".to_vec()),
        ];
        proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        /// Whatever bytes fragments print on either stream (NULs, fake end lines, fake frame
        /// and size lines), they come back exactly, in both modes, and the frames of the other
        /// fragments are untouched: nothing a host prints can forge or shift a frame.
        #[test]
        fn arbitrary_output_survives(out in hostile(), err in hostile(), apply in any::<bool>()) {
            let (o, e) = (b64(&out), b64(&err));
            let mode = if apply { Mode::Apply } else { Mode::Observe };
            let script = build(&[
                (Tag::Probe(0), format!("printf '%s' '{o}' | base64 -d; printf '%s' '{e}' | base64 -d >&2")),
                (Tag::Probe(1), "printf 'second'".into()),
            ], mode);
            let p = parse(&run_sh(&script));
            prop_assert_eq!(p.completed, Some(true));
            prop_assert_eq!(p.frames.len(), 2);
            let f0 = &p.get(Tag::Probe(0)).expect("frame").result;
            prop_assert_eq!(&f0.stdout, &out);
            prop_assert_eq!(&f0.stderr, &err);
            prop_assert_eq!(&p.get(Tag::Probe(1)).expect("frame").result.stdout, b"second");
        }

        /// The same in one apply-then-verify script: whatever the apply and the verify
        /// fragments print comes back exactly, each in its own frame.
        #[test]
        fn arbitrary_output_survives_apply_then_verify(out in hostile(), err in hostile()) {
            let (o, e) = (b64(&out), b64(&err));
            let print = format!("printf '%s' '{o}' | base64 -d; printf '%s' '{e}' | base64 -d >&2");
            let script = build_apply_verify(
                &[(Tag::Apply(0), print.clone()), (Tag::Refresh(1), "printf 'refreshed'".into())],
                &[(Tag::Verify(0), print), (Tag::Verify(1), "printf 'second'".into())],
            );
            let p = parse(&run_sh(&script));
            prop_assert_eq!(p.completed, Some(true));
            prop_assert_eq!(p.frames.len(), 4);
            for tag in [Tag::Apply(0), Tag::Verify(0)] {
                let f = &p.get(tag).expect("frame").result;
                prop_assert_eq!(&f.stdout, &out);
                prop_assert_eq!(&f.stderr, &err);
            }
            prop_assert_eq!(&p.get(Tag::Refresh(1)).expect("frame").result.stdout, b"refreshed");
            prop_assert_eq!(&p.get(Tag::Verify(1)).expect("frame").result.stdout, b"second");
        }

        /// An apply-then-verify script's output cut anywhere is never completed, and every
        /// frame it still yields is exactly one the whole output has.
        #[test]
        fn truncation_is_detected_apply_then_verify(out in hostile(), cut in any::<proptest::sample::Index>()) {
            let o = b64(&out);
            let script = build_apply_verify(
                &[(Tag::Apply(0), format!("printf '%s' '{o}' | base64 -d"))],
                &[(Tag::Verify(0), format!("printf '%s' '{o}' | base64 -d >&2"))],
            );
            let whole = run_sh(&script);
            let full = parse(&whole);
            prop_assert_eq!(full.completed, Some(true));
            let short = parse(&whole[..cut.index(whole.len())]);
            prop_assert_eq!(short.completed, None);
            for f in &short.frames {
                prop_assert_eq!(Some(f), full.get(f.tag));
            }
        }

        /// A script's output cut anywhere (the connection lost) is never completed, and every
        /// frame it still yields is exactly one the whole output has.
        #[test]
        fn truncation_is_detected(out in hostile(), cut in any::<proptest::sample::Index>()) {
            let o = b64(&out);
            let script = build(&[
                (Tag::Probe(0), format!("printf '%s' '{o}' | base64 -d")),
                (Tag::Probe(1), format!("printf '%s' '{o}' | base64 -d >&2")),
            ], Mode::Observe);
            let whole = run_sh(&script);
            let full = parse(&whole);
            prop_assert_eq!(full.completed, Some(true));
            let short = parse(&whole[..cut.index(whole.len())]);
            prop_assert_eq!(short.completed, None);
            for f in &short.frames {
                prop_assert_eq!(Some(f), full.get(f.tag));
            }
        }
    }
}
