//! Several `directory` steps (state present, any paths), probed with one `stat` for all.
//!
//! A directory's own probe starts one `stat` (mode, owner, size) in its own subshell. The
//! batch tells every path's type with the shell itself and runs one `stat` (not following
//! links) over the directories among them; for each step it prints its member header and
//! exactly what the step's own probe prints. A directory whose `stat` failed (it went away
//! in between) fails as its own probe would.

use super::Directory;
use crate::modules::sh::{self, quote};
use crate::modules::{all_of, member_header, Presence, Resource};

/// What steps must share to be probed together: a directory that must be present (an
/// absent one's probe also looks into it).
pub(super) fn key(r: &dyn Resource) -> Option<String> {
    all_of(&[r], present).map(|_| "present".to_string())
}

fn present(d: &Directory) -> bool {
    d.params.state == Presence::Present
}

/// One fragment probing every step of `resources` (`directory` steps that must be
/// present); `None` when one is not.
pub(super) fn probe(resources: &[&dyn Resource]) -> Option<String> {
    let dirs = all_of::<Directory>(resources, present)?;
    let n = dirs.len();
    let mut s = format!("{}\n", sh::TYPE_FN);
    for (k, d) in dirs.iter().enumerate() {
        s += &format!(
            "p{k}={}; plumb_ty \"$p{k}\"; t{k}=$t; x{k}=\n",
            quote(&d.params.path)
        );
    }
    let good = |k: usize| format!("[ \"$t{k}\" = directory ] && [ -z \"$x{k}\" ]");
    s += &sh::args_where(n, &good, &|k| format!("\"$p{k}\""));
    s += &format!(
        "ds_=; [ $# -gt 0 ] && {{ ds_=$(stat -c '{}' -- \"$@\" 2>/dev/null) || ds_=; }}\n",
        sh::STAT_FORMAT
    );
    s += &sh::take_lines(
        "ds_",
        n,
        6,
        &good,
        &|k| format!("m{k}=\"$1$plumb_nl$2$plumb_nl$3$plumb_nl$4$plumb_nl$5$plumb_nl$6\""),
        &|k| format!("x{k}=1"),
    );
    for k in 0..n {
        s += &format!(
            "if [ -n \"$x{k}\" ]; then printf '%s\\n%s\\n' '{failed}' 'cannot stat the directory (it changed while plumb read it?)'\n\
             elif [ \"$t{k}\" = directory ]; then printf '%s\\ntype=directory\\n%s\\n' '{ok}' \"$m{k}\"\n\
             else printf '%s\\ntype=%s\\n' '{ok}' \"$t{k}\"; fi\n",
            ok = member_header(k, 0),
            failed = member_header(k, 1),
        );
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use crate::modules::testing::{batch_reads_as_one_by_one, built};
    use crate::modules::Resource;

    /// Directories in every state a probe tells apart: every member of the batch reads
    /// exactly what its own probe prints, and so the same change.
    #[test]
    fn a_batch_reads_what_the_probes_one_by_one_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("a")).expect("mkdir");
        std::fs::create_dir(d.join("private")).expect("mkdir");
        std::fs::set_permissions(
            d.join("private"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        std::fs::write(d.join("file"), b"x").expect("write");
        std::os::unix::fs::symlink(d.join("a"), d.join("link")).expect("symlink");
        let names = ["a", "private", "file", "link", "absent", "a"];
        let steps: Vec<Box<dyn Resource>> = names
            .iter()
            .map(|n| {
                built(
                    super::super::DEF.build,
                    serde_json::json!({"path": d.join(n).display().to_string(), "mode": "0755"}),
                )
            })
            .collect();
        let refs: Vec<&dyn Resource> = steps.iter().map(|r| r.as_ref()).collect();
        let batch = super::probe(&refs).expect("present directories batch");
        batch_reads_as_one_by_one(&batch, &refs, &names);
    }

    #[test]
    fn only_directories_that_must_be_present_are_batched() {
        let present = built(
            super::super::DEF.build,
            serde_json::json!({"path": "/srv/a"}),
        );
        let absent = built(
            super::super::DEF.build,
            serde_json::json!({"path": "/srv/b", "state": "absent"}),
        );
        assert_eq!(super::key(present.as_ref()).as_deref(), Some("present"));
        assert_eq!(super::key(absent.as_ref()), None);
        assert!(super::probe(&[present.as_ref(), absent.as_ref()]).is_none());
    }
}
