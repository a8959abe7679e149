//! Several `file` steps (state present, any paths), probed in one fragment with a few
//! processes for all of them.
//!
//! A file's own probe ([`super::Managed::probe`]) starts four processes: the `stat` of its
//! mode and owner, the two `stat`s of the safe open ([`sh::OPEN_P`]: the file is opened,
//! and what was opened must be the very inode at the path, never what a link points to)
//! and `sha256sum`. The batch keeps the same checks but runs each command once for up to
//! seven files: their types and parents are told by the shell itself; the regular ones are
//! opened on descriptors 3 to 9 (shell builtins); one `stat` of the paths (not following
//! links) prints each one's identity, mode, owner and size; one `stat -L` of the descriptors
//! prints what was opened; a file whose two identities differ fails as its own probe does
//! ("changed while plumb read it"), and one `sha256sum` reads the others through their
//! descriptors. The content of a file whose hash differs (for the plan's diff) is read
//! through its descriptor too, as its own probe reads it.
//!
//! For each step the fragment prints its member header and exactly what the step's own
//! probe prints (every value is a number, a fixed word, a hash, base64 or a user or group
//! name: nothing that holds a line break); a step that fails prints its status and message.
//! Processes: three per seven files (plus one `base64` per file whose content differs),
//! against four per file one by one.

use super::{File, MAX_DIFF_BYTES};
use crate::modules::sh::{self, quote};
use crate::modules::{all_of, member_header, Presence, Resource};

/// Files opened at once: descriptors 3 to 9, the ones a POSIX shell can name.
pub(super) const GROUP: usize = 7;

/// What steps must share to be probed together: a file that must be present.
pub(super) fn key(r: &dyn Resource) -> Option<String> {
    all_of(&[r], present).map(|_| "present".to_string())
}

fn present(f: &File) -> bool {
    f.managed.state == Presence::Present
}

/// One fragment probing every step of `resources` (`file` steps that must be present);
/// `None` when one is not.
pub(super) fn probe(resources: &[&dyn Resource]) -> Option<String> {
    let files = all_of::<File>(resources, present)?;
    let mut s = format!("{}\n", sh::TYPE_FN);
    for (g, group) in files.chunks(GROUP).enumerate() {
        s += &group_fragment(g * GROUP, group);
    }
    Some(s)
}

/// The part of the fragment for `group` (at most [`GROUP`] files; the first is member
/// `first`). Descriptor `3 + k` holds file `k` of the group; its variables end in `k`:
/// `o` (1: opened, 2: could not be), `x` (set when its checks or its hash failed), `i`
/// (identity at the path), `m` (mode to size lines), `z` (size), `h` (hash).
fn group_fragment(first: usize, group: &[&File]) -> String {
    let mut s = String::new();
    for (k, f) in group.iter().enumerate() {
        s += &format!(
            "p{k}={p}; plumb_ty \"$p{k}\"; t{k}=$t; o{k}=; x{k}=\n\
             if [ -d {parent} ]; then r{k}=yes; else r{k}=no; fi\n\
             if [ \"$t\" = file ]; then if {{ command exec {fd}<\"$p{k}\"; }} 2>/dev/null; then o{k}=1; else o{k}=2; fi; fi\n",
            p = quote(&f.managed.path),
            parent = quote(&sh::parent(&f.managed.path)),
            fd = 3 + k,
        );
    }
    let n = group.len();
    let good = |k: usize| format!("[ \"$o{k}\" = 1 ] && [ -z \"$x{k}\" ]");
    let fd = |k: usize| format!("/dev/fd/{}", 3 + k);
    let failed = |k: usize| format!("x{k}=1");
    // What the paths are (not following links), then what the descriptors hold: one `stat`
    // each; a file whose two identities differ is not read.
    s += &sh::args_where(n, &good, &|k| format!("\"$p{k}\""));
    s += &format!(
        "ls_=; [ $# -gt 0 ] && {{ ls_=$(stat -c 'id=%d:%i\n{}' -- \"$@\" 2>/dev/null) || ls_=; }}\n",
        sh::STAT_FORMAT
    );
    s += &sh::args_where(n, &good, &fd);
    s += "fs_=; [ $# -gt 0 ] && { fs_=$(stat -L -c 'id=%d:%i' -- \"$@\" 2>/dev/null) || fs_=; }\n";
    s += &sh::take_lines(
        "ls_",
        n,
        7,
        &good,
        &|k| {
            format!(
            "i{k}=$1; m{k}=\"$2$plumb_nl$3$plumb_nl$4$plumb_nl$5$plumb_nl$6$plumb_nl$7\"; z{k}=${{7#size=}}"
        )
        },
        &failed,
    );
    s += &sh::take_lines(
        "fs_",
        n,
        1,
        &good,
        &|k| format!("[ \"$1\" = \"$i{k}\" ] || x{k}=2"),
        &failed,
    );
    // One `sha256sum` of the files whose identities agree.
    s += &sh::args_where(n, &good, &fd);
    s += "hs_=; [ $# -gt 0 ] && { hs_=$(sha256sum -- \"$@\" 2>/dev/null) || hs_=; }\n";
    s += &sh::take_lines("hs_", n, 1, &good, &|k| format!("h{k}=${{1%% *}}"), &failed);
    for (k, f) in group.iter().enumerate() {
        s += &format!(
            "if [ -z \"$o{k}\" ]; then printf '%s\\ntype=%s\\nparent=%s\\n' '{ok}' \"$t{k}\" \"$r{k}\"\n\
             elif [ \"$o{k}\" = 2 ]; then printf '%s\\n%s\\n' '{failed}' 'cannot open the file'\n\
             elif [ \"$x{k}\" = 2 ]; then printf '%s\\n%s\\n' '{failed}' 'the file changed while plumb read it'\n\
             elif [ -n \"$x{k}\" ]; then printf '%s\\n%s\\n' '{failed}' 'cannot read the file (it changed while plumb read it?)'\n\
             else printf '%s\\ntype=file\\nparent=%s\\n%s\\nsha256=%s\\n' '{ok}' \"$r{k}\" \"$m{k}\" \"$h{k}\"\n\
             if [ \"$h{k}\" != {sha} ] && [ \"$z{k}\" -le {max} ]; then {content}; fi\n\
             fi\n",
            ok = member_header(first + k, 0),
            failed = member_header(first + k, 1),
            sha = f.managed.sha256,
            max = MAX_DIFF_BYTES,
            content = sh::print_b64("content", &format!("cat /dev/fd/{}", 3 + k)),
        );
    }
    for k in 0..group.len() {
        s += &format!("exec {}<&-\n", 3 + k);
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::modules::testing::{batch_reads_as_one_by_one, built, run_sh};
    use crate::modules::Resource;

    fn file(path: &Path, content: &str) -> Box<dyn Resource> {
        built(
            super::super::DEF.build,
            serde_json::json!({"path": path.display().to_string(), "content": content}),
        )
    }

    /// Files in every state a probe tells apart, in two groups of descriptors: every member
    /// of the batch reads exactly what its own probe prints.
    #[test]
    fn a_batch_reads_what_the_probes_one_by_one_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let w = |name: &str, bytes: &[u8]| std::fs::write(d.join(name), bytes).expect("write");
        w("same", b"hello\n");
        w("other", b"old\n\0bytes\xff\n");
        w("big", &vec![b'x'; super::MAX_DIFF_BYTES as usize + 1]);
        w("empty", b"");
        w("target", b"hello\n");
        std::fs::create_dir(d.join("dir")).expect("mkdir");
        std::os::unix::fs::symlink(d.join("target"), d.join("link")).expect("symlink");
        let private = d.join("private");
        w("private", b"secret\n");
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let names = [
            "same",
            "other",
            "big",
            "empty",
            "dir",
            "link",
            "absent",
            "no/parent",
            "private",
            "same",
        ];
        let steps: Vec<Box<dyn Resource>> =
            names.iter().map(|n| file(&d.join(n), "hello\n")).collect();
        let refs: Vec<&dyn Resource> = steps.iter().map(|r| r.as_ref()).collect();
        let batch = super::probe(&refs).expect("present files batch");
        let whole = run_sh(&batch);
        assert_eq!(
            whole.status,
            0,
            "{}",
            String::from_utf8_lossy(&whole.stderr)
        );
        batch_reads_as_one_by_one(&batch, &refs, &names);
    }

    /// A file that must be absent, or another module's step, is probed alone.
    #[test]
    fn only_files_that_must_be_present_are_batched() {
        let present = file(Path::new("/srv/a"), "x");
        let absent = built(
            super::super::DEF.build,
            serde_json::json!({"path": "/srv/b", "state": "absent"}),
        );
        assert_eq!(super::key(present.as_ref()).as_deref(), Some("present"));
        assert_eq!(super::key(absent.as_ref()), None);
        assert!(super::probe(&[present.as_ref(), absent.as_ref()]).is_none());
    }
}
