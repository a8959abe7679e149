//! The one way values reach a shell, and the one way probe output is read back.
//!
//! - [`quote`] turns any string into one POSIX sh word that the shell reads back exactly;
//! - [`write_bytes`] embeds arbitrary bytes (file content) as base64 *data*;
//! - [`b64_of`] is the probe-side counterpart: print a shell value base64-encoded;
//! - [`Observed`] parses the `key=value` lines a probe prints.
//!
//! Probe output format, shared by every module: one `key=value` per line, split at the first
//! `=`. Values that may hold arbitrary bytes are base64-encoded and their key ends in `_b64`.
//! Blank lines are ignored; any other line without `=`, or a line that is not UTF-8, is an
//! error (it means the probe's output was polluted).

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{ProbeError, ProbeResult};

/// Quotes `s` as a single POSIX sh word: the shell reads back exactly `s`, expanding nothing.
///
/// Words made only of characters that are never special (`A-Za-z0-9` and `-_./:,+@%`) are
/// returned as they are; everything else is wrapped in single quotes, where POSIX sh treats
/// every byte literally except `'` itself, which is written as `'\''`. `=` is deliberately
/// not in the bare set, so a quoted word is never taken for an assignment.
///
/// A NUL character cannot be part of a shell word (argv strings end at NUL), so it is
/// dropped; modules reject NUL in their parameters at build time ([`reject_nul`]) so this
/// never silently changes a value that came from a config repo.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,+@%".contains(&b))
    {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Base64 (standard alphabet, padded) of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes base64 as printed by `base64` (newlines and surrounding whitespace ignored).
pub fn unb64(s: &str) -> Result<Vec<u8>, ProbeError> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|e| ProbeError::new(format!("bad base64 in probe output: {e}")))
}

/// A command that writes `bytes` to the file named by the shell word `dest` (already quoted,
/// or a `"$var"` reference). The bytes travel as base64 data inside a single-quoted word,
/// wrapped at 76 columns; nothing in them is ever read as code.
pub fn write_bytes(bytes: &[u8], dest: &str) -> String {
    let enc = b64(bytes);
    let mut wrapped = String::with_capacity(enc.len() + enc.len() / 76 + 1);
    for (i, chunk) in enc.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            wrapped.push('\n');
        }
        // base64 is ASCII, so every chunk is valid UTF-8.
        wrapped.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    format!("printf '%s\\n' '{wrapped}' | base64 -d > {dest}")
}

/// A command that writes `bytes` to the file named by the shell word `dest`, as
/// [`write_bytes`] does; text (UTF-8 without NUL) is written by `printf`, a shell builtin,
/// from one single-quoted word ([`quote`]: nothing in it is read as code), so no process is
/// started and the content reaches no process's arguments.
pub fn write_content(bytes: &[u8], dest: &str) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => format!("printf '%s' {} > {dest}", quote(text)),
        _ => write_bytes(bytes, dest),
    }
}

/// A probe line printing `key_b64=<base64 of the output of cmd>`; `cmd` is a shell
/// command (already quoted). Trailing newlines of the output are kept.
pub fn print_b64(key: &str, cmd: &str) -> String {
    format!("printf '{key}_b64='; {{ {cmd}; }} | base64 | tr -d '\\n'; echo")
}

/// A probe line printing `key_b64=<base64 of the value of a shell expression>` such as `"$t"`.
pub fn print_var_b64(key: &str, expr: &str) -> String {
    print_b64(key, &format!("printf '%s' {expr}"))
}

/// The parent directory of an absolute path (`/` for `/x`).
pub fn parent(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => trimmed[..i].to_string(),
    }
}

/// A fragment that prints `type=` for the path in `$p`: `absent`, `file`, `directory`,
/// `symlink` (any link, even to a directory) or `other` (fifo, socket, device).
pub const PROBE_TYPE: &str = r#"if [ -L "$p" ]; then echo type=symlink
elif [ -d "$p" ]; then echo type=directory
elif [ -f "$p" ]; then echo type=file
elif [ -e "$p" ]; then echo type=other
else echo type=absent
fi"#;

/// Shell for probe batches ([`super::ProbeBatch`]): a function `plumb_ty PATH` setting `t`
/// to the words [`PROBE_TYPE`] prints, and `plumb_nl`, a newline.
pub const TYPE_FN: &str = r#"plumb_ty() { if [ -L "$1" ]; then t=symlink; elif [ -d "$1" ]; then t=directory; elif [ -f "$1" ]; then t=file; elif [ -e "$1" ]; then t=other; else t=absent; fi; }
plumb_nl='
'"#;

/// Shell for probe batches: sets the positional parameters to `what(k)` for each of the `n`
/// members `k` whose shell condition `cond(k)` holds, in order (one command for all of them).
pub fn args_where(
    n: usize,
    cond: &dyn Fn(usize) -> String,
    what: &dyn Fn(usize) -> String,
) -> String {
    let mut s = "set --\n".to_string();
    for k in 0..n {
        s += &format!("{} && set -- \"$@\" {}\n", cond(k), what(k));
    }
    s
}

/// Shell for probe batches: splits `$var` (the output of one command run with
/// [`args_where`]'s arguments) into lines and gives each member `k` whose `cond(k)` holds
/// its next `lines` lines as `$1`..: `take(k)` runs with them, or `short(k)` when fewer are
/// left (the command failed or printed less).
pub fn take_lines(
    var: &str,
    n: usize,
    lines: usize,
    cond: &dyn Fn(usize) -> String,
    take: &dyn Fn(usize) -> String,
    short: &dyn Fn(usize) -> String,
) -> String {
    let mut s = format!("IFS=$plumb_nl; set -f; set -- ${var}; unset IFS; set +f\n");
    for k in 0..n {
        s += &format!(
            "if {}; then if [ $# -ge {lines} ]; then {}; shift {lines}; else {}; fi; fi\n",
            cond(k),
            take(k),
            short(k)
        );
    }
    s
}

/// The `stat` format of [`PROBE_STAT`]'s lines.
pub const STAT_FORMAT: &str = "mode=%a\nuid=%u\nowner=%U\ngid=%g\ngroup=%G\nsize=%s";

/// A fragment that prints `mode=`, `uid=`, `owner=`, `gid=`, `group=` and `size=` of `$p`.
pub const PROBE_STAT: &str = r#"stat -c 'mode=%a
uid=%u
owner=%U
gid=%g
group=%G
size=%s' -- "$p" || exit 1"#;

/// The name of the last component of an absolute path (`app.conf` for `/etc/app.conf`).
pub fn base_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) => trimmed[i + 1..].to_string(),
        None => trimmed.to_string(),
    }
}

/// What [`enter_parent`] does about a directory on the way that does not exist.
#[derive(Debug, Clone, Copy)]
pub enum Missing<'a> {
    /// Fail the fragment with this message.
    Fail(&'a str),
    /// Create it (`mkdir`, as the acting user, inside a directory just checked).
    Create,
}

/// Shell functions of [`enter_parent`]: `plumb_trusted DIR [ENTRY]` holds when only root
/// or the acting user can change DIR's entries (with the sticky bit: when ENTRY is theirs);
/// `plumb_walk PATH CREATE MESSAGE` checks that every entry on PATH sits in such a directory,
/// and sets `plumb_dt=1` when PATH itself is such a directory (from the same `stat`; one it
/// created is), else empty.
/// The walk asks one `stat` for every directory on the way that exists (not one per
/// component); a directory it creates itself (`mkdir`, inside a directory just checked) is
/// the acting user's, so only the umask tells whether others could write it. Only a
/// world-writable sticky directory on the way (`/tmp`) costs one more `stat`, of the entry.
/// The acting user (`plumb_me`, the effective uid) is read from `/proc/self/status` by the
/// shell's own `read` (the shell is `self`: no process); `id -u` where there is none.
const WALK: &str = r#"plumb_me=
if [ -r /proc/self/status ]; then
  while read -r plumb_k plumb_r plumb_e plumb_x; do
    if [ "$plumb_k" = Uid: ]; then plumb_me=$plumb_e; break; fi
  done </proc/self/status
fi
case $plumb_me in ''|*[!0-9]*) plumb_me=$(id -u) || exit 1 ;; esac
plumb_fail() { printf '%s\n' "$1" >&2; exit 1; }
plumb_below() { plumb_fail "plumb will not act below $1: a user other than root can change it and could redirect the change (make it writable by root only)"; }
plumb_ok() {
  [ "$plumb_u" = 0 ] || [ "$plumb_u" = "$plumb_me" ] || return 1
  [ $(( 0$plumb_m & 022 )) -eq 0 ] && return 0
  [ -n "${2:-}" ] && [ $(( 0$plumb_m & 01000 )) -ne 0 ] || return 1
  plumb_u=$(stat -c %u -- "$2") || return 1
  [ "$plumb_u" = 0 ] || [ "$plumb_u" = "$plumb_me" ]
}
plumb_trusted() {
  plumb_s=$(stat -L -c '%u %a' -- "$1") || return 1
  plumb_u=${plumb_s% *}; plumb_m=${plumb_s#* }
  plumb_ok "$1" "${2:-}"
}
plumb_walk() {
  plumb_p=$1; plumb_o=$2; plumb_g=$3
  set -- /; plumb_x=; plumb_r=${plumb_p#/}
  while [ -n "$plumb_r" ]; do
    plumb_n=${plumb_r%%/*}
    case $plumb_r in */*) plumb_r=${plumb_r#*/} ;; *) plumb_r= ;; esac
    [ -n "$plumb_n" ] || continue
    plumb_x=$plumb_x/$plumb_n
    [ -d "$plumb_x" ] || break
    set -- "$@" "$plumb_x"
  done
  plumb_s=$(stat -L -c '%u %a' -- "$@") || plumb_fail "plumb could not check the directories on the way to $plumb_p"
  set -- $plumb_s
  plumb_x=; plumb_r=${plumb_p#/}
  while [ -n "$plumb_r" ]; do
    plumb_n=${plumb_r%%/*}
    case $plumb_r in */*) plumb_r=${plumb_r#*/} ;; *) plumb_r= ;; esac
    [ -n "$plumb_n" ] || continue
    plumb_c=$plumb_x/$plumb_n
    if [ $# -ge 2 ]; then
      plumb_u=$1; plumb_m=$2; shift 2
      plumb_ok "${plumb_x:-/}" "$plumb_c" || plumb_below "${plumb_x:-/}"
    else
      [ $(( 0$(umask) & 022 )) -eq 18 ] || plumb_below "$plumb_x"
    fi
    if [ ! -e "$plumb_c" ] && [ ! -L "$plumb_c" ]; then
      if [ "$plumb_o" = create ]; then mkdir -- "$plumb_c" || exit 1; else plumb_fail "$plumb_g"; fi
    fi
    [ -d "$plumb_c" ] || plumb_fail "$plumb_c is not a directory"
    plumb_x=$plumb_c
  done
  plumb_dt=1
  if [ $# -ge 2 ]; then plumb_u=$1; plumb_m=$2; plumb_ok "${plumb_x:-/}" || plumb_dt=; fi
}"#;

/// The one way an apply reaches a path: every path-based module's apply starts with it, in
/// the same fragment that acts. It sets `d` (the parent directory of `path`), `b` (the
/// name in it) and `P` (where `d` physically is), and `cd`s into `d`, after checking that
/// nobody but root (or the acting user) can change any directory on the way, neither on
/// the path as written nor on the physical path the shell reached; so no user can redirect
/// what follows. When the physical path is the path as written (no symbolic link on the
/// way), the second check would stat the same directories again for the same answer (the
/// first found that only root or the acting user can change them): it is skipped. The fragment then acts only on `./$b` (or through [`PRIVATE_DIR`]), with
/// forms that do not follow a symbolic link at `$b`. `d` itself may be writable by others
/// (a user's home directory): [`hold_file`] and [`enter_target`] are safe there.
pub fn enter_parent(path: &str, missing: Missing<'_>) -> String {
    enter_dir(&quote(&parent(path)), &quote(&base_name(path)), missing)
}

/// [`enter_parent`] for a directory and name given as shell words (quoted values, or
/// expansions such as `"$HOME/.ssh"`).
pub fn enter_dir(dir_word: &str, base_word: &str, missing: Missing<'_>) -> String {
    let (mode, message) = match missing {
        Missing::Fail(m) => ("fail", quote(m)),
        Missing::Create => ("create", "''".to_string()),
    };
    format!(
        "{WALK}\nd={d}\nb={b}\nplumb_walk \"$d\" {mode} {message}\ncd -P -- \"$d\" || exit 1\nP=$(pwd -P) || exit 1\n[ \"$P\" = \"$d\" ] || plumb_walk \"$P\" fail {message}\n",
        d = dir_word,
        b = base_word,
    )
}

/// After [`enter_parent`]: makes a private directory `$w` beside the target (mode 0700,
/// the acting user's; 2700 below a set-group-ID directory, whose group it inherits),
/// enters it and checks it is the one just made; it is removed when the fragment exits.
/// Files written here cannot be swapped by anyone; `../$b` is the target, and a rename
/// (`mv -f -T -- f "../$b"`) puts a file in place without following whatever is at `$b`.
/// The same `stat` sets `plumb_wi` (`uid:gid`) and `plumb_wn` (`user:group`): the owner a
/// file created here has, so an apply can leave out a `chown` that would change nothing.
pub const PRIVATE_DIR: &str = r#"w=$(mktemp -d ./.plumb.XXXXXX) || exit 1
w=${w#./}
trap 'cd -P -- "$P" 2>/dev/null && rm -rf -- "./$w"' EXIT
cd -P -- "$w" || exit 1
plumb_w=$(stat -c '%u:%a %u:%g %U:%G' .) || plumb_fail "$d changed while plumb was working in it"
plumb_wn=${plumb_w#* }; plumb_wi=${plumb_wn%% *}; plumb_wn=${plumb_wn#* }; plumb_w=${plumb_w%% *}
[ "$(pwd -P)" = "${P%/}/$w" ] && { [ "$plumb_w" = "$plumb_me:700" ] || [ "$plumb_w" = "$plumb_me:2700" ]; } || plumb_fail "$d changed while plumb was working in it"
"#;

/// After [`PRIVATE_DIR`]: `o` becomes a hard link to what is at the target now, so it can
/// be read and changed without a race. Fails unless it is a regular file; in a directory
/// other users can write (`plumb_dt` empty: the walk's own `stat` of it), also when it has
/// other hard links (one of them could be a file that user may not change, e.g.
/// /etc/shadow). `$1` is the message for a path that is no longer a regular file.
pub fn hold_file(changed: &str) -> String {
    format!(
        r#"ln -P -- "../$b" o 2>/dev/null && [ -f o ] && [ ! -L o ] || plumb_fail {changed}
if [ "$plumb_dt" != 1 ]; then [ "$(stat -c %h o)" = 2 ] || plumb_fail "$d/$b has other hard links and other users can write $d: plumb will not change it"; fi
"#,
        changed = quote(changed)
    )
}

/// After [`enter_parent`]: enters the directory `./$b` itself (not through a link), so
/// `chmod`/`chown` act on `.`. `$1`: the message when it is not a directory (any more).
pub fn enter_target(changed: &str) -> String {
    format!(
        r#"[ -d "./$b" ] && [ ! -L "./$b" ] && cd -P -- "./$b" && [ "$(pwd -P)" = "${{P%/}}/$b" ] || plumb_fail {changed}
"#,
        changed = quote(changed)
    )
}

/// Probe side of [`enter_parent`]: opens the regular file `$p` once as fd 3 and checks that
/// what was opened is the file at the path itself, not what a symbolic link swapped in
/// since the type check points to (e.g. /etc/shadow, whose content would then reach a plan);
/// commands then read `/dev/fd/3`.
pub const OPEN_P: &str = r#"exec 3<"$p" && [ "$(stat -L -c %d:%i /dev/fd/3)" = "$(stat -c %d:%i -- "$p")" ] || { printf '%s\n' "$p changed while plumb read it" >&2; exit 1; }"#;

/// A subshell that replaces the file at the absolute `path` with `bytes` (mode `mode`,
/// owned by the acting user): written in a [`PRIVATE_DIR`] beside it, renamed into place,
/// every directory on the way checked and created as needed ([`enter_parent`]). For the
/// root-owned configuration files the service modules write (units, apt sources, keys).
pub fn replace_file(path: &str, bytes: &[u8], mode: &str) -> String {
    format!(
        "(\n{enter}{PRIVATE_DIR}{write} || exit 1\nchmod -- {mode} f || exit 1\nmv -f -T -- f \"../$b\" || exit 1\n) || exit 1\n",
        enter = enter_parent(path, Missing::Create),
        write = write_bytes(bytes, "f"),
        mode = quote(mode),
    )
}

/// A shell function `plumb_hash FILE` printing `absent`, `other` (not a regular file, or
/// a symbolic link) or the sha256 of a regular file: how the service modules' probes see
/// the files they own.
pub const HASH_FN: &str = r#"plumb_hash() { if [ -L "$1" ]; then echo other; elif [ -f "$1" ]; then plumb_h=$(sha256sum < "$1") || exit 1; echo "${plumb_h%% *}"; elif [ -e "$1" ]; then echo other; else echo absent; fi; }"#;

/// A shell command that fails the fragment with `message` on stderr. `message` is quoted here.
pub fn fail(message: &str) -> String {
    format!("{{ printf '%s\\n' {} >&2; exit 1; }}", quote(message))
}

/// Rejects NUL characters anywhere in the parameters: they cannot reach a shell intact.
/// `except` lists JSON pointers whose strings travel as data (e.g. `/content`).
pub fn reject_nul(value: &serde_json::Value, except: &[&str]) -> Result<(), super::BuildError> {
    fn walk(v: &serde_json::Value, at: &str, except: &[&str]) -> Result<(), super::BuildError> {
        if except.contains(&at) {
            return Ok(());
        }
        match v {
            serde_json::Value::String(s) if s.contains('\0') => Err(super::BuildError::at(
                at,
                "contains a NUL character, which cannot be passed to a shell",
            )),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| walk(x, &format!("{at}/{i}"), except)),
            serde_json::Value::Object(m) => m.iter().try_for_each(|(k, x)| {
                let key = k.replace('~', "~0").replace('/', "~1");
                walk(x, &format!("{at}/{key}"), except)
            }),
            _ => Ok(()),
        }
    }
    walk(value, "", except)
}

/// Normalises an octal mode to four digits: `644`, `0644` → `0644`; `02755` → `2755`.
pub fn norm_mode(mode: &str) -> String {
    let t = mode.trim().trim_start_matches('0');
    format!("{t:0>4}")
}

/// The parsed `key=value` output of a probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    values: BTreeMap<String, Vec<String>>,
}

impl Observed {
    /// Parses a probe result. A non-zero exit status is an error that carries stderr.
    pub fn parse(result: &ProbeResult) -> Result<Observed, ProbeError> {
        if result.status != 0 {
            let err = String::from_utf8_lossy(&result.stderr);
            let err = err.trim();
            return Err(ProbeError::new(if err.is_empty() {
                format!("probe failed with status {}", result.status)
            } else {
                format!("probe failed with status {}: {err}", result.status)
            }));
        }
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, raw) in result.stdout.split(|b| *b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let line = std::str::from_utf8(raw).map_err(|_| {
                ProbeError::new(format!("probe output line {} is not UTF-8", n + 1))
            })?;
            let Some((k, v)) = line.split_once('=') else {
                let shown: String = line.chars().take(80).collect();
                return Err(ProbeError::new(format!(
                    "unexpected probe output line {}: {shown:?}",
                    n + 1
                )));
            };
            values.entry(k.to_string()).or_default().push(v.to_string());
        }
        Ok(Observed { values })
    }

    /// The last value printed for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value printed for `key`, in order.
    pub fn all(&self, key: &str) -> &[String] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The value of `key`, or an error naming it.
    pub fn req(&self, key: &str) -> Result<&str, ProbeError> {
        self.get(key)
            .ok_or_else(|| ProbeError::new(format!("probe output lacks `{key}`")))
    }

    /// The decoded bytes of `<key>_b64`, if printed.
    pub fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, ProbeError> {
        match self.get(&format!("{key}_b64")) {
            None => Ok(None),
            Some(v) => unb64(v).map(Some),
        }
    }

    /// The decoded text of `<key>_b64` (lossy UTF-8), if printed.
    pub fn text(&self, key: &str) -> Result<Option<String>, ProbeError> {
        Ok(self
            .bytes(key)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn sh(script: &str) -> std::process::Output {
        match Command::new("sh").arg("-c").arg(script).output() {
            Ok(o) => o,
            Err(e) => panic!("cannot run sh: {e}"),
        }
    }

    #[test]
    fn quote_examples() {
        for (given, want) in [
            ("abc", "abc"),
            ("/etc/app.conf", "/etc/app.conf"),
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", "'it'\\''s'"),
            ("A=b", "'A=b'"),
            ("~", "'~'"),
            ("$(id)", "'$(id)'"),
        ] {
            assert_eq!(quote(given), want, "{given:?}");
        }
    }

    #[test]
    fn quoted_assignment_is_not_an_assignment() {
        let out = sh(&format!("{} 2>/dev/null; echo $?", quote("X=1")));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127");
    }

    #[test]
    fn tricky_strings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("pwned");
        let c = canary.display();
        for s in [
            format!("$(touch {c})"),
            format!("`touch {c}`"),
            format!("'; touch {c}; '"),
            format!("\"; touch {c}; \""),
            format!("\n touch {c}\n"),
            "*".to_string(),
            "~root".to_string(),
            "a\\nb\\".to_string(),
            "\u{1}\u{7f}\t\r".to_string(),
            "héllo wörld ☃".to_string(),
            "-n".to_string(),
            "'".to_string(),
            "''".to_string(),
            "${HOME}".to_string(),
        ] {
            let out = sh(&format!("printf %s {}", quote(&s)));
            assert_eq!(out.stdout, s.as_bytes(), "round trip of {s:?}");
            assert!(!canary.exists(), "{s:?} executed code");
        }
    }

    #[test]
    fn parent_dirs() {
        for (given, want) in [("/etc/app.conf", "/etc"), ("/x", "/"), ("/a/b/", "/a")] {
            assert_eq!(parent(given), want, "{given:?}");
        }
    }

    #[test]
    fn modes() {
        for (given, want) in [
            ("644", "0644"),
            ("0644", "0644"),
            ("02755", "2755"),
            ("0", "0000"),
        ] {
            assert_eq!(norm_mode(given), want, "{given:?}");
        }
    }

    #[test]
    fn observed_parsing() {
        let r = ProbeResult {
            stdout: b"a=1\n\nb=x=y\na=2\r\n".to_vec(),
            ..Default::default()
        };
        let o = Observed::parse(&r).unwrap();
        assert_eq!(o.get("a"), Some("2"));
        assert_eq!(o.all("a"), ["1", "2"]);
        assert_eq!(o.get("b"), Some("x=y"));
        assert!(o.req("c").is_err());
        let bad = ProbeResult {
            stdout: b"garbage\n".to_vec(),
            ..Default::default()
        };
        assert!(Observed::parse(&bad).is_err());
        let failed = ProbeResult {
            status: 3,
            stderr: b"boom".to_vec(),
            ..Default::default()
        };
        assert!(Observed::parse(&failed)
            .unwrap_err()
            .message
            .contains("boom"));
        let not_utf8 = ProbeResult {
            stdout: b"a=\xff\n".to_vec(),
            ..Default::default()
        };
        assert!(Observed::parse(&not_utf8).is_err());
    }

    #[test]
    fn nul_is_rejected_outside_data() {
        let v = serde_json::json!({"path": "/a\u{0}b", "content": "x\u{0}"});
        assert_eq!(reject_nul(&v, &["/content"]).unwrap_err().pointer, "/path");
        let ok = serde_json::json!({"path": "/a", "content": "x\u{0}"});
        assert!(reject_nul(&ok, &["/content"]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn quote_round_trips_through_sh(s in "\\PC*|[\\x01-\\x7f]*|[$`'\"\\\\ \\n*?~;&|()<>{}\\[\\]#!]*") {
            let dir = tempfile::tempdir().unwrap();
            let script = format!("cd {} && printf %s {}", quote(&dir.path().display().to_string()), quote(&s));
            let out = sh(&script);
            prop_assert_eq!(out.status.code(), Some(0));
            prop_assert_eq!(String::from_utf8_lossy(&out.stdout).into_owned(), s);
            // Nothing ran: the scratch directory is still empty.
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }

        #[test]
        fn quote_round_trips_any_char(s in any::<String>()) {
            let s: String = s.chars().filter(|c| *c != '\0').collect();
            let out = sh(&format!("printf %s {}", quote(&s)));
            prop_assert_eq!(out.stdout, s.as_bytes().to_vec());
        }

        #[test]
        fn bytes_round_trip_through_base64(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("out");
            let script = write_bytes(&bytes, &quote(&dest.display().to_string()));
            let out = sh(&script);
            prop_assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            prop_assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        }
    }
}
